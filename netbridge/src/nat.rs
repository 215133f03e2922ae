//! NAT control plane over the pinned maps: the uplink's NAT settings, the
//! forward tables, the lab host table (hairpin), and conntrack listing,
//! timeouts (GC) and purges.
use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    net::Ipv4Addr,
};

use aya::maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap};
use netbridge_common::{
    CT_DIR_IN, CT_DNAT, CT_F_ORIGINAL, CT_HAIRPIN, CT_ICMP, CT_SNAT, CT_TCP_CLOSED, CT_TCP_CLOSING,
    CT_TCP_ESTABLISHED, CT_TCP_SYN, CT_UDP, CT_UDP_REPLIED, CtEntry, CtKey, EimKey, FwdKey,
    FwdTarget, HostEntry, MAP_CT, MAP_CT_CREATED, MAP_CT_REMOVED, MAP_EIM, MAP_FORWARDS,
    MAP_FWD_HITS, MAP_FWD_RANGES, MAP_HOSTS, MAP_NAT_CONFIG, MAP_NAT_STATS, MAX_FWD_RANGES,
    NatConfig, nat_stat,
};
use serde::Serialize;

use crate::{
    config::{NatTimeouts, Proto},
    pins::{BpfError, MapSource, PinDir, map_err, monotonic_ns},
};

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// The NAT maps, each taken once.
pub struct NatMaps {
    pub config: Array<MapData, NatConfig>,
    /// An LRU hash in the kernel; read and pruned through `HashMap`.
    pub ct: HashMap<MapData, CtKey, CtEntry>,
    pub forwards: HashMap<MapData, FwdKey, FwdTarget>,
    pub ranges: Array<MapData, FwdTarget>,
    pub hits: PerCpuHashMap<MapData, FwdKey, u64>,
    pub stats: PerCpuArray<MapData, u64>,
    pub created: PerCpuArray<MapData, u64>,
    pub removed: Array<MapData, u64>,
    pub eim: HashMap<MapData, EimKey, u16>,
    pub hosts: HashMap<MapData, [u8; 4], HostEntry>,
}

pub fn proto_num(p: Proto) -> u8 {
    match p {
        Proto::Tcp => IPPROTO_TCP,
        Proto::Udp => IPPROTO_UDP,
    }
}

pub fn proto_name(p: u8) -> &'static str {
    match p {
        IPPROTO_TCP => "tcp",
        IPPROTO_UDP => "udp",
        IPPROTO_ICMP => "icmp",
        _ => "?",
    }
}

pub fn state_name(s: u8) -> &'static str {
    match s {
        CT_TCP_SYN => "SYN_SENT",
        CT_TCP_ESTABLISHED => "ESTABLISHED",
        CT_TCP_CLOSING => "CLOSING",
        CT_TCP_CLOSED => "CLOSED",
        CT_UDP => "UNREPLIED",
        CT_UDP_REPLIED => "REPLIED",
        CT_ICMP => "ICMP",
        _ => "?",
    }
}

fn kind_name(k: u8) -> &'static str {
    match k {
        CT_SNAT => "snat",
        CT_DNAT => "dnat",
        CT_HAIRPIN => "hairpin",
        _ => "?",
    }
}

/// What `up` wants the NAT maps to say.
#[derive(Debug, Clone)]
pub struct NatPlan {
    pub config: NatConfig,
    /// Single ports and ranges, as the datapath stores them.
    pub forwards: Vec<FwdTarget>,
    /// Lab addresses -> their port and MAC (hairpin delivery).
    pub hosts: Vec<(Ipv4Addr, HostEntry)>,
}

/// One NAT session, as `netbridge conntrack` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Session {
    pub proto: &'static str,
    pub kind: &'static str,
    pub state: &'static str,
    /// The lab endpoint (address:port; ICMP: address:identifier).
    pub inside: String,
    /// Its mapping on the uplink address.
    pub external: String,
    /// The peer outside (or, for hairpin, the lab client).
    pub remote: String,
    pub age_secs: f64,
    pub idle_secs: f64,
    /// Seconds until the GC may remove it.
    pub expires_in_secs: f64,
}

/// A forward and the sessions it opened (`forward list`, `stats`).
#[derive(Debug, Clone, Serialize)]
pub struct ForwardUse {
    pub proto: &'static str,
    /// External port, or "first-last".
    pub port: String,
    /// Target address:port.
    pub to: String,
    /// New DNAT sessions.
    pub hits: u64,
}

/// Port-pool use of the SNAT range, per protocol.
#[derive(Debug, Clone, Serialize)]
pub struct PoolUse {
    pub proto: &'static str,
    pub ports_in_use: usize,
    pub pool_size: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Conntrack {
    pub sessions: Vec<Session>,
    /// sum(created) - removed, as the datapath counts against max_sessions.
    pub live_sessions: u64,
    pub max_sessions: u32,
    pub pools: Vec<PoolUse>,
}

fn ip(b: [u8; 4]) -> Ipv4Addr {
    Ipv4Addr::from(b)
}

fn ep(addr: [u8; 4], port: u16) -> String {
    format!("{}:{}", ip(addr), u16::from_be(port))
}

/// A session's last activity and state: the later and further of its two
/// halves (`r`, the reverse entry, may be gone), as the GC judges it.
fn activity(e: &CtEntry, r: Option<&CtEntry>) -> (u64, u8) {
    match r {
        Some(r) => (e.last_seen_ns.max(r.last_seen_ns), e.state.max(r.state)),
        None => (e.last_seen_ns, e.state),
    }
}

impl NatMaps {
    /// The NAT maps from a loaded object or from pins (one table).
    pub fn from_source(src: &mut impl MapSource) -> Result<Self, BpfError> {
        use aya::maps::Map;
        Ok(NatMaps {
            config: src.map(MAP_NAT_CONFIG, Map::Array)?,
            ct: src.map(MAP_CT, Map::LruHashMap)?,
            forwards: src.map(MAP_FORWARDS, Map::HashMap)?,
            ranges: src.map(MAP_FWD_RANGES, Map::Array)?,
            hits: src.map(MAP_FWD_HITS, Map::PerCpuHashMap)?,
            stats: src.map(MAP_NAT_STATS, Map::PerCpuArray)?,
            created: src.map(MAP_CT_CREATED, Map::PerCpuArray)?,
            removed: src.map(MAP_CT_REMOVED, Map::Array)?,
            eim: src.map(MAP_EIM, Map::LruHashMap)?,
            hosts: src.map(MAP_HOSTS, Map::HashMap)?,
        })
    }

    pub fn open_pinned(pins: &PinDir) -> Result<Self, BpfError> {
        Self::from_source(&mut pins.clone())
    }

    pub fn config(&self) -> NatConfig {
        self.config.get(&0, 0).unwrap_or_default()
    }

    /// Every forward in the maps: single ports, then the ranges in use.
    pub fn forwards(&self) -> Result<Vec<FwdTarget>, BpfError> {
        let mut out: Vec<FwdTarget> = self
            .forwards
            .iter()
            .filter_map(|r| r.ok().map(|(_, v)| v))
            .collect();
        let n = (self.config().range_count as u32).min(MAX_FWD_RANGES);
        for i in 0..n {
            out.push(self.ranges.get(&i, 0).map_err(map_err(MAP_FWD_RANGES))?);
        }
        out.sort_by_key(|f| (f.proto, f.first));
        Ok(out)
    }

    /// Makes the maps say `plan` (NatConfig flags 0 = NAT off). Forwards
    /// that disappear or change have their sessions purged first, so no
    /// flow keeps going to the old target. Returns the changes made.
    pub fn apply(&mut self, plan: &NatPlan) -> Result<Vec<String>, BpfError> {
        let mut changes = Vec::new();
        let old = self.forwards()?;
        for f in old.iter().filter(|f| !plan.forwards.contains(f)) {
            let purged = self.purge_forward(f.proto, f.first, f.last)?;
            changes.push(format!(
                "removed forward {} {} ({purged} sessions purged)",
                proto_name(f.proto),
                port_label(f)
            ));
        }
        let singles: Vec<&FwdTarget> = plan.forwards.iter().filter(|f| f.first == f.last).collect();
        let stale: Vec<FwdKey> = self
            .forwards
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| {
                !singles
                    .iter()
                    .any(|f| f.first == k.port && f.proto == k.proto)
            })
            .collect();
        for k in stale {
            self.forwards.remove(&k).map_err(map_err(MAP_FORWARDS))?;
        }
        for f in &singles {
            let key = FwdKey {
                port: f.first,
                proto: f.proto,
                _pad: 0,
            };
            self.forwards
                .insert(key, **f, 0)
                .map_err(map_err(MAP_FORWARDS))?;
        }
        let ranges: Vec<&FwdTarget> = plan.forwards.iter().filter(|f| f.first != f.last).collect();
        for (i, f) in ranges.iter().enumerate() {
            self.ranges
                .set(i as u32, **f, 0)
                .map_err(map_err(MAP_FWD_RANGES))?;
        }
        for f in plan.forwards.iter().filter(|f| !old.contains(f)) {
            changes.push(format!(
                "forward {} {} -> {}:{}",
                proto_name(f.proto),
                port_label(f),
                ip(f.addr),
                f.port
            ));
        }
        // Hosts.
        let stale: Vec<[u8; 4]> = self
            .hosts
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !plan.hosts.iter().any(|(a, _)| a.octets() == *k))
            .collect();
        for k in stale {
            self.hosts.remove(&k).map_err(map_err(MAP_HOSTS))?;
        }
        for (a, h) in &plan.hosts {
            self.hosts
                .insert(a.octets(), *h, 0)
                .map_err(map_err(MAP_HOSTS))?;
        }
        let mut cfg = plan.config;
        cfg.range_count = ranges.len() as u16;
        if self.config() != cfg {
            if cfg.flags != 0 {
                changes.push(format!(
                    "NAT on {} ({}{}ports {}-{}, max {} sessions)",
                    ip(cfg.uplink_ipv4),
                    if cfg.flags & netbridge_common::NAT_MASQUERADE != 0 {
                        "masquerade, "
                    } else {
                        ""
                    },
                    if cfg.flags & netbridge_common::NAT_EIM != 0 {
                        "endpoint-independent, "
                    } else {
                        ""
                    },
                    cfg.port_min,
                    cfg.port_max,
                    cfg.max_sessions
                ));
            } else if self.config().flags != 0 {
                changes.push("NAT off".into());
            }
        }
        self.config
            .set(0, cfg, 0)
            .map_err(map_err(MAP_NAT_CONFIG))?;
        Ok(changes)
    }

    /// Replaces the forwards of a running NAT (`netbridge forward`),
    /// keeping the uplink settings and lab hosts.
    pub fn set_forwards(&mut self, forwards: Vec<FwdTarget>) -> Result<Vec<String>, BpfError> {
        let mut cfg = self.config();
        if forwards.is_empty() {
            cfg.flags &= !netbridge_common::NAT_FORWARDS;
        } else {
            cfg.flags |= netbridge_common::NAT_FORWARDS;
        }
        let hosts = self
            .hosts
            .iter()
            .filter_map(|r| r.ok())
            .map(|(k, v)| (Ipv4Addr::from(k), v))
            .collect();
        self.apply(&NatPlan {
            config: cfg,
            forwards,
            hosts,
        })
    }

    fn add_removed(&mut self, n: u64) -> Result<(), BpfError> {
        if n == 0 {
            return Ok(());
        }
        let cur = self.removed.get(&0, 0).unwrap_or(0);
        self.removed
            .set(0, cur + n, 0)
            .map_err(map_err(MAP_CT_REMOVED))
    }

    /// Sessions counted against `max_sessions`.
    pub fn live_sessions(&self) -> u64 {
        let created: u64 = self.created.get(&0, 0).map(|v| v.iter().sum()).unwrap_or(0);
        created.saturating_sub(self.removed.get(&0, 0).unwrap_or(0))
    }

    /// Deletes the sessions `pick(original key, entry)` selects (both
    /// halves). Returns how many sessions went.
    fn delete_where(
        &mut self,
        mut pick: impl FnMut(&CtKey, &CtEntry, Option<&CtEntry>) -> bool,
    ) -> Result<u64, BpfError> {
        let entries: Vec<(CtKey, CtEntry)> = self.ct.iter().filter_map(|r| r.ok()).collect();
        let all: std::collections::HashMap<CtKey, CtEntry> = entries.iter().copied().collect();
        let mut sessions = 0;
        let mut doomed = Vec::new();
        for (k, e) in &entries {
            if e.flags & CT_F_ORIGINAL != 0 {
                if pick(k, e, all.get(&e.reverse)) {
                    doomed.push(*k);
                    doomed.push(e.reverse);
                    sessions += 1;
                }
            } else if !all.contains_key(&e.reverse) {
                // An orphaned half (its original was evicted): useless.
                doomed.push(*k);
            }
        }
        for k in doomed {
            let _ = self.ct.remove(&k);
        }
        self.add_removed(sessions)?;
        Ok(sessions)
    }

    /// Purges the sessions of the forward `proto` `first..=last` (external
    /// ports, host order).
    pub fn purge_forward(&mut self, proto: u8, first: u16, last: u16) -> Result<u64, BpfError> {
        self.delete_where(|k, e, _| {
            (e.kind == CT_DNAT || e.kind == CT_HAIRPIN)
                && k.proto == proto
                && k.dir == CT_DIR_IN
                && (first..=last).contains(&u16::from_be(k.dport))
        })
    }

    /// Removes sessions idle longer than their state's timeout, orphaned
    /// halves, and endpoint-independent mappings no session uses. Returns
    /// the sessions removed.
    pub fn gc(&mut self, timeouts: &NatTimeouts) -> Result<u64, BpfError> {
        let now = monotonic_ns();
        let n = self.delete_where(|_, e, r| {
            let (last, state) = activity(e, r);
            now.saturating_sub(last) > timeouts.for_state(state) as u64 * 1_000_000_000
        })?;
        let alive: HashSet<EimKey> = self
            .ct
            .iter()
            .filter_map(|r| r.ok())
            .filter(|(_, e)| e.kind == CT_SNAT && e.flags & CT_F_ORIGINAL != 0)
            .map(|(k, _)| EimKey {
                addr: k.saddr,
                port: k.sport,
                proto: k.proto,
                _pad: 0,
            })
            .collect();
        let stale: Vec<EimKey> = self
            .eim
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !alive.contains(k))
            .collect();
        for k in stale {
            let _ = self.eim.remove(&k);
        }
        Ok(n)
    }

    /// The session table, oldest first, and the pool pressure.
    pub fn conntrack(&self, timeouts: &NatTimeouts) -> Result<Conntrack, BpfError> {
        let now = monotonic_ns();
        let cfg = self.config();
        let entries: std::collections::HashMap<CtKey, CtEntry> =
            self.ct.iter().filter_map(|r| r.ok()).collect();
        let mut sessions = Vec::new();
        let mut used: BTreeMap<u8, BTreeSet<u16>> = BTreeMap::new();
        for (k, e) in entries.iter().filter(|(_, e)| e.flags & CT_F_ORIGINAL != 0) {
            let (last, state) = activity(e, entries.get(&e.reverse));
            let idle = now.saturating_sub(last) as f64 / 1e9;
            let icmp = k.proto == IPPROTO_ICMP;
            let (inside, external, remote) = if e.kind == CT_SNAT {
                used.entry(k.proto)
                    .or_default()
                    .insert(u16::from_be(e.nat_port));
                let remote = if icmp {
                    ip(k.daddr).to_string()
                } else {
                    ep(k.daddr, k.dport)
                };
                (ep(k.saddr, k.sport), ep(e.nat_addr, e.nat_port), remote)
            } else {
                (
                    ep(e.nat_addr, e.nat_port),
                    ep(k.daddr, k.dport),
                    ep(k.saddr, k.sport),
                )
            };
            sessions.push(Session {
                proto: proto_name(k.proto),
                kind: kind_name(e.kind),
                state: state_name(state),
                inside,
                external,
                remote,
                age_secs: now.saturating_sub(e.created_ns) as f64 / 1e9,
                idle_secs: idle,
                expires_in_secs: (timeouts.for_state(state) as f64 - idle).max(0.0),
            });
        }
        sessions.sort_by(|a, b| b.age_secs.total_cmp(&a.age_secs));
        let pool_size = (cfg.port_max as usize + 1).saturating_sub(cfg.port_min as usize);
        let pools = [IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP]
            .iter()
            .map(|p| PoolUse {
                proto: proto_name(*p),
                ports_in_use: used.get(p).map_or(0, |s| s.len()),
                pool_size,
            })
            .collect();
        Ok(Conntrack {
            sessions,
            live_sessions: self.live_sessions(),
            max_sessions: cfg.max_sessions,
            pools,
        })
    }

    /// NAT counters summed over CPUs, by name.
    pub fn counters(&self) -> Result<BTreeMap<&'static str, u64>, BpfError> {
        let mut out = BTreeMap::new();
        for i in 0..nat_stat::COUNT {
            let v = self.stats.get(&i, 0).map_err(map_err(MAP_NAT_STATS))?;
            out.insert(nat_stat::NAMES[i as usize], v.iter().sum());
        }
        Ok(out)
    }

    /// Every forward with its new DNAT sessions.
    pub fn forward_uses(&self) -> Result<Vec<ForwardUse>, BpfError> {
        let hits: BTreeMap<(u8, u16), u64> = self
            .hits
            .iter()
            .filter_map(|r| r.ok())
            .map(|(k, v)| ((k.proto, k.port), v.iter().sum()))
            .collect();
        Ok(self
            .forwards()?
            .iter()
            .map(|f| ForwardUse {
                proto: proto_name(f.proto),
                port: port_label(f),
                to: format!("{}:{}", ip(f.addr), f.port),
                hits: hits.get(&(f.proto, f.first)).copied().unwrap_or(0),
            })
            .collect())
    }
}

pub fn port_label(f: &FwdTarget) -> String {
    if f.first == f.last {
        f.first.to_string()
    } else {
        format!("{}-{}", f.first, f.last)
    }
}
