"""TCP connect scan of every port of ADDR, in batches of non-blocking
connects. Each batch waits until every connect has an answer (SYN-ACK or
RST) or a deadline passes; prints JSON {"open": [...], "filtered": [...]},
filtered being the ports still unanswered at the deadline.
Usage: port_scan.py ADDR [DEADLINE_SECS_PER_BATCH]"""
import errno
import json
import select
import socket
import sys
import time

addr = sys.argv[1]
deadline = float(sys.argv[2]) if len(sys.argv) > 2 else 20.0
open_ports, filtered = [], []
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
    end = time.monotonic() + deadline
    while pending and time.monotonic() < end:
        for fd, _ in poll.poll(100):
            pending.discard(fd)
            poll.unregister(fd)
    for fd, (s, port) in socks.items():
        if fd in pending:
            filtered.append(port)
        elif s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
            open_ports.append(port)
        s.close()
print(json.dumps({"open": open_ports, "filtered": filtered}))
