//! In-kernel NAT against a simulated upstream: SNAT masquerade from every
//! namespace, DNAT forwards (single ports, ranges, UDP) and hairpin, ICMP
//! error translation (traceroute, PMTU), checksums checked by tshark on both
//! sides, runtime forward changes, pool and table limits, 2,000 concurrent
//! mappings. Every lab is its own sandbox; traffic only goes to hosts in it.
//!
//! The lab: lab namespaces on a bridge in a host namespace ("gw") whose
//! uplink (203.0.113.1) faces a router namespace (203.0.113.254), behind
//! which sits a server (198.51.100.10). The router has no route back to the
//! lab's 192.168.0.0/16: only translated traffic can come back.
use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use netbridge_tests::{
    Sandbox,
    natlab::{NatLab, SERVER, UPLINK, sessions},
    require_root, script,
};
use serde_json::Value;

/// The forward most tests use: uplink tcp/8080 -> white:8000.
const FWD_8080_WHITE: &str = "[[forward]]\nproto = \"tcp\"\nport = 8080\nto = \"white:8000\"\n";

#[test]
fn snat_reaches_upstream_from_every_namespace() {
    require_root!();
    let mut lab = NatLab::new("", "");
    lab.http_server("server", 80);
    lab.udp_echo("server", 7, "server");
    for ns in ["black", "white"] {
        lab.sh(ns, &format!("ping -c 2 -i 0.2 -W 2 {SERVER}"));
        assert_eq!(
            lab.curl(ns, &format!("http://{SERVER}/")),
            "200",
            "curl from {ns}"
        );
        // The server sees the uplink address, not the lab's.
        let r = lab.udp_probe(ns, SERVER, &["41000:7".into()]);
        let reply = r["41000:7"]
            .as_str()
            .unwrap_or_else(|| panic!("no UDP reply in {ns}: {r}"));
        assert!(reply.starts_with(&format!("server {UPLINK}:")), "{reply}");
    }
    // iperf3 TCP and UDP, both directions (-R: server sends), from every
    // namespace. Each run has its own one-shot server on its own port: a
    // server still closing its previous run can never take the next one.
    let mut port = 5201u16;
    for ns in ["black", "white"] {
        for args in ["-t 1", "-R -t 1", "-u -b 20M -t 1", "-u -R -b 20M -t 1"] {
            let p = port.to_string();
            lab.spawn("server", &["iperf3", "-s", "-1", "-p", &p]);
            lab.wait_listen("server", "tcp", port);
            let out = lab.sh(ns, &format!("iperf3 -c {SERVER} -p {port} {args} -J"));
            let v: Value = serde_json::from_str(&out).unwrap();
            let end = &v["end"];
            let bytes = end["sum_received"]["bytes"]
                .as_u64()
                .or(end["sum"]["bytes"].as_u64())
                .unwrap_or_else(|| panic!("iperf3 {args} from {ns}: no byte count: {end}"));
            assert!(
                bytes > 0,
                "iperf3 {args} from {ns}: nothing received: {end}"
            );
            if args.contains("-u") {
                let lost = end["sum"]["lost_percent"]
                    .as_f64()
                    .unwrap_or_else(|| panic!("iperf3 {args} from {ns}: no loss figure: {end}"));
                assert!(lost < 50.0, "iperf3 {args} from {ns}: {lost}% lost");
            }
            port += 1;
        }
    }
    let ct = lab.conntrack();
    let s = sessions(&ct);
    for kind in ["tcp", "udp", "icmp"] {
        assert!(
            s.iter().any(|x| x["proto"] == kind && x["kind"] == "snat"),
            "no {kind} snat session listed: {ct}"
        );
    }
    assert!(
        s.iter()
            .all(|x| x["external"].as_str().unwrap().starts_with(UPLINK))
    );
    assert!(lab.counter("snat_new") >= 6);
    // Established sessions took the fast path both ways (bridge port ->
    // uplink, uplink -> namespace), skipping the host's routing.
    assert!(lab.counter("fast_path_out") > 1000, "fast path out");
    assert!(lab.counter("fast_path_in") > 1000, "fast path in");
    // The Prometheus endpoint carries the NAT state too.
    let bin = netbridge_tests::netbridge_bin();
    let host = lab.sb.host.clone();
    let name = lab.sb.name("nat");
    lab.sb.spawn(
        &host,
        &[
            bin.to_str().unwrap(),
            "metrics",
            "--name",
            &name,
            "--listen",
            "127.0.0.1:9469",
            "--max-requests",
            "1",
        ],
    );
    let metrics = Sandbox::wait_for(Duration::from_secs(10), || {
        let o = lab
            .sb
            .sh_output(&host, "curl -sf -m 2 http://127.0.0.1:9469/metrics");
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
    })
    .expect("metrics endpoint");
    let value = |prefix: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in metrics:\n{metrics}"))
    };
    // The scrape agrees with the maps (nothing ran in between).
    let snat_new = value(&format!(
        "netbridge_nat_events_total{{topology=\"{name}\",event=\"snat_new\"}}"
    ));
    assert!(snat_new >= 6.0, "snat_new in metrics: {snat_new}");
    assert_eq!(snat_new as u64, lab.counter("snat_new"), "{metrics}");
    assert!(metrics.contains("netbridge_nat_sessions{") && metrics.contains("proto=\"tcp\""));
    assert!(value("netbridge_nat_port_pool_size{") > 60000.0);
    lab.assert_no_netfilter_rules();
    lab.down_clean();
}

#[test]
fn dnat_forwards_ranges_udp_and_hairpin() {
    require_root!();
    let mut lab = NatLab::new(
        "",
        &format!(
            r#"{FWD_8080_WHITE}
[[forward]]
proto = "tcp"
port = "9000-9009"
to = "black:7000"

[[forward]]
proto = "udp"
port = 5353
to = "white:5353"
"#
        ),
    );
    lab.http_server("white", 8000);
    lab.http_server("black", 7003);
    lab.udp_echo("white", 5353, "white");
    // From upstream, to the uplink address.
    assert_eq!(lab.curl("server", &format!("http://{UPLINK}:8080/")), "200");
    assert_eq!(lab.curl("server", &format!("http://{UPLINK}:9003/")), "200");
    let r = lab.udp_probe("server", UPLINK, &["42000:5353".into()]);
    let reply = r["42000:5353"]
        .as_str()
        .unwrap_or_else(|| panic!("no UDP reply: {r}"));
    // DNAT keeps the client's address: white saw the server itself.
    assert!(
        reply.starts_with(&format!("white {SERVER}:42000")),
        "{reply}"
    );
    // A port of the range without a listener: black itself refuses (RST,
    // curl exit 7), the session shows where it went.
    let refused = lab.sb.sh_output(
        &lab.ns("server"),
        &format!("curl -sS -m 5 http://{UPLINK}:9004/"),
    );
    assert_eq!(refused.status.code(), Some(7), "{refused:?}");
    // Hairpin: lab hosts reach a forward through the uplink address.
    assert_eq!(lab.curl("black", &format!("http://{UPLINK}:8080/")), "200");
    assert_eq!(lab.curl("white", &format!("http://{UPLINK}:9003/")), "200");
    let r = lab.udp_probe("black", UPLINK, &["42001:5353".into()]);
    let reply = r["42001:5353"]
        .as_str()
        .unwrap_or_else(|| panic!("no hairpin UDP reply: {r}"));
    assert!(reply.starts_with("white 192.168.1.10:42001"), "{reply}");

    let ct = lab.conntrack();
    let s = sessions(&ct);
    assert!(
        s.iter()
            .any(|x| x["kind"] == "dnat" && x["inside"] == "192.168.2.10:8000")
    );
    assert!(
        s.iter()
            .any(|x| x["kind"] == "dnat" && x["inside"] == "192.168.1.10:7003")
    );
    assert!(
        s.iter()
            .any(|x| x["kind"] == "dnat" && x["inside"] == "192.168.1.10:7004")
    );
    assert!(
        s.iter().any(|x| x["kind"] == "hairpin"
            && x["remote"].as_str().unwrap().starts_with("192.168.1.10:"))
    );
    let list: Value = serde_json::from_str(&lab.nb_named(&["forward", "list", "--json"])).unwrap();
    let hits = |port: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|f| f["port"] == port)
            .map(|f| f["hits"].as_u64().unwrap())
            .unwrap_or_else(|| panic!("forward {port} not listed: {list}"))
    };
    assert_eq!(hits("8080"), 2, "{list}");
    assert!(hits("9000-9009") >= 3, "{list}");
    assert_eq!(hits("5353"), 2, "{list}");
    lab.assert_no_netfilter_rules();
    lab.down_clean();
}

#[test]
fn traceroute_and_pmtu_through_nat() {
    require_root!();
    let lab = NatLab::new("", "");
    let before = lab.counter("icmp_errors_translated");
    // UDP traceroute: the router's Time Exceeded and the server's Port
    // Unreachable are sent to the uplink address and translated back.
    let tr = lab.sh("black", &format!("traceroute -n -q 1 -w 2 -m 5 {SERVER}"));
    let hops: Vec<&str> = tr
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(hops, ["192.168.0.1", "203.0.113.254", SERVER], "{tr}");
    // ICMP traceroute: errors quoting an echo request (identifier mapped).
    let tr = lab.sh(
        "white",
        &format!("traceroute -I -n -q 1 -w 2 -m 5 {SERVER}"),
    );
    assert!(tr.contains("203.0.113.254"), "{tr}");
    let after = lab.counter("icmp_errors_translated");
    assert!(after >= before + 3, "translated {before} -> {after}");

    // PMTU: a 1400-byte hop beyond the NAT. DF pings get "Frag needed"
    // from the router, translated back, and the lab host learns the MTU.
    lab.sh("router", "ip link set eth1 mtu 1400");
    let out = lab.sb.sh_output(
        &lab.ns("black"),
        &format!("ping -M do -s 1472 -c 3 -i 0.3 -W 1 {SERVER}"),
    );
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("mtu = 1400") || text.contains("mtu=1400"),
        "{text}"
    );
    let route = lab.sh("black", &format!("ip route get {SERVER}"));
    assert!(route.contains("mtu 1400"), "PMTU not learned: {route}");
    // And a TCP upload that needs it completes.
    let mut lab = lab;
    lab.spawn("server", &["iperf3", "-s", "-1", "-p", "5202"]);
    lab.wait_listen("server", "tcp", 5202);
    lab.sh("white", &format!("iperf3 -c {SERVER} -p 5202 -n 4M"));
    lab.down_clean();
}

/// Summarises a tshark capture: (protocol/check, status) -> count, where
/// status is the dissector's checksum status (1 = good).
fn tshark_checks(lab: &NatLab, ns: &str, pcap: &str) -> Vec<(String, String)> {
    let out = lab.sh(
        ns,
        &format!(
            "tshark -r {pcap} -o ip.check_checksum:TRUE -o tcp.check_checksum:TRUE \
             -o udp.check_checksum:TRUE -T fields -E separator=, -E aggregator=';' \
             -e frame.number -e ip.checksum.status -e tcp.checksum.status \
             -e udp.checksum.status -e icmp.checksum.status -e icmp.type"
        ),
    );
    let mut v = Vec::new();
    for line in out.lines() {
        let f: Vec<&str> = line.split(',').collect();
        for (i, name) in [(1, "ip"), (2, "tcp"), (3, "udp"), (4, "icmp")] {
            // Inner (quoted) headers show as a second value: "1;1" -> split.
            if let Some(x) = f.get(i) {
                for s in x.split(';').filter(|s| !s.is_empty()) {
                    v.push((name.to_string(), s.to_string()));
                }
            }
        }
    }
    v
}

#[test]
fn checksums_valid_on_both_sides() {
    require_root!();
    let mut lab = NatLab::new("", FWD_8080_WHITE);
    // Full checksums from the senders (no veth offload), so a capture shows
    // exactly what the NAT wrote; tshark validates every header.
    for (ns, dev) in [
        ("black", "eth0"),
        ("white", "eth0"),
        ("server", "eth0"),
        ("router", "eth0"),
        ("router", "eth1"),
    ] {
        lab.sh(ns, &format!("ethtool -K {dev} tx off >/dev/null"));
    }
    lab.http_server("server", 80);
    lab.http_server("white", 8000);
    lab.udp_echo("server", 7, "server");
    let dir = format!("/tmp/{}pcap", lab.sb.prefix());
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.clone();
    lab.sb.on_cleanup(move || {
        let _ = std::fs::remove_dir_all(d);
    });
    let (lab_pcap, up_pcap) = (format!("{dir}/black.pcap"), format!("{dir}/server.pcap"));
    // Both captures are open before any traffic ("listening on").
    let dumps = [("black", &lab_pcap), ("server", &up_pcap)].map(|(ns, pcap)| {
        let ns = lab.ns(ns);
        lab.sb
            .tcpdump(&ns, &["-i", "eth0", "-U", "-w", pcap, "ip"], None)
    });
    // TCP both ways (SNAT and DNAT), UDP, ICMP echo, ICMP errors.
    assert_eq!(lab.curl("black", &format!("http://{SERVER}/")), "200");
    assert_eq!(lab.curl("server", &format!("http://{UPLINK}:8080/")), "200");
    let r = lab.udp_probe("black", SERVER, &["43000:7".into()]);
    assert!(r["43000:7"].is_string(), "{r}");
    lab.sh("black", &format!("ping -c 2 -i 0.2 {SERVER}"));
    lab.sh("black", &format!("traceroute -n -q 1 -w 1 -m 3 {SERVER}"));
    // Stop our own captures (SIGINT, by pid) and wait for them to exit:
    // with -U every packet is in the file by then, none lost (checked).
    for d in dumps {
        let n = lab.sb.stop_tcpdump(d);
        assert!(n > 0, "empty capture");
    }
    for (ns, pcap) in [("black", &lab_pcap), ("server", &up_pcap)] {
        let checks = tshark_checks(&lab, ns, pcap);
        let bad: Vec<_> = checks.iter().filter(|(_, s)| s != "1").collect();
        assert!(
            bad.is_empty(),
            "bad checksums in {ns}: {bad:?} of {}",
            checks.len()
        );
        for p in ["ip", "tcp", "udp", "icmp"] {
            let good = checks.iter().filter(|(n, _)| n == p).count();
            assert!(
                good >= 2,
                "{ns}: only {good} {p} checksums verified: {checks:?}"
            );
        }
    }
    lab.down_clean();
}

#[test]
fn forward_change_purges_sessions() {
    require_root!();
    let mut lab = NatLab::new(
        "",
        r#"
[[forward]]
proto = "udp"
port = 5353
to = "white:5353"
"#,
    );
    for ns in ["white", "black"] {
        lab.udp_echo(ns, 5353, ns);
    }
    let probe = || {
        let r = lab.udp_probe("server", UPLINK, &["44000:5353".into()]);
        r["44000:5353"].as_str().unwrap_or("").to_string()
    };
    assert!(probe().starts_with("white "));
    let ct = lab.conntrack();
    assert!(
        sessions(&ct)
            .iter()
            .any(|s| s["kind"] == "dnat" && s["proto"] == "udp"),
        "{ct}"
    );
    // Re-point the forward at runtime: maps only, the old session is purged,
    // so the same client 5-tuple now reaches the new target.
    let del = lab.nb_named(&["forward", "del", "udp", "5353"]);
    assert!(del.contains("1 sessions purged"), "{del}");
    let black = lab.ns("black");
    lab.nb_named(&["forward", "add", "udp", "5353", &format!("{black}:5353")]);
    let now = probe();
    assert!(
        now.starts_with("black "),
        "stale mapping after the change: {now:?}"
    );
    // Bad runtime input names the problem and changes nothing.
    let out = lab.sb.netbridge(&[
        "forward",
        "add",
        "udp",
        "5353",
        "nosuch:1",
        "--name",
        &lab.sb.name("nat"),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("unknown namespace"),
        "{err}"
    );
    assert!(probe().starts_with("black "));
    // `up` with the file reconciles back to white (and purges again).
    let up = lab.nb(&["up"]);
    assert!(up.contains("sessions purged"), "{up}");
    assert!(probe().starts_with("white "));
    lab.down_clean();
}

#[test]
fn port_pool_and_session_table_limits() {
    require_root!();
    let mut lab = NatLab::new("nat_ports = \"40000-40003\"\nmax_sessions = 6", "");
    for port in [7, 8] {
        lab.udp_echo("server", port, "server");
    }
    let pairs = |dport: u16, sports: std::ops::Range<u16>| -> Vec<String> {
        sports.map(|s| format!("{s}:{dport}")).collect()
    };
    // Four flows to one server port fill the four-port pool.
    let first = pairs(7, 50001..50005);
    let r = lab.udp_probe("black", SERVER, &first);
    // A second exchange: assured sessions, which never give way.
    lab.udp_probe("black", SERVER, &first);
    let mut ext = BTreeSet::new();
    for p in &first {
        let reply = r[p]
            .as_str()
            .unwrap_or_else(|| panic!("{p}: no reply: {r}"));
        ext.insert(reply.split_whitespace().nth(1).unwrap().to_string());
    }
    assert_eq!(ext.len(), 4, "mappings not distinct: {ext:?}");
    // A fifth needs a fifth port: dropped and counted.
    let r = lab.udp_probe("black", SERVER, &pairs(7, 50005..50006));
    assert!(r["50005:7"].is_null(), "{r}");
    assert!(lab.counter("nat_port_exhausted") >= 1);
    // To another server port the same four ports are free again (the
    // mapping includes the remote), but the table holds six sessions.
    let r = lab.udp_probe("black", SERVER, &pairs(8, 50001..50003));
    assert!(r["50001:8"].is_string() && r["50002:8"].is_string(), "{r}");
    lab.udp_probe("black", SERVER, &pairs(8, 50001..50003));
    let r = lab.udp_probe("black", SERVER, &pairs(8, 50003..50004));
    assert!(r["50003:8"].is_null(), "table not full at 6: {r}");
    assert!(lab.counter("nat_table_full") >= 1);
    // Existing flows are unaffected.
    let r = lab.udp_probe("black", SERVER, &first);
    assert!(
        first.iter().all(|p| r[p].is_string()),
        "existing flows broke: {r}"
    );
    let ct = lab.conntrack();
    assert_eq!(ct["live_sessions"], 6, "{ct}");
    let udp_pool = ct["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["proto"] == "udp")
        .unwrap()
        .clone();
    assert_eq!(udp_pool["ports_in_use"], 4, "{udp_pool}");
    assert_eq!(udp_pool["pool_size"], 4, "{udp_pool}");
    lab.down_clean();
}

#[test]
fn two_thousand_connections_get_distinct_mappings() {
    require_root!();
    let mut lab = NatLab::new("", "");
    lab.spawn(
        "server",
        &[
            "sh",
            "-c",
            &format!(
                "ulimit -n 8192; exec python3 {} server 80 90",
                script("tcp_hold.py")
            ),
        ],
    );
    lab.wait_listen("server", "tcp", 80);
    // Both namespaces use the same 1,000 source ports: every second mapping
    // collides with the first and must be moved to a free port.
    let mut ready = Vec::new();
    for ns in ["black", "white"] {
        let f = lab.sb.tmp_file(&format!("{ns}.ready"));
        let f = f.display().to_string();
        let cmd = format!(
            "ulimit -n 4096; exec python3 {} clients {SERVER} 80 30000 1000 {f} 90",
            script("tcp_hold.py")
        );
        lab.spawn(ns, &["sh", "-c", &cmd]);
        ready.push(f);
    }
    for f in &ready {
        let n = Sandbox::wait_for(Duration::from_secs(60), || std::fs::read_to_string(f).ok());
        assert_eq!(n.as_deref(), Some("1000"), "{f}: connected {n:?}");
    }
    let ct = lab.conntrack();
    let tcp: Vec<Value> = sessions(&ct)
        .into_iter()
        .filter(|s| s["proto"] == "tcp" && s["kind"] == "snat")
        .collect();
    assert_eq!(tcp.len(), 2000, "sessions listed");
    let ext: BTreeSet<&str> = tcp
        .iter()
        .map(|s| s["external"].as_str().unwrap())
        .collect();
    assert_eq!(ext.len(), 2000, "external mappings not distinct");
    // Each colliding port is moved (retried); the first user of a port kept
    // it (a few may have been taken by an earlier random pick).
    let (retries, kept) = (lab.counter("port_retries"), lab.counter("port_kept"));
    assert!(retries >= 900, "port retries {retries}");
    assert!((900..=1000).contains(&kept), "source ports kept {kept}");
    lab.down_clean();
}

#[test]
fn endpoint_independent_mapping_and_gc() {
    require_root!();
    // Source ports outside the range force an allocation; with EIM one inside
    // endpoint keeps one external port for every destination.
    let mut lab = NatLab::new(
        "nat_ports = \"40000-49999\"\nendpoint_independent = true\ntimeouts = { udp = 2, udp_replied = 2 }",
        "",
    );
    for port in [7, 8, 9] {
        lab.udp_echo("server", port, "server");
    }
    let pairs: Vec<String> = ["7", "8", "9"]
        .iter()
        .map(|d| format!("51000:{d}"))
        .collect();
    let r = lab.udp_probe("black", SERVER, &pairs);
    let ext: BTreeSet<&str> = pairs
        .iter()
        .map(|p| {
            r[p].as_str()
                .unwrap_or_else(|| panic!("{p}: {r}"))
                .split_whitespace()
                .nth(1)
                .unwrap()
        })
        .collect();
    assert_eq!(ext.len(), 1, "EIM gave different mappings: {ext:?}");
    assert!(lab.counter("eim_reused") >= 2);
    // The 2 s UDP timeout is enforced in the kernel (its sweep, or this
    // forced one).
    let ct = lab.conntrack();
    assert_eq!(sessions(&ct).len(), 3, "{ct}");
    std::thread::sleep(Duration::from_millis(3500));
    let gc = lab.nb_named(&["gc"]);
    assert!(gc.contains(" expired sessions, 0 live"), "{gc}");
    assert!(sessions(&lab.conntrack()).is_empty());
    lab.down_clean();
}

/// MAC of `ifname` in the lab namespace `ns`.
fn mac_of(lab: &NatLab, ns: &str, ifname: &str) -> String {
    lab.sb.mac_of(&lab.ns(ns), ifname)
}

#[test]
fn exposure_scan_finds_exactly_the_forwarded_ports() {
    require_root!();
    let mut lab = NatLab::new(
        "",
        &format!(
            r#"{FWD_8080_WHITE}
[[forward]]
proto = "tcp"
port = "9000-9002"
to = "black:9000"
"#
        ),
    );
    // Lab services: the forwarded ones, plus some that must stay hidden.
    lab.http_server("white", 8000);
    for p in [9000, 9001, 9002] {
        lab.http_server("black", p);
    }
    lab.http_server("white", 22);
    lab.http_server("black", 80);
    let out = lab.sh(
        "server",
        &format!("python3 {} {UPLINK}", script("port_scan.py")),
    );
    let scan: Value = serde_json::from_str(out.trim()).unwrap();
    // Every port answered (SYN-ACK or RST) before the scan's deadline.
    assert_eq!(scan["filtered"], serde_json::json!([]), "{scan}");
    assert_eq!(
        scan["open"],
        serde_json::json!([8080, 9000, 9001, 9002]),
        "open on the uplink"
    );
    lab.down_clean();
}

/// Kernel SNMP counters of `ns` (/proc/net/snmp and /proc/net/netstat as
/// seen from inside it), named like nstat does: "IpExtInCsumErrors".
fn snmp(lab: &NatLab, ns: &str) -> BTreeMap<String, u64> {
    let text = lab.sh(ns, "cat /proc/net/snmp /proc/net/netstat");
    let lines: Vec<&str> = text.lines().collect();
    let mut out = BTreeMap::new();
    // Each group is a header line and a value line with the same prefix.
    for pair in lines.chunks(2) {
        let [head, values] = pair else {
            panic!("odd SNMP output in {ns}:\n{text}")
        };
        let (group, names) = head.split_once(':').unwrap();
        let (_, values) = values.split_once(':').unwrap();
        for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
            // A few gauges are signed (Tcp MaxConn -1); none is used here.
            if let Ok(v) = v.parse() {
                out.insert(format!("{group}{n}"), v);
            }
        }
    }
    out
}

/// What a hostile frame must cause.
#[derive(Clone, Copy)]
enum Fate {
    /// Dropped by a netbridge program, counted under this drop reason.
    Drop(&'static str),
    /// Passed on; this kernel counter of this lab namespace counts it.
    Kernel(&'static str, &'static str),
    /// Translated and delivered: the capture in this lab namespace matches
    /// it with this filter.
    Seen(&'static str, &'static str),
}

const ECHO_WITH_OPTIONS_AT_SERVER: Fate = Fate::Seen(
    "server",
    "icmp[icmptype] == icmp-echo and ip[0] & 0xf > 5 and src 203.0.113.1",
);

/// From black, through its bridge port (and, routed, the uplink egress)
/// towards the server. `ip_options` and the two bad checksums are valid
/// but unusual: the NAT translates them and the receiving kernel judges
/// them.
const FROM_LAB: &[(&str, &[Fate])] = &[
    ("truncated_ip", &[Fate::Drop("truncated_l3")]),
    ("bad_ihl", &[Fate::Drop("bad_ipv4_header")]),
    ("bad_version", &[Fate::Drop("bad_ipv4_header")]),
    ("ihl_beyond_frame", &[Fate::Drop("truncated_l3")]),
    ("vlan_stack", &[Fate::Drop("vlan_too_deep")]),
    ("arp_spoof", &[Fate::Drop("spoofed_arp")]),
    ("ip_spoof", &[Fate::Drop("spoofed_ipv4")]),
    ("mac_spoof", &[Fate::Drop("spoofed_mac")]),
    ("multicast_src_mac", &[Fate::Drop("bad_src_mac")]),
    // A non-first fragment whose first was never seen: translated ahead
    // of it (masquerade: the uplink address); the server's kernel waits
    // for the rest of the datagram.
    (
        "non_first_fragment",
        &[Fate::Kernel("server", "IpReasmReqds")],
    ),
    (
        "ip_options",
        &[
            Fate::Kernel("server", "IcmpInEchos"),
            ECHO_WITH_OPTIONS_AT_SERVER,
        ],
    ),
    // Routed by the gateway's kernel, which drops it (no session yet).
    (
        "bad_ip_checksum",
        &[Fate::Kernel("gw", "IpExtInCsumErrors")],
    ),
    // Translated with the checksum still wrong: the server drops it.
    (
        "bad_udp_checksum",
        &[Fate::Kernel("server", "UdpInCsumErrors")],
    ),
    // A TCP header claiming more than the packet holds: never translated.
    ("tcp_bad_offset", &[Fate::Drop("bad_l4_header")]),
];

/// From the router into the uplink ingress, to the uplink address. The
/// uplink polices no L2/L3 source (anti-spoofing is for lab ports): forged
/// sources reach the gateway's own stack.
const FROM_UPSTREAM: &[(&str, &[Fate])] = &[
    ("truncated_ip", &[Fate::Drop("truncated_l3")]),
    ("bad_ihl", &[Fate::Drop("bad_ipv4_header")]),
    ("bad_version", &[Fate::Drop("bad_ipv4_header")]),
    ("ihl_beyond_frame", &[Fate::Drop("truncated_l3")]),
    (
        "bad_ip_checksum",
        &[Fate::Kernel("gw", "IpExtInCsumErrors")],
    ),
    ("bad_udp_checksum", &[Fate::Kernel("gw", "UdpInCsumErrors")]),
    ("ip_options", &[Fate::Kernel("gw", "IcmpInEchos")]),
    ("ip_spoof", &[Fate::Kernel("gw", "IcmpInEchos")]),
    ("mac_spoof", &[Fate::Kernel("gw", "IcmpInEchos")]),
    // Requeued at the uplink ingress for its first fragment (never
    // comes), then the host's.
    ("non_first_fragment", &[Fate::Kernel("gw", "IpReasmReqds")]),
    // To the forwarded port: never translated (no DNAT session).
    ("tcp_bad_offset", &[Fate::Drop("bad_l4_header")]),
];

/// Expected counts of `table`, `n` frames of each kind: drop reasons (every
/// reason, 0 when none), kernel counters, capture matches.
#[allow(clippy::type_complexity)]
fn expected(
    table: &[(&str, &[Fate])],
    n: u64,
) -> (
    BTreeMap<String, u64>,
    BTreeMap<(String, String), u64>,
    BTreeMap<(String, String), u64>,
) {
    let mut drops: BTreeMap<String, u64> = netbridge_common::drop_reason::NAMES
        .iter()
        .map(|r| (r.to_string(), 0))
        .collect();
    let (mut kernel, mut seen) = (BTreeMap::new(), BTreeMap::new());
    for (_, fates) in table {
        for f in *fates {
            match *f {
                Fate::Drop(r) => *drops.get_mut(r).expect("a drop reason") += n,
                Fate::Kernel(ns, c) => *kernel.entry((ns.into(), c.into())).or_default() += n,
                Fate::Seen(ns, filter) => *seen.entry((ns.into(), filter.into())).or_default() += n,
            }
        }
    }
    (drops, kernel, seen)
}

/// Every drop counter of the lab.
fn drop_counters(lab: &NatLab) -> BTreeMap<String, u64> {
    let v: Value = serde_json::from_str(&lab.nb(&["stats", "--json"])).unwrap();
    v["drops"]
        .as_object()
        .unwrap_or_else(|| panic!("no drops in {v}"))
        .iter()
        .map(|(k, x)| (k.clone(), x.as_u64().unwrap()))
        .collect()
}

/// Sends `count` of each of `kinds` with tests/scripts/hostile.py from `ns`
/// (`addrs`: IFACE SRC_MAC SRC_IP DST_MAC DST_IP OTHER_IP); checks it sent
/// exactly that.
fn scapy(lab: &NatLab, ns: &str, addrs: &[&str; 6], count: u64, kinds: &[&str]) {
    let out = lab.sh(
        ns,
        &format!(
            "/usr/bin/python3 {} {} {count} {}",
            script("hostile.py"),
            addrs.join(" "),
            kinds.join(" ")
        ),
    );
    let sent: BTreeMap<String, u64> = serde_json::from_str(out.trim()).unwrap();
    let asked: BTreeMap<String, u64> = kinds.iter().map(|k| (k.to_string(), count)).collect();
    assert_eq!(sent, asked, "hostile.py sent something else");
}

/// Sends `table`'s kinds from `ns` and checks every drop reason and kernel
/// counter moved by exactly what the table says (waiting for the frames,
/// which are processed asynchronously, to be counted).
fn hostile_phase(lab: &NatLab, ns: &str, addrs: &[&str; 6], table: &[(&str, &[Fate])]) {
    const N: u64 = 5;
    let (drops, kernel, _) = expected(table, N);
    let read_kernel = || -> BTreeMap<(String, String), u64> {
        kernel
            .keys()
            .map(|(ns, c)| {
                let v = snmp(lab, ns).get(c).copied();
                let v = v.unwrap_or_else(|| panic!("no {c} in {ns}'s SNMP counters"));
                ((ns.clone(), c.clone()), v)
            })
            .collect()
    };
    let (drops0, kernel0) = (drop_counters(lab), read_kernel());
    let kinds: Vec<&str> = table.iter().map(|(k, _)| *k).collect();
    scapy(lab, ns, addrs, N, &kinds);
    let moved = || {
        let d = drop_counters(lab);
        let k = read_kernel();
        let dd: BTreeMap<String, u64> = d.iter().map(|(r, v)| (r.clone(), v - drops0[r])).collect();
        let kd: BTreeMap<_, u64> = k.iter().map(|(c, v)| (c.clone(), v - kernel0[c])).collect();
        (dd, kd)
    };
    let got = Sandbox::wait_for(Duration::from_secs(10), || {
        let m = moved();
        (m.0 == drops && m.1 == kernel).then_some(m)
    })
    .unwrap_or_else(moved);
    assert_eq!(got.0, drops, "drop reasons after hostile frames from {ns}");
    assert_eq!(
        got.1, kernel,
        "kernel counters after hostile frames from {ns}"
    );
}

/// Scapy-made hostile frames from a lab namespace and from upstream: each
/// kind has the fate the test table gives it (a drop reason, a kernel
/// counter, a translated packet in a capture), counted exactly. Then a
/// flood of SYNs from forged upstream sources fills the session table
/// (`nat_table_full`, a third uplink reason). Valid traffic, existing
/// sessions and the attached programs survive all of it.
#[test]
fn hostile_frames_are_dropped_and_counted_without_harm() {
    require_root!();
    const MAX: u64 = 64;
    let mut lab = NatLab::new(
        &format!(
            "max_sessions = {MAX}\n\
             timeouts = {{ icmp = 600, udp = 600, udp_replied = 600, tcp_syn = 600 }}"
        ),
        FWD_8080_WHITE,
    );
    lab.http_server("white", 8000);
    lab.udp_echo("server", 7, "server");
    lab.sh("black", &format!("ping -c 1 -W 2 {SERVER}"));
    let dir = format!("/tmp/{}pcap", lab.sb.prefix());
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.clone();
    lab.sb.on_cleanup(move || {
        let _ = std::fs::remove_dir_all(d);
    });
    let pcap = |ns: &str| format!("{dir}/{ns}.pcap");
    let caps = ["server", "white"].map(|ns| {
        let (name, file) = (lab.ns(ns), pcap(ns));
        lab.sb
            .tcpdump(&name, &["-i", "eth0", "-U", "-w", &file], None)
    });

    let (black_mac, gw_mac) = (mac_of(&lab, "black", "eth0"), mac_of(&lab, "gw", "br0"));
    let from_lab = [
        "eth0",
        &black_mac,
        "192.168.1.10",
        &gw_mac,
        SERVER,
        "192.168.2.10",
    ];
    hostile_phase(&lab, "black", &from_lab, FROM_LAB);
    let (router_mac, uplink_mac) = (
        mac_of(&lab, "router", "eth0"),
        mac_of(&lab, "gw", "uplink0"),
    );
    let from_up = [
        "eth0",
        &router_mac,
        "203.0.113.254",
        &uplink_mac,
        UPLINK,
        "203.0.113.99",
    ];
    hostile_phase(&lab, "router", &from_up, FROM_UPSTREAM);

    for c in caps {
        lab.sb.stop_tcpdump(c);
    }
    let (_, _, mut seen) = expected(FROM_LAB, 5);
    seen.extend(expected(FROM_UPSTREAM, 5).2);
    for ((ns, filter), n) in seen {
        let got = lab.sb.sh(
            &lab.sb.host,
            &format!("tcpdump -n -r {} '{filter}' 2>/dev/null | wc -l", pcap(&ns)),
        );
        assert_eq!(got.trim(), n.to_string(), "{ns}: {filter}");
    }

    // Nothing broke: programs attached, valid traffic in both directions,
    // no session made from a forged source.
    let status = lab.nb(&["status"]);
    assert!(
        status.contains("nb_uplink_ingre") && status.contains("nb_port_ingress"),
        "{status}"
    );
    lab.sh("black", &format!("ping -c 2 -i 0.2 -W 2 {SERVER}"));
    assert_eq!(lab.curl("server", &format!("http://{UPLINK}:8080/")), "200");
    assert_eq!(lab.curl("black", &format!("http://{UPLINK}:8080/")), "200");
    let ct = lab.conntrack();
    assert!(
        !sessions(&ct).iter().any(
            |s| s["inside"].as_str().unwrap().starts_with("192.168.2.10:") && s["kind"] == "snat"
        ),
        "a forged source got a mapping: {ct}"
    );
    syn_flood_fills_the_table(&lab, &from_up, MAX);
    lab.down_clean();
}

/// SYNs from forged upstream sources to the forward: new DNAT sessions
/// until the table holds `max` sessions, then each evicts an unassured
/// (flood) session (the admission policy, issue 19); an existing assured
/// session keeps working, and a new flow from the lab still gets in.
fn syn_flood_fills_the_table(lab: &NatLab, from_up: &[&str; 6], max: u64) {
    const FLOOD: u64 = 128;
    // Two exchanges: assured, never evicted.
    for _ in 0..2 {
        let old = lab.udp_probe("black", SERVER, &["47000:7".into()]);
        assert!(old["47000:7"].is_string(), "{old}");
    }
    let live = |lab: &NatLab| lab.conntrack()["live_sessions"].as_u64().unwrap();
    let before = live(lab);
    assert!(before < max, "table already full: {before}");
    let counts = |lab: &NatLab| {
        (
            lab.counter("nat_table_full"),
            lab.counter("dnat_new"),
            lab.counter("evicted"),
        )
    };
    let (full0, new0, ev0) = counts(lab);
    scapy(lab, "router", from_up, FLOOD, &["syn_flood"]);
    let (full, evicted) = Sandbox::wait_for(Duration::from_secs(10), || {
        let (f, n, e) = counts(lab);
        (n - new0 == FLOOD).then_some((f - full0, e - ev0))
    })
    .unwrap_or_else(|| {
        panic!(
            "flood not all admitted: {:?} from {:?}",
            counts(lab),
            (full0, new0, ev0)
        )
    });
    assert_eq!(
        evicted,
        FLOOD - (max - before),
        "evicted to admit the flood"
    );
    assert_eq!(full, 0, "nat_table_full");
    assert_eq!(live(lab), max);
    let r = lab.udp_probe("black", SERVER, &["47000:7".into(), "47001:7".into()]);
    assert!(r["47000:7"].is_string(), "existing session broke: {r}");
    assert!(r["47001:7"].is_string(), "a new flow locked out: {r}");
}

/// TCX program ids on `dev` of namespace `ns` (`netbridge status --json`).
fn tcx_prog_ids(lab: &NatLab, ns: &str, dev: &str) -> Vec<u64> {
    let v: Value = serde_json::from_str(&lab.nb(&["status", "--json"])).unwrap();
    let ns = lab.ns(ns);
    let link = v
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == ns.as_str())
        .and_then(|n| {
            n["links"]
                .as_array()?
                .iter()
                .find(|l| l["name"] == dev)
                .cloned()
        })
        .unwrap_or_else(|| panic!("{dev} in {ns} not in status: {v}"));
    let mut ids: Vec<u64> = link["program_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_u64().unwrap())
        .collect();
    ids.sort();
    ids
}

/// A counted UDP stream through SNAT while the loader restarts (plain `up`)
/// and upgrades the programs in place (`up --reload`) three times. The
/// stream provably runs across each step (datagrams were sent while each
/// command ran, and after the last), every datagram arrives, and the
/// server sees one mapping throughout.
#[test]
fn restart_and_upgrade_lose_no_packets_or_sessions() {
    require_root!();
    let mut lab = NatLab::new("", "");
    let out = lab.sb.tmp_file("count.json");
    let (progress, stop, total) = (
        lab.sb.tmp_file("progress"),
        lab.sb.tmp_file("stop"),
        lab.sb.tmp_file("sent"),
    );
    lab.spawn(
        "server",
        &[
            "python3",
            &script("udp_count.py"),
            "9999",
            out.to_str().unwrap(),
            "5",
            "120",
        ],
    );
    lab.wait_listen("server", "udp", 9999);
    let mut ids = (
        tcx_prog_ids(&lab, "gw", "uplink0"),
        tcx_prog_ids(&lab, "gw", "nb-black"),
    );
    assert_eq!(ids.0.len(), 2, "uplink programs: {ids:?}");
    let first = ids.clone();
    let black = lab.ns("black");
    let sender = lab.sb.spawn_ready(
        &black,
        &[
            "python3",
            &script("udp_send.py"),
            SERVER,
            "9999",
            "45000",
            "0.001",
            progress.to_str().unwrap(),
            stop.to_str().unwrap(),
            "60000",
            "90",
        ],
        Some(&total),
        "sending",
    );
    let sent_so_far = || -> u64 {
        let p = &progress;
        Sandbox::wait_for(Duration::from_secs(5), || {
            std::fs::read_to_string(p).ok()?.trim().parse().ok()
        })
        .expect("sender progress")
    };
    let running = |from: u64| {
        Sandbox::wait_for(Duration::from_secs(30), || {
            (sent_so_far() >= from).then_some(())
        })
        .unwrap_or_else(|| panic!("the stream stalled before {from} datagrams"));
    };
    running(200);
    for i in 0..4 {
        let reload = i != 1;
        let args: &[&str] = if reload { &["up", "--reload"] } else { &["up"] };
        let sent_before = sent_so_far();
        let o = lab.nb(args);
        let sent_after = sent_so_far();
        assert!(
            sent_after > sent_before,
            "{args:?} did not run during the stream: {sent_before} -> {sent_after}"
        );
        // A reload replaces all four programs (2 uplink + 2 port); a
        // restart replaces none.
        let replaced = o.matches("attached (replacing)").count();
        assert_eq!(replaced, if reload { 4 } else { 0 }, "{args:?}:\n{o}");
        let now = (
            tcx_prog_ids(&lab, "gw", "uplink0"),
            tcx_prog_ids(&lab, "gw", "nb-black"),
        );
        assert_eq!(now.0.len(), 2, "exactly the uplink programs: {now:?}");
        if reload {
            assert!(
                now.0.iter().all(|id| !ids.0.contains(id)) && now.1 != ids.1,
                "programs not replaced: {ids:?} -> {now:?}"
            );
        } else {
            assert_eq!(now, ids, "a restart replaced programs");
        }
        ids = now;
    }
    assert!(ids.0.iter().all(|id| !first.0.contains(id)));
    // The stream goes on after the last reload, then stops.
    running(sent_so_far() + 200);
    std::fs::write(&stop, "").unwrap();
    let (status, err) = lab.sb.wait_exit(sender, Duration::from_secs(30));
    assert!(status.success(), "sender: {status}\n{err}");
    let sent: u64 = std::fs::read_to_string(&total)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let counted = Sandbox::wait_for(Duration::from_secs(20), || {
        std::fs::read_to_string(&out)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
    })
    .expect("counter result");
    println!("{sent} datagrams sent across 1 restart and 3 reloads: {counted}");
    assert_eq!(counted["received"], sent, "lost packets: {counted}");
    assert_eq!(counted["distinct"], sent, "{counted}");
    // One session the whole time: the server saw a single mapped source.
    let sources = counted["sources"].as_array().unwrap();
    assert_eq!(sources.len(), 1, "mapping changed: {counted}");
    assert!(
        sources[0].as_str().unwrap().starts_with(UPLINK),
        "{counted}"
    );
    lab.down_clean();
}

/// `netbridge log`, started and ready before any traffic, shows the first
/// of a burst of new SNAT sessions, a DNAT session and a drop by name, and
/// rate-limits the burst (at most 10 events per CPU per second).
#[test]
fn datapath_log_shows_new_sessions_and_drops_rate_limited() {
    require_root!();
    let mut lab = NatLab::new("", FWD_8080_WHITE);
    lab.http_server("white", 8000);
    lab.udp_echo("server", 7, "server");
    let log = lab.sb.tmp_file("log.txt");
    let bin = netbridge_tests::netbridge_bin();
    let name = lab.sb.name("nat");
    let host = lab.sb.host.clone();
    let logger = lab.sb.spawn_ready(
        &host,
        &[
            bin.to_str().unwrap(),
            "log",
            "--name",
            &name,
            "--duration",
            "300s",
        ],
        Some(&log),
        "following the datapath log",
    );
    let text = || std::fs::read_to_string(&log).unwrap();
    // 200 new UDP sessions in a burst.
    let pairs: Vec<String> = (46000..46200).map(|p| format!("{p}:7")).collect();
    let started = std::time::Instant::now();
    let r = lab.udp_probe("black", SERVER, &pairs);
    let burst = started.elapsed();
    assert!(pairs.iter().all(|p| r[p].is_string()), "{r}");
    // One DNAT session and one forged source, repeated until logged: the
    // burst may have used up this second's budget of events.
    let dnat = Sandbox::wait_for(Duration::from_secs(20), || {
        assert_eq!(lab.curl("server", &format!("http://{UPLINK}:8080/")), "200");
        let t = text();
        t.contains(&format!("new dnat proto 6 from {SERVER}:"))
            .then_some(())
    });
    assert!(dnat.is_some(), "no DNAT event:\n{}", text());
    lab.sh("black", "ip addr add 192.168.9.9/32 dev eth0");
    let spoofed = Sandbox::wait_for(Duration::from_secs(20), || {
        lab.sh(
            "black",
            &format!("ping -c 1 -W 1 -I 192.168.9.9 {SERVER} || true"),
        );
        text()
            .contains("drop spoofed_ipv4 (reason 6)")
            .then_some(())
    });
    lab.sh("black", "ip addr del 192.168.9.9/32 dev eth0");
    assert!(spoofed.is_some(), "no spoofed_ipv4 event:\n{}", text());
    let (status, err) = lab.sb.stop(logger);
    assert!(status.success(), "netbridge log: {status}\n{err}");
    let text = text();
    assert!(
        text.contains(
            "new snat proto 17 192.168.1.10:46000 -> 203.0.113.1:46000 to 198.51.100.10:7"
        ),
        "{text}"
    );
    assert!(text.contains("-> 192.168.2.10:8000"), "{text}");
    // Rate limit: at most 10 new-session events per CPU in each second the
    // burst touched, out of 200 sessions.
    let logged = text
        .lines()
        .filter(|l| l.contains("new snat proto 17 192.168.1.10:46"))
        .count();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let seconds = burst.as_secs() as usize + 2;
    println!("{logged} of 200 snat events logged over {burst:?} on {cpus} CPUs");
    assert!(
        logged >= 1 && logged <= 10 * cpus * seconds && logged < 200,
        "{logged} snat events logged ({burst:?}, {cpus} CPUs)"
    );
    lab.down_clean();
}

/// Packets the uplink `uplink0` sent, as the kernel counts them.
fn uplink_tx(lab: &NatLab) -> u64 {
    let out = lab.sh("gw", "ip -s -j link show uplink0");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    v[0]["stats64"]["tx"]["packets"]
        .as_u64()
        .expect("tx packets")
}

/// The fast path's FIB answers for a veth uplink are kept 100 ms
/// (`NEXT_HOP_TTL_NS`), not for good: see
/// `NatLab::assert_fast_path_follows_new_router_mac`.
#[test]
fn fast_path_follows_the_routers_new_mac() {
    require_root!();
    let mut lab = NatLab::new("", "");
    lab.assert_fast_path_follows_new_router_mac(SERVER, "203.0.113.254", "icmp and icmp[0] == 8");
    lab.down_clean();
}

/// On a veth uplink, the fast path hands established sessions' packets
/// straight to the veth's peer (the router's end) with the next hop's
/// MACs from the FIB: the uplink itself transmits none of them, yet all
/// arrive (echo replies come back). Control: with `fast_path = false`
/// the uplink transmits every one and none goes to the peer.
#[test]
fn fast_path_goes_straight_into_a_veth_uplinks_peer() {
    require_root!();
    for fast in [true, false] {
        let extra = if fast { "" } else { "fast_path = false" };
        let lab = NatLab::new(extra, "");
        // The session, and the router's neighbour entry, exist before.
        lab.sh("black", &format!("ping -c 2 -i 0.2 -W 2 -q {SERVER}"));
        let (tx0, peer0) = (uplink_tx(&lab), lab.counter("fast_path_to_uplink_peer"));
        lab.sh("black", &format!("ping -c 100 -i 0.01 -W 2 -q {SERVER}"));
        let (tx, peer) = (
            uplink_tx(&lab) - tx0,
            lab.counter("fast_path_to_uplink_peer") - peer0,
        );
        if fast {
            // Each went one way or the other (a neighbour entry being
            // revalidated sends one through the kernel's output).
            assert!(peer >= 90, "to the peer: {peer}, uplink sent {tx}");
            assert!(peer + tx >= 100, "to the peer: {peer}, uplink sent {tx}");
            assert!(tx < 20, "uplink sent {tx} (to the peer: {peer})");
        } else {
            assert_eq!(peer, 0, "uplink sent {tx}");
            assert!(tx >= 100, "uplink sent {tx}");
        }
        lab.down_clean();
    }
}
