"""The cost of one established-flow packet in the live TC ingress program of
an interface (issue 19: "a flood never costs more than its share"). Run in
the interface's namespace (nsenter --net).

  est_cost.py LINK_PIN DEV SRC:SPORT DST:DPORT RUNS [TRIGGER SECS]

Builds the frame DEV's ingress program sees for the next packet of a TCP
session from SRC:SPORT to DST:DPORT (Ethernet to DEV's MAC, IPv4 TTL 64,
TCP PSH|ACK with one byte, as the keep-alive client of flood.py sends;
every checksum valid), finds the program of the pinned link LINK_PIN (its
TC ingress link, e.g. /run/netbridge/bpf/TOPO/links/uplink_in@uplink0:
this bpftool's `net show` does not list TCX links), and runs it RUNS
times with BPF_PROG_TEST_RUN (repeat 1, a fresh skb each time: with
repeat N the kernel reruns the program on the same skb, which the first
run already translated, so the other N-1 runs would time another path).
Each run's duration is the kernel's (ns, the test-run loop's own overhead
included).

Measures at once and prints {"before": FIGURES}; with TRIGGER, then waits
(at most SECS) until the file TRIGGER exists, measures again and prints
{"during": FIGURES} (everything is set up before: nothing but the runs
lies between the trigger and the figures). FIGURES: prog_id, prog (its
name), runs, secs (of the runs), retvals (count per return value),
distinct_out (how many different output frames), data_out (the first
run's output frame, hex), ns_mean, ns_median, ns_p90, ns_min.
"""
import ctypes
import json
import os
import socket
import struct
import subprocess
import sys
import time

from flood import csum

BPF_PROG_TEST_RUN = 10
BPF_PROG_GET_FD_BY_ID = 13
SYS_BPF = {"x86_64": 321, "aarch64": 280}

u32, u64 = ctypes.c_uint32, ctypes.c_uint64


class GetFd(ctypes.Structure):
    _fields_ = [("id", u32), ("next_id", u32), ("open_flags", u32)]


class TestRun(ctypes.Structure):
    _fields_ = [
        ("prog_fd", u32), ("retval", u32),
        ("data_size_in", u32), ("data_size_out", u32),
        ("data_in", u64), ("data_out", u64),
        ("repeat", u32), ("duration", u32),
        ("ctx_size_in", u32), ("ctx_size_out", u32),
        ("ctx_in", u64), ("ctx_out", u64),
        ("flags", u32), ("cpu", u32), ("batch_size", u32), ("pad", u32),
    ]


libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def bpf(cmd, attr):
    nr = SYS_BPF[os.uname().machine]
    rc = libc.syscall(ctypes.c_long(nr), ctypes.c_long(cmd), ctypes.byref(attr),
                      ctypes.c_long(ctypes.sizeof(attr)))
    if rc < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"bpf({cmd}): {os.strerror(e)}")
    return rc


def bpftool(*args):
    out = subprocess.run(["bpftool", "-j", *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def link_prog(pin):
    """(id, name) of the program of the link pinned at PIN."""
    prog_id = bpftool("link", "show", "pinned", pin)["prog_id"]
    return prog_id, bpftool("prog", "show", "id", str(prog_id)).get("name", "")


def frame(dev, src, sport, dst, dport):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((dev, 0))
    # The interface's own MAC (not /sys: nsenter keeps the caller's).
    mac = s.getsockname()[4]
    s.close()
    eth = mac + bytes.fromhex("020000000001") + b"\x08\x00"
    sa, da = socket.inet_aton(src), socket.inet_aton(dst)
    payload = b"k"
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 1, 5 << 4, 0x18, 502, 0, 0) + payload
    tcp = tcp[:16] + struct.pack("!H", csum(sa + da + struct.pack("!BBH", 0, 6, len(tcp)) + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0x4000, 64, 6, 0, sa, da)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    return eth + ip + tcp


def endpoint(s):
    a, p = s.rsplit(":", 1)
    return a, int(p)


def measure(fd, data, runs):
    din = ctypes.create_string_buffer(data, len(data))
    dout = ctypes.create_string_buffer(len(data) + 256)
    ns, retvals, outs, first = [], {}, set(), None
    t = time.monotonic()
    for _ in range(runs):
        attr = TestRun(prog_fd=fd, data_size_in=len(data), data_size_out=len(dout),
                       data_in=ctypes.addressof(din), data_out=ctypes.addressof(dout),
                       repeat=1)
        bpf(BPF_PROG_TEST_RUN, attr)
        ns.append(attr.duration)
        retvals[attr.retval] = retvals.get(attr.retval, 0) + 1
        out = dout.raw[:attr.data_size_out]
        outs.add(out)
        first = first if first is not None else out
    secs = time.monotonic() - t
    ns.sort()
    return {
        "runs": runs,
        "secs": round(secs, 3),
        "retvals": {str(k): v for k, v in sorted(retvals.items())},
        "distinct_out": len(outs),
        "data_out": first.hex(),
        "ns_mean": round(sum(ns) / len(ns), 1),
        "ns_median": ns[len(ns) // 2],
        "ns_p90": ns[len(ns) * 9 // 10],
        "ns_min": ns[0],
    }


def main(a):
    pin, dev, runs = a[0], a[1], int(a[4])
    (src, sport), (dst, dport) = endpoint(a[2]), endpoint(a[3])
    prog_id, name = link_prog(pin)
    fd = bpf(BPF_PROG_GET_FD_BY_ID, GetFd(id=prog_id))
    data = frame(dev, src, sport, dst, dport)
    prog = {"prog_id": prog_id, "prog": name}
    print(json.dumps({"before": {**prog, **measure(fd, data, runs)}}), flush=True)
    if len(a) > 5:
        trigger, end = a[5], time.monotonic() + float(a[6])
        while not os.path.exists(trigger):
            if time.monotonic() > end:
                sys.exit(f"{trigger} never appeared")
            time.sleep(0.001)
        print(json.dumps({"during": {**prog, **measure(fd, data, runs)}}), flush=True)
    os.close(fd)


if __name__ == "__main__":
    main(sys.argv[1:])
