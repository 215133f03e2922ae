"""Counts sequence-numbered datagrams on PORT until IDLE seconds pass without
one (after the first) or LIFETIME runs out; writes JSON to OUT:
{"received": n, "distinct": n, "sources": ["addr:port", ...]}.
Usage: udp_count.py PORT OUT [IDLE_SECS] [LIFETIME_SECS]"""
import json
import os
import socket
import sys
import time

port, out = int(sys.argv[1]), sys.argv[2]
idle = float(sys.argv[3]) if len(sys.argv) > 3 else 2.0
life = float(sys.argv[4]) if len(sys.argv) > 4 else 60.0
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind(("0.0.0.0", port))
s.settimeout(0.2)
seqs, sources, last, end = [], set(), None, time.time() + life
while time.time() < end and (last is None or time.time() - last < idle):
    try:
        data, addr = s.recvfrom(2048)
    except socket.timeout:
        continue
    last = time.time()
    seqs.append(int(data.split(b" ")[0]))
    sources.add(f"{addr[0]}:{addr[1]}")
# Written whole, then renamed: a reader polling for OUT never sees it half
# written (an empty file read as JSON failed a test under load).
with open(out + ".tmp", "w") as f:
    json.dump({"received": len(seqs), "distinct": len(set(seqs)), "sources": sorted(sources)}, f)
os.rename(out + ".tmp", out)
