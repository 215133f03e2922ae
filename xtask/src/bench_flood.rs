//! The flood figure (issue 19): new connections through a forward while a
//! bounded SYN flood (changing source ports, SYN-ACKs never answered) hits
//! the same forward, netbridge vs bridge + iptables DNAT in the same run.
//!
//! In the NAT lab of the bench (`bench::nat_lab`), the "server" namespace
//! floods uplink:5201 from 203.0.113.2 (its own RSTs blackholed by a policy
//! route) and connects as a legitimate client from a second address,
//! 203.0.113.3, to a greeting server on the lab host behind the forward.
//! netbridge runs with `max_sessions = 1000`, so the flood overfills its
//! table 60 times; iptables keeps the host-wide `nf_conntrack_max` (a root
//! namespace sysctl the bench may not lower), which the flood does not
//! fill: the figure is what surviving a full table costs netbridge against
//! a table that never fills.
//!
//! For netbridge also the cost of an established flow's packet, before the
//! flood and once it has filled the table: a keep-alive client (from the
//! legitimate address, opened before the flood) and its session's next
//! packet run through the live uplink ingress program with
//! BPF_PROG_TEST_RUN (`tests/scripts/est_cost.py`, as in
//! `tests/tests/nat_flood.rs`), checked to take the established path.
use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::bench::{NAT_SERVER, NAT_UPLINK, NatSetup, nat_lab_sessions, sh};

/// Flood size: frames, seconds (whichever ends first).
const FLOOD: (u32, u32) = (60_000, 4);
/// Legitimate connections per measurement.
const LEGIT: u32 = 20;
/// The legitimate client's address (on the flooder's link).
const LEGIT_IP: &str = "203.0.113.3";
/// netbridge's session limit in this run.
const MAX_SESSIONS: u32 = 1000;
/// Test runs per established-flow cost round (well under 0.1 s).
const COST_RUNS: u32 = 5000;
/// TC_ACT_REDIRECT: the fast path's verdict for an established session.
const TC_ACT_REDIRECT: &str = "7";

/// A child process killed (by pid) on drop.
struct Bg(Child);

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(ns: &str, argv: &[&str], out: Stdio) -> Result<Bg> {
    let child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .arg("--")
        .args(argv)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("spawning {argv:?} in {ns}"))?;
    Ok(Bg(child))
}

/// One setup's figures.
#[derive(Default, Clone, Copy)]
pub struct Figure {
    pub ok_before: f64,
    pub p50_before_ms: f64,
    pub ok_during: f64,
    pub p50_during_ms: f64,
    pub flood_frames: f64,
    /// netbridge: high-water mark of live sessions; iptables: conntrack
    /// entries right after the flood.
    pub table: f64,
    /// netbridge: the established-flow cost.
    pub est: Option<EstCost>,
}

/// Mean and median ns per run of an established flow's packet in the
/// uplink ingress program, before the flood and while it fills the table.
#[derive(Default, Clone, Copy)]
pub struct EstCost {
    pub mean_before: f64,
    pub mean_during: f64,
    pub median_before: f64,
    pub median_during: f64,
}

/// The last line of `path` as JSON once it has `key`, waiting at most
/// `secs`.
fn wait_line(path: &Path, key: &str, secs: u64) -> Result<serde_json::Value> {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if let Some(v) = text
            .lines()
            .last()
            .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v.get(key).is_some())
        {
            return Ok(v);
        }
        if Instant::now() > end {
            bail!("{} never had {key}: {text}", path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The established-flow cost measurement under way (`est_cost.py` in the
/// host namespace): a keep-alive client's session, the output file, the
/// file that starts the "during" round.
struct CostRun {
    _keepalive: Bg,
    _script: Bg,
    out: PathBuf,
    trigger: PathBuf,
    /// The session's endpoints: where the packet comes from and goes to,
    /// where it must go once translated.
    remote: String,
    external: String,
    inside: String,
    started: Instant,
}

/// Opens a keep-alive connection from the legitimate address through the
/// forward, finds its session and starts `est_cost.py` on its next packet.
fn start_cost(
    root: &Path,
    netbridge: &Path,
    topo: &str,
    ns: (&str, &str),
    dir: &Path,
) -> Result<CostRun> {
    let (s, h) = ns;
    let script = |name: &str| root.join("tests/scripts").join(name).display().to_string();
    let ka_out = dir.join(format!("{topo}-ka.json"));
    let keepalive = spawn(
        s,
        &[
            "python3",
            &script("flood.py"),
            "keepalive",
            NAT_UPLINK,
            "5201",
            "60",
            LEGIT_IP,
        ],
        Stdio::from(std::fs::File::create(&ka_out)?),
    )?;
    let local = wait_line(&ka_out, "local", 10)?["local"].clone();
    let _ = std::fs::remove_file(&ka_out);
    let session = tcp_session(netbridge, topo, |x| x["remote"] == local)?
        .with_context(|| format!("no session of the keep-alive client {local}"))?;
    let text = |k: &str| session[k].as_str().unwrap_or_default().to_string();
    let (out, trigger) = (
        dir.join(format!("{topo}-cost.json")),
        dir.join(format!("{topo}-cost.go")),
    );
    let _ = std::fs::remove_file(&trigger);
    // The uplink ingress link as `up` pins it (PinDir::link).
    let pin = format!("/run/netbridge/bpf/{topo}/links/uplink_in@uplink0");
    let runs = COST_RUNS.to_string();
    let started = Instant::now();
    let script = spawn(
        h,
        &[
            "python3",
            &script("est_cost.py"),
            &pin,
            "uplink0",
            &text("remote"),
            &text("external"),
            &runs,
            &trigger.display().to_string(),
            "60",
        ],
        Stdio::from(std::fs::File::create(&out)?),
    )?;
    Ok(CostRun {
        _keepalive: keepalive,
        _script: script,
        out,
        trigger,
        remote: text("remote"),
        external: text("external"),
        inside: text("inside"),
        started,
    })
}

/// The first TCP session of `topo` (`conntrack --json`) that `pick` takes.
fn tcp_session(
    netbridge: &Path,
    topo: &str,
    pick: impl Fn(&serde_json::Value) -> bool,
) -> Result<Option<serde_json::Value>> {
    let ct = Command::new(netbridge)
        .args(["conntrack", "--json", "--name", topo])
        .output()?;
    let ct: serde_json::Value = serde_json::from_slice(&ct.stdout).context("conntrack JSON")?;
    Ok(ct["sessions"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["proto"] == "tcp" && pick(x)))
        .cloned())
}

/// The other half of the check, after a round: the session is still
/// ESTABLISHED and older than the measurement, so the runs found it (a
/// packet of no session to a forward opens one, and is translated and
/// redirected just the same).
fn found_not_opened(netbridge: &Path, topo: &str, c: &CostRun, when: &str) -> Result<()> {
    let min_age = c.started.elapsed().as_secs_f64();
    let s = tcp_session(netbridge, topo, |x| {
        x["remote"] == c.remote && x["external"] == c.external
    })?
    .with_context(|| format!("{when}: no session {} -> {}", c.remote, c.external))?;
    if s["age_secs"].as_f64().unwrap_or(0.0) < min_age || s["state"] != "ESTABLISHED" {
        bail!("{when}: {s} is not the established session from before the measurement");
    }
    Ok(())
}

/// One round's figures (`when`: "before" or "during"), checked: every
/// run redirected the packet (the fast path) with its destination
/// translated to the session's inside endpoint (see also
/// `found_not_opened`). (mean, median) ns per run.
fn cost_round(c: &CostRun, when: &str) -> Result<(f64, f64)> {
    let v = wait_line(&c.out, when, 30)?[when].clone();
    let want = serde_json::json!({ (TC_ACT_REDIRECT): COST_RUNS });
    if v["retvals"] != want {
        bail!("{when}: not every run took the established fast path: {v}");
    }
    let hex = v["data_out"].as_str().unwrap_or_default();
    let frame: Vec<u8> = (0..hex.len() / 2)
        .filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
        .collect();
    let dst = frame.get(30..38).map(|b| {
        format!(
            "{}.{}.{}.{}:{}",
            b[0],
            b[1],
            b[2],
            b[3],
            u16::from_be_bytes([b[6], b[7]])
        )
    });
    if dst.as_deref() != Some(c.inside.as_str()) {
        bail!(
            "{when}: the packet went to {dst:?}, not the session's {}: {v}",
            c.inside
        );
    }
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    eprintln!(
        "bench: flood: established-flow cost {when}: {} runs in {} s, mean {} ns, median {} ns",
        v["runs"], v["secs"], v["ns_mean"], v["ns_median"]
    );
    Ok((f("ns_mean"), f("ns_median")))
}

/// Waits (at most 5 s) until netbridge's table holds `MAX_SESSIONS`.
fn wait_full(netbridge: &Path, topo: &str) -> Result<()> {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let out = Command::new(netbridge)
            .args(["stats", "--json", "--name", topo])
            .output()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if v["nat"]["live_sessions"].as_u64() >= Some(MAX_SESSIONS as u64) {
            return Ok(());
        }
        if Instant::now() > end {
            bail!("the flood never filled the table: {v}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `flood.py connect` from the legitimate address: (success rate, p50 ms).
fn legit(root: &Path, ns: &str) -> Result<(f64, f64)> {
    let out = sh(
        Some(ns),
        &format!(
            "python3 {} connect {NAT_UPLINK} 5201 {LEGIT} 2 {LEGIT_IP}",
            root.join("tests/scripts/flood.py").display()
        ),
    )?;
    let v: serde_json::Value = serde_json::from_str(out.trim()).context("connect output")?;
    let mut ms: Vec<f64> = v["connect_ms"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x.as_f64()).collect())
        .unwrap_or_default();
    ms.sort_by(f64::total_cmp);
    let p50 = ms.get(ms.len() / 2).copied().unwrap_or(f64::NAN);
    Ok((v["ok"].as_f64().unwrap_or(0.0) / LEGIT as f64, p50))
}

/// Runs the flood measurement on one setup.
fn measure(root: &Path, setup: NatSetup, id: &str, netbridge: &Path, dir: &Path) -> Result<Figure> {
    let lab = nat_lab_sessions(setup, id, netbridge, dir, MAX_SESSIONS)?;
    let (c, s, h) = (lab.ns("client"), lab.ns("server"), lab.ns("host"));
    let script = |name: &str| root.join("tests/scripts").join(name).display().to_string();
    let _server = spawn(
        &c,
        &["python3", &script("nat_flow.py"), "tcpserver", "5201", "60"],
        Stdio::null(),
    )?;
    sh(
        Some(&s),
        &format!(
            "ip addr add {LEGIT_IP}/24 dev eth0 && ip rule add from {NAT_SERVER} iif lo lookup 100 pref 100 && ip route add blackhole default table 100"
        ),
    )?;
    std::thread::sleep(Duration::from_millis(500));
    let (ok_before, p50_before_ms) = legit(root, &s)?;
    let topo = format!("{}benchnat", lab.ns(""));
    let cost = match setup {
        NatSetup::Netbridge => Some(start_cost(root, netbridge, &topo, (&s, &h), dir)?),
        NatSetup::Iptables => None,
    };
    let before = match &cost {
        Some(c) => {
            let r = cost_round(c, "before")?;
            found_not_opened(netbridge, &topo, c, "before")?;
            Some(r)
        }
        None => None,
    };
    let mac: serde_json::Value = serde_json::from_str(&sh(Some(&h), "ip -j link show uplink0")?)?;
    let mac = mac[0]["address"].as_str().unwrap_or_default().to_string();
    let out = dir.join(format!("{}flood.json", lab.ns("")));
    let (frames, secs) = (FLOOD.0.to_string(), FLOOD.1.to_string());
    let mut flood = spawn(
        &s,
        &[
            "python3",
            &script("flood.py"),
            "syn",
            "eth0",
            &mac,
            NAT_SERVER,
            NAT_UPLINK,
            "5201",
            &frames,
            &secs,
        ],
        Stdio::from(std::fs::File::create(&out)?),
    )?;
    let started = Instant::now();
    let mut est = None;
    if let (Some(c), Some(before)) = (&cost, before) {
        wait_full(netbridge, &topo)?;
        std::fs::write(&c.trigger, "")?;
        let during = cost_round(c, "during")?;
        if flood.0.try_wait()?.is_some() {
            bail!("the flood ended before the established-flow cost round during it did");
        }
        found_not_opened(netbridge, &topo, c, "during")?;
        est = Some(EstCost {
            mean_before: before.0,
            mean_during: during.0,
            median_before: before.1,
            median_during: during.1,
        });
    }
    // Let the flood fill the table first (it starts in ~0.3 s, fills 1,000
    // sessions in well under a second).
    std::thread::sleep(Duration::from_millis(1200).saturating_sub(started.elapsed()));
    let (ok_during, p50_during_ms) = legit(root, &s)?;
    let _ = flood.0.wait();
    let sent: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&out)?.trim()).unwrap_or_default();
    let _ = std::fs::remove_file(&out);
    if let Some(c) = &cost {
        let _ = std::fs::remove_file(&c.out);
        let _ = std::fs::remove_file(&c.trigger);
    }
    let table = match setup {
        NatSetup::Netbridge => {
            let ct = Command::new(netbridge)
                .args(["conntrack", "--json", "--name", &topo])
                .output()?;
            let ct: serde_json::Value = serde_json::from_slice(&ct.stdout).unwrap_or_default();
            ct["high_water_sessions"].as_f64().unwrap_or(f64::NAN)
        }
        NatSetup::Iptables => sh(Some(&h), "cat /proc/sys/net/netfilter/nf_conntrack_count")?
            .trim()
            .parse()
            .unwrap_or(f64::NAN),
    };
    Ok(Figure {
        ok_before,
        p50_before_ms,
        ok_during,
        p50_during_ms,
        flood_frames: sent["sent"].as_f64().unwrap_or(f64::NAN),
        table,
        est,
    })
}

/// Both setups, one after the other; the table and the JSON.
pub fn run(
    root: &Path,
    id: &str,
    netbridge: &Path,
    dir: &Path,
) -> Result<(String, serde_json::Value)> {
    let mut table = format!(
        "\nNAT under a SYN flood ({} frames paced over {} s, one source, changing ports) to a forward; {LEGIT} new connections from another address\n\
         | setup | ok before | p50 before ms | ok during | p50 during ms | flood frames | table | est. ns before | est. ns during | ratio |\n|---|---|---|---|---|---|---|---|---|---|\n",
        FLOOD.0, FLOOD.1
    );
    let mut json = serde_json::Map::new();
    for setup in NatSetup::ALL {
        eprintln!("bench: flood: {}", setup.label());
        let f = measure(root, setup, id, netbridge, dir)?;
        let est = match f.est {
            Some(e) => format!(
                "{:.0} | {:.0} | {:.2}",
                e.mean_before,
                e.mean_during,
                e.mean_during / e.mean_before
            ),
            None => "- | - | -".into(),
        };
        let _ = writeln!(
            table,
            "| {} | {:.0}% | {:.2} | {:.0}% | {:.2} | {:.0} | {:.0} | {est} |",
            setup.label(),
            f.ok_before * 100.0,
            f.p50_before_ms,
            f.ok_during * 100.0,
            f.p50_during_ms,
            f.flood_frames,
            f.table
        );
        let mut v = serde_json::json!({
            "legit_ok_before": f.ok_before,
            "legit_p50_ms_before": f.p50_before_ms,
            "legit_ok_during": f.ok_during,
            "legit_p50_ms_during": f.p50_during_ms,
            "flood_frames": f.flood_frames,
            "table_sessions": f.table,
        });
        if let Some(e) = f.est {
            v["established_ns_before"] = e.mean_before.into();
            v["established_ns_during"] = e.mean_during.into();
            v["established_ratio"] = (e.mean_during / e.mean_before).into();
            v["established_ns_median_before"] = e.median_before.into();
            v["established_ns_median_during"] = e.median_during.into();
            v["established_median_ratio"] = (e.median_during / e.median_before).into();
        }
        json.insert(setup.key().to_string(), v);
    }
    let _ = writeln!(
        table,
        "(netbridge max_sessions = {MAX_SESSIONS}, table: its high-water mark; iptables: nf_conntrack_count after the flood, limit nf_conntrack_max of the host; est.: mean ns per run of a keep-alive session's next packet in the live uplink ingress program (BPF_PROG_TEST_RUN x {COST_RUNS}, checked to be redirected and translated by the session opened before), before the flood and once it filled the table, ratio during/before)"
    );
    Ok((table, serde_json::Value::Object(json)))
}
