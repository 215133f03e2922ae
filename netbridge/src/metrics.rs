//! The Prometheus endpoint: a [`Snapshot`] in the text exposition format
//! (0.0.4), served over a small HTTP/1.x server. Every connection is its
//! own task, so a slow or stuck client never holds up another scrape.
use std::{fmt::Display, fmt::Write as _, net::SocketAddr, rc::Rc, time::Duration};

use netbridge_common::PortStats;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    task::JoinSet,
};

use crate::stats::{Snapshot, Source};

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
/// samples with escaped label values.
struct Exposition {
    out: String,
    topology: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One sample; the topology label comes first.
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        let _ = write!(self.out, "{name}{{topology=\"{}\"", escape(&self.topology));
        for (k, v) in labels {
            let _ = write!(self.out, ",{k}=\"{}\"", escape(v));
        }
        let _ = writeln!(self.out, "}} {value}");
    }
}

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
        let mut x = Exposition {
            out: String::new(),
            topology: self.topology.clone(),
        };
        self.port_families(&mut x);
        x.family(
            "netbridge_drops_total",
            "counter",
            "Frames dropped, by reason.",
        );
        for (reason, v) in &self.drops {
            x.sample("netbridge_drops_total", &[("reason", reason)], v);
        }
        let name = "netbridge_fdb_entries";
        x.family(
            name,
            "gauge",
            "MAC addresses in the BPF forwarding database.",
        );
        x.sample(name, &[], self.fdb_entries);
        self.nat_families(&mut x);
        x.out
    }

    fn port_families(&self, x: &mut Exposition) {
        for (name, help, get) in PORT_COUNTERS {
            x.family(name, "counter", help);
            for r in &self.ports {
                let labels = [("port", r.port.as_str()), ("namespace", &r.namespace)];
                x.sample(name, &labels, get(&r.stats));
            }
        }
        let name = "netbridge_port_rx_frames_total";
        x.family(name, "counter", "Frames received by L3 class.");
        for r in &self.ports {
            let s = &r.stats;
            for (class, v) in [
                ("ipv4", s.rx_ipv4),
                ("ipv6", s.rx_ipv6),
                ("arp", s.rx_arp),
                ("other", s.rx_other),
            ] {
                let labels = [
                    ("port", r.port.as_str()),
                    ("namespace", &r.namespace),
                    ("class", class),
                ];
                x.sample(name, &labels, v);
            }
        }
    }

    fn nat_families(&self, x: &mut Exposition) {
        let Some(n) = &self.nat else {
            return;
        };
        let name = "netbridge_nat_events_total";
        x.family(
            name,
            "counter",
            "NAT events (new sessions, translated packets, port retries), by kind.",
        );
        for (k, v) in &n.counters {
            x.sample(name, &[("event", k)], v);
        }
        let name = "netbridge_nat_sessions";
        x.family(
            name,
            "gauge",
            "NAT sessions in the conntrack table, by protocol.",
        );
        for (p, v) in &n.sessions {
            x.sample(name, &[("proto", p)], v);
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
            x.family(name, "gauge", help);
            x.sample(name, &[], v);
        }
        let name = "netbridge_nat_sessions_max";
        x.family(name, "gauge", "Session limit (max_sessions).");
        x.sample(name, &[], n.max_sessions);
        let name = "netbridge_nat_ports_in_use";
        x.family(name, "gauge", "SNAT external ports in use, by protocol.");
        for p in &n.pools {
            x.sample(name, &[("proto", p.proto)], p.ports_in_use);
        }
        let name = "netbridge_nat_port_pool_size";
        x.family(name, "gauge", "Ports in the SNAT range.");
        x.sample(name, &[], n.pools.first().map_or(0, |p| p.pool_size));
        let name = "netbridge_forward_sessions_total";
        x.family(name, "counter", "New DNAT sessions per port forward.");
        for f in &n.forwards {
            let labels = [("proto", f.proto), ("port", f.port.as_str()), ("to", &f.to)];
            x.sample(name, &labels, f.hits);
        }
    }
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

/// Serves one connection.
async fn serve_one(mut sock: TcpStream, source: Rc<Source>) {
    let reply = match read_head(&mut sock).await {
        Ok(None) => return,
        Err(reply) => reply,
        Ok(Some(head)) => match judge(&head) {
            Ask::Metrics => match source.snapshot() {
                Ok(s) => Reply {
                    status: "200 OK",
                    ctype: "text/plain; version=0.0.4; charset=utf-8",
                    extra: "",
                    body: s.prometheus(),
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
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        eprintln!(
            "netbridge: serving metrics of {} on http://{listen}/metrics",
            source.name
        );
        let source = Rc::new(source);
        let mut tasks = JoinSet::new();
        let mut accepted = 0u64;
        while max_requests.is_none_or(|m| accepted < m) {
            let (sock, _) = listener.accept().await?;
            accepted += 1;
            tasks.spawn_local(serve_one(sock, source.clone()));
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
        let mut x = Exposition {
            out: String::new(),
            topology: "t\"1".into(),
        };
        x.sample("m", &[("port", "p\\0"), ("namespace", "n\nx")], 7);
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
        assert_eq!(seen.len(), 9 + 2 + 8, "{seen:?}");
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
