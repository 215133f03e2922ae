"""Holds many TCP connections open, for NAT mapping tests. Exits by itself.
  tcp_hold.py server PORT LIFETIME_SECS
  tcp_hold.py clients DST PORT FIRST_SPORT COUNT READY_FILE LIFETIME_SECS
The client binds COUNT consecutive source ports, connects them all, writes the
number connected to READY_FILE (temp + rename: a reader never sees it
empty), then sleeps holding them."""
import os
import socket
import sys
import time

if sys.argv[1] == "server":
    port, life = int(sys.argv[2]), float(sys.argv[3])
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("0.0.0.0", port))
    ls.listen(4096)
    ls.settimeout(0.2)
    held, end = [], time.time() + life
    while time.time() < end:
        try:
            held.append(ls.accept()[0])
        except socket.timeout:
            pass
else:
    dst, port, first, n = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    ready, life = sys.argv[6], float(sys.argv[7])
    held = []
    for i in range(n):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", first + i))
        s.settimeout(5)
        try:
            s.connect((dst, port))
            held.append(s)
        except OSError as e:
            print(f"connect from {first + i}: {e}", file=sys.stderr)
    with open(ready + ".tmp", "w") as f:
        f.write(str(len(held)))
    os.replace(ready + ".tmp", ready)
    time.sleep(life)
