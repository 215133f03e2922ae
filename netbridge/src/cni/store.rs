//! Per-network CNI state: one exclusive lock per network (held for a whole
//! verb, so parallel ADD/DEL/GC serialize) and the built-in IPAM's leases,
//! keyed by attachment so GC can drop what `cni.dev/valid-attachments` no
//! longer lists (host-local never does). Lives under /run, like netbridge's
//! journal: a reboot, which also ends every container, starts it empty.
use std::{
    fs::{self, File},
    io,
    net::IpAddr,
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::{
    conf::Attachment,
    error::{CniError, code},
    ipam::{BuiltinIpam, IpRange, from_u128, to_u128},
    result::{CniResult, IpConfig},
};

/// Root of the per-network directories.
pub const CNI_STATE_DIR: &str = "/run/netbridge/cni";

/// One network's state directory (`<root>/<network>/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkStore {
    pub dir: PathBuf,
}

fn state_err(path: &Path, e: impl std::fmt::Display) -> CniError {
    CniError::new(code::STATE_FAILURE, format!("{}: {e}", path.display()))
}

impl NetworkStore {
    /// `network` is a validated CNI network name (no '/').
    pub fn new(root: &Path, network: &str) -> Self {
        NetworkStore {
            dir: root.join(network),
        }
    }

    /// The built-in IPAM's leases as last saved, without the lock (they
    /// are replaced atomically): for STATUS, which must not wait for an ADD.
    pub fn read_leases(&self) -> Result<Leases, CniError> {
        load_json(&self.dir.join("leases.json"))
    }

    /// Blocks until this process holds the network's exclusive lock. The
    /// kernel drops it when the process exits, even on a crash.
    pub fn lock(&self) -> Result<NetworkLock, CniError> {
        crate::lock::private_dir(&self.dir).map_err(|e| state_err(&self.dir, e))?;
        let path = self.dir.join("lock");
        let file = crate::lock::private_file(&path, false).map_err(|e| state_err(&path, e))?;
        let lock =
            Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| state_err(&path, e))?;
        Ok(NetworkLock {
            _lock: lock,
            dir: self.dir.clone(),
        })
    }
}

/// Proof of holding a network's lock; state is read and written through it.
#[derive(Debug)]
pub struct NetworkLock {
    _lock: Flock<File>,
    dir: PathBuf,
}

impl NetworkLock {
    fn leases_path(&self) -> PathBuf {
        self.dir.join("leases.json")
    }

    fn records_path(&self) -> PathBuf {
        self.dir.join("attachments.json")
    }

    pub fn load_leases(&self) -> Result<Leases, CniError> {
        load_json(&self.leases_path())
    }

    /// Atomic (tmp + rename), root-only.
    pub fn save_leases(&self, leases: &Leases) -> Result<(), CniError> {
        save_json(&self.leases_path(), leases)
    }

    /// The attachments of network `network`. A directory that holds
    /// another network's records (two names mapped to one directory) is
    /// refused: nothing is shared by mistake.
    pub fn load_records(&self, network: &str) -> Result<Records, CniError> {
        let path = self.records_path();
        let mut r: Records = load_json(&path)?;
        if r.network.is_empty() {
            r.network = network.into();
        }
        if r.network != network {
            return Err(state_err(
                &path,
                format!(
                    "belongs to CNI network {:?}, not {network:?} (their names map to one \
                     netbridge topology: rename one of them)",
                    r.network
                ),
            ));
        }
        Ok(r)
    }

    /// Atomic (tmp + rename), root-only.
    pub fn save_records(&self, records: &Records) -> Result<(), CniError> {
        save_json(&self.records_path(), records)
    }
}

/// A JSON state file; a missing one is the default (empty) value.
fn load_json<T: Default + for<'de> Deserialize<'de>>(path: &Path) -> Result<T, CniError> {
    match fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| state_err(path, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(state_err(path, e)),
    }
}

/// Writes a JSON state file atomically (tmp + rename), root-only.
fn save_json(path: &Path, v: &impl Serialize) -> Result<(), CniError> {
    let json = serde_json::to_vec_pretty(v).map_err(|e| state_err(path, e))?;
    crate::lock::write_private(path, &json).map_err(|e| state_err(path, e))
}

/// What netbridge-cni knows of one attachment. Written before anything is
/// made for it, so DEL and GC find one an ADD left half made (a crash),
/// and completed when ADD succeeds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub attachment: Attachment,
    /// The engine's port for it (`netbridge stats` shows this name).
    pub port: String,
    /// CNI_NETNS at ADD.
    pub netns: Option<PathBuf>,
    /// Addresses it was given (empty until IPAM answered).
    #[serde(default)]
    pub ips: Vec<IpNet>,
    /// ADD finished.
    #[serde(default)]
    pub complete: bool,
}

/// The attachments of one network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Records {
    /// The CNI network name (the directory is named for its topology).
    #[serde(default)]
    pub network: String,
    #[serde(default)]
    pub attachments: Vec<Record>,
}

impl Records {
    pub fn get(&self, att: &Attachment) -> Option<&Record> {
        self.attachments.iter().find(|r| &r.attachment == att)
    }

    /// Adds or replaces the record of `r.attachment`.
    pub fn put(&mut self, r: Record) {
        self.remove(&r.attachment);
        self.attachments.push(r);
    }

    pub fn remove(&mut self, att: &Attachment) -> Option<Record> {
        let i = self.attachments.iter().position(|r| &r.attachment == att)?;
        Some(self.attachments.remove(i))
    }
}

/// One address held by one attachment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub attachment: Attachment,
    /// The address with its subnet's prefix.
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
    /// Index of the range set it came from.
    pub range_set: usize,
}

/// The built-in IPAM's leases of one network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leases {
    pub leases: Vec<Lease>,
    /// Per range set, the address handed out last (allocation resumes after
    /// it, so a released address is not reused at once, like host-local).
    pub last_reserved: Vec<Option<IpAddr>>,
}

impl Leases {
    pub fn of<'a>(&'a self, att: &'a Attachment) -> impl Iterator<Item = &'a Lease> + 'a {
        self.leases.iter().filter(move |l| &l.attachment == att)
    }

    fn taken(&self, a: IpAddr) -> bool {
        self.leases.iter().any(|l| l.address.addr() == a)
    }

    /// One address from each range set (a requested address when it falls
    /// in the set), as an IPAM result. A second ADD of the same attachment
    /// is an error: it must be DEL'd first.
    pub fn allocate(
        &mut self,
        ipam: &BuiltinIpam,
        att: &Attachment,
        requested: &[IpAddr],
    ) -> Result<CniResult, CniError> {
        if self.of(att).next().is_some() {
            return Err(CniError::new(
                code::ALREADY_ATTACHED,
                format!(
                    "container {} interface {} already holds addresses; DEL it first",
                    att.container_id, att.ifname
                ),
            ));
        }
        if let Some(ip) = requested
            .iter()
            .find(|ip| !ipam.range_sets.iter().flatten().any(|r| r.contains(**ip)))
        {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!("requested IP {ip} is outside every ipam range"),
            ));
        }
        self.last_reserved.resize(ipam.range_sets.len(), None);
        let mut new = Vec::new();
        for (i, set) in ipam.range_sets.iter().enumerate() {
            let lease = self.pick(i, set, requested, att)?;
            self.leases.push(lease.clone());
            new.push(lease);
        }
        Ok(CniResult {
            ips: new
                .iter()
                .map(|l| IpConfig {
                    interface: None,
                    address: l.address,
                    gateway: l.gateway,
                })
                .collect(),
            routes: ipam.routes.clone(),
            ..CniResult::default()
        })
    }

    fn pick(
        &mut self,
        i: usize,
        set: &[IpRange],
        requested: &[IpAddr],
        att: &Attachment,
    ) -> Result<Lease, CniError> {
        let lease = |r: &IpRange, a: IpAddr| Lease {
            attachment: att.clone(),
            address: IpNet::new(a, r.subnet.prefix_len()).expect("prefix of a valid subnet"),
            gateway: r.gateway,
            range_set: i,
        };
        if let Some((r, a)) = requested
            .iter()
            .find_map(|a| set.iter().find(|r| r.contains(*a)).map(|r| (r, *a)))
        {
            if self.taken(a) || Some(a) == r.gateway {
                return Err(CniError::new(
                    code::INVALID_CONFIG,
                    format!("requested IP {a} is already in use"),
                ));
            }
            return Ok(lease(r, a));
        }
        let found = candidates(set, self.last_reserved[i]).find(|(_, a)| !self.taken(*a));
        let (r, a) = found.ok_or_else(|| {
            let ranges: Vec<String> = set
                .iter()
                .map(|r| format!("{}-{}", r.start, r.end))
                .collect();
            CniError::new(
                code::IPAM_EXHAUSTED,
                format!(
                    "no IP addresses available in range set {}",
                    ranges.join(",")
                ),
            )
        })?;
        self.last_reserved[i] = Some(a);
        Ok(lease(&set[r], a))
    }

    /// DEL: drops the attachment's leases (none is fine), returns them.
    pub fn release(&mut self, att: &Attachment) -> Vec<Lease> {
        let (gone, kept) = self.leases.drain(..).partition(|l| &l.attachment == att);
        self.leases = kept;
        gone
    }

    /// GC: drops every lease of an attachment not in `valid`, returns them.
    pub fn gc(&mut self, valid: &[Attachment]) -> Vec<Lease> {
        let (kept, gone) = self
            .leases
            .drain(..)
            .partition(|l| valid.contains(&l.attachment));
        self.leases = kept;
        gone
    }

    /// Free addresses per range set (STATUS reports exhaustion), counted up
    /// to `cap` so a /64 does not take forever.
    pub fn free(&self, ipam: &BuiltinIpam, cap: usize) -> Vec<usize> {
        ipam.range_sets
            .iter()
            .map(|set| {
                candidates(set, None)
                    .filter(|(_, a)| !self.taken(*a))
                    .take(cap)
                    .count()
            })
            .collect()
    }
}

/// The addresses of a range set in allocation order: after `last` to the
/// end of its range, the following ranges, wrapping around to `last`.
/// Yields (range index, address); the gateway is never yielded.
fn candidates(set: &[IpRange], last: Option<IpAddr>) -> impl Iterator<Item = (usize, IpAddr)> + '_ {
    let resume = last.and_then(|a| {
        set.iter()
            .position(|r| r.contains(a))
            .map(|k| (k, to_u128(a)))
    });
    let k = resume.map_or(0, |(k, _)| k);
    let after = resume.map(|(_, a)| a);
    let r = &set[k];
    let (start, end, like) = (to_u128(r.start), to_u128(r.end), r.start);
    let addr = move |n| (k, from_u128(like, n));
    let head = (after.map_or(start, |a| a + 1)..=end).map(addr);
    let others = (1..set.len()).flat_map(move |d| {
        let j = (k + d) % set.len();
        set[j].addresses().map(move |a| (j, a))
    });
    let tail = after.into_iter().flat_map(move |a| (start..=a).map(addr));
    head.chain(others)
        .chain(tail)
        .filter(move |(j, a)| Some(*a) != set[*j].gateway)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::cni::ipam::IpamConf;

    fn ipam(v: serde_json::Value) -> BuiltinIpam {
        let mut v = v;
        v["type"] = "netbridge-cni".into();
        match IpamConf::parse(v, "netbridge-cni").unwrap() {
            IpamConf::Builtin(b) => b,
            _ => unreachable!(),
        }
    }

    fn att(id: &str) -> Attachment {
        Attachment {
            container_id: id.into(),
            ifname: "eth0".into(),
        }
    }

    fn addr(r: &CniResult) -> Vec<String> {
        r.ips.iter().map(|i| i.address.to_string()).collect()
    }

    #[test]
    fn allocates_round_robin_and_skips_the_gateway() {
        let conf = ipam(json!({"subnet": "192.168.5.0/29", "routes": [{"dst": "0.0.0.0/0"}]}));
        let mut l = Leases::default();
        let a = l.allocate(&conf, &att("a"), &[]).unwrap();
        assert_eq!(addr(&a), ["192.168.5.2/29"]);
        assert_eq!(a.ips[0].gateway.unwrap().to_string(), "192.168.5.1");
        assert_eq!(a.routes.len(), 1);
        assert_eq!(
            addr(&l.allocate(&conf, &att("b"), &[]).unwrap()),
            ["192.168.5.3/29"]
        );
        // Released addresses are not reused at once.
        l.release(&att("a"));
        assert_eq!(
            addr(&l.allocate(&conf, &att("c"), &[]).unwrap()),
            ["192.168.5.4/29"]
        );
        for id in ["d", "e", "f"] {
            l.allocate(&conf, &att(id), &[]).unwrap();
        }
        // .2 (freed) was the only one left after .6, wrapping around.
        assert_eq!(
            l.of(&att("f")).next().unwrap().address.to_string(),
            "192.168.5.2/29"
        );
        let e = l.allocate(&conf, &att("g"), &[]).unwrap_err();
        assert_eq!(e.code, code::IPAM_EXHAUSTED);
        assert!(e.msg.contains("192.168.5.1-192.168.5.6"), "{}", e.msg);
        assert_eq!(l.free(&conf, 10), [0]);
    }

    #[test]
    fn duplicate_add_and_requested_ips() {
        let conf =
            ipam(json!({"ranges": [[{"subnet": "192.168.6.0/24"}], [{"subnet": "fd00:6::/120"}]]}));
        let mut l = Leases::default();
        let req = ["192.168.6.77".parse().unwrap()];
        let r = l.allocate(&conf, &att("a"), &req).unwrap();
        assert_eq!(addr(&r), ["192.168.6.77/24", "fd00:6::2/120"]);
        let e = l.allocate(&conf, &att("a"), &[]).unwrap_err();
        assert_eq!(e.code, code::ALREADY_ATTACHED);
        let e = l.allocate(&conf, &att("b"), &req).unwrap_err();
        assert!(e.msg.contains("already in use"), "{}", e.msg);
        let e = l
            .allocate(&conf, &att("b"), &["192.168.6.1".parse().unwrap()])
            .unwrap_err();
        assert!(e.msg.contains("already in use"), "gateway: {}", e.msg);
        let e = l
            .allocate(&conf, &att("b"), &["10.0.0.1".parse().unwrap()])
            .unwrap_err();
        assert!(e.msg.contains("outside every ipam range"), "{}", e.msg);
        // Nothing was leased by the failed calls.
        assert_eq!(l.leases.len(), 2);
    }

    #[test]
    fn release_is_idempotent_and_gc_keeps_only_valid() {
        let conf = ipam(json!({"subnet": "192.168.7.0/24"}));
        let mut l = Leases::default();
        for id in ["a", "b", "c"] {
            l.allocate(&conf, &att(id), &[]).unwrap();
        }
        assert_eq!(l.release(&att("a")).len(), 1);
        assert_eq!(l.release(&att("a")).len(), 0);
        let gone = l.gc(&[att("c"), att("zzz")]);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].attachment, att("b"));
        assert_eq!(l.leases.len(), 1);
        assert_eq!(l.leases[0].attachment, att("c"));
        assert_eq!(l.gc(&[]).len(), 1);
        assert!(l.leases.is_empty());
    }

    #[test]
    fn candidates_wrap_across_ranges() {
        let conf = ipam(json!({"ranges": [[
            {"subnet": "192.168.8.0/29", "rangeStart": "192.168.8.4", "rangeEnd": "192.168.8.5"},
            {"subnet": "192.168.9.0/29", "rangeStart": "192.168.9.2", "rangeEnd": "192.168.9.3"}]]}));
        let set = &conf.range_sets[0];
        let all = |last: Option<&str>| -> Vec<String> {
            candidates(set, last.map(|s| s.parse().unwrap()))
                .map(|(_, a)| a.to_string())
                .collect()
        };
        assert_eq!(
            all(None),
            ["192.168.8.4", "192.168.8.5", "192.168.9.2", "192.168.9.3"]
        );
        assert_eq!(
            all(Some("192.168.8.5")),
            ["192.168.9.2", "192.168.9.3", "192.168.8.4", "192.168.8.5"]
        );
        assert_eq!(
            all(Some("192.168.9.3")),
            ["192.168.8.4", "192.168.8.5", "192.168.9.2", "192.168.9.3"]
        );
    }

    #[test]
    fn lock_serializes_and_leases_persist() {
        let root = std::env::temp_dir().join(format!("nb-cni-store-{}", std::process::id()));
        let store = NetworkStore::new(&root, "net1");
        let conf = ipam(json!({"subnet": "192.168.10.0/24"}));
        {
            let lock = store.lock().unwrap();
            let mut l = lock.load_leases().unwrap();
            assert_eq!(l, Leases::default());
            l.allocate(&conf, &att("a"), &[]).unwrap();
            lock.save_leases(&l).unwrap();
            // A second lock on the same file blocks: try it non-blocking.
            let f = File::options()
                .write(true)
                .open(store.dir.join("lock"))
                .unwrap();
            assert!(Flock::lock(f, FlockArg::LockExclusiveNonblock).is_err());
        }
        // Dropped: free again, and the lease is on disk.
        let f = File::options()
            .write(true)
            .open(store.dir.join("lock"))
            .unwrap();
        let held = Flock::lock(f, FlockArg::LockExclusiveNonblock);
        assert!(held.is_ok());
        drop(held);
        let l = store.lock().unwrap().load_leases().unwrap();
        fs::remove_dir_all(&root).unwrap();
        assert_eq!(l.leases[0].address.to_string(), "192.168.10.2/24");
        assert_eq!(l.last_reserved, vec![Some("192.168.10.2".parse().unwrap())]);
    }

    #[test]
    fn parallel_allocations_from_threads_never_collide() {
        // Each thread opens its own file description, as separate plugin
        // processes do; flock excludes between them.
        let root = std::env::temp_dir().join(format!("nb-cni-par-{}", std::process::id()));
        let conf = ipam(json!({"subnet": "192.168.11.0/24"}));
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let (root, conf) = (root.clone(), conf.clone());
                std::thread::spawn(move || {
                    for n in 0..10 {
                        let lock = NetworkStore::new(&root, "par").lock().unwrap();
                        let mut l = lock.load_leases().unwrap();
                        l.allocate(&conf, &att(&format!("t{t}n{n}")), &[]).unwrap();
                        lock.save_leases(&l).unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let l = NetworkStore::new(&root, "par")
            .lock()
            .unwrap()
            .load_leases()
            .unwrap();
        fs::remove_dir_all(&root).unwrap();
        let mut addrs: Vec<IpAddr> = l.leases.iter().map(|x| x.address.addr()).collect();
        assert_eq!(addrs.len(), 80, "no lost allocation");
        addrs.sort();
        addrs.dedup();
        assert_eq!(addrs.len(), 80, "no address handed out twice");
    }
}
