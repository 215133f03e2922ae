//! `cargo xtask soak`: a bounded, opt-in endurance run of the in-kernel
//! session expiry. A NAT lab with `max_sessions = 1000` and 1 s UDP
//! timeouts opens 200,000 sessions through SNAT (and some through a
//! forward), one request and one reply each, with no netbridge process but
//! a metrics server running. Every flow must be admitted and answered, the
//! kernel's high-water mark of live sessions must stay within the limit,
//! and the server's log must show every external port reused only after
//! its previous session's timeout. Every 10 s it samples the live count and
//! the metrics server's memory; at the end the sessions must drain to zero
//! by themselves. Results: target/soak/results.{txt,json}.
use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

const CLIENT_IP: &str = "192.168.70.1";
const UPLINK: &str = "203.0.113.1";
const SERVER_IP: &str = "203.0.113.2";
const MAX_SESSIONS: u64 = 1000;
/// SNAT flows to open (client -> server:7), and their rate.
const SNAT_FLOWS: u64 = 200_000;
const SNAT_RATE: u64 = 560;
/// Flows through the forward (server -> uplink:5300 -> client:5300).
const DNAT_RATE: u64 = 40;
/// The UDP timeout (s) of the lab, replied or not.
const TIMEOUT_SECS: u64 = 1;
/// Memory growth of the metrics server over the run that still counts as flat.
const RSS_SLACK_KB: u64 = 4096;

struct Soak {
    netbridge: PathBuf,
    prefix: String,
    file: PathBuf,
    children: Vec<Child>,
}

impl Soak {
    fn name(&self) -> String {
        format!("{}soak", self.prefix)
    }
    fn ns(&self, n: &str) -> String {
        format!("{}{n}", self.prefix)
    }
    fn command(&self, ns: &str, argv: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.ns(ns)))
            .arg("--")
            .args(argv)
            .stdin(Stdio::null());
        c
    }
    /// Starts `argv` in namespace `ns`; its stdout goes to `out` if given.
    fn spawn(&mut self, ns: &str, argv: &[&str], out: Option<&Path>) -> Result<u32> {
        let stdout = match out {
            Some(p) => Stdio::from(std::fs::File::create(p)?),
            None => Stdio::null(),
        };
        let child = self
            .command(ns, argv)
            .stdout(stdout)
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("spawning {argv:?} in {ns}"))?;
        let pid = child.id();
        self.children.push(child);
        Ok(pid)
    }
    fn nb(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.netbridge).args(args).output()?;
        if !out.status.success() {
            bail!(
                "netbridge {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
    fn json(&self, args: &[&str]) -> Result<Value> {
        let mut full = args.to_vec();
        let name = self.name();
        full.extend(["--json", "--name", &name]);
        Ok(serde_json::from_str(&self.nb(&full)?)?)
    }
}

impl Drop for Soak {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new(&self.netbridge)
            .args(["down", "--name", &self.name()])
            .stdout(Stdio::null())
            .status();
        let _ = std::fs::remove_file(&self.file);
    }
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The lab file: SNAT with a 2,000-port pool, a UDP forward, short timeouts.
fn lab_toml() -> String {
    crate::bench::nat_lab_toml(
        "soak",
        "192.168.70.254",
        CLIENT_IP,
        UPLINK,
        SERVER_IP,
        None,
        &format!(
            "max_sessions = {MAX_SESSIONS}\nnat_ports = \"20000-21999\"\n\
             timeouts = {{ tcp_syn = 2, tcp_established = 5, tcp_closing = 2, tcp_closed = 1, udp = {TIMEOUT_SECS}, udp_replied = {TIMEOUT_SECS}, icmp = 1 }}\n\
             [[forward]]\nproto = \"udp\"\nport = 5300\nto = \"client:5300\"\n"
        ),
    )
}

/// A flow generator's JSON summary (tests/scripts/udp_flows.py).
fn flows_result(path: &Path) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

pub fn run(root: &Path, netbridge: &Path, minutes: u32) -> Result<()> {
    let out_dir = root.join("target/soak");
    std::fs::create_dir_all(&out_dir)?;
    let scripts = root.join("tests/scripts");
    let script = |n: &str| scripts.join(n).display().to_string();
    let prefix = format!("nbs{:05}-", std::process::id() % 100_000);
    let file = out_dir.join(format!("{prefix}soak.toml"));
    std::fs::write(&file, lab_toml())?;
    let mut soak = Soak {
        netbridge: netbridge.to_path_buf(),
        prefix: prefix.clone(),
        file: file.clone(),
        children: Vec::new(),
    };
    soak.nb(&["up", "-f", file.to_str().unwrap(), "--prefix", &prefix])?;
    let name = soak.name();
    let cap = minutes as u64 * 60;
    let life = (cap + 60).to_string();
    // Servers: the upstream echo logs what it sees; the lab's answers the forward.
    let log = out_dir.join("echo.log");
    let log_s = log.display().to_string();
    let echo_log = script("udp_echo_log.py");
    soak.spawn(
        "server",
        &["python3", &echo_log, "serve", "7", &log_s, &life],
        None,
    )?;
    let echo = script("udp_echo.py");
    soak.spawn("client", &["python3", &echo, "5300", "lab", &life], None)?;
    // The only long-running netbridge process: a metrics server (no gc).
    let nb = netbridge.to_str().unwrap().to_string();
    let metrics = soak.spawn(
        "host",
        &[
            &nb,
            "metrics",
            "--name",
            &name,
            "--listen",
            "127.0.0.1:9479",
        ],
        None,
    )?;
    std::thread::sleep(Duration::from_secs(1));
    // Load: SNAT flows from the lab, forward flows from upstream, each
    // generator stopping by itself at its count or the time cap.
    let flows = script("udp_flows.py");
    let secs = SNAT_FLOWS / SNAT_RATE;
    let (snat_out, dnat_out) = (out_dir.join("snat.json"), out_dir.join("dnat.json"));
    let cap_s = cap.to_string();
    let args = |dst: &str, dport: &str, n: u64, rate: u64, ports: (&str, &str), tag: &str| {
        [
            dst,
            dport,
            &n.to_string(),
            &rate.to_string(),
            ports.0,
            ports.1,
            tag,
            &cap_s,
        ]
        .map(String::from)
    };
    let snat_args = args(
        SERVER_IP,
        "7",
        SNAT_FLOWS,
        SNAT_RATE,
        ("30000", "49999"),
        "s",
    );
    let dnat_args = args(
        UPLINK,
        "5300",
        DNAT_RATE * secs,
        DNAT_RATE,
        ("40000", "49999"),
        "d",
    );
    for (ns, a, out) in [
        ("client", &snat_args, &snat_out),
        ("server", &dnat_args, &dnat_out),
    ] {
        let _ = std::fs::remove_file(out);
        let mut argv = vec!["python3", flows.as_str()];
        argv.extend(a.iter().map(String::as_str));
        soak.spawn(ns, &argv, Some(out))?;
    }

    let start = Instant::now();
    let mut report = String::new();
    let mut samples = Vec::new();
    let mut rss_after_warmup: Option<u64> = None;
    eprintln!(
        "soak: {SNAT_FLOWS} SNAT flows at {SNAT_RATE}/s and {DNAT_RATE}/s through a forward on {name} \
         (max_sessions {MAX_SESSIONS}, {TIMEOUT_SECS} s timeouts, no gc; cap {minutes} min)"
    );
    while flows_result(&snat_out).is_none() || flows_result(&dnat_out).is_none() {
        if start.elapsed().as_secs() > cap + 30 {
            bail!("soak: the load generators did not finish within the cap");
        }
        std::thread::sleep(Duration::from_secs(10));
        let ct = soak.json(&["conntrack"])?;
        let stats = soak.json(&["stats"])?;
        let m = rss_kb(metrics);
        // Scrape the metrics endpoint too, so the server does real work.
        let _ = soak
            .command("host", &["curl", "-s", "-o", "/dev/null", "-m", "2"])
            .arg("http://127.0.0.1:9479/metrics")
            .status();
        if rss_after_warmup.is_none() && start.elapsed().as_secs() >= 60 {
            rss_after_warmup = Some(m);
        }
        let created = stats["nat"]["counters"]["snat_new"].as_u64().unwrap_or(0)
            + stats["nat"]["counters"]["dnat_new"].as_u64().unwrap_or(0);
        let line = format!(
            "{:>4.0}s  sessions created {created:>7}  live {:>4}  highest {:>4}  sweeps {:>5}  rss metrics {m} kB",
            start.elapsed().as_secs_f64(),
            ct["live_sessions"],
            ct["high_water_sessions"],
            ct["sweeps"],
        );
        eprintln!("soak: {line}");
        let _ = writeln!(report, "{line}");
        samples.push(
            json!({"secs": start.elapsed().as_secs(), "created": created,
            "live_sessions": ct["live_sessions"], "high_water": ct["high_water_sessions"],
            "sweeps": ct["sweeps"], "rss_metrics_kb": m}),
        );
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (snat, dnat) = (
        flows_result(&snat_out).unwrap(),
        flows_result(&dnat_out).unwrap(),
    );
    // With the load stopped, the sessions must expire by themselves.
    let drained = {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ct = soak.json(&["conntrack"])?;
            if ct["live_sessions"] == 0 || Instant::now() > deadline {
                break ct;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    };
    let stats = soak.json(&["stats"])?;
    let counter = |k: &str| stats["nat"]["counters"][k].as_u64().unwrap_or(0);
    let drop = |k: &str| stats["drops"][k].as_u64().unwrap_or(0);
    // The server's view of port reuse (its log is flushed when idle).
    std::thread::sleep(Duration::from_secs(2));
    let check = soak
        .command(
            "server",
            &[
                "python3",
                &echo_log,
                "check",
                &log_s,
                UPLINK,
                &TIMEOUT_SECS.to_string(),
            ],
        )
        .output()?;
    let reuse: Value = serde_json::from_slice(&check.stdout)
        .with_context(|| format!("port reuse check: {check:?}"))?;
    let (m0, m_end) = (rss_after_warmup.unwrap_or(rss_kb(metrics)), rss_kb(metrics));
    let high = drained["high_water_sessions"].as_u64().unwrap_or(u64::MAX);
    let peak_sampled = samples
        .iter()
        .filter_map(|s| s["live_sessions"].as_u64())
        .max()
        .unwrap_or(0);
    let _ = writeln!(
        report,
        "after {elapsed:.0} s: SNAT flows {} sent, {} answered; forward flows {} sent, {} answered\n\
         sessions created {} (snat {}, dnat {}); removed by the sweep {}, on lookup {}\n\
         drops: nat_table_full {}, nat_port_exhausted {}, nat_expired {}\n\
         live sessions: highest {high} (kernel high-water mark; sampled peak {peak_sampled}), limit {MAX_SESSIONS}; \
         after the load {} (sweeps {})\n\
         port reuse seen by the server: {} reuses over {} ports, shortest gap {:.3} s (timeout {TIMEOUT_SECS} s), violations {}\n\
         rss metrics {m0} -> {m_end} kB (after the first minute -> end)",
        snat["sent"],
        snat["answered"],
        dnat["sent"],
        dnat["answered"],
        counter("snat_new") + counter("dnat_new"),
        counter("snat_new"),
        counter("dnat_new"),
        counter("expired_sweep"),
        counter("expired_lookup"),
        drop("nat_table_full"),
        drop("nat_port_exhausted"),
        drop("nat_expired"),
        drained["live_sessions"],
        drained["sweeps"],
        reuse["reuses"],
        reuse["ports"],
        reuse["min_gap_secs"].as_f64().unwrap_or(f64::NAN),
        reuse["violations"],
    );
    print!("{report}");
    std::fs::write(out_dir.join("results.txt"), &report)?;
    std::fs::write(
        out_dir.join("results.json"),
        serde_json::to_string_pretty(&json!({
            "secs": elapsed, "max_sessions": MAX_SESSIONS, "timeout_secs": TIMEOUT_SECS,
            "snat_flows": snat, "forward_flows": dnat, "counters": stats["nat"]["counters"],
            "drops": stats["drops"], "high_water_sessions": high,
            "final_live_sessions": drained["live_sessions"], "sweeps": drained["sweeps"],
            "port_reuse": reuse, "samples": samples, "rss_metrics_kb": [m0, m_end],
        }))?,
    )?;
    let mut failures = Vec::new();
    for (what, r) in [("SNAT", &snat), ("forward", &dnat)] {
        if r["sent"] != r["answered"] || r["sent"].as_u64().unwrap_or(0) == 0 {
            failures.push(format!("{what} flows not all answered: {r}"));
        }
    }
    if counter("snat_new") < SNAT_FLOWS {
        failures.push(format!(
            "only {} SNAT sessions created",
            counter("snat_new")
        ));
    }
    if drop("nat_table_full") + drop("nat_port_exhausted") > 0 {
        failures.push("new flows were dropped".into());
    }
    if high > MAX_SESSIONS {
        failures.push(format!("live sessions reached {high} > {MAX_SESSIONS}"));
    }
    if reuse["violations"] != 0 || reuse["reuses"].as_u64().unwrap_or(0) == 0 {
        failures.push(format!("port reuse: {reuse}"));
    }
    if drained["live_sessions"] != 0 {
        failures.push(format!(
            "sessions did not drain: {}",
            drained["live_sessions"]
        ));
    }
    if m_end > m0 + RSS_SLACK_KB {
        failures.push(format!("metrics server memory grew {m0} -> {m_end} kB"));
    }
    if !failures.is_empty() {
        bail!("soak failed:\n  {}", failures.join("\n  "));
    }
    eprintln!("soak: ok; wrote {}/results.{{txt,json}}", out_dir.display());
    Ok(())
}
