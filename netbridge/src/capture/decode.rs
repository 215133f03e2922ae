//! Decoding captured frames into tcpdump-like one-line summaries and the
//! addresses the filters match.
use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use netbridge_common::capture::CaptureTuple;

use crate::nat::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};

/// An IPv4 flow as the NAT sees it. ICMP echo: the identifier is the
/// `sport` of a request and the `dport` of a reply (the inside host's side).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuple {
    pub saddr: Ipv4Addr,
    pub daddr: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

impl Tuple {
    /// From the tuple a program noted before it ran (which has an echo
    /// identifier in `sport`); `like` is the packet after, whose layout it
    /// takes for ICMP.
    pub fn from_pre(t: &CaptureTuple, like: Option<&Tuple>) -> Tuple {
        let mut pre = Tuple {
            saddr: t.saddr.into(),
            daddr: t.daddr.into(),
            sport: u16::from_be_bytes(t.sport),
            dport: u16::from_be_bytes(t.dport),
            proto: t.proto,
        };
        if pre.proto == IPPROTO_ICMP && like.is_some_and(|l| l.dport != 0) {
            (pre.sport, pre.dport) = (0, pre.sport);
        }
        pre
    }

    /// `addr:port` (ICMP: `addr id N`; other protocols: the address).
    fn end(&self, addr: Ipv4Addr, port: u16) -> String {
        match self.proto {
            IPPROTO_TCP | IPPROTO_UDP => format!("{addr}:{port}"),
            IPPROTO_ICMP if port != 0 => format!("{addr} id {port}"),
            _ => addr.to_string(),
        }
    }

    /// "NAT src A -> B" / "NAT dst A -> B" (both if both changed), or None.
    pub fn nat_change(&self, after: &Tuple) -> Option<String> {
        if self.proto != after.proto {
            return None;
        }
        let mut parts = Vec::new();
        if (self.saddr, self.sport) != (after.saddr, after.sport) {
            parts.push(format!(
                "src {} -> {}",
                self.end(self.saddr, self.sport),
                after.end(after.saddr, after.sport)
            ));
        }
        if (self.daddr, self.dport) != (after.daddr, after.dport) {
            parts.push(format!(
                "dst {} -> {}",
                self.end(self.daddr, self.dport),
                after.end(after.daddr, after.dport)
            ));
        }
        (!parts.is_empty()).then(|| format!("NAT {}", parts.join(", ")))
    }
}

/// What a frame is, for the summary and the filters.
#[derive(Debug, Clone, Default)]
pub struct Decoded {
    /// tcpdump-like description after the link layer.
    pub summary: String,
    /// `src > dst` MACs and ethertype (tcpdump -e).
    pub link: String,
    /// IPv4 flow, when the frame is IPv4 with its ports (or echo id).
    pub v4: Option<Tuple>,
    /// Every IP address in the frame (IP source/destination, ARP sender/target).
    pub addrs: Vec<IpAddr>,
    /// TCP/UDP ports.
    pub ports: Vec<u16>,
}

const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;

fn mac(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn be16(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

fn be32(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

fn v4_at(b: &[u8], off: usize) -> Option<Ipv4Addr> {
    let a: [u8; 4] = b.get(off..off + 4)?.try_into().ok()?;
    Some(a.into())
}

/// Decodes an Ethernet frame (`b`: the captured bytes; `len`: the whole
/// frame's length).
pub fn decode(b: &[u8], len: u32) -> Decoded {
    let mut d = Decoded::default();
    let Some(mut et) = be16(b, 12) else {
        d.summary = format!("[|ether], length {len}");
        return d;
    };
    let mut off = 14;
    let mut vlans = String::new();
    while et == 0x8100 || et == 0x88a8 {
        let (Some(tci), Some(inner)) = (be16(b, off), be16(b, off + 2)) else {
            d.summary = format!("{vlans}[|vlan], length {len}");
            return d;
        };
        let _ = write!(vlans, "vlan {}, ", tci & 0x0fff);
        et = inner;
        off += 4;
    }
    d.link = format!(
        "{} > {}, ethertype 0x{et:04x}, ",
        mac(&b[6..12]),
        mac(&b[0..6])
    );
    let rest = &b[off.min(b.len())..];
    let l3_len = len.saturating_sub(off as u32);
    d.summary = vlans
        + &match et {
            ETH_P_IP => ipv4(rest, &mut d),
            ETH_P_ARP => arp(rest, l3_len, &mut d),
            ETH_P_IPV6 => ipv6(rest, l3_len, &mut d),
            other => format!("ethertype 0x{other:04x}, length {len}"),
        };
    d
}

fn arp(b: &[u8], len: u32, d: &mut Decoded) -> String {
    let (Some(op), Some(spa), Some(tpa)) = (be16(b, 6), v4_at(b, 14), v4_at(b, 24)) else {
        return format!("ARP, [|arp], length {len}");
    };
    d.addrs = vec![spa.into(), tpa.into()];
    match op {
        1 => format!("ARP, Request who-has {tpa} tell {spa}, length {len}"),
        2 => format!("ARP, Reply {spa} is-at {}, length {len}", mac(&b[8..14])),
        _ => format!("ARP, op {op}, length {len}"),
    }
}

fn ipv6(b: &[u8], len: u32, d: &mut Decoded) -> String {
    let addr = |off: usize| -> Option<Ipv6Addr> {
        let a: [u8; 16] = b.get(off..off + 16)?.try_into().ok()?;
        Some(a.into())
    };
    let (Some(next), Some(src), Some(dst)) = (b.get(6), addr(8), addr(24)) else {
        return format!("IP6 [|ip6], length {len}");
    };
    d.addrs = vec![src.into(), dst.into()];
    let what = match (*next, b.get(40)) {
        (58, Some(t)) => format!("ICMP6, type {t}"),
        (6, _) => "TCP".into(),
        (17, _) => "UDP".into(),
        (n, _) => format!("next-header {n}"),
    };
    format!(
        "IP6 {src} > {dst}: {what}, length {}",
        len.saturating_sub(40)
    )
}

fn ipv4(b: &[u8], d: &mut Decoded) -> String {
    let (Some(&vihl), Some(total), Some(src), Some(dst)) =
        (b.first(), be16(b, 2), v4_at(b, 12), v4_at(b, 16))
    else {
        return "IP [|ip]".into();
    };
    let proto = b[9];
    d.addrs = vec![src.into(), dst.into()];
    let ihl = (vihl & 0x0f) as usize * 4;
    let frag = be16(b, 6).unwrap_or(0);
    let payload = (total as usize).saturating_sub(ihl);
    let l4 = &b[ihl.min(b.len())..];
    if frag & 0x1fff != 0 {
        return format!(
            "IP {src} > {dst}: ip-proto-{proto} (fragment offset {}), length {payload}",
            (frag & 0x1fff) * 8
        );
    }
    let mut t = Tuple {
        saddr: src,
        daddr: dst,
        sport: 0,
        dport: 0,
        proto,
    };
    let text = match proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            let (Some(sp), Some(dp)) = (be16(l4, 0), be16(l4, 2)) else {
                return format!("IP {src} > {dst}: [|{}]", proto_word(proto));
            };
            (t.sport, t.dport) = (sp, dp);
            d.ports = vec![sp, dp];
            let body = if proto == IPPROTO_TCP {
                tcp(l4, payload)
            } else {
                format!("UDP, length {}", payload.saturating_sub(8))
            };
            format!("IP {src}.{sp} > {dst}.{dp}: {body}")
        }
        IPPROTO_ICMP => {
            let (body, id) = icmp(l4, payload);
            match (id, l4.first()) {
                (Some(id), Some(0)) => t.dport = id,
                (Some(id), _) => t.sport = id,
                _ => {}
            }
            format!("IP {src} > {dst}: {body}")
        }
        other => format!("IP {src} > {dst}: ip-proto-{other}, length {payload}"),
    };
    d.v4 = Some(t);
    text
}

fn proto_word(p: u8) -> &'static str {
    if p == IPPROTO_TCP { "tcp" } else { "udp" }
}

fn tcp(b: &[u8], payload: usize) -> String {
    let (Some(seq), Some(ack), Some(&off), Some(&fl), Some(win)) =
        (be32(b, 4), be32(b, 8), b.get(12), b.get(13), be16(b, 14))
    else {
        return "[|tcp]".into();
    };
    let mut flags = String::new();
    for (bit, c) in [
        (0x02, 'S'),
        (0x01, 'F'),
        (0x04, 'R'),
        (0x08, 'P'),
        (0x20, 'U'),
    ] {
        if fl & bit != 0 {
            flags.push(c);
        }
    }
    if fl & 0x10 != 0 {
        flags.push('.');
    }
    let data = payload.saturating_sub((off >> 4) as usize * 4);
    let mut s = format!("Flags [{flags}], seq {seq}");
    if fl & 0x10 != 0 {
        let _ = write!(s, ", ack {ack}");
    }
    let _ = write!(s, ", win {win}, length {data}");
    s
}

/// ICMP summary and the echo identifier, if an echo.
fn icmp(b: &[u8], payload: usize) -> (String, Option<u16>) {
    let (Some(&ty), Some(&code)) = (b.first(), b.get(1)) else {
        return ("ICMP [|icmp]".into(), None);
    };
    let echo = |name: &str| -> (String, Option<u16>) {
        match (be16(b, 4), be16(b, 6)) {
            (Some(id), Some(seq)) => (
                format!("ICMP {name}, id {id}, seq {seq}, length {payload}"),
                Some(id),
            ),
            _ => (format!("ICMP {name} [|icmp]"), None),
        }
    };
    match ty {
        0 => echo("echo reply"),
        8 => echo("echo request"),
        3 => (
            format!("ICMP unreachable (code {code}), length {payload}"),
            None,
        ),
        11 => (
            format!("ICMP time exceeded (code {code}), length {payload}"),
            None,
        ),
        _ => (
            format!("ICMP type {ty} code {code}, length {payload}"),
            None,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(et: u16, l3: &[u8]) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
        f.extend_from_slice(&et.to_be_bytes());
        f.extend_from_slice(l3);
        f
    }

    fn ipv4_hdr(proto: u8, total: u16) -> Vec<u8> {
        let mut h = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, proto, 0, 0];
        h[2..4].copy_from_slice(&total.to_be_bytes());
        h.extend_from_slice(&[192, 168, 1, 1, 192, 168, 2, 1]);
        h
    }

    #[test]
    fn icmp_echo_request() {
        let mut l3 = ipv4_hdr(1, 84);
        l3.extend_from_slice(&[8, 0, 0, 0, 0x12, 0x34, 0, 7]);
        let d = decode(&frame(0x0800, &l3), 98);
        assert_eq!(
            d.summary,
            "IP 192.168.1.1 > 192.168.2.1: ICMP echo request, id 4660, seq 7, length 64"
        );
        assert_eq!(d.v4.unwrap().sport, 0x1234);
    }

    #[test]
    fn tcp_syn_and_vlan() {
        let mut l3 = ipv4_hdr(6, 40);
        l3.extend_from_slice(&[
            0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff,
        ]);
        let mut f = frame(0x8100, &[0, 10]);
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        f.extend_from_slice(&l3);
        let d = decode(&f, f.len() as u32);
        assert_eq!(
            d.summary,
            "vlan 10, IP 192.168.1.1.40000 > 192.168.2.1.80: Flags [S], seq 1, win 65535, length 0"
        );
        assert_eq!(d.ports, vec![40000, 80]);
    }

    #[test]
    fn arp_and_truncated() {
        let mut a = vec![0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 1];
        a.extend_from_slice(&[192, 168, 1, 1, 0, 0, 0, 0, 0, 0, 192, 168, 2, 1]);
        let d = decode(&frame(0x0806, &a), 42);
        assert_eq!(
            d.summary,
            "ARP, Request who-has 192.168.2.1 tell 192.168.1.1, length 28"
        );
        assert_eq!(decode(&[1, 2, 3], 3).summary, "[|ether], length 3");
        let d = decode(&frame(0x0800, &[0x45, 0]), 16);
        assert_eq!(d.summary, "IP [|ip]");
    }

    #[test]
    fn nat_change_names_the_side_that_moved() {
        let before = Tuple {
            saddr: Ipv4Addr::new(192, 168, 1, 10),
            daddr: Ipv4Addr::new(203, 0, 113, 254),
            sport: 40000,
            dport: 53,
            proto: 17,
        };
        let after = Tuple {
            saddr: Ipv4Addr::new(203, 0, 113, 1),
            ..before
        };
        assert_eq!(
            before.nat_change(&after).unwrap(),
            "NAT src 192.168.1.10:40000 -> 203.0.113.1:40000"
        );
        assert_eq!(before.nat_change(&before), None);
    }
}
