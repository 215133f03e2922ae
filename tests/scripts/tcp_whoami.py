"""TCP "who am I" for NAT mapping tests: the server answers each connection
with the peer address it sees ("ADDR:PORT\n") and closes first, so the
client never sits in TIME_WAIT and can reuse its source port at once.
  tcp_whoami.py server PORT LIFETIME_SECS [BIND]  (exits by itself; BIND
                                                   "::" for IPv6, default 0.0.0.0)
  tcp_whoami.py client SRC_ADDR SRC_PORT DST DPORT   (prints the answer;
                                                   IPv6 if DST has a colon)
serve() and ask() are shared with tcp_mapped_listener.py."""
import socket
import sys
import time


def serve(ls, end):
    """Answers connections on listening socket `ls` until time `end`."""
    ls.settimeout(0.2)
    while time.time() < end:
        try:
            c, addr = ls.accept()
        except socket.timeout:
            continue
        c.sendall(f"{addr[0]}:{addr[1]}\n".encode())
        c.close()


def ask(s, dst, dport):
    """Connects bound socket `s` to a whoami server; the address it saw."""
    s.settimeout(5)
    s.connect((dst, dport))
    data = b""
    while True:
        chunk = s.recv(256)
        if not chunk:
            break
        data += chunk
    s.close()
    return data.decode().strip()


def family(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


if __name__ == "__main__":
    if sys.argv[1] == "server":
        port, life = int(sys.argv[2]), float(sys.argv[3])
        bind = sys.argv[4] if len(sys.argv) > 4 else "0.0.0.0"
        ls = socket.socket(family(bind))
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((bind, port))
        ls.listen(64)
        serve(ls, time.time() + life)
    else:
        src, sport, dst, dport = sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
        s = socket.socket(family(dst))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((src, sport))
        print(ask(s, dst, dport))
