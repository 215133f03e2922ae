"""Sends datagrams from SRC_ADDR:SRC_PORT to a closed DST:DPORT on a
connected socket, so an ICMP Port Unreachable that comes back through the
NAT surfaces as ECONNREFUSED. Prints one word per datagram: "refused" (the
ICMP error arrived) or "silent" (nothing within 1 s). The gap between sends
stays above the kernel's ICMP rate limit.
Usage: udp_icmp_probe.py SRC_ADDR SRC_PORT DST DPORT COUNT"""
import socket
import sys
import time

src, sport, dst, dport, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((src, sport))
s.connect((dst, dport))
s.settimeout(1.0)
out = []
for i in range(n):
    if i:
        time.sleep(1.2)
    s.send(b"probe")
    try:
        s.recv(64)
        out.append("answered")
    except ConnectionRefusedError:
        out.append("refused")
    except socket.timeout:
        out.append("silent")
print(" ".join(out))
