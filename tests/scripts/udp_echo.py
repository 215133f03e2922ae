"""UDP echo for NAT tests: replies "<tag> <seen-source> <payload>", so the
client learns which host answered and what source address it saw.
Usage: udp_echo.py PORT TAG [LIFETIME_SECS]  (exits by itself)"""
import socket
import sys
import time

port, tag = int(sys.argv[1]), sys.argv[2].encode()
life = float(sys.argv[3]) if len(sys.argv) > 3 else 120.0
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", port))
s.settimeout(0.5)
end = time.time() + life
while time.time() < end:
    try:
        data, addr = s.recvfrom(65535)
    except socket.timeout:
        continue
    s.sendto(tag + f" {addr[0]}:{addr[1]} ".encode() + data, addr)
