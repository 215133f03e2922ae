//! NAT66 through BPF_PROG_TEST_RUN (a real skb, nothing sent): hand-built
//! IPv6 packets through the uplink programs, the rewritten addresses,
//! ports and every checksum checked here (computed independently), the
//! counters that moved, and the conntrack entries. SNAT66 and DNAT66.
use std::{collections::BTreeMap, net::Ipv6Addr};

use netbridge::{
    bpf::{Datapath, Gateway, PinDir, ensure_bpffs},
    nat6::{self, Nat6Maps},
    netns::{Netns, run_blocking_in},
};
use netbridge_common::{
    CT_DIR_IN, CT_DIR_OUT, CT_F_ORIGINAL, CT_TCP_SYN, CT_UDP, Fwd6Target, NAT6_FAST_PATH,
    NatConfig, PROG_PORT_INGRESS, PROG_UPLINK_EGRESS, PROG_UPLINK_INGRESS,
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

/// Issue 16: TCP and UDP from the uplink address (translated at a bridge
/// port by the NAT66 fast path, or the host's own) pass the uplink egress
/// untouched, now decided from the frame's head before NAT66's parse.
/// Nothing to see but the cost: such a source was never a lab one, so it
/// passed after the parse before (this test passes on that build too). It
/// checks what must not change: the parse's header checks still apply (a
/// payload length past the frame is dropped, `bad_ipv6_header`, which a
/// shortcut that skipped them would pass), and lab sources are translated.
#[test]
fn uplink_sourced_tcp_and_udp_pass_the_egress() {
    require_root!();
    scenario(|lab| {
        let (up, srv) = (uplink(), server());
        for p in [udp(up, 40000, srv, 7, b"x"), tcp(up, 40000, srv, 80, 0x10)] {
            let (out, moved) = lab.moved(|| lab.run(lab.egress, &p));
            assert_eq!((out.0, &out.1), (TC_ACT_OK, &p));
            assert!(moved.is_empty(), "{moved:?}");
        }
        let mut long_plen = udp(up, 40001, srv, 7, b"x");
        let n = long_plen.len() as u16;
        long_plen[4..6].copy_from_slice(&n.to_be_bytes());
        let (out, moved) = lab.moved(|| lab.run(lab.egress, &long_plen));
        assert_eq!(out.0, TC_ACT_SHOT);
        assert_eq!(moved, counts(&[("bad_ipv6_header", 1)]));
        let (out, moved) = lab.moved(|| lab.run(lab.egress, &udp(black(), 40002, srv, 7, b"q")));
        assert_eq!((out.0, addr_at(&out.1, 8)), (TC_ACT_OK, up));
        let want = [("snat6_new", 1), ("port_kept", 1), ("translated6_out", 1)];
        assert_eq!(moved, counts(&want));
        assert_eq!(lab.nat6().ct.iter().count(), 2);
    });
}

/// Issue 16: the NAT66 fast path at a bridge port (direct packet access,
/// the address's checksum difference computed in the program) byte for
/// byte against packets built whole: UDP and TCP of SNAT66 sessions, and
/// a DNAT66 reply whose source port changes (8001 -> 8081); each
/// redirected out of the uplink (here lo, whose MTU the fast path checks)
/// with its hop limit decremented. Inbound, the replies and a forwarded
/// segment rewritten in place (no lab host entry: not delivered here;
/// `nat66`'s fast path tests deliver them).
#[test]
fn fast_path_out_rewrites_in_place_byte_for_byte() {
    require_root!();
    scenario(|lab| {
        const MAC_GW: [u8; 6] = [2, 0, 0, 0, 0, 0x99];
        let gw = Gateway {
            ifindex: 0,
            mac: MAC_GW,
            ipv4: None,
        };
        lab.dp.maps.configure(&[], 300, Some(gw)).unwrap();
        let prefixes = ["fd00:77::/64".parse().unwrap()];
        let timeouts = [0, 60, 7440, 120, 10, 30, 180, 30];
        let mut cfg = nat6::config(uplink(), 1, &prefixes, (1024, 65535), timeouts);
        cfg.flags |= NAT6_FAST_PATH;
        lab.nat6().apply(cfg).unwrap();
        let fwd = Fwd6Target {
            addr: nat6::in6(black()),
            port: 8000,
            first: 8080,
            last: 8081,
            proto: TCP,
            _pad: 0,
        };
        lab.nat6().set_forwards(&[fwd]).unwrap();
        let port = lab.dp.prog_fd(PROG_PORT_INGRESS).unwrap();
        let data = b"0123456789abcdef0123456789abcdef";
        let (b, up, srv) = (black(), uplink(), server());
        let routed = |mut ip: Vec<u8>| {
            ip[7] -= 1;
            ip
        };
        let mut cases = Vec::new();
        let sent = udp(b, 40000, srv, 7, data);
        assert_eq!(lab.run(lab.egress, &sent).0, TC_ACT_OK);
        cases.push((sent, routed(udp(up, 40000, srv, 7, data))));
        let sent = tcp(b, 40001, srv, 80, 0x10);
        assert_eq!(lab.run(lab.egress, &sent).0, TC_ACT_OK);
        cases.push((sent, routed(tcp(up, 40001, srv, 80, 0x10))));
        let syn = lab.run(lab.ingress, &tcp(srv, 40002, up, 8081, 0x02));
        assert_eq!((addr_at(&syn.1, 24), port_at(&syn.1, 42)), (b, 8001));
        let sent = tcp(b, 8001, srv, 40002, 0x12);
        cases.push((sent, routed(tcp(up, 8081, srv, 40002, 0x12))));
        for (sent, want) in cases {
            let mut f = frame::eth(MAC_GW, [2, 0, 0, 0, 0, 0x0b], &[], 0x86dd);
            f.extend_from_slice(&sent);
            let (r, moved) = lab.moved(|| run_out(port, &f).unwrap());
            assert_eq!(r.retval, 7, "TC_ACT_REDIRECT");
            assert_eq!(&r.data[14..], &want[..]);
            assert!(l4_valid(&r.data[14..]));
            let fast = counts(&[("translated6_out", 1), ("fast_path_out", 1)]);
            assert_eq!(moved, fast);
        }
        // Inbound, the same sessions (`nat6::fast::inbound`): translated
        // in place; no lab host entry here, so not delivered (hop kept).
        let cases = [
            (udp(srv, 7, up, 40000, data), udp(srv, 7, b, 40000, data)),
            (tcp(srv, 80, up, 40001, 0x10), tcp(srv, 80, b, 40001, 0x10)),
            (
                tcp(srv, 40002, up, 8081, 0x10),
                tcp(srv, 40002, b, 8001, 0x10),
            ),
        ];
        for (sent, want) in cases {
            let (out, moved) = lab.moved(|| lab.run(lab.ingress, &sent));
            assert_eq!((out.0, &out.1), (TC_ACT_OK, &want));
            assert!(l4_valid(&out.1));
            assert_eq!(moved, counts(&[("translated6_in", 1)]));
        }
    });
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

/// The IPv4 NAT's limits applied to NAT66 (counted apart): `max_sessions`
/// NAT66 sessions and `max_sessions_per_host` per lab host.
fn limits(lab: &mut Lab, max_sessions: u32, per_host: u32, per_source: u32) {
    let cfg = NatConfig {
        max_sessions,
        host_quota: per_host,
        source_quota: per_source,
        ..NatConfig::default()
    };
    lab.dp.maps.nat.config.set(0, cfg, 0).unwrap();
}

/// Marks every NAT66 entry idle since boot (as `forward` marks a purged
/// forward's sessions): the next sweep removes them all.
fn age_all(lab: &mut Lab) {
    let keys: Vec<_> = lab.nat6().ct.keys().map(|k| k.unwrap()).collect();
    for k in keys {
        let mut v = lab.nat6().ct.get(&k, 0).unwrap();
        v.last_seen_ns = 0;
        lab.nat6().ct.insert(k, v, 0).unwrap();
    }
}

/// `max_sessions` 3 and 2 per lab host: a host's third session is refused
/// (`nat_quota`), a fourth host's session over the limit too
/// (`nat_table_full`), never sent out; the kernel's live count and the
/// per-host counts say 3 and 2 + 1. A sweep (no packet involved) removes
/// idle sessions, counting them out of both (`expired6_sweep`), and the
/// refused host gets its session then.
#[test]
fn nat66_max_sessions_and_host_quota() {
    require_root!();
    scenario(|lab| {
        limits(lab, 3, 2, 0);
        let white = a("fd00:77::20");
        let out = |lab: &Lab, src, sport| {
            lab.moved(|| lab.run(lab.egress, &udp(src, sport, server(), 7, b"x")))
        };
        for sport in [40000, 40001] {
            let ((verdict, _), _) = out(lab, black(), sport);
            assert_eq!(verdict, TC_ACT_OK);
        }
        let ((verdict, _), moved) = out(lab, black(), 40002);
        assert_eq!(verdict, TC_ACT_SHOT);
        assert_eq!(moved, counts(&[("nat_quota", 1)]));
        let ((verdict, _), _) = out(lab, white, 40000);
        assert_eq!(verdict, TC_ACT_OK);
        let ((verdict, _), moved) = out(lab, a("fd00:77::30"), 40000);
        assert_eq!(verdict, TC_ACT_SHOT);
        assert_eq!(moved, counts(&[("nat_table_full", 1)]));
        assert_eq!(lab.nat6().counts().live, 3);
        assert_eq!(lab.nat6().counts().high_water, 3);
        assert_eq!(lab.nat6().quotas(), vec![(black(), 2), (white, 1)]);
        assert_eq!(lab.nat6().ct.iter().count(), 6);
        // An established session is not refused: only new ones count.
        let ((verdict, _), _) = out(lab, black(), 40000);
        assert_eq!(verdict, TC_ACT_OK);

        age_all(lab);
        let nat6 = lab.dp.maps.nat6.as_ref().unwrap();
        let (n, moved) = lab.moved(|| nat6.sweep().unwrap());
        assert_eq!(n, 3);
        assert_eq!(moved, counts(&[("expired6_sweep", 3)]));
        assert_eq!(lab.nat6().ct.iter().count(), 0);
        assert_eq!(lab.nat6().counts().live, 0);
        assert_eq!(lab.nat6().quotas(), vec![]);
        let ((verdict, _), moved) = out(lab, a("fd00:77::30"), 40000);
        assert_eq!(verdict, TC_ACT_OK);
        assert_eq!(moved["snat6_new"], 1);
    });
}

/// The test run's result `r` is an ICMPv6 Destination Unreachable, code 1
/// (administratively prohibited), from `from` to `to`, quoting `quoted`
/// whole, with a valid checksum, redirected (TC_ACT_REDIRECT, 7).
fn assert_prohibited6(r: &(u32, Vec<u8>), from: Ipv6Addr, to: Ipv6Addr, quoted: &[u8]) {
    let ip = &r.1;
    assert_eq!(r.0, 7, "redirected, not dropped");
    assert_eq!((ip[0] >> 4, ip[6], ip[7]), (6, ICMPV6, 64), "{ip:02x?}");
    assert_eq!((addr_at(ip, 8), addr_at(ip, 24)), (from, to));
    let plen = u16::from_be_bytes([ip[4], ip[5]]) as usize;
    assert_eq!(plen, 8 + quoted.len() / 4 * 4, "{ip:02x?}");
    assert_eq!(ip.len(), 40 + plen);
    assert_eq!((ip[40], ip[41]), (1, 1), "type 1, code 1");
    assert!(l4_valid(ip), "ICMPv6 checksum");
    assert_eq!(&ip[48..], &quoted[..plen - 8], "the quote");
}

/// `max_sessions_per_source` for DNAT66 clients counts an upstream /64:
/// two clients of one /64 share it (the second refused, `nat_quota`, and
/// answered with an ICMPv6 administratively prohibited error), one
/// of another /64 is admitted; a session that expires on lookup gives its
/// place back (live count and quota).
#[test]
fn nat66_source_quota_per_upstream_prefix() {
    require_root!();
    scenario(|lab| {
        limits(lab, 100, 0, 1);
        let fwd = Fwd6Target {
            addr: nat6::in6(black()),
            port: 8000,
            first: 8080,
            last: 8080,
            proto: TCP,
            _pad: 0,
        };
        lab.nat6().set_forwards(&[fwd]).unwrap();
        let syn = |src| tcp(src, 40000, uplink(), 8080, 0x02);
        let (r, _) = lab.moved(|| lab.run(lab.ingress, &syn(server())));
        assert_eq!(r.0, TC_ACT_OK);
        let refused = syn(a("2001:db8:2::99"));
        let (r, moved) = lab.moved(|| lab.run(lab.ingress, &refused));
        // Refused, and told so (RFC 5508 REQ-8's IPv6 counterpart).
        assert_prohibited6(&r, uplink(), a("2001:db8:2::99"), &refused);
        let want = [("nat_quota", 1), ("icmp6_prohibited_sent", 1)];
        assert_eq!(moved, counts(&want));
        let (r, moved) = lab.moved(|| lab.run(lab.ingress, &syn(a("2001:db8:3::10"))));
        assert_eq!(r.0, TC_ACT_OK);
        assert_eq!(moved["dnat6_new"], 1);
        let q = lab.nat6().quotas();
        assert_eq!(q, vec![(a("2001:db8:2::"), 1), (a("2001:db8:3::"), 1)]);
        assert_eq!(lab.nat6().counts().live, 2);
        // Expired, found by its client's next SYN: removed and counted out
        // (expired6), so the new session fits the /64's quota of 1.
        age_all(lab);
        let (r, moved) = lab.moved(|| lab.run(lab.ingress, &syn(server())));
        assert_eq!(r.0, TC_ACT_OK);
        assert_eq!((moved["expired6"], moved["dnat6_new"]), (1, 1), "{moved:?}");
        assert_eq!(lab.nat6().counts().live, 2, "{:?}", lab.nat6().quotas());
    });
}

/// SNAT66 never maps a lab source to a port an IPv6 forward owns (a single
/// port or one of a range), not even its own source port; a pool of only
/// forwarded ports has none to give (`nat_port_exhausted`).
#[test]
fn snat66_avoids_forwarded_ports() {
    require_root!();
    scenario(|lab| {
        let fwd = |proto, first, last| Fwd6Target {
            addr: nat6::in6(a("fd00:77::20")),
            port: 9000,
            first,
            last,
            proto,
            _pad: 0,
        };
        let fwds = [fwd(TCP, 8080, 8080), fwd(UDP, 5000, 5001)];
        lab.nat6().set_forwards(&fwds).unwrap();
        let syn = tcp(black(), 8080, server(), 80, 0x02);
        let ((verdict, ip), moved) = lab.moved(|| lab.run(lab.egress, &syn));
        assert_eq!(verdict, TC_ACT_OK);
        assert_ne!(port_at(&ip, 40), 8080);
        assert!(!moved.contains_key("port_kept"), "{moved:?}");
        let dgram = udp(black(), 5001, server(), 7, b"x");
        let ((verdict, ip), _) = lab.moved(|| lab.run(lab.egress, &dgram));
        assert_eq!(verdict, TC_ACT_OK);
        assert!(!(5000..=5001).contains(&port_at(&ip, 40)));
        // Not forwarded for TCP: kept.
        let syn = tcp(black(), 5001, server(), 80, 0x02);
        let ((_, ip), _) = lab.moved(|| lab.run(lab.egress, &syn));
        assert_eq!(port_at(&ip, 40), 5001);

        let prefixes = ["fd00:77::/64".parse().unwrap()];
        let cfg = nat6::config(uplink(), 4242, &prefixes, (5000, 5001), [30; 8]);
        lab.nat6().apply(cfg).unwrap();
        let dgram = udp(black(), 6000, server(), 7, b"x");
        let ((verdict, _), moved) = lab.moved(|| lab.run(lab.egress, &dgram));
        assert_eq!(verdict, TC_ACT_SHOT);
        assert_eq!(moved["nat_port_exhausted"], 1);
    });
}

const HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAG: u8 = 44;
const AH: u8 = 51;
const DSTOPTS: u8 = 60;

/// An extension header of `kind` (its Next Header filled in by [`ipv6x`]):
/// options headers padded to 8 bytes, a routing header with
/// `segments_left` (one address when not 0), a fragment header at `offset`
/// (8-byte units) with More Fragments, an AH of 12 bytes.
fn ext(kind: u8, arg: u16) -> (u8, Vec<u8>) {
    let body = match kind {
        HOP | DSTOPTS => vec![0, 0, 1, 4, 0, 0, 0, 0],
        ROUTING if arg == 0 => vec![0, 0, 253, 0, 0, 0, 0, 0],
        ROUTING => {
            let mut b = vec![0, 2, 253, arg as u8, 0, 0, 0, 0];
            b.extend_from_slice(&server().octets());
            b
        }
        FRAG => {
            let o = (arg << 3) | 1;
            let [hi, lo] = o.to_be_bytes();
            vec![0, 0, hi, lo, 0, 0, 0, 7]
        }
        AH => vec![0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1],
        _ => unreachable!(),
    };
    (kind, body)
}

/// An IPv6 packet with extension headers `chain` before `l4` (checksum at
/// `csum_off` computed anew: the pseudo-header has the upper-layer
/// length).
fn ipv6x(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    chain: &[(u8, Vec<u8>)],
    proto: u8,
    mut l4: Vec<u8>,
    csum_off: usize,
) -> Vec<u8> {
    l4[csum_off..csum_off + 2].fill(0);
    let c = l4_csum(src, dst, proto, &l4);
    l4[csum_off..csum_off + 2].copy_from_slice(&c.to_be_bytes());
    let mut payload = Vec::new();
    for (i, (_, body)) in chain.iter().enumerate() {
        let mut b = body.clone();
        b[0] = chain.get(i + 1).map_or(proto, |e| e.0);
        payload.extend_from_slice(&b);
    }
    payload.extend_from_slice(&l4);
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    p.extend_from_slice(&[chain.first().map_or(proto, |e| e.0), 64]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&payload);
    p
}

/// The UDP header and payload of a datagram (for [`ipv6x`]).
fn udp_l4(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    udp(black(), sport, server(), dport, payload)[40..].to_vec()
}

/// A packet with extension headers whose UDP datagram starts at `at`:
/// (source, source port, destination, destination port, checksum good).
fn udp_at(ip: &[u8], at: usize) -> (Ipv6Addr, u16, Ipv6Addr, u16, bool) {
    let (src, dst) = (addr_at(ip, 8), addr_at(ip, 24));
    let ok = l4_csum(src, dst, UDP, &ip[at..]) == 0;
    (src, port_at(ip, at), dst, port_at(ip, at + 2), ok)
}

/// Hostile IPv6 frames into both uplink programs, each with its fate:
/// dropped under its reason (only that counter moves), or passed
/// untouched; from the lab, nothing untranslatable passes (fragments,
/// routing headers with segments left, AH), and a chain NAT66 can follow
/// (hop-by-hop, destination options, a routing header done with) is
/// translated with a valid checksum. Upstream fragments and routed packets
/// to the uplink address are the host's (`untranslated6_in`); a session's
/// reply with a broken header is dropped, not translated. The valid
/// session keeps working afterwards. (A frame shorter than an IPv6 header
/// is refused by BPF_PROG_TEST_RUN itself: nat66.rs sends those.)
#[test]
fn hostile_ipv6_frames_into_the_uplink_programs() {
    require_root!();
    scenario(|lab| {
        let (up, srv) = (uplink(), server());
        // A session, for the replies below.
        let (out, _) = lab.moved(|| lab.run(lab.egress, &udp(black(), 41000, srv, 7, b"q")));
        assert_eq!(out.0, TC_ACT_OK);
        let valid = udp(black(), 41001, srv, 7, b"payload");
        let mut long_plen = valid.clone();
        long_plen[4..6].copy_from_slice(&(valid.len() as u16).to_be_bytes());
        let mut v4 = valid.clone();
        v4[0] = 0x45;
        let five: Vec<_> = (0..5).map(|_| ext(DSTOPTS, 0)).collect();
        let l4 = || udp_l4(41002, 7, b"x");
        // A destination-options header claiming 2 KB the packet lacks.
        let mut cut = ipv6x(black(), srv, &[ext(DSTOPTS, 0)], UDP, l4(), 6);
        cut[41] = 255;
        let mut frag_cut = ipv6x(black(), srv, &[ext(FRAG, 0), ext(DSTOPTS, 0)], UDP, l4(), 6);
        frag_cut[49] = 255;
        let echo = vec![128, 0, 0, 0, 0, 9, 0, 1];
        let lab_cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "payload length past the frame",
                long_plen,
                "bad_ipv6_header",
            ),
            ("version 4", v4, "bad_ipv6_header"),
            (
                "five options headers",
                ipv6x(black(), srv, &five, UDP, l4(), 6),
                "ipv6_ext_chain",
            ),
            (
                "hop-by-hop not first",
                ipv6x(black(), srv, &[ext(DSTOPTS, 0), ext(HOP, 0)], UDP, l4(), 6),
                "ipv6_ext_chain",
            ),
            ("options header cut short", cut, "ipv6_ext_chain"),
            (
                "first fragment without its UDP header",
                frag_cut,
                "ipv6_fragment",
            ),
            (
                "first UDP fragment",
                ipv6x(black(), srv, &[ext(FRAG, 0)], UDP, l4(), 6),
                "nat_fragment",
            ),
            (
                "later UDP fragment",
                ipv6x(black(), srv, &[ext(FRAG, 4)], UDP, l4(), 6),
                "nat_fragment",
            ),
            (
                "first TCP fragment",
                ipv6x(
                    black(),
                    srv,
                    &[ext(FRAG, 0)],
                    TCP,
                    tcp(black(), 41003, srv, 80, 2)[40..].to_vec(),
                    16,
                ),
                "nat_fragment",
            ),
            (
                "ICMPv6 echo fragment",
                ipv6x(
                    black(),
                    srv,
                    &[ext(HOP, 0), ext(FRAG, 0)],
                    ICMPV6,
                    echo.clone(),
                    2,
                ),
                "nat_fragment",
            ),
            (
                "routing header, a segment left",
                ipv6x(black(), srv, &[ext(ROUTING, 1)], UDP, l4(), 6),
                "nat_untranslatable",
            ),
            (
                "AH",
                ipv6x(black(), srv, &[ext(AH, 0)], UDP, l4(), 6),
                "nat_untranslatable",
            ),
        ];
        for (what, pkt, reason) in &lab_cases {
            let ((verdict, _), moved) = lab.moved(|| lab.run(lab.egress, pkt));
            assert_eq!(verdict, TC_ACT_SHOT, "lab: {what}");
            assert_eq!(moved, counts(&[(reason, 1)]), "lab: {what}");
        }
        // Chains NAT66 follows: translated, checksum valid.
        let followed = [
            vec![ext(HOP, 0)],
            vec![
                ext(HOP, 0),
                ext(DSTOPTS, 0),
                ext(ROUTING, 0),
                ext(DSTOPTS, 0),
            ],
        ];
        for (i, chain) in followed.iter().enumerate() {
            let sport = 41010 + i as u16;
            let pkt = ipv6x(black(), srv, chain, UDP, udp_l4(sport, 7, b"x"), 6);
            let at = pkt.len() - 9;
            let ((verdict, ip), moved) = lab.moved(|| lab.run(lab.egress, &pkt));
            assert_eq!(verdict, TC_ACT_OK, "{chain:?}");
            assert_eq!(udp_at(&ip, at), (up, sport, srv, 7, true), "{chain:?}");
            assert_eq!(moved["snat6_new"], 1);
            // The reply, with a destination-options header.
            let back = ipv6x(
                srv,
                up,
                &[ext(DSTOPTS, 0)],
                UDP,
                udp(srv, 7, up, sport, b"r")[40..].to_vec(),
                6,
            );
            let ((verdict, ip), moved) = lab.moved(|| lab.run(lab.ingress, &back));
            assert_eq!(verdict, TC_ACT_OK);
            assert_eq!(udp_at(&ip, 48), (srv, 7, black(), sport, true));
            assert_eq!(moved, counts(&[("translated6_in", 1)]));
        }
        // The host's own traffic (not a lab source) is not NAT66's.
        let own = ipv6x(a("fe80::1"), a("fe80::2"), &five, UDP, l4(), 6);
        let ((verdict, ip), moved) = lab.moved(|| lab.run(lab.egress, &own));
        assert_eq!((verdict, &ip, moved.len()), (TC_ACT_OK, &own, 0));

        // Upstream, to the uplink address.
        let reply = |port| udp(srv, 7, up, port, b"r")[40..].to_vec();
        let mut up_cut = ipv6x(srv, up, &[ext(DSTOPTS, 0)], UDP, reply(41000), 6);
        up_cut[41] = 255;
        // The session's reply with a broken header (the ingress's direct
        // parse must leave these to the checks of the general one; it
        // reads 60 header bytes, so a payload of 12 at least).
        let session_reply = udp(srv, 7, up, 41000, b"a reply of 16 b.");
        let mut up_long = session_reply.clone();
        up_long[4..6].copy_from_slice(&(session_reply.len() as u16).to_be_bytes());
        let mut up_v4 = session_reply.clone();
        up_v4[0] = 0x45;
        let mut doff4 = tcp(srv, 80, up, 41003, 0x10);
        doff4[52] = 0x40;
        let up_drops: Vec<(&str, Vec<u8>, &str)> = vec![
            ("payload length past the frame", up_long, "bad_ipv6_header"),
            ("version 4", up_v4, "bad_ipv6_header"),
            ("TCP data offset 4", doff4, "bad_l4_header"),
            (
                "five options headers",
                ipv6x(srv, up, &five, UDP, reply(41000), 6),
                "ipv6_ext_chain",
            ),
            ("options header cut short", up_cut, "ipv6_ext_chain"),
        ];
        for (what, pkt, reason) in &up_drops {
            let ((verdict, _), moved) = lab.moved(|| lab.run(lab.ingress, pkt));
            assert_eq!(verdict, TC_ACT_SHOT, "upstream: {what}");
            assert_eq!(moved, counts(&[(reason, 1)]), "upstream: {what}");
        }
        let up_host = [
            ipv6x(srv, up, &[ext(FRAG, 0)], UDP, reply(41000), 6),
            ipv6x(srv, up, &[ext(FRAG, 4)], UDP, reply(41000), 6),
            ipv6x(srv, up, &[ext(ROUTING, 1)], UDP, reply(41000), 6),
        ];
        for pkt in &up_host {
            let ((verdict, ip), moved) = lab.moved(|| lab.run(lab.ingress, pkt));
            assert_eq!((verdict, &ip), (TC_ACT_OK, pkt), "passed untouched");
            assert_eq!(moved, counts(&[("untranslated6_in", 1)]));
        }
        // Not for the uplink address: the host's routing, untouched.
        let transit = ipv6x(srv, a("2001:db8:1::99"), &five, UDP, reply(41000), 6);
        let ((verdict, ip), moved) = lab.moved(|| lab.run(lab.ingress, &transit));
        assert_eq!((verdict, &ip, moved.len()), (TC_ACT_OK, &transit, 0));

        // Valid traffic afterwards: the session both ways.
        let (out, moved) = lab.moved(|| lab.run(lab.egress, &udp(black(), 41000, srv, 7, b"q")));
        assert_eq!((out.0, addr_at(&out.1, 8)), (TC_ACT_OK, up));
        assert_eq!(moved, counts(&[("translated6_out", 1)]));
        let (back, _) = lab.moved(|| lab.run(lab.ingress, &udp(srv, 7, up, 41000, b"r")));
        assert_eq!((back.0, addr_at(&back.1, 24)), (TC_ACT_OK, black()));
        assert!(l4_valid(&back.1));
    });
}

/// A SNAT66 session the sweep removed leaves a grave: the late reply is
/// dropped (`nat_expired`), not handed to the host; a packet to a port
/// with no session and no grave is the host's (passed untouched).
#[test]
fn late_reply_after_the_sweep_is_dropped() {
    require_root!();
    scenario(|lab| {
        let (out, _) = lab.moved(|| lab.run(lab.egress, &udp(black(), 42000, server(), 7, b"q")));
        assert_eq!(out.0, TC_ACT_OK);
        age_all(lab);
        let nat6 = lab.dp.maps.nat6.as_ref().unwrap();
        let (n, moved) = lab.moved(|| nat6.sweep().unwrap());
        assert_eq!((n, moved), (1, counts(&[("expired6_sweep", 1)])));
        let late = udp(server(), 7, uplink(), 42000, b"late");
        let ((verdict, _), moved) = lab.moved(|| lab.run(lab.ingress, &late));
        assert_eq!(verdict, TC_ACT_SHOT);
        assert_eq!(moved, counts(&[("nat_expired", 1)]));
        let other = udp(server(), 7, uplink(), 42001, b"host");
        let ((verdict, ip), moved) = lab.moved(|| lab.run(lab.ingress, &other));
        assert_eq!((verdict, &ip, moved.len()), (TC_ACT_OK, &other, 0));
    });
}

/// The ICMPv6 prohibited errors share the IPv4 ones' rate limit: 1,000
/// SYNs from a client /64 at its quota (`max_sessions_per_source` 1) are
/// all refused (`nat_quota`), but at most 20 errors per CPU per second are
/// sent (`icmp6_prohibited_sent`, each run redirected), the rest counted
/// `icmp6_prohibited_rate_limited` and dropped. The bound is from the
/// measured time of the runs, which take well under a second: without the
/// limit (1,000 sent) this fails.
#[test]
fn nat66_prohibited_errors_are_rate_limited() {
    require_root!();
    scenario(|lab| {
        limits(lab, 100, 0, 1);
        let fwd = Fwd6Target {
            addr: nat6::in6(black()),
            port: 8000,
            first: 8080,
            last: 8080,
            proto: TCP,
            _pad: 0,
        };
        lab.nat6().set_forwards(&[fwd]).unwrap();
        let syn = |sport| tcp(server(), sport, uplink(), 8080, 0x02);
        assert_eq!(lab.run(lab.ingress, &syn(40000)).0, TC_ACT_OK);
        let runs = 1000u64;
        let t0 = std::time::Instant::now();
        let (verdicts, moved) = lab.moved(|| {
            (0..runs)
                .map(|i| lab.run(lab.ingress, &syn(20000 + i as u16)).0)
                .collect::<Vec<_>>()
        });
        let secs = t0.elapsed().as_secs() + 1;
        let sent = moved.get("icmp6_prohibited_sent").copied().unwrap_or(0);
        let limited = moved
            .get("icmp6_prohibited_rate_limited")
            .copied()
            .unwrap_or(0);
        let cpus = aya::util::nr_cpus().unwrap() as u64;
        println!("{runs} refused in < {secs} s: {sent} errors sent, {limited} rate-limited");
        assert_eq!(moved["nat_quota"], runs, "{moved:?}");
        assert_eq!(sent + limited, runs, "{moved:?}");
        assert!(sent >= 1, "{moved:?}");
        assert!(sent <= cpus * 20 * (secs + 1), "{sent} sent in {secs} s");
        let redirected = verdicts.iter().filter(|v| **v == 7).count();
        assert_eq!(redirected as u64, sent);
        assert_eq!(verdicts.len() as u64 - sent, limited, "the rest dropped");
    });
}
