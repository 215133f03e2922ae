"""Sends sequence-numbered datagrams to DST:PORT from source port SPORT, one
every INTERVAL seconds, until STOP_FILE exists (or MAX_COUNT datagrams or
MAX_SECS seconds: it always ends by itself). Keeps the number sent so far in
PROGRESS_FILE (replaced atomically) so the caller can see the stream run;
says "sending" on stderr once started; prints the total sent.
Usage: udp_send.py DST PORT SPORT INTERVAL PROGRESS_FILE STOP_FILE MAX_COUNT MAX_SECS"""
import os
import socket
import sys
import time

dst, port, sport = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
interval, progress, stop = float(sys.argv[4]), sys.argv[5], sys.argv[6]
max_count, max_secs = int(sys.argv[7]), float(sys.argv[8])


def report(n):
    with open(progress + ".tmp", "w") as f:
        f.write(str(n))
    os.replace(progress + ".tmp", progress)


s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", sport))
report(0)
print("sending", file=sys.stderr, flush=True)
start, sent = time.time(), 0
while sent < max_count and time.time() - start < max_secs and not os.path.exists(stop):
    s.sendto(f"{sent} ".encode() + b"x" * 64, (dst, port))
    sent += 1
    if sent % 10 == 0:
        report(sent)
    delay = start + sent * interval - time.time()
    if delay > 0:
        time.sleep(delay)
report(sent)
print(sent)
