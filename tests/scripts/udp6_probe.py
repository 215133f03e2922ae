"""Sends one IPv6 datagram per "SPORT:DPORT" pair to DST from that source
port and prints a JSON object pair -> reply text (null on a WAIT timeout).
Usage: udp6_probe.py DST WAIT_SECS SPORT:DPORT..."""
import json
import socket
import sys

dst, wait, out = sys.argv[1], float(sys.argv[2]), {}
for pair in sys.argv[3:]:
    sp, dp = map(int, pair.split(":"))
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", sp))
    s.settimeout(wait)
    s.sendto(b"probe", (dst, dp))
    try:
        out[pair] = s.recvfrom(65535)[0].decode()
    except socket.timeout:
        out[pair] = None
    s.close()
print(json.dumps(out))
