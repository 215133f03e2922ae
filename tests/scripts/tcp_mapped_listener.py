"""A TCP listener whose port has a NAT mapping, as a P2P peer makes one:
binds a listener on BIND_IP:PORT (SO_REUSEPORT), connects from the same
address and port to a tcp_whoami.py server DST:DPORT (which answers with
the address it sees: the mapping), writes that answer to OUT (atomically),
then answers each accepted connection with the peer address it sees
("ADDR:PORT\n") until LIFETIME_SECS have passed.
Usage: tcp_mapped_listener.py BIND_IP PORT DST DPORT OUT LIFETIME_SECS"""
import os
import socket
import sys
import time

from tcp_whoami import ask, serve

bind_ip, port, dst, dport, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
end = time.time() + float(sys.argv[6])


def bound():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((bind_ip, port))
    return s


ls = bound()
ls.listen(16)
seen = ask(bound(), dst, dport)
with open(out + ".tmp", "w") as f:
    f.write(seen)
os.replace(out + ".tmp", out)
serve(ls, end)
