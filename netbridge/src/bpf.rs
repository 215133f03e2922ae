//! Loading the embedded eBPF object, attaching its programs, reading its maps.
use std::{
    collections::BTreeMap,
    fs, io,
    path::{Path, PathBuf},
};

use crate::nat::NatMaps;
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap, ProgramArray},
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode, links::FdLink, tc::SchedClassifierLinkId,
    },
};
use netbridge_common::{
    BRIDGE_ISOLATION, BridgeConfig, FdbEntry, FdbKey, MAP_CONFIG, MAP_DROP_STATS, MAP_FDB,
    MAP_POLICY, MAP_PORT_INDEX, MAP_PORT_PROGS, MAP_PORT_SLOTS, MAP_PORT_STATS, MAP_PORTS,
    MAX_PORTS, PORT_INDEX_SIZE, PORT_ISOLATED, PORT_PROG_NAT, PROG_PEER_XDP, PROG_PORT_INGRESS,
    PROG_PORT_NAT, PROG_PORT_XDP, PROG_UPLINK_EGRESS, PROG_UPLINK_INGRESS, PolicyKey, PortConfig,
    PortSlot, PortStats, drop_reason,
};

/// The eBPF object built by build.rs (see xtask/src/ebpf_build.rs).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("NETBRIDGE_EBPF_OBJ"));

/// Where netbridge mounts its own bpffs: outside /sys, because `ip netns exec`
/// remounts /sys and would hide a bpffs there.
pub const BPFFS_ROOT: &str = "/run/netbridge/bpf";

#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error("loading the eBPF object (pins in {pin_dir}): {source}")]
    Load {
        pin_dir: PathBuf,
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("eBPF program {name} is missing from the object")]
    MissingProgram { name: &'static str },
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("eBPF program {name} on {ifname}: {source}")]
    Program {
        name: &'static str,
        ifname: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("pinning {what} at {path}: {source}")]
    Pin {
        what: String,
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("counting CPUs for per-CPU map {name}: {source}")]
    Cpus {
        name: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("bpffs at {path}: {source}")]
    Bpffs {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Mounts a bpffs at [`BPFFS_ROOT`] unless one is already there, and creates
/// `sub` below it (root-only).
pub fn ensure_bpffs(sub: &str) -> Result<PathBuf, BpfError> {
    let root = Path::new(BPFFS_ROOT);
    let err = |source| BpfError::Bpffs {
        path: root.to_path_buf(),
        source,
    };
    fs::create_dir_all(root).map_err(err)?;
    if !is_bpffs(root) {
        nix::mount::mount(
            Some("bpffs"),
            root,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            Some("mode=0700"),
        )
        .map_err(|e| err(io::Error::from(e)))?;
    }
    let dir = root.join(sub);
    fs::create_dir_all(&dir).map_err(err)?;
    Ok(dir)
}

pub fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
        .unwrap_or(false)
}

/// Hook name used in link pins.
pub const HOOK_TC_INGRESS: &str = "tc_ingress";
pub const HOOK_XDP: &str = "xdp";
pub const HOOK_UPLINK_IN: &str = "uplink_in";
pub const HOOK_UPLINK_OUT: &str = "uplink_out";

/// Pin layout of one topology: maps by name in `dir`, links in `dir/links`.
#[derive(Debug, Clone)]
pub struct PinDir(pub PathBuf);

impl PinDir {
    pub fn map(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    /// bpffs rejects '.' in names; ifnames may contain it, so encode it ('%'
    /// never occurs in a valid ifname, keeping the mapping one-to-one).
    pub fn link(&self, ifname: &str, hook: &str) -> PathBuf {
        self.0
            .join("links")
            .join(format!("{hook}@{}", ifname.replace('.', "%2e")))
    }
    /// Removes every pin (maps and links) and the directory itself.
    pub fn remove(&self) -> io::Result<()> {
        match fs::remove_dir_all(&self.0) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }
}

/// Maps shared with the programs, each taken once from the object.
pub struct Maps {
    /// Counters of interfaces without a port slot.
    pub port_stats: PerCpuHashMap<MapData, u32, PortStats>,
    /// Counters (and learn cache) of configured ports, by slot.
    pub port_slots: PerCpuArray<MapData, PortSlot>,
    pub drop_stats: PerCpuArray<MapData, u64>,
    pub ports: HashMap<MapData, u32, PortConfig>,
    /// Direct-mapped copy of `ports` (see [`MAP_PORT_INDEX`]).
    pub port_index: Array<MapData, PortConfig>,
    /// An LRU hash in the kernel; aya reads it through `HashMap`.
    pub fdb: HashMap<MapData, FdbKey, FdbEntry>,
    pub config: Array<MapData, BridgeConfig>,
    pub policy: HashMap<MapData, PolicyKey, u32>,
    pub nat: NatMaps,
}

/// A port's datapath entry: fast path on, anti-spoofing if `identity` (the
/// namespace's MAC and IPv4 addresses, at most MAX_PORT_IPV4) is given.
pub fn port_config(ifindex: u32, identity: Option<([u8; 6], &[std::net::Ipv4Addr])>) -> PortConfig {
    let mut p = PortConfig {
        ifindex,
        flags: netbridge_common::PORT_FAST_PATH,
        ..PortConfig::default()
    };
    if let Some((mac, ips)) = identity {
        p.flags |= netbridge_common::PORT_ANTI_SPOOF;
        p.mac = mac;
        for (slot, ip) in p.ipv4.iter_mut().zip(ips) {
            *slot = ip.octets();
        }
    }
    p
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

/// CLOCK_MONOTONIC in ns: the clock bpf_ktime_get_ns() reads.
pub fn monotonic_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .unwrap_or(nix::sys::time::TimeSpec::new(0, 0));
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

/// Wraps an error of map `name`.
pub(crate) fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> BpfError {
    move |e| BpfError::Map {
        name,
        source: Box::new(e),
    }
}

/// Takes map `name` out of a loaded object, typed.
pub(crate) fn take_map<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<T, BpfError> {
    let map = ebpf.take_map(name).ok_or(BpfError::Map {
        name,
        source: Box::new(aya::maps::MapError::InvalidName { name: name.into() }),
    })?;
    T::try_from(map).map_err(map_err(name))
}

/// Opens pinned map `name` of a running topology, typed.
pub(crate) fn open_map<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
    pins: &PinDir,
    name: &'static str,
    wrap: fn(MapData) -> aya::maps::Map,
) -> Result<T, BpfError> {
    let data = MapData::from_pin(pins.map(name)).map_err(map_err(name))?;
    T::try_from(wrap(data)).map_err(map_err(name))
}

impl Maps {
    fn take(ebpf: &mut Ebpf) -> Result<Self, BpfError> {
        Ok(Maps {
            port_stats: take_map(ebpf, MAP_PORT_STATS)?,
            port_slots: take_map(ebpf, MAP_PORT_SLOTS)?,
            drop_stats: take_map(ebpf, MAP_DROP_STATS)?,
            ports: take_map(ebpf, MAP_PORTS)?,
            port_index: take_map(ebpf, MAP_PORT_INDEX)?,
            fdb: take_map(ebpf, MAP_FDB)?,
            config: take_map(ebpf, MAP_CONFIG)?,
            policy: take_map(ebpf, MAP_POLICY)?,
            nat: NatMaps::take(ebpf)?,
        })
    }

    /// Opens the pinned maps of a running topology (no program is loaded).
    pub fn open_pinned(pins: &PinDir) -> Result<Self, BpfError> {
        use aya::maps::Map;
        Ok(Maps {
            port_stats: open_map(pins, MAP_PORT_STATS, Map::PerCpuHashMap)?,
            port_slots: open_map(pins, MAP_PORT_SLOTS, Map::PerCpuArray)?,
            drop_stats: open_map(pins, MAP_DROP_STATS, Map::PerCpuArray)?,
            ports: open_map(pins, MAP_PORTS, Map::HashMap)?,
            port_index: open_map(pins, MAP_PORT_INDEX, Map::Array)?,
            fdb: open_map(pins, MAP_FDB, Map::LruHashMap)?,
            config: open_map(pins, MAP_CONFIG, Map::Array)?,
            policy: open_map(pins, MAP_POLICY, Map::HashMap)?,
            nat: NatMaps::open_pinned(pins)?,
        })
    }

    /// Makes exactly `ports` the datapath's ports (replacing any others)
    /// and sets the aging and the gateway (the bridge): ifindex, MAC, first
    /// IPv4 address. A port keeps its counter slot while it stays a port;
    /// a new one gets a free slot, zeroed.
    pub fn configure(
        &mut self,
        ports: &[PortConfig],
        aging_secs: u32,
        gateway: Option<Gateway>,
    ) -> Result<(), BpfError> {
        let have: BTreeMap<u32, PortConfig> = self.ports.iter().filter_map(|r| r.ok()).collect();
        let live = |i: u32| ports.iter().any(|p| p.ifindex == i);
        for old in have.values().filter(|o| !live(o.ifindex)) {
            // Out of the index first: from then on the datapath looks in
            // the hash, where the port goes next.
            self.unindex(old.ifindex)?;
            self.ports
                .remove(&old.ifindex)
                .map_err(map_err(MAP_PORTS))?;
        }
        let isolated = self.isolated_ports();
        let mut used: Vec<u16> = have
            .values()
            .filter(|o| live(o.ifindex) && o.slot != 0)
            .map(|o| o.slot)
            .collect();
        for p in ports {
            let mut p = with_isolation(*p, &isolated);
            p.slot = match have.get(&p.ifindex) {
                Some(old) if old.slot != 0 => old.slot,
                // None free (more ports than MAX_PORTS): counted by ifindex.
                _ => match (1..=MAX_PORTS as u16).find(|s| !used.contains(s)) {
                    Some(s) => {
                        self.reset_slot(s)?;
                        used.push(s);
                        s
                    }
                    None => 0,
                },
            };
            self.ports
                .insert(p.ifindex, p, 0)
                .map_err(map_err(MAP_PORTS))?;
            self.index(&p, &live)?;
        }
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
        let cpus = aya::util::nr_cpus().map_err(|(_, source)| BpfError::Cpus {
            name: MAP_PORT_SLOTS,
            source,
        })?;
        let zero = aya::maps::PerCpuValues::try_from(vec![PortSlot::default(); cpus]).map_err(
            |source| BpfError::Cpus {
                name: MAP_PORT_SLOTS,
                source,
            },
        )?;
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
        for code in 0..drop_reason::COUNT {
            let per_cpu = self
                .drop_stats
                .get(&code, 0)
                .map_err(map_err(MAP_DROP_STATS))?;
            out.insert(drop_reason::NAMES[code as usize], per_cpu.iter().sum());
        }
        Ok(out)
    }
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
        let load_err = |source| BpfError::Load {
            pin_dir: pins.0.clone(),
            source: Box::new(source),
        };
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&pins.0)
            .load(EBPF_OBJECT)
            .map_err(load_err)?;
        for name in [
            PROG_PORT_INGRESS,
            PROG_PORT_NAT,
            PROG_UPLINK_INGRESS,
            PROG_UPLINK_EGRESS,
        ] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or(BpfError::MissingProgram { name })?
                .try_into()
                .map_err(|e| prog_err(name, "-", e))?;
            prog.load().map_err(|e| prog_err(name, "-", e))?;
        }
        for name in [PROG_PORT_XDP, PROG_PEER_XDP] {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or(BpfError::MissingProgram { name })?
                .try_into()
                .map_err(|e| prog_err(name, "-", e))?;
            prog.load().map_err(|e| prog_err(name, "-", e))?;
        }
        // The port program's tail call. The array is pinned: its entries
        // live as long as the pin, not as this process.
        let mut tail: ProgramArray<MapData> = take_map(&mut ebpf, MAP_PORT_PROGS)?;
        let nat: &SchedClassifier = ebpf
            .program(PROG_PORT_NAT)
            .ok_or(BpfError::MissingProgram {
                name: PROG_PORT_NAT,
            })?
            .try_into()
            .map_err(|e| prog_err(PROG_PORT_NAT, "-", e))?;
        let fd = nat.fd().map_err(|e| prog_err(PROG_PORT_NAT, "-", e))?;
        tail.set(PORT_PROG_NAT, fd, 0)
            .map_err(map_err(MAP_PORT_PROGS))?;
        let maps = Maps::take(&mut ebpf)?;
        Ok(Datapath {
            ebpf,
            maps,
            pins,
            reload: false,
        })
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

    /// Attaches the port program at TC ingress (TCX) of `ifname` and pins the
    /// link so it outlives this process. Must run on a thread inside the
    /// interface's namespace (see [`crate::netns::run_blocking_in`]).
    /// Returns the pin and whether it was newly attached.
    pub fn attach_port(&mut self, ifname: &str) -> Result<(PathBuf, bool), BpfError> {
        self.attach_tc(
            PROG_PORT_INGRESS,
            ifname,
            TcAttachType::Ingress,
            HOOK_TC_INGRESS,
        )
    }

    /// Attaches the NAT programs to the uplink (TC ingress and egress).
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
        let Ok(dir) = fs::read_dir(self.pins.0.join("links")) else {
            return gone;
        };
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let Some((hook, ifname)) = name.split_once('@') else {
                continue;
            };
            let ifname = ifname.replace("%2e", ".");
            if (hook == HOOK_UPLINK_IN || hook == HOOK_UPLINK_OUT)
                && Some(ifname.as_str()) != keep
                && fs::remove_file(e.path()).is_ok()
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
            let live = attached_tc(ifname, kind).iter().any(|p| same_prog(p, name));
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
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(name)
            .ok_or(BpfError::MissingProgram { name })?
            .try_into()
            .map_err(|e| prog_err(name, ifname, e))?;
        let id: SchedClassifierLinkId = prog
            .attach_with_options(
                ifname,
                kind,
                aya::programs::tc::TcAttachOptions::TcxOrder(order),
            )
            .map_err(|e| prog_err(name, ifname, e))?;
        let link = prog.take_link(id).map_err(|e| prog_err(name, ifname, e))?;
        let pin_err = |source: Box<dyn std::error::Error + Send + Sync>| BpfError::Pin {
            what: format!("TC link on {ifname}"),
            path: path.clone(),
            source,
        };
        let fd_link = FdLink::try_from(link).map_err(|e| pin_err(Box::new(e)))?;
        fs::create_dir_all(path.parent().unwrap()).map_err(|e| pin_err(Box::new(e)))?;
        if replacing {
            let mut fresh = path.clone().into_os_string();
            fresh.push("%new");
            let fresh = PathBuf::from(fresh);
            let _ = fs::remove_file(&fresh);
            fd_link.pin(&fresh).map_err(|e| pin_err(Box::new(e)))?;
            fs::remove_file(&path).map_err(|e| pin_err(Box::new(e)))?;
            fs::rename(&fresh, &path).map_err(|e| pin_err(Box::new(e)))?;
        } else {
            fd_link.pin(&path).map_err(|e| pin_err(Box::new(e)))?;
        }
        Ok((path, true))
    }
}

/// The kernel keeps 15 characters of a program name.
fn same_prog(kernel_name: &str, name: &str) -> bool {
    kernel_name == &name[..name.len().min(15)]
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
        if path.exists() {
            if attached.is_some() {
                return Ok((path, false));
            }
            let _ = fs::remove_file(&path);
        }
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .ok_or(BpfError::MissingProgram { name })?
            .try_into()
            .map_err(|e| prog_err(name, ifname, e))?;
        let id = prog
            .attach(ifname, XdpMode::Driver)
            .map_err(|e| prog_err(name, ifname, e))?;
        let link = prog.take_link(id).map_err(|e| prog_err(name, ifname, e))?;
        let pin_err = |source: Box<dyn std::error::Error + Send + Sync>| BpfError::Pin {
            what: format!("XDP link on {ifname}"),
            path: path.clone(),
            source,
        };
        let fd_link = FdLink::try_from(link).map_err(|e| pin_err(Box::new(e)))?;
        fs::create_dir_all(path.parent().unwrap()).map_err(|e| pin_err(Box::new(e)))?;
        fd_link.pin(&path).map_err(|e| pin_err(Box::new(e)))?;
        Ok((path, true))
    }

    /// Detaches the TC port program from `ifname` (switching a port to XDP).
    pub fn detach_port_tc(&self, ifname: &str) -> bool {
        let path = self.pins.link(ifname, HOOK_TC_INGRESS);
        fs::remove_file(path).is_ok()
    }

    /// Detaches an XDP link pinned under `pin_key` (switching back to TC).
    pub fn detach_xdp(&self, pin_key: &str) -> bool {
        fs::remove_file(self.pins.link(pin_key, HOOK_XDP)).is_ok()
    }
}

fn prog_err(name: &'static str, ifname: &str, e: aya::programs::ProgramError) -> BpfError {
    BpfError::Program {
        name,
        ifname: ifname.into(),
        source: Box::new(e),
    }
}

/// Names of the TCX ingress programs attached to `ifname` (current thread's
/// namespace), for `netbridge status`.
pub fn attached_ingress(ifname: &str) -> Vec<String> {
    attached_tc(ifname, TcAttachType::Ingress)
}

/// Kernel ids of the TCX programs attached to `ifname` (ingress, then
/// egress), for `netbridge status --json`.
pub fn attached_tc_ids(ifname: &str) -> Vec<u32> {
    [TcAttachType::Ingress, TcAttachType::Egress]
        .into_iter()
        .flat_map(|kind| {
            SchedClassifier::query_tcx(ifname, kind)
                .map(|(_, progs)| progs.iter().map(|p| p.id()).collect::<Vec<_>>())
                .unwrap_or_default()
        })
        .collect()
}

/// Names of the TCX programs attached to `ifname` at `kind`.
pub fn attached_tc(ifname: &str, kind: TcAttachType) -> Vec<String> {
    SchedClassifier::query_tcx(ifname, kind)
        .map(|(_, progs)| {
            progs
                .iter()
                .map(|p| p.name_as_str().unwrap_or("?").to_string())
                .collect()
        })
        .unwrap_or_default()
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
