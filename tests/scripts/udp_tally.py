"""Counts datagrams arriving on UDP PORT (any address) while it runs and
keeps the tally in OUT (JSON {"received": n, "sources": [...]}, replaced
atomically at most every 0.1 s), so a test can watch a flow move between
receivers. Says "listening" on stderr once bound; ends when STOP_FILE
exists or after LIFETIME seconds (it always ends by itself).
Usage: udp_tally.py PORT OUT STOP_FILE LIFETIME"""
import json
import os
import socket
import sys
import time

port, out, stop, life = int(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4])


def write(n, sources):
    with open(out + ".tmp", "w") as f:
        json.dump({"received": n, "sources": sorted(sources)}, f)
    os.replace(out + ".tmp", out)


s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", port))
s.settimeout(0.1)
received, sources, end, last_write = 0, set(), time.time() + life, 0.0
write(0, sources)
print("listening", file=sys.stderr, flush=True)
while time.time() < end and not os.path.exists(stop):
    try:
        _, addr = s.recvfrom(2048)
        received += 1
        sources.add(f"{addr[0]}:{addr[1]}")
    except socket.timeout:
        pass
    if time.time() - last_write >= 0.1:
        write(received, sources)
        last_write = time.time()
write(received, sources)
