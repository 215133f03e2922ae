"""UDP echo over IPv6 for the NAT66 tests: replies "<tag> [<seen-source>]:<port>"
after DELAY seconds, so the client learns what source the NAT gave it (and
a late reply can be made).
Usage: udp6_echo.py PORT TAG LIFETIME_SECS [DELAY_SECS]  (exits by itself)"""
import socket
import sys
import time

port, tag, life = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
delay = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind(("::", port))
s.settimeout(0.5)
end = time.time() + life
while time.time() < end:
    try:
        data, addr = s.recvfrom(65535)
    except socket.timeout:
        continue
    time.sleep(delay)
    s.sendto(f"{tag} [{addr[0]}]:{addr[1]}".encode(), addr)
