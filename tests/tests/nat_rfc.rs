//! NAT behaviour against the IETF requirements for UDP (RFC 4787), TCP
//! (RFC 5382), ICMP (RFC 5508) and their updates (RFC 7857), measured with a
//! real RFC 5780 client: coturn's `turnutils_natdiscovery` in a lab host and
//! coturn's `turnserver` as a STUN server on two upstream addresses. Each
//! test is named after the requirement it proves; only requirements netbridge
//! meets today have one. The comparison test runs the same probes through a
//! Linux bridge + iptables MASQUERADE lab and prints a table.
//!
//! Both labs: black (192.168.1.10 and .11) and white (192.168.2.10) on a
//! bridge in the NAT box "gw", whose uplink 203.0.113.1 faces a router
//! (203.0.113.254 / 198.51.100.1); behind the router the STUN server "stun"
//! on 198.51.100.10 and .11, ports 3478 and 3479. The router has no route to
//! 192.168.0.0/16: only translated traffic comes back.
use std::{
    io::Write as _,
    path::PathBuf,
    time::{Duration, Instant},
};

use netbridge_tests::{Sandbox, require_root, script};
use serde_json::Value;

const STUN1: &str = "198.51.100.10";
const STUN2: &str = "198.51.100.11";
const UPLINK: &str = "203.0.113.1";
const BLACK: &str = "192.168.1.10";
const BLACK2: &str = "192.168.1.11";

/// Which NAT the lab's "gw" runs.
enum Nat {
    /// netbridge (`up` of a topology file), BPF SNAT on the uplink.
    Netbridge { file: String, toml: String },
    /// A Linux bridge and `iptables -t nat ... -j MASQUERADE`.
    Masquerade,
}

/// A NAT lab with the STUN server running.
struct Lab {
    sb: Sandbox,
    nat: Nat,
}

/// The netbridge lab; `{uplink}` takes extra `[uplink]` keys.
const NETBRIDGE_LAB: &str = r#"name = "nat"
host_netns = "gw"

[bridge]
name = "br0"
addresses = ["192.168.0.1/16"]

[[namespace]]
name = "black"
addresses = ["192.168.1.10/24", "192.168.1.11/24"]
routes = [{ to = "default", via = "192.168.0.1", dev = "eth0" }]

[[namespace]]
name = "white"
addresses = ["192.168.2.10/24"]
routes = [{ to = "default", via = "192.168.0.1", dev = "eth0" }]

[[namespace]]
name = "router"
bridge = false
sysctls = { "net.ipv4.ip_forward" = "1" }

[[namespace]]
name = "stun"
bridge = false

[[link]]
a = { ifname = "uplink0", addresses = ["203.0.113.1/24"] }
b = { netns = "router", ifname = "eth0", addresses = ["203.0.113.254/24"] }

[[link]]
a = { netns = "router", ifname = "eth1", addresses = ["198.51.100.1/24"] }
b = { netns = "stun", ifname = "eth0", addresses = ["198.51.100.10/24", "198.51.100.11/24"], routes = [{ to = "default", via = "198.51.100.1" }] }

[uplink]
ifname = "uplink0"
masquerade = true
gateway = "203.0.113.254"
{uplink}
"#;

impl Lab {
    /// netbridge's NAT; `uplink_extra` is appended to `[uplink]`.
    fn netbridge(uplink_extra: &str) -> Lab {
        let mut sb = Sandbox::new();
        let file = sb.tmp_file("nat.toml").display().to_string();
        let mut lab = Lab {
            sb,
            nat: Nat::Netbridge {
                file,
                toml: String::new(),
            },
        };
        lab.reconfigure(uplink_extra);
        lab.start_stun();
        lab
    }

    /// Rewrites `[uplink]` of the netbridge lab and runs `up` again (it
    /// reconciles the NAT settings in place).
    fn reconfigure(&mut self, uplink_extra: &str) {
        let Nat::Netbridge { file, toml } = &mut self.nat else {
            panic!("not a netbridge lab");
        };
        *toml = NETBRIDGE_LAB.replace("{uplink}", uplink_extra);
        std::fs::write(&*file, &*toml).unwrap();
        let file = file.clone();
        self.nb(&["up", "-f", &file]);
    }

    /// The baseline: the same addressing built by hand, iptables MASQUERADE
    /// in the sandbox's host namespace (the NAT box), nothing of netbridge.
    fn masquerade() -> Lab {
        let mut sb = Sandbox::new();
        for n in ["black", "white", "router", "stun"] {
            sb.add_ns(n);
        }
        let lab = Lab {
            sb,
            nat: Nat::Masquerade,
        };
        let (gw, router, stun) = (lab.ns("gw"), lab.ns("router"), lab.ns("stun"));
        let sb = &lab.sb;
        sb.sh(
            &gw,
            "ip link add br0 type bridge && ip addr add 192.168.0.1/16 dev br0 \
             && ip link set br0 up && sysctl -qw net.ipv4.ip_forward=1",
        );
        for (h, addrs) in [
            ("black", vec![BLACK, BLACK2]),
            ("white", vec!["192.168.2.10"]),
        ] {
            let ns = lab.ns(h);
            let port = format!("nb-{h}");
            sb.veth(&gw, &port, None, &ns, "eth0", None);
            sb.sh(&gw, &format!("ip link set {port} master br0"));
            for a in addrs {
                sb.sh(&ns, &format!("ip addr add {a}/24 dev eth0"));
            }
            sb.sh(&ns, "ip route add default via 192.168.0.1 dev eth0 onlink");
        }
        sb.veth(
            &gw,
            "uplink0",
            Some("203.0.113.1/24"),
            &router,
            "eth0",
            Some("203.0.113.254/24"),
        );
        sb.veth(
            &router,
            "eth1",
            Some("198.51.100.1/24"),
            &stun,
            "eth0",
            Some("198.51.100.10/24"),
        );
        sb.sh(&router, "sysctl -qw net.ipv4.ip_forward=1");
        sb.sh(
            &stun,
            "ip addr add 198.51.100.11/24 dev eth0 && ip route add default via 198.51.100.1",
        );
        sb.sh(
            &gw,
            "ip route add default via 203.0.113.254 && iptables -t nat -A POSTROUTING \
             -s 192.168.0.0/16 -o uplink0 -j MASQUERADE",
        );
        let mut lab = lab;
        lab.start_stun();
        lab
    }

    fn name(&self) -> &'static str {
        match &self.nat {
            Nat::Netbridge { toml, .. } if toml.contains("endpoint_independent = true") => {
                "netbridge (endpoint_independent)"
            }
            Nat::Netbridge { toml, .. } if toml.contains("filtering = \"address-dependent\"") => {
                "netbridge (filtering = address-dependent)"
            }
            Nat::Netbridge { toml, .. }
                if toml.contains("filtering = \"endpoint-independent\"") =>
            {
                "netbridge (filtering = endpoint-independent)"
            }
            Nat::Netbridge { .. } => "netbridge (default)",
            Nat::Masquerade => "bridge + iptables MASQUERADE",
        }
    }

    /// Namespace of a lab role (the NAT box of the baseline is the
    /// sandbox's host namespace).
    fn ns(&self, role: &str) -> String {
        match (&self.nat, role) {
            (Nat::Masquerade, "gw") => self.sb.host.clone(),
            _ => self.sb.name(role),
        }
    }

    fn sh(&self, role: &str, script: &str) -> String {
        self.sb.sh(&self.ns(role), script)
    }

    /// The netbridge CLI in the sandbox host, with `--prefix` (and the
    /// topology name for commands that take `--name`).
    fn nb(&self, args: &[&str]) -> String {
        let prefix = self.sb.prefix();
        let mut full: Vec<&str> = args.to_vec();
        let name = self.sb.name("nat");
        if args[0] == "up" {
            full.extend(["--prefix", &prefix]);
        } else {
            full.extend(["--name", &name]);
        }
        self.sb.nb_ok(&full)
    }

    fn conntrack(&self) -> Vec<Value> {
        let v: Value = serde_json::from_str(&self.nb(&["conntrack", "--json"])).unwrap();
        v["sessions"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| panic!("no session list in {v}"))
    }

    fn nat_counter(&self, name: &str) -> u64 {
        let v: Value = serde_json::from_str(&self.nb(&["stats", "--json"])).unwrap();
        v["nat"]["counters"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("no nat counter {name} in {v}"))
    }

    /// coturn's STUN server on both upstream addresses, ports 3478 and
    /// 3479 (RFC 5780 needs the alternate address and port), and a UDP echo
    /// on port 7. Files live in a sandbox directory; both processes are
    /// killed by pid at cleanup.
    fn start_stun(&mut self) {
        for bin in ["/usr/bin/turnserver", "/usr/bin/turnutils_natdiscovery"] {
            assert!(
                std::path::Path::new(bin).exists(),
                "{bin} missing: install Debian's coturn (cargo xtask setup)"
            );
        }
        let dir = format!("/tmp/{}turn", self.sb.prefix());
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.clone();
        self.sb.on_cleanup(move || {
            let _ = std::fs::remove_dir_all(d);
        });
        let (db, log, pid) = (
            format!("{dir}/turndb"),
            format!("{dir}/turn.log"),
            format!("{dir}/turn.pid"),
        );
        let ns = self.ns("stun");
        self.sb.spawn(
            &ns,
            &[
                "turnserver",
                "-n",
                "-L",
                STUN1,
                "-L",
                STUN2,
                "-p",
                "3478",
                "--stun-only",
                "--no-tls",
                "--no-dtls",
                "--no-tcp",
                "--no-cli",
                "-z",
                "--db",
                &db,
                "--no-stdout-log",
                "--simple-log",
                "--log-file",
                &log,
                "--pidfile",
                &pid,
            ],
        );
        // And a UDP echo on port 7 for the fragmentation probe.
        self.sb.spawn(
            &ns,
            &["python3", &script("udp_echo.py"), "7", "stun", "300"],
        );
        let ready = Sandbox::wait_for(Duration::from_secs(15), || {
            let ss = self.sh("stun", "ss -uln");
            (ss.contains(&format!("{STUN1}:3479"))
                && ss.contains(&format!("{STUN2}:3479"))
                && ss.contains(":7 "))
            .then_some(())
        });
        assert!(ready.is_some(), "turnserver did not listen; log: {log}");
    }

    /// `turnutils_natdiscovery ARGS 198.51.100.10` in lab host `from`.
    fn discover(&self, from: &str, args: &[&str]) -> String {
        let mut argv = vec!["turnutils_natdiscovery"];
        argv.extend_from_slice(args);
        argv.push(STUN1);
        let out = self
            .sb
            .cmd(&self.ns(from), &argv)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("spawn turnutils_natdiscovery");
        assert!(out.status.success(), "natdiscovery {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A datagram from white's port `sport` to the second STUN address, so
    /// that external port is taken toward that destination.
    fn occupy_port_from_white(&self, sport: u16) {
        self.sh(
            "white",
            &format!(
                "python3 -c \"import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); \
                 s.bind(('0.0.0.0', {sport})); s.sendto(b'x', ('{STUN2}', 3478))\""
            ),
        );
    }

    /// TCP simultaneous open between black:`port` and stun:`port`+1000
    /// (tests/scripts/tcp_simopen.py); JSON result.
    fn simultaneous_open(&self, port: u16, unsolicited: bool) -> Value {
        self.simultaneous_open_as(port, if unsolicited { "--unsolicited" } else { "" })
    }

    /// The same with tcp_simopen.py's `mode` option ("" for none).
    fn simultaneous_open_as(&self, port: u16, mode: &str) -> Value {
        let mut cmd = format!(
            "python3 {} {BLACK} {port} {STUN1} {} {UPLINK} {port} {} {}",
            script("tcp_simopen.py"),
            port + 1000,
            self.ns("stun"),
            self.ns("router"),
        );
        if !mode.is_empty() {
            cmd.push_str(&format!(" {mode}"));
        }
        let out = self.sh("black", &cmd);
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
    }
}

/// The verdict line of a natdiscovery run ("NAT with X Mapping!" or
/// "... Filtering!"), without the decoration: e.g. "Endpoint Independent".
fn verdict(out: &str, what: &str) -> Option<String> {
    out.lines().find_map(|l| {
        let v = l.strip_prefix("NAT with ")?.strip_suffix('!')?;
        v.strip_suffix(what).map(|s| s.trim().to_string())
    })
}

/// Every "UDP reflexive addr" (the mapping the server saw), in order.
fn reflexive(out: &str) -> Vec<(String, u16)> {
    out.lines()
        .filter_map(|l| l.split_once("UDP reflexive addr: ").map(|(_, a)| a.trim()))
        .filter_map(|a| {
            let (ip, port) = a.rsplit_once(':')?;
            Some((ip.to_string(), port.parse().ok()?))
        })
        .collect()
}

/// Local ports natdiscovery reports ("Local addr: : IP:PORT"), in order.
fn local_ports(out: &str) -> Vec<u16> {
    out.lines()
        .filter_map(|l| l.split_once("Local addr: : ").map(|(_, a)| a.trim()))
        .filter_map(|a| a.rsplit_once(':')?.1.parse().ok())
        .collect()
}

/// Writes straight to the stderr handle (libtest captures `eprintln!` of
/// passing tests; the comparison table must be seen).
fn show(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// One lab's answers to the probes the comparison runs.
struct Profile {
    rows: Vec<(&'static str, String)>,
    mapping: Option<String>,
    filtering: Option<String>,
    alg: bool,
}

/// Runs every probe against `lab` (the lifetime row is added by the
/// caller once the background run is done).
fn profile(lab: &Lab) -> Profile {
    let m = lab.discover("black", &["-m", "-L", BLACK]);
    // Port collision: white holds external port 40000 toward STUN2:3478
    // before black maps its own port 40000.
    lab.occupy_port_from_white(40000);
    let mc = lab.discover("black", &["-m", "-L", BLACK, "-l", "40000"]);
    let f = lab.discover("black", &["-f", "-L", BLACK]);
    let h = lab.discover("black", &["-H", "-L", BLACK]);
    let c = lab.discover("black", &["-c", "-L", BLACK, "-A", BLACK2]);
    let ports = |out: &str| {
        reflexive(out)
            .iter()
            .map(|(_, p)| p.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let (cl, cr) = (local_ports(&c), reflexive(&c));
    let collision = match (cl.first(), cr.as_slice()) {
        (Some(l), [(_, a), (_, b)]) => format!("local {l} -> {a}, other host same port -> {b}"),
        _ => format!("unparsed: {c}"),
    };
    let simopen = lab.simultaneous_open(53000, false);
    let unsolicited = lab.simultaneous_open(53100, true);
    let icmp = lab.sh(
        "black",
        &format!(
            "python3 {} {BLACK} 52000 {STUN1} 9999 2",
            script("udp_icmp_probe.py")
        ),
    );
    // A 4000-byte datagram (the sender fragments it, DF clear) and its echo.
    let big = lab.sh(
        "black",
        &format!(
            "python3 -c \"import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); \
             s.bind(('{BLACK}', 55000)); s.settimeout(2); s.sendto(b'x' * 4000, ('{STUN1}', 7))\n\
             try: print('echoed %d bytes' % len(s.recv(65535)))\n\
             except socket.timeout: print('lost')\""
        ),
    );
    let all = [&m, &mc, &f, &h, &c];
    let alg = all.iter().any(|o| o.contains("ALG detected"));
    let mapping = verdict(&m, "Mapping");
    let filtering = verdict(&f, "Filtering");
    let rows = vec![
        (
            "mapping (-m)",
            format!("{} [{}]", mapping.clone().unwrap_or_default(), ports(&m)),
        ),
        (
            "mapping, port 40000 taken by white (-m -l 40000)",
            format!(
                "{} [{}]",
                verdict(&mc, "Mapping").unwrap_or_default(),
                ports(&mc)
            ),
        ),
        ("filtering (-f)", filtering.clone().unwrap_or_default()),
        (
            "hairpinning (-H)",
            if h.contains("Received a request") {
                "yes".into()
            } else {
                "no (timeout)".into()
            },
        ),
        ("two hosts, one source port (-c -A)", collision),
        (
            "ALG (MAPPED vs XOR-MAPPED)",
            if alg { "detected" } else { "none" }.into(),
        ),
        (
            "TCP simultaneous open",
            format!(
                "inside {}, outside {}",
                simopen["inside"].as_str().unwrap_or("?"),
                simopen["outside"].as_str().unwrap_or("?")
            ),
        ),
        (
            "unsolicited inbound SYN",
            format!(
                "outside connect: {}",
                unsolicited["outside"].as_str().unwrap_or("?")
            ),
        ),
        ("ICMP port unreachable to sender (x2)", icmp.trim().into()),
        (
            "4000-byte UDP datagram (fragments) echoed",
            big.trim().into(),
        ),
    ];
    Profile {
        rows,
        mapping,
        filtering,
        alg,
    }
}

/// `-t -T 40` started in the background in `lab`'s black; returns the
/// output file to collect with [`collect`].
fn start_lifetime(lab: &mut Lab) -> String {
    let out = lab.sb.tmp_file("lifetime.txt").display().to_string();
    let ns = lab.ns("black");
    lab.sb.spawn(
        &ns,
        &[
            "sh",
            "-c",
            &format!("turnutils_natdiscovery -t -T 40 -L {BLACK} {STUN1} > {out} 2>&1"),
        ],
    );
    out
}

/// Waits for the background lifetime run to finish (its second answer or
/// its receive timeout).
fn collect(file: &str) -> String {
    let end = Instant::now() + Duration::from_secs(70);
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if text.contains("RFC 5780 response 2") || text.contains("STUN receive timeout") {
            return text;
        }
        assert!(Instant::now() < end, "lifetime run did not finish: {text}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn comparison_natdiscovery_netbridge_vs_iptables_masquerade() {
    require_root!();
    let mut labs = [
        Lab::masquerade(),
        Lab::netbridge(""),
        Lab::netbridge("endpoint_independent = true"),
        Lab::netbridge("filtering = \"address-dependent\""),
        Lab::netbridge("filtering = \"endpoint-independent\""),
    ];
    // The 40 s lifetime runs overlap each other and the other probes.
    let files: Vec<String> = labs.iter_mut().map(start_lifetime).collect();
    let mut profiles: Vec<(&str, Profile)> = labs.iter().map(|l| (l.name(), profile(l))).collect();
    for ((_, p), file) in profiles.iter_mut().zip(&files) {
        let lifetime = collect(file);
        let alive = if lifetime.contains("RFC 5780 response 2") {
            "yes"
        } else {
            "no (timeout)"
        };
        p.rows
            .push(("mapping alive after 40 s idle (-t -T 40)", alive.into()));
        p.alg |= lifetime.contains("ALG detected");
    }
    let mut table = String::from("| probe (turnutils_natdiscovery unless noted) |");
    for (name, _) in &profiles {
        table.push_str(&format!(" {name} |"));
    }
    table.push_str(&format!("\n|---|{}\n", "---|".repeat(profiles.len())));
    for (i, (probe, _)) in profiles[0].1.rows.iter().enumerate() {
        table.push_str(&format!("| {probe} |"));
        for (_, p) in &profiles {
            table.push_str(&format!(" {} |", p.rows[i].1));
        }
        table.push('\n');
    }
    show(&format!(
        "\nNAT behaviour, same client and server:\n{table}"
    ));
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::write(dir.join("nat-rfc-comparison.md"), &table).unwrap();

    for (name, p) in &profiles {
        assert!(p.mapping.is_some(), "{name}: no mapping verdict\n{table}");
        assert!(
            p.filtering.is_some(),
            "{name}: no filtering verdict\n{table}"
        );
        assert!(!p.alg, "{name}: STUN payload rewritten\n{table}");
    }
    let (masq, nb, eim) = (&profiles[0].1, &profiles[1].1, &profiles[2].1);
    let (adf, eif) = (&profiles[3].1, &profiles[4].1);
    // The README's claim: by default netbridge maps and filters like
    // MASQUERADE (port-preserving, address-and-port-dependent filtering).
    assert_eq!(
        masq.filtering.as_deref(),
        Some("Address and Port Dependent")
    );
    assert_eq!(nb.filtering, masq.filtering, "\n{table}");
    assert_eq!(nb.mapping, masq.mapping, "\n{table}");
    assert_eq!(eim.mapping.as_deref(), Some("Endpoint Independent"));
    // Each filtering setting reads as itself to the RFC 5780 client, with
    // the endpoint-independent mapping it implies; only EIF lets natdiscovery
    // -H hairpin (its second socket never got an answer from the first's
    // remote, so APDF and ADF filter it, as they would from outside).
    assert_eq!(eim.filtering, masq.filtering, "\n{table}");
    assert_eq!(
        adf.filtering.as_deref(),
        Some("Address Dependent"),
        "\n{table}"
    );
    assert_eq!(
        eif.filtering.as_deref(),
        Some("Endpoint Independent"),
        "\n{table}"
    );
    for p in [adf, eif] {
        assert_eq!(
            p.mapping.as_deref(),
            Some("Endpoint Independent"),
            "\n{table}"
        );
    }
    let hairpin = |p: &Profile| p.rows.iter().any(|(k, v)| k.contains("-H") && v == "yes");
    assert!(hairpin(eif), "EIF: no hairpin\n{table}");
    assert!(!hairpin(nb) && !hairpin(adf) && !hairpin(masq), "\n{table}");
    // In-order fragments are translated (RFC 4787 REQ-14): the 4,000-byte
    // datagram and its echo cross every NAT, as through MASQUERADE.
    for (name, p) in &profiles {
        let big = p.rows.iter().find(|(k, _)| k.starts_with("4000-byte"));
        assert_eq!(
            big.map(|(_, v)| v.as_str()),
            Some("echoed 4023 bytes"),
            "{name}\n{table}"
        );
    }
}

/// RFC 4787 REQ-1 (UDP): with `endpoint_independent = true` an inside
/// endpoint keeps one external port for every destination, as an RFC 5780
/// client sees it (natdiscovery -m asks the primary address, the alternate
/// address, then the alternate port). Source ports outside `nat_ports`
/// force an allocation, so port preservation cannot fake the result; the
/// control is the same probe without EIM, which natdiscovery must classify
/// as address-and-port-dependent. (Not covered, not met yet: EIM when
/// another inside endpoint holds the same external port, see the notes.)
#[test]
fn rfc4787_req1_mapping_endpoint_independent_when_configured() {
    require_root!();
    let mut lab = Lab::netbridge("nat_ports = \"40000-49999\"");
    let out = lab.discover("black", &["-m", "-L", BLACK, "-l", "51000"]);
    assert_eq!(
        verdict(&out, "Mapping").as_deref(),
        Some("Address and Port Dependent"),
        "control without EIM:\n{out}"
    );
    lab.reconfigure("nat_ports = \"40000-49999\"\nendpoint_independent = true");
    let out = lab.discover("black", &["-m", "-L", BLACK, "-l", "51001"]);
    assert_eq!(
        verdict(&out, "Mapping").as_deref(),
        Some("Endpoint Independent"),
        "{out}"
    );
    let maps = reflexive(&out);
    assert_eq!(maps.len(), 2, "{out}");
    for (ip, port) in &maps {
        assert_eq!(ip, UPLINK);
        assert!(
            (40000..=49999).contains(port),
            "port {port} outside nat_ports"
        );
    }
    assert!(lab.nat_counter("eim_reused") >= 1);
}

/// RFC 5382 REQ-1 (TCP): the same with TCP connections from one source port
/// to two server addresses; the server reports the address it saw.
#[test]
fn rfc5382_req1_tcp_mapping_endpoint_independent_when_configured() {
    require_root!();
    let mut lab = lab_with_whoami("nat_ports = \"40000-49999\"");
    let seen = |lab: &Lab, sport: u16| -> Vec<String> {
        [STUN1, STUN2]
            .iter()
            .map(|dst| {
                let out = lab.sh(
                    "black",
                    &format!(
                        "python3 {} client {BLACK} {sport} {dst} 80",
                        script("tcp_whoami.py")
                    ),
                );
                out.trim().to_string()
            })
            .collect()
    };
    let without = seen(&lab, 51000);
    assert!(
        without.iter().all(|s| s.starts_with(&format!("{UPLINK}:"))),
        "{without:?}"
    );
    assert_ne!(without[0], without[1], "control without EIM: one mapping");
    lab.reconfigure("nat_ports = \"40000-49999\"\nendpoint_independent = true");
    let with = seen(&lab, 51001);
    assert_eq!(with[0], with[1], "EIM gave two TCP mappings: {with:?}");
    let port: u16 = with[0].rsplit_once(':').unwrap().1.parse().unwrap();
    assert!((40000..=49999).contains(&port), "{with:?}");
}

/// RFC 4787 REQ-3 (no port overloading): two inside endpoints with the same
/// source port talking to the same server get distinct external ports
/// (natdiscovery -c with an alternative local address). The first keeps its
/// port (port preservation, README "Ports").
#[test]
fn rfc4787_req3_no_port_overloading() {
    require_root!();
    let lab = Lab::netbridge("");
    let out = lab.discover("black", &["-c", "-L", BLACK, "-A", BLACK2]);
    let maps = reflexive(&out);
    let local = local_ports(&out);
    assert_eq!(maps.len(), 2, "{out}");
    assert_eq!(local.len(), 2, "{out}");
    assert_eq!(local[0], local[1], "both probes use one source port: {out}");
    assert!(maps.iter().all(|(ip, _)| ip == UPLINK), "{out}");
    assert_ne!(
        maps[0].1, maps[1].1,
        "one external port for two hosts: {out}"
    );
    assert_eq!(
        maps[0].1, local[0],
        "first mapping did not keep the port: {out}"
    );
}

/// RFC 4787 REQ-10 (no ALG for UDP): the STUN server's MAPPED-ADDRESS (plain)
/// and XOR-MAPPED-ADDRESS agree in every answer, so nothing rewrote
/// addresses inside the payload.
#[test]
fn rfc4787_req10_no_alg_rewrites_udp_payload() {
    require_root!();
    let lab = Lab::netbridge("");
    let out = lab.discover("black", &["-m", "-L", BLACK]);
    let answers = out.matches("No ALG: Mapped == XOR-Mapped").count();
    assert!(answers >= 2, "expected at least two answers:\n{out}");
    assert!(!out.contains("ALG detected"), "{out}");
}

/// RFC 4787 REQ-12 (an ICMP error does not end the mapping): datagrams to a
/// closed server port come back as ICMP Port Unreachable through the NAT
/// (the sender's connected socket sees ECONNREFUSED each time), and the
/// session stays with the same external port.
#[test]
fn rfc4787_req12_icmp_error_does_not_terminate_udp_mapping() {
    require_root!();
    let lab = Lab::netbridge("");
    let before = lab.nat_counter("icmp_errors_translated");
    let out = lab.sh(
        "black",
        &format!(
            "python3 {} {BLACK} 52000 {STUN1} 9999 3",
            script("udp_icmp_probe.py")
        ),
    );
    assert_eq!(out.trim(), "refused refused refused", "{out}");
    assert!(lab.nat_counter("icmp_errors_translated") >= before + 3);
    let s: Vec<Value> = lab
        .conntrack()
        .into_iter()
        .filter(|x| x["inside"] == format!("{BLACK}:52000"))
        .collect();
    assert_eq!(s.len(), 1, "{s:?}");
    assert_eq!(s[0]["external"], format!("{UPLINK}:52000"), "{s:?}");
    assert_eq!(s[0]["remote"], format!("{STUN1}:9999"), "{s:?}");
}

/// RFC 5382 REQ-2 (all valid TCP sequences, simultaneous open): the inside
/// SYN creates the mapping (and is swallowed before the server), then the
/// server connects to that mapping: both sockets are in SYN-SENT, both end
/// up connected and exchange data. Control: the same outside connect
/// without an inside SYN first is refused.
#[test]
fn rfc5382_req2_tcp_simultaneous_open() {
    require_root!();
    let lab = Lab::netbridge("");
    let r = lab.simultaneous_open(53000, false);
    assert_eq!(r["inside"], "connected", "{r}");
    assert_eq!(r["outside"], "connected", "{r}");
    assert_eq!(r["outside_got"], "from-inside", "{r}");
    assert_eq!(r["inside_got"], "from-outside", "{r}");
    assert_eq!(r["outside_peer"], format!("{UPLINK}:53000"), "{r}");
    let control = lab.simultaneous_open(53100, true);
    assert_ne!(control["outside"], "connected", "{control}");
}

/// RFC 4787 REQ-6 (outbound refresh): a sender that only sends (the server
/// never answers) keeps its mapping past the idle timeout, because each
/// outbound packet refreshes it: `netbridge gc` after 5 s of a 3 s timeout
/// removes nothing and every datagram leaves from one external port. The
/// control: once the sender stops, the kernel expires the session.
#[test]
fn rfc4787_req6_outbound_refresh_keeps_mapping() {
    require_root!();
    let mut lab = Lab::netbridge("timeouts = { udp = 3, udp_replied = 3 }");
    let result = lab.sb.tmp_file("count.json").display().to_string();
    let ns = lab.ns("stun");
    lab.sb.spawn(
        &ns,
        &[
            "python3",
            &script("udp_count.py"),
            "5000",
            &result,
            "3",
            "30",
        ],
    );
    let ok = Sandbox::wait_for(Duration::from_secs(10), || {
        lab.sh("stun", "ss -uln").contains(":5000 ").then_some(())
    });
    assert!(ok.is_some(), "udp sink not listening");
    let ns = lab.ns("black");
    let progress = lab.sb.tmp_file("sent.txt").display().to_string();
    let stop = lab.sb.tmp_file("stop").display().to_string();
    // 16 datagrams, one every 0.5 s, from port 54000.
    lab.sb.spawn(
        &ns,
        &[
            "python3",
            &script("udp_send.py"),
            STUN1,
            "5000",
            "54000",
            "0.5",
            &progress,
            &stop,
            "16",
            "30",
        ],
    );
    std::thread::sleep(Duration::from_secs(5));
    let gc = lab.nb(&["gc"]);
    assert!(gc.contains("removed 0 expired sessions, 1 live"), "{gc}");
    // The one live session: the kernel's expiry counters move by one when it goes.
    let expired = |lab: &Lab| lab.nat_counter("expired_sweep") + lab.nat_counter("expired_lookup");
    let before = expired(&lab);
    let counted = Sandbox::wait_for(Duration::from_secs(20), || {
        std::fs::read_to_string(&result).ok()
    })
    .expect("udp_count.py result");
    let v: Value = serde_json::from_str(&counted).unwrap();
    assert_eq!(v["received"], 16, "{v}");
    assert_eq!(v["sources"], serde_json::json!([format!("{UPLINK}:54000")]));
    // Control: idle now, the kernel's own sweep removes the session within
    // its timeout (3 s) plus a sweep period, with no process running.
    let gone = Sandbox::wait_for(Duration::from_secs(15), || {
        lab.conntrack().is_empty().then_some(())
    });
    assert!(gone.is_some(), "session still there: {:?}", lab.conntrack());
    assert_eq!(expired(&lab), before + 1, "expired by the kernel, once");
}

/// The conntrack session of inside endpoint `inside` toward `remote`.
fn session(lab: &Lab, inside: &str, remote: &str) -> Option<Value> {
    lab.conntrack()
        .into_iter()
        .find(|s| s["inside"] == inside && s["remote"] == remote)
}

/// RFC 4787 REQ-8 (UDP filtering, RECOMMENDED endpoint-independent or
/// address-dependent; REQ-8 a: MAY be configurable): `uplink.filtering`
/// as an RFC 5780 client classifies it (natdiscovery -f asks for answers
/// from the alternate address and port, then from the alternate port).
/// The default is the control: address-and-port-dependent, the same as
/// Linux MASQUERADE.
#[test]
fn rfc4787_req8_filtering_is_a_setting() {
    require_root!();
    let mut lab = Lab::netbridge("");
    for (setting, expect) in [
        ("", "Address and Port Dependent"),
        ("filtering = \"address-dependent\"", "Address Dependent"),
        (
            "filtering = \"endpoint-independent\"",
            "Endpoint Independent",
        ),
    ] {
        if !setting.is_empty() {
            lab.reconfigure(setting);
        }
        let out = lab.discover("black", &["-f", "-L", BLACK]);
        assert_eq!(
            verdict(&out, "Filtering").as_deref(),
            Some(expect),
            "{setting:?}:\n{out}"
        );
    }
    // ADF admitted the alternate port's answer, EIF the alternate address's.
    assert!(lab.nat_counter("filter_admitted") >= 2);
}

/// RFC 4787 REQ-9 (hairpinning) with an RFC 5780 client: natdiscovery -H
/// sends from a second socket to the mapping the first socket learned from
/// the STUN server, through the NAT's external address; with
/// endpoint-independent filtering the first socket receives it. Control:
/// with the default (address-and-port-dependent) filtering the same probe
/// is filtered, as it would be from outside (the first socket never sent
/// to the second's mapping); see `rfc4787_req9_hairpinning_udp_...` for
/// hairpinning under that filtering.
#[test]
fn rfc4787_req9_hairpinning_natdiscovery_endpoint_independent_filtering() {
    require_root!();
    let mut lab = Lab::netbridge("");
    let out = lab.discover("black", &["-H", "-L", BLACK]);
    assert!(!out.contains("Received a request"), "control:\n{out}");
    lab.reconfigure("filtering = \"endpoint-independent\"");
    let out = lab.discover("black", &["-H", "-L", BLACK]);
    assert!(out.contains("Received a request"), "{out}");
    assert!(lab.nat_counter("hairpin_snat") >= 1);
}

/// RFC 4787 REQ-9 and REQ-9 a (hairpinning, external source address and
/// port) under the default address-and-port-dependent filtering, as peers
/// punch holes: white (port 41000) sends to black's external address:port
/// 203.0.113.1:42000 first (filtered: black never sent to white's mapping;
/// black's socket must not see it), then black sends to white's
/// 203.0.113.1:41000: white receives it from black's external mapping (the
/// one conntrack shows, not 192.168.1.10), answers, and black gets the
/// answer from white's external mapping.
#[test]
fn rfc4787_req9_hairpinning_udp_source_is_external_mapping() {
    require_root!();
    let mut lab = Lab::netbridge("");
    let dir = lab.sb.tmp_file("hp");
    std::fs::create_dir_all(&dir).unwrap();
    let f = |n: &str| dir.join(n).display().to_string();
    let peers = [
        ("black", BLACK, "42000", "41000", "from-black"),
        ("white", "192.168.2.10", "41000", "42000", "from-white"),
    ];
    for (role, ip, port, dport, msg) in peers {
        let ns = lab.ns(role);
        let (out, go) = (f(role), f(&format!("{role}.go")));
        lab.sb.spawn(
            &ns,
            &[
                "python3",
                &script("udp_hairpin_peer.py"),
                ip,
                port,
                &out,
                &go,
                UPLINK,
                dport,
                msg,
                "60",
            ],
        );
    }
    let ready = Sandbox::wait_for(Duration::from_secs(10), || {
        (std::path::Path::new(&f("black.ready")).exists()
            && std::path::Path::new(&f("white.ready")).exists())
        .then_some(())
    });
    assert!(ready.is_some(), "peers not ready");
    std::fs::write(f("white.go"), "").unwrap();
    let white_out = format!("{UPLINK}:42000");
    let punched = Sandbox::wait_for(Duration::from_secs(10), || {
        session(&lab, "192.168.2.10:41000", &white_out)
    });
    assert!(punched.is_some(), "white's session: {:?}", lab.conntrack());
    std::fs::write(f("black.go"), "").unwrap();
    let read = |role: &str| -> Vec<Value> {
        let text = std::fs::read_to_string(f(role)).unwrap_or_default();
        serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["received"].as_array().cloned())
            .unwrap_or_default()
    };
    let answered = Sandbox::wait_for(Duration::from_secs(10), || {
        let b = read("black");
        (!b.is_empty()).then_some(b)
    });
    for role in ["black", "white"] {
        std::fs::write(f(&format!("{role}.stop")), "").unwrap();
    }
    let (black, white) = (answered.unwrap_or_default(), read("white"));
    let black_map = session(&lab, &format!("{BLACK}:42000"), &format!("{UPLINK}:41000"))
        .expect("black's session toward white's mapping");
    let white_map = session(&lab, "192.168.2.10:41000", &white_out).unwrap();
    assert_eq!(
        white,
        vec![serde_json::json!(["from-black", black_map["external"]])],
        "white: {white:?}, black's mapping {black_map}"
    );
    assert_eq!(
        black,
        vec![serde_json::json!(["re:from-black", white_map["external"]])],
        "black: {black:?} (from-white must have been filtered)"
    );
    assert_eq!(black_map["external"], format!("{UPLINK}:42000"));
    assert!(lab.nat_counter("hairpin_snat") >= 2);
}

/// RFC 4787 REQ-1 and REQ-11 (endpoint-independent, deterministic mapping)
/// under a port collision: white holds external port 40000 toward the
/// second STUN address first; black's endpoint port 40000 then gets one
/// other external port that it keeps for every destination (natdiscovery
/// -m -l 40000 asks both STUN addresses). Before issue 22 black's mapping
/// changed for the second address (the notes' "Address Dependent" row).
/// Control: without EIM the same probe reads address-and-port-dependent.
#[test]
fn rfc4787_req1_eim_survives_port_collision() {
    require_root!();
    let mut lab = Lab::netbridge("");
    lab.occupy_port_from_white(40000);
    let out = lab.discover("black", &["-m", "-L", BLACK, "-l", "40000"]);
    assert_eq!(
        verdict(&out, "Mapping").as_deref(),
        Some("Address and Port Dependent"),
        "control without EIM:\n{out}"
    );
    lab.reconfigure("endpoint_independent = true");
    lab.occupy_port_from_white(40002);
    let out = lab.discover("black", &["-m", "-L", BLACK, "-l", "40002"]);
    assert_eq!(
        verdict(&out, "Mapping").as_deref(),
        Some("Endpoint Independent"),
        "{out}"
    );
    let ports: Vec<u16> = reflexive(&out).iter().map(|(_, p)| *p).collect();
    assert!(ports.len() >= 2, "{out}");
    assert!(
        ports.iter().all(|p| *p == ports[0] && *p != 40002),
        "{ports:?}"
    );
}

/// RFC 4787 REQ-5 (UDP mapping not below 2 min; REQ-5 c: 5 min
/// recommended), RFC 5382 REQ-5 (TCP transitory 4 min), RFC 5508 REQ-2
/// (ICMP query 60 s): the defaults, as `conntrack` reports the remaining
/// lifetime of fresh sessions of each kind made by real traffic.
#[test]
fn rfc4787_req5_rfc5382_req5_rfc5508_req2_default_timeouts() {
    require_root!();
    let lab = lab_with_whoami("");
    // One-way UDP: the router blackholes the destination, nothing answers.
    lab.sh("router", "ip route add blackhole 198.51.100.200/32");
    lab.sh(
        "black",
        &format!(
            "python3 -c \"import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); \
             s.bind(('{BLACK}', 56000)); s.sendto(b'x', ('198.51.100.200', 9)); \
             s2=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s2.bind(('{BLACK}', 56001)); \
             s2.settimeout(3); s2.sendto(b'x', ('{STUN1}', 7)); s2.recv(100)\""
        ),
    );
    lab.sh("black", &format!("ping -c 1 -W 3 {STUN1}"));
    let who = lab.sh(
        "black",
        &format!(
            "python3 {} client {BLACK} 56002 {STUN1} 80",
            script("tcp_whoami.py")
        ),
    );
    assert!(who.starts_with(UPLINK), "{who}");
    let all = lab.conntrack();
    let expires = |pred: &dyn Fn(&Value) -> bool| -> (String, f64) {
        let s = all
            .iter()
            .find(|s| pred(s))
            .unwrap_or_else(|| panic!("{all:?}"));
        (
            s["state"].as_str().unwrap_or("?").to_string(),
            s["expires_in_secs"].as_f64().unwrap(),
        )
    };
    let one_way = expires(&|s| s["inside"] == format!("{BLACK}:56000"));
    let replied = expires(&|s| s["inside"] == format!("{BLACK}:56001"));
    let icmp = expires(&|s| s["proto"] == "icmp");
    let tcp = expires(&|s| s["inside"] == format!("{BLACK}:56002"));
    let within = |(state, left): &(String, f64), floor: f64| {
        assert!(
            *left > floor - 30.0 && *left <= floor,
            "{state}: {left} s left, default must be {floor} s; {all:?}"
        )
    };
    within(&one_way, 120.0);
    within(&replied, 300.0);
    within(&icmp, 60.0);
    within(&tcp, 240.0);
}

/// RFC 4787 REQ-6 (outbound refresh) and REQ-6 a / RFC 7857 sec. 7
/// (inbound refresh only when configured): a mapping that only receives
/// (upstream sends to it every 0.5 s after one outbound datagram) expires
/// at its timeout by default; with `inbound_refresh = true` the same
/// stream keeps it.
#[test]
fn rfc4787_req6a_inbound_refresh_only_when_configured() {
    require_root!();
    let mut lab = Lab::netbridge("timeouts = { udp = 3, udp_replied = 3 }");
    // The inside socket stays open while upstream streams to it: a closed
    // one would answer with ICMP port unreachable (outbound errors no
    // longer refresh a mapping, RFC 7857 sec. 7.1, but they would make the
    // test about something else).
    let run = |lab: &mut Lab, sport: u16| -> bool {
        let ns = lab.ns("black");
        lab.sb.spawn(
            &ns,
            &[
                "python3",
                "-c",
                &format!(
                    "import socket, time; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); \
                     s.bind(('{BLACK}', {sport})); s.sendto(b'x', ('{STUN1}', 5000)); time.sleep(12)"
                ),
            ],
        );
        let sent = Sandbox::wait_for(Duration::from_secs(10), || {
            session(lab, &format!("{BLACK}:{sport}"), &format!("{STUN1}:5000"))
        });
        assert!(sent.is_some(), "no session for {sport}");
        // Upstream streams to the mapping for 8 s (past the 3 s timeout).
        lab.sh(
            "stun",
            &format!(
                "python3 -c \"import socket, time; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); \
                 s.bind(('{STUN1}', 5000))\nfor i in range(16):\n    s.sendto(b'y', ('{UPLINK}', {sport})); time.sleep(0.5)\""
            ),
        );
        session(lab, &format!("{BLACK}:{sport}"), &format!("{STUN1}:5000")).is_some()
    };
    assert!(
        !run(&mut lab, 57000),
        "inbound traffic kept the mapping alive"
    );
    lab.reconfigure("timeouts = { udp = 3, udp_replied = 3 }\ninbound_refresh = true");
    assert!(
        run(&mut lab, 57001),
        "inbound_refresh = true: the mapping expired"
    );
}

/// `tcp_whoami.py client` in lab role `from`: the address the server at
/// `dst`:`dport` saw, or None when the connection failed (refused,
/// dropped: 5 s connect timeout).
fn tcp_whoami(
    lab: &Lab,
    from: &str,
    src: &str,
    sport: u16,
    dst: &str,
    dport: u16,
) -> Option<String> {
    let out = lab.sb.sh_output(
        &lab.ns(from),
        &format!(
            "python3 {} client {src} {sport} {dst} {dport}",
            script("tcp_whoami.py")
        ),
    );
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

/// A TCP listener on `ip`:`port` in lab role `role` whose port has a
/// mapping: it connected from that port to the whoami server on the first
/// STUN address, port 80 (tests/scripts/tcp_mapped_listener.py). Returns
/// the mapping the server saw ("203.0.113.1:P").
fn tcp_mapped_listener(lab: &mut Lab, role: &str, ip: &str, port: u16) -> String {
    let out = lab.sb.tmp_file(&format!("mapped-{role}-{port}"));
    let out = out.display().to_string();
    let ns = lab.ns(role);
    lab.sb.spawn(
        &ns,
        &[
            "python3",
            &script("tcp_mapped_listener.py"),
            ip,
            &port.to_string(),
            STUN1,
            "80",
            &out,
            "120",
        ],
    );
    let seen = Sandbox::wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(&out).ok().filter(|s| !s.is_empty())
    });
    seen.unwrap_or_else(|| panic!("{role}:{port}: no mapping learned"))
}

/// The netbridge lab with a tcp_whoami.py server on port 80 of the STUN
/// host (both addresses).
fn lab_with_whoami(uplink_extra: &str) -> Lab {
    let mut lab = Lab::netbridge(uplink_extra);
    let ns = lab.ns("stun");
    lab.sb.spawn(
        &ns,
        &["python3", &script("tcp_whoami.py"), "server", "80", "300"],
    );
    let ok = Sandbox::wait_for(Duration::from_secs(10), || {
        lab.sh("stun", "ss -tln").contains(":80 ").then_some(())
    });
    assert!(ok.is_some(), "whoami server not listening");
    lab
}

/// RFC 5382 REQ-8 (TCP hairpinning; RFC 4787 REQ-9 a for TCP: the
/// receiver sees the sender's external address and port): white listens
/// on port 41000 and has a mapping for it (it connected from that port
/// upstream); black connects from port 42000 to white's external
/// 203.0.113.1:<mapped>, reaches white's listener, and white reports
/// black's external mapping (the one conntrack shows), never 192.168.1.10.
/// Filtering endpoint-independent (white never sent to black); control:
/// the default address-and-port-dependent filtering refuses the same
/// connection, as from outside.
#[test]
fn rfc5382_req8_tcp_hairpinning_source_is_external_mapping() {
    require_root!();
    let mut lab = lab_with_whoami("");
    let mapped = tcp_mapped_listener(&mut lab, "white", "192.168.2.10", 41000);
    let port: u16 = mapped.rsplit(':').next().unwrap().parse().unwrap();
    assert!(mapped.starts_with(UPLINK), "{mapped}");
    let filtered = tcp_whoami(&lab, "black", BLACK, 42000, UPLINK, port);
    assert_eq!(filtered, None, "control: default filtering admitted it");
    lab.reconfigure("filtering = \"endpoint-independent\"");
    let mapped = tcp_mapped_listener(&mut lab, "white", "192.168.2.10", 41002);
    let port: u16 = mapped.rsplit(':').next().unwrap().parse().unwrap();
    let before = lab.nat_counter("hairpin_snat");
    let seen = tcp_whoami(&lab, "black", BLACK, 42002, UPLINK, port)
        .unwrap_or_else(|| panic!("hairpin connection failed: {:?}", lab.conntrack()));
    let black = session(&lab, &format!("{BLACK}:42002"), &format!("{UPLINK}:{port}"))
        .unwrap_or_else(|| panic!("black's session: {:?}", lab.conntrack()));
    assert_eq!(
        Value::from(seen.clone()),
        black["external"],
        "white saw {seen}"
    );
    assert!(seen.starts_with(&format!("{UPLINK}:")), "{seen}");
    // SYN, ACK(s), FIN in both directions: several hairpinned packets.
    assert!(lab.nat_counter("hairpin_snat") >= before + 4);
}

/// RFC 5382 REQ-3 (TCP filtering; RECOMMENDED endpoint-independent or
/// address-dependent, configurable) with TCP traffic: black listens on a
/// port that has a mapping (toward 198.51.100.10:80); SYNs to that mapping
/// from the same remote address, other port, and from the other remote
/// address are admitted or refused as `uplink.filtering` says. The admitted
/// connections reach the listener, which sees the remote's real address.
#[test]
fn rfc5382_req3_tcp_filtering_follows_the_setting() {
    require_root!();
    let mut lab = lab_with_whoami("");
    for (i, (setting, other_port, other_addr)) in [
        ("", false, false),
        ("filtering = \"address-dependent\"", true, false),
        ("filtering = \"endpoint-independent\"", true, true),
    ]
    .into_iter()
    .enumerate()
    {
        if !setting.is_empty() {
            lab.reconfigure(setting);
        }
        let i = i as u16;
        let mapped = tcp_mapped_listener(&mut lab, "black", BLACK, 43000 + i);
        let port: u16 = mapped.rsplit(':').next().unwrap().parse().unwrap();
        let same = tcp_whoami(&lab, "stun", STUN1, 44000 + i, UPLINK, port);
        let other = tcp_whoami(&lab, "stun", STUN2, 44000 + i, UPLINK, port);
        assert_eq!(
            same,
            other_port.then(|| format!("{STUN1}:{}", 44000 + i)),
            "{setting:?}: same address, other port"
        );
        assert_eq!(
            other,
            other_addr.then(|| format!("{STUN2}:{}", 44000 + i)),
            "{setting:?}: other address"
        );
    }
}

/// RFC 5508 REQ-11 (an ICMP message the NAT cannot translate: drop it
/// rather than forward it untranslated): a lab host's ICMP timestamp
/// reply (a query reply going out: no session of the lab host asked for
/// it; the requests are translated, see `rfc5508_req1_...`) and router
/// advertisement (type 9, neither query nor error), sent twice each with
/// scapy, never reach the
/// upstream router (tcpdump there) and are counted as
/// `nat_untranslatable`, as are a port unreachable quoting a packet of no
/// session and a GRE packet (no ports to map); before, they left with the lab's private source
/// address. Control: an echo request sent after them is seen upstream,
/// translated to the uplink address.
#[test]
fn rfc5508_req11_untranslatable_icmp_is_dropped_not_leaked() {
    require_root!();
    let mut lab = Lab::netbridge("");
    let drops = |lab: &Lab| -> u64 {
        let v: Value = serde_json::from_str(&lab.nb(&["stats", "--json"])).unwrap();
        v["drops"]["nat_untranslatable"].as_u64().unwrap_or(0)
    };
    let before = drops(&lab);
    let out = lab.sb.tmp_file("icmp.txt");
    let router = lab.ns("router");
    let td = lab.sb.tcpdump(
        &router,
        &["-l", "-i", "eth0", "icmp or proto 47"],
        Some(&out),
    );
    lab.sh(
        "black",
        &format!(
            "/usr/bin/python3 -c \"from scapy.all import *; conf.verb = 0; \
             send(IP(dst='{STUN1}') / ICMP(type=14, id=7001), count=2); \
             send(IP(dst='{STUN1}') / ICMP(type=9), count=2); \
             send(IP(dst='{STUN1}') / ICMP(type=3, code=3) / \
                  IP(src='{STUN1}', dst='192.168.1.10') / UDP(sport=3478, dport=45678)); \
             send(IP(dst='{STUN1}', proto=47) / Raw(b'gre-ish!')); \
             send(IP(dst='{STUN1}') / ICMP(type=8, id=7003))\""
        ),
    );
    let seen = Sandbox::wait_for(Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        text.contains("echo request").then_some(())
    });
    lab.sb.stop_tcpdump(td);
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    assert!(seen.is_some(), "control: no echo request upstream:\n{text}");
    let echo = text.lines().find(|l| l.contains("echo request")).unwrap();
    assert!(echo.contains(&format!("IP {UPLINK} > {STUN1}")), "{echo}");
    assert!(!text.contains("192.168."), "private source leaked:\n{text}");
    assert!(
        !text.contains("time stamp")
            && !text.contains("router advertisement")
            && !text.contains("unreachable"),
        "untranslatable ICMP upstream:\n{text}"
    );
    // 2 timestamp replies, 2 router advertisements, 1 error of no session, 1 GRE.
    assert_eq!(drops(&lab) - before, 6, "{text}");
}

/// RFC 5508 REQ-1 (ICMP query mapping for every query type with an
/// identifier): a lab host's timestamp, information and address mask
/// requests (raw socket, identifiers 7101-7103) leave with the uplink
/// address (tcpdump on the upstream router) and their replies come back
/// to it: the server's kernel answers the timestamp, a raw-socket
/// responder the other two. The responder also answers the address mask
/// request with an echo reply and a timestamp reply of the same
/// identifier first: replies of another query family match no session
/// and never reach the lab host. Before, the three requests were dropped
/// at the uplink (`nat_untranslatable`) and nothing came back.
#[test]
fn rfc5508_req1_icmp_queries_other_than_echo_are_translated() {
    require_root!();
    let mut lab = Lab::netbridge("");
    let ready = lab.sb.tmp_file("responder.ready");
    let stun = lab.ns("stun");
    let r = ready.display().to_string();
    lab.sb.spawn(
        &stun,
        &["python3", &script("icmp_query_responder.py"), &r, "30"],
    );
    let up = Sandbox::wait_for(Duration::from_secs(10), || ready.exists().then_some(()));
    assert!(up.is_some(), "responder not ready");
    let out = lab.sb.tmp_file("queries.txt");
    let router = lab.ns("router");
    let td = lab
        .sb
        .tcpdump(&router, &["-l", "-i", "eth0", "icmp"], Some(&out));
    let got = lab.sh(
        "black",
        &format!("python3 {} {STUN1} 7101", script("icmp_query_probe.py")),
    );
    lab.sb.stop_tcpdump(td);
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    let got: Value = serde_json::from_str(got.trim()).unwrap_or_else(|e| panic!("{e}: {got}"));
    assert_eq!(
        got,
        serde_json::json!([[14, 7101], [16, 7102], [18, 7103]]),
        "replies at the lab host (types 0 and 14 for 7103 must not be)\nupstream:\n{text}\n{}",
        lab.nb(&["stats", "--json"])
    );
    assert!(
        !text.contains("192.168."),
        "private address upstream:\n{text}"
    );
    for (what, n) in [
        (
            format!("IP {UPLINK} > {STUN1}: ICMP time stamp query id 7101"),
            1,
        ),
        (
            format!("IP {STUN1} > {UPLINK}: ICMP time stamp reply id 7101"),
            1,
        ),
        (
            format!("IP {UPLINK} > {STUN1}: ICMP information request"),
            1,
        ),
        (
            format!("IP {UPLINK} > {STUN1}: ICMP address mask request"),
            1,
        ),
    ] {
        assert_eq!(text.matches(&what).count(), n, "{what}:\n{text}");
    }
    let icmp: Vec<Value> = lab
        .conntrack()
        .into_iter()
        .filter(|s| s["proto"] == "icmp")
        .collect();
    assert_eq!(icmp.len(), 3, "one session per query: {icmp:?}");
}

/// RFC 5508 REQ-7 and RFC 7857 sec. 12 (hairpinned ICMP errors): white
/// sends from port 41000 to black's future mapping 203.0.113.1:42000 first
/// (a hole punch: its session exists; the datagram is filtered), then
/// black sends datagrams from port 42000 to white's mapping
/// 203.0.113.1:41000 on a connected socket. They are hairpinned to white,
/// which has no socket there: white's kernel answers Port Unreachable to
/// black's external address. The error is translated as if it left
/// through the uplink and came back in: black's socket gets ECONNREFUSED
/// for every datagram (the kernel matched the quoted packet to it), and
/// tcpdump in black shows the error from the uplink address (white's
/// external address) quoting black's datagram as black sent it. Before,
/// the error went to the NAT box's own stack and black heard nothing
/// ("silent").
#[test]
fn rfc5508_req7_rfc7857_12_hairpinned_icmp_error_reaches_the_sender() {
    require_root!();
    let mut lab = Lab::netbridge("");
    lab.sh(
        "white",
        &format!(
            "python3 -c \"import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); \
             s.bind(('192.168.2.10', 41000)); s.sendto(b'punch', ('{UPLINK}', 42000))\""
        ),
    );
    let punched = Sandbox::wait_for(Duration::from_secs(10), || {
        session(&lab, "192.168.2.10:41000", &format!("{UPLINK}:42000"))
    });
    assert!(punched.is_some(), "white's session: {:?}", lab.conntrack());
    let out = lab.sb.tmp_file("black-icmp.txt");
    let black = lab.ns("black");
    let td = lab
        .sb
        .tcpdump(&black, &["-l", "-v", "-i", "eth0", "icmp"], Some(&out));
    let probe = lab.sh(
        "black",
        &format!(
            "python3 {} {BLACK} 42000 {UPLINK} 41000 3",
            script("udp_icmp_probe.py")
        ),
    );
    lab.sb.stop_tcpdump(td);
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    assert_eq!(probe.trim(), "refused refused refused", "{text}");
    let errors = text
        .matches(&format!(
            "{UPLINK} > {BLACK}: ICMP {UPLINK} udp port 41000 unreachable"
        ))
        .count();
    assert_eq!(errors, 3, "{text}");
    let quoted = format!("{BLACK}.42000 > {UPLINK}.41000: UDP");
    assert_eq!(text.matches(&quoted).count(), 3, "{text}");
    assert!(
        !text.contains("192.168.2.10"),
        "white's inside address shown:\n{text}"
    );
    assert_eq!(lab.nat_counter("icmp_errors_hairpinned"), 3);
}

/// `tests/scripts/udp_big.py` in lab role `from`: one `size`-byte datagram
/// (fragmented by the sender) from `src`:`sport` to `dst`:`dport`, answered
/// by udp_echo.py; its JSON result.
fn udp_big(lab: &Lab, from: &str, (src, sport): (&str, u16), (dst, dport): (&str, u16)) -> Value {
    let cmd = format!(
        "python3 {} {src} {sport} {dst} {dport} 4000",
        script("udp_big.py")
    );
    let out = lab.sh(from, &cmd);
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// RFC 4787 REQ-14 and REQ-13 a (fragments, received in order), real
/// traffic: a 4,000-byte UDP datagram, fragmented by its sender (MTU 1500
/// everywhere), through SNAT (black to the STUN host's echo) and through a
/// UDP forward (the STUN host to uplink:5353, white's echo); each echo,
/// 4,000 bytes and the echo's header, fragmented the same way, comes back
/// whole, and each echo saw the translated source. Three fragments each:
/// two non-first ones per datagram translated from their first
/// (`fragments_translated`, at least 8). Before, they were dropped
/// (`nat_fragment`) going out and passed untranslated coming in.
#[test]
fn rfc4787_req14_fragmented_udp_through_snat_and_dnat_forward() {
    require_root!();
    let mut lab =
        Lab::netbridge("\n[[forward]]\nproto = \"udp\"\nport = 5353\nto = \"white:5353\"");
    let ns = lab.ns("white");
    lab.sb.spawn(
        &ns,
        &["python3", &script("udp_echo.py"), "5353", "white", "120"],
    );
    let ok = Sandbox::wait_for(Duration::from_secs(10), || {
        lab.sh("white", "ss -uln").contains(":5353 ").then_some(())
    });
    assert!(ok.is_some(), "white's echo not listening");

    let snat = udp_big(&lab, "black", (BLACK, 55000), (STUN1, 7));
    assert_eq!(snat["lost"], false, "SNAT: {snat}");
    assert_eq!(snat["tag"], "stun", "{snat}");
    assert_eq!(snat["seen"], format!("{UPLINK}:55000"), "{snat}");
    assert_eq!(snat["whole"], true, "{snat}");
    assert_eq!(
        snat["len"],
        4000 + "stun 203.0.113.1:55000 ".len(),
        "{snat}"
    );

    let dnat = udp_big(&lab, "stun", (STUN1, 56000), (UPLINK, 5353));
    assert_eq!(dnat["lost"], false, "forward: {dnat}");
    assert_eq!(dnat["tag"], "white", "{dnat}");
    assert_eq!(dnat["seen"], format!("{STUN1}:56000"), "{dnat}");
    assert_eq!(dnat["whole"], true, "{dnat}");
    assert_eq!(dnat["len"], 4000 + "white 198.51.100.10:56000 ".len());

    let translated = lab.nat_counter("fragments_translated");
    assert!(translated >= 8, "fragments_translated {translated}");
}

/// `tests/scripts/udp_frag_reversed.py send` (scapy: Debian's python3) in
/// lab role `from`: one
/// 4,000-byte datagram from `src`:`sport` to `dst`:`dport` as fragments in
/// reverse order, held on `hold` (a device of `from`) and sent as one burst
/// if given; answered by udp_echo.py; its JSON result (as `udp_big`).
fn udp_reversed(
    lab: &Lab,
    from: &str,
    (src, sport): (&str, u16),
    (dst, dport): (&str, u16),
    hold: Option<&str>,
) -> Value {
    let cmd = format!(
        "/usr/bin/python3 {} send {src} {sport} {dst} {dport} 4000 {}",
        script("udp_frag_reversed.py"),
        hold.unwrap_or("-")
    );
    let out = lab.sh(from, &cmd);
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// RFC 4787 REQ-14 (fragments received out of order), real traffic: a
/// 4,000-byte UDP datagram sent by scapy as three fragments, last first.
/// Out, black to the STUN host's echo through SNAT: the early fragments
/// are translated ahead of the first (the last one writes the datagram's
/// entry, `fragments_translated_early`), each sent on its own (no timing
/// involved). In, the STUN host's answers to
/// black's session (an echo answering in reversed fragments) and a
/// datagram to a UDP forward (uplink:5353, white's echo): the early
/// fragments are requeued at the uplink's ingress (`fragments_requeued`)
/// until their first one has been translated. There the fragments leave the
/// STUN host as one burst, held back on its eth0 and released together:
/// the requeue lets the packets queued behind a fragment go first, so the
/// first fragment must arrive within that backlog (see the README). Every
/// echo and answer comes back whole and saw the translated source; nothing
/// is dropped as `nat_fragment`. Before the change: out, the early fragments
/// were dropped (`nat_fragment`) and black's datagram lost; in, they went
/// to the host (untranslated) and the datagram was lost.
#[test]
fn rfc4787_req14_out_of_order_fragments_through_snat_and_dnat_forward() {
    require_root!();
    let mut lab =
        Lab::netbridge("\n[[forward]]\nproto = \"udp\"\nport = 5353\nto = \"white:5353\"");
    let (white, stun) = (lab.ns("white"), lab.ns("stun"));
    lab.sb.spawn(
        &white,
        &["python3", &script("udp_echo.py"), "5353", "white", "120"],
    );
    let reversed = script("udp_frag_reversed.py");
    let argv = [
        "/usr/bin/python3",
        &reversed,
        "echo",
        STUN1,
        "8",
        "stun",
        "eth0",
        "120",
    ];
    lab.sb.spawn(&stun, &argv);
    let ok = Sandbox::wait_for(Duration::from_secs(10), || {
        let white = lab.sh("white", "ss -uln").contains(":5353 ");
        let stun = lab.sh("stun", "ss -uln").contains(&format!("{STUN1}:8 "));
        (white && stun).then_some(())
    });
    assert!(ok.is_some(), "echoes not listening");

    let out = udp_reversed(&lab, "black", (BLACK, 55100), (STUN1, 7), None);
    assert_eq!(out["lost"], false, "out, SNAT: {out}");
    assert_eq!(out["tag"], "stun", "{out}");
    assert_eq!(out["seen"], format!("{UPLINK}:55100"), "{out}");
    assert_eq!(out["whole"], true, "{out}");
    assert_eq!(out["len"], 4000 + "stun 203.0.113.1:55100 ".len(), "{out}");
    // One datagram written early; its two non-first fragments translated.
    let early = lab.nat_counter("fragments_translated_early");
    assert!(early >= 1, "fragments_translated_early {early}");
    let translated = lab.nat_counter("fragments_translated");
    assert!(translated >= 2, "fragments_translated {translated}");

    let back = udp_big(&lab, "black", (BLACK, 55200), (STUN1, 8));
    assert_eq!(back["lost"], false, "in, SNAT reply: {back}");
    assert_eq!(back["tag"], "stun", "{back}");
    assert_eq!(back["seen"], format!("{UPLINK}:55200"), "{back}");
    assert_eq!(back["whole"], true, "{back}");

    let fwd = udp_reversed(&lab, "stun", (STUN1, 56100), (UPLINK, 5353), Some("eth0"));
    assert_eq!(fwd["lost"], false, "in, forward: {fwd}");
    assert_eq!(fwd["tag"], "white", "{fwd}");
    assert_eq!(fwd["seen"], format!("{STUN1}:56100"), "{fwd}");
    assert_eq!(fwd["whole"], true, "{fwd}");
    assert_eq!(fwd["len"], 4000 + "white 198.51.100.10:56100 ".len());

    let requeued = lab.nat_counter("fragments_requeued");
    assert!(requeued >= 4, "fragments_requeued {requeued}");
    assert_eq!(drop_count(&lab, "nat_fragment"), 0);
}

/// `tests/scripts/tcp_connect_probe.py` from the STUN host to the uplink
/// address, port `dport`, waiting up to `secs`: "ECONNREFUSED" (a RST came
/// back), "timeout" (no answer at all) or "connected".
fn connect_probe(lab: &Lab, sport: u16, dport: u16, secs: u32) -> String {
    let cmd = format!(
        "python3 {} {STUN1} {sport} {UPLINK} {dport} {secs}",
        script("tcp_connect_probe.py")
    );
    let out = lab.sh("stun", &cmd);
    let v: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    v["result"].as_str().unwrap_or_default().to_string()
}

fn drop_count(lab: &Lab, reason: &str) -> u64 {
    let v: Value = serde_json::from_str(&lab.nb(&["stats", "--json"])).unwrap();
    v["drops"][reason]
        .as_u64()
        .unwrap_or_else(|| panic!("no drop reason {reason} in {v}"))
}

/// RFC 5382 REQ-4 (unsolicited inbound SYN: no answer for at least 6 s, so
/// a simultaneous open can complete): with `unsolicited_syn = "drop"` an
/// outside connect to an unused port of the NAT range gets no answer in
/// 6 s (no RST: the SYN and its retransmissions are dropped, counted
/// `nat_unsolicited_syn`), a host service on a port of that range still
/// answers (its socket takes the SYN), and a TCP simultaneous open whose
/// outside SYN reaches the NAT first completes. Control, the default
/// ("reset", as MASQUERADE): the same connect is refused at once by the
/// host's RST, and the same simultaneous open fails. (The SHOULD, an ICMP
/// port unreachable after 6 s, is not implemented.)
#[test]
fn rfc5382_req4_unsolicited_syn_dropped_when_configured() {
    require_root!();
    let mut lab = Lab::netbridge("");
    assert_eq!(
        connect_probe(&lab, 46000, 47000, 6),
        "ECONNREFUSED",
        "control"
    );
    let reset = lab.simultaneous_open_as(53200, "--outside-first");
    assert_ne!(reset["outside"], "connected", "control: {reset}");
    assert_eq!(drop_count(&lab, "nat_unsolicited_syn"), 0);

    lab.reconfigure("unsolicited_syn = \"drop\"");
    assert_eq!(connect_probe(&lab, 46001, 47000, 6), "timeout");
    let dropped = drop_count(&lab, "nat_unsolicited_syn");
    assert!(dropped >= 1, "nat_unsolicited_syn {dropped}");
    // A host service in the NAT range keeps working.
    let ns = lab.ns("gw");
    lab.sb.spawn(
        &ns,
        &[
            "python3",
            "-c",
            "import socket,time; s=socket.socket(); \
          s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); \
          s.bind(('203.0.113.1', 47001)); s.listen(); time.sleep(60)",
        ],
    );
    let ok = Sandbox::wait_for(Duration::from_secs(10), || {
        lab.sh("gw", "ss -tln").contains(":47001 ").then_some(())
    });
    assert!(ok.is_some(), "host listener not up");
    assert_eq!(
        connect_probe(&lab, 46002, 47001, 6),
        "connected",
        "host service"
    );
    let simopen = lab.simultaneous_open_as(53300, "--outside-first");
    assert_eq!(simopen["outside"], "connected", "{simopen}");
    assert_eq!(simopen["inside"], "connected", "{simopen}");
    assert_eq!(simopen["outside_got"], "from-inside", "{simopen}");
    assert_eq!(
        simopen["outside_peer"],
        format!("{UPLINK}:53300"),
        "{simopen}"
    );
}

/// A connected UDP socket in lab role `from` (`src`:`sport`) sends one
/// datagram to `dst`:`dport` and waits 2 s: "answered", "silent", or the
/// errno name of the error an ICMP message raised (EHOSTUNREACH for
/// Destination Unreachable code 13).
fn udp_errno(
    lab: &Lab,
    from: &str,
    (src, sport): (&str, u16),
    (dst, dport): (&str, u16),
) -> String {
    let py = format!(
        "import errno, socket\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.bind(('{src}', {sport})); s.connect(('{dst}', {dport})); s.settimeout(2)\n\
         s.send(b'new flow')\n\
         try:\n    s.recv(256); print('answered')\n\
         except socket.timeout:\n    print('silent')\n\
         except OSError as e:\n    print(errno.errorcode[e.errno])\n"
    );
    let file = format!("/tmp/{}udp_errno.py", lab.sb.prefix());
    std::fs::write(&file, py).unwrap();
    let out = lab.sh(from, &format!("python3 {file}"));
    let _ = std::fs::remove_file(&file);
    out.trim().to_string()
}

/// RFC 5508 REQ-8: a lab host whose new session the NAT refuses (here its
/// quota, `max_sessions_per_host = 1`, held by a ping) gets an ICMP
/// Destination Unreachable, code 13 (communication administratively
/// prohibited), from the gateway 192.168.0.1 quoting its packet, and the
/// packet is dropped: black's UDP socket gets EHOSTUNREACH at once, and a
/// second ping (a new identifier: a new session) prints "Packet filtered".
/// tcpdump in black captures the errors; tshark finds type 3 code 13 with
/// good IPv4 and ICMP checksums, quoting black's datagram to the echo
/// port. Controls: the first ping and white (under its own quota) are
/// answered. Without the error, the socket times out ("silent") and ping
/// prints nothing (fails).
#[test]
fn rfc5508_req8_refused_session_gets_icmp_prohibited() {
    require_root!();
    let mut lab = Lab::netbridge("max_sessions_per_host = 1");
    let dir = format!("/tmp/{}pcap", lab.sb.prefix());
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.clone();
    lab.sb.on_cleanup(move || {
        let _ = std::fs::remove_dir_all(d);
    });
    let pcap = format!("{dir}/black.pcap");
    let black = lab.ns("black");
    let td = lab
        .sb
        .tcpdump(&black, &["-i", "eth0", "-U", "-w", &pcap, "icmp"], None);
    let first = lab.sh("black", &format!("ping -c 1 -W 2 {STUN1}"));
    assert!(first.contains("1 received"), "control: {first}");
    let udp = udp_errno(&lab, "black", (BLACK, 43000), (STUN1, 7));
    let ping = lab
        .sb
        .cmd(&black, &["ping", "-c", "1", "-W", "2", STUN1])
        .output();
    let ping = String::from_utf8_lossy(&ping.unwrap().stdout).into_owned();
    let white = udp_errno(&lab, "white", ("192.168.2.10", 43000), (STUN1, 7));
    let n = lab.sb.stop_tcpdump(td);
    assert_eq!(udp, "EHOSTUNREACH", "black's refused UDP flow");
    assert!(
        ping.contains("From 192.168.0.1") && ping.contains("Packet filtered"),
        "{ping}"
    );
    assert_eq!(white, "answered", "control: white is not at black's quota");
    assert!(n >= 4, "captured {n}");
    let fields = lab.sh(
        "black",
        &format!(
            "tshark -r {pcap} -o ip.check_checksum:TRUE -Y 'icmp.type == 3' -T fields \
             -E separator=, -E aggregator=';' -e ip.src -e ip.dst -e icmp.code \
             -e ip.checksum.status -e icmp.checksum.status -e udp.dstport -e icmp.type"
        ),
    );
    let lines: Vec<Vec<&str>> = fields.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(lines.len(), 2, "two errors (UDP, ping):\n{fields}");
    for f in &lines {
        // Outer header first, then the quoted packet's (aggregated by ';').
        assert_eq!(f[0], format!("192.168.0.1;{BLACK}"), "{fields}");
        assert_eq!(f[1], format!("{BLACK};{STUN1}"), "{fields}");
        assert_eq!(f[2].split(';').next(), Some("13"), "code: {fields}");
        assert_eq!(f[6].split(';').next(), Some("3"), "type: {fields}");
        // Status 1: good; the error's own (outer IPv4, ICMP) and the
        // quoted IPv4 header's must be; a quoted ICMP checksum tshark may
        // leave unverified (2), never bad (0).
        let (ip, icmp): (Vec<&str>, Vec<&str>) =
            (f[3].split(';').collect(), f[4].split(';').collect());
        assert_eq!(ip, ["1", "1"], "IPv4 checksums: {fields}");
        assert_eq!(icmp[0], "1", "ICMP checksum: {fields}");
        assert!(!icmp.contains(&"0"), "checksums: {fields}");
    }
    assert_eq!(
        lines[0][5], "7",
        "quotes the UDP datagram to port 7: {fields}"
    );
    assert_eq!(lines[1][6], "3;8", "quotes the echo request: {fields}");
    assert_eq!(drop_count(&lab, "nat_quota"), 2);
    assert_eq!(lab.nat_counter("icmp_prohibited_sent"), 2);
}

/// RFC 5508 REQ-8 for a forward's client: with a TCP forward
/// uplink:8080 -> white:8000 and `max_sessions_per_source = 1`, the STUN
/// host connects and holds the connection, then connects again from
/// another port: that SYN is refused (`nat_quota`) and answered with an
/// ICMP Destination Unreachable, code 13, from the uplink address, so the
/// second connect fails at once with EHOSTUNREACH (tcpdump in the STUN
/// host sees the error quoting the SYN). Without it, the connect times
/// out (fails).
#[test]
fn rfc5508_req8_forward_client_refused_gets_icmp_prohibited() {
    require_root!();
    let mut lab = Lab::netbridge(
        "max_sessions_per_source = 1\n\n[[forward]]\nproto = \"tcp\"\nport = 8080\nto = \"white:8000\"",
    );
    let ns = lab.ns("white");
    lab.sb.spawn(
        &ns,
        &["python3", "-m", "http.server", "8000", "--bind", "0.0.0.0"],
    );
    let ok = Sandbox::wait_for(Duration::from_secs(10), || {
        lab.sh("white", "ss -tln").contains(":8000 ").then_some(())
    });
    assert!(ok.is_some(), "white's server not listening");
    let out = lab.sb.tmp_file("stun-icmp.txt");
    let stun = lab.ns("stun");
    let td = lab
        .sb
        .tcpdump(&stun, &["-l", "-v", "-i", "eth0", "icmp"], Some(&out));
    let py = format!(
        "import errno, socket\n\
         a = socket.create_connection(('{UPLINK}', 8080), timeout=3)\n\
         b = socket.socket(); b.settimeout(3)\n\
         try:\n    b.connect(('{UPLINK}', 8080)); print('connected')\n\
         except socket.timeout:\n    print('timeout')\n\
         except OSError as e:\n    print(errno.errorcode[e.errno])\n"
    );
    let file = format!("/tmp/{}fwd_quota.py", lab.sb.prefix());
    std::fs::write(&file, py).unwrap();
    let r = lab.sh("stun", &format!("python3 {file}"));
    let _ = std::fs::remove_file(&file);
    lab.sb.stop_tcpdump(td);
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    assert_eq!(r.trim(), "EHOSTUNREACH", "{text}");
    let error = format!("{UPLINK} > {STUN1}: ICMP host {UPLINK} unreachable - admin prohibited");
    let errors: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("admin prohibited"))
        .collect();
    assert_eq!(errors.len(), 1, "{text}");
    assert!(text.contains(&error), "{text}");
    assert!(
        text.contains(&format!("{STUN1}."))
            && text.contains(&format!("> {UPLINK}.8080: Flags [S]")),
        "quote: {text}"
    );
    assert_eq!(drop_count(&lab, "nat_quota"), 1);
    assert_eq!(lab.nat_counter("icmp_prohibited_sent"), 1);
}

/// RFC 7857 sec. 10 / RFC 6864 sec. 5.3.1: black and white each send a
/// UDP datagram of 2,000 bytes in two fragments (scapy, DF clear) with the
/// SAME IP ID 0x4242 to the STUN host, interleaved (black's first
/// fragment, white's first, black's second, white's second), so both are
/// in reassembly there at once. Both leave from 203.0.113.1: with the IDs
/// kept, the destination takes white's fragments for duplicates of
/// black's and at most one datagram arrives (seen before the change:
/// only black's). The NAT gives each non-atomic datagram its own new ID
/// (`ip_id_rewritten`): both arrive whole (the receiver checks every
/// byte; the kernel checked the UDP checksum).
#[test]
fn rfc7857_10_same_ip_id_from_two_hosts_both_reassemble() {
    require_root!();
    let mut lab = Lab::netbridge("");
    let log = lab.sb.tmp_file("frag-recv.txt");
    let py = format!(
        "import socket, time\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.bind(('0.0.0.0', 9)); s.settimeout(0.5); end = time.time() + 60\n\
         while time.time() < end:\n\
         \x20   try:\n        d, a = s.recvfrom(65535)\n\
         \x20   except socket.timeout:\n        continue\n\
         \x20   whole = d == d[:1] * len(d)\n\
         \x20   with open('{}', 'a') as f:\n\
         \x20       f.write(f'{{a[0]}}:{{a[1]}} {{len(d)}} {{d[:1].decode()}} {{whole}}\\n')\n",
        log.display()
    );
    let ns = lab.ns("stun");
    lab.sb.spawn(&ns, &["python3", "-c", &py]);
    let ok = Sandbox::wait_for(Duration::from_secs(10), || {
        lab.sh("stun", "ss -uln")
            .contains("0.0.0.0:9 ")
            .then_some(())
    });
    assert!(ok.is_some(), "receiver not listening");
    let send = |role: &str, sport: u16, byte: char, i: usize| {
        lab.sh(
            role,
            &format!(
                "/usr/bin/python3 -c \"from scapy.all import *; conf.verb = 0; \
                 p = IP(dst='{STUN1}', id=0x4242, flags=0) / UDP(sport={sport}, dport=9) / \
                 Raw(b'{byte}' * 2000); send(fragment(p, fragsize=1400)[{i}])\""
            ),
        );
    };
    for i in 0..2 {
        send("black", 45001, 'B', i);
        send("white", 45002, 'W', i);
    }
    let got = Sandbox::wait_for(Duration::from_secs(5), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        (text.lines().count() >= 2).then_some(text)
    });
    let text = got.unwrap_or_else(|| std::fs::read_to_string(&log).unwrap_or_default());
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort();
    let want = [
        format!("{UPLINK}:45001 2000 B True"),
        format!("{UPLINK}:45002 2000 W True"),
    ];
    assert_eq!(lines, want, "datagrams reassembled at the destination");
    assert_eq!(lab.nat_counter("ip_id_rewritten"), 4);
}
