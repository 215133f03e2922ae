//! Loading the embedded eBPF object, attaching its programs, reading its maps.
use std::{
    collections::{BTreeMap, HashSet},
    fs,
    net::Ipv4Addr,
    path::PathBuf,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, PerCpuHashMap, ProgramArray},
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLinkId,
        xdp::XdpLink,
    },
};
use netbridge_common::{
    BRIDGE_ISOLATION, Be32, BridgeConfig, FdbEntry, FdbKey, HostEntry, MAP_CONFIG, MAP_DROP_STATS,
    MAP_FDB, MAP_FDB_GEN, MAP_HOSTS, MAP_HOSTS6, MAP_POLICY, MAP_PORT_INDEX, MAP_PORT_PROGS,
    MAP_PORT_SLOTS, MAP_PORT_STATS, MAP_PORTS, MAX_PORTS, PORT_INDEX_SIZE, PORT_ISOLATED,
    PORT_PROG_IPV6, PORT_PROG_NAT, PORT_PROGS, PROG_PEER_XDP, PROG_PORT_INGRESS, PROG_PORT_IPV6,
    PROG_PORT_NAT, PROG_PORT_XDP, PROG_UPLINK_EGRESS, PROG_UPLINK_INGRESS, PolicyKey, PortConfig,
    PortSlot, PortStats, drop_reason,
};

use crate::nat::NatMaps;
// The pin layer, re-exported where callers have always found it.
pub use crate::pins::{
    BPFFS_ROOT, BpfError, HOOK_TC_INGRESS, HOOK_UPLINK_IN, HOOK_UPLINK_OUT, HOOK_XDP, MapSource,
    PinDir, ensure_bpffs, is_bpffs, map_err, monotonic_ns, unpin_link,
};

/// The eBPF object built by build.rs (see xtask/src/ebpf_build.rs).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("NETBRIDGE_EBPF_OBJ"));

/// Maps shared with the programs, each taken once from the object.
pub struct Maps {
    /// Counters of interfaces without a port slot.
    pub port_stats: PerCpuHashMap<MapData, u32, PortStats>,
    /// Counters (and per-CPU caches) of configured ports, by slot.
    pub port_slots: PerCpuArray<MapData, PortSlot>,
    pub drop_stats: PerCpuArray<MapData, u64>,
    pub ports: HashMap<MapData, u32, PortConfig>,
    /// Direct-mapped copy of `ports` (see [`MAP_PORT_INDEX`]).
    pub port_index: Array<MapData, PortConfig>,
    /// See [`MAP_FDB_GEN`]: changed after userspace changes the FDB or the
    /// ports, so no per-CPU cache outlives that.
    pub fdb_gen: Array<MapData, u64>,
    /// An LRU hash in the kernel; aya reads it through `HashMap`.
    pub fdb: HashMap<MapData, FdbKey, FdbEntry>,
    pub config: Array<MapData, BridgeConfig>,
    pub policy: HashMap<MapData, PolicyKey, u32>,
    /// IPv6 address (octets) -> port ifindex.
    pub hosts6: HashMap<MapData, [u8; 16], u32>,
    pub nat: NatMaps,
    /// None: pins of an older object without NAT66.
    pub nat6: Option<crate::nat6::Nat6Maps>,
}

/// A port's identity: the namespace end's MAC and its IPv4 (at most
/// MAX_PORT_IPV4) and IPv6 addresses (at most MAX_PORT_IPV6 - 1; its
/// EUI-64 link-local address is added), checked if `anti_spoof`.
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    pub mac: [u8; 6],
    pub ipv4: &'a [Ipv4Addr],
    pub ipv6: &'a [std::net::Ipv6Addr],
    pub anti_spoof: bool,
    /// An IPv6 router: RA guard off.
    pub router: bool,
}

/// A port's datapath entry: fast path on, anti-spoofing and RA guard as
/// `identity` says (none: RA guard only). The IPv6 addresses are kept
/// either way: the isolation policy finds ports by them ([`MAP_HOSTS6`]).
pub fn port_config(ifindex: u32, identity: Option<Identity>) -> PortConfig {
    let mut p = PortConfig {
        ifindex,
        flags: netbridge_common::PORT_FAST_PATH,
        ..PortConfig::default()
    };
    if let Some(id) = identity {
        if id.anti_spoof {
            p.flags |= netbridge_common::PORT_ANTI_SPOOF;
        }
        if id.router {
            p.flags |= netbridge_common::PORT_ROUTER;
        }
        p.mac = id.mac;
        for (slot, ip) in p.ipv4.iter_mut().zip(id.ipv4) {
            *slot = ip.octets();
        }
        let v6 = std::iter::once(link_local(id.mac)).chain(id.ipv6.iter().copied());
        for (slot, ip) in p.ipv6.iter_mut().zip(v6) {
            *slot = ip.octets();
        }
    }
    p
}

/// The link-local address the kernel gives an interface with `mac`
/// (addr_gen_mode eui64, the default): fe80::/64 with the modified EUI-64.
pub fn link_local(mac: [u8; 6]) -> std::net::Ipv6Addr {
    let [a, b, c, d, e, f] = mac;
    let mut o = [0u8; 16];
    o[..2].copy_from_slice(&[0xfe, 0x80]);
    o[8..].copy_from_slice(&[a ^ 2, b, c, 0xff, 0xfe, d, e, f]);
    o.into()
}

/// The port table as userspace reads it to change it.
struct PortTable {
    ports: BTreeMap<u32, PortConfig>,
    /// Counter slots in use.
    used: std::collections::BTreeSet<u16>,
    /// [`MAP_HOSTS6`], read once per change of the port set, not once per
    /// port (that was quadratic: 500,000 map reads for 1,000 ports).
    hosts6: Hosts6,
}

/// [`MAP_HOSTS6`] as userspace knows it: the addresses of each port and
/// the port of each address (an address belongs to one port at a time).
#[derive(Default)]
struct Hosts6 {
    by_port: std::collections::HashMap<u32, Vec<[u8; 16]>>,
    owner: std::collections::HashMap<[u8; 16], u32>,
}

impl Hosts6 {
    /// Port `ifindex`'s addresses become `now`; returns those it had.
    fn replace(&mut self, ifindex: u32, now: &[[u8; 16]]) -> Vec<[u8; 16]> {
        let had = self.by_port.remove(&ifindex).unwrap_or_default();
        for a in &had {
            self.owner.remove(a);
        }
        for a in now {
            // Moved here from another port: no longer that port's.
            if let Some(other) = self.owner.insert(*a, ifindex)
                && let Some(v) = self.by_port.get_mut(&other)
            {
                v.retain(|b| b != a);
            }
        }
        self.by_port.insert(ifindex, now.to_vec());
        had
    }
}

/// `p` flagged PORT_ISOLATED iff it is in `isolated`.
fn with_isolation(mut p: PortConfig, isolated: &[u32]) -> PortConfig {
    if isolated.contains(&p.ifindex) {
        p.flags |= PORT_ISOLATED;
    } else {
        p.flags &= !PORT_ISOLATED;
    }
    p
}

/// The bridge as the datapath's gateway.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gateway {
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub ipv4: Option<std::net::Ipv4Addr>,
}

/// One learned FDB entry, as `netbridge fdb` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FdbRow {
    pub mac: String,
    pub vlan: u16,
    pub ifindex: u32,
    /// Seconds since the MAC was last seen.
    pub age_secs: f64,
    pub expired: bool,
}

impl Maps {
    /// The bridge maps from a loaded object or from pins (one table).
    pub fn from_source(src: &mut impl MapSource) -> Result<Self, BpfError> {
        use aya::maps::Map;
        Ok(Maps {
            port_stats: src.map(MAP_PORT_STATS, Map::PerCpuHashMap)?,
            port_slots: src.map(MAP_PORT_SLOTS, Map::PerCpuArray)?,
            drop_stats: src.map(MAP_DROP_STATS, Map::PerCpuArray)?,
            ports: src.map(MAP_PORTS, Map::HashMap)?,
            port_index: src.map(MAP_PORT_INDEX, Map::Array)?,
            fdb_gen: src.map(MAP_FDB_GEN, Map::Array)?,
            fdb: src.map(MAP_FDB, Map::LruHashMap)?,
            config: src.map(MAP_CONFIG, Map::Array)?,
            policy: src.map(MAP_POLICY, Map::HashMap)?,
            hosts6: src.map(MAP_HOSTS6, Map::HashMap)?,
            nat: NatMaps::from_source(src)?,
            nat6: crate::nat6::Nat6Maps::from_source(src).ok(),
        })
    }

    /// Opens the pinned maps of a running topology (no program is loaded).
    pub fn open_pinned(pins: &PinDir) -> Result<Self, BpfError> {
        Self::from_source(&mut pins.clone())
    }

    /// Makes exactly `ports` the datapath's ports (replacing any others)
    /// and sets the aging and the gateway (the bridge): ifindex, MAC, first
    /// IPv4 address.
    pub fn configure(
        &mut self,
        ports: &[PortConfig],
        aging_secs: u32,
        gateway: Option<Gateway>,
    ) -> Result<(), BpfError> {
        self.set_ports(ports)?;
        self.set_bridge(aging_secs, gateway)
    }

    /// Makes exactly `ports` the datapath's ports (replacing any others).
    pub fn set_ports(&mut self, ports: &[PortConfig]) -> Result<(), BpfError> {
        let wanted: HashSet<u32> = ports.iter().map(|p| p.ifindex).collect();
        let stale: Vec<u32> = self
            .ports
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !wanted.contains(k))
            .collect();
        let mut hosts6 = self.hosts6_by_port();
        for k in stale {
            // Out of the index first: from then on the datapath looks in
            // the hash, where the port goes next.
            self.unindex(k)?;
            self.ports.remove(&k).map_err(map_err(MAP_PORTS))?;
            self.set_hosts6(k, &[], &mut hosts6)?;
        }
        let mut table = self.port_table(hosts6);
        let isolated = self.isolated_ports();
        for p in ports {
            self.put_port(*p, &mut table, &isolated)?;
        }
        self.fdb_changed()
    }

    /// Tells the datapath's per-CPU FDB caches that the FDB or the ports
    /// changed behind their back (see [`MAP_FDB_GEN`]): a value no cache
    /// holds (its low byte, 0xff, is no CPU's).
    pub fn fdb_changed(&mut self) -> Result<(), BpfError> {
        self.fdb_gen
            .set(0, monotonic_ns() << 8 | 0xff, 0)
            .map_err(map_err(MAP_FDB_GEN))
    }

    /// Adds (or updates) one port, leaving the others as they are.
    pub fn add_port(&mut self, p: PortConfig) -> Result<(), BpfError> {
        let mut table = self.port_table(self.hosts6_by_port());
        let isolated = self.isolated_ports();
        self.put_port(p, &mut table, &isolated)?;
        self.fdb_changed()
    }

    /// The port table as it is, read once (with `hosts6`, read before).
    fn port_table(&self, hosts6: Hosts6) -> PortTable {
        let ports: BTreeMap<u32, PortConfig> = self.ports.iter().filter_map(|r| r.ok()).collect();
        let used = ports.values().map(|p| p.slot).filter(|&s| s != 0).collect();
        PortTable {
            ports,
            used,
            hosts6,
        }
    }

    /// [`MAP_HOSTS6`] as it is, read once.
    fn hosts6_by_port(&self) -> Hosts6 {
        let mut h = Hosts6::default();
        for (a, i) in self.hosts6.iter().filter_map(|r| r.ok()) {
            h.by_port.entry(i).or_default().push(a);
            h.owner.insert(a, i);
        }
        h
    }

    /// Writes port `p` (hash and index) given the table as it is: a port
    /// keeps its counter slot while it stays a port; a new one gets a free
    /// slot, zeroed, and the isolation flag `isolated` gives it.
    fn put_port(
        &mut self,
        p: PortConfig,
        table: &mut PortTable,
        isolated: &[u32],
    ) -> Result<(), BpfError> {
        let mut p = with_isolation(p, isolated);
        p.slot = match table.ports.get(&p.ifindex) {
            Some(old) if old.slot != 0 => old.slot,
            // None free (more ports than MAX_PORTS): counted by ifindex.
            _ => match (1..=MAX_PORTS as u16).find(|s| !table.used.contains(s)) {
                Some(s) => {
                    self.reset_slot(s)?;
                    table.used.insert(s);
                    s
                }
                None => 0,
            },
        };
        self.ports
            .insert(p.ifindex, p, 0)
            .map_err(map_err(MAP_PORTS))?;
        self.set_hosts6(p.ifindex, &p.ipv6, &mut table.hosts6)?;
        table.ports.insert(p.ifindex, p);
        self.index(&p, &|i| table.ports.contains_key(&i))
    }

    /// Makes `addrs` (:: slots skipped) exactly the IPv6 hosts of port
    /// `ifindex` in [`MAP_HOSTS6`], whose contents `have` holds (and is
    /// kept up to date).
    fn set_hosts6(
        &mut self,
        ifindex: u32,
        addrs: &[[u8; 16]],
        have: &mut Hosts6,
    ) -> Result<(), BpfError> {
        let now: Vec<[u8; 16]> = addrs.iter().copied().filter(|a| *a != [0; 16]).collect();
        let had = have.replace(ifindex, &now);
        for a in had.iter().filter(|a| !now.contains(a)) {
            self.hosts6.remove(a).map_err(map_err(MAP_HOSTS6))?;
        }
        for a in &now {
            self.hosts6
                .insert(a, ifindex, 0)
                .map_err(map_err(MAP_HOSTS6))?;
        }
        Ok(())
    }

    /// Ports that are the source of a denied pair.
    fn isolated_ports(&self) -> Vec<u32> {
        self.policy
            .keys()
            .filter_map(|k| k.ok())
            .map(|k| k.src)
            .collect()
    }

    /// Zeroes counter slot `slot` on every CPU (before a new port uses it).
    fn reset_slot(&mut self, slot: u16) -> Result<(), BpfError> {
        let err = |e| map_err(MAP_PORT_SLOTS)(MapError::IoError(e));
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| err(e))?;
        let zero =
            aya::maps::PerCpuValues::try_from(vec![PortSlot::default(); cpus]).map_err(err)?;
        self.port_slots
            .set(slot as u32, zero, 0)
            .map_err(map_err(MAP_PORT_SLOTS))
    }

    /// Puts `p` in the direct-mapped index unless another port still in
    /// use (`live`) holds its entry (then the datapath finds `p` in the hash).
    fn index(&mut self, p: &PortConfig, live: &dyn Fn(u32) -> bool) -> Result<(), BpfError> {
        let at = p.ifindex & (PORT_INDEX_SIZE - 1);
        let cur = self
            .port_index
            .get(&at, 0)
            .map_err(map_err(MAP_PORT_INDEX))?;
        if cur.ifindex != p.ifindex && cur.ifindex != 0 {
            if live(cur.ifindex) {
                return Ok(());
            }
            // Cleared first, so no frame sees the old port's ifindex with
            // the new one's fields.
            self.unindex(cur.ifindex)?;
        }
        self.port_index
            .set(at, p, 0)
            .map_err(map_err(MAP_PORT_INDEX))
    }

    /// Clears `ifindex`'s direct-mapped index entry, if it holds one.
    fn unindex(&mut self, ifindex: u32) -> Result<(), BpfError> {
        let at = ifindex & (PORT_INDEX_SIZE - 1);
        let cur = self
            .port_index
            .get(&at, 0)
            .map_err(map_err(MAP_PORT_INDEX))?;
        if cur.ifindex != ifindex {
            return Ok(());
        }
        self.port_index
            .set(at, PortConfig::default(), 0)
            .map_err(map_err(MAP_PORT_INDEX))
    }

    /// Adds (or updates) one lab host: an address of a port's namespace.
    pub fn add_host(&mut self, addr: Ipv4Addr, e: HostEntry) -> Result<(), BpfError> {
        self.nat
            .hosts
            .insert(Be32::from(addr), e, 0)
            .map_err(map_err(MAP_HOSTS))
    }

    /// Takes port `ifindex` out of every table: the port table, its
    /// counters, the FDB entries on it, isolation pairs with it and the lab
    /// hosts `v4` pointing at it. Other ports' entries stay as they are.
    /// Returns how many FDB entries went.
    pub fn remove_port(&mut self, ifindex: u32, v4: &[Ipv4Addr]) -> Result<usize, BpfError> {
        // A missing key is fine (a port that never saw a packet has no
        // counters; a port with a counter slot has none by ifindex): aya
        // reports it as KeyNotFound or, for per-CPU hashes, as ENOENT.
        let gone = |r: Result<(), MapError>| match r {
            Err(MapError::KeyNotFound) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.kind() == std::io::ErrorKind::NotFound => {
                Ok(())
            }
            r => r,
        };
        // Out of the index first (then the hash): its slot is free from
        // then on and zeroed before another port uses it.
        self.unindex(ifindex)?;
        gone(self.ports.remove(&ifindex)).map_err(map_err(MAP_PORTS))?;
        let mut hosts6 = self.hosts6_by_port();
        self.set_hosts6(ifindex, &[], &mut hosts6)?;
        gone(self.port_stats.remove(&ifindex)).map_err(map_err(MAP_PORT_STATS))?;
        let macs: Vec<FdbKey> = self
            .fdb
            .iter()
            .filter_map(|r| r.ok())
            .filter(|(_, e)| e.ifindex == ifindex)
            .map(|(k, _)| k)
            .collect();
        for k in &macs {
            gone(self.fdb.remove(k)).map_err(map_err(MAP_FDB))?;
        }
        let pairs: Vec<PolicyKey> = self
            .policy
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| k.src == ifindex || k.dst == ifindex)
            .collect();
        for k in &pairs {
            gone(self.policy.remove(k)).map_err(map_err(MAP_POLICY))?;
        }
        for a in v4 {
            if self
                .nat
                .hosts
                .get(&Be32::from(*a), 0)
                .is_ok_and(|h| h.ifindex == ifindex)
            {
                gone(self.nat.hosts.remove(&Be32::from(*a))).map_err(map_err(MAP_HOSTS))?;
            }
        }
        // After the FDB entries went: no cache keeps one.
        self.fdb_changed()?;
        Ok(macs.len())
    }

    /// Sets the FDB aging and the gateway, keeping the policy flag.
    pub fn set_bridge(
        &mut self,
        aging_secs: u32,
        gateway: Option<Gateway>,
    ) -> Result<(), BpfError> {
        let gw = gateway.unwrap_or_default();
        let flags = self.config.get(&0, 0).map(|c| c.flags).unwrap_or(0);
        let cfg = BridgeConfig {
            aging_ns: aging_secs as u64 * 1_000_000_000,
            bridge_ifindex: gw.ifindex,
            gateway_ipv4: gw.ipv4.map(|ip| ip.octets()).unwrap_or([0; 4]),
            gateway_mac: gw.mac,
            flags,
            _pad: 0,
        };
        self.config.set(0, cfg, 0).map_err(map_err(MAP_CONFIG))
    }

    /// Makes the isolation policy exactly `pairs` of (port, port) ifindexes,
    /// both directions, and flags it on (or off when empty). Returns
    /// whether anything changed.
    pub fn set_policy(&mut self, pairs: &[(u32, u32)]) -> Result<bool, BpfError> {
        let want: Vec<PolicyKey> = pairs
            .iter()
            .flat_map(|&(a, b)| [PolicyKey { src: a, dst: b }, PolicyKey { src: b, dst: a }])
            .collect();
        let have: Vec<PolicyKey> = self.policy.keys().filter_map(|k| k.ok()).collect();
        let mut changed = false;
        for k in have.iter().filter(|k| !want.contains(k)) {
            self.policy.remove(k).map_err(map_err(MAP_POLICY))?;
            changed = true;
        }
        for k in want.iter().filter(|k| !have.contains(k)) {
            self.policy.insert(k, 1, 0).map_err(map_err(MAP_POLICY))?;
            changed = true;
        }
        // Flags after keys: a flagged port whose key is gone, or a key not
        // flagged yet, only lets frames pass that were allowed before.
        let isolated: Vec<u32> = want.iter().map(|k| k.src).collect();
        let ports: Vec<PortConfig> = self
            .ports
            .iter()
            .filter_map(|r| r.ok())
            .map(|(_, p)| p)
            .collect();
        let live = |i: u32| ports.iter().any(|p| p.ifindex == i);
        for p in &ports {
            let q = with_isolation(*p, &isolated);
            if q != *p {
                self.ports
                    .insert(q.ifindex, q, 0)
                    .map_err(map_err(MAP_PORTS))?;
                self.index(&q, &live)?;
            }
        }
        let mut cfg = self.config.get(&0, 0).unwrap_or_default();
        let flags = if want.is_empty() {
            cfg.flags & !BRIDGE_ISOLATION
        } else {
            cfg.flags | BRIDGE_ISOLATION
        };
        if flags != cfg.flags {
            cfg.flags = flags;
            self.config.set(0, cfg, 0).map_err(map_err(MAP_CONFIG))?;
            changed = true;
        }
        Ok(changed)
    }

    /// Learned FDB entries, newest first.
    pub fn fdb(&self) -> Result<Vec<FdbRow>, BpfError> {
        let now = monotonic_ns();
        let aging_ns = self.config.get(&0, 0).map(|c| c.aging_ns).unwrap_or(0);
        let mut rows = Vec::new();
        for item in self.fdb.iter() {
            let (k, e) = item.map_err(map_err(MAP_FDB))?;
            let age_ns = now.saturating_sub(e.last_seen_ns);
            rows.push(FdbRow {
                mac: k
                    .mac
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":"),
                vlan: k.vlan,
                ifindex: e.ifindex,
                age_secs: age_ns as f64 / 1e9,
                expired: aging_ns != 0 && age_ns > aging_ns,
            });
        }
        rows.sort_by(|a, b| a.age_secs.total_cmp(&b.age_secs));
        Ok(rows)
    }

    /// Port counters summed over CPUs, by ifindex: a configured port's
    /// slot plus whatever it counted before it had one.
    pub fn port_stats(&self) -> Result<BTreeMap<u32, PortStats>, BpfError> {
        let mut out: BTreeMap<u32, PortStats> = BTreeMap::new();
        for item in self.port_stats.iter() {
            let (ifindex, per_cpu) = item.map_err(map_err(MAP_PORT_STATS))?;
            let sum = out.entry(ifindex).or_default();
            per_cpu.iter().for_each(|s| sum.accumulate(s));
        }
        for item in self.ports.iter() {
            let (ifindex, p) = item.map_err(map_err(MAP_PORTS))?;
            if p.slot == 0 {
                continue;
            }
            let per_cpu = self
                .port_slots
                .get(&(p.slot as u32), 0)
                .map_err(map_err(MAP_PORT_SLOTS))?;
            let sum = out.entry(ifindex).or_default();
            per_cpu.iter().for_each(|s| sum.accumulate(&s.stats));
        }
        Ok(out)
    }

    /// Drops summed over CPUs, by reason name.
    pub fn drop_stats(&self) -> Result<BTreeMap<&'static str, u64>, BpfError> {
        let mut out = BTreeMap::new();
        // Reasons past the end of an array pinned by an older build (kept
        // by `up --reload`) read 0: nothing can count them there.
        let pinned = self.drop_stats.len();
        for code in 0..drop_reason::COUNT {
            let sum = if code < pinned {
                let per_cpu = self
                    .drop_stats
                    .get(&code, 0)
                    .map_err(map_err(MAP_DROP_STATS))?;
                per_cpu.iter().sum()
            } else {
                0
            };
            out.insert(drop_reason::NAMES[code as usize], sum);
        }
        Ok(out)
    }
}

/// How a port's TC program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortHook {
    /// A cls_bpf filter on a clsact qdisc (see [`crate::tcfilter`]): the
    /// ports of a file, attached by the hundred in one `up`.
    Filter,
    /// A pinned TCX link: ports attached one at a time (the engine, CNI),
    /// where one grace period per attach does not matter and a chained CNI
    /// plugin may need the device's ingress qdisc slot (the reference
    /// `bandwidth` adds an `ingress` qdisc, which cannot sit beside clsact).
    Tcx,
}

/// A loaded copy of the datapath object.
pub struct Datapath {
    ebpf: Ebpf,
    pub maps: Maps,
    pins: PinDir,
    /// Replace programs already attached by an earlier `up` with this
    /// object's (upgrade without a gap: see [`Datapath::attach_tc`]).
    pub reload: bool,
}

impl Datapath {
    /// Loads the object; maps are pinned by name in `pins` and reused if
    /// already there, so counters survive a reload.
    pub fn load(pins: PinDir) -> Result<Self, BpfError> {
        Self::load_sized(pins, netbridge_common::DEFAULT_MAX_SESSIONS)
    }

    /// Same, sizing a new conntrack table for `max_sessions` (a pinned
    /// one keeps its size: see `NatMaps::capacity`).
    pub fn load_sized(pins: PinDir, max_sessions: u32) -> Result<Self, BpfError> {
        Self::load_programs(pins, max_sessions, &[], true)
    }

    /// Same, loading only `programs` into the kernel (all when empty): the
    /// verifier takes most of a load's time, and attaching one port needs
    /// one program (two with XDP). `port_nat`: the topology has NAT, so a
    /// port program also needs its NAT tail call, loaded here if its slot
    /// is empty; without NAT the port program never calls it (the biggest
    /// program to verify, left out of a bridged topology's `up`).
    pub fn load_programs(
        pins: PinDir,
        max_sessions: u32,
        programs: &[&'static str],
        port_nat: bool,
    ) -> Result<Self, BpfError> {
        let load_err = |source| BpfError::Load {
            pin_dir: pins.0.clone(),
            source: Box::new(source),
        };
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&pins.0)
            .map_max_entries(
                netbridge_common::MAP_CT,
                crate::nat::ct_entries_for(max_sessions),
            )
            .map_max_entries(netbridge_common::MAP_CT_ADMITTED, max_sessions.max(1))
            // NAT66's table is sized as NB_CT, up to its own (smaller)
            // maximum: its entries are three times as large.
            .map_max_entries(
                netbridge_common::MAP_CT6,
                crate::nat::ct_entries_for(max_sessions).min(netbridge_common::CT6_SIZE),
            )
            .load(EBPF_OBJECT)
            .map_err(load_err)?;
        // The port program's tail calls. The array is pinned: its entries
        // live as long as the pin, not as this process. A port program
        // loaded alone (one more port) uses the parts already there, or
        // loads those whose slot is empty (the first port of a topology).
        let empty = empty_tail_slots(&ebpf, &pins)?;
        let mut tail: ProgramArray<MapData> =
            MapSource::map(&mut ebpf, MAP_PORT_PROGS, aya::maps::Map::ProgramArray)?;
        let port = programs.contains(&PROG_PORT_INGRESS);
        let wanted = |name: &str| {
            programs.is_empty()
                || programs.contains(&name)
                || (name == PROG_PORT_NAT && port_nat && port && empty[0])
                || (name == PROG_PORT_IPV6 && port && empty[1])
        };
        load_parallel(&mut ebpf, &wanted)?;
        for (name, index) in [
            (PROG_PORT_NAT, PORT_PROG_NAT),
            (PROG_PORT_IPV6, PORT_PROG_IPV6),
        ] {
            if wanted(name) {
                let fd =
                    MapSource::program_fd(&ebpf, name).ok_or(BpfError::MissingProgram { name })?;
                tail.set(index, &fd, 0).map_err(map_err(MAP_PORT_PROGS))?;
            }
        }
        let maps = Maps::from_source(&mut ebpf)?;
        Ok(Datapath {
            ebpf,
            maps,
            pins,
            reload: false,
        })
    }

    /// Pins the conntrack control program and starts (or, reloading,
    /// takes over) the in-kernel sweep: see [`crate::nat::start_sweep`].
    pub fn start_ct_sweep(&mut self) -> Result<Vec<String>, BpfError> {
        crate::nat::start_sweep(&mut self.ebpf, &self.pins, self.reload, &self.maps.nat)
    }

    /// Fd of a loaded program (for BPF_PROG_TEST_RUN in tests).
    pub fn prog_fd(&self, name: &'static str) -> Result<std::os::fd::RawFd, BpfError> {
        use std::os::fd::{AsFd, AsRawFd};
        let prog = self
            .ebpf
            .program(name)
            .ok_or(BpfError::MissingProgram { name })?;
        let fd = prog.fd().map_err(|e| prog_err(name, "-", e))?;
        Ok(fd.as_fd().as_raw_fd())
    }

    /// Attaches the port program at TC ingress of `ifname` as `hook` says,
    /// and detaches it from the other kind of hook if it was there (after:
    /// TCX runs before any filter, so either order of the two is gapless).
    /// Must run on a thread inside the interface's namespace (see
    /// [`crate::netns::run_blocking_in`]). Returns the pin and whether it
    /// was newly attached (or replaced).
    pub fn attach_port(
        &mut self,
        ifname: &str,
        hook: PortHook,
    ) -> Result<(PathBuf, bool), BpfError> {
        if hook == PortHook::Filter {
            return self.attach_port_filter(ifname);
        }
        let name = PROG_PORT_INGRESS;
        let (path, new) = self.attach_tc(name, ifname, TcAttachType::Ingress, HOOK_TC_INGRESS)?;
        let _ = fs::remove_file(self.pins.filter(ifname, HOOK_TC_INGRESS));
        let ifindex =
            nix::net::if_::if_nametoindex(ifname).map_err(|e| tc_err(name, ifname, e.into()))?;
        let dropped = crate::tcfilter::detach(ifindex).map_err(|e| tc_err(name, ifname, e))?;
        Ok((path, new || dropped))
    }

    /// [`Self::attach_port`] as a cls_bpf filter (see [`crate::tcfilter`]),
    /// its program pinned under `filters/`.
    fn attach_port_filter(&mut self, ifname: &str) -> Result<(PathBuf, bool), BpfError> {
        let name = PROG_PORT_INGRESS;
        let path = self.pins.filter(ifname, HOOK_TC_INGRESS);
        // A TCX link an older netbridge attached: it runs before any filter.
        let tcx = self.pins.link(ifname, HOOK_TC_INGRESS);
        let ifindex =
            nix::net::if_::if_nametoindex(ifname).map_err(|e| tc_err(name, ifname, e.into()))?;
        let live = crate::tcfilter::ours(ifindex).map_err(|e| tc_err(name, ifname, e))?;
        if let Some(f) = &live {
            if f.name.as_deref() != Some(name) {
                let what = format!(
                    "filter pref {} handle {:#x} on {ifname} is another program's ({:?})",
                    f.prio, f.handle, f.name
                );
                return Err(tc_err(name, ifname, std::io::Error::other(what)));
            }
            // Attached by an earlier `up` with this topology's program;
            // otherwise (pins lost, a crash between attach and pin) the
            // filter is repaired below: its program may use maps that are
            // no longer this topology's.
            if f.prog_id.is_some()
                && f.prog_id == pinned_prog_id(&path)
                && !self.reload
                && !tcx.exists()
            {
                return Ok((path, false));
            }
        }
        let prog: &mut SchedClassifier = program(&mut self.ebpf, name, ifname)?;
        attach_filter(prog, ifname, live.is_some()).map_err(|e| prog_err(name, ifname, e))?;
        pin_prog(prog, &path, ifname)?;
        // Only now that the filter is in place: the old link goes, and the
        // filter, run by nothing before, takes every packet.
        unpin_link(&tcx);
        Ok((path, true))
    }

    /// Attaches the NAT programs to the uplink (TC ingress and egress,
    /// TCX links: one interface per topology, so the grace period each
    /// TCX attach waits for is paid twice per `up`, not once per port).
    /// Returns the hooks newly attached.
    pub fn attach_uplink(&mut self, ifname: &str) -> Result<Vec<&'static str>, BpfError> {
        let mut new = Vec::new();
        for (prog, kind, hook) in [
            (PROG_UPLINK_INGRESS, TcAttachType::Ingress, HOOK_UPLINK_IN),
            (PROG_UPLINK_EGRESS, TcAttachType::Egress, HOOK_UPLINK_OUT),
        ] {
            if self.attach_tc(prog, ifname, kind, hook)?.1 {
                new.push(prog);
            }
        }
        Ok(new)
    }

    /// Detaches the NAT programs from every uplink but `keep` (pins under
    /// the uplink hooks). Returns the interfaces detached.
    pub fn detach_uplinks_except(&self, keep: Option<&str>) -> Vec<String> {
        let mut gone = Vec::new();
        for (hook, ifname, path) in self.pins.links() {
            if (hook == HOOK_UPLINK_IN || hook == HOOK_UPLINK_OUT)
                && Some(ifname.as_str()) != keep
                && unpin_link(&path)
                && !gone.contains(&ifname)
            {
                gone.push(ifname);
            }
        }
        gone
    }

    fn attach_tc(
        &mut self,
        name: &'static str,
        ifname: &str,
        kind: TcAttachType,
        hook: &str,
    ) -> Result<(PathBuf, bool), BpfError> {
        let path = self.pins.link(ifname, hook);
        if path.exists() {
            // Attached by an earlier `up`, unless the interface was recreated
            // since (then the pinned link is dead and is replaced).
            let live = SchedClassifier::query_tcx(ifname, kind)
                .is_ok_and(|(_, progs)| progs.iter().any(|p| p.name_as_str() == Some(short(name))));
            if live && !self.reload {
                return Ok((path, false));
            }
            if !live {
                let _ = fs::remove_file(&path);
            }
        }
        // Reload: the new program goes first in the TCX chain while the old
        // one is still attached. Ours return TC_ACT_OK (= TCX_PASS, which
        // ends the chain), so from that instant the new program sees every
        // packet and the old one none; then the old link is unpinned (its
        // last reference: detached). No gap, no packet handled twice; the
        // pinned maps (conntrack, FDB, counters) are shared by both.
        let replacing = path.exists();
        let order = if replacing {
            aya::programs::LinkOrder::first()
        } else {
            aya::programs::LinkOrder::default()
        };
        let prog: &mut SchedClassifier = program(&mut self.ebpf, name, ifname)?;
        let id: SchedClassifierLinkId = prog
            .attach_with_options(
                ifname,
                kind,
                aya::programs::tc::TcAttachOptions::TcxOrder(order),
            )
            .map_err(|e| prog_err(name, ifname, e))?;
        let link = prog.take_link(id).map_err(|e| prog_err(name, ifname, e))?;
        pin_link(link, &path, &format!("TC link on {ifname}"), replacing)?;
        Ok((path, true))
    }
}

/// Whether the port program's tail-call slots ([`PORT_PROG_NAT`],
/// [`PORT_PROG_IPV6`]) are empty. An array pinned by an older netbridge,
/// with fewer slots, is refused with what to do.
fn empty_tail_slots(ebpf: &Ebpf, pins: &PinDir) -> Result<[bool; 2], BpfError> {
    let Some(aya::maps::Map::ProgramArray(m)) = ebpf.map(MAP_PORT_PROGS) else {
        return Ok([true; 2]);
    };
    let size = m.info().map_err(map_err(MAP_PORT_PROGS))?.max_entries();
    if size < PORT_PROGS {
        return Err(BpfError::OlderMap {
            name: MAP_PORT_PROGS,
            pin_dir: pins.0.clone(),
            entries: size,
            needed: PORT_PROGS,
        });
    }
    let empty = |i| !matches!(prog_array_id(m, i), Ok(Some(_)));
    Ok([empty(PORT_PROG_NAT), empty(PORT_PROG_IPV6)])
}

/// Loads the programs `wanted` says, each on its own thread: the verifier
/// is most of an `up`'s critical path, and each load is one syscall on one
/// core (a bridged topology's nb_port_ingress and nb_port_nat verify side
/// by side instead of one after the other).
fn load_parallel(ebpf: &mut Ebpf, wanted: &dyn Fn(&str) -> bool) -> Result<(), BpfError> {
    const TC: [&str; 6] = [
        PROG_PORT_INGRESS,
        PROG_PORT_IPV6,
        PROG_PORT_NAT,
        PROG_UPLINK_INGRESS,
        PROG_UPLINK_EGRESS,
        netbridge_common::PROG_CT_CTL,
    ];
    const XDP: [&str; 2] = [PROG_PORT_XDP, PROG_PEER_XDP];
    let mut todo: Vec<(&'static str, &mut aya::programs::Program)> = Vec::new();
    for (name, prog) in ebpf.programs_mut() {
        if let Some(n) = TC.iter().chain(&XDP).find(|n| **n == name && wanted(n)) {
            todo.push((n, prog));
        }
    }
    for n in TC.iter().chain(&XDP).filter(|n| wanted(n)) {
        if !todo.iter().any(|(t, _)| t == n) {
            return Err(BpfError::MissingProgram { name: n });
        }
    }
    std::thread::scope(|s| {
        let threads: Vec<_> = todo
            .into_iter()
            .map(|(name, prog)| s.spawn(move || load_one(name, prog)))
            .collect();
        // Every thread joined before the first error is returned.
        let results: Vec<_> = threads
            .into_iter()
            .map(|t| t.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect();
        results.into_iter().collect()
    })
}

/// Loads one TC or XDP program of the object.
fn load_one(name: &'static str, prog: &mut aya::programs::Program) -> Result<(), BpfError> {
    use aya::programs::Program;
    let r = match prog {
        Program::SchedClassifier(p) => p.load(),
        Program::Xdp(p) => p.load(),
        _ => return Err(BpfError::MissingProgram { name }),
    };
    r.map_err(|e| prog_err(name, "-", e))
}

/// Pins `link` at `path` so it outlives this process. `replacing`: a link
/// is pinned there already; the new one is pinned beside it, then the old
/// pin (its last reference: detached) is replaced by the new one.
fn pin_link<L>(link: L, path: &std::path::Path, what: &str, replacing: bool) -> Result<(), BpfError>
where
    FdLink: TryFrom<L>,
    <FdLink as TryFrom<L>>::Error: std::error::Error + Send + Sync + 'static,
{
    let pin_err = |source: Box<dyn std::error::Error + Send + Sync>| BpfError::Pin {
        what: what.into(),
        path: path.to_path_buf(),
        source,
    };
    let fd_link = FdLink::try_from(link).map_err(|e| pin_err(Box::new(e)))?;
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| pin_err(Box::new(e)))?;
    }
    if !replacing {
        return fd_link
            .pin(path)
            .map(drop)
            .map_err(|e| pin_err(Box::new(e)));
    }
    let mut fresh = path.to_path_buf().into_os_string();
    fresh.push("%new");
    let fresh = PathBuf::from(fresh);
    let _ = fs::remove_file(&fresh);
    fd_link.pin(&fresh).map_err(|e| pin_err(Box::new(e)))?;
    fs::remove_file(path).map_err(|e| pin_err(Box::new(e)))?;
    fs::rename(&fresh, path).map_err(|e| pin_err(Box::new(e)))
}

/// The kernel keeps 15 characters of a program name.
fn short(name: &str) -> &str {
    &name[..name.len().min(15)]
}

impl Datapath {
    /// Attaches an XDP program (`PROG_PORT_XDP` or `PROG_PEER_XDP`, native
    /// mode) to `ifname` in the calling thread's namespace and pins the link
    /// under `pin_key` (unique across namespaces). `attached` is the XDP
    /// program id netlink reports on the interface now: a pin whose link no
    /// longer holds the interface is replaced. Returns (pin, newly attached).
    pub fn attach_xdp(
        &mut self,
        name: &'static str,
        ifname: &str,
        pin_key: &str,
        attached: Option<u32>,
    ) -> Result<(PathBuf, bool), BpfError> {
        let path = self.pins.link(pin_key, HOOK_XDP);
        let pinned = path.exists();
        if pinned && attached.is_some() && !self.reload {
            return Ok((path, false));
        }
        let prog: &mut Xdp = program(&mut self.ebpf, name, ifname)?;
        if pinned && attached.is_some() {
            // Reload: the pinned link switches to the new program in one
            // step (BPF_LINK_UPDATE), no gap; the pin stays.
            let pin_err = |e: aya::programs::links::LinkError| BpfError::Pin {
                what: format!("XDP link on {ifname}"),
                path: path.clone(),
                source: Box::new(e),
            };
            let link = PinnedLink::from_pin(&path).map_err(pin_err)?;
            let link = XdpLink::try_from(FdLink::from(link)).map_err(pin_err)?;
            let id = prog
                .attach_to_link(link)
                .map_err(|e| prog_err(name, ifname, e))?;
            // Our copy of the link fd closes here; the pin holds the link.
            drop(prog.take_link(id).map_err(|e| prog_err(name, ifname, e))?);
            return Ok((path, true));
        }
        if pinned {
            // The interface was recreated since: the pinned link is dead.
            let _ = fs::remove_file(&path);
        }
        let id = prog
            .attach(ifname, XdpMode::Driver)
            .map_err(|e| prog_err(name, ifname, e))?;
        let link = prog.take_link(id).map_err(|e| prog_err(name, ifname, e))?;
        pin_link(link, &path, &format!("XDP link on {ifname}"), false)?;
        Ok((path, true))
    }

    /// Detaches the TC port program from `ifname` (switching a port to XDP)
    /// in the calling thread's namespace, and removes its program pin.
    pub fn detach_port_tc(&self, ifname: &str) -> Result<bool, BpfError> {
        let path = self.pins.filter(ifname, HOOK_TC_INGRESS);
        let tcx = self.pins.link(ifname, HOOK_TC_INGRESS);
        let pinned = fs::remove_file(path).is_ok() | unpin_link(&tcx);
        let Ok(ifindex) = nix::net::if_::if_nametoindex(ifname) else {
            return Ok(pinned);
        };
        let detached =
            crate::tcfilter::detach(ifindex).map_err(|e| tc_err(PROG_PORT_INGRESS, ifname, e))?;
        Ok(pinned || detached)
    }

    /// Detaches an XDP link pinned under `pin_key` (switching back to TC).
    pub fn detach_xdp(&self, pin_key: &str) -> bool {
        unpin_link(&self.pins.link(pin_key, HOOK_XDP))
    }
}

/// Attaches `prog` as netbridge's filter on `ifname`, or with `replace`
/// gives the filter there `prog` instead: same priority and handle, which
/// cls_bpf swaps in one RCU pointer update, so every packet meets the old
/// or the new program, none both or neither (the pinned maps are shared).
fn attach_filter(
    prog: &mut SchedClassifier,
    ifname: &str,
    replace: bool,
) -> Result<(), aya::programs::ProgramError> {
    use aya::programs::tc::{NlOptions, SchedClassifierLink, TcAttachOptions};
    let (priority, handle) = (crate::tcfilter::PRIO, crate::tcfilter::HANDLE.into());
    let id = if replace {
        let link =
            SchedClassifierLink::attached(ifname, TcAttachType::Ingress, priority, handle, None)
                .map_err(aya::programs::tc::TcError::IoError)?;
        prog.attach_to_link(link)?
    } else {
        add_clsact(ifname)?;
        let options = NlOptions {
            priority,
            handle,
            classid: None,
        };
        prog.attach_with_options(
            ifname,
            TcAttachType::Ingress,
            TcAttachOptions::Netlink(options),
        )?
    };
    // The filter outlives this process: dropping aya's handle on it would
    // delete it (and it holds no fd, so forgetting leaks nothing).
    std::mem::forget(prog.take_link(id)?);
    Ok(())
}

/// Adds a clsact qdisc to `ifname` unless it has one.
fn add_clsact(ifname: &str) -> Result<(), aya::programs::ProgramError> {
    match aya::programs::tc::qdisc_add_clsact(ifname) {
        Err(aya::programs::tc::TcError::NetlinkError(e))
            if e.raw_os_error() == Some(libc::EEXIST) =>
        {
            Ok(())
        }
        r => r.map_err(Into::into),
    }
}

/// Pins the program of a filter at `path` (a reload's new program beside
/// the old pin, then renamed over it: the pin is never missing).
fn pin_prog(
    prog: &mut SchedClassifier,
    path: &std::path::Path,
    ifname: &str,
) -> Result<(), BpfError> {
    let pin_err = |source: Box<dyn std::error::Error + Send + Sync>| BpfError::Pin {
        what: format!("TC program on {ifname}"),
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| pin_err(Box::new(e)))?;
    }
    let mut fresh = path.to_path_buf().into_os_string();
    fresh.push("%new");
    let fresh = PathBuf::from(fresh);
    let _ = fs::remove_file(&fresh);
    prog.pin(&fresh).map_err(|e| pin_err(Box::new(e)))?;
    fs::rename(&fresh, path).map_err(|e| pin_err(Box::new(e)))
}

/// Whether the port program is attached to `ifname` (calling thread's
/// namespace): a TCX link (it dies with its pin), or a filter running the
/// program pinned for it in `pins` (see [`port_filter_current`]).
pub fn port_tc_attached(pins: Option<&PinDir>, ifname: &str) -> bool {
    let short = short(PROG_PORT_INGRESS);
    let tcx = SchedClassifier::query_tcx(ifname, TcAttachType::Ingress)
        .is_ok_and(|(_, progs)| progs.iter().any(|p| p.name_as_str() == Some(short)));
    tcx || pins.is_some_and(|pins| port_filter_current(pins, ifname))
}

/// Whether `ifname` (calling thread's namespace) runs, as netbridge's
/// filter, the port program pinned for it in `pins`. A filter whose pin is
/// gone (someone emptied the bpffs) runs maps that are no longer the
/// topology's: not attached as far as `probe` goes, repaired by `up`.
pub fn port_filter_current(pins: &PinDir, ifname: &str) -> bool {
    let Ok(ifindex) = nix::net::if_::if_nametoindex(ifname) else {
        return false;
    };
    let live = crate::tcfilter::ours(ifindex).ok().flatten();
    let pinned = pinned_prog_id(&pins.filter(ifname, HOOK_TC_INGRESS));
    live.is_some_and(|f| f.prog_id.is_some() && f.prog_id == pinned)
}

/// Id of the program pinned at `path` (a filter's, see [`PinDir::filter`]).
pub fn pinned_prog_id(path: &std::path::Path) -> Option<u32> {
    let prog = SchedClassifier::from_pin(path).ok()?;
    Some(prog.info().ok()?.id())
}

fn tc_err(name: &'static str, ifname: &str, e: std::io::Error) -> BpfError {
    prog_err(name, ifname, aya::programs::tc::TcError::IoError(e).into())
}

/// Program `name` of the object as its type (`SchedClassifier`, `Xdp`);
/// errors name it and the interface it is for (`-`: none).
pub(crate) fn program<'a, P>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
    ifname: &str,
) -> Result<&'a mut P, BpfError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(BpfError::MissingProgram { name })?
        .try_into()
        .map_err(|e| prog_err(name, ifname, e))
}

fn prog_err(name: &'static str, ifname: &str, e: aya::programs::ProgramError) -> BpfError {
    BpfError::Program {
        name,
        ifname: ifname.into(),
        source: Box::new(e),
    }
}

/// Names of the programs attached at TC ingress of `ifname` (current
/// thread's namespace), for `netbridge status`.
pub fn attached_ingress(ifname: &str) -> Vec<String> {
    attached_tc(ifname, TcAttachType::Ingress)
}

/// Kernel ids of the TC programs attached to `ifname` (ingress, then
/// egress; on each, TCX programs then cls_bpf filters in the order they
/// run), for `netbridge status --json`.
pub fn attached_tc_ids(ifname: &str) -> Vec<u32> {
    [TcAttachType::Ingress, TcAttachType::Egress]
        .into_iter()
        .flat_map(|kind| attached(ifname, kind).into_iter().map(|(_, id)| id))
        .collect()
}

/// Names of the TC programs attached to `ifname` at `kind`: TCX, then
/// cls_bpf filters (the order they run in).
pub fn attached_tc(ifname: &str, kind: TcAttachType) -> Vec<String> {
    attached(ifname, kind).into_iter().map(|(n, _)| n).collect()
}

/// (name, id) of the TC programs at `kind` of `ifname`.
fn attached(ifname: &str, kind: TcAttachType) -> Vec<(String, u32)> {
    let mut progs: Vec<(String, u32)> = SchedClassifier::query_tcx(ifname, kind)
        .map(|(_, progs)| {
            progs
                .iter()
                .map(|p| (p.name_as_str().unwrap_or("?").to_string(), p.id()))
                .collect()
        })
        .unwrap_or_default();
    let ingress = kind == TcAttachType::Ingress;
    if let Ok(ifindex) = nix::net::if_::if_nametoindex(ifname) {
        let filters = crate::tcfilter::list(ifindex, ingress).unwrap_or_default();
        progs.extend(filters.into_iter().filter_map(|f| {
            // TCA_BPF_NAME is the loader's full name; the kernel keeps 15
            // characters (what TCX reports).
            let name = f.name.unwrap_or_else(|| "?".into());
            let short: String = name.chars().take(15).collect();
            Some((short, f.prog_id?))
        }));
    }
    progs
}

// `up` moves the loaded object from namespace thread to namespace thread to
// attach programs inside each one.
const _: () = {
    fn assert_send<T: Send>() {}
    #[allow(dead_code)]
    fn datapath_is_send() {
        assert_send::<Datapath>();
    }
};

/// The id of the program at `index` of program array `map`: None for an
/// empty slot (ENOENT). The kernel answers a lookup from userspace with the
/// program's id; aya's `ProgramArray` has no lookup (and its `indices()`
/// lists every index, filled or not).
pub fn prog_array_id(map: &MapData, index: u32) -> std::io::Result<Option<u32>> {
    use std::os::fd::{AsFd, AsRawFd};
    /// The BPF_MAP_*_ELEM part of `union bpf_attr`.
    #[repr(C)]
    struct ElemAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
    let mut id = 0u32;
    let attr = ElemAttr {
        map_fd: map.fd().as_fd().as_raw_fd() as u32,
        _pad: 0,
        key: &index as *const u32 as u64,
        value: &mut id as *mut u32 as u64,
        flags: 0,
    };
    // SAFETY: `attr` points at `index` and `id`, both alive and 4 bytes (a
    // program array's key and its id value) for the duration of the call;
    // the kernel reads `attr` and writes at most 4 bytes to `id`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_ELEM,
            &attr as *const ElemAttr,
            std::mem::size_of::<ElemAttr>(),
        )
    };
    match rc {
        0 => Ok(Some(id)),
        _ => {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::NotFound {
                Ok(None)
            } else {
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Hosts6;

    /// An address that moved to another port is no longer the old port's:
    /// updating the old port must not take it out of the map.
    #[test]
    fn hosts6_follows_an_address_to_its_new_port() {
        let (a, b, c) = ([1u8; 16], [2u8; 16], [3u8; 16]);
        let mut h = Hosts6::default();
        assert!(h.replace(1, &[a, b]).is_empty());
        assert!(h.replace(2, &[b]).is_empty());
        // Port 1 had a and b; b went to port 2.
        assert_eq!(h.replace(1, &[a, c]), vec![a]);
        assert_eq!(h.replace(2, &[]), vec![b]);
        assert_eq!(h.owner.get(&c), Some(&1));
        assert_eq!(h.owner.get(&b), None);
    }
}
