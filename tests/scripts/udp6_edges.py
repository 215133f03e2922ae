"""The kernel path's edge cases on one established UDP/IPv6 session: sends
a datagram to DST:DPORT from SPORT and waits for the echo (the session is
then established), then one with hop limit 1, then a SIZE-byte one with
IPV6_DONTFRAG, and reports the ICMPv6 errors the socket received
(IPV6_RECVERR): [type, info (the MTU of a Packet Too Big), offender].
Prints JSON {"reply": text|null, "hop1": [...]|null, "big": [...]|null}.
Usage: udp6_edges.py DST DPORT SPORT SIZE"""
import json
import socket
import struct
import sys
import time

IPV6_RECVERR, IPV6_DONTFRAG = 25, 62
dst, dport, sport, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind(("::", sport))
s.settimeout(2)
s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)


def error():
    """The next queued ICMPv6 error (up to 2 s): [type, info, offender]."""
    s.settimeout(0)
    for _ in range(20):
        try:
            _, anc, _, _ = s.recvmsg(2048, 512, socket.MSG_ERRQUEUE)
        except BlockingIOError:
            time.sleep(0.1)
            continue
        for _level, _type, data in anc:
            # struct sock_extended_err, then the offender's sockaddr_in6.
            _errno, _origin, icmp_type, _code, _pad, info, _data = struct.unpack(
                "=IBBBBII", data[:16])
            offender = socket.inet_ntop(socket.AF_INET6, data[16 + 8:16 + 24])
            s.settimeout(2)
            return [icmp_type, info, offender]
    s.settimeout(2)
    return None


out = {"reply": None, "hop1": None, "big": None}
s.sendto(b"hello", (dst, dport))
try:
    out["reply"] = s.recvfrom(2048)[0].decode()
except socket.timeout:
    pass
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 1)
s.sendto(b"hop1", (dst, dport))
out["hop1"] = error()
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, -1)
s.setsockopt(socket.IPPROTO_IPV6, IPV6_DONTFRAG, 1)
s.sendto(b"x" * size, (dst, dport))
out["big"] = error()
print(json.dumps(out))
