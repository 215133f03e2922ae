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
use std::{collections::BTreeSet, path::PathBuf, time::Duration};

use netbridge_tests::{Sandbox, require_root};
use serde_json::Value;

const SERVER: &str = "198.51.100.10";
const UPLINK: &str = "203.0.113.1";
/// The forward most tests use: uplink tcp/8080 -> white:8000.
const FWD_8080_WHITE: &str = "[[forward]]\nproto = \"tcp\"\nport = 8080\nto = \"white:8000\"\n";

fn script(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
        .display()
        .to_string()
}

struct NatLab {
    sb: Sandbox,
    file: String,
}

impl NatLab {
    /// Brings the lab up; `uplink_extra` is appended to `[uplink]`,
    /// `forwards` is TOML appended at the end.
    fn new(uplink_extra: &str, forwards: &str) -> NatLab {
        let mut sb = Sandbox::new();
        let toml = format!(
            r#"name = "nat"
host_netns = "gw"

[bridge]
name = "br0"
addresses = ["192.168.0.1/16"]

[[namespace]]
name = "black"
addresses = ["192.168.1.10/24"]
routes = [{{ to = "default", via = "192.168.0.1", dev = "eth0" }}]

[[namespace]]
name = "white"
addresses = ["192.168.2.10/24"]
routes = [{{ to = "default", via = "192.168.0.1", dev = "eth0" }}]

[[namespace]]
name = "router"
bridge = false
sysctls = {{ "net.ipv4.ip_forward" = "1" }}

[[namespace]]
name = "server"
bridge = false

[[link]]
a = {{ ifname = "uplink0", addresses = ["203.0.113.1/24"] }}
b = {{ netns = "router", ifname = "eth0", addresses = ["203.0.113.254/24"] }}

[[link]]
a = {{ netns = "router", ifname = "eth1", addresses = ["198.51.100.1/24"] }}
b = {{ netns = "server", ifname = "eth0", addresses = ["198.51.100.10/24"], routes = [{{ to = "default", via = "198.51.100.1" }}] }}

[uplink]
ifname = "uplink0"
masquerade = true
gateway = "203.0.113.254"
{uplink_extra}

{forwards}
"#
        );
        let file = format!("/tmp/{}nat.toml", sb.prefix());
        std::fs::write(&file, toml).unwrap();
        let f = file.clone();
        sb.on_cleanup(move || {
            let _ = std::fs::remove_file(f);
        });
        let lab = NatLab { sb, file };
        lab.nb(&["up"]);
        lab
    }

    fn ns(&self, n: &str) -> String {
        self.sb.name(n)
    }

    /// `netbridge ARGS -f FILE --prefix P`, asserting success.
    fn nb(&self, args: &[&str]) -> String {
        let prefix = self.sb.prefix();
        let mut full: Vec<&str> = args.to_vec();
        full.extend(["-f", &self.file, "--prefix", &prefix]);
        self.sb.nb_ok(&full)
    }

    /// `netbridge ARGS --name <lab>` (commands that take no file).
    fn nb_named(&self, args: &[&str]) -> String {
        let name = self.sb.name("nat");
        let mut full: Vec<&str> = args.to_vec();
        full.extend(["--name", &name]);
        self.sb.nb_ok(&full)
    }

    fn sh(&self, ns: &str, script: &str) -> String {
        self.sb.sh(&self.ns(ns), script)
    }

    fn spawn(&mut self, ns: &str, argv: &[&str]) -> u32 {
        let ns = self.ns(ns);
        self.sb.spawn(&ns, argv)
    }

    fn conntrack(&self) -> Value {
        serde_json::from_str(&self.nb_named(&["conntrack", "--json"])).unwrap()
    }

    fn nat_counter(&self, name: &str) -> u64 {
        let v: Value = serde_json::from_str(&self.nb(&["stats", "--json"])).unwrap();
        v["nat"]["counters"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("no nat counter {name} in {v}"))
    }

    fn drop_counter(&self, name: &str) -> u64 {
        let v: Value = serde_json::from_str(&self.nb(&["stats", "--json"])).unwrap();
        v["drops"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("no drop counter {name} in {v}"))
    }

    /// UDP probes from `ns`: pairs "sport:dport" to `dst`; reply per pair.
    fn udp_probe(&self, ns: &str, dst: &str, pairs: &[String]) -> Value {
        let out = self.sh(
            ns,
            &format!(
                "python3 {} {dst} {}",
                script("udp_probe.py"),
                pairs.join(" ")
            ),
        );
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    /// Waits until a TCP or UDP port listens in `ns`.
    fn wait_listen(&self, ns: &str, proto: &str, port: u16) {
        let flag = if proto == "udp" { "-uln" } else { "-tln" };
        let ok = Sandbox::wait_for(Duration::from_secs(10), || {
            self.sh(ns, &format!("ss {flag}"))
                .contains(&format!(":{port} "))
                .then_some(())
        });
        assert!(ok.is_some(), "nothing listens on {proto}/{port} in {ns}");
    }

    /// A UDP echo server (tests/scripts/udp_echo.py) answering as `tag`.
    fn udp_echo(&mut self, ns: &str, port: u16, tag: &str) {
        let p = port.to_string();
        self.spawn(ns, &["python3", &script("udp_echo.py"), &p, tag, "60"]);
        self.wait_listen(ns, "udp", port);
    }

    fn http_server(&mut self, ns: &str, port: u16) {
        let p = port.to_string();
        // --bind 0.0.0.0: with an address, http.server does reverse DNS.
        self.spawn(
            ns,
            &["python3", "-m", "http.server", &p, "--bind", "0.0.0.0"],
        );
        self.wait_listen(ns, "tcp", port);
    }

    fn curl(&self, ns: &str, url: &str) -> String {
        self.sh(
            ns,
            &format!("curl -sS -m 5 -o /dev/null -w '%{{http_code}}' {url}"),
        )
    }

    /// No iptables or nftables rule anywhere in the lab.
    fn assert_no_netfilter_rules(&self) {
        for n in ["gw", "black", "white", "router", "server"] {
            let nft = self.sh(n, "nft list ruleset");
            assert!(nft.trim().is_empty(), "nft rules in {n}: {nft}");
            let ipt = self.sh(n, "iptables-save 2>/dev/null | grep -e '^-A' || true");
            assert!(ipt.trim().is_empty(), "iptables rules in {n}: {ipt}");
        }
    }

    fn down_clean(&self) {
        self.nb(&["down"]);
        let left: Vec<String> = netbridge::netns::list()
            .into_iter()
            .filter(|n| n.starts_with(&self.sb.prefix()) && *n != self.sb.host)
            .collect();
        assert!(left.is_empty(), "namespaces left after down: {left:?}");
    }
}

fn sessions(ct: &Value) -> Vec<Value> {
    ct["sessions"].as_array().cloned().unwrap_or_default()
}

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
    // iperf3 TCP and UDP, both directions (-R: server sends).
    lab.spawn("server", &["iperf3", "-s", "-1", "-p", "5201"]);
    lab.wait_listen("server", "tcp", 5201);
    lab.sh("black", &format!("iperf3 -c {SERVER} -p 5201 -t 1"));
    for args in ["-R -t 1", "-u -b 20M -t 1", "-u -R -b 20M -t 1"] {
        lab.spawn("server", &["iperf3", "-s", "-1", "-p", "5201"]);
        lab.wait_listen("server", "tcp", 5201);
        let out = lab.sh("black", &format!("iperf3 -c {SERVER} -p 5201 {args} -J"));
        let v: Value = serde_json::from_str(&out).unwrap();
        let end = &v["end"];
        let bytes = end["sum_received"]["bytes"]
            .as_u64()
            .or(end["sum"]["bytes"].as_u64())
            .unwrap_or(0);
        assert!(bytes > 0, "iperf3 {args}: nothing received: {end}");
        if args.contains("-u") {
            let lost = end["sum"]["lost_percent"].as_f64().unwrap_or(100.0);
            assert!(lost < 50.0, "iperf3 {args}: {lost}% lost");
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
    assert!(lab.nat_counter("snat_new") >= 6);
    // Established sessions took the fast path both ways (bridge port ->
    // uplink, uplink -> namespace), skipping the host's routing.
    assert!(lab.nat_counter("fast_path_out") > 1000, "fast path out");
    assert!(lab.nat_counter("fast_path_in") > 1000, "fast path in");
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
    assert!(value("netbridge_nat_events_total{topology=\"") >= 0.0);
    let snat_new = metrics
        .lines()
        .find(|l| l.contains("event=\"snat_new\""))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(snat_new >= 6.0, "snat_new in metrics: {snat_new}");
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
    let before = lab.nat_counter("icmp_errors_translated");
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
    let after = lab.nat_counter("icmp_errors_translated");
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
             -o udp.check_checksum:TRUE -T fields -E separator=, \
             -e frame.number -e ip.checksum.status -e tcp.checksum.status \
             -e udp.checksum.status -e icmp.checksum.status -e icmp.type 2>/dev/null"
        ),
    );
    let mut v = Vec::new();
    for line in out.lines() {
        let f: Vec<&str> = line.split(',').collect();
        for (i, name) in [(1, "ip"), (2, "tcp"), (3, "udp"), (4, "icmp")] {
            // Inner (quoted) headers show as a second value: "1,1" -> split.
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
    for ns in ["black", "white", "server", "router"] {
        for dev in ["eth0", "eth1"] {
            lab.sh(
                ns,
                &format!("ethtool -K {dev} tx off >/dev/null 2>&1 || true"),
            );
        }
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
    let dumps = [
        lab.spawn(
            "black",
            &[
                "tcpdump",
                "-i",
                "eth0",
                "--immediate-mode",
                "-U",
                "-w",
                &lab_pcap,
                "ip",
            ],
        ),
        lab.spawn(
            "server",
            &[
                "tcpdump",
                "-i",
                "eth0",
                "--immediate-mode",
                "-U",
                "-w",
                &up_pcap,
                "ip",
            ],
        ),
    ];
    std::thread::sleep(Duration::from_millis(800));
    // TCP both ways (SNAT and DNAT), UDP, ICMP echo, ICMP errors.
    assert_eq!(lab.curl("black", &format!("http://{SERVER}/")), "200");
    assert_eq!(lab.curl("server", &format!("http://{UPLINK}:8080/")), "200");
    let r = lab.udp_probe("black", SERVER, &["43000:7".into()]);
    assert!(r["43000:7"].is_string(), "{r}");
    lab.sh("black", &format!("ping -c 2 -i 0.2 {SERVER}"));
    lab.sh("black", &format!("traceroute -n -q 1 -w 1 -m 3 {SERVER}"));
    std::thread::sleep(Duration::from_millis(1000));
    // Stop our own captures (by pid: other tests run tcpdump too). With
    // --immediate-mode every packet is written as it arrives; without it
    // libpcap holds a ring block that a stopped tcpdump never writes.
    for pid in dumps {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGINT,
        );
    }
    std::thread::sleep(Duration::from_millis(500));
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
    assert!(lab.drop_counter("nat_port_exhausted") >= 1);
    // To another server port the same four ports are free again (the
    // mapping includes the remote), but the table holds six sessions.
    let r = lab.udp_probe("black", SERVER, &pairs(8, 50001..50003));
    assert!(r["50001:8"].is_string() && r["50002:8"].is_string(), "{r}");
    let r = lab.udp_probe("black", SERVER, &pairs(8, 50003..50004));
    assert!(r["50003:8"].is_null(), "table not full at 6: {r}");
    assert!(lab.drop_counter("nat_table_full") >= 1);
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
        let f = format!("/tmp/{}{ns}.ready", lab.sb.prefix());
        let cleanup = f.clone();
        lab.sb.on_cleanup(move || {
            let _ = std::fs::remove_file(cleanup);
        });
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
    let (retries, kept) = (
        lab.nat_counter("port_retries"),
        lab.nat_counter("port_kept"),
    );
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
    assert!(lab.nat_counter("eim_reused") >= 2);
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

/// MAC of `ifname` in `ns` (through `ip -j`: nsenter keeps the caller's /sys).
fn mac_of(lab: &NatLab, ns: &str, ifname: &str) -> String {
    let v: Value = serde_json::from_str(&lab.sh(ns, &format!("ip -j link show {ifname}"))).unwrap();
    v[0]["address"].as_str().unwrap().to_string()
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
    let open: Vec<u64> = serde_json::from_str::<Vec<u64>>(out.trim()).unwrap();
    assert_eq!(open, [8080, 9000, 9001, 9002], "open on the uplink");
    lab.down_clean();
}

#[test]
fn hostile_frames_are_dropped_and_counted_without_harm() {
    require_root!();
    let mut lab = NatLab::new("", FWD_8080_WHITE);
    lab.http_server("white", 8000);
    lab.sh("black", &format!("ping -c 1 -W 2 {SERVER}"));
    let drops = |lab: &NatLab| -> Value {
        let v: Value = serde_json::from_str(&lab.nb(&["stats", "--json"])).unwrap();
        v["drops"].clone()
    };
    let delta = |before: &Value, after: &Value, k: &str| {
        after[k].as_u64().unwrap() - before[k].as_u64().unwrap()
    };
    const N: u64 = 5;
    let scapy = |lab: &NatLab, ns: &str, args: [&str; 6]| {
        let out = lab.sh(
            ns,
            &format!(
                "/usr/bin/python3 {} {} {N}",
                script("hostile.py"),
                args.join(" ")
            ),
        );
        let sent: Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(sent.as_object().unwrap().len(), 14, "{sent}");
    };

    // From a lab namespace into its bridge port (and, routed, the uplink).
    let (black_mac, gw_mac) = (mac_of(&lab, "black", "eth0"), mac_of(&lab, "gw", "br0"));
    let before = drops(&lab);
    scapy(
        &lab,
        "black",
        [
            "eth0",
            &black_mac,
            "192.168.1.10",
            &gw_mac,
            SERVER,
            "192.168.2.10",
        ],
    );
    let after = Sandbox::wait_for(Duration::from_secs(5), || {
        let a = drops(&lab);
        (delta(&before, &a, "nat_fragment") >= N).then_some(a)
    })
    .unwrap_or_else(|| drops(&lab));
    for (reason, kinds) in [
        ("truncated_l3", 2),    // truncated_ip, ihl_beyond_frame
        ("bad_ipv4_header", 2), // bad_ihl, bad_version
        ("vlan_too_deep", 1),
        ("spoofed_arp", 1),
        ("spoofed_ipv4", 1),
        ("spoofed_mac", 1),
        ("bad_src_mac", 1),
        ("nat_fragment", 1), // a non-first fragment cannot be mapped
    ] {
        assert!(
            delta(&before, &after, reason) >= kinds * N,
            "{reason}: {} < {}; drops {after}",
            delta(&before, &after, reason),
            kinds * N
        );
    }

    // From upstream into the uplink program.
    let (router_mac, uplink_mac) = (
        mac_of(&lab, "router", "eth0"),
        mac_of(&lab, "gw", "uplink0"),
    );
    let before = drops(&lab);
    scapy(
        &lab,
        "router",
        [
            "eth0",
            &router_mac,
            "203.0.113.254",
            &uplink_mac,
            UPLINK,
            "203.0.113.99",
        ],
    );
    let after = drops(&lab);
    assert!(
        delta(&before, &after, "bad_ipv4_header") >= 2 * N,
        "{after}"
    );
    assert!(delta(&before, &after, "truncated_l3") >= 2 * N, "{after}");

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
    lab.down_clean();
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

#[test]
fn restart_and_upgrade_lose_no_packets_or_sessions() {
    require_root!();
    let mut lab = NatLab::new("", "");
    let out = format!("/tmp/{}count.json", lab.sb.prefix());
    let o = out.clone();
    lab.sb.on_cleanup(move || {
        let _ = std::fs::remove_file(o);
    });
    lab.spawn(
        "server",
        &["python3", &script("udp_count.py"), "9999", &out, "2", "60"],
    );
    lab.wait_listen("server", "udp", 9999);
    let before = (
        tcx_prog_ids(&lab, "gw", "uplink0"),
        tcx_prog_ids(&lab, "gw", "nb-black"),
    );
    assert_eq!(before.0.len(), 2, "uplink programs: {before:?}");
    // A counted UDP stream through SNAT (3,000 datagrams over ~3 s) while
    // the loader restarts (plain `up`) and upgrades the programs in place
    // (`up --reload`) several times.
    let black = lab.ns("black");
    let sender = std::thread::spawn(move || {
        std::process::Command::new("nsenter")
            .arg(format!("--net=/run/netns/{black}"))
            .args([
                "--",
                "python3",
                &script("udp_send.py"),
                SERVER,
                "9999",
                "45000",
                "3000",
                "0.001",
            ])
            .output()
            .unwrap()
    });
    std::thread::sleep(Duration::from_millis(300));
    let mut replaced = 0;
    for i in 0..4 {
        let args: &[&str] = if i == 1 { &["up"] } else { &["up", "--reload"] };
        let o = lab.nb(args);
        replaced += o.matches("attached (replacing)").count();
        std::thread::sleep(Duration::from_millis(250));
    }
    let sent = sender.join().unwrap();
    assert!(sent.status.success(), "{sent:?}");
    assert_eq!(String::from_utf8_lossy(&sent.stdout).trim(), "3000");
    // 3 reloads x (2 uplink + 2 port programs).
    assert_eq!(replaced, 12, "programs replaced");
    let after = (
        tcx_prog_ids(&lab, "gw", "uplink0"),
        tcx_prog_ids(&lab, "gw", "nb-black"),
    );
    assert_eq!(
        after.0.len(),
        2,
        "exactly the new uplink programs: {after:?}"
    );
    assert!(
        after.0.iter().all(|id| !before.0.contains(id)) && after.1 != before.1,
        "programs not replaced: {before:?} -> {after:?}"
    );
    let counted = Sandbox::wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(&out)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
    })
    .expect("counter result");
    assert_eq!(counted["received"], 3000, "lost packets: {counted}");
    assert_eq!(counted["distinct"], 3000, "{counted}");
    // One session the whole time: the server saw a single mapped source.
    let sources = counted["sources"].as_array().unwrap();
    assert_eq!(sources.len(), 1, "mapping changed: {counted}");
    assert!(
        sources[0].as_str().unwrap().starts_with(UPLINK),
        "{counted}"
    );
    lab.down_clean();
}

#[test]
fn datapath_log_shows_new_sessions_and_drops_rate_limited() {
    require_root!();
    let mut lab = NatLab::new("", FWD_8080_WHITE);
    lab.http_server("white", 8000);
    lab.udp_echo("server", 7, "server");
    let log = format!("/tmp/{}log.txt", lab.sb.prefix());
    let l = log.clone();
    lab.sb.on_cleanup(move || {
        let _ = std::fs::remove_file(l);
    });
    let bin = netbridge_tests::netbridge_bin();
    let name = lab.sb.name("nat");
    let host = lab.sb.host.clone();
    lab.sb.spawn(
        &host,
        &[
            "sh",
            "-c",
            &format!(
                "exec {} log --name {name} --duration 6s > {log}",
                bin.display()
            ),
        ],
    );
    std::thread::sleep(Duration::from_millis(1000));
    // 200 new UDP sessions in a burst, one DNAT session, one forged source.
    let pairs: Vec<String> = (46000..46200).map(|p| format!("{p}:7")).collect();
    let r = lab.udp_probe("black", SERVER, &pairs);
    assert!(pairs.iter().all(|p| r[p].is_string()), "{r}");
    // The burst used up this second's budget of new-session events.
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(lab.curl("server", &format!("http://{UPLINK}:8080/")), "200");
    lab.sh(
        "black",
        &format!("ip addr add 192.168.9.9/32 dev eth0; ping -c 1 -W 1 -I 192.168.9.9 {SERVER} || true; ip addr del 192.168.9.9/32 dev eth0"),
    );
    let text = Sandbox::wait_for(Duration::from_secs(10), || {
        let t = std::fs::read_to_string(&log).ok()?;
        (t.contains("new dnat") && t.contains("spoofed_ipv4")).then_some(t)
    })
    .unwrap_or_else(|| std::fs::read_to_string(&log).unwrap_or_default());
    assert!(
        text.contains(
            "new snat proto 17 192.168.1.10:46000 -> 203.0.113.1:46000 to 198.51.100.10:7"
        ),
        "{text}"
    );
    assert!(
        text.contains(&format!("new dnat proto 6 from {SERVER}:"))
            && text.contains("-> 192.168.2.10:8000"),
        "{text}"
    );
    assert!(text.contains("drop spoofed_ipv4 (reason 6)"), "{text}");
    // Rate limit: at most 10 new-session events per CPU per second were
    // logged out of 200 sessions opened within a couple of seconds.
    let logged = text
        .lines()
        .filter(|l| l.contains("new snat proto 17"))
        .count();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    assert!(
        logged >= 1 && logged <= 10 * cpus * 4 && logged < 200,
        "{logged} snat events logged"
    );
    lab.down_clean();
}
