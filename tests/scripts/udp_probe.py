"""Sends one datagram per "SPORT:DPORT" pair to DST from that source port and
prints a JSON object pair -> reply text (null on a 1 s timeout).
Usage: udp_probe.py DST SPORT:DPORT..."""
import json
import socket
import sys

dst, out = sys.argv[1], {}
for pair in sys.argv[2:]:
    sp, dp = map(int, pair.split(":"))
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", sp))
    s.settimeout(1.0)
    s.sendto(b"probe", (dst, dp))
    try:
        out[pair] = s.recvfrom(65535)[0].decode()
    except socket.timeout:
        out[pair] = None
    s.close()
print(json.dumps(out))
