"""Sends malformed and hostile frames out of IFACE with scapy (raw, L2): each
KIND named on the command line COUNT times, and prints what it sent as JSON
{kind: frames}. The caller decides which kinds to send and what each must
cause; an unknown kind is an error.
Usage: hostile.py IFACE SRC_MAC SRC_IP DST_MAC DST_IP OTHER_IP COUNT KIND...
OTHER_IP: an address the sender does not own (spoofing); DST_IP is reached
via DST_MAC (the gateway or a neighbour). TCP kinds go to port 8080, UDP
kinds to port 9."""
import json
import sys

from scapy.all import ARP, ICMP, IP, TCP, UDP, Dot1Q, Ether, Raw, conf, sendp

conf.verb = 0
iface, smac, sip, dmac, dip, other, count = sys.argv[1:8]
kinds = sys.argv[8:]
count = int(count)
eth = Ether(src=smac, dst=dmac)
ipeth = Ether(src=smac, dst=dmac, type=0x0800)  # IPv4 ethertype, raw payload
ip_ok = IP(src=sip, dst=dip)


def raw_ip(ihl_byte, length=20):
    # An IPv4 header with an arbitrary version/IHL byte, padded to `length`.
    b = bytearray(bytes(IP(src=sip, dst=dip, proto=17)))[:20]
    b[0] = ihl_byte
    return bytes(b) + b"\x00" * max(0, length - 20)


def tcp_bad_offset():
    # A SYN whose data offset claims 60 bytes of TCP header; 20 are present
    # (scapy computes a valid checksum over the 20).
    return eth / IP(src=sip, dst=dip) / TCP(sport=40001, dport=8080, flags="S", dataofs=15)


FRAMES = {
    # Ethertype IPv4 with no room for an IPv4 header.
    "truncated_ip": lambda: [ipeth / Raw(b"\x45\x00")],
    # IHL 3 (12 bytes): invalid.
    "bad_ihl": lambda: [ipeth / Raw(raw_ip(0x43))],
    # Version 6 in an IPv4 ethertype.
    "bad_version": lambda: [ipeth / Raw(raw_ip(0x65))],
    # IHL 15 claims 60 bytes of header, only 20 present.
    "ihl_beyond_frame": lambda: [ipeth / Raw(raw_ip(0x4F))],
    # Four stacked VLAN tags (the kernel pops the outer one before TC).
    "vlan_stack": lambda: [eth / Dot1Q(vlan=1) / Dot1Q(vlan=2) / Dot1Q(vlan=3) / Dot1Q(vlan=4) / ip_ok / ICMP()],
    # Sender claims another host's IP (ARP spoofing).
    "arp_spoof": lambda: [eth / ARP(op=2, hwsrc=smac, psrc=other, hwdst=dmac, pdst=dip)],
    # A forged IPv4 source.
    "ip_spoof": lambda: [eth / IP(src=other, dst=dip) / ICMP()],
    # A forged source MAC.
    "mac_spoof": lambda: [Ether(src="02:de:ad:be:ef:01", dst=dmac) / ip_ok / ICMP()],
    # Multicast source MAC: never valid.
    "multicast_src_mac": lambda: [Ether(src="01:00:5e:00:00:01", dst=dmac) / ip_ok / ICMP()],
    # Valid but unusual: an echo request with IP options (NOP, NOP, NOP, EOL).
    "ip_options": lambda: [eth / IP(src=sip, dst=dip, options=b"\x01\x01\x01\x00") / ICMP(id=0x4f50)],
    # Bad IPv4 header checksum (a kernel that receives it must drop it).
    "bad_ip_checksum": lambda: [eth / IP(src=sip, dst=dip, chksum=0x1234) / ICMP(id=0x4243)],
    # Bad UDP checksum (the receiving socket layer must drop it).
    "bad_udp_checksum": lambda: [eth / ip_ok / UDP(sport=1234, dport=9, chksum=0x4321) / Raw(b"x")],
    # A non-first fragment, its first never sent: no ports.
    "non_first_fragment": lambda: [eth / IP(src=sip, dst=dip, proto=17, frag=100) / Raw(b"y" * 16)],
    "tcp_bad_offset": lambda: [tcp_bad_offset()],
    # SYNs from OTHER_IP, each from its own source port: COUNT new flows.
    "syn_flood": lambda: [eth / IP(src=other, dst=dip) / TCP(sport=20000 + i, dport=8080, flags="S") for i in range(count)],
}
unknown = [k for k in kinds if k not in FRAMES]
if unknown or not kinds:
    sys.exit(f"unknown or no kinds: {unknown}; known: {sorted(FRAMES)}")
sent = {}
for kind in kinds:
    frames = FRAMES[kind]()
    # syn_flood already holds COUNT distinct frames; the rest repeat one.
    n = 1 if kind == "syn_flood" else count
    for f in frames:
        sendp(f, iface=iface, count=n)
    sent[kind] = len(frames) * n
print(json.dumps(sent))
