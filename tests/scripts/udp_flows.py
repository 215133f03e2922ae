"""Opens COUNT UDP flows to DST:DPORT, at most RATE a second (never catching
up in bursts): each from a new socket on the next source port of
SPORT_FIRST..SPORT_LAST (cycling), one request "TAG<i>", one reply awaited
(1 s, no retry). Prints JSON: sent, answered, unanswered (first 20 ids),
secs. Stops by itself after LIFETIME seconds (default 3600).
Usage: udp_flows.py DST DPORT COUNT RATE SPORT_FIRST SPORT_LAST TAG [LIFETIME]"""
import json
import socket
import sys
import time

dst, dport, count, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
first, last, tag = int(sys.argv[5]), int(sys.argv[6]), sys.argv[7]
life = float(sys.argv[8]) if len(sys.argv) > 8 else 3600.0
start = time.monotonic()
due, port, sent, answered, unanswered = start, first, 0, 0, []
for i in range(count):
    if time.monotonic() - start > life:
        break
    now = time.monotonic()
    if now < due:
        time.sleep(due - now)
    due = max(due, time.monotonic()) + 1.0 / rate
    payload = f"{tag}{i}".encode()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.settimeout(1.0)
    s.sendto(payload, (dst, dport))
    sent += 1
    try:
        reply = s.recvfrom(2048)[0]
        if reply.endswith(b" " + payload):
            answered += 1
        elif len(unanswered) < 20:
            unanswered.append(i)
    except socket.timeout:
        if len(unanswered) < 20:
            unanswered.append(i)
    s.close()
    port = first if port >= last else port + 1
print(json.dumps({"sent": sent, "answered": answered, "unanswered": unanswered,
                  "secs": round(time.monotonic() - start, 3)}))
