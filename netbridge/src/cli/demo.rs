//! `demo` (what `cargo xtask run` runs): the default lab up, real traffic
//! each second with live counters, a summary, and the lab torn down on
//! every exit path (Ctrl-C included).
use std::{
    io::IsTerminal,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use netbridge::{
    config::{Namespace, Proto, Topology, ipv4s, ipv6s},
    stats, topology,
};

use super::common::stop_flag;

/// Tears the demo lab down on every exit path.
struct Guard {
    name: String,
    children: Vec<Child>,
}

impl Drop for Guard {
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

/// `argv` inside namespace `ns`, through `netbridge exec`.
fn in_ns(ns: &str, argv: &[&str]) -> Command {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("netbridge"));
    let mut c = Command::new(exe);
    c.arg("exec").arg(ns).arg("--").args(argv);
    c
}

/// The HTTP status code of `url` fetched from `ns` ("000" style on failure).
fn curl(ns: &str, url: &str) -> String {
    let argv = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}"];
    in_ns(ns, &argv)
        .args(["-m", "2", url])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn first_v4(addrs: &[ipnet::IpNet]) -> Option<String> {
    ipv4s(addrs).next().map(|a| a.to_string())
}

fn first_v6(addrs: &[ipnet::IpNet]) -> Option<String> {
    ipv6s(addrs).next().map(|a| a.to_string())
}

/// Who talks to whom: an HTTP server in the target of the first TCP
/// forward (else the last bridged namespace), fetched from the first
/// bridged namespace directly and from upstream through the forward.
struct Plan {
    bridged: Vec<Namespace>,
    server: Namespace,
    server_ip: String,
    /// The server's IPv6 address, in a dual-stack lab.
    server_ip6: Option<String>,
    server_port: String,
    /// (forwarded port, "ns:port") of the first TCP forward.
    forward: Option<(String, String)>,
    /// The far end of the uplink: (namespace, its address, uplink address).
    upstream: Option<(String, String, String)>,
    /// The same over IPv6 (NAT66), when both ends have an IPv6 address.
    upstream6: Option<(String, String)>,
}

impl Plan {
    fn of(t: &Topology) -> Result<Plan> {
        let bridged: Vec<Namespace> = t
            .namespaces
            .iter()
            .filter(|n| t.on_bridge(n))
            .cloned()
            .collect();
        let forward = t.forwards.iter().find(|f| f.proto == Proto::Tcp);
        let server = forward
            .and_then(|f| bridged.iter().find(|n| n.name == f.target().0))
            .or(bridged.last())
            .context("default lab has no bridged namespace")?
            .clone();
        let upstream = t.uplink_ends().and_then(|(near, far)| {
            Some((
                far.netns.clone()?,
                first_v4(&far.addresses)?,
                first_v4(&near.addresses)?,
            ))
        });
        let upstream6 = t
            .uplink_ends()
            .and_then(|(near, far)| Some((first_v6(&far.addresses)?, first_v6(&near.addresses)?)));
        Ok(Plan {
            server_ip: first_v4(&server.addresses)
                .context("server namespace has no IPv4 address")?,
            server_ip6: first_v6(&server.addresses),
            server_port: forward.map_or(8000, |f| f.target().1).to_string(),
            forward: forward.map(|f| (f.port.to_string(), f.to.clone())),
            bridged,
            server,
            upstream,
            upstream6,
        })
    }

    /// HTTP servers in the lab and "on the internet" (for SNAT).
    fn start_servers(&self, guard: &mut Guard) -> Result<()> {
        // --bind ::: with a specific address http.server does a reverse
        // DNS lookup at start, which would hang (and send a query) inside;
        // `::` serves IPv4 too (http.server's dual-stack socket).
        let http = |ns: &str, port: &str| {
            in_ns(ns, &["python3", "-m", "http.server", port, "--bind", "::"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| format!("starting python3 -m http.server in {ns}"))
        };
        guard
            .children
            .push(http(&self.server.name, &self.server_port)?);
        if let Some((up_ns, _, _)) = &self.upstream {
            guard.children.push(http(up_ns, "80")?);
        }
        std::thread::sleep(Duration::from_millis(700));
        Ok(())
    }
}

/// HTTP successes so far: direct, through SNAT, through DNAT.
#[derive(Default)]
struct Tally {
    rounds: u32,
    http: u32,
    /// Of which over IPv6.
    http6: u32,
    snat: u32,
    dnat: u32,
    /// Through NAT66: masquerade and forward.
    snat6: u32,
    dnat6: u32,
}

/// One round of traffic; returns the status line.
fn round(p: &Plan, tally: &mut Tally) -> String {
    tally.rounds += 1;
    // Every pair: the lab routes between its /24s through the gateway
    // (kernel), while frames between on-link neighbours take the BPF fast
    // path.
    for a in &p.bridged {
        for b in p.bridged.iter().filter(|b| b.name != a.name) {
            for ip in first_v4(&b.addresses)
                .into_iter()
                .chain(first_v6(&b.addresses))
            {
                let ping = ["ping", "-c", "2", "-i", "0.2", "-W", "1", "-q", &ip];
                let _ = in_ns(&a.name, &ping).stdout(Stdio::null()).status();
            }
        }
    }
    let client = &p.bridged[0].name;
    let url = format!("http://{}:{}/", p.server_ip, p.server_port);
    let fetched = curl(client, &url);
    tally.http += u32::from(fetched == "200");
    let mut line = format!("HTTP {fetched} from {client} -> {url}");
    if let Some(ip6) = &p.server_ip6 {
        let url6 = format!("http://[{ip6}]:{}/", p.server_port);
        let got = curl(client, &url6);
        tally.http6 += u32::from(got == "200");
        line += &format!("; HTTP {got} -> {url6}");
    }
    if let Some((up_ns, up_ip, uplink_ip)) = &p.upstream {
        // SNAT: the lab reaches the upstream server as the uplink address.
        let s = curl(client, &format!("http://{up_ip}/"));
        tally.snat += u32::from(s == "200");
        line += &format!("\nNAT: HTTP {s} from {client} -> http://{up_ip}/ (masquerade)");
        if let Some((port, to)) = &p.forward {
            let d = curl(up_ns, &format!("http://{uplink_ip}:{port}/"));
            tally.dnat += u32::from(d == "200");
            line +=
                &format!("; HTTP {d} from {up_ns} -> http://{uplink_ip}:{port} (forward to {to})");
        }
        if let Some((up6, uplink6)) = &p.upstream6 {
            line += &nat66_round(p, tally, client, up_ns, up6, uplink6);
        }
    }
    line
}

/// The NAT66 half of a round: the lab to upstream (masquerade) and
/// upstream to the forwarded port, over IPv6.
fn nat66_round(
    p: &Plan,
    tally: &mut Tally,
    client: &str,
    up_ns: &str,
    up6: &str,
    uplink6: &str,
) -> String {
    let s = curl(client, &format!("http://[{up6}]/"));
    tally.snat6 += u32::from(s == "200");
    let mut line = format!("\nNAT66: HTTP {s} from {client} -> http://[{up6}]/");
    if let Some((port, _)) = &p.forward {
        let d = curl(up_ns, &format!("http://[{uplink6}]:{port}/"));
        tally.dnat6 += u32::from(d == "200");
        line += &format!("; HTTP {d} from {up_ns} -> http://[{uplink6}]:{port}");
    }
    line
}

pub fn run(duration: Option<Duration>, prefix: Option<String>) -> Result<()> {
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
    let mut guard = Guard {
        name: t.name.clone(),
        children: Vec::new(),
    };
    let stop = stop_flag();
    let report = topology::up(&t)?;
    println!("demo: up ({} changes)", report.changes.len());
    let plan = Plan::of(&t)?;
    plan.start_servers(&mut guard)?;
    let source = stats::Source::open(&t.name)?;
    let tty = std::io::stdout().is_terminal();
    let start = Instant::now();
    let mut prev: Option<stats::Snapshot> = None;
    let mut tally = Tally::default();
    loop {
        let line = round(&plan, &mut tally);
        let snap = source.snapshot()?;
        if tty {
            print!("\x1b[2J\x1b[H");
        }
        println!(
            "netbridge demo: lab {} | round {} | {:.0}s | {line}",
            t.name,
            tally.rounds,
            start.elapsed().as_secs_f64(),
        );
        println!(
            "per-port counters from the BPF maps (TC ingress of each bridge port; redirect = BPF fast path, kernel = Linux bridge):\n"
        );
        print!("{}", snap.table(prev.as_ref()));
        prev = Some(snap);
        let done = duration.is_some_and(|d| start.elapsed() >= d);
        if done || stop.load(Ordering::Relaxed) {
            break;
        }
        if tty {
            println!("\n(Ctrl-C to stop and tear down)");
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    if let Some(last) = &prev {
        summary(last, &tally);
    }
    drop(guard);
    Ok(())
}

fn summary(last: &stats::Snapshot, tally: &Tally) {
    let (redirected, kernel): (u64, u64) = last.ports.iter().fold((0, 0), |(r, k), p| {
        (r + p.stats.rx_redirected, k + p.stats.rx_fallback)
    });
    println!(
        "\ndemo summary: {} rounds, HTTP 200 in {}; {redirected} frames took the BPF fast path, {kernel} went to the kernel bridge",
        tally.rounds, tally.http
    );
    let v6: (u64, u64) = last.ports.iter().fold((0, 0), |(r, t), p| {
        (r + p.stats.rx_ipv6, t + p.stats.rx_packets)
    });
    println!(
        "demo ipv6: HTTP 200 over IPv6 in {}; {} of {} frames from the lab were IPv6",
        tally.http6, v6.0, v6.1
    );
    if let Some(n) = &last.nat {
        let c = |k: &str| n.counters.get(k).copied().unwrap_or(0);
        println!(
            "demo nat: HTTP 200 through SNAT in {}, through DNAT in {}; {} SNAT and {} DNAT sessions opened, {} packets translated out, {} in",
            tally.snat,
            tally.dnat,
            c("snat_new"),
            c("dnat_new"),
            c("translated_out"),
            c("translated_in")
        );
        println!(
            "demo nat66: HTTP 200 through NAT66 masquerade in {}, through an IPv6 forward in {}; {} NAT66 and {} DNAT66 sessions opened",
            tally.snat6,
            tally.dnat6,
            c("snat6_new"),
            c("dnat6_new")
        );
    }
}
