"""Sends one SIZE-byte UDP datagram (the kernel fragments it: DF clear) from
SRC:SPORT to DST:DPORT and waits for an answer from udp_echo.py ("<tag>
<seen-source> <payload>"). Prints JSON: the answer's length, its tag and
the source the echo saw, whether the payload came back whole; "lost" true
if nothing came within the timeout.
Usage: udp_big.py SRC SPORT DST DPORT SIZE [TIMEOUT_SECS]"""
import json
import socket
import sys

src, sport, dst, dport, size = sys.argv[1:6]
timeout = float(sys.argv[6]) if len(sys.argv) > 6 else 3.0
payload = bytes(i % 251 for i in range(int(size)))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
# Let the kernel fragment (no path MTU discovery, DF clear).
s.setsockopt(socket.IPPROTO_IP, 10, 0)  # IP_MTU_DISCOVER = IP_PMTUDISC_DONT
s.bind((src, int(sport)))
s.settimeout(timeout)
s.sendto(payload, (dst, int(dport)))
try:
    data = s.recv(65535)
except socket.timeout:
    print(json.dumps({"lost": True}))
    sys.exit(0)
tag, seen, rest = data.split(b" ", 2)
print(json.dumps({
    "lost": False,
    "len": len(data),
    "tag": tag.decode(),
    "seen": seen.decode(),
    "whole": rest == payload,
}))
