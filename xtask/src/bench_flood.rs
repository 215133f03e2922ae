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
use std::{
    fmt::Write as _,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result};

use crate::bench::{NAT_SERVER, NAT_UPLINK, NatSetup, nat_lab_sessions, sh};

/// Flood size: frames, seconds (whichever ends first).
const FLOOD: (u32, u32) = (60_000, 4);
/// Legitimate connections per measurement.
const LEGIT: u32 = 20;
/// The legitimate client's address (on the flooder's link).
const LEGIT_IP: &str = "203.0.113.3";
/// netbridge's session limit in this run.
const MAX_SESSIONS: u32 = 1000;

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
    // Let the flood fill the table first (it starts in ~0.3 s, fills 1,000
    // sessions in well under a second).
    std::thread::sleep(Duration::from_millis(1200));
    let (ok_during, p50_during_ms) = legit(root, &s)?;
    let _ = flood.0.wait();
    let sent: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&out)?.trim()).unwrap_or_default();
    let _ = std::fs::remove_file(&out);
    let table = match setup {
        NatSetup::Netbridge => {
            let ct = Command::new(netbridge)
                .args(["conntrack", "--json", "--name"])
                .arg(format!("{}benchnat", lab.ns("")))
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
        "\nNAT under a SYN flood ({} frames in at most {} s, one source, changing ports) to a forward; {LEGIT} new connections from another address\n\
         | setup | ok before | p50 before ms | ok during | p50 during ms | flood frames | table |\n|---|---|---|---|---|---|---|\n",
        FLOOD.0, FLOOD.1
    );
    let mut json = serde_json::Map::new();
    for setup in NatSetup::ALL {
        eprintln!("bench: flood: {}", setup.label());
        let f = measure(root, setup, id, netbridge, dir)?;
        let _ = writeln!(
            table,
            "| {} | {:.0}% | {:.2} | {:.0}% | {:.2} | {:.0} | {:.0} |",
            setup.label(),
            f.ok_before * 100.0,
            f.p50_before_ms,
            f.ok_during * 100.0,
            f.p50_during_ms,
            f.flood_frames,
            f.table
        );
        json.insert(
            setup.key().to_string(),
            serde_json::json!({
                "legit_ok_before": f.ok_before,
                "legit_p50_ms_before": f.p50_before_ms,
                "legit_ok_during": f.ok_during,
                "legit_p50_ms_during": f.p50_during_ms,
                "flood_frames": f.flood_frames,
                "table_sessions": f.table,
            }),
        );
    }
    let _ = writeln!(
        table,
        "(netbridge max_sessions = {MAX_SESSIONS}, table: its high-water mark; iptables: nf_conntrack_count after the flood, limit nf_conntrack_max of the host)"
    );
    Ok((table, serde_json::Value::Object(json)))
}
