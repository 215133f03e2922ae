//! NAT control plane over the pinned maps: the uplink's NAT settings, the
//! forward tables, the lab host table (hairpin), conntrack listing, and
//! the in-kernel sweep (start, forced sweeps, purges) through its control
//! program.
use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    fs, io,
    net::Ipv4Addr,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
};

use aya::{
    maps::{Array, HashMap, IterableMap, MapData, PerCpuArray, PerCpuHashMap},
    programs::{ProgramError, ProgramFd, SchedClassifier},
    sys::SyscallError,
};
use netbridge_common::{
    Be16, Be32, CT_DNAT, CT_F_ORIGINAL, CT_HAIRPIN, CT_ICMP, CT_SIZE, CT_SNAT, CT_TCP_CLOSED,
    CT_TCP_CLOSING, CT_TCP_ESTABLISHED, CT_TCP_SYN, CT_UDP, CT_UDP_REPLIED, CTL_ETHERTYPE,
    CtCounts, CtEntry, CtKey, CtStateView, CtlCmd, EimEntry, EimKey, FwdKey, FwdTarget, HostEntry,
    MAP_CT, MAP_CT_QUOTA, MAP_CT_STATE, MAP_EIM, MAP_FORWARDS, MAP_FWD_HITS, MAP_FWD_RANGES,
    MAP_HOSTS, MAP_NAT_CONFIG, MAP_NAT_STATS, MAX_FWD_RANGES, NatConfig, PROG_CT_CTL, QuotaView,
    ctl, nat_stat,
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
    /// Live count, high-water mark and sweeps, kept by the datapath.
    pub state: Array<MapData, CtStateView>,
    pub eim: HashMap<MapData, EimKey, EimEntry>,
    pub hosts: HashMap<MapData, Be32, HostEntry>,
    /// Live sessions per source (see [`MAP_CT_QUOTA`]).
    pub quota: HashMap<MapData, Be32, QuotaView>,
    /// The conntrack control program (loaded, or its pin), if any.
    ctl: Option<ProgramFd>,
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
    /// Seconds until it expires; 0: expired, gone at the next sweep or
    /// packet (a packet never uses it).
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
    /// Sessions the datapath counts against max_sessions (kernel figure).
    pub live_sessions: u64,
    /// Highest live count ever reached (kernel figure).
    pub high_water_sessions: u64,
    pub max_sessions: u32,
    /// Sessions the conntrack table was sized for at its creation.
    pub capacity_sessions: u32,
    /// Period of the in-kernel sweep.
    pub sweep_interval_ms: u32,
    pub sweeps: u64,
    /// Seconds since the last sweep ended; None: never swept.
    pub last_sweep_secs_ago: Option<f64>,
    /// Idle timeouts (s) by state name, as the datapath applies them.
    pub timeouts: BTreeMap<&'static str, u32>,
    pub pools: Vec<PoolUse>,
}

fn ip(a: Be32) -> Ipv4Addr {
    Ipv4Addr::from(a)
}

fn ep(addr: Be32, port: Be16) -> String {
    format!("{}:{}", ip(addr), port.get())
}

/// A session's last activity and state: the later and further of its two
/// halves (`r`, the reverse entry, may be gone), as the datapath judges it.
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
            state: src.map(MAP_CT_STATE, Map::Array)?,
            eim: src.map(MAP_EIM, Map::HashMap)?,
            hosts: src.map(MAP_HOSTS, Map::HashMap)?,
            quota: src.map(MAP_CT_QUOTA, Map::HashMap)?,
            // Not pinned on a lab brought up without NAT: read-only use works.
            ctl: src.program_fd(PROG_CT_CTL),
        })
    }

    /// Live sessions per source (the upstream client of a forward, the lab
    /// host of SNAT and hairpin) as the datapath counts them for the
    /// quotas; most first.
    pub fn sessions_by_source(&self) -> Result<Vec<(Ipv4Addr, u32)>, BpfError> {
        let mut out = Vec::new();
        for r in self.quota.iter() {
            let (k, v) = r.map_err(map_err(MAP_CT_QUOTA))?;
            out.push((ip(k), v.sessions));
        }
        out.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        Ok(out)
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
    /// flow keeps going to the old target; so have the external ports of
    /// new forwards (a session left there by an earlier mapping would win
    /// over the new one). Returns the changes made.
    pub fn apply(&mut self, plan: &NatPlan) -> Result<Vec<String>, BpfError> {
        let mut changes = self.apply_forwards(&plan.forwards)?;
        self.apply_hosts(&plan.hosts)?;
        let ranges = plan.forwards.iter().filter(|f| f.first != f.last).count();
        changes.extend(self.apply_config(plan.config, ranges as u16)?);
        Ok(changes)
    }

    /// The forward tables: single ports in the hash, ranges in the array
    /// (the config's `range_count` says how many are used).
    fn apply_forwards(&mut self, forwards: &[FwdTarget]) -> Result<Vec<String>, BpfError> {
        let mut changes = Vec::new();
        let old = self.forwards()?;
        for f in old.iter().filter(|f| !forwards.contains(f)) {
            let purged = self.purge_forward(f.proto, f.first, f.last)?;
            changes.push(format!(
                "removed forward {} {} ({purged} sessions purged)",
                proto_name(f.proto),
                port_label(f)
            ));
        }
        if self.ctl.is_some() {
            for f in forwards.iter().filter(|f| !old.contains(f)) {
                let purged = self.purge_forward(f.proto, f.first, f.last)?;
                if purged > 0 {
                    changes.push(format!(
                        "purged {purged} stale sessions of {} {}",
                        proto_name(f.proto),
                        port_label(f)
                    ));
                }
            }
        }
        let key = |f: &FwdTarget| FwdKey {
            port: f.first,
            proto: f.proto,
            _pad: 0,
        };
        let singles: Vec<&FwdTarget> = forwards.iter().filter(|f| f.first == f.last).collect();
        let stale: Vec<FwdKey> = self
            .forwards
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !singles.iter().any(|f| key(f) == *k))
            .collect();
        for k in stale {
            self.forwards.remove(&k).map_err(map_err(MAP_FORWARDS))?;
        }
        for f in &singles {
            let inserted = self.forwards.insert(key(f), **f, 0);
            inserted.map_err(map_err(MAP_FORWARDS))?;
        }
        for (i, f) in forwards.iter().filter(|f| f.first != f.last).enumerate() {
            let set = self.ranges.set(i as u32, *f, 0);
            set.map_err(map_err(MAP_FWD_RANGES))?;
        }
        for f in forwards.iter().filter(|f| !old.contains(f)) {
            changes.push(format!(
                "forward {} {} -> {}:{}",
                proto_name(f.proto),
                port_label(f),
                ip(f.addr),
                f.port
            ));
        }
        Ok(changes)
    }

    /// The lab host table (hairpin delivery): exactly `hosts`.
    fn apply_hosts(&mut self, hosts: &[(Ipv4Addr, HostEntry)]) -> Result<(), BpfError> {
        let stale: Vec<Be32> = self
            .hosts
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !hosts.iter().any(|(a, _)| Be32::from(*a) == *k))
            .collect();
        for k in stale {
            self.hosts.remove(&k).map_err(map_err(MAP_HOSTS))?;
        }
        for (a, h) in hosts {
            let inserted = self.hosts.insert(Be32::from(*a), *h, 0);
            inserted.map_err(map_err(MAP_HOSTS))?;
        }
        Ok(())
    }

    /// The NAT config, its session limit capped at the table's capacity and
    /// the sweep period derived from the timeouts.
    fn apply_config(&mut self, mut cfg: NatConfig, ranges: u16) -> Result<Vec<String>, BpfError> {
        cfg.range_count = ranges;
        // A pinned table keeps the size of its first `up`.
        let (asked, capacity) = (cfg.max_sessions, self.capacity());
        cfg.max_sessions = asked.min(capacity);
        cfg.sweep_ms = sweep_ms(&cfg.timeouts, self.ct_entries());
        let old = self.config();
        let change = match () {
            _ if old == cfg => None,
            _ if cfg.flags != 0 => Some(describe_config(&cfg, asked, capacity)),
            _ if old.flags != 0 => Some("NAT off".to_string()),
            _ => None,
        };
        self.config
            .set(0, cfg, 0)
            .map_err(map_err(MAP_NAT_CONFIG))?;
        Ok(change.into_iter().collect())
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

    /// Entries of the conntrack table (fixed when it was created).
    pub fn ct_entries(&self) -> u32 {
        self.ct
            .map()
            .info()
            .map(|i| i.max_entries())
            .unwrap_or(CT_SIZE)
    }

    /// Sessions the conntrack table holds without the LRU evicting one.
    pub fn capacity(&self) -> u32 {
        netbridge_common::ct_capacity(self.ct_entries(), possible_cpus())
    }

    /// The datapath's session accounting.
    pub fn counts(&self) -> CtCounts {
        self.state.get(&0, 0).map(|s| s.counts).unwrap_or_default()
    }

    /// Sessions counted against `max_sessions`.
    pub fn live_sessions(&self) -> u64 {
        self.counts().live
    }

    /// Runs the control program on `cmd`; its result, or its error.
    fn control(&self, cmd: CtlCmd) -> Result<u32, BpfError> {
        let err = |call, io_error| BpfError::Program {
            name: PROG_CT_CTL,
            ifname: "-".into(),
            source: Box::new(ProgramError::SyscallError(SyscallError { call, io_error })),
        };
        let Some(fd) = &self.ctl else {
            return Err(BpfError::Program {
                name: PROG_CT_CTL,
                ifname: "-".into(),
                source: Box::new(ProgramError::NotLoaded),
            });
        };
        let rc =
            prog_test_run(fd.as_fd(), &ctl_frame(&cmd)).map_err(|e| err("bpf_prog_test_run", e))?;
        if rc >= ctl::ERROR {
            let errno = io::Error::from_raw_os_error((rc - ctl::ERROR) as i32);
            return Err(err(PROG_CT_CTL, errno));
        }
        Ok(rc)
    }

    /// Starts the sweep timer with this program's callback: see
    /// [`start_sweep`]. Returns the `ctl::ARMED`.. status.
    fn arm(&self, takeover: bool) -> Result<u32, BpfError> {
        let cmd = CtlCmd {
            op: ctl::OP_ARM,
            flags: if takeover { ctl::F_TAKEOVER } else { 0 },
            ..CtlCmd::default()
        };
        retry_enomem(ARM_DELAYS_MS, || self.control(cmd))
    }

    /// Removes the sessions of the forward `proto` `first..=last`
    /// (external ports, host order), in the kernel. Returns how many.
    pub fn purge_forward(&mut self, proto: u8, first: u16, last: u16) -> Result<u64, BpfError> {
        let n = self.control(CtlCmd {
            op: ctl::OP_PURGE,
            first,
            last,
            proto,
            ..CtlCmd::default()
        })?;
        Ok(n as u64)
    }

    /// Ends every session of lab addresses `addrs` (a removed port's):
    /// the SNAT sessions they opened and the DNAT and hairpin sessions to
    /// or from them. Both halves are marked idle since boot, then a forced
    /// sweep (see [`NatMaps::gc`]) removes them and counts them out in the
    /// kernel, as it does expired sessions; a packet never uses an expired
    /// session meanwhile. A half a packet refreshed in between is marked
    /// again (at most 3 rounds). Returns how many sessions went.
    pub fn purge_hosts(&mut self, addrs: &[Ipv4Addr]) -> Result<u64, BpfError> {
        const BPF_EXIST: u64 = 2;
        let theirs: HashSet<Be32> = addrs.iter().map(|a| Be32::from(*a)).collect();
        if theirs.is_empty() {
            return Ok(0);
        }
        let mut purged: HashSet<CtKey> = HashSet::new();
        for _ in 0..3 {
            let hit: Vec<(CtKey, CtEntry)> = self
                .ct
                .iter()
                .filter_map(|r| r.ok())
                .filter(|(k, e)| {
                    e.flags & CT_F_ORIGINAL != 0
                        && (theirs.contains(&k.saddr)
                            || (e.kind != CT_SNAT && theirs.contains(&e.nat_addr)))
                })
                .collect();
            if hit.is_empty() {
                break;
            }
            for (k, e) in &hit {
                purged.insert(*k);
                for key in [*k, e.reverse] {
                    // Only an entry still there: never re-create a half.
                    if let Ok(mut v) = self.ct.get(&key, 0) {
                        v.last_seen_ns = 0;
                        let _ = self.ct.insert(key, v, BPF_EXIST);
                    }
                }
            }
            self.gc()?;
        }
        Ok(purged.iter().filter(|k| self.ct.get(k, 0).is_err()).count() as u64)
    }

    /// A forced sweep (`netbridge gc`): the kernel removes the sessions
    /// idle past their timeout now, as its timer does (an
    /// endpoint-independent mapping goes with its last session, in the
    /// kernel too). Returns the sessions removed.
    pub fn gc(&mut self) -> Result<u64, BpfError> {
        let n = self.control(CtlCmd {
            op: ctl::OP_SWEEP,
            ..CtlCmd::default()
        })?;
        Ok(n as u64)
    }

    /// The session table, oldest first, the kernel's session accounting
    /// and the pool pressure.
    pub fn conntrack(&self) -> Result<Conntrack, BpfError> {
        let now = monotonic_ns();
        let cfg = self.config();
        let entries: std::collections::HashMap<CtKey, CtEntry> =
            self.ct.iter().filter_map(|r| r.ok()).collect();
        let mut used: BTreeMap<u8, BTreeSet<u16>> = BTreeMap::new();
        let originals = entries.iter().filter(|(_, e)| e.flags & CT_F_ORIGINAL != 0);
        let mut sessions: Vec<Session> = originals
            .map(|(k, e)| {
                if e.kind == CT_SNAT {
                    used.entry(k.proto).or_default().insert(e.nat_port.get());
                }
                session_row(&cfg, now, k, e, entries.get(&e.reverse))
            })
            .collect();
        sessions.sort_by(|a, b| b.age_secs.total_cmp(&a.age_secs));
        let pool_size = (cfg.port_max as usize + 1).saturating_sub(cfg.port_min as usize);
        // IPv4 NAT off (none, or NAT66 alone): no IPv4 port pool.
        let protos: &[u8] = if cfg.flags == 0 {
            &[]
        } else {
            &[IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP]
        };
        let pools = protos
            .iter()
            .map(|p| PoolUse {
                proto: proto_name(*p),
                ports_in_use: used.get(p).map_or(0, |s| s.len()),
                pool_size,
            })
            .collect();
        let counts = self.counts();
        Ok(Conntrack {
            sessions,
            live_sessions: counts.live,
            high_water_sessions: counts.high_water,
            max_sessions: cfg.max_sessions,
            capacity_sessions: self.capacity(),
            sweep_interval_ms: cfg.sweep_ms,
            sweeps: counts.sweeps,
            last_sweep_secs_ago: (counts.sweeps > 0)
                .then(|| now.saturating_sub(counts.last_sweep_ns) as f64 / 1e9),
            timeouts: [
                CT_TCP_SYN,
                CT_TCP_ESTABLISHED,
                CT_TCP_CLOSING,
                CT_TCP_CLOSED,
                CT_UDP,
                CT_UDP_REPLIED,
                CT_ICMP,
            ]
            .iter()
            .map(|&s| (state_name(s), cfg.timeouts[s as usize]))
            .collect(),
            pools,
        })
    }

    /// NAT counters summed over CPUs, by name. A counter past the end of
    /// the pinned array (pinned by an older build that had fewer, kept by
    /// `up --reload`) reads 0: the programs cannot count it there either.
    pub fn counters(&self) -> Result<BTreeMap<&'static str, u64>, BpfError> {
        let mut out = BTreeMap::new();
        let pinned = self.stats.len();
        for i in 0..nat_stat::COUNT {
            let sum = if i < pinned {
                let v = self.stats.get(&i, 0).map_err(map_err(MAP_NAT_STATS))?;
                v.iter().sum()
            } else {
                0
            };
            out.insert(nat_stat::NAMES[i as usize], sum);
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

/// One session of the listing from its original half `k`/`e` and the
/// other half `r` (if still there), at `now`.
fn session_row(cfg: &NatConfig, now: u64, k: &CtKey, e: &CtEntry, r: Option<&CtEntry>) -> Session {
    let (last, state) = activity(e, r);
    let idle = now.saturating_sub(last) as f64 / 1e9;
    // As the kernel: a handshake answered but never assured keeps the SYN
    // timeout (netbridge-ebpf ct::timeout_ns).
    let assured = (e.flags | r.map_or(0, |r| r.flags)) & netbridge_common::CT_F_ASSURED != 0;
    let timed = if state == CT_TCP_ESTABLISHED && !assured {
        CT_TCP_SYN
    } else {
        state
    };
    let timeout = cfg.timeouts[(timed & 7) as usize] as f64;
    let (inside, external, remote) = if e.kind == CT_SNAT {
        let remote = if k.proto == IPPROTO_ICMP {
            ip(k.daddr).to_string()
        } else {
            ep(k.daddr, k.dport)
        };
        (ep(k.saddr, k.sport), ep(e.nat_addr, e.nat_port), remote)
    } else {
        let inside = ep(e.nat_addr, e.nat_port);
        (inside, ep(k.daddr, k.dport), ep(k.saddr, k.sport))
    };
    Session {
        proto: proto_name(k.proto),
        kind: kind_name(e.kind),
        state: state_name(state),
        inside,
        external,
        remote,
        age_secs: now.saturating_sub(e.created_ns) as f64 / 1e9,
        idle_secs: idle,
        expires_in_secs: (timeout - idle).max(0.0),
    }
}

/// "NAT on ADDR (...)": what `apply` reports for a config turned on or
/// changed; `asked` sessions, of which the table holds `capacity`.
fn describe_config(cfg: &NatConfig, asked: u32, capacity: u32) -> String {
    let mut limit = format!("max {} sessions", cfg.max_sessions);
    if asked > capacity {
        limit += &format!(
            " (not {asked}: the conntrack table was sized for {capacity} at the first `up`; `down` and `up` to resize)"
        );
    }
    if cfg.source_quota != 0 {
        limit += &format!(", {} per upstream source", cfg.source_quota);
    }
    if cfg.host_quota != 0 {
        limit += &format!(", {} per lab host", cfg.host_quota);
    }
    let flag = |bit: u32, text: &'static str| if cfg.flags & bit != 0 { text } else { "" };
    let filtering = match cfg.filtering {
        netbridge_common::FILTER_ADF => "address-dependent filtering, ",
        netbridge_common::FILTER_EIF => "endpoint-independent filtering, ",
        _ => "",
    };
    format!(
        "NAT on {} ({}{}{filtering}{}{}{}ports {}-{}, {limit}, sweep every {} ms)",
        ip(cfg.uplink_ipv4),
        flag(netbridge_common::NAT_MASQUERADE, "masquerade, "),
        flag(netbridge_common::NAT_EIM, "endpoint-independent, "),
        flag(netbridge_common::NAT_INBOUND_REFRESH, "inbound refresh, "),
        flag(netbridge_common::NAT_SYN_DROP, "unsolicited SYNs dropped, "),
        flag(
            netbridge_common::NAT_UPLINK_PEER,
            "fast path into the veth uplink's peer, "
        ),
        cfg.port_min,
        cfg.port_max,
        cfg.sweep_ms
    )
}

/// The NAT config's timeouts (s), indexed by `CT_*` state code.
pub fn timeouts_by_state(t: &NatTimeouts) -> [u32; 8] {
    let mut out = [0; 8];
    for (state, slot) in out.iter_mut().enumerate().skip(1) {
        *slot = t.for_state(state as u8);
    }
    out
}

/// Sweep period: a quarter of the shortest timeout, so a session stops
/// counting against `max_sessions` at most 1.25 timeouts after its last
/// packet; at least 100 ms, and 4 us per table entry (a full 262,144-entry
/// table costs ~23 ms a sweep); at most 5 s.
pub fn sweep_ms(timeouts: &[u32; 8], ct_entries: u32) -> u32 {
    let shortest = timeouts[1..].iter().copied().min().unwrap_or(0);
    let floor = (ct_entries / 250).max(100);
    (shortest.saturating_mul(250)).clamp(floor, 5000.max(floor))
}

/// Conntrack entries for a new table of `max_sessions`.
pub fn ct_entries_for(max_sessions: u32) -> u32 {
    netbridge_common::ct_entries(max_sessions, possible_cpus())
}

/// CPUs the kernel may run (per-CPU structures exist for each).
fn possible_cpus() -> u32 {
    aya::util::nr_cpus().map_or(256, |n| n as u32)
}

/// Pins the conntrack control program (first `up`; `--reload` replaces
/// the pin) and starts the sweep timer with its callback; a timer already
/// running (the map is pinned by name) is only restarted, or, reloading,
/// taken over by the new program. Returns the changes made.
pub fn start_sweep(
    ebpf: &mut aya::Ebpf,
    pins: &PinDir,
    reload: bool,
    nat: &NatMaps,
) -> Result<Vec<String>, BpfError> {
    let path = pins.0.join(PROG_CT_CTL);
    if reload || !path.exists() {
        let name = PROG_CT_CTL;
        let prog: &mut SchedClassifier = crate::bpf::program(ebpf, name, "-")?;
        let pin_err = |source: Box<dyn std::error::Error + Send + Sync>| BpfError::Pin {
            what: format!("program {name}"),
            path: path.clone(),
            source,
        };
        // Pinned beside, then renamed over: the pin is never missing.
        let fresh = pins.0.join(format!("{name}%new"));
        let _ = fs::remove_file(&fresh);
        prog.pin(&fresh).map_err(|e| pin_err(Box::new(e)))?;
        fs::rename(&fresh, &path).map_err(|e| pin_err(Box::new(e)))?;
    }
    Ok(match nat.arm(reload)? {
        ctl::ARMED => vec![format!(
            "started the conntrack sweep (every {} ms)",
            nat.config().sweep_ms
        )],
        ctl::TAKEN_OVER => vec!["the new program runs the conntrack sweep".into()],
        _ => vec![],
    })
}

/// Waits between tries of arming the sweep (ms): 5 tries in all, under 1 s.
const ARM_DELAYS_MS: &[u64] = &[10, 40, 150, 600];

/// Runs `f`, again after each of `delays_ms` while it fails with ENOMEM
/// from inside the kernel. `bpf_timer_init` allocates its timer without
/// sleeping, so it can fail for a moment where a sleeping allocation
/// would have waited (seen once in a crash loop of `up`s); arming again is
/// harmless (a timer already set up is restarted). Other errors, and the
/// last ENOMEM, are returned as they are.
fn retry_enomem<T>(
    delays_ms: &[u64],
    mut f: impl FnMut() -> Result<T, BpfError>,
) -> Result<T, BpfError> {
    for &ms in delays_ms {
        match f() {
            Err(e) if is_enomem(&e) => std::thread::sleep(std::time::Duration::from_millis(ms)),
            r => return r,
        }
    }
    f()
}

/// The control program's (or its syscall's) error is ENOMEM.
fn is_enomem(e: &BpfError) -> bool {
    const ENOMEM: i32 = 12;
    matches!(e, BpfError::Program { source, .. }
        if matches!(&**source, ProgramError::SyscallError(SyscallError { io_error, .. })
            if io_error.raw_os_error() == Some(ENOMEM)))
}

/// The test-run frame carrying `cmd` to the control program.
pub fn ctl_frame(cmd: &CtlCmd) -> Vec<u8> {
    let mut frame = vec![0u8; 12];
    frame.extend_from_slice(&CTL_ETHERTYPE.to_be_bytes());
    frame.extend_from_slice(bytemuck::bytes_of(cmd));
    frame
}

/// BPF_PROG_TEST_RUN: runs `prog` once on `frame` (a real skb arriving on
/// the calling thread's loopback) and returns its return value.
pub fn prog_test_run(prog: BorrowedFd<'_>, frame: &[u8]) -> io::Result<u32> {
    prog_test_run_out(prog, frame).map(|r| r.retval)
}

/// What one BPF_PROG_TEST_RUN gave back.
#[derive(Debug, Clone)]
pub struct TestRunOut {
    /// The program's return value (TC_ACT_*, XDP_*).
    pub retval: u32,
    /// The packet as the program left it.
    pub data: Vec<u8>,
}

/// BPF_PROG_TEST_RUN, keeping the packet the program rewrote.
pub fn prog_test_run_out(prog: BorrowedFd<'_>, frame: &[u8]) -> io::Result<TestRunOut> {
    /// The `test` member of `union bpf_attr`.
    #[repr(C)]
    #[derive(Default)]
    struct TestAttr {
        prog_fd: u32,
        retval: u32,
        data_size_in: u32,
        data_size_out: u32,
        data_in: u64,
        data_out: u64,
        repeat: u32,
        duration: u32,
        ctx_size_in: u32,
        ctx_size_out: u32,
        ctx_in: u64,
        ctx_out: u64,
        flags: u32,
        cpu: u32,
        batch_size: u32,
        _pad: u32,
    }
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    let mut out = vec![0u8; frame.len() + 256];
    let mut attr = TestAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_size_out: out.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: 1,
        ..Default::default()
    };
    // SAFETY: attr points to valid buffers that outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestAttr,
            std::mem::size_of::<TestAttr>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    out.truncate(attr.data_size_out as usize);
    Ok(TestRunOut {
        retval: attr.retval,
        data: out,
    })
}

pub fn port_label(f: &FwdTarget) -> String {
    if f.first == f.last {
        f.first.to_string()
    } else {
        format!("{}-{}", f.first, f.last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The control program's error for `errno`, as `control` builds it.
    fn ctl_errno(errno: i32) -> BpfError {
        BpfError::Program {
            name: PROG_CT_CTL,
            ifname: "-".into(),
            source: Box::new(ProgramError::SyscallError(SyscallError {
                call: PROG_CT_CTL,
                io_error: io::Error::from_raw_os_error(errno),
            })),
        }
    }

    #[test]
    fn arming_is_retried_on_enomem_only_and_boundedly() {
        let mut calls = 0;
        let r = retry_enomem(&[0, 0, 0], || {
            calls += 1;
            if calls < 3 { Err(ctl_errno(12)) } else { Ok(7) }
        });
        assert_eq!((r.ok(), calls), (Some(7), 3), "ENOMEM twice, then armed");

        let mut calls = 0;
        let r: Result<u32, _> = retry_enomem(&[0, 0], || {
            calls += 1;
            Err(ctl_errno(12))
        });
        assert!(r.as_ref().is_err_and(is_enomem), "the last ENOMEM returned");
        assert_eq!(calls, 3, "one try per delay and a last one");

        let mut calls = 0;
        let r: Result<u32, _> = retry_enomem(&[0, 0], || {
            calls += 1;
            Err(ctl_errno(22))
        });
        assert!(
            r.is_err_and(|e| !is_enomem(&e)) && calls == 1,
            "EINVAL not retried"
        );
    }
}
