"""Bounded floods and the legitimate clients measured under them (the NAT
admission tests and bench). Every mode stops by itself.

  flood.py syn|udp IFACE DST_MAC SRC DST DPORT COUNT SECS
      Raw frames out of IFACE (AF_PACKET: no socket, no routing) from SRC
      to DST:DPORT, the source port changing every frame (1024-65535): TCP
      SYNs or 1-byte UDP datagrams. COUNT frames spread evenly over SECS
      seconds (paced per 256 frames, so legitimate clients measured
      "during" the flood really are), stopping at SECS. Prints JSON: sent,
      secs.
  flood.py connect DST DPORT N TIMEOUT [SRC]
      N new TCP connections one after another (from address SRC if
      given), each waiting for the server's greeting line (TIMEOUT s). Prints JSON: ok, failed,
      connect_ms (of the successful ones).
  flood.py keepalive DST DPORT SECS [SRC]
      One TCP connection (from address SRC if given), one byte every 0.1 s,
      each echo awaited (2 s); never reconnects. Prints JSON: exchanges,
      failures, local (the client's address:port).
  flood.py udp_connect DST DPORT N TIMEOUT
      N UDP exchanges from N new sockets: ok, failed.
"""
import json
import os
import socket
import struct
import sys
import time


def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def flood(kind, iface, dst_mac, src, dst, dport, count, secs):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((iface, 0))
    # The bound interface's own MAC (not /sys: nsenter keeps the caller's).
    src_mac = s.getsockname()[4]
    eth = bytes.fromhex(dst_mac.replace(":", "")) + src_mac + b"\x08\x00"
    sa, da = socket.inet_aton(src), socket.inet_aton(dst)
    proto = 6 if kind == "syn" else 17
    l4_len = 20 if kind == "syn" else 9
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + l4_len, 0, 0x4000, 64, proto, 0, sa, da)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    pseudo = sa + da + struct.pack("!BBH", 0, proto, l4_len)
    start = time.monotonic()
    sent = 0
    rate = count / secs
    while sent < count:
        if sent % 256 == 0:
            elapsed = time.monotonic() - start
            if elapsed > secs:
                break
            ahead = sent / rate - elapsed
            if ahead > 0:
                time.sleep(ahead)
        sport = 1024 + sent % 64512
        if kind == "syn":
            l4 = struct.pack("!HHIIBBHHH", sport, dport, sent, 0, 5 << 4, 0x02, 65535, 0, 0)
        else:
            l4 = struct.pack("!HHHH", sport, dport, l4_len, 0) + b"x"
        c = csum(pseudo + l4)
        at = 16 if kind == "syn" else 6
        l4 = l4[:at] + struct.pack("!H", c or 0xFFFF) + l4[at + 2:]
        try:
            s.send(eth + ip + l4)
        except OSError:
            time.sleep(0.001)
            continue
        sent += 1
    return {"sent": sent, "secs": round(time.monotonic() - start, 3)}


def connect(dst, dport, n, timeout, src=None):
    ok, times = 0, []
    for _ in range(n):
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c.settimeout(timeout)
        if src:
            c.bind((src, 0))
        t = time.monotonic()
        try:
            c.connect((dst, dport))
            c.makefile().readline()
            times.append(round((time.monotonic() - t) * 1000, 3))
            ok += 1
        except OSError:
            pass
        c.close()
    return {"ok": ok, "failed": n - ok, "connect_ms": times}


def keepalive(dst, dport, secs, src=None):
    c = socket.create_connection((dst, dport), timeout=2,
                                 source_address=(src, 0) if src else None)
    c.makefile().readline()
    local = "%s:%d" % c.getsockname()
    # Told to the test at once: it looks the session up while we run.
    print(json.dumps({"local": local}), flush=True)
    end, exchanges, failures = time.monotonic() + secs, 0, 0
    while time.monotonic() < end:
        try:
            c.sendall(b"k")
            if c.recv(1) == b"k":
                exchanges += 1
            else:
                failures += 1
        except OSError:
            failures += 1
        time.sleep(0.1)
    return {"exchanges": exchanges, "failures": failures, "local": local}


def udp_connect(dst, dport, n, timeout):
    ok = 0
    for i in range(n):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.settimeout(timeout)
        try:
            u.sendto(b"legit%d" % i, (dst, dport))
            u.recvfrom(2048)
            ok += 1
        except OSError:
            pass
        u.close()
    return {"ok": ok, "failed": n - ok}


def main(a):
    if a[0] in ("syn", "udp"):
        r = flood(a[0], a[1], a[2], a[3], a[4], int(a[5]), int(a[6]), float(a[7]))
    elif a[0] == "connect":
        r = connect(a[1], int(a[2]), int(a[3]), float(a[4]), a[5] if len(a) > 5 else None)
    elif a[0] == "keepalive":
        r = keepalive(a[1], int(a[2]), float(a[3]), a[4] if len(a) > 4 else None)
    elif a[0] == "udp_connect":
        r = udp_connect(a[1], int(a[2]), int(a[3]), float(a[4]))
    else:
        sys.exit(f"unknown mode {a[0]}")
    print(json.dumps(r), flush=True)


if __name__ == "__main__":
    os.nice(0)
    main(sys.argv[1:])
