//! `netbridge agent`: one process serving /metrics for every running
//! topology (each family once, samples labelled by topology) and following
//! each topology's datapath log; topologies that come, go and are reloaded
//! are picked up; SIGTERM stops it with status 0. Also: the systemd unit's
//! capability set is enough (and one less is not), the unit passes
//! `systemd-analyze verify`/`security`, and the Grafana dashboard in
//! contrib/ asks only for metrics (and labels) a real scrape has.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    time::Duration,
};

use netbridge_tests::{Ready, Sandbox, example, netbridge_bin, opkit::serve_forward, require_root};
use serde_json::Value;

const LISTEN: &str = "127.0.0.1:9469";

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

/// GET /metrics from the agent in the sandbox host (None until it serves).
fn scrape(sb: &Sandbox) -> Option<String> {
    let o = sb.sh_output(
        &sb.host,
        &format!("curl -s -f -m 5 http://{LISTEN}/metrics"),
    );
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Families (`# TYPE`) and, per family, the label sets of its samples.
struct Exposition {
    types: Vec<String>,
    samples: BTreeMap<String, Vec<BTreeMap<String, String>>>,
}

fn parse(body: &str) -> Exposition {
    let mut types = Vec::new();
    let mut samples: BTreeMap<String, Vec<BTreeMap<String, String>>> = BTreeMap::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            types.push(rest.split(' ').next().unwrap().to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (key, _value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match key.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (key, ""),
        };
        let labels = labels
            .split("\",")
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once("=\"").unwrap();
                (k.to_string(), v.trim_end_matches('"').to_string())
            })
            .collect();
        samples.entry(name.to_string()).or_default().push(labels);
    }
    Exposition { types, samples }
}

fn topologies_in(x: &Exposition, family: &str) -> BTreeSet<String> {
    x.samples
        .get(family)
        .into_iter()
        .flatten()
        .filter_map(|l| l.get("topology").cloned())
        .collect()
}

/// Starts the agent in the sandbox host, following only this sandbox's
/// topologies; returns once it serves.
fn start_agent(sb: &mut Sandbox, stdout: &std::path::Path, extra: &[&str]) -> Ready {
    let bin = netbridge_bin();
    let prefix = sb.prefix();
    let mut argv = vec![
        bin.to_str().unwrap(),
        "agent",
        "--prefix",
        &prefix,
        "--listen",
        LISTEN,
        "--rescan",
        "300ms",
    ];
    argv.extend_from_slice(extra);
    let host = sb.host.clone();
    let ready = sb.spawn_ready(&host, &argv, Some(stdout), "serving");
    assert!(
        Sandbox::wait_for(Duration::from_secs(10), || scrape(sb)).is_some(),
        "agent never served"
    );
    ready
}

/// Waits until the agent's stdout has `n` lines containing every part.
fn wait_log(path: &std::path::Path, n: usize, parts: &[&str]) {
    let found = Sandbox::wait_for(Duration::from_secs(15), || {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let count = text
            .lines()
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .count();
        (count >= n).then_some(())
    });
    assert!(
        found.is_some(),
        "not {n} log line(s) with {parts:?}:\n{}",
        std::fs::read_to_string(path).unwrap_or_default()
    );
}

/// Stops the agent with SIGTERM: it must exit 0, saying so.
fn terminate(sb: &mut Sandbox, agent: Ready) -> String {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let (status, stderr) = sb.wait_exit(agent, Duration::from_secs(10));
    assert!(status.success(), "agent on SIGTERM: {status}\n{stderr}");
    assert!(stderr.contains("netbridge agent: stopped"), "{stderr}");
    stderr
}

#[test]
fn agent_serves_and_follows_every_topology_as_they_come_and_go() {
    require_root!();
    let mut sb = Sandbox::new();
    // Two prefixes under the sandbox's: both files name black and white.
    let (p3, pn) = (sb.name("a-"), sb.name("n-"));
    let (three, nat) = (example("bridge-three.toml"), example("nat-lab.toml"));
    sb.nb_ok(&["up", "-f", &three, "--prefix", &p3]);
    sb.nb_ok(&["up", "-f", &nat, "--prefix", &pn]);
    let (t3, tn) = (format!("{p3}bridge-three"), format!("{pn}nat-lab"));
    let stdout = sb.tmp_file("agent.out");
    let agent = start_agent(&mut sb, &stdout, &[]);

    // One exposition for both: each family once, both topologies in it.
    let x = parse(&scrape(&sb).unwrap());
    let unique: BTreeSet<&String> = x.types.iter().collect();
    assert_eq!(unique.len(), x.types.len(), "a family twice: {:?}", x.types);
    let both: BTreeSet<String> = [t3.clone(), tn.clone()].into();
    assert_eq!(topologies_in(&x, "netbridge_fdb_entries"), both);
    assert_eq!(topologies_in(&x, "netbridge_topology_scrape_ok"), both);
    assert_eq!(
        topologies_in(&x, "netbridge_nat_sessions_live"),
        [tn.clone()].into()
    );

    // Logs of both: a new SNAT session in nat-lab, drops in bridge-three
    // (pings from an address green does not own).
    sb.sh(&format!("{pn}black"), "ping -c 1 -W 2 203.0.113.254");
    wait_log(&stdout, 1, &[&format!("{tn}: "), "new snat"]);
    let green = format!("{p3}green");
    let spoof = |sb: &Sandbox| {
        sb.sh(&green, "ping -c 1 -W 2 192.168.0.1");
        let _ = sb.sh_output(&green, "ping -c 2 -i 0.2 -W 1 -I 192.168.3.99 192.168.0.1");
    };
    sb.sh(&green, "ip addr add 192.168.3.99/24 dev eth0");
    spoof(&sb);
    let drop = [format!("{t3}: "), "drop spoofed_ipv4".to_string()];
    let drop: Vec<&str> = drop.iter().map(String::as_str).collect();
    // One drop per spoofed ping.
    wait_log(&stdout, 2, &drop);

    // A topology that goes: out of the metrics at the next scrape.
    sb.nb_ok(&["down", "--name", &t3]);
    let x = parse(&scrape(&sb).unwrap());
    assert_eq!(
        topologies_in(&x, "netbridge_fdb_entries"),
        [tn.clone()].into()
    );
    // ... and back: in the metrics and followed again (its namespaces are
    // new: the spoofed address is added again).
    sb.nb_ok(&["up", "-f", &three, "--prefix", &p3]);
    let x = parse(&scrape(&sb).unwrap());
    assert_eq!(topologies_in(&x, "netbridge_fdb_entries"), both);
    sb.sh(&green, "ip addr add 192.168.3.99/24 dev eth0");
    spoof(&sb);
    wait_log(&stdout, 4, &drop);

    // Reloaded programs (new ids, new log buffer) are followed too.
    sb.nb_ok(&["up", "-f", &nat, "--prefix", &pn, "--reload"]);
    sb.sh(&format!("{pn}white"), "ping -c 1 -W 2 203.0.113.254");
    wait_log(
        &stdout,
        1,
        &[&format!("{tn}: "), "new snat", "192.168.2.10"],
    );

    let stderr = terminate(&mut sb, agent);
    for t in [&t3, &tn] {
        let n = stderr
            .matches(&format!("following the datapath log of {t} "))
            .count();
        assert!(n >= 2, "{t} followed {n} time(s):\n{stderr}");
    }
    sb.nb_ok(&["down", "--name", &t3]);
    sb.nb_ok(&["down", "--name", &tn]);
}

/// The unit's `CapabilityBoundingSet=` as setpriv's `+cap,...` list.
fn unit_caps() -> Vec<String> {
    let unit = std::fs::read_to_string(repo("contrib/systemd/netbridge-agent.service")).unwrap();
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("CapabilityBoundingSet in the unit");
    line.split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_lowercase())
        .collect()
}

/// The agent with exactly the capabilities of the unit, in a read-only
/// private mount namespace, reads everything; without CAP_SYS_ADMIN it
/// reads nothing (the check can fail).
#[test]
fn agent_works_with_the_units_capabilities_and_the_unit_verifies() {
    require_root!();
    let mut sb = Sandbox::new();
    let prefix = sb.prefix();
    sb.nb_ok(&["up", "-f", &example("nat-lab.toml"), "--prefix", &prefix]);
    let tn = sb.name("nat-lab");
    let caps = unit_caps();
    assert!(caps.contains(&"bpf".to_string()), "{caps:?}");
    let run_with = |sb: &mut Sandbox, caps: &[String]| -> (Exposition, String) {
        let bounding = format!(
            "-all,{}",
            caps.iter()
                .map(|c| format!("+{c}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        let bin = netbridge_bin();
        let host = sb.host.clone();
        let stdout = sb.tmp_file(&format!("caps{}.out", caps.len()));
        // As the unit runs it: in a mount namespace of its own that
        // receives the host's mounts, with / (and so /run) read-only, like
        // ProtectSystem=strict; with only the capabilities given.
        let script = format!(
            "mount -o remount,bind,ro / && exec setpriv --bounding-set={bounding} \
             --inh-caps=-all {} agent --prefix {prefix} --listen {LISTEN}",
            bin.display()
        );
        let argv = [
            "unshare",
            "-m",
            "--propagation",
            "slave",
            "sh",
            "-c",
            &script,
        ];
        let ready = sb.spawn_ready(&host, &argv, Some(&stdout), "serving");
        let body = Sandbox::wait_for(Duration::from_secs(10), || scrape(sb)).expect("served");
        (parse(&body), terminate(sb, ready))
    };
    let (x, _) = run_with(&mut sb, &caps);
    assert_eq!(
        topologies_in(&x, "netbridge_fdb_entries"),
        [tn.clone()].into()
    );
    assert!(x.samples.contains_key("netbridge_nat_sessions_live"));
    let fewer: Vec<String> = caps.iter().filter(|c| *c != "sys_admin").cloned().collect();
    let (x, stderr) = run_with(&mut sb, &fewer);
    assert!(
        !x.samples.contains_key("netbridge_fdb_entries"),
        "read without CAP_SYS_ADMIN?"
    );
    assert!(stderr.contains(&format!("reading {tn}")), "{stderr}");

    // The unit as systemd reads it (pointing at this build): no error, and
    // its sandboxing rated "OK" or better by systemd-analyze security.
    let unit = std::fs::read_to_string(repo("contrib/systemd/netbridge-agent.service"))
        .unwrap()
        .replace("/usr/bin/netbridge", netbridge_bin().to_str().unwrap())
        .replace("Documentation=man:netbridge-agent(1) man:netbridge(1)", "");
    let dir = sb.tmp_file("unit");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("netbridge-agent.service");
    std::fs::write(&path, unit).unwrap();
    let o = std::process::Command::new("systemd-analyze")
        .args(["verify", path.to_str().unwrap()])
        .output()
        .expect("systemd-analyze (xtask setup installs systemd)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=true", path.to_str().unwrap()])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    let level: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for netbridge-agent.service: ")
                .nth(1)
        })
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level:\n{text}"));
    assert!(level <= 3.0, "exposure {level}:\n{text}");
    std::fs::remove_dir_all(&dir).unwrap();
    sb.nb_ok(&["down", "--name", &tn]);
}

/// Metric names and (metric, label) pairs a PromQL expression uses:
/// `netbridge_x{label=...}`, `by (a, b)` of an aggregation over it,
/// `label_values(metric, label)`.
fn promql_refs(expr: &str) -> (BTreeSet<String>, BTreeSet<(String, String)>) {
    let mut names = BTreeSet::new();
    let mut labels = BTreeSet::new();
    let bytes: Vec<char> = expr.chars().collect();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("netbridge_") {
        let start = i + pos;
        let end = expr[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(expr.len(), |e| start + e);
        let name = expr[start..end].to_string();
        if bytes.get(end) == Some(&'{') {
            let close = expr[end..].find('}').unwrap() + end;
            for m in expr[end + 1..close].split(',') {
                let l = m.split(['=', '!']).next().unwrap().trim();
                labels.insert((name.clone(), l.to_string()));
            }
        }
        names.insert(name);
        i = end;
    }
    // `by (...)` / `on (...)` apply to every metric of the expression.
    for kw in ["by (", "on ("] {
        let mut rest = expr;
        while let Some(p) = rest.find(kw) {
            let after = &rest[p + kw.len()..];
            let close = after.find(')').unwrap();
            for l in after[..close].split(',') {
                for n in &names {
                    labels.insert((n.clone(), l.trim().to_string()));
                }
            }
            rest = &after[close..];
        }
    }
    if let Some(args) = expr.strip_prefix("label_values(") {
        let (m, l) = args.trim_end_matches(')').split_once(',').unwrap();
        labels.insert((m.trim().to_string(), l.trim().to_string()));
    }
    (names, labels)
}

/// Every expression of the dashboard (panel targets and variables).
fn dashboard_exprs(d: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![d];
    while let Some(v) = stack.pop() {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    match (k.as_str(), x) {
                        ("expr" | "definition", Value::String(s)) => out.push(s.clone()),
                        ("query", Value::String(s)) if s.contains('(') => out.push(s.clone()),
                        _ => stack.push(x),
                    }
                }
            }
            Value::Array(a) => stack.extend(a),
            _ => {}
        }
    }
    out
}

/// What of `exprs` a scrape `x` lacks: metrics, and labels of metrics.
fn missing(exprs: &[String], x: &Exposition) -> Vec<String> {
    let mut out = Vec::new();
    for e in exprs {
        let (names, labels) = promql_refs(e);
        for n in names {
            if !x.types.contains(&n) {
                out.push(format!("metric {n}"));
            }
        }
        for (n, l) in labels {
            let has = x
                .samples
                .get(&n)
                .is_some_and(|s| s.iter().any(|ls| ls.contains_key(&l)));
            if x.types.contains(&n) && !has {
                out.push(format!("label {l} of {n}"));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The Grafana dashboard references only metrics and labels that a real
/// agent scrape of a NAT lab with traffic has; a dashboard naming one
/// that does not exist (or a label a metric lacks) is caught.
#[test]
fn grafana_dashboard_asks_only_for_served_metrics() {
    require_root!();
    let mut sb = Sandbox::new();
    let prefix = sb.prefix();
    sb.nb_ok(&["up", "-f", &example("nat-lab.toml"), "--prefix", &prefix]);
    let tn = sb.name("nat-lab");
    serve_forward(&mut sb, &prefix);
    let stdout = sb.tmp_file("agent.out");
    let agent = start_agent(&mut sb, &stdout, &["--no-log"]);
    let x = parse(&scrape(&sb).unwrap());
    terminate(&mut sb, agent);

    let d: Value = serde_json::from_str(
        &std::fs::read_to_string(repo("contrib/grafana/netbridge.json")).unwrap(),
    )
    .unwrap();
    let exprs = dashboard_exprs(&d);
    let names: BTreeSet<String> = exprs.iter().flat_map(|e| promql_refs(e).0).collect();
    // The dashboard covers the families (a dashboard of nothing passes
    // nothing): ports, drops, FDB, NAT, forwards, the agent's own.
    for n in [
        "netbridge_port_rx_packets_total",
        "netbridge_drops_total",
        "netbridge_fdb_entries",
        "netbridge_nat_sessions_live",
        "netbridge_forward_sessions_total",
        "netbridge_topology_scrape_ok",
    ] {
        assert!(names.contains(n), "dashboard lacks {n}: {names:?}");
    }
    assert!(names.len() >= 15, "{names:?}");
    assert_eq!(missing(&exprs, &x), Vec::<String>::new());
    // Controls: the check sees a metric and a label that do not exist.
    let bogus = vec![
        "rate(netbridge_port_rx_packetz_total[5m])".to_string(),
        "sum by (reason) (netbridge_fdb_entries)".to_string(),
    ];
    assert_eq!(
        missing(&bogus, &x),
        vec![
            "label reason of netbridge_fdb_entries".to_string(),
            "metric netbridge_port_rx_packetz_total".to_string()
        ]
    );
    assert!(topologies_in(&x, "netbridge_forward_sessions_total").contains(&tn));
    sb.nb_ok(&["down", "--name", &tn]);
}
