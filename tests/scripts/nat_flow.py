"""One NAT flow of a given shape, for the expiry tests. Prints one line.

  nat_flow.py tcp MODE SPORT DST DPORT HOLD
      A TCP connection from SPORT. MODE syn: give up after 0.3 s (one SYN,
      unanswered); refused: expect a RST; hold: read the server's greeting
      (the peer it saw), exchange a byte, keep the socket HOLD s; halfclose:
      the same, then shutdown(SHUT_WR) (a FIN) before holding. Prints the
      greeting, or the error's name. Exits by itself.
  nat_flow.py tcpserver PORT LIFETIME
      Accepts connections: sends "<peer-ip:port>\\n", then echoes.
  nat_flow.py late PROTO SRC SPORT DST DPORT
      With scapy: one packet SRC:SPORT -> DST:DPORT, as a late reply: tcp
      (ACK+PSH with data), udp, or icmp (echo reply, identifier DPORT)."""
import socket
import sys
import threading
import time


def tcp(mode, sport, dst, dport, hold):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", sport))
    s.settimeout(0.3 if mode == "syn" else 2.0)
    try:
        s.connect((dst, dport))
    except OSError as e:
        print(type(e).__name__, flush=True)
        return
    greeting = s.makefile().readline().strip()
    s.sendall(b"x")
    s.recv(1)
    if mode == "halfclose":
        s.shutdown(socket.SHUT_WR)
    print(greeting, flush=True)
    time.sleep(hold)


def tcpserver(port, life):
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(16)
    srv.settimeout(0.5)

    def serve(c, peer):
        c.sendall(f"{peer[0]}:{peer[1]}\n".encode())
        c.settimeout(life)
        try:
            while True:
                d = c.recv(64)
                if not d:
                    break
                c.sendall(d)
        except OSError:
            pass

    end = time.time() + life
    while time.time() < end:
        try:
            c, peer = srv.accept()
        except socket.timeout:
            continue
        threading.Thread(target=serve, args=(c, peer), daemon=True).start()


def late(proto, src, sport, dst, dport):
    from scapy.all import ICMP, IP, TCP, UDP, conf, send
    conf.verb = 0
    ip = IP(src=src, dst=dst)
    if proto == "tcp":
        pkt = ip / TCP(sport=sport, dport=dport, flags="PA", seq=1000, ack=1000) / b"late"
    elif proto == "udp":
        pkt = ip / UDP(sport=sport, dport=dport) / b"late"
    else:
        pkt = ip / ICMP(type=0, id=dport, seq=1) / b"late"
    send(pkt)
    print("sent")


cmd, args = sys.argv[1], sys.argv[2:]
if cmd == "tcp":
    tcp(args[0], int(args[1]), args[2], int(args[3]), float(args[4]))
elif cmd == "tcpserver":
    tcpserver(int(args[0]), float(args[1]))
else:
    late(args[0], args[1], int(args[2]), args[3], int(args[4]))
