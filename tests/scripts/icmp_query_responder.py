"""Answers ICMP information requests (15) and address mask requests (17),
which Linux does not, on a raw socket, for RFC 5508 REQ-1 tests (the
kernel itself answers echo and timestamp). Before each address mask reply
it sends an echo reply and a timestamp reply with the same identifier:
replies of another query family, which the NAT must not deliver to the
address mask session. Writes READY once listening; runs up to SECONDS.
Usage: icmp_query_responder.py READY SECONDS"""
import socket
import struct
import sys
import time


def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def msg(ty, ident, seq, body):
    m = struct.pack("!BBHHH", ty, 0, 0, ident, seq) + body
    return m[:2] + struct.pack("!H", csum(m)) + m[4:]


ready, seconds = sys.argv[1], float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.settimeout(0.5)
open(ready, "w").close()
end = time.monotonic() + seconds
while time.monotonic() < end:
    try:
        pkt, (src, _) = s.recvfrom(2048)
    except socket.timeout:
        continue
    icmp = pkt[(pkt[0] & 0xF) * 4 :]
    ty, ident, seq = icmp[0], *struct.unpack("!HH", icmp[4:8])
    if ty == 15:
        s.sendto(msg(16, ident, seq, b""), (src, 0))
    elif ty == 17:
        s.sendto(msg(0, ident, seq, b"wrong-family"), (src, 0))
        s.sendto(msg(14, ident, seq, b"\0" * 12), (src, 0))
        s.sendto(msg(18, ident, seq, socket.inet_aton("255.255.255.0")), (src, 0))
