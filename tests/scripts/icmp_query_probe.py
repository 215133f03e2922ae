"""Sends ICMP query requests other than echo (RFC 5508 REQ-1) to DST on a
raw socket: timestamp (13), information (15) and address mask (17), with
identifiers ID, ID+1, ID+2, and collects every ICMP message that comes
back from DST for 3 s. Prints JSON: a list of [type, identifier] received.
Usage: icmp_query_probe.py DST ID"""
import json
import socket
import struct
import sys
import time


def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def msg(ty, ident, body):
    m = struct.pack("!BBHHH", ty, 0, 0, ident, 1) + body
    return m[:2] + struct.pack("!H", csum(m)) + m[4:]


dst, ident = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.settimeout(0.2)
for ty, i, body in [(13, ident, b"\0" * 12), (15, ident + 1, b""), (17, ident + 2, b"\0" * 4)]:
    s.sendto(msg(ty, i, body), (dst, 0))
got = []
end = time.monotonic() + 3
while time.monotonic() < end:
    try:
        pkt, (src, _) = s.recvfrom(2048)
    except socket.timeout:
        continue
    icmp = pkt[(pkt[0] & 0xF) * 4 :]
    if src == dst and icmp[0] not in (13, 15, 17):
        got.append([icmp[0], struct.unpack("!H", icmp[4:6])[0]])
print(json.dumps(sorted(got)))
