//! `netbridge capture` on real traffic: both directions of a conversation on
//! either bridge port (which tcpdump on the port cannot show with the fast
//! path), drops with their reason, NAT rewrites on the uplink, pcapng that
//! tshark reads, lost events instead of a slower flow, and a capture that
//! dies without leaving the datapath capturing.
use std::{path::Path, time::Duration};

use aya::{
    maps::{Array, Map, MapData},
    programs::TcAttachType,
};
use netbridge::netns::{Netns, run_blocking_in};
use netbridge_common::capture::{CaptureConfig, LEASE_NS, MAP_CAPTURE, PROG_CAPTURE_EGRESS};
use netbridge_tests::{Ready, Sandbox, example, require_root};
use serde_json::Value;

/// Marker `netbridge capture` prints on stderr once the hooks are on.
const CAPTURING: &str = "netbridge: capturing on";

/// bridge-three up in `sb`; returns the topology's name.
fn bridge_three(sb: &Sandbox) -> String {
    let prefix = sb.prefix();
    sb.nb_ok(&[
        "up",
        "-f",
        &example("bridge-three.toml"),
        "--prefix",
        &prefix,
    ]);
    sb.name("bridge-three")
}

/// Starts `netbridge capture --name NAME ARGS` in the sandbox host, text
/// into `out`; returns once the hooks are on.
fn capture(sb: &mut Sandbox, name: &str, args: &[&str], out: &Path) -> Ready {
    let bin = netbridge_tests::netbridge_bin();
    let mut argv = vec![bin.to_str().unwrap(), "capture", "--name", name];
    argv.extend_from_slice(args);
    let host = sb.host.clone();
    sb.spawn_ready(&host, &argv, Some(out), CAPTURING)
}

/// The end-of-capture summary: (packets, events, lost in the ring, lost
/// over the rate limit).
fn summary(stderr: &str) -> (u64, u64, u64, u64) {
    let line = stderr
        .lines()
        .find(|l| l.contains("packets captured"))
        .unwrap_or_else(|| panic!("no summary in:\n{stderr}"));
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(nums.len(), 5, "summary {line:?}");
    assert_eq!(nums[2], nums[3] + nums[4], "lost = ring + rate in {line:?}");
    (nums[0], nums[1], nums[3], nums[4])
}

/// Stops a capture with SIGINT; returns its summary and text output.
fn stop(sb: &mut Sandbox, c: Ready, out: &Path) -> ((u64, u64, u64, u64), String) {
    let (status, stderr) = sb.stop(c);
    assert!(status.success(), "capture failed ({status}):\n{stderr}");
    (summary(&stderr), std::fs::read_to_string(out).unwrap())
}

fn lines<'a>(text: &'a str, needles: &[&str]) -> Vec<&'a str> {
    text.lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .collect()
}

/// The capture switch of topology `name` (pinned NB_CAPTURE).
fn switch(name: &str) -> CaptureConfig {
    let pin = Path::new(netbridge::bpf::BPFFS_ROOT)
        .join(name)
        .join(MAP_CAPTURE);
    let data = MapData::from_pin(&pin).unwrap_or_else(|e| panic!("{}: {e}", pin.display()));
    let map: Array<MapData, CaptureConfig> = Array::try_from(Map::Array(data)).unwrap();
    map.get(&0, 0).unwrap()
}

/// Is the capture observer attached at TC egress of `ifname` in the host?
fn observer_on(sb: &Sandbox, ifname: &str) -> bool {
    let ifname = ifname.to_string();
    let progs = run_blocking_in(&Netns::named(&sb.host), move || {
        netbridge::bpf::attached_tc(&ifname, TcAttachType::Egress)
    })
    .unwrap();
    progs
        .iter()
        .any(|p| PROG_CAPTURE_EGRESS.starts_with(p.as_str()))
}

/// White pings black 5 times: a capture on either port shows all 10 ICMP
/// packets with their direction, while tcpdump on the port sees only what
/// its namespace sent (the replies are redirected past it). Also: one
/// capture per topology at a time, bad selectors named, and after Ctrl-C
/// the hooks are off and the observer gone.
#[test]
fn ping_shows_both_directions_on_either_port() {
    require_root!();
    let mut sb = Sandbox::new();
    let name = bridge_three(&sb);
    let (white, host) = (sb.name("white"), sb.host.clone());
    let (out, dump) = (sb.tmp_file("white.txt"), sb.tmp_file("tcpdump.txt"));

    let c = capture(
        &mut sb,
        &name,
        &["--port", "nb-white", "--proto", "icmp"],
        &out,
    );
    let td = sb.tcpdump(&host, &["-i", "nb-white", "-l", "icmp"], Some(&dump));
    assert!(observer_on(&sb, "nb-white") && switch(&name).until_ns != 0);
    let busy = sb.netbridge(&["capture", "--name", &name, "--count", "1"]);
    let err = String::from_utf8_lossy(&busy.stderr);
    assert!(
        !busy.status.success() && err.contains("another `netbridge capture`"),
        "{err}"
    );
    sb.sh(&white, "ping -c 5 -i 0.2 -W 2 192.168.1.1");
    let tcpdump_saw = sb.stop_tcpdump(td);
    let ((packets, events, ..), text) = stop(&mut sb, c, &out);
    println!("capture on nb-white:\n{text}tcpdump -i nb-white saw {tcpdump_saw} ICMP packets");

    assert_eq!(
        tcpdump_saw, 5,
        "tcpdump on the port sees only white's requests"
    );
    let req = lines(
        &text,
        &[
            "nb-white",
            " in ",
            "fwd nb-black",
            "192.168.2.1 > 192.168.1.1: ICMP echo request",
        ],
    );
    let rep = lines(
        &text,
        &[
            "nb-white",
            " out ",
            "from nb-black",
            "192.168.1.1 > 192.168.2.1: ICMP echo reply",
        ],
    );
    assert_eq!((req.len(), rep.len()), (5, 5), "{text}");
    assert_eq!(
        (text.lines().count(), packets, events),
        (10, 10, 10),
        "{text}"
    );
    assert!(switch(&name).until_ns == 0, "Ctrl-C left the hooks on");
    assert!(!observer_on(&sb, "nb-white"), "observer still attached");

    // The other port, chosen by namespace: the same conversation mirrored.
    let black = sb.name("black");
    let c = capture(
        &mut sb,
        &name,
        &["--namespace", &black, "--proto", "icmp"],
        &out,
    );
    sb.sh(&white, "ping -c 5 -i 0.2 -W 2 192.168.1.1");
    let (_, text) = stop(&mut sb, c, &out);
    let req = lines(
        &text,
        &["nb-black", " out ", "from nb-white", "ICMP echo request"],
    );
    let rep = lines(
        &text,
        &["nb-black", " in ", "fwd nb-white", "ICMP echo reply"],
    );
    assert_eq!(
        (req.len(), rep.len(), text.lines().count()),
        (5, 5, 10),
        "{text}"
    );

    // --host (matched in userspace) and --count: every port, stops by
    // itself after 4 of green's 6 packets; black's ping meanwhile is not shown.
    let args = ["--host", "192.168.3.1", "--proto", "icmp", "--count", "4"];
    let c = capture(&mut sb, &name, &args, &out);
    sb.sh(&white, "ping -c 3 -i 0.2 -W 2 192.168.1.1");
    sb.sh(&white, "ping -c 3 -i 0.2 -W 2 192.168.3.1");
    let (status, stderr) = sb.wait_exit(c, Duration::from_secs(20));
    assert!(status.success(), "{stderr}");
    let text = std::fs::read_to_string(&out).unwrap();
    let green = lines(&text, &["192.168.3.1", "ICMP echo"]);
    assert_eq!((green.len(), text.lines().count()), (4, 4), "{text}");

    let bad = sb.netbridge(&["capture", "--name", &name, "--port", "nb-nope"]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && err.contains("--port \"nb-nope\"") && err.contains("nb-white"),
        "{err}"
    );
    sb.nb_ok(&["down", "--name", &name]);
}

/// Frames the anti-spoofing check drops appear with `--drops-only`, each
/// with its reason and the forged MAC; the namespaces' own traffic, which
/// flows meanwhile, does not. The drop counters agree with the capture.
#[test]
fn drops_only_shows_spoofed_frames_with_their_reason() {
    require_root!();
    let mut sb = Sandbox::new();
    let name = bridge_three(&sb);
    let (black, white) = (sb.name("black"), sb.name("white"));
    let drops = |sb: &Sandbox| -> Value {
        let v: Value =
            serde_json::from_str(&sb.nb_ok(&["stats", "--json", "--name", &name])).unwrap();
        v["drops"].clone()
    };
    let before = drops(&sb);
    let out = sb.tmp_file("drops.txt");
    let c = capture(&mut sb, &name, &["--drops-only"], &out);
    sb.sh(
        &black,
        "/usr/bin/python3 -c \"from scapy.all import *; conf.verb = 0; \
         sendp(Ether(src='02:66:66:66:66:66', dst='ff:ff:ff:ff:ff:ff') / IP(src='192.168.1.1', dst='192.168.2.1') / ICMP(), iface='eth0', count=3); \
         sendp(Ether(dst='ff:ff:ff:ff:ff:ff') / IP(src='192.168.2.1', dst='192.168.3.1') / UDP(sport=1234, dport=53), iface='eth0', count=2)\"",
    );
    sb.sh(&white, "ping -c 3 -i 0.2 -W 2 192.168.3.1");
    sb.sh(&black, "ping -c 3 -i 0.2 -W 2 192.168.2.1");
    let ((packets, ..), text) = stop(&mut sb, c, &out);
    println!("{text}");
    let after = drops(&sb);
    let delta = |r: &str| after[r].as_u64().unwrap() - before[r].as_u64().unwrap();

    let mac = lines(
        &text,
        &[
            "nb-black",
            " in ",
            "DROP spoofed_mac",
            "02:66:66:66:66:66 >",
            "192.168.1.1 > 192.168.2.1: ICMP",
        ],
    );
    let ip = lines(
        &text,
        &[
            "nb-black",
            " in ",
            "DROP spoofed_ipv4",
            "192.168.2.1.1234 > 192.168.3.1.53: UDP",
        ],
    );
    assert_eq!((mac.len(), ip.len()), (3, 2), "{text}");
    assert_eq!((delta("spoofed_mac"), delta("spoofed_ipv4")), (3, 2));
    assert_eq!(
        (text.lines().count(), packets),
        (5, 5),
        "only drops:\n{text}"
    );
    sb.nb_ok(&["down", "--name", &name]);
}

/// nat-lab up in `sb`; returns its name.
fn nat_lab(sb: &Sandbox) -> String {
    let prefix = sb.prefix();
    sb.nb_ok(&["up", "-f", &example("nat-lab.toml"), "--prefix", &prefix]);
    sb.name("nat-lab")
}

/// Pings through SNAT show every request's source rewritten to the uplink
/// address (the first at the uplink, the rest by the port's fast path) and
/// every reply's destination rewritten back, with the mapping conntrack
/// lists. A forwarded HTTP connection shows its DNAT, matched by the
/// external port number before translation.
#[test]
fn snat_and_dnat_sessions_show_the_translation() {
    require_root!();
    let mut sb = Sandbox::new();
    let name = nat_lab(&sb);
    let (black, up) = (sb.name("black"), sb.name("upstream"));
    let out = sb.tmp_file("nat.txt");
    let c = capture(&mut sb, &name, &["--uplink", "--proto", "icmp"], &out);
    sb.sh(&black, "ping -c 3 -i 0.2 -W 2 203.0.113.254");
    let (_, text) = stop(&mut sb, c, &out);
    println!("{text}");
    let ct: Value =
        serde_json::from_str(&sb.nb_ok(&["conntrack", "--json", "--name", &name])).unwrap();
    let s = ct["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["proto"] == "icmp" && s["remote"] == "203.0.113.254")
        .unwrap_or_else(|| panic!("no ICMP session: {ct}"));
    let (inside, external) = (
        s["inside"].as_str().unwrap(),
        s["external"].as_str().unwrap(),
    );
    let (in_ip, in_id) = inside.split_once(':').unwrap();
    let (ex_ip, ex_id) = external.split_once(':').unwrap();
    let snat = format!("NAT src {in_ip} id {in_id} -> {ex_ip} id {ex_id}");
    let dnat = format!("NAT dst {ex_ip} id {ex_id} -> {in_ip} id {in_id}");
    let req = lines(&text, &["uplink0", " out ", "ICMP echo request", &snat]);
    let rep = lines(
        &text,
        &["uplink0", " in ", "fwd nb-black", "ICMP echo reply", &dnat],
    );
    assert_eq!((req.len(), rep.len()), (3, 3), "{snat}:\n{text}");

    // DNAT: upstream fetches the forward 8080 -> black:8000.
    sb.spawn(
        &black,
        &["python3", "-m", "http.server", "8000", "--bind", "0.0.0.0"],
    );
    let listening = Sandbox::wait_for(Duration::from_secs(10), || {
        sb.sh(&black, "ss -tln").contains(":8000 ").then_some(())
    });
    assert!(listening.is_some(), "http.server did not start");
    let c = capture(&mut sb, &name, &["--port-number", "8080"], &out);
    let code = sb.sh(
        &up,
        "curl -sS -m 5 -o /dev/null -w '%{http_code}' http://203.0.113.1:8080/",
    );
    let (_, text) = stop(&mut sb, c, &out);
    println!("{text}");
    assert_eq!(code, "200");
    let syn = lines(
        &text,
        &[
            "uplink0",
            " in ",
            "Flags [S]",
            "NAT dst 203.0.113.1:8080 -> 192.168.1.10:8000",
        ],
    );
    assert_eq!(syn.len(), 1, "{text}");
    assert!(
        text.lines()
            .all(|l| l.contains(".8080") || l.contains(":8080")),
        "{text}"
    );
    sb.nb_ok(&["down", "--name", &name]);
}

/// `-w` writes pcapng that tshark and capinfos read: an interface per
/// port and the uplink, the direction, and the verdict, drop reason and
/// NAT translation as packet comments.
#[test]
fn pcapng_opens_in_tshark_with_comments() {
    require_root!();
    let mut sb = Sandbox::new();
    let name = nat_lab(&sb);
    let black = sb.name("black");
    let (pcap, out) = (sb.tmp_file("cap.pcapng"), sb.tmp_file("cap.txt"));
    let c = capture(&mut sb, &name, &["-w", pcap.to_str().unwrap()], &out);
    sb.sh(&black, "ping -c 2 -i 0.2 -W 2 203.0.113.254");
    sb.sh(
        &black,
        "/usr/bin/python3 -c \"from scapy.all import *; conf.verb = 0; \
         sendp(Ether(src='02:66:66:66:66:66', dst='ff:ff:ff:ff:ff:ff') / IP(src='192.168.1.10', dst='192.168.2.10') / ICMP(), iface='eth0')\"",
    );
    let ((packets, ..), text) = stop(&mut sb, c, &out);
    assert_eq!(text, "", "-w prints no packet lines");
    let p = pcap.to_str().unwrap();
    let info = sb.sh(&sb.host, &format!("capinfos -t -c -I {p}"));
    assert!(
        info.contains("pcapng") && info.contains(&format!("Number of packets:   {packets}")),
        "{info}"
    );
    for iface in ["nb-black", "nb-white", "uplink0"] {
        assert!(info.contains(&format!("Name = {iface}")), "{info}");
    }
    let rows = sb.sh(
        &sb.host,
        &format!("tshark -r {p} -T fields -E separator=/t -e frame.interface_name -e frame.packet_flags_direction -e frame.comment -e _ws.col.Info 2>/dev/null"),
    );
    println!("{rows}");
    assert_eq!(rows.lines().count() as u64, packets);
    let has = |needles: &[&str]| !lines(&rows, needles).is_empty();
    assert!(
        has(&[
            "uplink0",
            "0x00000002",
            "netbridge: sent; NAT src 192.168.1.10",
            "Echo (ping) request"
        ]),
        "{rows}"
    );
    assert!(
        has(&[
            "uplink0",
            "0x00000001",
            "NAT dst 203.0.113.1 id",
            "Echo (ping) reply"
        ]),
        "{rows}"
    );
    assert!(
        has(&["nb-black", "0x00000001", "netbridge: DROP spoofed_mac"]),
        "{rows}"
    );
    sb.nb_ok(&["down", "--name", &name]);
}

/// A ping flood (a closed loop: each request waits for its reply) under a
/// capture limited to 1000 events per CPU per second: every packet is
/// delivered, and every event is either captured or reported lost.
#[test]
fn busy_flow_loses_events_not_packets() {
    require_root!();
    let mut sb = Sandbox::new();
    let name = bridge_three(&sb);
    let black = sb.name("black");
    sb.sh(&black, "ping -c 2 -i 0.2 -W 2 192.168.2.1");
    let out = sb.tmp_file("flood.txt");
    let args = ["--port", "nb-white", "--proto", "icmp", "--rate", "1000"];
    let c = capture(&mut sb, &name, &args, &out);
    let ping = sb.sh(&black, "ping -f -q -c 20000 -W 2 192.168.2.1");
    let ((packets, events, lost_ring, lost_rate), text) = stop(&mut sb, c, &out);
    println!(
        "{}\ncaptured {packets}, lost {lost_ring} (ring) + {lost_rate} (rate)",
        ping.trim()
    );
    assert!(
        ping.contains("20000 packets transmitted, 20000 received"),
        "{ping}"
    );
    assert!(lost_rate > 0, "the flood stayed under the rate limit?");
    assert_eq!(packets, text.lines().count() as u64);
    assert_eq!(packets, events, "every event sent was shown");
    // 20000 requests delivered to white and 20000 replies from it.
    assert_eq!(events + lost_ring + lost_rate, 40_000);
    sb.nb_ok(&["down", "--name", &name]);
}

/// A capture killed with SIGKILL cannot clear the switch: its observer
/// goes with its file descriptors at once, and the first packet after the
/// lease ran out turns the hooks off. A new capture then starts normally.
#[test]
fn a_killed_capture_does_not_leave_capturing_on() {
    require_root!();
    let mut sb = Sandbox::new();
    let name = bridge_three(&sb);
    let black = sb.name("black");
    let out = sb.tmp_file("k.txt");
    let c = capture(&mut sb, &name, &[], &out);
    assert!(observer_on(&sb, "nb-black") && switch(&name).until_ns != 0);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(c.pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let (status, _) = sb.wait_exit(c, Duration::from_secs(10));
    assert!(!status.success());
    assert!(
        !observer_on(&sb, "nb-black"),
        "observer outlived its process"
    );
    assert!(switch(&name).until_ns != 0, "nothing cleared the lease yet");
    std::thread::sleep(Duration::from_nanos(LEASE_NS) + Duration::from_millis(300));
    sb.sh(&black, "ping -c 1 -W 2 192.168.2.1");
    assert_eq!(switch(&name).until_ns, 0, "expired lease not cleared");

    let args = ["--proto", "icmp", "--duration", "3s"];
    let c = capture(&mut sb, &name, &args, &out);
    sb.sh(&black, "ping -c 1 -W 2 192.168.2.1");
    let (status, stderr) = sb.wait_exit(c, Duration::from_secs(20));
    assert!(status.success(), "{stderr}");
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!((summary(&stderr).0, text.lines().count()), (2, 2), "{text}");
    sb.nb_ok(&["down", "--name", &name]);
}

/// `datapath = "xdp"`: the XDP port program reports the same decisions.
#[test]
fn xdp_datapath_is_captured_too() {
    require_root!();
    let mut sb = Sandbox::new();
    let base = std::fs::read_to_string(example("bridge-three.toml")).unwrap();
    let file = sb.tmp_file("xdp.toml");
    std::fs::write(&file, format!("datapath = \"xdp\"\n{base}")).unwrap();
    let prefix = sb.prefix();
    sb.nb_ok(&["up", "-f", file.to_str().unwrap(), "--prefix", &prefix]);
    let (name, white) = (sb.name("bridge-three"), sb.name("white"));
    sb.sh(&white, "ping -c 1 -W 2 192.168.1.1");
    let out = sb.tmp_file("xdp.txt");
    let c = capture(
        &mut sb,
        &name,
        &["--port", "nb-white", "--proto", "icmp"],
        &out,
    );
    sb.sh(&white, "ping -c 3 -i 0.2 -W 2 192.168.1.1");
    let (_, text) = stop(&mut sb, c, &out);
    let req = lines(
        &text,
        &["nb-white", " in ", "fwd nb-black", "ICMP echo request"],
    );
    let rep = lines(
        &text,
        &["nb-white", " out ", "from nb-black", "ICMP echo reply"],
    );
    assert_eq!(
        (req.len(), rep.len(), text.lines().count()),
        (3, 3, 6),
        "{text}"
    );
    sb.nb_ok(&["down", "--name", &name]);
}
