//! `cargo xtask soak`: a bounded, opt-in endurance run. A NAT lab under
//! steady load (new UDP sessions through SNAT, new TCP connections through
//! DNAT) for N minutes, with the long-running userspace pieces running
//! (`netbridge gc --every`, `netbridge metrics`). Every 30 s it samples the
//! session count and the loaders' memory; at the end, after the load stops,
//! the sessions must return to the baseline once their (short) timeouts pass
//! and the loaders' memory must have stayed flat.
use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

const CLIENT_IP: &str = "192.168.70.1";
const UPLINK: &str = "203.0.113.1";
const SERVER_IP: &str = "203.0.113.2";
/// Memory growth of a loader process over the run that still counts as flat.
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
    fn spawn(&mut self, ns: &str, argv: &[&str]) -> Result<u32> {
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .arg("--")
            .args(argv)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
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
    fn sessions(&self) -> Result<(u64, usize)> {
        let v: serde_json::Value =
            serde_json::from_str(&self.nb(&["conntrack", "--json", "--name", &self.name()])?)?;
        Ok((
            v["live_sessions"].as_u64().unwrap_or(0),
            v["sessions"].as_array().map_or(0, |a| a.len()),
        ))
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

pub fn run(root: &Path, netbridge: &Path, minutes: u32) -> Result<()> {
    let out_dir = root.join("target/soak");
    std::fs::create_dir_all(&out_dir)?;
    let prefix = format!("nbs{:05}-", std::process::id() % 100_000);
    let file = out_dir.join(format!("{prefix}soak.toml"));
    std::fs::write(
        &file,
        crate::bench::nat_lab_toml(
            "soak",
            "192.168.70.254",
            CLIENT_IP,
            UPLINK,
            SERVER_IP,
            "timeouts = { tcp_syn = 5, tcp_established = 20, tcp_closing = 5, tcp_closed = 2, udp = 5, udp_replied = 5, icmp = 5 }\n\
             [[forward]]\nproto = \"tcp\"\nport = 8080\nto = \"client:8000\"\n",
        ),
    )?;
    let mut soak = Soak {
        netbridge: netbridge.to_path_buf(),
        prefix: prefix.clone(),
        file: file.clone(),
        children: Vec::new(),
    };
    soak.nb(&["up", "-f", file.to_str().unwrap(), "--prefix", &prefix])?;
    let (client, server, host) = (soak.ns("client"), soak.ns("server"), soak.ns("host"));
    let name = soak.name();
    let nb = netbridge.to_str().unwrap().to_string();
    // The long-running userspace pieces whose memory must stay flat.
    let gc = soak.spawn(&host, &[&nb, "gc", "--name", &name, "--every", "1s"])?;
    let metrics = soak.spawn(
        &host,
        &[
            &nb,
            "metrics",
            "--name",
            &name,
            "--listen",
            "127.0.0.1:9479",
        ],
    )?;
    // Services and load generators (each exits by itself at the deadline).
    let secs = minutes as u64 * 60;
    soak.spawn(
        &client,
        &["python3", "-m", "http.server", "8000", "--bind", "0.0.0.0"],
    )?;
    let udp_echo = format!(
        "import socket, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind(('0.0.0.0', 7))\ns.settimeout(0.5)\nend = time.time() + {}\nwhile time.time() < end:\n    try:\n        d, a = s.recvfrom(2048)\n        s.sendto(d, a)\n    except socket.timeout:\n        pass\n",
        secs + 30
    );
    soak.spawn(&server, &["python3", "-c", &udp_echo])?;
    // 50 new UDP sessions a second from the lab (source ports cycle).
    let udp_load = format!(
        "import socket, time\nend = time.time() + {secs}\nport = 30000\nwhile time.time() < end:\n    t = time.time()\n    for _ in range(50):\n        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n        s.bind(('0.0.0.0', port))\n        s.sendto(b'x', ('{SERVER_IP}', 7))\n        s.close()\n        port = 30000 + (port - 29999) % 30000\n    time.sleep(max(0, 1 - (time.time() - t)))\n"
    );
    soak.spawn(&client, &["python3", "-c", &udp_load])?;
    // 5 new HTTP connections a second from upstream through the forward.
    let tcp_load = format!(
        "import socket, time\nend = time.time() + {secs}\nwhile time.time() < end:\n    t = time.time()\n    for _ in range(5):\n        try:\n            c = socket.create_connection(('{UPLINK}', 8080), timeout=2)\n            c.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\n            while c.recv(65536):\n                pass\n            c.close()\n        except OSError:\n            pass\n    time.sleep(max(0, 1 - (time.time() - t)))\n"
    );
    soak.spawn(&server, &["python3", "-c", &tcp_load])?;

    let baseline = soak.sessions()?;
    let start = Instant::now();
    let mut report = String::new();
    let mut samples = Vec::new();
    let mut rss_after_warmup: Option<(u64, u64)> = None;
    eprintln!("soak: {minutes} min of steady load on {name} (sample every 30 s)");
    while start.elapsed().as_secs() < secs {
        std::thread::sleep(Duration::from_secs(30).min(Duration::from_secs(
            secs.saturating_sub(start.elapsed().as_secs()).max(1),
        )));
        let (live, listed) = soak.sessions()?;
        let (g, m) = (rss_kb(gc), rss_kb(metrics));
        // Scrape the metrics endpoint too, so the server does real work.
        let _ = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{host}"))
            .args(["--", "curl", "-s", "-o", "/dev/null", "-m", "2"])
            .arg("http://127.0.0.1:9479/metrics")
            .status();
        if rss_after_warmup.is_none() && start.elapsed().as_secs() >= 60 {
            rss_after_warmup = Some((g, m));
        }
        let line = format!(
            "{:>4.0}s  sessions live {live:>5} listed {listed:>5}  rss gc {g} kB metrics {m} kB",
            start.elapsed().as_secs_f64()
        );
        eprintln!("soak: {line}");
        let _ = writeln!(report, "{line}");
        samples.push(
            serde_json::json!({"secs": start.elapsed().as_secs(), "live_sessions": live,
            "listed": listed, "rss_gc_kb": g, "rss_metrics_kb": m}),
        );
    }
    // Load stops by itself; sessions must drain back once timed out.
    eprintln!("soak: load stopped, waiting for the sessions to time out");
    let drained = {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = soak.sessions()?;
            if s.1 <= baseline.1 || Instant::now() > deadline {
                break s;
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    };
    let (g_end, m_end) = (rss_kb(gc), rss_kb(metrics));
    let (g0, m0) = rss_after_warmup.unwrap_or((g_end, m_end));
    let peak = samples
        .iter()
        .filter_map(|s| s["listed"].as_u64())
        .max()
        .unwrap_or(0);
    let _ = writeln!(
        report,
        "after the load: sessions listed {} (baseline {}), live count {}; peak listed {peak}\n\
         rss gc {g0} -> {g_end} kB, metrics {m0} -> {m_end} kB (after the first minute -> end)",
        drained.1, baseline.1, drained.0
    );
    print!("{report}");
    std::fs::write(out_dir.join("results.txt"), &report)?;
    std::fs::write(
        out_dir.join("results.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "minutes": minutes, "samples": samples, "baseline_sessions": baseline.1,
            "final_sessions": drained.1, "final_live_count": drained.0, "peak_sessions": peak,
            "rss_kb": {"gc": [g0, g_end], "metrics": [m0, m_end]},
        }))?,
    )?;
    let mut failures = Vec::new();
    if peak == 0 {
        failures.push("no sessions were ever open: the load did not run".to_string());
    }
    if drained.1 > baseline.1 || drained.0 > baseline.0 {
        failures.push(format!(
            "sessions did not return to baseline: {drained:?} vs {baseline:?}"
        ));
    }
    for (what, a, b) in [("gc", g0, g_end), ("metrics", m0, m_end)] {
        if b > a + RSS_SLACK_KB {
            failures.push(format!("{what} memory grew {a} -> {b} kB"));
        }
    }
    if !failures.is_empty() {
        bail!("soak failed:\n  {}", failures.join("\n  "));
    }
    eprintln!("soak: ok; wrote {}/results.{{txt,json}}", out_dir.display());
    Ok(())
}
