//! `netbridge capture`: the datapath's own tcpdump.
//!
//! The BPF programs copy packets at their decision points (port ingress
//! with the verdict, uplink in/out with the NAT rewrite, drops with their
//! reason) into a ring buffer while a capture holds a lease; an observer on
//! the ports' TC egress, attached only for the capture, adds what the
//! kernel bridge delivers. This module turns those events into text lines
//! or a pcapng file (see `README.md`, "Debugging").
pub mod decode;
pub mod pcapng;
pub mod session;
pub mod view;

use std::{
    io::{self, BufWriter, Write},
    net::IpAddr,
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use netbridge_common::capture::{DEFAULT_RATE, PROG_CAPTURE_EGRESS, SNAP_MAX, class};

use crate::{
    bpf::{BpfError, PinDir},
    config::{Topology, ipv4s},
    netlink, netns,
    state::{State, StateError},
    topology,
};
use session::Session;
use view::{Filter, Ports, Record};

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("no topology named {0:?} is up")]
    NotUp(String),
    #[error("topology {0} has no datapath loaded (no bridge ports, no uplink)")]
    NoDatapath(String),
    #[error(
        "the datapath of {name} was loaded by a netbridge without `capture`: run `netbridge up --reload` for it first"
    )]
    Predates { name: String },
    #[error("another `netbridge capture` of {name} is running (one at a time per topology)")]
    Busy { name: String },
    #[error("{name}: {what} {value:?} is not {expected}")]
    Selector {
        name: String,
        what: &'static str,
        value: String,
        expected: String,
    },
    #[error("--snaplen {0}: must be 1..={SNAP_MAX}")]
    Snaplen(u32),
    #[error("--rate {0}: must be 1..=1000000 events per CPU per second")]
    Rate(u32),
    #[error("capture observer ({PROG_CAPTURE_EGRESS}) {what}: {source}")]
    Observer {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Bpf(#[from] BpfError),
    #[error(transparent)]
    Netns(#[from] netns::NetnsError),
    #[error("listing interfaces: {0}")]
    Netlink(#[from] netlink::NetlinkError),
}

/// Protocol filter (`--proto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProtoArg {
    Tcp,
    Udp,
    Icmp,
    Arp,
}

/// The options of `netbridge capture` (the topology is chosen by the CLI).
#[derive(Debug, Clone, clap::Args)]
pub struct CaptureArgs {
    /// Only this bridge port (host-side interface, e.g. nb-black): both
    /// directions, as tcpdump on a Linux bridge port.
    #[arg(long, conflicts_with_all = ["namespace", "uplink"])]
    pub port: Option<String>,
    /// Only the bridge port of this namespace.
    #[arg(long, conflicts_with = "uplink")]
    pub namespace: Option<String>,
    /// Only the uplink (NAT in and out).
    #[arg(long)]
    pub uplink: bool,
    #[arg(long, value_enum)]
    pub proto: Option<ProtoArg>,
    /// Only packets from or to this address (before or after NAT).
    #[arg(long)]
    pub host: Option<IpAddr>,
    /// Only TCP/UDP packets from or to this port (before or after NAT).
    #[arg(long = "port-number")]
    pub port_number: Option<u16>,
    /// Only packets the datapath dropped, with their reason.
    #[arg(long)]
    pub drops_only: bool,
    /// Write pcapng to FILE instead of printing lines.
    #[arg(short = 'w', long = "write", value_name = "FILE")]
    pub write: Option<PathBuf>,
    /// Stop after this many packets.
    #[arg(long)]
    pub count: Option<u64>,
    /// Bytes kept of each packet.
    #[arg(long, default_value_t = SNAP_MAX as u32)]
    pub snaplen: u32,
    /// Events per CPU per second the datapath sends at most; more are
    /// counted as lost.
    #[arg(long, default_value_t = DEFAULT_RATE)]
    pub rate: u32,
    /// Print the link-level header (MACs) on every line.
    #[arg(short = 'e')]
    pub ether: bool,
}

/// What a capture saw, printed at its end.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Summary {
    /// Packets printed or written.
    pub packets: u64,
    /// Events the datapath sent (some filtered out here).
    pub events: u64,
    /// Events lost because the ring buffer was full.
    pub lost_ring: u64,
    /// Events lost over the per-CPU rate limit.
    pub lost_rate: u64,
}

impl Summary {
    pub fn lost(&self) -> u64 {
        self.lost_ring + self.lost_rate
    }

    pub fn text(&self) -> String {
        format!(
            "{} packets captured ({} events from the datapath), {} events lost (ring buffer full: {}, over the rate limit: {})",
            self.packets,
            self.events,
            self.lost(),
            self.lost_ring,
            self.lost_rate
        )
    }
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// SIGINT/SIGTERM end the capture cleanly (lease cleared, file closed).
fn catch_signals() {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let act = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        let _ = unsafe { sigaction(sig, &act) };
    }
}

/// The running topology `name`: its pins, the interfaces the datapath
/// reports (names, lab addresses), the programs attached.
struct Target {
    topology: Topology,
    pins: PinDir,
    ports: Ports,
    /// Bridge ports by namespace: (namespace, port, ifindex).
    bridge_ports: Vec<(String, String, u32)>,
    uplink: Option<(String, u32)>,
    prog_ids: Vec<u32>,
}

fn target(name: &str) -> Result<Target, CaptureError> {
    let st = State::load(name)?.ok_or_else(|| CaptureError::NotUp(name.into()))?;
    let pins = PinDir(
        st.pin_dir
            .ok_or_else(|| CaptureError::NoDatapath(name.into()))?,
    );
    let t = st
        .topology
        .ok_or_else(|| CaptureError::NotUp(name.into()))?;
    let host = topology::host_of(&t);
    let mut watched: Vec<String> = t
        .namespaces
        .iter()
        .filter(|n| t.on_bridge(n))
        .map(Topology::host_ifname)
        .collect();
    watched.extend(t.uplink.as_ref().map(|u| u.ifname.clone()));
    let (links, prog_ids) = netns::run_in(&host, move |h| async move {
        let links = netlink::links(&h).await;
        let ids: Vec<u32> = watched
            .iter()
            .flat_map(|i| crate::bpf::attached_tc_ids(i))
            .collect();
        (links, ids)
    })?;
    let links = links?;
    let index = |ifname: &str| links.iter().find(|l| l.name == ifname).map(|l| l.index);
    let mut out = Target {
        pins,
        ports: Ports::default(),
        bridge_ports: Vec::new(),
        uplink: None,
        prog_ids,
        topology: t.clone(),
    };
    // XDP mode: the port programs are XDP ones.
    out.prog_ids.extend(links.iter().filter_map(|l| l.xdp_prog));
    for n in t.namespaces.iter().filter(|n| t.on_bridge(n)) {
        let port = Topology::host_ifname(n);
        let Some(i) = index(&port) else { continue };
        out.ports.names.insert(
            i,
            (port.clone(), format!("bridge port of namespace {}", n.name)),
        );
        for a in ipv4s(&n.addresses) {
            out.ports.by_addr.insert(a, i);
        }
        out.bridge_ports.push((n.name.clone(), port, i));
    }
    if let Some(u) = &t.uplink
        && let Some(i) = index(&u.ifname)
    {
        out.ports
            .names
            .insert(i, (u.ifname.clone(), "uplink (NAT)".into()));
        out.uplink = Some((u.ifname.clone(), i));
    }
    Ok(out)
}

/// Resolves `--port/--namespace/--uplink` to an ifindex.
fn selected(name: &str, t: &Target, a: &CaptureArgs) -> Result<Option<u32>, CaptureError> {
    let err = |what, value: &str, expected: Vec<String>| CaptureError::Selector {
        name: name.into(),
        what,
        value: value.into(),
        expected: format!("one of: {}", expected.join(", ")),
    };
    let ports = || t.bridge_ports.iter().map(|p| p.1.clone()).collect();
    let namespaces = || t.bridge_ports.iter().map(|p| p.0.clone()).collect();
    Ok(if let Some(p) = &a.port {
        let found = t.bridge_ports.iter().find(|b| &b.1 == p);
        Some(found.ok_or_else(|| err("--port", p, ports()))?.2)
    } else if let Some(ns) = &a.namespace {
        let found = t.bridge_ports.iter().find(|b| &b.0 == ns);
        Some(found.ok_or_else(|| err("--namespace", ns, namespaces()))?.2)
    } else if a.uplink {
        let u = t.uplink.as_ref().ok_or_else(|| CaptureError::Selector {
            name: name.into(),
            what: "--uplink",
            value: String::new(),
            expected: "available: the topology has no uplink".into(),
        })?;
        Some(u.1)
    } else {
        None
    })
}

/// Where the records go: text lines or a pcapng file.
enum Sink {
    Text {
        out: BufWriter<io::Stdout>,
        ether: bool,
    },
    Pcapng {
        w: pcapng::Writer<BufWriter<std::fs::File>>,
        /// ifindex -> pcapng interface id.
        ifaces: std::collections::HashMap<u32, u32>,
        snaplen: u32,
        path: PathBuf,
    },
}

impl Sink {
    fn open(a: &CaptureArgs, t: &Target, name: &str) -> Result<Sink, CaptureError> {
        let Some(path) = &a.write else {
            return Ok(Sink::Text {
                out: BufWriter::new(io::stdout()),
                ether: a.ether,
            });
        };
        let io_err = |source| CaptureError::Io {
            what: path.display().to_string(),
            source,
        };
        let f = std::fs::File::create(path).map_err(io_err)?;
        let mut w = pcapng::Writer::new(BufWriter::new(f), &format!("netbridge capture of {name}"))
            .map_err(io_err)?;
        let mut ifaces = std::collections::HashMap::new();
        let mut known: Vec<_> = t.ports.names.iter().collect();
        known.sort();
        for (i, (n, d)) in known {
            ifaces.insert(*i, w.add_interface(n, d, a.snaplen).map_err(io_err)?);
        }
        Ok(Sink::Pcapng {
            w,
            ifaces,
            snaplen: a.snaplen,
            path: path.clone(),
        })
    }

    fn write(&mut self, r: &Record, ts_ns: u64, ports: &Ports) -> io::Result<()> {
        match self {
            Sink::Text { out, ether } => writeln!(out, "{}", view::line(r, ts_ns, *ether)),
            Sink::Pcapng {
                w, ifaces, snaplen, ..
            } => {
                let id = match ifaces.get(&r.ifindex) {
                    Some(id) => *id,
                    None => {
                        let id = w.add_interface(&ports.name(r.ifindex), "", *snaplen)?;
                        ifaces.insert(r.ifindex, id);
                        id
                    }
                };
                w.packet(id, ts_ns, &r.data, r.len, r.dir, &r.comment())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Text { out, .. } => out.flush(),
            Sink::Pcapng { w, .. } => w.flush(),
        }
    }

    fn finish(self, wall_ns: u64, s: &Summary) -> Result<(), CaptureError> {
        match self {
            Sink::Text { mut out, .. } => match out.flush() {
                Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(CaptureError::Io {
                    what: "stdout".into(),
                    source: e,
                }),
                _ => Ok(()),
            },
            Sink::Pcapng { w, path, .. } => w
                .finish(wall_ns, s.lost(), &format!("netbridge: {}", s.text()))
                .map(drop)
                .map_err(|source| CaptureError::Io {
                    what: path.display().to_string(),
                    source,
                }),
        }
    }
}

fn wall_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64
}

/// Runs a capture of topology `name` until `count` packets, `duration`,
/// or SIGINT/SIGTERM; prints progress on stderr, returns the summary.
pub fn run(
    name: &str,
    a: &CaptureArgs,
    duration: Option<Duration>,
) -> Result<Summary, CaptureError> {
    if !(1..=SNAP_MAX as u32).contains(&a.snaplen) {
        return Err(CaptureError::Snaplen(a.snaplen));
    }
    if !(1..=1_000_000).contains(&a.rate) {
        return Err(CaptureError::Rate(a.rate));
    }
    let t = target(name)?;
    let filter = Filter {
        ifindex: selected(name, &t, a)?,
        class: match a.proto {
            None => class::ANY,
            Some(ProtoArg::Tcp) => class::TCP,
            Some(ProtoArg::Udp) => class::UDP,
            Some(ProtoArg::Icmp) => class::ICMP,
            Some(ProtoArg::Arp) => class::ARP,
        },
        host: a.host,
        port_number: a.port_number,
        drops_only: a.drops_only,
    };
    let mut session = Session::open(name, &t.pins, &t.prog_ids)?;
    let observed: Vec<String> = t
        .bridge_ports
        .iter()
        .filter(|p| filter.ifindex.is_none_or(|f| f == p.2))
        .map(|p| p.1.clone())
        .collect();
    session.observe(&t.pins, &topology::host_of(&t.topology), observed)?;
    let mut sink = Sink::open(a, &t, name)?;
    catch_signals();
    // bpf_ktime_get_ns() is CLOCK_MONOTONIC: shift it to wall-clock time.
    let offset = wall_ns().saturating_sub(crate::bpf::monotonic_ns());
    session.start(filter.kernel(0, a.snaplen, a.rate))?;
    eprintln!(
        "netbridge: capturing on {name} ({}), snaplen {}, at most {} events/s per CPU; {}",
        describe(&t, filter.ifindex),
        a.snaplen,
        a.rate,
        if duration.is_some() || a.count.is_some() {
            "stops by itself or on Ctrl-C"
        } else {
            "Ctrl-C to stop"
        }
    );
    let mut summary = Summary::default();
    let pumped = pump(
        &mut session,
        &mut sink,
        (&t.ports, &filter),
        (a.count, duration),
        offset,
        &mut summary,
    );
    session.stop()?;
    pumped.map_err(|source| CaptureError::Io {
        what: "writing the capture".into(),
        source,
    })?;
    let totals = session.totals()?;
    (summary.events, summary.lost_ring, summary.lost_rate) =
        (totals.sent, totals.lost_ring, totals.lost_rate);
    drop(session);
    sink.finish(wall_ns(), &summary)?;
    eprintln!("netbridge: {}", summary.text());
    Ok(summary)
}

fn describe(t: &Target, ifindex: Option<u32>) -> String {
    match ifindex {
        None => "every port and the uplink".into(),
        Some(i) => t.ports.name(i),
    }
}

/// Reads events into `s` until `count` packets, `duration` or a signal;
/// keeps the lease alive. A closed stdout (`| head`) ends it quietly.
fn pump(
    session: &mut Session,
    sink: &mut Sink,
    show: (&Ports, &Filter),
    until: (Option<u64>, Option<Duration>),
    offset: u64,
    s: &mut Summary,
) -> io::Result<()> {
    match pump_until(session, sink, show, until, offset, s) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}

fn pump_until(
    session: &mut Session,
    sink: &mut Sink,
    (ports, filter): (&Ports, &Filter),
    (count, duration): (Option<u64>, Option<Duration>),
    offset: u64,
    s: &mut Summary,
) -> io::Result<()> {
    let start = Instant::now();
    let done = |s: &Summary| count.is_some_and(|c| s.packets >= c);
    loop {
        let stopping =
            STOP.load(Ordering::Relaxed) || duration.is_some_and(|d| start.elapsed() >= d);
        if stopping {
            // Off first, then drain what is already in the ring.
            session.stop().map_err(io::Error::other)?;
        }
        while let Some(ev) = session.next_event() {
            if let Some(r) = view::render(&ev, ports, filter) {
                sink.write(&r, ev.ts_ns + offset, ports)?;
                s.packets += 1;
                if done(s) {
                    return Ok(());
                }
            }
        }
        sink.flush()?;
        if stopping {
            return Ok(());
        }
        if session.keep_alive().is_err() {
            return Err(io::Error::other("renewing the capture lease failed"));
        }
        session.wait(Duration::from_millis(100));
    }
}
