"""Sends COUNT sequence-numbered datagrams to DST:PORT from source port SPORT,
one every INTERVAL seconds; prints the number sent.
Usage: udp_send.py DST PORT SPORT COUNT INTERVAL"""
import socket
import sys
import time

dst, port, sport, count, interval = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", sport))
start = time.time()
for i in range(count):
    s.sendto(f"{i} ".encode() + b"x" * 64, (dst, port))
    delay = start + (i + 1) * interval - time.time()
    if delay > 0:
        time.sleep(delay)
print(count)
