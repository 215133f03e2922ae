"""UDP datagrams sent as IPv4 fragments in REVERSE order (last first), with
scapy, for the out-of-order fragment tests (RFC 4787 REQ-14).

  send SRC SPORT DST DPORT SIZE [HOLD_DEV] [TIMEOUT_SECS]
      One SIZE-byte datagram from SRC:SPORT to DST:DPORT, answered by
      udp_echo.py ("<tag> <seen-source> <payload>"). Prints JSON as
      udp_big.py: the answer's length, tag, seen source, whether the payload
      came back whole; "lost" true if nothing came in time.
  echo BIND PORT TAG [HOLD_DEV] [LIFETIME_SECS]
      udp_echo.py whose answers leave as reversed fragments (exits by
      itself).

HOLD_DEV (a device of this namespace, or "-"): the fragments are held in a
tbf queue on it and leave together, back to back, as one burst (a sender
emitting its fragments last first puts them on the wire so). Without it
each fragment is a send of its own, which the receiving kernel finishes
before the next one is sent. The queue is set up and removed here.
"""
import json
import random
import socket
import subprocess
import sys

from scapy.all import IP, UDP, fragment, send


def tc(dev, args):
    subprocess.run(["tc", "qdisc"] + args.format(dev=dev).split(), check=True)


def plain(dst, size):
    """A datagram to DST's discard port through the normal stack."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"d" * size, (dst, 9))
    s.close()


def send_reversed(src, sport, dst, dport, data, hold):
    pkt = IP(src=src, dst=dst, flags=0, id=random.randrange(1, 65536)) / UDP(sport=sport, dport=dport) / data
    frags = fragment(pkt, fragsize=1400)
    assert len(frags) >= 3, len(frags)
    if hold:
        # 1 kbit/s, a 1,600-byte bucket: after a 1,400-byte datagram the
        # next full-size frame waits about 12 s; everything sent meanwhile
        # queues behind it.
        tc(hold, "replace dev {dev} root tbf rate 1kbit burst 1600 limit 100000")
        plain(dst, 1400)
    send(frags[::-1], verbose=0)
    if hold:
        # Unthrottled, then one more packet: its send runs the queue, which
        # hands every held frame to the device in one go.
        tc(hold, "change dev {dev} root tbf rate 10gbit burst 200000 limit 100000")
        plain(dst, 1)
        tc(hold, "del dev {dev} root")


def hold_dev(args, i):
    return args[i] if len(args) > i and args[i] != "-" else None


def main():
    args = sys.argv[1:]
    if args[0] == "send":
        src, sport, dst, dport, size = args[1:6]
        hold = hold_dev(args, 6)
        timeout = float(args[7]) if len(args) > 7 else 3.0
        payload = bytes(i % 251 for i in range(int(size)))
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((src, int(sport)))
        s.settimeout(timeout)
        send_reversed(src, int(sport), dst, int(dport), payload, hold)
        try:
            data = s.recv(65535)
        except socket.timeout:
            print(json.dumps({"lost": True}))
            return
        tag, seen, rest = data.split(b" ", 2)
        print(json.dumps({
            "lost": False,
            "len": len(data),
            "tag": tag.decode(),
            "seen": seen.decode(),
            "whole": rest == payload,
        }))
    elif args[0] == "echo":
        import time

        bind, port, tag = args[1], int(args[2]), args[3].encode()
        hold = hold_dev(args, 4)
        life = float(args[5]) if len(args) > 5 else 120.0
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((bind, port))
        s.settimeout(0.5)
        end = time.time() + life
        while time.time() < end:
            try:
                data, addr = s.recvfrom(65535)
            except socket.timeout:
                continue
            answer = tag + f" {addr[0]}:{addr[1]} ".encode() + data
            send_reversed(bind, port, addr[0], addr[1], answer, hold)
    else:
        sys.exit(f"unknown mode {args[0]}")


main()
