"""TCP connect scan of every port of ADDR; prints the open ports as JSON.
Bounded: non-blocking connects in batches, 1 s per batch at most.
Usage: port_scan.py ADDR"""
import errno
import json
import select
import socket
import sys

addr, open_ports = sys.argv[1], []
BATCH = 1000
for start in range(1, 65536, BATCH):
    socks = {}
    for port in range(start, min(start + BATCH, 65536)):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        err = s.connect_ex((addr, port))
        if err in (0, errno.EINPROGRESS):
            socks[s.fileno()] = (s, port)
        else:
            s.close()
    poll = select.poll()
    for fd in socks:
        poll.register(fd, select.POLLOUT)
    pending = set(socks)
    for _ in range(10):
        if not pending:
            break
        for fd, _ in poll.poll(100):
            pending.discard(fd)
    for fd, (s, port) in socks.items():
        if fd not in pending and s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
            open_ports.append(port)
        s.close()
print(json.dumps(open_ports))
