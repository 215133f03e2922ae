//! Live stats: `stats --json/--watch`, the Prometheus endpoint scraped by a
//! real HTTP client while traffic runs, and the non-interactive demo.
use std::time::Duration;

use netbridge_tests::{Sandbox, require_root};

/// Value of the sample `name{...labels...}` in a Prometheus text body.
fn sample(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
    body.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (key, value) = l.rsplit_once(' ')?;
        let (metric, rest) = key.split_once('{')?;
        let ok = metric == name
            && labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        if ok { value.parse().ok() } else { None }
    })
}

#[test]
fn metrics_endpoint_and_stats_move_with_traffic() {
    require_root!();
    let mut sb = Sandbox::new();
    let (_, prefix) = sb.up_example("bridge-three.toml");
    let (black, white) = (sb.name("black"), sb.name("white"));
    let topo = format!("{prefix}bridge-three");

    // Every port has counters once it has carried a frame.
    sb.sh(&black, "ping -c 2 -i 0.2 -W 2 192.168.2.1");
    sb.sh(&white, "ping -c 2 -i 0.2 -W 2 192.168.3.1");

    // The metrics server runs in the sandbox host, on its loopback.
    sb.spawn_metrics(&topo, "127.0.0.1:9469", 100);
    let scrape = |sb: &Sandbox| -> Option<String> {
        let o = sb.sh_output(
            &sb.host,
            "curl -s -m 2 -w '\\n%{http_code} %{content_type}' http://127.0.0.1:9469/metrics",
        );
        let s = String::from_utf8_lossy(&o.stdout).into_owned();
        let (body, status) = s.rsplit_once('\n')?;
        status
            .starts_with("200 text/plain")
            .then(|| body.to_string())
    };
    let first =
        Sandbox::wait_for(Duration::from_secs(10), || scrape(&sb)).expect("metrics endpoint up");
    assert!(
        first.contains("# TYPE netbridge_port_rx_packets_total counter"),
        "{first}"
    );
    let labels = [
        ("topology", topo.as_str()),
        ("port", "nb-black"),
        ("namespace", black.as_str()),
    ];
    let redirected = |body: &str| {
        sample(body, "netbridge_port_redirected_total", &labels)
            .unwrap_or_else(|| panic!("no redirect counter of nb-black:\n{body}"))
    };
    let before = redirected(&first);

    // Scrapes while traffic runs: a bounded ping flood owned by the
    // sandbox, alive before and after every scrape counted; the counter
    // must rise from scrape to scrape (three times) and by at least 50.
    let ping = sb.spawn(
        &black,
        &["ping", "-c", "4000", "-i", "0.005", "-q", "192.168.2.1"],
    );
    let (mut last, mut rises, mut second) = (before, 0, String::new());
    for _ in 0..60 {
        assert!(sb.alive(ping), "the ping ended before the scrapes did");
        second = scrape(&sb).expect("scrape during traffic");
        let now = redirected(&second);
        assert!(now >= last, "counter went back: {last} -> {now}");
        if sb.alive(ping) && now > last {
            rises += 1;
        }
        last = now;
        if rises >= 3 && now >= before + 50 {
            break;
        }
    }
    let status = sb.interrupt(ping);
    assert!(status.success(), "ping: {status}");
    assert!(
        rises >= 3 && last >= before + 50,
        "redirected {before} -> {last} in {rises} rising scrapes\n{second}"
    );
    // Unknown paths are 404, not metrics.
    let o = sb.sh_output(
        &sb.host,
        "curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:9469/nope",
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout), "404");

    // stats --watch --json: one object per refresh, the later ones with rates.
    sb.spawn(
        &black,
        &["ping", "-c", "40", "-i", "0.05", "-q", "192.168.2.1"],
    );
    let out = sb.netbridge(&[
        "stats",
        "--name",
        &topo,
        "--watch",
        "--json",
        "--interval",
        "500ms",
        "--count",
        "3",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let frames: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(frames.len(), 3);
    assert!(frames[0]["ports"]["nb-black"].get("rates").is_none());
    let pps = frames[2]["ports"]["nb-black"]["rates"]["rx_pps"]
        .as_f64()
        .unwrap();
    assert!(pps > 0.0, "no rate while pinging: {}", frames[2]);
    assert_eq!(frames[2]["ports"]["nb-white"]["namespace"], white.as_str());

    // The table form names the columns a user looks for.
    let out = sb.netbridge(&["stats", "--name", &topo]);
    let table = String::from_utf8_lossy(&out.stdout);
    for col in [
        "port",
        "namespace",
        "redirect",
        "kernel",
        "rx_pps",
        "dropped",
        "fdb entries",
    ] {
        assert!(table.contains(col), "missing {col}:\n{table}");
    }
    let out = sb.netbridge(&["down", "--name", &topo]);
    assert!(out.status.success());
}

/// What `cargo xtask run -- --duration 5s` runs: exits 0 on its own, shows
/// non-zero counters and working HTTP, and leaves nothing behind.
#[test]
fn demo_runs_non_interactively_and_cleans_up() {
    require_root!();
    let sb = Sandbox::new();
    let before = sb.snapshot();
    let prefix = sb.prefix();
    let out = sb.netbridge(&["demo", "--duration", "3s", "--prefix", &prefix]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !stdout.contains("\x1b[2J"),
        "no screen clearing when not a terminal"
    );
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("demo summary"))
        .expect("summary line");
    // "demo summary: N rounds, HTTP 200 in K; R frames took the BPF fast path, F went ..."
    let num_before = |word: &str| -> u64 {
        let i = summary.find(word).unwrap();
        summary[..i]
            .split_whitespace()
            .last()
            .unwrap()
            .trim_end_matches(';')
            .parse()
            .unwrap()
    };
    assert!(num_before("frames took") > 0, "{summary}");
    assert!(
        summary.contains("HTTP 200 in") && !summary.contains("HTTP 200 in 0;"),
        "{summary}"
    );
    // NAT both ways: "demo nat: HTTP 200 through SNAT in S, through DNAT in D; ..."
    let nat = stdout
        .lines()
        .find(|l| l.starts_with("demo nat:"))
        .expect("nat summary line");
    assert!(
        !nat.contains("SNAT in 0,") && !nat.contains("DNAT in 0;"),
        "{nat}"
    );
    // The default lab is dual-stack: "demo ipv6: HTTP 200 over IPv6 in N; F of T frames ..."
    let v6 = stdout
        .lines()
        .find(|l| l.starts_with("demo ipv6:"))
        .expect("ipv6 summary line");
    let n = |after: &str| -> u64 {
        let rest = &v6[v6.find(after).unwrap() + after.len()..];
        let word = rest.split_whitespace().next().unwrap();
        word.trim_end_matches(';').parse().unwrap()
    };
    assert!(n("over IPv6 in ") > 0, "{v6}");
    assert!(n("; ") > 0, "no IPv6 frame counted: {v6}");
    // NAT66 both ways: "demo nat66: HTTP 200 through NAT66 masquerade in S, through an IPv6 forward in D; ..."
    let nat66 = stdout
        .lines()
        .find(|l| l.starts_with("demo nat66:"))
        .expect("nat66 summary line");
    assert!(
        !nat66.contains("masquerade in 0,") && !nat66.contains("forward in 0;"),
        "{nat66}"
    );
    assert!(stdout.contains("torn down"), "{stdout}");
    assert_eq!(sb.snapshot(), before, "demo left residue");
}
