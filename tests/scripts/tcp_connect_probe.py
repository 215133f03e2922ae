"""One TCP connect from SRC:SPORT to DST:DPORT with a TIMEOUT: prints JSON,
"connected", "timeout" (no answer at all: the SYN and the kernel's
retransmissions dropped) or the errno name ("ECONNREFUSED": a RST came).
Usage: tcp_connect_probe.py SRC SPORT DST DPORT TIMEOUT_SECS"""
import errno
import json
import socket
import sys

src, sport, dst, dport, timeout = sys.argv[1:6]
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((src, int(sport)))
s.settimeout(float(timeout))
try:
    s.connect((dst, int(dport)))
    result = "connected"
except socket.timeout:
    result = "timeout"
except OSError as e:
    result = errno.errorcode.get(e.errno, str(e.errno))
print(json.dumps({"result": result}))
