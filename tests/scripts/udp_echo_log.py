"""UDP echo that logs every datagram, for checking NAT port reuse from the
server's side.

  udp_echo_log.py serve PORT LOG LIFETIME
      Replies "echo <src-ip:port> <payload>" and appends a line
      "<t_recv_ns> <t_send_ns> <src-ip:port> <payload>" to LOG; times are
      CLOCK_MONOTONIC (the clock the datapath stamps sessions with), t_send
      read before the reply leaves. Exits after LIFETIME seconds.

  udp_echo_log.py check LOG ADDR TIMEOUT_SECS
      For each external port of ADDR, the flows using it in arrival order:
      a flow reusing a port must arrive more than TIMEOUT_SECS after the
      previous flow's reply left (the session then idle past its timeout).
      Prints JSON: datagrams, ports, reuses, min_gap_secs, violations and
      up to 20 examples."""
import json
import socket
import sys
import time


def serve(port, log, life):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    s.settimeout(0.5)
    end = time.monotonic() + life
    with open(log, "w", buffering=1 << 16) as out:
        last_flush = time.monotonic()
        while time.monotonic() < end:
            try:
                data, addr = s.recvfrom(2048)
            except socket.timeout:
                out.flush()
                continue
            t_recv = time.monotonic_ns()
            src = f"{addr[0]}:{addr[1]}"
            t_send = time.monotonic_ns()
            s.sendto(b"echo " + src.encode() + b" " + data, addr)
            out.write(f"{t_recv} {t_send} {src} {data.decode(errors='replace')}\n")
            if t_send / 1e9 - last_flush > 1.0:
                out.flush()
                last_flush = t_send / 1e9


def check(log, addr, timeout):
    flows = {}
    datagrams = 0
    with open(log) as f:
        for line in f:
            t_recv, t_send, src, payload = line.split(maxsplit=3)
            datagrams += 1
            ip, port = src.rsplit(":", 1)
            if ip == addr:
                flows.setdefault(port, []).append((int(t_recv), int(t_send), payload))
    reuses, min_gap, violations, examples = 0, None, 0, []
    for port, seen in flows.items():
        seen.sort()
        for prev, cur in zip(seen, seen[1:]):
            if cur[2] == prev[2]:
                continue  # the same flow again (never sent twice here)
            reuses += 1
            gap = (cur[0] - prev[1]) / 1e9
            min_gap = gap if min_gap is None else min(min_gap, gap)
            if gap <= timeout:
                violations += 1
                if len(examples) < 20:
                    examples.append({"port": int(port), "gap_secs": gap,
                                     "before": prev[2].strip(), "after": cur[2].strip()})
    print(json.dumps({"datagrams": datagrams, "ports": len(flows), "reuses": reuses,
                      "min_gap_secs": min_gap, "violations": violations,
                      "examples": examples}))


if sys.argv[1] == "serve":
    serve(int(sys.argv[2]), sys.argv[3], float(sys.argv[4]))
else:
    check(sys.argv[2], sys.argv[3], float(sys.argv[4]))
