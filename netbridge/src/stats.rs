//! Live datapath statistics from the pinned BPF maps: one snapshot source
//! for `netbridge stats` (table, `--watch`, `--json`) and the Prometheus
//! endpoint (`netbridge metrics`).
use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
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
    /// Sessions by protocol name.
    pub sessions: BTreeMap<&'static str, u64>,
    pub pools: Vec<crate::nat::PoolUse>,
    pub forwards: Vec<crate::nat::ForwardUse>,
}

/// The pinned maps of one running topology, opened once.
pub struct Source {
    name: String,
    pub maps: Maps,
    /// The topology as journaled by `up`.
    pub topology: crate::config::Topology,
    /// ifindex -> (port, namespace), for the ports of the topology.
    ports: HashMap<u32, (String, String)>,
}

impl Source {
    pub fn open(name: &str) -> Result<Self, StatsError> {
        let st = State::load(name)?.ok_or_else(|| StatsError::NotUp(name.into()))?;
        let dir = st
            .pin_dir
            .clone()
            .ok_or_else(|| StatsError::NoDatapath(name.into()))?;
        let maps = Maps::open_pinned(&PinDir(dir))?;
        let t = st.topology.ok_or_else(|| StatsError::NotUp(name.into()))?;
        let host = topology::host_of(&t);
        let links = netns::run_in(&host, |h| async move { netlink::links(&h).await })??;
        let ports = t
            .namespaces
            .iter()
            .filter(|n| t.on_bridge(n))
            .filter_map(|n| {
                let port = crate::config::Topology::host_ifname(n);
                links
                    .iter()
                    .find(|l| l.name == port)
                    .map(|l| (l.index, (port, n.name.clone())))
            })
            .collect();
        Ok(Source {
            name: name.into(),
            maps,
            topology: t,
            ports,
        })
    }

    /// Learned FDB entries with the port name of each.
    pub fn fdb(&self) -> Result<Vec<(crate::bpf::FdbRow, String)>, StatsError> {
        Ok(self
            .maps
            .fdb()?
            .into_iter()
            .map(|r| {
                let port = self
                    .ports
                    .get(&r.ifindex)
                    .map(|p| p.0.clone())
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
                let (port, namespace) = self
                    .ports
                    .get(i)
                    .cloned()
                    .unwrap_or((format!("#{i}"), String::new()));
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
        if cfg.flags == 0 {
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
            sessions,
            pools: ct.pools,
            forwards: nat.forward_uses()?,
        }))
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
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<15} {:<14} {:>9} {:>11} {:>9} {:>8} {:>9} {:>11} {:>8} {:>8} {:>8} {:>9} {:>7}",
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
            "dropped"
        );
        for r in &self.ports {
            let s = &r.stats;
            let (rp, rb, tp, tb) = rates(r, prev, secs)
                .map(|(a, b, c, d)| (human(a), human(b), human(c), human(d)))
                .unwrap_or_else(|| ("-".into(), "-".into(), "-".into(), "-".into()));
            let _ = writeln!(
                out,
                "{:<15} {:<14} {:>9} {:>11} {:>9} {:>8} {:>9} {:>11} {:>8} {:>8} {:>8} {:>9} {:>7}",
                r.port,
                r.namespace,
                s.rx_packets,
                s.rx_bytes,
                s.rx_redirected,
                s.rx_fallback,
                s.tx_packets,
                s.tx_bytes,
                rp,
                rb,
                tp,
                tb,
                s.rx_dropped
            );
        }
        let total: u64 = self.drops.values().sum();
        let drops = if total == 0 {
            "none".to_string()
        } else {
            self.drops
                .iter()
                .filter(|(_, v)| **v > 0)
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let _ = writeln!(out, "drops: {drops}\nfdb entries: {}", self.fdb_entries);
        if let Some(n) = &self.nat {
            let by_proto = n
                .sessions
                .iter()
                .map(|(p, c)| format!("{p}={c}"))
                .collect::<Vec<_>>()
                .join(" ");
            let _ = writeln!(
                out,
                "nat sessions: {} of {} ({by_proto}; highest {})",
                n.live_sessions, n.max_sessions, n.high_water_sessions
            );
            let pools = n
                .pools
                .iter()
                .map(|p| format!("{} {}/{}", p.proto, p.ports_in_use, p.pool_size))
                .collect::<Vec<_>>()
                .join(", ");
            let _ = writeln!(out, "nat port pool: {pools}");
            let c = n
                .counters
                .iter()
                .filter(|(_, v)| **v > 0)
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ");
            let _ = writeln!(
                out,
                "nat: {}",
                if c.is_empty() { "no traffic yet" } else { &c }
            );
            for f in &n.forwards {
                let _ = writeln!(
                    out,
                    "forward {} {} -> {}: {} sessions",
                    f.proto, f.port, f.to, f.hits
                );
            }
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

    /// Prometheus text exposition format (version 0.0.4).
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        let topo = escape(&self.topology);
        let counters: [Counter; 8] = [
            (
                "netbridge_port_rx_packets_total",
                "Frames received from the namespace on the port.",
                |s| s.rx_packets,
            ),
            (
                "netbridge_port_rx_bytes_total",
                "Bytes received from the namespace on the port.",
                |s| s.rx_bytes,
            ),
            (
                "netbridge_port_tx_packets_total",
                "Frames the BPF fast path delivered to the port's namespace.",
                |s| s.tx_packets,
            ),
            (
                "netbridge_port_tx_bytes_total",
                "Bytes the BPF fast path delivered to the port's namespace.",
                |s| s.tx_bytes,
            ),
            (
                "netbridge_port_redirected_total",
                "Frames redirected by BPF, bypassing the kernel bridge.",
                |s| s.rx_redirected,
            ),
            (
                "netbridge_port_fallback_total",
                "Frames handed to the kernel bridge.",
                |s| s.rx_fallback,
            ),
            (
                "netbridge_port_dropped_total",
                "Frames dropped by the port program.",
                |s| s.rx_dropped,
            ),
            (
                "netbridge_port_rx_vlan_total",
                "VLAN-tagged frames received.",
                |s| s.rx_vlan,
            ),
        ];
        for (name, help, get) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for r in &self.ports {
                let _ = writeln!(
                    out,
                    "{name}{{topology=\"{topo}\",port=\"{}\",namespace=\"{}\"}} {}",
                    escape(&r.port),
                    escape(&r.namespace),
                    get(&r.stats)
                );
            }
        }
        let name = "netbridge_port_rx_frames_total";
        let _ = writeln!(
            out,
            "# HELP {name} Frames received by L3 class.\n# TYPE {name} counter"
        );
        for r in &self.ports {
            let s = &r.stats;
            for (class, v) in [
                ("ipv4", s.rx_ipv4),
                ("ipv6", s.rx_ipv6),
                ("arp", s.rx_arp),
                ("other", s.rx_other),
            ] {
                let _ = writeln!(
                    out,
                    "{name}{{topology=\"{topo}\",port=\"{}\",namespace=\"{}\",class=\"{class}\"}} {v}",
                    escape(&r.port),
                    escape(&r.namespace)
                );
            }
        }
        let name = "netbridge_drops_total";
        let _ = writeln!(
            out,
            "# HELP {name} Frames dropped, by reason.\n# TYPE {name} counter"
        );
        for (reason, v) in &self.drops {
            let _ = writeln!(out, "{name}{{topology=\"{topo}\",reason=\"{reason}\"}} {v}");
        }
        let name = "netbridge_fdb_entries";
        let _ = writeln!(
            out,
            "# HELP {name} MAC addresses in the BPF forwarding database.\n# TYPE {name} gauge\n{name}{{topology=\"{topo}\"}} {}",
            self.fdb_entries
        );
        if let Some(n) = &self.nat {
            let name = "netbridge_nat_events_total";
            let _ = writeln!(
                out,
                "# HELP {name} NAT events (new sessions, translated packets, port retries), by kind.\n# TYPE {name} counter"
            );
            for (k, v) in &n.counters {
                let _ = writeln!(out, "{name}{{topology=\"{topo}\",event=\"{k}\"}} {v}");
            }
            let name = "netbridge_nat_sessions";
            let _ = writeln!(
                out,
                "# HELP {name} NAT sessions in the conntrack table, by protocol.\n# TYPE {name} gauge"
            );
            for (p, v) in &n.sessions {
                let _ = writeln!(out, "{name}{{topology=\"{topo}\",proto=\"{p}\"}} {v}");
            }
            for (name, help, v) in [
                (
                    "netbridge_nat_sessions_live",
                    "NAT sessions counted against max_sessions (kernel count).",
                    n.live_sessions,
                ),
                (
                    "netbridge_nat_sessions_high_water",
                    "Highest live NAT session count reached.",
                    n.high_water_sessions,
                ),
            ] {
                let _ = writeln!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{topology=\"{topo}\"}} {v}"
                );
            }
            let name = "netbridge_nat_sessions_max";
            let _ = writeln!(
                out,
                "# HELP {name} Session limit (max_sessions).\n# TYPE {name} gauge\n{name}{{topology=\"{topo}\"}} {}",
                n.max_sessions
            );
            let name = "netbridge_nat_ports_in_use";
            let _ = writeln!(
                out,
                "# HELP {name} SNAT external ports in use, by protocol.\n# TYPE {name} gauge"
            );
            for p in &n.pools {
                let _ = writeln!(
                    out,
                    "{name}{{topology=\"{topo}\",proto=\"{}\"}} {}",
                    p.proto, p.ports_in_use
                );
            }
            let name = "netbridge_nat_port_pool_size";
            let _ = writeln!(
                out,
                "# HELP {name} Ports in the SNAT range.\n# TYPE {name} gauge\n{name}{{topology=\"{topo}\"}} {}",
                n.pools.first().map_or(0, |p| p.pool_size)
            );
            let name = "netbridge_forward_sessions_total";
            let _ = writeln!(
                out,
                "# HELP {name} New DNAT sessions per port forward.\n# TYPE {name} counter"
            );
            for f in &n.forwards {
                let _ = writeln!(
                    out,
                    "{name}{{topology=\"{topo}\",proto=\"{}\",port=\"{}\",to=\"{}\"}} {}",
                    f.proto,
                    f.port,
                    escape(&f.to),
                    f.hits
                );
            }
        }
        out
    }
}

/// (metric name, help text, field) of one per-port counter.
type Counter = (&'static str, &'static str, fn(&PortStats) -> u64);

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Serves `/metrics` on `listen` until the process is stopped (or for
/// `max_requests` requests, for bounded runs). Runs on the calling thread.
pub fn serve_metrics(
    source: Source,
    listen: std::net::SocketAddr,
    max_requests: Option<u64>,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        eprintln!("netbridge: serving metrics of {} on http://{listen}/metrics", source.name);
        let mut served = 0u64;
        loop {
            if max_requests.is_some_and(|m| served >= m) {
                return Ok(());
            }
            let (mut sock, _) = listener.accept().await?;
            served += 1;
            let mut buf = vec![0u8; 4096];
            let n = tokio::time::timeout(std::time::Duration::from_secs(5), sock.read(&mut buf))
                .await
                .unwrap_or(Ok(0))
                .unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]);
            let path = req.split_whitespace().nth(1).unwrap_or("");
            let (status, ctype, body) = match (req.starts_with("GET "), path) {
                (true, "/metrics") => match source.snapshot() {
                    Ok(s) => ("200 OK", "text/plain; version=0.0.4", s.prometheus()),
                    Err(e) => ("500 Internal Server Error", "text/plain", format!("{e}\n")),
                },
                (true, _) => ("404 Not Found", "text/plain", "try /metrics\n".to_string()),
                _ => ("405 Method Not Allowed", "text/plain", String::new()),
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        }
    })
}
