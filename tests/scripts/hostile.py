"""Sends malformed and hostile frames out of IFACE with scapy (raw, L2), each
kind COUNT times, and prints what it sent as JSON {kind: frames}.
Usage: hostile.py IFACE SRC_MAC SRC_IP DST_MAC DST_IP OTHER_IP COUNT
OTHER_IP: an address the sender does not own (spoofing); DST_IP is reached
via DST_MAC (the gateway or a neighbour)."""
import json
import sys

from scapy.all import ARP, ICMP, IP, TCP, UDP, Dot1Q, Ether, Raw, conf, sendp

conf.verb = 0
iface, smac, sip, dmac, dip, other, count = sys.argv[1:8]
count = int(count)
eth = Ether(src=smac, dst=dmac)
ipeth = Ether(src=smac, dst=dmac, type=0x0800)  # IPv4 ethertype, raw payload
ip_ok = IP(src=sip, dst=dip)


def raw_ip(ihl_byte, length=20):
    # An IPv4 header with an arbitrary version/IHL byte, padded to `length`.
    b = bytearray(bytes(IP(src=sip, dst=dip, proto=17)))[:20]
    b[0] = ihl_byte
    return bytes(b) + b"\x00" * max(0, length - 20)


frames = {
    # Ethertype IPv4 with no room for an IPv4 header.
    "truncated_ip": ipeth / Raw(b"\x45\x00"),
    # IHL 3 (12 bytes): invalid.
    "bad_ihl": ipeth / Raw(raw_ip(0x43)),
    # Version 6 in an IPv4 ethertype.
    "bad_version": ipeth / Raw(raw_ip(0x65)),
    # IHL 15 claims 60 bytes of header, only 20 present.
    "ihl_beyond_frame": ipeth / Raw(raw_ip(0x4F)),
    # Four stacked VLAN tags (the kernel pops the outer one before TC).
    "vlan_stack": eth / Dot1Q(vlan=1) / Dot1Q(vlan=2) / Dot1Q(vlan=3) / Dot1Q(vlan=4) / ip_ok / ICMP(),
    # Sender claims another host's IP (ARP spoofing).
    "arp_spoof": eth / ARP(op=2, hwsrc=smac, psrc=other, hwdst=dmac, pdst=dip),
    # A forged IPv4 source.
    "ip_spoof": eth / IP(src=other, dst=dip) / ICMP(),
    # A forged source MAC.
    "mac_spoof": Ether(src="02:de:ad:be:ef:01", dst=dmac) / ip_ok / ICMP(),
    # Multicast source MAC: never valid.
    "multicast_src_mac": Ether(src="01:00:5e:00:00:01", dst=dmac) / ip_ok / ICMP(),
    # Valid but unusual: IP options, bad checksums, fragments (the kernel or
    # the NAT decides; they must not crash or corrupt anything).
    "ip_options": eth / IP(src=sip, dst=dip, options=b"\x01\x01\x01\x00") / ICMP(),
    "bad_ip_checksum": eth / IP(src=sip, dst=dip, chksum=0x1234) / ICMP(),
    "bad_udp_checksum": eth / ip_ok / UDP(sport=1234, dport=9, chksum=0x4321) / Raw(b"x"),
    "non_first_fragment": eth / IP(src=sip, dst=dip, proto=17, frag=100) / Raw(b"y" * 16),
    "tcp_bad_offset": eth / ip_ok / Raw(bytes(TCP(sport=1, dport=80, dataofs=15))[:20]),
}
sent = {}
for kind, f in frames.items():
    sendp(f, iface=iface, count=count)
    sent[kind] = count
print(json.dumps(sent))
