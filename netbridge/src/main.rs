//! netbridge CLI.
use std::{
    ffi::CString,
    os::fd::AsFd,
    path::PathBuf,
    process::{Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use netbridge::{
    config::{Topology, ipv4s},
    netns::{self, Netns},
    state::State,
    stats,
    topology::{self, host_has_link},
};

#[derive(Parser)]
#[command(
    version,
    about = "Namespaces, veths and a bridge from one file, with an eBPF datapath"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct Which {
    /// Topology file (TOML). Without it: the embedded default lab.
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// A topology brought up earlier, by name (its journaled copy is used).
    #[arg(long, conflicts_with = "file")]
    name: Option<String>,
    /// Prefix the topology's name and every namespace name (run several
    /// copies of one file side by side).
    #[arg(long, conflicts_with = "name")]
    prefix: Option<String>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create (or repair) everything the topology describes.
    Up {
        #[command(flatten)]
        which: Which,
        /// Print the list of changes as JSON.
        #[arg(long)]
        json: bool,
        /// Replace the running TC programs with this binary's (upgrade):
        /// no gap, pinned maps, conntrack and counters kept.
        #[arg(long)]
        reload: bool,
        /// After `up`, stay in the foreground printing the datapath's log
        /// events (new NAT sessions, drops) at this level (error..trace).
        #[arg(long)]
        log_level: Option<log::LevelFilter>,
        /// With --log-level: stop after this long (default: Ctrl-C).
        #[arg(long, value_parser = parse_duration, requires = "log_level")]
        log_duration: Option<Duration>,
    },
    /// Print the datapath's log events (new NAT sessions, drops; rate-limited
    /// in BPF) of a running topology until Ctrl-C.
    Log {
        #[command(flatten)]
        which: Which,
        #[arg(long, default_value = "info")]
        level: log::LevelFilter,
        /// Stop after this long.
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
    },
    /// Remove exactly what `up` created.
    Down {
        #[command(flatten)]
        which: Which,
    },
    /// Show namespaces, links, addresses and attached programs.
    Status {
        #[command(flatten)]
        which: Which,
        #[arg(long)]
        json: bool,
    },
    /// Show datapath counters read from the BPF maps.
    Stats {
        #[command(flatten)]
        which: Which,
        /// Machine-readable output (one JSON object per refresh with --watch).
        #[arg(long)]
        json: bool,
        /// Refresh in place like `top`, with rates (pps, bit/s).
        #[arg(long)]
        watch: bool,
        /// Refresh interval for --watch, sampling time for --programs (e.g. 1s, 500ms).
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        interval: Duration,
        /// Stop --watch after this many refreshes.
        #[arg(long)]
        count: Option<u64>,
        /// Per-program run count and ns/run (kernel BPF statistics,
        /// enabled only while sampling over --interval).
        #[arg(long, conflicts_with = "watch")]
        programs: bool,
    },
    /// Serve the counters as Prometheus metrics on http://LISTEN/metrics.
    Metrics {
        #[command(flatten)]
        which: Which,
        #[arg(long, default_value = "127.0.0.1:9469")]
        listen: std::net::SocketAddr,
        /// Exit after serving this many requests (bounded runs, tests).
        #[arg(long)]
        max_requests: Option<u64>,
    },
    /// List the MAC addresses the BPF datapath learned (port, age).
    Fdb {
        #[command(flatten)]
        which: Which,
        #[arg(long)]
        json: bool,
    },
    /// List NAT sessions (like `conntrack -L`) and the port-pool use.
    Conntrack {
        #[command(flatten)]
        which: Which,
        #[arg(long)]
        json: bool,
    },
    /// Remove NAT sessions past their timeout (once, or every --every).
    Gc {
        #[command(flatten)]
        which: Which,
        /// Keep running, collecting at this interval (e.g. 10s).
        #[arg(long, value_parser = parse_duration)]
        every: Option<Duration>,
        /// With --every: stop after this many rounds.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Add, remove or list port forwards of a running topology (maps only,
    /// no reload; affected sessions are purged).
    Forward {
        #[command(subcommand)]
        op: ForwardOp,
    },
    /// Check a topology file without changing anything.
    Check {
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
    },
    /// Run a command inside a namespace (like `ip netns exec`).
    Exec {
        netns: String,
        #[arg(trailing_var_arg = true, required = true, allow_hyphen_values = true)]
        cmd: Vec<String>,
    },
    /// Bring up the default lab, send traffic, show counters, tear down.
    Demo {
        /// How long to run traffic (e.g. 5s, 1m). Without it: until Ctrl-C.
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
        /// Prefix the lab's names (run beside another copy).
        #[arg(long)]
        prefix: Option<String>,
    },
}

#[derive(Subcommand)]
enum ForwardOp {
    /// Forward PROTO PORT (or "first-last") on the uplink address to NS:PORT.
    Add {
        #[command(flatten)]
        which: Which,
        proto: String,
        port: String,
        to: String,
    },
    /// Remove the forward of PROTO PORT and purge its sessions.
    Del {
        #[command(flatten)]
        which: Which,
        proto: String,
        port: String,
    },
    /// List forwards and their hits (new sessions).
    List {
        #[command(flatten)]
        which: Which,
        #[arg(long)]
        json: bool,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (try 5s, 1m)"))?;
    if !(0.0..=86400.0).contains(&v) {
        return Err(format!("duration {s:?} out of range"));
    }
    Ok(Duration::from_secs_f64(v * mult))
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netbridge: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Up {
            which,
            json,
            reload,
            log_level,
            log_duration,
        } => {
            let t = load(&which)?;
            let report = topology::up_with(&t, topology::UpOptions { reload })
                .with_context(|| format!("up {}", t.name))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else if report.changes.is_empty() {
                println!("{}: up to date, no changes", t.name);
            } else {
                for c in &report.changes {
                    println!("  {c}");
                }
                println!("{}: up ({} changes)", t.name, report.changes.len());
            }
            if let Some(level) = log_level {
                follow_logs(&t.name, level, log_duration)?;
            }
            Ok(())
        }
        Cmd::Log {
            which,
            level,
            duration,
        } => follow_logs(&name_of(&which)?, level, duration),
        Cmd::Down { which } => {
            let name = name_of(&which)?;
            let report = topology::down(&name)?;
            for d in &report.done {
                println!("  {d}");
            }
            println!("{name}: down");
            Ok(())
        }
        Cmd::Status { which, json } => {
            let t = load(&which)?;
            let st = topology::status(&t)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
                return Ok(());
            }
            println!("topology {}", t.name);
            for ns in st {
                if !ns.exists {
                    println!("namespace {}: missing", ns.name);
                    continue;
                }
                println!("namespace {}", ns.name);
                for l in ns.links {
                    println!(
                        "  {:<15} {:<7} {:<4} mtu {:<5} {}{}{}",
                        l.name,
                        l.kind.as_deref().unwrap_or("-"),
                        if l.up { "UP" } else { "DOWN" },
                        l.mtu,
                        l.master.map(|m| format!("master {m} ")).unwrap_or_default(),
                        l.addresses.join(" "),
                        if l.programs.is_empty() {
                            String::new()
                        } else {
                            format!("  bpf: {}", l.programs.join(","))
                        }
                    );
                }
            }
            Ok(())
        }
        Cmd::Stats {
            which,
            json,
            interval,
            programs: true,
            ..
        } => programs_cmd(&which, json, interval),
        Cmd::Stats {
            which,
            json,
            watch,
            interval,
            count,
            programs: false,
        } => stats_cmd(&which, json, watch, interval, count),
        Cmd::Metrics {
            which,
            listen,
            max_requests,
        } => {
            let source = stats::Source::open(&name_of(&which)?)?;
            stats::serve_metrics(source, listen, max_requests)
                .with_context(|| format!("metrics server on {listen}"))
        }
        Cmd::Fdb { which, json } => fdb(&which, json),
        Cmd::Conntrack { which, json } => conntrack(&which, json),
        Cmd::Gc {
            which,
            every,
            count,
        } => gc(&which, every, count),
        Cmd::Forward { op } => forward(op),
        Cmd::Check { file } => {
            let t = load(&Which {
                file,
                name: None,
                prefix: None,
            })?;
            println!(
                "{}: ok ({} namespaces, {} links, {} forwards)",
                t.name,
                t.namespaces.len(),
                t.links.len(),
                t.forwards.len()
            );
            Ok(())
        }
        Cmd::Exec { netns, cmd } => exec(&netns, &cmd),
        Cmd::Demo { duration, prefix } => demo(duration, prefix),
    }
}

/// Parses and validates the topology named by `which`.
fn load(which: &Which) -> Result<Topology> {
    if let Some(name) = &which.name {
        let st = State::load(name)?.with_context(|| format!("no topology named {name:?} is up"))?;
        return st
            .topology
            .with_context(|| format!("state of {name:?} has no topology recorded"));
    }
    let (text, file) = match &which.file {
        Some(path) => (
            std::fs::read_to_string(path).map_err(|source| {
                netbridge::config::ConfigError::Read {
                    file: path.display().to_string(),
                    source,
                }
            })?,
            path.display().to_string(),
        ),
        None => (
            netbridge::config::DEFAULT_LAB.to_string(),
            "<default lab>".to_string(),
        ),
    };
    // The uplink check needs the host namespace, which the file names:
    // parse once without it, then validate for real.
    let mut t = Topology::parse(&text, &file, &|_| true)?;
    if let Some(p) = &which.prefix {
        t = topology::prefixed(&t, p, &file)?;
    }
    let host_ns = t.host_netns.clone();
    let text = toml::to_string(&t).context("re-serializing the topology")?;
    Ok(Topology::parse(&text, &file, &|ifname| {
        host_has_link(host_ns.as_deref(), ifname)
    })?)
}

fn name_of(which: &Which) -> Result<String> {
    Ok(match (&which.name, &which.file) {
        (Some(n), _) => n.clone(),
        (None, Some(_)) => load(which)?.name,
        (None, None) => format!(
            "{}{}",
            which.prefix.as_deref().unwrap_or(""),
            Topology::default_lab().name
        ),
    })
}

fn exec(ns: &str, cmd: &[String]) -> Result<()> {
    if !netns::exists(ns) {
        bail!("network namespace {ns:?} does not exist (see `ip netns list`)");
    }
    let f = netns::open(&Netns::named(ns))?;
    // Single-threaded here, so switching this process is safe. Like
    // `ip netns exec`, give the command its own /sys for the new namespace.
    nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
    remount_sys();
    let argv: Vec<CString> = cmd
        .iter()
        .map(|a| CString::new(a.as_str()))
        .collect::<Result<_, _>>()
        .context("argument contains a NUL byte")?;
    let err = nix::unistd::execvp(&argv[0], &argv).unwrap_err();
    bail!("exec {}: {err}", cmd[0])
}

fn remount_sys() {
    use nix::mount::{MsFlags, mount, umount2};
    if nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).is_err() {
        return;
    }
    let _ = mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    );
    let _ = umount2("/sys", nix::mount::MntFlags::MNT_DETACH);
    let _ = mount(
        Some("sysfs"),
        "/sys",
        Some("sysfs"),
        MsFlags::empty(),
        None::<&str>,
    );
}

/// Follows the aya-log ring buffers of the programs attached for `name`
/// (one reader per distinct buffer: programs of one load share it).
fn follow_logs(name: &str, level: log::LevelFilter, duration: Option<Duration>) -> Result<()> {
    let st = State::load(name)?.with_context(|| format!("no topology named {name:?} is up"))?;
    let t = st
        .topology
        .with_context(|| format!("state of {name:?} has no topology recorded"))?;
    let mut ifnames: Vec<String> = t
        .namespaces
        .iter()
        .filter(|n| t.on_bridge(n))
        .map(Topology::host_ifname)
        .collect();
    ifnames.extend(t.uplink.as_ref().map(|u| u.ifname.clone()));
    let ids: Vec<u32> = netns::run_blocking_in(&topology::host_of(&t), move || {
        ifnames
            .iter()
            .flat_map(|i| netbridge::bpf::attached_tc_ids(i))
            .collect()
    })?;
    let mut seen = std::collections::HashSet::new();
    let mut loggers = Vec::new();
    for info in aya::programs::loaded_programs().flatten() {
        if !ids.contains(&info.id()) {
            continue;
        }
        for m in info.map_ids().ok().flatten().unwrap_or_default() {
            let is_log = aya::maps::MapInfo::from_id(m)
                .ok()
                .is_some_and(|mi| mi.name_as_str() == Some("AYA_LOGS"));
            if is_log && seen.insert(m) {
                loggers.push(
                    aya_log::EbpfLogger::init_from_id_with_logger(info.id(), DatapathLog { level })
                        .with_context(|| {
                            format!("reading the log buffer of program {}", info.id())
                        })?,
                );
            }
        }
    }
    if loggers.is_empty() {
        bail!("{name}: no netbridge program with a log buffer is attached");
    }
    eprintln!(
        "netbridge: following the datapath log of {name} ({} buffer(s); at most 10 events of a kind per CPU per second){}",
        loggers.len(),
        if duration.is_none() {
            ", Ctrl-C to stop"
        } else {
            ""
        }
    );
    use std::io::Write;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    ctrlc_flag(stop.clone());
    let start = Instant::now();
    loop {
        for l in &mut loggers {
            l.flush();
        }
        let _ = std::io::stdout().flush();
        if stop.load(std::sync::atomic::Ordering::Relaxed)
            || duration.is_some_and(|d| start.elapsed() >= d)
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Prints datapath log records (from aya-log) to stdout with a UTC time,
/// naming drop reasons (the programs send only the code).
struct DatapathLog {
    level: log::LevelFilter,
}

impl log::Log for DatapathLog {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= self.level
    }

    fn log(&self, r: &log::Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let mut msg = r.args().to_string();
        if let Some(rest) = msg.strip_prefix("drop reason ") {
            let code: Option<usize> = rest.split_whitespace().next().and_then(|c| c.parse().ok());
            if let Some(name) = code.and_then(|c| netbridge_common::drop_reason::NAMES.get(c)) {
                msg = format!("drop {name} (reason {rest}");
                msg = msg.replacen(" on ", ") on ", 1);
            }
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let (s, ms) = (now.as_secs() % 86400, now.subsec_millis());
        println!(
            "{:02}:{:02}:{:02}.{ms:03} {:<5} {msg}",
            s / 3600,
            s / 60 % 60,
            s % 60,
            r.level()
        );
    }

    fn flush(&self) {}
}

fn conntrack(which: &Which, json: bool) -> Result<()> {
    let source = stats::Source::open(&name_of(which)?)?;
    let ct = source.maps.nat.conntrack(&source.topology.nat_timeouts())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&ct)?);
        return Ok(());
    }
    println!(
        "{:<5} {:<8} {:<12} {:<21} {:<21} {:<21} {:>7} {:>8}",
        "proto", "kind", "state", "inside", "external", "remote", "idle", "expires"
    );
    for s in &ct.sessions {
        println!(
            "{:<5} {:<8} {:<12} {:<21} {:<21} {:<21} {:>6.0}s {:>7.0}s",
            s.proto,
            s.kind,
            s.state,
            s.inside,
            s.external,
            s.remote,
            s.idle_secs,
            s.expires_in_secs
        );
    }
    println!(
        "\nsessions: {} listed, {} counted live, limit {}",
        ct.sessions.len(),
        ct.live_sessions,
        ct.max_sessions
    );
    for p in &ct.pools {
        println!(
            "port pool {}: {} of {} in use ({:.1}%)",
            p.proto,
            p.ports_in_use,
            p.pool_size,
            100.0 * p.ports_in_use as f64 / p.pool_size.max(1) as f64
        );
    }
    Ok(())
}

fn gc(which: &Which, every: Option<Duration>, count: Option<u64>) -> Result<()> {
    let mut source = stats::Source::open(&name_of(which)?)?;
    let timeouts = source.topology.nat_timeouts();
    let mut rounds = 0u64;
    loop {
        let n = source.maps.nat.gc(&timeouts)?;
        println!(
            "gc: removed {n} expired sessions, {} live",
            source.maps.nat.live_sessions()
        );
        rounds += 1;
        match every {
            Some(d) if count.is_none_or(|c| rounds < c) => std::thread::sleep(d),
            _ => return Ok(()),
        }
    }
}

fn forward(op: ForwardOp) -> Result<()> {
    use netbridge::config::{Forward, PortSpec};
    let (which, proto, port, to) = match &op {
        ForwardOp::List { which, json } => return forward_list(which, *json),
        ForwardOp::Add {
            which,
            proto,
            port,
            to,
        } => (which, proto, port, Some(to)),
        ForwardOp::Del { which, proto, port } => (which, proto, port, None),
    };
    let name = name_of(which)?;
    let mut st =
        State::load(&name)?.with_context(|| format!("no topology named {name:?} is up"))?;
    let mut t = st
        .topology
        .clone()
        .with_context(|| format!("state of {name:?} has no topology recorded"))?;
    let p: netbridge::config::Proto = match proto.as_str() {
        "tcp" => netbridge::config::Proto::Tcp,
        "udp" => netbridge::config::Proto::Udp,
        other => bail!("protocol {other:?}: must be tcp or udp"),
    };
    match to {
        Some(to) => t.forwards.push(Forward {
            proto: p,
            port: PortSpec { raw: port.clone() },
            to: to.clone(),
        }),
        None => {
            let before = t.forwards.len();
            t.forwards
                .retain(|f| !(f.proto == p && f.port.raw == *port));
            if t.forwards.len() == before {
                bail!("{name}: no {proto} forward on port {port:?}");
            }
        }
    }
    // Validate exactly as a file would be (clear errors, nothing changed).
    let host_ns = t.host_netns.clone();
    let text = toml::to_string(&t).context("re-serializing the topology")?;
    let t = Topology::parse(
        &text,
        &format!(
            "<{name} + forward {op_name}>",
            op_name = if to.is_some() { "add" } else { "del" }
        ),
        &|ifname| host_has_link(host_ns.as_deref(), ifname),
    )?;
    let mut source = stats::Source::open(&name)?;
    let active = source.maps.nat.config().flags != 0;
    if !active {
        // No NAT programs on the uplink yet: a full (idempotent) up attaches them.
        drop(source);
        let report = topology::up(&t).with_context(|| format!("up {name}"))?;
        for c in &report.changes {
            println!("  {c}");
        }
        return Ok(());
    }
    let forwards = topology::forward_targets(&t);
    for c in source.maps.nat.set_forwards(forwards)? {
        println!("  {c}");
    }
    st.topology = Some(t);
    st.save()?;
    Ok(())
}

fn forward_list(which: &Which, json: bool) -> Result<()> {
    let source = stats::Source::open(&name_of(which)?)?;
    let rows = source.maps.nat.forward_uses()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!("{:<5} {:<12} {:<21} {:>8}", "proto", "port", "to", "hits");
    for r in rows {
        println!("{:<5} {:<12} {:<21} {:>8}", r.proto, r.port, r.to, r.hits);
    }
    Ok(())
}

fn fdb(which: &Which, json: bool) -> Result<()> {
    let source = stats::Source::open(&name_of(which)?)?;
    let rows = source.fdb()?;
    if json {
        let v: Vec<_> = rows
            .iter()
            .map(|(r, port)| {
                serde_json::json!({"mac": r.mac, "vlan": r.vlan, "port": port, "ifindex": r.ifindex,
                                   "age_secs": r.age_secs, "expired": r.expired})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("{:<17} {:>4} {:<15} {:>8}", "mac", "vlan", "port", "age");
    for (r, port) in rows {
        println!(
            "{:<17} {:>4} {:<15} {:>7.1}s{}",
            r.mac,
            r.vlan,
            port,
            r.age_secs,
            if r.expired { " (expired)" } else { "" }
        );
    }
    Ok(())
}

/// `stats --programs`: the topology's programs sampled over `interval`.
fn programs_cmd(which: &Which, json: bool, interval: Duration) -> Result<()> {
    let name = name_of(which)?;
    let st = State::load(&name)?.with_context(|| format!("no topology named {name:?} is up"))?;
    let dir = st
        .pin_dir
        .with_context(|| format!("topology {name} has no datapath loaded"))?;
    let rates = netbridge::progstats::sample(&netbridge::bpf::PinDir(dir), interval)?;
    if json {
        let v = serde_json::json!({"topology": name, "interval_secs": interval.as_secs_f64(), "programs": rates});
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", netbridge::progstats::table(&rates, interval));
    }
    Ok(())
}

fn stats_cmd(
    which: &Which,
    json: bool,
    watch: bool,
    interval: Duration,
    count: Option<u64>,
) -> Result<()> {
    let source = stats::Source::open(&name_of(which)?)?;
    if !watch {
        let snap = source.snapshot()?;
        if json {
            println!("{}", serde_json::to_string_pretty(&snap.json(None))?);
        } else {
            print!("{}", snap.table(None));
        }
        return Ok(());
    }
    // Refresh in place like `top`: counters, and rates since the last frame.
    let mut prev: Option<stats::Snapshot> = None;
    let mut n = 0u64;
    loop {
        let snap = source.snapshot()?;
        if json {
            println!("{}", serde_json::to_string(&snap.json(prev.as_ref()))?);
        } else {
            print!("\x1b[2J\x1b[H");
            println!(
                "netbridge stats: {} (every {:.1}s, Ctrl-C to quit)\n",
                snap.topology,
                interval.as_secs_f64()
            );
            print!("{}", snap.table(prev.as_ref()));
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
        prev = Some(snap);
        n += 1;
        if count.is_some_and(|c| n >= c) {
            return Ok(());
        }
        std::thread::sleep(interval);
    }
}

/// Tears the demo lab down on every exit path.
struct DemoGuard {
    name: String,
    children: Vec<std::process::Child>,
}

impl Drop for DemoGuard {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        match topology::down(&self.name) {
            Ok(_) => println!("demo: lab {} torn down", self.name),
            Err(e) => eprintln!("demo: teardown of {} failed: {e}", self.name),
        }
    }
}

fn in_ns(ns: &str, argv: &[&str]) -> Command {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("netbridge"));
    let mut c = Command::new(exe);
    c.arg("exec").arg(ns).arg("--").args(argv);
    c
}

fn demo(duration: Option<Duration>, prefix: Option<String>) -> Result<()> {
    use std::io::IsTerminal;
    if !nix::unistd::Uid::effective().is_root() {
        bail!("the demo creates namespaces and loads eBPF programs: run it as root");
    }
    let mut t = Topology::default_lab();
    if let Some(p) = &prefix {
        t = topology::prefixed(&t, p, "<default lab>")?;
    }
    println!(
        "demo: bringing up lab {:?}: its own host namespace {}, a simulated upstream, never the machine's root namespace",
        t.name,
        t.host_netns.as_deref().unwrap_or("-")
    );
    let mut guard = DemoGuard {
        name: t.name.clone(),
        children: Vec::new(),
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    ctrlc_flag(stop.clone());
    let report = topology::up(&t)?;
    println!("demo: up ({} changes)", report.changes.len());
    let bridged: Vec<_> = t.namespaces.iter().filter(|n| t.on_bridge(n)).collect();
    let first_v4 = |addrs: &[ipnet::IpNet]| ipv4s(addrs).next().map(|a| a.to_string());
    // An HTTP server in the target of the first TCP forward (else the last
    // bridged namespace); fetched from the first bridged namespace directly
    // and from upstream through the forward (DNAT).
    let forward = t
        .forwards
        .iter()
        .find(|f| f.proto == netbridge::config::Proto::Tcp);
    let server = forward
        .and_then(|f| bridged.iter().find(|n| n.name == f.target().0))
        .or(bridged.last())
        .context("default lab has no bridged namespace")?;
    let server_port = forward.map_or(8000, |f| f.target().1).to_string();
    // The upstream end of the uplink: a namespace with an address there.
    let upstream = t.uplink_ends().and_then(|(near, far)| {
        Some((
            far.netns.clone()?,
            first_v4(&far.addresses)?,
            first_v4(&near.addresses)?,
        ))
    });
    let server_ip = first_v4(&server.addresses).context("server namespace has no IPv4 address")?;
    // --bind 0.0.0.0: with a specific address http.server does a reverse DNS
    // lookup at start, which would hang (and send a query) inside the lab.
    let child = in_ns(
        &server.name,
        &[
            "python3",
            "-m",
            "http.server",
            &server_port,
            "--bind",
            "0.0.0.0",
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .context("starting python3 -m http.server")?;
    guard.children.push(child);
    // A web server "on the internet" for the lab to reach through SNAT.
    if let Some((up_ns, _, _)) = &upstream {
        let child = in_ns(
            up_ns,
            &["python3", "-m", "http.server", "80", "--bind", "0.0.0.0"],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting python3 -m http.server upstream")?;
        guard.children.push(child);
    }
    std::thread::sleep(Duration::from_millis(700));
    let curl = |ns: &str, url: &str| {
        in_ns(
            ns,
            &[
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-m",
                "2",
                url,
            ],
        )
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
    };
    let (mut dnat_ok, mut snat_ok) = (0u32, 0u32);

    let source = stats::Source::open(&t.name)?;
    let tty = std::io::stdout().is_terminal();
    let start = Instant::now();
    let mut prev: Option<stats::Snapshot> = None;
    let mut round = 0u32;
    let mut http_ok = 0u32;
    loop {
        round += 1;
        // Every pair: the lab routes between its /24s through the gateway
        // (kernel), while frames between on-link neighbours take the BPF
        // fast path.
        for a in &bridged {
            for b in &bridged {
                if a.name != b.name
                    && let Some(ip) = first_v4(&b.addresses)
                {
                    let _ = in_ns(
                        &a.name,
                        &["ping", "-c", "2", "-i", "0.2", "-W", "1", "-q", &ip],
                    )
                    .stdout(Stdio::null())
                    .status();
                }
            }
        }
        let url = format!("http://{server_ip}:{server_port}/");
        let fetched = curl(&bridged[0].name, &url);
        http_ok += u32::from(fetched == "200");
        let mut nat_line = String::new();
        if let Some((up_ns, up_ip, uplink_ip)) = &upstream {
            // SNAT: the lab reaches the upstream server as the uplink address.
            let s = curl(&bridged[0].name, &format!("http://{up_ip}/"));
            snat_ok += u32::from(s == "200");
            nat_line = format!(
                "\nNAT: HTTP {s} from {} -> http://{up_ip}/ (masquerade)",
                bridged[0].name
            );
            if let Some(f) = forward {
                let d = curl(up_ns, &format!("http://{uplink_ip}:{}/", f.port));
                dnat_ok += u32::from(d == "200");
                nat_line += &format!(
                    "; HTTP {d} from {up_ns} -> http://{uplink_ip}:{} (forward to {})",
                    f.port, f.to
                );
            }
        }
        let snap = source.snapshot()?;
        if tty {
            print!("\x1b[2J\x1b[H");
        }
        println!(
            "netbridge demo: lab {} | round {round} | {:.0}s | HTTP {fetched} from {} -> {url}{nat_line}",
            t.name,
            start.elapsed().as_secs_f64(),
            bridged[0].name,
        );
        println!(
            "per-port counters from the BPF maps (TC ingress of each bridge port; redirect = BPF fast path, kernel = Linux bridge):\n"
        );
        print!("{}", snap.table(prev.as_ref()));
        prev = Some(snap);
        let done = duration.is_some_and(|d| start.elapsed() >= d);
        if done || stop.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        if tty {
            println!("\n(Ctrl-C to stop and tear down)");
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    if let Some(last) = &prev {
        let (redirected, kernel): (u64, u64) = last.ports.iter().fold((0, 0), |(r, k), p| {
            (r + p.stats.rx_redirected, k + p.stats.rx_fallback)
        });
        println!(
            "\ndemo summary: {round} rounds, HTTP 200 in {http_ok}; {redirected} frames took the BPF fast path, {kernel} went to the kernel bridge"
        );
        if let Some(n) = &last.nat {
            let c = |k: &str| n.counters.get(k).copied().unwrap_or(0);
            println!(
                "demo nat: HTTP 200 through SNAT in {snat_ok}, through DNAT in {dnat_ok}; {} SNAT and {} DNAT sessions opened, {} packets translated out, {} in",
                c("snat_new"),
                c("dnat_new"),
                c("translated_out"),
                c("translated_in")
            );
        }
    }
    drop(guard);
    Ok(())
}

/// Sets `flag` on SIGINT/SIGTERM instead of dying, so the lab is torn down.
fn ctrlc_flag(flag: std::sync::Arc<std::sync::atomic::AtomicBool>) {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        if let Ok(rt) = rt {
            rt.block_on(async {
                let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
                }
            });
            flag.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    });
}
