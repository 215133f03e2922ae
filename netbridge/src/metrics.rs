//! The Prometheus endpoint: a [`Snapshot`] in the text exposition format
//! (0.0.4), served over a small HTTP/1.x server. Every connection is its
//! own task, so a slow or stuck client never holds up another scrape.
use std::{
    fmt::Display,
    fmt::Write as _,
    net::SocketAddr,
    rc::Rc,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use netbridge_common::PortStats;

use crate::{
    nat::{ForwardUse, PoolUse},
    stats::{NatSnapshot, PortRow, Snapshot, Source},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    task::JoinSet,
};

/// How long a client may take to send its request.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request head accepted.
pub const MAX_REQUEST: usize = 8192;

/// Label value escaping of the exposition format: backslash, double quote
/// and newline.
pub fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Writes metric families: each `# HELP`/`# TYPE` header once, then its
/// samples (of every topology) with escaped label values.
#[derive(Default)]
struct Exposition {
    out: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One sample; the topology label comes first.
    fn sample(&mut self, name: &str, topology: &str, labels: &[(&str, &str)], value: impl Display) {
        let _ = write!(self.out, "{name}{{topology=\"{}\"", escape(topology));
        for (k, v) in labels {
            let _ = write!(self.out, ",{k}=\"{}\"", escape(v));
        }
        let _ = writeln!(self.out, "}} {value}");
    }

    /// A family (name, type, help) whose samples `each` lists for every
    /// topology's `T`: labels after `topology`, and the value.
    fn family_of<'a, T>(
        &mut self,
        (name, kind, help): (&str, &str, &str),
        of: &[(&str, &'a T)],
        each: impl Fn(&'a T) -> Vec<Sample<'a>>,
    ) {
        self.family(name, kind, help);
        for (topology, v) in of {
            for (labels, value) in each(v) {
                self.sample(name, topology, &labels, value);
            }
        }
    }
}

/// One sample: its labels (after `topology`) and its value.
type Sample<'a> = (Vec<(&'static str, &'a str)>, u64);

/// (metric name, help text, field) of one per-port counter.
type Counter = (&'static str, &'static str, fn(&PortStats) -> u64);

const PORT_COUNTERS: [Counter; 8] = [
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

impl Snapshot {
    /// Prometheus text exposition format (version 0.0.4).
    pub fn prometheus(&self) -> String {
        exposition(std::slice::from_ref(self))
    }
}

/// The metrics of several topologies in one exposition (each family once,
/// its samples labelled by topology): what `netbridge agent` serves.
pub fn exposition(snaps: &[Snapshot]) -> String {
    let mut x = Exposition::default();
    let all: Vec<(&str, &Snapshot)> = snaps.iter().map(|s| (s.topology.as_str(), s)).collect();
    port_families(&mut x, &all);
    let drops = (
        "netbridge_drops_total",
        "counter",
        "Frames dropped, by reason.",
    );
    x.family_of(drops, &all, |s| {
        s.drops
            .iter()
            .map(|(r, v)| (vec![("reason", &**r)], *v))
            .collect()
    });
    let fdb = (
        "netbridge_fdb_entries",
        "gauge",
        "MAC addresses in the BPF forwarding database.",
    );
    x.family_of(fdb, &all, |s| vec![(vec![], s.fdb_entries as u64)]);
    let nat: Vec<(&str, &NatSnapshot)> = snaps
        .iter()
        .filter_map(|s| Some((s.topology.as_str(), s.nat.as_ref()?)))
        .collect();
    if !nat.is_empty() {
        nat_families(&mut x, &nat);
    }
    x.out
}

fn port_families(x: &mut Exposition, all: &[(&str, &Snapshot)]) {
    for (name, help, get) in PORT_COUNTERS {
        x.family_of((name, "counter", help), all, |s| {
            s.ports
                .iter()
                .map(|r| (port_labels(r), get(&r.stats)))
                .collect()
        });
    }
    let frames = (
        "netbridge_port_rx_frames_total",
        "counter",
        "Frames received by L3 class.",
    );
    x.family_of(frames, all, |s| {
        let mut out = Vec::new();
        for r in &s.ports {
            let st = &r.stats;
            for (class, v) in [
                ("ipv4", st.rx_ipv4),
                ("ipv6", st.rx_ipv6),
                ("arp", st.rx_arp),
                ("other", st.rx_other),
            ] {
                let mut labels = port_labels(r);
                labels.push(("class", class));
                out.push((labels, v));
            }
        }
        out
    });
}

/// (metric name, help text, value) of one NAT gauge.
type NatGauge = (&'static str, &'static str, fn(&NatSnapshot) -> u64);

const NAT_GAUGES: [NatGauge; 6] = [
    (
        "netbridge_nat_sessions_live",
        "NAT sessions counted against max_sessions (kernel count).",
        |n| n.live_sessions,
    ),
    (
        "netbridge_nat_sessions_high_water",
        "Highest live NAT session count reached.",
        |n| n.high_water_sessions,
    ),
    (
        "netbridge_nat66_sessions_live",
        "NAT66 sessions counted against max_sessions, apart from IPv4's (kernel count).",
        |n| n.sessions6.map_or(0, |s| s.0),
    ),
    (
        "netbridge_nat66_sessions_high_water",
        "Highest live NAT66 session count reached.",
        |n| n.sessions6.map_or(0, |s| s.1),
    ),
    (
        "netbridge_nat_sessions_max",
        "Session limit (max_sessions).",
        |n| n.max_sessions.into(),
    ),
    (
        "netbridge_nat_port_pool_size",
        "Ports in the SNAT range.",
        |n| n.pools.first().map_or(0, |p| p.pool_size as u64),
    ),
];

/// The NAT families, over the topologies with NAT on.
fn nat_families<'a>(x: &mut Exposition, nat: &[(&str, &'a NatSnapshot)]) {
    let events = (
        "netbridge_nat_events_total",
        "counter",
        "NAT events (new sessions, translated packets, port retries), by kind.",
    );
    x.family_of(events, nat, |n| {
        n.counters
            .iter()
            .map(|(k, v)| (vec![("event", *k)], *v))
            .collect()
    });
    let sessions = (
        "netbridge_nat_sessions",
        "gauge",
        "NAT sessions in the conntrack table, by protocol.",
    );
    x.family_of(sessions, nat, |n| {
        n.sessions
            .iter()
            .map(|(p, v)| (vec![("proto", *p)], *v))
            .collect()
    });
    for (name, help, get) in NAT_GAUGES {
        x.family_of((name, "gauge", help), nat, |n| vec![(vec![], get(n))]);
    }
    let ports = (
        "netbridge_nat_ports_in_use",
        "gauge",
        "SNAT external ports in use, by protocol.",
    );
    x.family_of(ports, nat, |n| {
        let use_of = |p: &PoolUse| (vec![("proto", p.proto)], p.ports_in_use as u64);
        n.pools.iter().map(use_of).collect()
    });
    let forwards = (
        "netbridge_forward_sessions_total",
        "counter",
        "New DNAT sessions per port forward.",
    );
    x.family_of(forwards, nat, |n| {
        let hits = |f: &'a ForwardUse| {
            let labels = vec![("proto", f.proto), ("port", &*f.port), ("to", &*f.to)];
            (labels, f.hits)
        };
        n.forwards.iter().map(hits).collect()
    });
}

fn port_labels(r: &PortRow) -> Vec<(&'static str, &str)> {
    vec![("port", r.port.as_str()), ("namespace", &*r.namespace)]
}

/// The agent's own families: how many topologies it sees and whether each
/// could be read this scrape.
pub fn agent_families(read: &[(String, bool)]) -> String {
    let mut x = Exposition::default();
    let name = "netbridge_topologies";
    x.family(
        name,
        "gauge",
        "Running topologies (journals) the agent sees.",
    );
    let _ = writeln!(x.out, "{name} {}", read.len());
    let name = "netbridge_topology_scrape_ok";
    x.family(
        name,
        "gauge",
        "1 if the topology's maps were read for this scrape, 0 if not.",
    );
    for (t, ok) in read {
        x.sample(name, t, &[], u8::from(*ok));
    }
    x.out
}

/// An HTTP answer: status line, content type, body.
struct Reply {
    status: &'static str,
    ctype: &'static str,
    extra: &'static str,
    body: String,
}

impl Reply {
    fn text(status: &'static str, body: impl Into<String>) -> Reply {
        Reply {
            status,
            ctype: "text/plain; charset=utf-8",
            extra: "",
            body: body.into(),
        }
    }
}

/// What a request head asks for, judged without the data source.
#[derive(Debug, PartialEq, Eq)]
enum Ask {
    Metrics,
    Error(&'static str, &'static str),
}

/// Judges one request head (the bytes up to the blank line).
fn judge(head: &[u8]) -> Ask {
    let Ok(head) = std::str::from_utf8(head) else {
        return Ask::Error("400 Bad Request", "request is not UTF-8\n");
    };
    let line = head.lines().next().unwrap_or("");
    let parts: Vec<&str> = line.split(' ').collect();
    let [method, target, version] = parts[..] else {
        return Ask::Error("400 Bad Request", "malformed request line\n");
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') || method.is_empty() {
        return Ask::Error("400 Bad Request", "malformed request line\n");
    }
    if method != "GET" {
        return Ask::Error("405 Method Not Allowed", "only GET is served\n");
    }
    match target.split('?').next() {
        Some("/metrics") => Ask::Metrics,
        _ => Ask::Error("404 Not Found", "try /metrics\n"),
    }
}

/// Reads a request head: Ok(Some(head)), Ok(None) if the client closed
/// before sending anything, or the error reply.
async fn read_head(sock: &mut TcpStream) -> Result<Option<Vec<u8>>, Reply> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.truncate(end);
            return Ok(Some(buf));
        }
        if buf.len() > MAX_REQUEST {
            return Err(Reply::text(
                "431 Request Header Fields Too Large",
                "request too large\n",
            ));
        }
        match tokio::time::timeout(READ_TIMEOUT, sock.read(&mut chunk)).await {
            Err(_) => {
                return Err(Reply::text(
                    "408 Request Timeout",
                    "request not received in time\n",
                ));
            }
            Ok(Ok(0)) if buf.is_empty() => return Ok(None),
            Ok(Ok(0)) => return Err(Reply::text("400 Bad Request", "incomplete request\n")),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(_)) => return Ok(None),
        }
    }
}

/// Renders the exposition of one scrape (or says why it cannot).
pub type Render = Rc<dyn Fn() -> Result<String, String>>;

/// Serves one connection.
async fn serve_one(mut sock: TcpStream, render: Render) {
    let reply = match read_head(&mut sock).await {
        Ok(None) => return,
        Err(reply) => reply,
        Ok(Some(head)) => match judge(&head) {
            Ask::Metrics => match render() {
                Ok(body) => Reply {
                    status: "200 OK",
                    ctype: "text/plain; version=0.0.4; charset=utf-8",
                    extra: "",
                    body,
                },
                Err(e) => Reply::text("500 Internal Server Error", format!("{e}\n")),
            },
            Ask::Error(status, body) if status.starts_with("405") => Reply {
                extra: "Allow: GET\r\n",
                ..Reply::text(status, body)
            },
            Ask::Error(status, body) => Reply::text(status, body),
        },
    };
    let resp = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{}Connection: close\r\n\r\n{}",
        reply.status,
        reply.ctype,
        reply.body.len(),
        reply.extra,
        reply.body
    );
    let _ = sock.write_all(resp.as_bytes()).await;
    let _ = sock.shutdown().await;
}

/// Serves `/metrics` on `listen` until the process is stopped (or, for
/// bounded runs, until `max_requests` connections were accepted and
/// answered). Runs on the calling thread; connections are served
/// concurrently.
pub fn serve(source: Source, listen: SocketAddr, max_requests: Option<u64>) -> std::io::Result<()> {
    let what = format!("metrics of {}", source.name);
    let render: Render = Rc::new(move || {
        source
            .snapshot()
            .map(|s| s.prometheus())
            .map_err(|e| e.to_string())
    });
    let listener = std::net::TcpListener::bind(listen)?;
    serve_on(listener, max_requests, &what, move || render.clone(), None)
}

/// [`serve`] for any exposition, on a bound `listener`: `render` makes the
/// scrape's body (built on the server's thread, so it need not be
/// `Send`); with `stop`, the server returns once the flag is set (it is
/// checked every 100 ms).
pub fn serve_on(
    listener: std::net::TcpListener,
    max_requests: Option<u64>,
    what: &str,
    render: impl FnOnce() -> Render,
    stop: Option<Arc<AtomicBool>>,
) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listen = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        eprintln!("netbridge: serving {what} on http://{listen}/metrics");
        let render = render();
        let mut tasks = JoinSet::new();
        let mut accepted = 0u64;
        let stopped = || stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed));
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        while max_requests.is_none_or(|m| accepted < m) && !stopped() {
            let sock = tokio::select! {
                r = listener.accept() => r?.0,
                _ = tick.tick() => continue,
            };
            accepted += 1;
            tasks.spawn_local(serve_one(sock, render.clone()));
            // Reap finished connections as we go.
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape("x\ny"), "x\\ny");
        assert_eq!(escape("plain-name_1"), "plain-name_1");
        let mut x = Exposition::default();
        x.sample("m", "t\"1", &[("port", "p\\0"), ("namespace", "n\nx")], 7);
        assert_eq!(
            x.out,
            "m{topology=\"t\\\"1\",port=\"p\\\\0\",namespace=\"n\\nx\"} 7\n"
        );
    }

    /// Every family of a snapshot is announced once, before its samples,
    /// and every sample line parses as name{labels} value.
    #[test]
    fn exposition_families_once_and_samples_well_formed() {
        use crate::stats::{NatSnapshot, PortRow};
        let snap = Snapshot {
            topology: "lab\"x".into(),
            at: std::time::Instant::now(),
            ports: vec![PortRow {
                port: "nb-a".into(),
                namespace: "ns \\ a".into(),
                stats: PortStats::default(),
            }],
            drops: [("bad_ipv4_header", 3)].into_iter().collect(),
            fdb_entries: 2,
            nat: Some(NatSnapshot {
                counters: [("snat_new", 5)].into_iter().collect(),
                live_sessions: 1,
                high_water_sessions: 1,
                max_sessions: 10,
                sessions6: Some((2, 3)),
                sessions: [("tcp", 1)].into_iter().collect(),
                pools: vec![],
                forwards: vec![],
            }),
        };
        let text = snap.prometheus();
        let mut seen = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap();
                assert!(seen.insert(name.to_string()), "family {name} twice");
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            let (key, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<u64>().is_ok(), "{line}");
            let name = key.split('{').next().unwrap();
            let family = name;
            assert!(seen.contains(family), "sample before its family: {line}");
            assert!(key.contains("topology=\"lab\\\"x\""), "{line}");
        }
        assert!(text.contains("namespace=\"ns \\\\ a\""), "{text}");
        assert!(
            text.contains(
                "netbridge_drops_total{topology=\"lab\\\"x\",reason=\"bad_ipv4_header\"} 3"
            )
        );
        assert!(text.contains("netbridge_nat_sessions_max{topology=\"lab\\\"x\"} 10"));
        assert!(text.contains("netbridge_nat66_sessions_live{topology=\"lab\\\"x\"} 2"));
        assert!(text.contains("netbridge_nat66_sessions_high_water{topology=\"lab\\\"x\"} 3"));
        assert_eq!(seen.len(), 9 + 2 + 10, "{seen:?}");
    }

    /// The agent's exposition of two topologies (one with NAT, one
    /// without): every family once, its samples grouped under it (no
    /// family's samples split by another's), both topologies present, the
    /// NAT families with only the NAT topology's samples.
    #[test]
    fn several_topologies_share_each_family() {
        use crate::stats::{NatSnapshot, PortRow};
        let snap = |name: &str, nat: bool| Snapshot {
            topology: name.into(),
            at: std::time::Instant::now(),
            ports: vec![PortRow {
                port: "nb-a".into(),
                namespace: "a".into(),
                stats: PortStats::default(),
            }],
            drops: [("spoofed_mac", 1)].into_iter().collect(),
            fdb_entries: 1,
            nat: nat.then(|| NatSnapshot {
                counters: [("snat_new", 5)].into_iter().collect(),
                live_sessions: 1,
                high_water_sessions: 1,
                max_sessions: 10,
                sessions6: None,
                sessions: [("udp", 1)].into_iter().collect(),
                pools: vec![],
                forwards: vec![],
            }),
        };
        let text = agent_families(&[("one".into(), true), ("two".into(), false)])
            + &exposition(&[snap("one", false), snap("two", true)]);
        let mut order: Vec<String> = Vec::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap().to_string();
            if order.last() != Some(&name) {
                assert!(!order.contains(&name), "{name} split:\n{text}");
                order.push(name);
            }
        }
        assert_eq!(
            text.matches("# TYPE netbridge_port_rx_packets_total ")
                .count(),
            1
        );
        for t in ["one", "two"] {
            let s = format!("netbridge_port_rx_packets_total{{topology=\"{t}\",port=\"nb-a\"");
            assert!(text.contains(&s), "{t}:\n{text}");
        }
        assert!(text.contains("netbridge_nat_sessions_live{topology=\"two\"} 1"));
        assert!(!text.contains("netbridge_nat_sessions_live{topology=\"one\""));
        assert!(text.contains("netbridge_topologies 2\n"));
        assert!(text.contains("netbridge_topology_scrape_ok{topology=\"two\"} 0\n"));
    }

    #[test]
    fn requests_are_judged() {
        assert_eq!(judge(b"GET /metrics HTTP/1.1\r\nHost: x"), Ask::Metrics);
        assert_eq!(judge(b"GET /metrics?x=1 HTTP/1.0"), Ask::Metrics);
        let status = |h: &[u8]| match judge(h) {
            Ask::Error(s, _) => s,
            Ask::Metrics => "200",
        };
        assert_eq!(status(b"POST /metrics HTTP/1.1"), "405 Method Not Allowed");
        assert_eq!(status(b"HEAD /metrics HTTP/1.1"), "405 Method Not Allowed");
        assert_eq!(status(b"GET /nope HTTP/1.1"), "404 Not Found");
        assert_eq!(status(b"GET /metrics"), "400 Bad Request");
        assert_eq!(status(b"GET metrics HTTP/1.1"), "400 Bad Request");
        assert_eq!(status(b"GET /metrics SPDY/3"), "400 Bad Request");
        assert_eq!(status(b"\xff\xfe garbage"), "400 Bad Request");
        assert_eq!(status(b""), "400 Bad Request");
    }
}
