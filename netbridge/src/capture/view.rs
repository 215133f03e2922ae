//! From a datapath event to what the user sees: the userspace half of the
//! filter, the port's point of view (direction, verdict), the NAT change.
use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr},
};

use netbridge_common::{
    capture::{
        CAP_DROPS_ONLY, CaptureConfig, CaptureEvent, EV_PRE, EV_VLAN, class, point, verdict,
    },
    drop_reason,
};

use super::{
    decode::{self, Decoded, Tuple},
    pcapng::Direction,
};

/// Names of the interfaces the datapath reports, and the lab hosts'
/// addresses (an uplink redirect names only the address).
#[derive(Debug, Clone, Default)]
pub struct Ports {
    /// ifindex -> (interface, description).
    pub names: HashMap<u32, (String, String)>,
    /// Lab host IPv4 -> its port's ifindex.
    pub by_addr: HashMap<Ipv4Addr, u32>,
}

impl Ports {
    pub fn name(&self, ifindex: u32) -> String {
        self.names
            .get(&ifindex)
            .map(|n| n.0.clone())
            .unwrap_or_else(|| format!("if{ifindex}"))
    }
}

/// What to show. The kernel applies `ifindex`, `class` and `drops_only`
/// before copying anything; `host` and `port_number` are matched here,
/// against the packet before and after any NAT rewrite.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub ifindex: Option<u32>,
    pub class: u8,
    pub host: Option<IpAddr>,
    pub port_number: Option<u16>,
    pub drops_only: bool,
}

impl Filter {
    /// The in-kernel part, with the lease `until_ns`.
    pub fn kernel(&self, until_ns: u64, snaplen: u32, rate: u32) -> CaptureConfig {
        CaptureConfig {
            until_ns,
            ifindex: self.ifindex.unwrap_or(0),
            flags: if self.drops_only { CAP_DROPS_ONLY } else { 0 },
            class: self.class,
            snaplen,
            rate,
            ..CaptureConfig::default()
        }
    }

    fn matches(&self, ev: &CaptureEvent, d: &Decoded, pre: Option<&Tuple>) -> bool {
        if self.drops_only && ev.verdict != verdict::DROP {
            return false;
        }
        if self.class != class::ANY && ev.class != self.class {
            return false;
        }
        if let Some(h) = self.host {
            let before = pre.map(|t| [IpAddr::V4(t.saddr), IpAddr::V4(t.daddr)]);
            if !d.addrs.contains(&h) && !before.is_some_and(|b| b.contains(&h)) {
                return false;
            }
        }
        if let Some(p) = self.port_number {
            let before = pre
                .filter(|t| t.proto == 6 || t.proto == 17)
                .map(|t| [t.sport, t.dport]);
            if !d.ports.contains(&p) && !before.is_some_and(|b| b.contains(&p)) {
                return false;
            }
        }
        true
    }
}

/// One packet as shown: from one interface's point of view.
#[derive(Debug, Clone)]
pub struct Record {
    pub ifindex: u32,
    pub port: String,
    pub dir: Direction,
    /// `fwd nb-white`, `from nb-black`, `kernel`, `sent`, `DROP reason`.
    pub verdict: String,
    pub decoded: Decoded,
    /// `NAT src A -> B` when the program rewrote the packet.
    pub nat: Option<String>,
    /// The frame (802.1Q tag put back if the kernel had moved it out).
    pub data: Vec<u8>,
    pub len: u32,
}

impl Record {
    /// The verdict and NAT change, for a pcapng packet comment.
    pub fn comment(&self) -> String {
        match &self.nat {
            Some(n) => format!("netbridge: {}; {n}", self.verdict),
            None => format!("netbridge: {}", self.verdict),
        }
    }
}

fn reason_name(code: u16) -> String {
    drop_reason::NAMES
        .get(code as usize)
        .map(|s| s.to_string())
        .unwrap_or_else(|| format!("reason {code}"))
}

/// The frame bytes of an event, with its VLAN tag restored.
fn frame(ev: &CaptureEvent) -> (Vec<u8>, u32) {
    let n = (ev.cap_len as usize).min(ev.data.len());
    let mut data = ev.data[..n].to_vec();
    let mut len = ev.len;
    if ev.flags & EV_VLAN != 0 && data.len() >= 12 {
        let tag = [[0x81, 0x00], ev.vlan_tci.to_be_bytes()].concat();
        data.splice(12..12, tag);
        len += 4;
    }
    (data, len)
}

/// Renders `ev` for `filter` (None: filtered out). With an interface
/// filter, a packet redirected *to* that interface is shown as leaving it
/// (as tcpdump on a Linux bridge port shows both directions).
pub fn render(ev: &CaptureEvent, ports: &Ports, filter: &Filter) -> Option<Record> {
    let (data, len) = frame(ev);
    let decoded = decode::decode(&data, len);
    let pre = (ev.flags & EV_PRE != 0).then(|| Tuple::from_pre(&ev.pre, decoded.v4.as_ref()));
    if !filter.matches(ev, &decoded, pre.as_ref()) {
        return None;
    }
    let mut out = ev.out_ifindex;
    if out == 0 && ev.verdict == verdict::REDIRECT {
        // The uplink sent it straight to a lab host: find the host's port.
        out = decoded
            .v4
            .and_then(|t| ports.by_addr.get(&t.daddr).copied())
            .unwrap_or(0);
    }
    let seen = ev.ifindex;
    let (ifindex, dir, verdict) = match filter.ifindex {
        Some(f) if f != seen && f == out => {
            (f, Direction::Outbound, format!("from {}", ports.name(seen)))
        }
        Some(f) if f != seen => return None,
        _ => {
            let (dir, v) = own_view(ev, out, ports);
            (seen, dir, v)
        }
    };
    let nat = match (pre, decoded.v4) {
        (Some(before), Some(after)) => before.nat_change(&after),
        _ => None,
    };
    Some(Record {
        ifindex,
        port: ports.name(ifindex),
        dir,
        verdict,
        decoded,
        nat,
        data,
        len,
    })
}

/// Direction and verdict as seen at the interface where the event happened.
fn own_view(ev: &CaptureEvent, out: u32, ports: &Ports) -> (Direction, String) {
    let dir = match ev.point {
        point::PORT_OUT | point::UPLINK_OUT => Direction::Outbound,
        _ => Direction::Inbound,
    };
    let v = match (ev.verdict, ev.point) {
        (verdict::DROP, _) => format!("DROP {}", reason_name(ev.reason)),
        (verdict::REDIRECT, _) if out != 0 => format!("fwd {}", ports.name(out)),
        (verdict::REDIRECT, _) => "fwd".to_string(),
        (_, point::PORT_OUT) => "from kernel".to_string(),
        (_, point::UPLINK_OUT) => "sent".to_string(),
        _ => "kernel".to_string(),
    };
    (dir, v)
}

/// `HH:MM:SS.micros` (UTC) of a wall-clock time in ns.
pub fn clock(ts_ns: u64) -> String {
    let s = ts_ns / 1_000_000_000;
    let us = ts_ns % 1_000_000_000 / 1000;
    let d = s % 86_400;
    format!("{:02}:{:02}:{:02}.{us:06}", d / 3600, d / 60 % 60, d % 60)
}

/// One text line: time, port, direction, verdict, summary, NAT.
pub fn line(r: &Record, ts_ns: u64, link: bool) -> String {
    let dir = match r.dir {
        Direction::Inbound => "in ",
        Direction::Outbound => "out",
    };
    let link = if link || r.verdict.starts_with("DROP") {
        r.decoded.link.as_str()
    } else {
        ""
    };
    let mut s = format!(
        "{} {:<12} {dir} {:<20} {link}{}",
        clock(ts_ns),
        r.port,
        r.verdict,
        r.decoded.summary
    );
    if let Some(n) = &r.nat {
        s.push_str(" | ");
        s.push_str(n);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytemuck::Zeroable;

    fn ports() -> Ports {
        let mut p = Ports::default();
        for (i, n) in [(10, "nb-black"), (11, "nb-white"), (20, "uplink0")] {
            p.names.insert(i, (n.into(), String::new()));
        }
        p.by_addr.insert(Ipv4Addr::new(192, 168, 2, 1), 11);
        p
    }

    /// An ICMP echo request 192.168.1.1 -> 192.168.2.1 seen at `point`.
    fn echo(point: u8, verdict: u8, ifindex: u32, out: u32) -> CaptureEvent {
        let mut ev = CaptureEvent::zeroed();
        let f: Vec<u8> = [
            &[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 8, 0][..],
            &[
                0x45, 0, 0, 28, 0, 0, 0, 0, 64, 1, 0, 0, 192, 168, 1, 1, 192, 168, 2, 1,
            ],
            &[8, 0, 0, 0, 0, 5, 0, 1],
        ]
        .concat();
        ev.data[..f.len()].copy_from_slice(&f);
        (ev.cap_len, ev.len) = (f.len() as u16, f.len() as u32);
        (ev.point, ev.verdict, ev.ifindex, ev.out_ifindex) = (point, verdict, ifindex, out);
        ev.class = class::ICMP;
        ev
    }

    #[test]
    fn a_redirect_shows_on_both_ports() {
        let ev = echo(point::PORT_IN, verdict::REDIRECT, 10, 11);
        let on = |i| Filter {
            ifindex: Some(i),
            ..Filter::default()
        };
        let black = render(&ev, &ports(), &on(10)).unwrap();
        assert_eq!(
            (black.dir, black.verdict.as_str()),
            (Direction::Inbound, "fwd nb-white")
        );
        let white = render(&ev, &ports(), &on(11)).unwrap();
        assert_eq!(
            (white.dir, white.verdict.as_str()),
            (Direction::Outbound, "from nb-black")
        );
        assert_eq!(white.port, "nb-white");
        assert!(render(&ev, &ports(), &on(20)).is_none());
    }

    #[test]
    fn uplink_redirect_is_resolved_by_address_and_nat_is_named() {
        let mut ev = echo(point::UPLINK_IN, verdict::REDIRECT, 20, 0);
        ev.data[14 + 20] = 0; // an echo reply
        ev.flags = EV_PRE;
        ev.pre.saddr = [192, 168, 1, 1];
        ev.pre.daddr = [203, 0, 113, 1];
        ev.pre.sport = 5u16.to_be_bytes();
        ev.pre.proto = 1;
        let f = Filter {
            ifindex: Some(11),
            ..Filter::default()
        };
        let r = render(&ev, &ports(), &f).unwrap();
        assert_eq!(r.verdict, "from uplink0");
        assert_eq!(
            r.nat.as_deref(),
            Some("NAT dst 203.0.113.1 id 5 -> 192.168.2.1 id 5")
        );
    }

    #[test]
    fn userspace_filters_and_drops() {
        let mut ev = echo(point::PORT_IN, verdict::DROP, 10, 0);
        ev.reason = drop_reason::SPOOFED_MAC as u16;
        let all = Filter::default();
        let r = render(&ev, &ports(), &all).unwrap();
        assert_eq!(r.verdict, "DROP spoofed_mac");
        assert!(line(&r, 0, false).contains("02:00:00:00:00:01 > 02:00:00:00:00:02"));
        let host = |h: [u8; 4]| Filter {
            host: Some(IpAddr::from(h)),
            ..Filter::default()
        };
        assert!(render(&ev, &ports(), &host([192, 168, 2, 1])).is_some());
        assert!(render(&ev, &ports(), &host([192, 168, 3, 1])).is_none());
        let port = Filter {
            port_number: Some(80),
            ..Filter::default()
        };
        assert!(render(&ev, &ports(), &port).is_none());
        let ok = echo(point::PORT_IN, verdict::PASS, 10, 0);
        let drops = Filter {
            drops_only: true,
            ..Filter::default()
        };
        assert!(render(&ok, &ports(), &drops).is_none());
    }
}
