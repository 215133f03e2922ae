"""A UDP peer for hairpinning tests: binds BIND_IP:PORT, says so by creating
OUT.ready, sends MSG to DST_IP:DST_PORT once GO_FILE exists, answers every
datagram not starting with "re:" with "re:" + it (to its source), and keeps
the list of datagrams received ([text, "ip:port"]) as JSON in OUT (replaced
atomically after each). Ends when OUT.stop exists or after MAX_SECS.
IPv6 if BIND_IP has a colon (sources then listed as "[ip]:port").
Usage: udp_hairpin_peer.py BIND_IP PORT OUT GO_FILE DST_IP DST_PORT MSG MAX_SECS"""
import json
import os
import socket
import sys
import time

bind_ip, port, out, go = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
dst, msg, max_secs = (sys.argv[5], int(sys.argv[6])), sys.argv[7].encode(), float(sys.argv[8])

v6 = ":" in bind_ip
s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
s.bind((bind_ip, port))
s.settimeout(0.1)
received = []


def save():
    with open(out + ".tmp", "w") as f:
        json.dump({"received": received}, f)
    os.replace(out + ".tmp", out)


save()
open(out + ".ready", "w").close()
start, sent = time.time(), False
while time.time() - start < max_secs and not os.path.exists(out + ".stop"):
    if not sent and os.path.exists(go):
        s.sendto(msg, dst)
        sent = True
    try:
        data, src = s.recvfrom(2048)
    except (socket.timeout, ConnectionRefusedError):
        continue
    fmt = "[%s]:%d" if v6 else "%s:%d"
    received.append([data.decode(errors="replace"), fmt % src[:2]])
    save()
    if not data.startswith(b"re:"):
        s.sendto(b"re:" + data, src)
