//! NAT sessions expire in the kernel with no netbridge process running:
//! the scenario (30 flows through an 8-session table), expiry per
//! state (late packets dropped and counted, the port free again), expiry on
//! lookup alone (sweep stopped), a full table of live sessions, the sweep
//! across `up --reload` and `down`, and a short `cargo xtask soak`.
//!
//! The lab: black and white on a bridge in a host namespace ("gw") whose
//! uplink (203.0.113.1) faces a router, behind which sit a server
//! (198.51.100.10) and a blackholed half subnet (198.51.100.128/25:
//! packets there vanish, nothing answers).
use std::time::{Duration, Instant};

use netbridge_common::{CtlCmd, ctl};
use netbridge_tests::{
    Sandbox,
    natlab::{NatLab as Lab, SERVER, UPLINK, script, sessions},
    require_root, testrun,
};
use serde_json::Value;

/// In the router's blackhole: a remote that never answers.
const NOWHERE: &str = "198.51.100.200";

/// `nat_flow.py ARGS` in `ns`; its one line of output.
fn flow(lab: &Lab, ns: &str, args: &str) -> String {
    // scapy (late packets) is in Debian's python.
    let py = if args.starts_with("late") {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let out = lab.sh(ns, &format!("{py} {} {args}", script("nat_flow.py")));
    out.trim().to_string()
}

/// One datagram from black's `sport` to the server's `dport`: the reply.
fn udp(lab: &Lab, sport: u16, dport: u16) -> Option<String> {
    let pair = format!("{sport}:{dport}");
    let r = lab.udp_probe("black", SERVER, std::slice::from_ref(&pair));
    r[&pair].as_str().map(String::from)
}

/// A UDP socket on `port` in `ns` that never reads nor answers.
fn udp_sink(lab: &mut Lab, ns: &str, port: u16) {
    let code = format!(
        "import socket, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind(('0.0.0.0', {port}))\ntime.sleep(300)"
    );
    lab.spawn(ns, &["python3", "-c", &code]);
    lab.wait_listen(ns, "udp", port);
}

/// The session whose inside endpoint is `inside` (ICMP: address only).
fn session(ct: &Value, inside_prefix: &str, remote: &str) -> Option<Value> {
    sessions(ct)
        .into_iter()
        .find(|s| s["inside"].as_str().unwrap().starts_with(inside_prefix) && s["remote"] == remote)
}

/// One expiry case: a session of `state` from black to `remote`, opened by
/// `open` from an inside port; `probe` is a second flow to the same remote.
struct Case<'a> {
    state: &'static str,
    proto: &'static str,
    /// As conntrack shows it (ICMP: address only).
    remote: String,
    /// Namespace that can send as the remote (the late packet).
    remote_ns: &'static str,
    open: &'a dyn Fn(&mut Lab, u16),
    probe: &'a dyn Fn(&mut Lab, u16),
}

/// The whole life of one session on a single-port pool (40000): it holds
/// the port while live (a second flow to the same remote is dropped,
/// `nat_port_exhausted`); its state's own timeout applies (kernel figures);
/// it is removed no earlier than that timeout with no process running; a
/// late packet to its mapping is dropped and counted (`nat_expired`), not
/// translated; and the port goes to the next flow.
fn check_expiry(lab: &mut Lab, c: &Case, sport: u16) {
    let inside = if c.proto == "icmp" {
        "192.168.1.10:".to_string()
    } else {
        format!("192.168.1.10:{sport}")
    };
    let exhausted = lab.counter("nat_port_exhausted");
    let opened = Instant::now();
    (c.open)(lab, sport);
    let ct = lab.wait_ct(10, c.state, |ct| {
        session(ct, &inside, &c.remote).is_some_and(|s| s["state"] == c.state)
    });
    let s = session(&ct, &inside, &c.remote).unwrap();
    assert_eq!(s["external"], format!("{UPLINK}:40000"), "{s}");
    // The state's own timeout, as the datapath applies it.
    let timeout = ct["timeouts"][c.state].as_f64().unwrap();
    let (idle, left) = (
        s["idle_secs"].as_f64().unwrap(),
        s["expires_in_secs"].as_f64().unwrap(),
    );
    assert!((idle + left - timeout).abs() < 1e-6, "{s} vs {timeout}");

    // Live: the one port is taken for this remote.
    (c.probe)(lab, sport + 1);
    assert!(
        lab.counter("nat_port_exhausted") > exhausted,
        "{}: a second flow got a port while the session was live",
        c.state
    );

    // Expired, with no process running: gone, no earlier than its timeout.
    let expired = lab.counter("expired_sweep") + lab.counter("expired_lookup");
    lab.wait_ct(timeout as u64 + 10, "session never expired", |ct| {
        session(ct, &inside, &c.remote).is_none()
    });
    assert!(
        opened.elapsed().as_secs_f64() >= timeout,
        "{}: removed {:?} after opening, timeout {timeout} s",
        c.state,
        opened.elapsed()
    );
    assert!(lab.counter("expired_sweep") + lab.counter("expired_lookup") > expired);

    // A late packet from the remote to the dead mapping: dropped, counted.
    let (dropped, translated) = (lab.counter("nat_expired"), lab.counter("translated_in"));
    let (addr, port) = c.remote.split_once(':').unwrap_or((&c.remote, "0"));
    flow(
        lab,
        c.remote_ns,
        &format!("late {} {addr} {port} {UPLINK} 40000", c.proto),
    );
    let counted = Sandbox::wait_for(Duration::from_secs(5), || {
        (lab.counter("nat_expired") > dropped).then_some(())
    });
    assert!(counted.is_some(), "{}: late packet not counted", c.state);
    assert_eq!(
        lab.counter("translated_in"),
        translated,
        "late packet translated"
    );

    // The port is free again: the next flow to that remote gets it.
    (c.probe)(lab, sport + 1);
    let next = if c.proto == "icmp" {
        inside.clone()
    } else {
        format!("192.168.1.10:{}", sport + 1)
    };
    let ct = lab.wait_ct(5, "port not free again", |ct| {
        session(ct, &next, &c.remote).is_some()
    });
    let s = session(&ct, &next, &c.remote).unwrap();
    assert_eq!(s["external"], format!("{UPLINK}:40000"), "{s}");
}

/// One NAT port; distinct timeouts, long enough for the checks made
/// while a session is live.
const PER_STATE: &str = "nat_ports = \"40000-40000\"\ntimeouts = { tcp_syn = 4, tcp_established = 5, tcp_closing = 4, tcp_closed = 3, udp = 3, udp_replied = 4, icmp = 3 }";

#[test]
fn udp_sessions_expire_per_state() {
    require_root!();
    let mut lab = Lab::new(PER_STATE, "");
    lab.udp_echo("server", 5002, "server");
    udp_sink(&mut lab, "server", 5001);
    let send = |dport: u16| {
        move |lab: &mut Lab, sport: u16| {
            udp(lab, sport, dport);
        }
    };
    let unreplied = send(5001);
    check_expiry(
        &mut lab,
        &Case {
            state: "UNREPLIED",
            proto: "udp",
            remote: format!("{SERVER}:5001"),
            remote_ns: "server",
            open: &unreplied,
            probe: &unreplied,
        },
        50010,
    );
    let replied = send(5002);
    check_expiry(
        &mut lab,
        &Case {
            state: "REPLIED",
            proto: "udp",
            remote: format!("{SERVER}:5002"),
            remote_ns: "server",
            open: &|lab: &mut Lab, sport: u16| {
                let r = udp(lab, sport, 5002).unwrap_or_default();
                assert!(r.starts_with(&format!("server {UPLINK}:40000 ")), "{r}");
            },
            probe: &replied,
        },
        50020,
    );
    // The freed port really carries the next flow: the server sees it.
    let r = udp(&lab, 50021, 5002).unwrap_or_default();
    assert!(r.starts_with(&format!("server {UPLINK}:40000 ")), "{r}");
}

#[test]
fn tcp_sessions_expire_per_state() {
    require_root!();
    let mut lab = Lab::new(PER_STATE, "");
    for port in ["5004", "5005"] {
        lab.spawn(
            "server",
            &["python3", &script("nat_flow.py"), "tcpserver", port, "300"],
        );
    }
    lab.wait_listen("server", "tcp", 5005);
    lab.sh("router", "ip route add blackhole 198.51.100.128/25");
    // Second flows only need their SYN to reach the NAT.
    let syn = |remote: &'static str, dport: u16| {
        move |lab: &mut Lab, sport: u16| {
            flow(lab, "black", &format!("tcp syn {sport} {remote} {dport} 0"));
        }
    };
    let to_nowhere = syn(NOWHERE, 80);
    check_expiry(
        &mut lab,
        &Case {
            state: "SYN_SENT",
            proto: "tcp",
            remote: format!("{NOWHERE}:80"),
            remote_ns: "router",
            open: &to_nowhere,
            probe: &to_nowhere,
        },
        50030,
    );
    // Established and closing: the client keeps its socket (no RST, no
    // more data) while the session expires.
    let nat_flow = script("nat_flow.py");
    let nat_flow = nat_flow.as_str();
    for (state, mode, dport, sport) in [
        ("ESTABLISHED", "hold", 5004, 50040),
        ("CLOSING", "halfclose", 5005, 50050),
    ] {
        let open = move |lab: &mut Lab, sport: u16| {
            let (s, d) = (sport.to_string(), dport.to_string());
            lab.spawn(
                "black",
                &["python3", nat_flow, "tcp", mode, &s, SERVER, &d, "60"],
            );
        };
        let probe = syn(SERVER, dport);
        check_expiry(
            &mut lab,
            &Case {
                state,
                proto: "tcp",
                remote: format!("{SERVER}:{dport}"),
                remote_ns: "server",
                open: &open,
                probe: &probe,
            },
            sport,
        );
    }
    // Closed: a port with no listener answers RST.
    let refused = syn(SERVER, 5006);
    check_expiry(
        &mut lab,
        &Case {
            state: "CLOSED",
            proto: "tcp",
            remote: format!("{SERVER}:5006"),
            remote_ns: "server",
            open: &|lab: &mut Lab, sport: u16| {
                let r = flow(
                    lab,
                    "black",
                    &format!("tcp refused {sport} {SERVER} 5006 0"),
                );
                assert_eq!(r, "ConnectionRefusedError");
            },
            probe: &refused,
        },
        50060,
    );
}

#[test]
fn icmp_sessions_expire() {
    require_root!();
    let mut lab = Lab::new(PER_STATE, "");
    let ping = |lab: &mut Lab, _: u16| {
        let _ = lab
            .sb
            .sh_output(&lab.sb.name("black"), &format!("ping -c 1 -W 1 {SERVER}"));
    };
    check_expiry(
        &mut lab,
        &Case {
            state: "ICMP",
            proto: "icmp",
            remote: SERVER.into(),
            remote_ns: "server",
            open: &|lab: &mut Lab, _| {
                lab.sh("black", &format!("ping -c 1 -W 2 {SERVER}"));
            },
            probe: &ping,
        },
        0,
    );
}

/// The scenario: `max_sessions = 8`, 1 s UDP timeouts, 30 flows
/// 0.4 s apart, nobody running gc. All 30 are answered (8 was the old
/// answer), the kernel's live count never passed 8, and the limit still
/// binds: of 9 flows at once the 9th evicts the oldest unassured one (the
/// admission policy), so the count stays at 8.
#[test]
fn thirty_flows_through_an_eight_session_table_with_no_process() {
    require_root!();
    let mut lab = Lab::new(
        "max_sessions = 8\ntimeouts = { udp = 1, udp_replied = 1 }",
        "",
    );
    lab.udp_echo("server", 7, "server");
    let out = lab.sh(
        "black",
        &format!(
            "python3 {} {SERVER} 7 30 2.5 41000 41029 f 60",
            script("udp_flows.py")
        ),
    );
    let r: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(r["sent"], 30, "{r}");
    assert_eq!(r["answered"], 30, "{r}");
    // No netbridge process ran meanwhile: `up` exited, nothing else started.
    let bin = netbridge_tests::netbridge_bin().canonicalize().unwrap();
    let prefix = lab.sb.prefix();
    let running: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| std::fs::read_link(e.path().join("exe")).is_ok_and(|x| x == bin))
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&prefix))
        .collect();
    assert!(running.is_empty(), "netbridge processes: {running:?}");
    let ct = lab.conntrack();
    assert!(ct["high_water_sessions"].as_u64().unwrap() <= 8, "{ct}");
    let removed = lab.counter("expired_sweep") + lab.counter("expired_lookup");
    assert!(removed >= 22, "only {removed} sessions removed: {ct}");
    assert_eq!(lab.counter("nat_table_full"), 0);

    // The limit binds live sessions: once all expired, 9 at once.
    lab.wait_ct(10, "sessions never drained", |ct| ct["live_sessions"] == 0);
    let burst = "import socket\nss = []\nfor p in range(42000, 42009):\n    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n    s.bind(('0.0.0.0', p))\n    s.settimeout(1.0)\n    s.sendto(b'x', ('198.51.100.10', 7))\n    ss.append(s)\nn = 0\nfor s in ss:\n    try:\n        s.recvfrom(100)\n        n += 1\n    except socket.timeout:\n        pass\nprint(n)\n";
    let answered = lab.sh("black", &format!("python3 -c \"{burst}\""));
    // 9 when the evicted flow's answer came before its eviction.
    assert!(["8", "9"].contains(&answered.trim()), "{answered}");
    assert_eq!(lab.counter("evicted"), 1);
    assert_eq!(lab.counter("nat_table_full"), 0);
    assert_eq!(lab.conntrack()["high_water_sessions"], 8);
}

/// A table full of live assured sessions (each answered and used again)
/// drops new ones (counted) while the existing flows keep working; `conntrack`, `stats` and the metrics show
/// the kernel's live count and high-water mark.
#[test]
fn full_table_drops_new_sessions_and_keeps_live_ones() {
    require_root!();
    let mut lab = Lab::new("max_sessions = 4", "");
    lab.udp_echo("server", 7, "server");
    let probe = |lab: &Lab, sport: u16| udp(lab, sport, 7).unwrap_or_default();
    for _ in 0..2 {
        for sport in 43000..43004 {
            assert!(probe(&lab, sport).starts_with("server "));
        }
    }
    assert_eq!(udp(&lab, 43004, 7), None);
    assert_eq!(lab.counter("nat_table_full"), 1);
    for sport in 43000..43004 {
        assert!(probe(&lab, sport).starts_with("server "), "live flow broke");
    }
    let ct = lab.conntrack();
    assert_eq!(
        (
            ct["live_sessions"].as_u64(),
            ct["high_water_sessions"].as_u64()
        ),
        (Some(4), Some(4)),
        "{ct}"
    );
    let stats: Value = serde_json::from_str(&lab.nb(&["stats", "--json"])).unwrap();
    assert_eq!(stats["nat"]["live_sessions"], 4, "{stats}");
    assert_eq!(stats["nat"]["high_water_sessions"], 4, "{stats}");
    let (host, topo) = (lab.sb.host.clone(), lab.topology());
    lab.sb.spawn_metrics(&topo, "127.0.0.1:9479", 5);
    let body = Sandbox::wait_for(Duration::from_secs(10), || {
        let o = lab
            .sb
            .sh_output(&host, "curl -s -m 2 http://127.0.0.1:9479/metrics");
        let s = String::from_utf8_lossy(&o.stdout).into_owned();
        s.contains("netbridge_nat_sessions_live").then_some(s)
    })
    .expect("metrics endpoint");
    for line in [
        format!("netbridge_nat_sessions_live{{topology=\"{topo}\"}} 4"),
        format!("netbridge_nat_sessions_high_water{{topology=\"{topo}\"}} 4"),
    ] {
        assert!(body.contains(&line), "{line} not in\n{body}");
    }
}

/// With the sweep stopped, expiry still holds on lookup: a late reply to
/// an expired session is dropped and removes it, a late packet from the
/// inside opens a fresh session, and a new flow takes over the port of an
/// expired one (never of a live one). `up` restarts the sweep.
#[test]
fn expiry_on_lookup_without_the_sweep() {
    require_root!();
    let mut lab = Lab::new(
        "nat_ports = \"40000-40000\"\ntimeouts = { udp = 2, udp_replied = 2 }",
        "",
    );
    lab.udp_echo("server", 5002, "server");
    let name = lab.topology();
    let stop = CtlCmd {
        op: ctl::OP_STOP,
        ..CtlCmd::default()
    };
    assert_eq!(testrun::ct_control(&name, stop).unwrap(), 0);
    let sweeps = |lab: &Lab| lab.conntrack()["sweeps"].as_u64().unwrap();
    let before = sweeps(&lab);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(sweeps(&lab), before, "the sweep did not stop");

    let expired_listed = |lab: &Lab, sport: u16| {
        let inside = format!("192.168.1.10:{sport}");
        let remote = format!("{SERVER}:5002");
        lab.wait_ct(10, "never expired", |ct| {
            session(ct, &inside, &remote).is_some_and(|s| s["expires_in_secs"] == 0.0)
        });
    };
    let udp = |lab: &Lab, sport: u16| udp(lab, sport, 5002).unwrap_or_default();
    // A late reply: dropped, counted, and its session removed on the spot.
    assert!(udp(&lab, 44000).starts_with(&format!("server {UPLINK}:40000 ")));
    expired_listed(&lab, 44000);
    let (dropped, by_lookup) = (lab.counter("nat_expired"), lab.counter("expired_lookup"));
    flow(
        &lab,
        "server",
        &format!("late udp {SERVER} 5002 {UPLINK} 40000"),
    );
    let ok = Sandbox::wait_for(Duration::from_secs(5), || {
        (lab.counter("nat_expired") == dropped + 1).then_some(())
    });
    assert!(ok.is_some(), "late reply not dropped");
    assert_eq!(lab.counter("expired_lookup"), by_lookup + 1);
    assert!(sessions(&lab.conntrack()).is_empty());
    assert_eq!(lab.conntrack()["live_sessions"], 0);

    // A late packet from the inside: a fresh session, not the stale one.
    assert!(udp(&lab, 44001).starts_with(&format!("server {UPLINK}:40000 ")));
    expired_listed(&lab, 44001);
    let (opened, by_lookup) = (lab.counter("snat_new"), lab.counter("expired_lookup"));
    assert!(udp(&lab, 44001).starts_with(&format!("server {UPLINK}:40000 ")));
    assert_eq!(lab.counter("expired_lookup"), by_lookup + 1);
    assert_eq!(lab.counter("snat_new"), opened + 1);

    // A new flow takes over the port of the expired session (which the
    // sweep has not removed): 40000 is the pool's only port. Right after,
    // the port of that live session is not taken.
    expired_listed(&lab, 44001);
    let exhausted = lab.counter("nat_port_exhausted");
    assert!(udp(&lab, 44002).starts_with(&format!("server {UPLINK}:40000 ")));
    assert_eq!(udp(&lab, 44003), "");
    assert_eq!(lab.counter("expired_lookup"), by_lookup + 2);
    assert_eq!(lab.counter("nat_port_exhausted"), exhausted + 1);
    assert_eq!(lab.conntrack()["live_sessions"], 1);

    // `up` restarts the stopped sweep.
    lab.nb(&["up"]);
    let before = sweeps(&lab);
    let resumed = Sandbox::wait_for(Duration::from_secs(5), || {
        (sweeps(&lab) > before).then_some(())
    });
    assert!(resumed.is_some(), "the sweep did not resume");
}

fn ctl_prog_id(lab: &Lab) -> u64 {
    let pin = format!(
        "{}/{}/{}",
        netbridge::bpf::BPFFS_ROOT,
        lab.topology(),
        netbridge_common::PROG_CT_CTL
    );
    let out = lab
        .sb
        .sh_output(&lab.sb.host, &format!("bpftool -j prog show pinned {pin}"));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    v["id"].as_u64().unwrap()
}

fn prog_exists(lab: &Lab, id: u64) -> bool {
    lab.sb
        .sh_output(&lab.sb.host, &format!("bpftool prog show id {id}"))
        .status
        .success()
}

/// `up --reload` moves the running timer to the new program (the old one
/// is freed, sweeps go on); a plain `up` changes nothing; `down` stops the
/// timer and frees its program.
#[test]
fn sweep_moves_with_reload_and_ends_with_down() {
    require_root!();
    let lab = Lab::new("", "");
    let old = ctl_prog_id(&lab);
    assert!(prog_exists(&lab, old));
    let again = lab.nb(&["up"]);
    assert!(again.contains("up to date, no changes"), "{again}");
    assert_eq!(ctl_prog_id(&lab), old);
    let out = lab.nb(&["up", "--reload"]);
    assert!(
        out.contains("the new program runs the conntrack sweep"),
        "{out}"
    );
    let new = ctl_prog_id(&lab);
    assert_ne!(new, old);
    let freed = Sandbox::wait_for(Duration::from_secs(5), || {
        (!prog_exists(&lab, old)).then_some(())
    });
    assert!(freed.is_some(), "old control program {old} still loaded");
    let sweeps = |lab: &Lab| lab.conntrack()["sweeps"].as_u64().unwrap();
    let before = sweeps(&lab);
    let going = Sandbox::wait_for(Duration::from_secs(5), || {
        (sweeps(&lab) > before).then_some(())
    });
    assert!(going.is_some(), "no sweep after the reload");
    lab.nb(&["down"]);
    let gone = Sandbox::wait_for(Duration::from_secs(5), || {
        (!prog_exists(&lab, new)).then_some(())
    });
    assert!(
        gone.is_some(),
        "control program {new} outlived down (timer still armed)"
    );
}

/// A short `cargo xtask soak`: thousands of sessions through SNAT and a
/// forward, 15 times the 200-session limit, short timeouts, no process:
/// every flow admitted and answered, the kernel's high-water mark within
/// the limit, and, from the server's log, an external port reused only
/// after its previous session's timeout.
#[test]
fn short_soak_admits_every_flow_within_the_limit() {
    require_root!();
    let mut lab = Lab::new(
        "max_sessions = 200\nnat_ports = \"20000-20299\"\ntimeouts = { udp = 1, udp_replied = 1 }",
        "[[forward]]\nproto = \"udp\"\nport = 5300\nto = \"white:5300\"\n",
    );
    let log = format!("/tmp/{}echo.log", lab.sb.prefix());
    let dnat_out = format!("/tmp/{}dnat.json", lab.sb.prefix());
    for f in [log.clone(), dnat_out.clone()] {
        lab.sb.on_cleanup(move || {
            let _ = std::fs::remove_file(f);
        });
    }
    let echo_log = script("udp_echo_log.py");
    lab.spawn("server", &["python3", &echo_log, "serve", "7", &log, "300"]);
    lab.wait_listen("server", "udp", 7);
    lab.udp_echo("white", 5300, "white");
    // Through the forward, from upstream, in the background.
    let flows = script("udp_flows.py");
    lab.spawn(
        "server",
        &[
            "sh",
            "-c",
            &format!("python3 {flows} {UPLINK} 5300 300 8 42000 42999 d 120 > {dnat_out}"),
        ],
    );
    let out = lab.sh(
        "black",
        &format!("python3 {flows} {SERVER} 7 3000 80 30000 39999 s 120"),
    );
    let snat: Value = serde_json::from_str(out.trim()).unwrap();
    let dnat: Value = Sandbox::wait_for(Duration::from_secs(60), || {
        serde_json::from_str(&std::fs::read_to_string(&dnat_out).ok()?).ok()
    })
    .expect("forward flows finished");
    assert_eq!(
        (snat["sent"].as_u64(), snat["answered"].as_u64()),
        (Some(3000), Some(3000)),
        "{snat}"
    );
    assert_eq!(
        (dnat["sent"].as_u64(), dnat["answered"].as_u64()),
        (Some(300), Some(300)),
        "{dnat}"
    );
    assert_eq!(lab.counter("nat_table_full"), 0);
    assert_eq!(lab.counter("nat_port_exhausted"), 0);
    assert!(lab.counter("snat_new") >= 3000 && lab.counter("dnat_new") >= 300);
    let ct = lab.conntrack();
    let high = ct["high_water_sessions"].as_u64().unwrap();
    assert!((1..=200).contains(&high), "high water {high}: {ct}");
    // The server's view of port reuse (its log is flushed when idle).
    let check = Sandbox::wait_for(Duration::from_secs(10), || {
        let out = lab.sh(
            "server",
            &format!("python3 {echo_log} check {log} {UPLINK} 1"),
        );
        let v: Value = serde_json::from_str(out.trim()).ok()?;
        (v["datagrams"] == 3000).then_some(v)
    })
    .expect("echo log complete");
    assert!(
        check["reuses"].as_u64().unwrap() > 0,
        "no port reused: {check}"
    );
    assert_eq!(check["violations"], 0, "{check}");
}
