//! NAT66 control plane: the IPv6 masquerade config the uplink programs
//! read ([`MAP_NAT6_CONFIG`]), the IPv6 port forwards ([`MAP_FWD6`]), the
//! conntrack table ([`MAP_CT6`]) and its accounting ([`MAP_CT6_STATE`],
//! [`MAP_CT6_QUOTA`]: the datapath's, read here).
use std::{net::Ipv6Addr, os::fd::AsFd};

use aya::{
    maps::{Array, HashMap, MapData},
    programs::ProgramFd,
};
use ipnet::{IpNet, Ipv6Net};
use netbridge_common::{
    Be32, CT_DIR_IN, CT_DIR_OUT, CT_F_ASSURED, CT_F_ORIGINAL, CT_TCP_ESTABLISHED, CT_TCP_SYN,
    Ct6Entry, Ct6Key, CtCounts, CtStateView, CtlCmd, Fwd6Target, In6, MAP_CT6, MAP_CT6_QUOTA,
    MAP_CT6_STATE, MAP_FWD6, MAP_NAT6_CONFIG, MAX_FWD6, NAT6_MASQUERADE, NAT6_PREFIXES, Nat6Config,
    PROG_CT_CTL, Prefix6, QuotaView, ctl,
};

use crate::pins::{BpfError, MapSource, map_err};

/// The NAT66 maps.
pub struct Nat6Maps {
    pub config: Array<MapData, Nat6Config>,
    pub forwards: Array<MapData, Fwd6Target>,
    /// An LRU hash in the kernel; read through `HashMap`.
    pub ct: HashMap<MapData, Ct6Key, Ct6Entry>,
    /// Live NAT66 sessions (against `max_sessions`), high-water mark,
    /// sweeps: the datapath's count.
    pub state: Array<MapData, CtStateView>,
    /// Live NAT66 sessions per lab host address / upstream client /64.
    pub quota: HashMap<MapData, In6, QuotaView>,
    /// The conntrack control program (sweeps both tables), if loaded.
    ctl: Option<ProgramFd>,
}

/// An address in the maps' form.
pub fn in6(a: Ipv6Addr) -> In6 {
    let o = a.octets();
    std::array::from_fn(|i| Be32::from_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]))
}

pub fn addr(a: &In6) -> Ipv6Addr {
    let mut o = [0u8; 16];
    for (i, w) in a.iter().enumerate() {
        o[4 * i..4 * i + 4].copy_from_slice(&w.to_bytes());
    }
    Ipv6Addr::from(o)
}

/// The lab side of NAT66: global or ULA IPv6 networks (not link-local).
pub fn lab_prefixes(addresses: &[IpNet]) -> Vec<Ipv6Net> {
    let mut out: Vec<Ipv6Net> = addresses
        .iter()
        .filter_map(|a| match a {
            IpNet::V6(n) if !is_link_local(n.addr()) => Some(n.trunc()),
            _ => None,
        })
        .collect();
    out.dedup();
    out
}

/// The address to masquerade as: the uplink's first global (or ULA)
/// IPv6 address.
pub fn masquerade_addr(addresses: &[IpNet]) -> Option<Ipv6Addr> {
    addresses.iter().find_map(|a| match a {
        IpNet::V6(n) if !is_link_local(n.addr()) && !n.addr().is_multicast() => Some(n.addr()),
        _ => None,
    })
}

fn is_link_local(a: Ipv6Addr) -> bool {
    a.segments()[0] & 0xffc0 == 0xfe80
}

/// The config for masquerading `prefixes` (at most [`NAT6_PREFIXES`]) as
/// `uplink` on interface `ifindex`.
pub fn config(
    uplink: Ipv6Addr,
    ifindex: u32,
    prefixes: &[Ipv6Net],
    ports: (u16, u16),
    timeouts: [u32; 8],
) -> Nat6Config {
    let mut cfg = Nat6Config {
        uplink_ipv6: in6(uplink),
        uplink_ifindex: ifindex,
        flags: NAT6_MASQUERADE,
        port_min: ports.0,
        port_max: ports.1,
        timeouts,
        ..Nat6Config::default()
    };
    for (slot, p) in cfg.prefixes.iter_mut().zip(prefixes) {
        *slot = Prefix6 {
            addr: in6(p.network()),
            mask: in6(p.netmask()),
        };
        cfg.prefix_count += 1;
    }
    cfg
}

/// One NAT66 session for `conntrack` (IPv6 endpoints as `[addr]:port`;
/// ICMPv6 echo: the identifier as the port, the remote without one).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Session6 {
    pub proto: &'static str,
    pub state: &'static str,
    pub inside: String,
    pub external: String,
    pub remote: String,
    pub age_secs: f64,
    pub idle_secs: f64,
    /// 0: expired, removed when a packet or a port claim finds it.
    pub expires_in_secs: f64,
}

fn proto_name(p: u8) -> &'static str {
    match p {
        58 => "icmpv6",
        p => crate::nat::proto_name(p),
    }
}

impl Nat6Maps {
    pub fn from_source(src: &mut impl MapSource) -> Result<Self, BpfError> {
        use aya::maps::Map;
        Ok(Nat6Maps {
            config: src.map(MAP_NAT6_CONFIG, Map::Array)?,
            forwards: src.map(MAP_FWD6, Map::Array)?,
            ct: src.map(MAP_CT6, Map::LruHashMap)?,
            state: src.map(MAP_CT6_STATE, Map::Array)?,
            quota: src.map(MAP_CT6_QUOTA, Map::HashMap)?,
            ctl: src.program_fd(PROG_CT_CTL),
        })
    }

    /// The datapath's NAT66 session accounting.
    pub fn counts(&self) -> CtCounts {
        self.state.get(&0, 0).map(|s| s.counts).unwrap_or_default()
    }

    /// Live NAT66 sessions per quota key (lab host address, or upstream
    /// client /64), as the datapath counts them.
    pub fn quotas(&self) -> Vec<(Ipv6Addr, u32)> {
        let mut v: Vec<(Ipv6Addr, u32)> = self
            .quota
            .iter()
            .filter_map(|r| r.ok())
            .map(|(k, q)| (addr(&k), q.sessions))
            .collect();
        v.sort();
        v
    }

    /// A sweep of both conntrack tables in the kernel now (as `gc`);
    /// the sessions removed. Without the control program: 0.
    pub fn sweep(&self) -> Result<u64, BpfError> {
        let Some(fd) = &self.ctl else {
            return Ok(0);
        };
        let cmd = CtlCmd {
            op: ctl::OP_SWEEP,
            ..CtlCmd::default()
        };
        let rc = crate::nat::prog_test_run(fd.as_fd(), &crate::nat::ctl_frame(&cmd))
            .map_err(|e| ctl_err(e.to_string()))?;
        if rc >= ctl::ERROR {
            return Err(ctl_err(format!("errno {}", rc - ctl::ERROR)));
        }
        Ok(rc as u64)
    }

    pub fn config(&self) -> Nat6Config {
        self.config.get(&0, 0).unwrap_or_default()
    }

    /// Writes `cfg` (flags 0: off); returns the change made, if any.
    pub fn apply(&mut self, cfg: Nat6Config) -> Result<Vec<String>, BpfError> {
        let old = self.config();
        let change = match () {
            _ if old == cfg => None,
            _ if cfg.flags != 0 => Some(describe(&cfg)),
            _ if old.flags != 0 => Some("NAT66 off".to_string()),
            _ => None,
        };
        self.config
            .set(0, cfg, 0)
            .map_err(map_err(MAP_NAT6_CONFIG))?;
        Ok(change.into_iter().collect())
    }

    /// The IPv6 forwards in the map (up to the first unused slot).
    pub fn forwards(&self) -> Vec<Fwd6Target> {
        (0..MAX_FWD6)
            .map_while(|i| self.forwards.get(&i, 0).ok().filter(|f| f.proto != 0))
            .collect()
    }

    /// Makes `fwds` the IPv6 forwards (at most [`MAX_FWD6`]: the caller
    /// checked); the DNAT66 sessions of forwards that go or change are
    /// purged first, so no flow keeps going to an old target.
    pub fn set_forwards(&mut self, fwds: &[Fwd6Target]) -> Result<Vec<String>, BpfError> {
        let old = self.forwards();
        if old == fwds {
            return Ok(vec![]);
        }
        let mut changes = Vec::new();
        let purged = self.purge_dnat(fwds)?;
        for f in old.iter().filter(|f| !fwds.contains(f)) {
            changes.push(format!("removed IPv6 forward {}", fwd_label(f)));
        }
        for i in 0..MAX_FWD6 {
            let f = fwds.get(i as usize).copied().unwrap_or_default();
            self.forwards.set(i, f, 0).map_err(map_err(MAP_FWD6))?;
        }
        for f in fwds.iter().filter(|f| !old.contains(f)) {
            changes.push(format!("IPv6 forward {}", fwd_label(f)));
        }
        if purged > 0 {
            changes.push(format!(
                "purged {purged} DNAT66 sessions of changed forwards"
            ));
        }
        Ok(changes)
    }

    /// Ends the DNAT66 sessions (original half inbound) that `fwds` no
    /// longer maps to their target; returns how many. Both halves are
    /// marked idle since boot, so no packet uses them again (a lookup
    /// removes them), then a sweep removes them: in the kernel, counted out
    /// of the live count and the client's quota as expired sessions are.
    fn purge_dnat(&mut self, fwds: &[Fwd6Target]) -> Result<usize, BpfError> {
        const BPF_EXIST: u64 = 2;
        let kept = |k: &Ct6Key, e: &Ct6Entry| {
            let p = k.dport.get();
            fwds.iter().any(|f| {
                f.proto == k.proto
                    && (f.first..=f.last).contains(&p)
                    && f.addr == e.nat_addr
                    && f.port.wrapping_add(p - f.first) == e.nat_port.get()
            })
        };
        let stale: Vec<(Ct6Key, Ct6Key)> = self
            .ct
            .iter()
            .filter_map(|r| r.ok())
            .filter(|(k, e)| k.dir == CT_DIR_IN && e.flags & CT_F_ORIGINAL != 0 && !kept(k, e))
            .map(|(k, e)| (k, e.reverse))
            .collect();
        for key in stale.iter().flat_map(|(k, r)| [*k, *r]) {
            // Only an entry still there: never re-create a half.
            if let Ok(mut v) = self.ct.get(&key, 0) {
                v.last_seen_ns = 0;
                let _ = self.ct.insert(key, v, BPF_EXIST);
            }
        }
        if !stale.is_empty() {
            // Best effort: the timer's sweep (or a packet) removes them too.
            let _ = self.sweep();
        }
        Ok(stale.len())
    }

    /// The sessions (SNAT66 by their outbound halves, DNAT66 by their
    /// reply halves: the lab endpoint is `inside`), oldest first, judged as
    /// the datapath does at `now_ns` (the later, further of both halves).
    pub fn sessions(&self, now_ns: u64) -> Vec<Session6> {
        let cfg = self.config();
        let all: std::collections::HashMap<Ct6Key, Ct6Entry> =
            self.ct.iter().filter_map(|r| r.ok()).collect();
        let mut rows: Vec<(u64, Session6)> = all
            .iter()
            .filter(|(_, e)| e.flags & CT_F_ORIGINAL != 0)
            .filter_map(|(k, e)| {
                let s = match k.dir {
                    CT_DIR_OUT => row(&cfg, now_ns, k, e, all.get(&e.reverse)),
                    // DNAT66: shown by its reply half (target -> client).
                    _ => row(&cfg, now_ns, &e.reverse, all.get(&e.reverse)?, Some(e)),
                };
                Some((e.created_ns, s))
            })
            .collect();
        rows.sort_by_key(|r| r.0);
        rows.into_iter().map(|r| r.1).collect()
    }
}

fn row(cfg: &Nat6Config, now: u64, k: &Ct6Key, e: &Ct6Entry, r: Option<&Ct6Entry>) -> Session6 {
    let (last, state, flags) = match r {
        Some(r) => (
            e.last_seen_ns.max(r.last_seen_ns),
            e.state.max(r.state),
            e.flags | r.flags,
        ),
        None => (e.last_seen_ns, e.state, e.flags),
    };
    let timed = if state == CT_TCP_ESTABLISHED && flags & CT_F_ASSURED == 0 {
        CT_TCP_SYN
    } else {
        state
    };
    let idle = now.saturating_sub(last) as f64 / 1e9;
    let timeout = cfg.timeouts[(timed & 7) as usize] as f64;
    let ep = |a: &In6, p: u16| format!("[{}]:{p}", addr(a));
    let remote = if k.proto == 58 {
        addr(&k.daddr).to_string()
    } else {
        ep(&k.daddr, k.dport.get())
    };
    Session6 {
        proto: proto_name(k.proto),
        state: crate::nat::state_name(state),
        inside: ep(&k.saddr, k.sport.get()),
        external: ep(&e.nat_addr, e.nat_port.get()),
        remote,
        age_secs: now.saturating_sub(e.created_ns) as f64 / 1e9,
        idle_secs: idle,
        expires_in_secs: (timeout - idle).max(0.0),
    }
}

fn ctl_err(msg: String) -> BpfError {
    BpfError::Program {
        name: PROG_CT_CTL,
        ifname: "-".into(),
        source: Box::new(aya::programs::ProgramError::SyscallError(
            aya::sys::SyscallError {
                call: "bpf_prog_test_run",
                io_error: std::io::Error::other(msg),
            },
        )),
    }
}

fn fwd_label(f: &Fwd6Target) -> String {
    let ports = if f.first == f.last {
        f.first.to_string()
    } else {
        format!("{}-{}", f.first, f.last)
    };
    let to = format!("[{}]:{}", addr(&f.addr), f.port);
    format!("{} {ports} -> {to}", proto_name(f.proto))
}

fn describe(cfg: &Nat6Config) -> String {
    let nets: Vec<String> = cfg.prefixes[..(cfg.prefix_count as usize).min(NAT6_PREFIXES)]
        .iter()
        .map(|p| {
            let len: u32 = p.mask.iter().map(|w| w.get().count_ones()).sum();
            format!("{}/{len}", addr(&p.addr))
        })
        .collect();
    format!(
        "NAT66: masquerading {} as {} (ports {}-{})",
        nets.join(", "),
        addr(&cfg.uplink_ipv6),
        cfg.port_min,
        cfg.port_max
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_prefixes_and_addresses() {
        let nets: Vec<IpNet> = ["fd00:77::1/64", "fe80::1/64", "192.168.0.1/16"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let p = lab_prefixes(&nets);
        assert_eq!(p, vec!["fd00:77::/64".parse::<Ipv6Net>().unwrap()]);
        let up: Vec<IpNet> = ["fe80::2/64", "2001:db8:1::1/64"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let a = masquerade_addr(&up).unwrap();
        assert_eq!(a, "2001:db8:1::1".parse::<Ipv6Addr>().unwrap());
        let cfg = config(a, 7, &p, (1024, 65535), [0; 8]);
        assert_eq!(cfg.prefix_count, 1);
        assert_eq!(
            addr(&cfg.prefixes[0].addr),
            "fd00:77::".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(cfg.prefixes[0].mask[1].get(), u32::MAX);
        assert_eq!(cfg.prefixes[0].mask[2].get(), 0);
        assert_eq!(addr(&cfg.uplink_ipv6), a);
        assert_eq!(
            describe(&cfg),
            "NAT66: masquerading fd00:77::/64 as 2001:db8:1::1 (ports 1024-65535)"
        );
    }
}
