"""TCP simultaneous open through a NAT (RFC 5382 REQ-2), in one process so
the order of the two SYNs is fixed. Start it inside the lab namespace:
  1. a blackhole route in ROUTER (silent: no ICMP error that would abort
     the connect) swallows the inside SYN, which still creates the mapping;
  2. the route goes, and the outside host, in OUTSIDE_NS, connects to the
     mapping EXT:EXT_PORT: both sockets are in SYN-SENT and each receives
     the other's SYN. Both must end up connected and exchange a line.
With --unsolicited, step 1 is skipped (control): the outside SYN reaches a
NAT without a mapping. With --outside-first, the outside host connects
first (its SYN reaches a NAT without a mapping), then the inside host
connects to it 0.3 s later, before the outside's first retransmission
(RFC 5382 REQ-4: a NAT that drops the unsolicited SYN lets this succeed).
Prints JSON.
Usage: tcp_simopen.py IN_ADDR IN_PORT OUT_ADDR OUT_PORT EXT EXT_PORT
                      OUTSIDE_NS ROUTER_NS [--unsolicited | --outside-first]"""
import ctypes
import errno
import json
import os
import select
import socket
import subprocess
import sys
import time

in_addr, in_port, out_addr, out_port, ext, ext_port, outside_ns, router_ns = sys.argv[1:9]
in_port, out_port, ext_port = int(in_port), int(out_port), int(ext_port)
unsolicited = "--unsolicited" in sys.argv[9:]
outside_first = "--outside-first" in sys.argv[9:]
libc = ctypes.CDLL(None, use_errno=True)


def setns(name):
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
            raise OSError(ctypes.get_errno(), f"setns {name}")
    finally:
        os.close(fd)


def sock(addr, port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.setblocking(False)
    return s


def route(op):
    subprocess.run(["ip", "-n", router_ns, "route", op, "blackhole", f"{out_addr}/32"], check=True)


inside = sock(in_addr, in_port)
if not unsolicited and not outside_first:
    route("add")
    try:
        assert inside.connect_ex((out_addr, out_port)) == errno.EINPROGRESS
        time.sleep(0.3)
    finally:
        route("del")
setns(outside_ns)
outside = sock(out_addr, out_port)
assert outside.connect_ex((ext, ext_port)) == errno.EINPROGRESS
if outside_first:
    # The inside socket was made in its own namespace: it connects from there.
    time.sleep(0.3)
    assert inside.connect_ex((out_addr, out_port)) == errno.EINPROGRESS
socks, deadline = {"outside": outside}, time.time() + 5
if not unsolicited:
    socks["inside"] = inside
state = {}
while len(state) < len(socks) and time.time() < deadline:
    _, w, _ = select.select([], [s for n, s in socks.items() if n not in state], [], 0.2)
    for n, s in socks.items():
        if s in w:
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            state[n] = errno.errorcode.get(err, str(err)) if err else "connected"
out = {n: state.get(n, "timeout") for n in socks}
if all(v == "connected" for v in out.values()) and len(out) == 2:
    for s in (inside, outside):
        s.setblocking(True)
        s.settimeout(5)
    inside.sendall(b"from-inside\n")
    outside.sendall(b"from-outside\n")
    out["outside_got"] = outside.recv(64).decode().strip()
    out["inside_got"] = inside.recv(64).decode().strip()
    out["outside_peer"] = "%s:%d" % outside.getpeername()
print(json.dumps(out))
