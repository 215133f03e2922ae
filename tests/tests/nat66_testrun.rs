//! NAT66 through BPF_PROG_TEST_RUN (a real skb, nothing sent): hand-built
//! IPv6 packets through the uplink programs, the rewritten addresses,
//! ports and every checksum checked here (computed independently), the
//! counters that moved, and the conntrack entries. SNAT66 and DNAT66.
use std::{collections::BTreeMap, net::Ipv6Addr};

use netbridge::{
    bpf::{Datapath, PinDir, ensure_bpffs},
    nat6::{self, Nat6Maps},
    netns::{Netns, run_blocking_in},
};
use netbridge_common::{
    CT_DIR_IN, CT_DIR_OUT, CT_F_ORIGINAL, CT_TCP_SYN, CT_UDP, Fwd6Target, PROG_UPLINK_EGRESS,
    PROG_UPLINK_INGRESS,
};
use netbridge_tests::{
    Sandbox, require_root,
    testrun::{self, frame, run_out},
};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMPV6: u8 = 58;

fn a(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

fn uplink() -> Ipv6Addr {
    a("2001:db8:1::1")
}
fn server() -> Ipv6Addr {
    a("2001:db8:2::10")
}
fn black() -> Ipv6Addr {
    a("fd00:77::10")
}

/// One's complement sum of big-endian words.
fn sum(data: &[u8], mut acc: u32) -> u32 {
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            [c[0], c[1]]
        } else {
            [c[0], 0]
        };
        acc += u16::from_be_bytes(w) as u32;
    }
    acc
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// The checksum of an L4 message over IPv6 (pseudo-header included).
fn l4_csum(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, l4: &[u8]) -> u16 {
    let mut s = sum(&src.octets(), 0);
    s = sum(&dst.octets(), s);
    s = sum(&(l4.len() as u32).to_be_bytes(), s);
    s = sum(&[0, 0, 0, proto], s);
    !fold(sum(l4, s))
}

/// Is the L4 checksum of IPv6 packet `ip` valid?
fn l4_valid(ip: &[u8]) -> bool {
    let (src, dst) = (addr_at(ip, 8), addr_at(ip, 24));
    l4_csum(src, dst, ip[6], &ip[40..]) == 0
}

fn addr_at(b: &[u8], off: usize) -> Ipv6Addr {
    Ipv6Addr::from(<[u8; 16]>::try_from(&b[off..off + 16]).unwrap())
}

/// An IPv6 packet around `l4` (its checksum at `csum_off` filled in).
fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, mut l4: Vec<u8>, csum_off: usize) -> Vec<u8> {
    let c = l4_csum(src, dst, proto, &l4);
    l4[csum_off..csum_off + 2].copy_from_slice(&c.to_be_bytes());
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    p.extend_from_slice(&[proto, 64]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&l4);
    p
}

fn udp(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut l4 = Vec::new();
    l4.extend_from_slice(&sport.to_be_bytes());
    l4.extend_from_slice(&dport.to_be_bytes());
    l4.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    l4.extend_from_slice(&[0, 0]);
    l4.extend_from_slice(payload);
    ipv6(src, dst, UDP, l4, 6)
}

fn port_at(ip: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([ip[off], ip[off + 1]])
}

struct Lab {
    dp: Datapath,
    egress: i32,
    ingress: i32,
}

impl Lab {
    fn nat6(&mut self) -> &mut Nat6Maps {
        self.dp.maps.nat6.as_mut().expect("NAT66 maps")
    }

    /// Runs `prog` on `ip` in an Ethernet frame; the verdict and the IPv6
    /// packet as left.
    fn run(&self, prog: i32, ip: &[u8]) -> (u32, Vec<u8>) {
        let mut f = frame::eth([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2], &[], 0x86dd);
        f.extend_from_slice(ip);
        let r = run_out(prog, &f).unwrap_or_else(|e| panic!("test run: {e}"));
        (r.retval, r.data[14..].to_vec())
    }

    /// Runs `f`, returns the counters that moved, by how much.
    fn moved<T>(&self, f: impl FnOnce() -> T) -> (T, BTreeMap<String, u64>) {
        testrun::moved(&self.dp, f)
    }
}

fn counts(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

fn scenario(test: impl FnOnce(&mut Lab) + Send) {
    let mut sb = Sandbox::new();
    let pins = PinDir(ensure_bpffs(&format!("{}n6r", sb.prefix())).unwrap());
    sb.adopt_pins(&pins.0);
    run_blocking_in(&Netns::named(&sb.host), move || {
        let mut dp = Datapath::load(pins).expect("load");
        dp.maps.configure(&[], 300, None).unwrap();
        let fd = |name| dp.prog_fd(name).unwrap();
        let mut lab = Lab {
            egress: fd(PROG_UPLINK_EGRESS),
            ingress: fd(PROG_UPLINK_INGRESS),
            dp,
        };
        let prefixes = ["fd00:77::/64".parse().unwrap()];
        let cfg = nat6::config(
            uplink(),
            4242,
            &prefixes,
            (1024, 65535),
            [0, 60, 7440, 120, 10, 30, 180, 30],
        );
        lab.nat6().apply(cfg).unwrap();
        test(&mut lab);
    })
    .unwrap();
}

/// A lab host's UDP out: source address and port (kept) rewritten, a valid
/// checksum, both halves in the table; the reply comes back to the lab
/// host with a valid checksum; a Packet Too Big quoting the translated
/// packet is translated with its quote (outer and quoted checksums valid).
#[test]
fn udp_out_reply_and_packet_too_big() {
    require_root!();
    scenario(|lab| {
        let (out, moved) =
            lab.moved(|| lab.run(lab.egress, &udp(black(), 40000, server(), 7, b"hello")));
        assert_eq!(out.0, TC_ACT_OK);
        let ip = out.1;
        assert_eq!((addr_at(&ip, 8), port_at(&ip, 40)), (uplink(), 40000));
        assert_eq!((addr_at(&ip, 24), port_at(&ip, 42)), (server(), 7));
        assert!(l4_valid(&ip), "bad UDP checksum out: {ip:02x?}");
        let want = [("snat6_new", 1), ("port_kept", 1), ("translated6_out", 1)];
        assert_eq!(moved, counts(&want));
        let entries: Vec<_> = lab.nat6().ct.iter().map(|r| r.unwrap()).collect();
        assert_eq!(entries.len(), 2);
        let (k, e) = entries.iter().find(|(k, _)| k.dir == CT_DIR_OUT).unwrap();
        assert_eq!((nat6::addr(&k.saddr), k.sport.get()), (black(), 40000));
        assert_eq!(
            (nat6::addr(&e.nat_addr), e.nat_port.get()),
            (uplink(), 40000)
        );
        assert_eq!(
            (e.state, e.flags, e.reverse.dir),
            (CT_UDP, CT_F_ORIGINAL, CT_DIR_IN)
        );

        // The reply.
        let (back, moved) = lab.moved(|| {
            lab.run(
                lab.ingress,
                &udp(server(), 7, uplink(), 40000, b"hello back"),
            )
        });
        assert_eq!(back.0, TC_ACT_OK);
        assert_eq!(
            (addr_at(&back.1, 24), port_at(&back.1, 42)),
            (black(), 40000)
        );
        assert!(l4_valid(&back.1), "bad UDP checksum in");
        assert_eq!(moved, counts(&[("translated6_in", 1)]));

        // Packet Too Big from the router, quoting the translated packet.
        let mut l4 = vec![2, 0, 0, 0, 0, 0, 0x05, 0x00];
        l4.extend_from_slice(&ip);
        let ptb = ipv6(a("2001:db8:1::fe"), uplink(), ICMPV6, l4, 2);
        let (err, moved) = lab.moved(|| lab.run(lab.ingress, &ptb));
        assert_eq!(err.0, TC_ACT_OK);
        assert_eq!(moved, counts(&[("icmp6_errors_translated", 1)]));
        let e = err.1;
        assert_eq!(addr_at(&e, 24), black(), "outer destination");
        assert!(l4_valid(&e), "bad ICMPv6 checksum");
        let q = &e[48..];
        assert_eq!(
            (addr_at(q, 8), port_at(q, 40)),
            (black(), 40000),
            "quoted source"
        );
        assert!(l4_valid(q), "bad quoted UDP checksum");
    });
}

/// A lab source of a kind NAT66 does not translate is dropped and counted,
/// never passed; the host's own (link-local) traffic passes untouched.
#[test]
fn untranslatable_lab_packets_are_dropped() {
    require_root!();
    scenario(|lab| {
        let sctp = ipv6(black(), server(), 132, vec![0; 16], 0);
        let (out, moved) = lab.moved(|| lab.run(lab.egress, &sctp));
        assert_eq!(out.0, TC_ACT_SHOT);
        assert_eq!(moved, counts(&[("nat_untranslatable", 1)]));
        let own = udp(a("fe80::1"), 546, a("fe80::2"), 547, b"x");
        let (out, moved) = lab.moved(|| lab.run(lab.egress, &own));
        assert_eq!((out.0, &out.1), (TC_ACT_OK, &own));
        assert!(moved.is_empty(), "{moved:?}");
        // Not for the uplink address: passed, untouched.
        let other = udp(server(), 7, a("2001:db8:1::99"), 40000, b"x");
        let (out, moved) = lab.moved(|| lab.run(lab.ingress, &other));
        assert_eq!((out.0, &out.1), (TC_ACT_OK, &other));
        assert!(moved.is_empty(), "{moved:?}");
    });
}

/// A lab host's error about a reply it got (Port Unreachable) goes out
/// with the mapping: outer source, quoted destination and port (a
/// remapped one), every checksum valid. One about no session is dropped.
#[test]
fn lab_icmp6_error_is_translated_out() {
    require_root!();
    scenario(|lab| {
        // Source port 80 is outside 1024-65535: remapped.
        let (out, _) = lab.moved(|| lab.run(lab.egress, &udp(black(), 80, server(), 7, b"q")));
        assert_eq!(out.0, TC_ACT_OK);
        let ext = port_at(&out.1, 40);
        assert!(ext >= 1024, "{ext}");
        let (back, _) = lab.moved(|| lab.run(lab.ingress, &udp(server(), 7, uplink(), ext, b"r")));
        assert_eq!((addr_at(&back.1, 24), port_at(&back.1, 42)), (black(), 80));
        // Port Unreachable from black quoting the reply as it got it.
        let mut l4 = vec![1, 4, 0, 0, 0, 0, 0, 0];
        l4.extend_from_slice(&back.1);
        let unreach = ipv6(black(), server(), ICMPV6, l4.clone(), 2);
        let (err, moved) = lab.moved(|| lab.run(lab.egress, &unreach));
        assert_eq!(err.0, TC_ACT_OK);
        assert_eq!(moved, counts(&[("icmp6_errors_translated", 1)]));
        let e = err.1;
        assert_eq!(addr_at(&e, 8), uplink(), "outer source");
        assert!(l4_valid(&e), "bad ICMPv6 checksum");
        let q = &e[48..];
        assert_eq!(
            (addr_at(q, 24), port_at(q, 42)),
            (uplink(), ext),
            "quoted destination"
        );
        assert!(l4_valid(q), "bad quoted UDP checksum");
        // About a packet of no session: dropped, not leaked.
        let mut l4 = vec![1, 4, 0, 0, 0, 0, 0, 0];
        l4.extend_from_slice(&udp(server(), 7, black(), 81, b"r"));
        let stray = ipv6(black(), server(), ICMPV6, l4, 2);
        let (err, moved) = lab.moved(|| lab.run(lab.egress, &stray));
        assert_eq!(err.0, TC_ACT_SHOT);
        assert_eq!(moved, counts(&[("nat_untranslatable", 1)]));
    });
}

/// A TCP segment with `flags` (no options).
fn tcp(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16, flags: u8) -> Vec<u8> {
    let mut l4 = Vec::new();
    l4.extend_from_slice(&sport.to_be_bytes());
    l4.extend_from_slice(&dport.to_be_bytes());
    l4.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    ipv6(src, dst, TCP, l4, 16)
}

/// DNAT66: a SYN from upstream to a forwarded port (the second of a
/// range) opens a session (reply half first) and goes to the target,
/// checksum valid; the target's SYN-ACK leaves as the uplink's port; a
/// Packet Too Big about it goes back to the target with its quote; a port
/// without a forward passes untouched and opens nothing.
#[test]
fn dnat66_forward_opens_a_session_and_replies_go_back() {
    require_root!();
    scenario(|lab| {
        let fwd = Fwd6Target {
            addr: nat6::in6(black()),
            port: 8000,
            first: 8080,
            last: 8081,
            proto: TCP,
            _pad: 0,
        };
        lab.nat6().set_forwards(&[fwd]).unwrap();
        let syn = tcp(server(), 40000, uplink(), 8081, 0x02);
        let (inb, moved) = lab.moved(|| lab.run(lab.ingress, &syn));
        assert_eq!(inb.0, TC_ACT_OK);
        let ip = inb.1;
        assert_eq!((addr_at(&ip, 24), port_at(&ip, 42)), (black(), 8001));
        assert_eq!((addr_at(&ip, 8), port_at(&ip, 40)), (server(), 40000));
        assert!(l4_valid(&ip), "bad TCP checksum in: {ip:02x?}");
        assert_eq!(moved, counts(&[("dnat6_new", 1), ("translated6_in", 1)]));
        let entries: Vec<_> = lab.nat6().ct.iter().map(|r| r.unwrap()).collect();
        assert_eq!(entries.len(), 2);
        let (k, e) = entries.iter().find(|(k, _)| k.dir == CT_DIR_IN).unwrap();
        assert_eq!((nat6::addr(&k.saddr), k.dport.get()), (server(), 8081));
        assert_eq!((nat6::addr(&e.nat_addr), e.nat_port.get()), (black(), 8001));
        assert_eq!((e.flags, e.state), (CT_F_ORIGINAL, CT_TCP_SYN));

        let synack = tcp(black(), 8001, server(), 40000, 0x12);
        let (out, moved) = lab.moved(|| lab.run(lab.egress, &synack));
        assert_eq!(out.0, TC_ACT_OK);
        let ip = out.1;
        assert_eq!((addr_at(&ip, 8), port_at(&ip, 40)), (uplink(), 8081));
        assert!(l4_valid(&ip), "bad TCP checksum out: {ip:02x?}");
        assert_eq!(moved, counts(&[("translated6_out", 1)]));
        let s = lab.nat6().sessions(0);
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!(s[0].inside, "[fd00:77::10]:8001");
        assert_eq!(s[0].external, "[2001:db8:1::1]:8081");
        assert_eq!(s[0].state, "ESTABLISHED");

        // Packet Too Big from the router quoting the translated SYN-ACK:
        // back to the target, the quote as the target sent it.
        let mut l4 = vec![2, 0, 0, 0, 0, 0, 0x05, 0x00];
        l4.extend_from_slice(&ip);
        let ptb = ipv6(a("2001:db8:1::fe"), uplink(), ICMPV6, l4, 2);
        let (err, moved) = lab.moved(|| lab.run(lab.ingress, &ptb));
        assert_eq!(err.0, TC_ACT_OK);
        assert_eq!(moved, counts(&[("icmp6_errors_translated", 1)]));
        assert_eq!(addr_at(&err.1, 24), black(), "outer destination");
        assert!(l4_valid(&err.1), "bad ICMPv6 checksum");
        let q = &err.1[48..];
        assert_eq!((addr_at(q, 8), port_at(q, 40)), (black(), 8001), "quoted");
        assert!(l4_valid(q), "bad quoted TCP checksum");

        let other = tcp(server(), 40001, uplink(), 8082, 0x02);
        let (out, moved) = lab.moved(|| lab.run(lab.ingress, &other));
        assert_eq!((out.0, &out.1), (TC_ACT_OK, &other));
        assert!(moved.is_empty(), "{moved:?}");
        assert_eq!(lab.nat6().ct.iter().count(), 2);
    });
}
