//! Live datapath statistics from the pinned BPF maps: one snapshot source
//! for `netbridge stats` (table, `--watch`, `--json`) and the Prometheus
//! endpoint (`netbridge metrics`).
use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    sync::Mutex,
    time::Instant,
};

use netbridge_common::PortStats;
use serde_json::json;

use crate::{
    bpf::{BpfError, Maps, PinDir},
    netlink, netns,
    state::{State, StateError},
    topology,
};

#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("no topology named {0:?} is up")]
    NotUp(String),
    #[error("topology {0} has no datapath loaded (no bridge ports)")]
    NoDatapath(String),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Bpf(#[from] BpfError),
    #[error(transparent)]
    Netns(#[from] crate::netns::NetnsError),
    #[error("listing interfaces: {0}")]
    Netlink(#[from] netlink::NetlinkError),
}

/// One port's counters at one instant.
#[derive(Debug, Clone)]
pub struct PortRow {
    pub port: String,
    /// The lab namespace behind the port.
    pub namespace: String,
    pub stats: PortStats,
}

#[derive(Debug, Clone)]
pub struct Snapshot {
    pub topology: String,
    pub at: Instant,
    pub ports: Vec<PortRow>,
    pub drops: BTreeMap<&'static str, u64>,
    pub fdb_entries: usize,
    /// NAT state, when the topology has NAT on.
    pub nat: Option<NatSnapshot>,
}

#[derive(Debug, Clone)]
pub struct NatSnapshot {
    pub counters: BTreeMap<&'static str, u64>,
    /// Live sessions and their highest count, as the datapath keeps them.
    pub live_sessions: u64,
    pub high_water_sessions: u64,
    pub max_sessions: u32,
    /// NAT66's live sessions and highest count (counted apart against the
    /// same `max_sessions`), when NAT66 is on.
    pub sessions6: Option<(u64, u64)>,
    /// Sessions by protocol name.
    pub sessions: BTreeMap<&'static str, u64>,
    pub pools: Vec<crate::nat::PoolUse>,
    pub forwards: Vec<crate::nat::ForwardUse>,
}

/// The pinned maps of one running topology, opened once.
pub struct Source {
    pub(crate) name: String,
    pub maps: Maps,
    /// The topology as journaled by `up`.
    pub topology: crate::config::Topology,
    /// ifindex -> (port, namespace) of the topology's ports; reread when a
    /// port appears (ports are attached while a `--watch` or the metrics
    /// server runs).
    ports: Mutex<HashMap<u32, (String, String)>>,
}

/// ifindex -> (host-side port, port name) of every port of topology `name`
/// (the name is the namespace's for the file's namespaces).
fn port_names(st: &State) -> Result<HashMap<u32, (String, String)>, StatsError> {
    let ports = topology::ports(st);
    let Some(t) = &st.topology else {
        return Ok(HashMap::new());
    };
    let links = netns::run_in(&topology::host_of(t), |h| async move {
        netlink::links(&h).await
    })??;
    Ok(ports
        .into_iter()
        .filter_map(|p| {
            let l = links.iter().find(|l| l.name == p.host_ifname)?;
            Some((l.index, (p.host_ifname, p.name)))
        })
        .collect())
}

impl Source {
    pub fn open(name: &str) -> Result<Self, StatsError> {
        let st = State::load(name)?.ok_or_else(|| StatsError::NotUp(name.into()))?;
        let dir = st
            .pin_dir
            .clone()
            .ok_or_else(|| StatsError::NoDatapath(name.into()))?;
        let maps = Maps::open_pinned(&PinDir(dir))?;
        let ports = Mutex::new(port_names(&st)?);
        let topology = st.topology.ok_or_else(|| StatsError::NotUp(name.into()))?;
        Ok(Source {
            name: name.into(),
            maps,
            topology,
            ports,
        })
    }

    /// (port, namespace) of `ifindex`, rereading the journal once if the
    /// port is new.
    fn port_of(&self, ifindex: u32) -> Option<(String, String)> {
        let mut ports = self.ports.lock().unwrap_or_else(|e| e.into_inner());
        if !ports.contains_key(&ifindex)
            && let Ok(Some(st)) = State::load(&self.name)
            && let Ok(fresh) = port_names(&st)
        {
            *ports = fresh;
        }
        ports.get(&ifindex).cloned()
    }

    /// Learned FDB entries with the port name of each.
    pub fn fdb(&self) -> Result<Vec<(crate::bpf::FdbRow, String)>, StatsError> {
        Ok(self
            .maps
            .fdb()?
            .into_iter()
            .map(|r| {
                let port = self
                    .port_of(r.ifindex)
                    .map(|p| p.0)
                    .unwrap_or(format!("#{}", r.ifindex));
                (r, port)
            })
            .collect())
    }

    pub fn snapshot(&self) -> Result<Snapshot, StatsError> {
        let per_port = self.maps.port_stats()?;
        let mut ports: Vec<PortRow> = per_port
            .iter()
            .map(|(i, s)| {
                let (port, namespace) =
                    self.port_of(*i).unwrap_or((format!("#{i}"), String::new()));
                PortRow {
                    port,
                    namespace,
                    stats: *s,
                }
            })
            .collect();
        ports.sort_by(|a, b| a.port.cmp(&b.port));
        Ok(Snapshot {
            topology: self.name.clone(),
            at: Instant::now(),
            ports,
            drops: self.maps.drop_stats()?,
            fdb_entries: self.maps.fdb.keys().filter(|k| k.is_ok()).count(),
            nat: self.nat_snapshot()?,
        })
    }

    fn nat_snapshot(&self) -> Result<Option<NatSnapshot>, StatsError> {
        let nat = &self.maps.nat;
        let cfg = nat.config();
        let nat6 = self.maps.nat6.as_ref().filter(|n| n.config().flags != 0);
        // NAT66 may run alone (an uplink without an IPv4 address).
        if cfg.flags == 0 && nat6.is_none() {
            return Ok(None);
        }
        let ct = nat.conntrack()?;
        let mut sessions = BTreeMap::new();
        for s in &ct.sessions {
            *sessions.entry(s.proto).or_insert(0) += 1;
        }
        Ok(Some(NatSnapshot {
            counters: nat.counters()?,
            live_sessions: ct.live_sessions,
            high_water_sessions: ct.high_water_sessions,
            max_sessions: ct.max_sessions,
            sessions6: nat6.map(|n| (n.counts().live, n.counts().high_water)),
            sessions,
            pools: ct.pools,
            forwards: nat.forward_uses()?,
        }))
    }
}

/// One line of the `stats` table.
fn row<S: AsRef<str>>(c: [S; 13]) -> String {
    let c = c.map(|s| s.as_ref().to_string());
    format!(
        "{:<15} {:<14} {:>9} {:>11} {:>9} {:>8} {:>9} {:>11} {:>8} {:>8} {:>8} {:>9} {:>7}\n",
        c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9], c[10], c[11], c[12]
    )
}

/// "name=value" for every non-zero counter.
fn nonzero(counters: &BTreeMap<&str, u64>) -> String {
    let v: Vec<String> = counters
        .iter()
        .filter(|(_, v)| **v > 0)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    v.join(" ")
}

impl NatSnapshot {
    /// The NAT part of the `stats` table.
    fn lines(&self) -> String {
        let join = |v: Vec<String>, sep: &str| v.join(sep);
        let by_proto = join(
            self.sessions
                .iter()
                .map(|(p, c)| format!("{p}={c}"))
                .collect(),
            " ",
        );
        let pools = join(
            self.pools
                .iter()
                .map(|p| format!("{} {}/{}", p.proto, p.ports_in_use, p.pool_size))
                .collect(),
            ", ",
        );
        let c = nonzero(&self.counters);
        let mut out = format!(
            "nat sessions: {} of {} ({by_proto}; highest {})\nnat port pool: {pools}\nnat: {}\n",
            self.live_sessions,
            self.max_sessions,
            self.high_water_sessions,
            if c.is_empty() { "no traffic yet" } else { &c }
        );
        if let Some((live, high)) = self.sessions6 {
            let _ = writeln!(
                out,
                "nat66 sessions: {live} of {} (highest {high})",
                self.max_sessions
            );
        }
        for f in &self.forwards {
            let _ = writeln!(
                out,
                "forward {} {} -> {}: {} sessions",
                f.proto, f.port, f.to, f.hits
            );
        }
        out
    }
}

/// Per-second rates between two snapshots: (pps, bit/s) of rx and tx.
fn rates(now: &PortRow, prev: Option<&Snapshot>, secs: f64) -> Option<(f64, f64, f64, f64)> {
    let p = prev?.ports.iter().find(|r| r.port == now.port)?;
    let d = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
    Some((
        d(now.stats.rx_packets, p.stats.rx_packets),
        d(now.stats.rx_bytes, p.stats.rx_bytes) * 8.0,
        d(now.stats.tx_packets, p.stats.tx_packets),
        d(now.stats.tx_bytes, p.stats.tx_bytes) * 8.0,
    ))
}

fn human(v: f64) -> String {
    match v {
        v if v >= 1e9 => format!("{:.2}G", v / 1e9),
        v if v >= 1e6 => format!("{:.2}M", v / 1e6),
        v if v >= 1e3 => format!("{:.1}k", v / 1e3),
        v => format!("{v:.0}"),
    }
}

impl Snapshot {
    fn elapsed_since(&self, prev: Option<&Snapshot>) -> f64 {
        prev.map(|p| self.at.duration_since(p.at).as_secs_f64())
            .filter(|s| *s > 0.0)
            .unwrap_or(1.0)
    }

    /// The human table; with `prev`, rates per second as well.
    pub fn table(&self, prev: Option<&Snapshot>) -> String {
        let secs = self.elapsed_since(prev);
        let mut out = row([
            "port",
            "namespace",
            "rx_pkts",
            "rx_bytes",
            "redirect",
            "kernel",
            "tx_pkts",
            "tx_bytes",
            "rx_pps",
            "rx_bit/s",
            "tx_pps",
            "tx_bit/s",
            "dropped",
        ]);
        for r in &self.ports {
            let s = &r.stats;
            let (rp, rb, tp, tb) = rates(r, prev, secs)
                .map(|(a, b, c, d)| (human(a), human(b), human(c), human(d)))
                .unwrap_or_else(|| ("-".into(), "-".into(), "-".into(), "-".into()));
            let n = |v: u64| v.to_string();
            out += &row([
                r.port.clone(),
                r.namespace.clone(),
                n(s.rx_packets),
                n(s.rx_bytes),
                n(s.rx_redirected),
                n(s.rx_fallback),
                n(s.tx_packets),
                n(s.tx_bytes),
                rp,
                rb,
                tp,
                tb,
                n(s.rx_dropped),
            ]);
        }
        let drops = nonzero(&self.drops);
        let drops = if drops.is_empty() { "none" } else { &drops };
        let _ = writeln!(out, "drops: {drops}\nfdb entries: {}", self.fdb_entries);
        if let Some(n) = &self.nat {
            out += &n.lines();
        }
        out
    }

    pub fn json(&self, prev: Option<&Snapshot>) -> serde_json::Value {
        let secs = self.elapsed_since(prev);
        let ports: serde_json::Map<String, serde_json::Value> = self
            .ports
            .iter()
            .map(|r| {
                let s = &r.stats;
                let mut v = json!({
                    "namespace": r.namespace,
                    "rx_packets": s.rx_packets, "rx_bytes": s.rx_bytes,
                    "rx_ipv4": s.rx_ipv4, "rx_ipv6": s.rx_ipv6, "rx_arp": s.rx_arp,
                    "rx_other": s.rx_other, "rx_vlan": s.rx_vlan, "rx_dropped": s.rx_dropped,
                    "rx_redirected": s.rx_redirected, "rx_fallback": s.rx_fallback,
                    "tx_packets": s.tx_packets, "tx_bytes": s.tx_bytes,
                });
                if let Some((rp, rb, tp, tb)) = rates(r, prev, secs) {
                    v["rates"] = json!({"rx_pps": rp, "rx_bps": rb, "tx_pps": tp, "tx_bps": tb});
                }
                (r.port.clone(), v)
            })
            .collect();
        let nat = self.nat.as_ref().map(|n| {
            json!({
                "counters": n.counters,
                "live_sessions": n.live_sessions,
                "high_water_sessions": n.high_water_sessions,
                "live_sessions6": n.sessions6.map_or(0, |s| s.0),
                "high_water_sessions6": n.sessions6.map_or(0, |s| s.1),
                "max_sessions": n.max_sessions,
                "sessions": n.sessions,
                "pools": n.pools,
                "forwards": n.forwards,
            })
        });
        json!({
            "topology": self.topology,
            "ports": ports,
            "drops": self.drops,
            "fdb_entries": self.fdb_entries,
            "nat": nat,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table: a header and a row per port in fixed columns, drops by
    /// name (or none), and the NAT lines when NAT is on.
    #[test]
    fn table_columns_and_sections() {
        let mut snap = Snapshot {
            topology: "lab".into(),
            at: Instant::now(),
            ports: vec![PortRow {
                port: "nb-a".into(),
                namespace: "a".into(),
                stats: PortStats {
                    rx_packets: 12,
                    rx_redirected: 10,
                    ..PortStats::default()
                },
            }],
            drops: [("spoofed_mac", 0), ("bad_src_mac", 0)]
                .into_iter()
                .collect(),
            fdb_entries: 3,
            nat: None,
        };
        let t = snap.table(None);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(lines[0].starts_with("port            namespace"), "{t}");
        assert_eq!(lines[0].len(), lines[1].len(), "columns align:\n{t}");
        let cols: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(&cols[..6], ["nb-a", "a", "12", "0", "10", "0"], "{t}");
        assert_eq!(cols[8], "-", "no rates without a previous snapshot");
        assert_eq!(lines[2], "drops: none");
        assert_eq!(lines[3], "fdb entries: 3");
        snap.drops.insert("spoofed_mac", 4);
        snap.nat = Some(NatSnapshot {
            counters: [("snat_new", 2), ("dnat_new", 0)].into_iter().collect(),
            live_sessions: 2,
            high_water_sessions: 3,
            max_sessions: 100,
            sessions6: Some((1, 4)),
            sessions: [("tcp", 2)].into_iter().collect(),
            pools: vec![],
            forwards: vec![],
        });
        let t = snap.table(Some(&snap.clone()));
        assert!(t.contains("drops: spoofed_mac=4\n"), "{t}");
        assert!(
            t.contains(
                "nat sessions: 2 of 100 (tcp=2; highest 3)\nnat port pool: \nnat: snat_new=2\n\
                 nat66 sessions: 1 of 100 (highest 4)\n"
            ),
            "{t}"
        );
    }
}
