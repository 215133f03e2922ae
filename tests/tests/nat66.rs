//! NAT66 (IPv6 masquerade) against a simulated upstream: ping, TCP and UDP
//! from ULA lab hosts leave with the uplink's IPv6 address (checksums
//! checked by tshark upstream), distinct mappings for equal source ports,
//! expiry in the kernel, no ULA source ever leaving, and ICMPv6 errors
//! (Packet Too Big, Time Exceeded, Port Unreachable) translated back;
//! IPv6 port forwards (DNAT66) from upstream, edited live; Hairpin66 of
//! forwards and of SNAT66 mappings between lab hosts; the NAT66 fast path
//! and what it leaves to the kernel; the dual-stack example
//! (examples/nat-lab-dual-stack.toml) both ways.
//!
//! The lab: black (fd00:77::10) and white (fd00:77::20) on a bridge
//! (fd00:77::1/64) in a host namespace whose uplink (2001:db8:1::1) faces
//! a router (2001:db8:1::fe), behind which sits a server (2001:db8:2::10).
//! The router has no route to fd00::/8: only translated traffic comes back.
use std::{path::Path, time::Duration};

use netbridge_tests::{Sandbox, example, natlab::NatLab, require_root, script};
use serde_json::Value;

const SERVER6: &str = "2001:db8:2::10";
const UPLINK6: &str = "2001:db8:1::1";

/// The dual-stack lab, `uplink_extra` appended to `[uplink]`.
fn lab66(uplink_extra: &str) -> NatLab {
    let mut sb = Sandbox::new();
    let toml = format!(
        r#"name = "nat"
host_netns = "gw"

[bridge]
name = "br0"
addresses = ["192.168.0.1/16", "fd00:77::1/64"]

[[namespace]]
name = "black"
addresses = ["192.168.1.10/24", "fd00:77::10/64"]
routes = [{{ to = "default", via = "192.168.0.1", dev = "eth0" }}, {{ to = "::/0", via = "fd00:77::1", dev = "eth0" }}]

[[namespace]]
name = "white"
addresses = ["192.168.2.10/24", "fd00:77::20/64"]
routes = [{{ to = "default", via = "192.168.0.1", dev = "eth0" }}, {{ to = "::/0", via = "fd00:77::1", dev = "eth0" }}]

[[namespace]]
name = "router"
bridge = false
sysctls = {{ "net.ipv4.ip_forward" = "1", "net.ipv6.conf.all.forwarding" = "1" }}

[[namespace]]
name = "server"
bridge = false

[[link]]
a = {{ ifname = "uplink0", addresses = ["203.0.113.1/24", "2001:db8:1::1/64"] }}
b = {{ netns = "router", ifname = "eth0", addresses = ["203.0.113.254/24", "2001:db8:1::fe/64"] }}

[[link]]
a = {{ netns = "router", ifname = "eth1", addresses = ["198.51.100.1/24", "2001:db8:2::1/64"] }}
b = {{ netns = "server", ifname = "eth0", addresses = ["198.51.100.10/24", "2001:db8:2::10/64"], routes = [{{ to = "default", via = "198.51.100.1" }}, {{ to = "::/0", via = "2001:db8:2::1" }}] }}

[uplink]
ifname = "uplink0"
masquerade = true
gateway = "203.0.113.254"
gateway6 = "2001:db8:1::fe"
{uplink_extra}
"#
    );
    let file = sb.tmp_file("nat66.toml").display().to_string();
    std::fs::write(&file, toml).unwrap();
    let lab = NatLab { sb, file };
    lab.nb(&["up"]);
    lab
}

/// UDP probes over IPv6 from `ns` ("sport:dport" pairs), waiting `wait` s.
fn udp6_probe(lab: &NatLab, ns: &str, wait: u32, pairs: &[&str]) -> Value {
    let out = lab.sh(
        ns,
        &format!(
            "python3 {} {SERVER6} {wait} {}",
            script("udp6_probe.py"),
            pairs.join(" ")
        ),
    );
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// An IPv6 UDP echo on `port` in the server, answering after `delay` s.
fn udp6_echo(lab: &mut NatLab, port: u16, delay: u32) {
    let (p, d) = (port.to_string(), delay.to_string());
    let argv = ["python3", &script("udp6_echo.py"), &p, "server", "120", &d];
    lab.spawn("server", &argv);
    lab.wait_listen("server", "udp", port);
}

/// A capture file under the sandbox's own /tmp directory (removed after).
fn pcap_path(lab: &mut NatLab, name: &str) -> String {
    let dir = format!("/tmp/{}pcap", lab.sb.prefix());
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.clone();
    lab.sb.on_cleanup(move || {
        let _ = std::fs::remove_dir_all(d);
    });
    format!("{dir}/{name}.pcap")
}

/// Source addresses of the IPv6 packets in `pcap`, one per packet
/// (Neighbor Discovery left out).
fn sources(lab: &NatLab, ns: &str, pcap: &str) -> Vec<String> {
    // Link-local sources are the capturing link's own business (Neighbor
    // Discovery, MLD reports: both seen in CI captures, at moments the
    // kernel picks); a router never forwards them (RFC 4291 sec. 2.5.6),
    // so they are never translated traffic. A leaked lab source would be
    // a ULA, still listed.
    let out = lab.sh(
        ns,
        &format!("tshark -r {pcap} -Y 'not ipv6.src == fe80::/10' -T fields -e ipv6.src"),
    );
    out.lines().map(|l| l.trim().to_string()).collect()
}

/// tshark verifies every TCP, UDP and ICMPv6 checksum in `pcap` (status
/// 1: good; anything else fails); how many of each it checked.
fn checksums_good(lab: &NatLab, ns: &str, pcap: &str) -> [usize; 3] {
    let out = lab.sh(
        ns,
        &format!(
            "tshark -r {pcap} -o tcp.check_checksum:TRUE -o udp.check_checksum:TRUE \
             -T fields -E separator=, -e tcp.checksum.status -e udp.checksum.status \
             -e icmpv6.checksum.status"
        ),
    );
    let mut good = [0; 3];
    for line in out.lines() {
        for (i, s) in line.split(',').enumerate() {
            for s in s.split(';').filter(|s| !s.is_empty()) {
                assert_eq!(s, "1", "bad checksum ({i}) in {line:?}:\n{out}");
                good[i] += 1;
            }
        }
    }
    good
}

/// Checksum offload off where tshark reads: the capture then shows the
/// checksums the NAT wrote, not ones the NIC would fill in.
fn offload_off(lab: &NatLab, devs: &[(&str, &str)]) {
    for (ns, dev) in devs {
        lab.sh(ns, &format!("ethtool -K {dev} tx off >/dev/null"));
    }
}

#[test]
fn masquerade_ping_tcp_udp_with_valid_checksums() {
    require_root!();
    let mut lab = lab66("");
    // black sends full checksums (no veth offload): the capture shows
    // exactly what the NAT wrote. white keeps offload (CHECKSUM_PARTIAL:
    // the NAT fixes the pseudo-header sum only) and the router's eth1 has
    // none, so the kernel completes white's checksums there in software:
    // right only if the NAT's partial fix was.
    for (ns, dev) in [
        ("black", "eth0"),
        ("server", "eth0"),
        ("router", "eth0"),
        ("router", "eth1"),
    ] {
        lab.sh(ns, &format!("ethtool -K {dev} tx off >/dev/null"));
    }
    let p = "8080".to_string();
    lab.spawn(
        "server",
        &["python3", "-m", "http.server", &p, "--bind", "::"],
    );
    lab.wait_listen("server", "tcp", 8080);
    udp6_echo(&mut lab, 7, 0);
    let pcap = pcap_path(&mut lab, "server");
    let ns = lab.ns("server");
    let dump = lab.sb.tcpdump(
        &ns,
        &[
            "-i",
            "eth0",
            "-U",
            "-w",
            &pcap,
            "ip6 and not icmp6[0] >= 133",
        ],
        None,
    );

    lab.sh("black", &format!("ping -6 -c 2 -i 0.2 -W 2 {SERVER6}"));
    let url = format!("http://[{SERVER6}]:8080/");
    assert_eq!(lab.curl("black", &url), "200");
    assert_eq!(lab.curl("white", &url), "200");
    // Two lab hosts on the same source port: distinct external ports,
    // both on the uplink's address; the first keeps its port.
    let b = udp6_probe(&lab, "black", 2, &["43001:7"]);
    let w = udp6_probe(&lab, "white", 2, &["43001:7"]);
    let (b, w) = (b["43001:7"].as_str(), w["43001:7"].as_str());
    assert_eq!(b, Some(format!("server [{UPLINK6}]:43001").as_str()));
    let w = w.unwrap_or_else(|| panic!("no UDP reply to white"));
    assert!(w.starts_with(&format!("server [{UPLINK6}]:")), "{w}");
    assert!(!w.ends_with(":43001"), "same mapping for both: {w}");

    // `conntrack` lists both mappings of port 43001.
    let ct = lab.conntrack();
    let s6 = ct["sessions6"].as_array().unwrap_or_else(|| panic!("{ct}"));
    for (host, ext) in [("fd00:77::10", Some("43001")), ("fd00:77::20", None)] {
        let inside = format!("[{host}]:43001");
        let s = s6
            .iter()
            .find(|s| s["inside"] == inside.as_str() && s["proto"] == "udp")
            .unwrap_or_else(|| panic!("no session of {inside}: {ct}"));
        let external = s["external"].as_str().unwrap();
        assert!(external.starts_with(&format!("[{UPLINK6}]:")), "{s}");
        assert_eq!(s["remote"], format!("[{SERVER6}]:7").as_str(), "{s}");
        assert_eq!(s["state"], "REPLIED", "{s}");
        if let Some(p) = ext {
            assert!(external.ends_with(&format!(":{p}")), "{s}");
        }
    }
    let n = lab.sb.stop_tcpdump(dump);
    assert!(n > 0, "empty capture");
    let srcs = sources(&lab, "server", &pcap);
    let from_lab: Vec<&String> = srcs.iter().filter(|s| *s != SERVER6).collect();
    assert!(from_lab.len() >= 10, "{srcs:?}");
    assert!(from_lab.iter().all(|s| *s == UPLINK6), "{srcs:?}");
    let good = checksums_good(&lab, "server", &pcap);
    assert!(good.iter().all(|&g| g >= 2), "checked {good:?}");
    assert!(lab.counter("snat6_new") >= 5);
    assert!(lab.counter("translated6_in") >= 5);
    assert!(lab.counter("port_retries") + lab.counter("port_kept") >= 2);
    lab.down_clean();
}

#[test]
fn session_expires_in_the_kernel() {
    require_root!();
    let mut lab = lab66("timeouts = { udp = 2 }");
    udp6_echo(&mut lab, 7, 0);
    udp6_echo(&mut lab, 9, 4);
    // Control: a prompt answer comes back through the session.
    let r = udp6_probe(&lab, "black", 2, &["43100:7"]);
    assert!(r["43100:7"].is_string(), "{r}");
    // A reply 4 s after a lone datagram (timeout 2 s): the session is past
    // its timeout when the reply comes (found so, or swept before and its
    // grave found), which is then dropped.
    let expired = lab.counter("nat_expired");
    let r = udp6_probe(&lab, "black", 7, &["43101:9"]);
    assert!(r["43101:9"].is_null(), "late reply delivered: {r}");
    assert!(lab.counter("nat_expired") > expired);
    assert!(lab.counter("expired6") + lab.counter("expired6_sweep") >= 1);
    // The next datagram from the same endpoint opens a fresh session.
    let new = lab.counter("snat6_new");
    let r = udp6_probe(&lab, "black", 2, &["43101:7"]);
    assert!(r["43101:7"].is_string(), "{r}");
    assert_eq!(lab.counter("snat6_new"), new + 1);
    lab.down_clean();
}

/// Idle NAT66 sessions go by the kernel's sweep timer, with no netbridge
/// process running and no packet finding them: `conntrack` lists the
/// session, then stops listing it (`expired6_sweep`, not `expired6`: no
/// lookup removed it), and the kernel's live NAT66 count is back to 0.
#[test]
fn idle_session_swept_without_a_process() {
    require_root!();
    let mut lab = lab66("timeouts = { udp = 2, udp_replied = 2 }");
    udp6_echo(&mut lab, 7, 0);
    let r = udp6_probe(&lab, "black", 2, &["43200:7"]);
    assert!(r["43200:7"].is_string(), "{r}");
    let listed = |ct: &Value| {
        ct["sessions6"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["inside"] == "[fd00:77::10]:43200"))
    };
    assert!(listed(&lab.conntrack()), "{}", lab.conntrack());
    let (lookup, swept) = (lab.counter("expired6"), lab.counter("expired6_sweep"));
    lab.wait_ct(30, "the idle NAT66 session swept", |ct| !listed(ct));
    assert_eq!(lab.counter("expired6"), lookup);
    assert!(lab.counter("expired6_sweep") > swept);
    let ct = lab.conntrack();
    assert_eq!(ct["live_sessions6"], 0, "{ct}");
    lab.down_clean();
}

/// Nothing leaves the uplink with a lab (ULA) source: kinds NAT66 cannot
/// translate are dropped and counted (a router capture sees no fd00:
/// source), a hop-by-hop header before UDP is followed and translated.
#[test]
fn ula_source_never_leaves() {
    require_root!();
    let mut lab = lab66("");
    let pcap = pcap_path(&mut lab, "router");
    let ns = lab.ns("router");
    let dump = lab.sb.tcpdump(
        &ns,
        &[
            "-i",
            "eth0",
            "-U",
            "-w",
            &pcap,
            "ip6 and not icmp6[0] >= 133",
        ],
        None,
    );
    let (untranslatable, fragment, translated) = (
        lab.counter("nat_untranslatable"),
        lab.counter("nat_fragment"),
        lab.counter("translated6_out"),
    );
    // Untranslatable kinds from a lab host (each passes the port
    // program's checks): SCTP, an unknown ICMPv6 type, a routing header
    // with a segment left, AH, a first and a later UDP fragment. A
    // hop-by-hop header before UDP is followed: translated.
    let py = format!(
        "from scapy.all import *\n\
         d = '{SERVER6}'\n\
         send(IPv6(dst=d, nh=132)/Raw(b'x'*16), verbose=0)\n\
         send(IPv6(dst=d)/ICMPv6Unknown(type=200), verbose=0)\n\
         send(IPv6(dst=d)/IPv6ExtHdrSegmentRouting(addresses=[d], segleft=1)/UDP(sport=3,dport=7), verbose=0)\n\
         send(IPv6(dst=d)/AH(nh=17, spi=1)/UDP(sport=4,dport=7), verbose=0)\n\
         send(IPv6(dst=d)/IPv6ExtHdrFragment(offset=0, m=1)/UDP(sport=2,dport=7), verbose=0)\n\
         send(IPv6(dst=d)/IPv6ExtHdrFragment(offset=8, m=0, nh=17)/Raw(b'y'*16), verbose=0)\n\
         send(IPv6(dst=d)/IPv6ExtHdrHopByHop()/UDP(sport=1,dport=7), verbose=0)\n"
    );
    let file = lab.sb.tmp_file("leak.py");
    std::fs::write(&file, py).unwrap();
    lab.sh("black", &format!("/usr/bin/python3 {}", file.display()));
    // Positive control: translated traffic is seen there.
    lab.sh("black", &format!("ping -6 -c 1 -W 2 {SERVER6} || true"));
    lab.sb.stop_tcpdump(dump);
    let srcs = sources(&lab, "router", &pcap);
    assert!(
        srcs.iter().all(|s| !s.starts_with("fd00:")),
        "leaked: {srcs:?}"
    );
    assert!(srcs.iter().any(|s| s == UPLINK6), "{srcs:?}");
    assert_eq!(lab.counter("nat_untranslatable"), untranslatable + 4);
    assert_eq!(lab.counter("nat_fragment"), fragment + 2);
    // The hop-by-hop datagram and the ping.
    assert!(lab.counter("translated6_out") >= translated + 2);
    lab.down_clean();
}

/// Hostile IPv6 frames from upstream to the uplink address, each sent 3
/// times: a header cut to 20 bytes (`truncated_l3`), a payload length
/// past the frame (`bad_ipv6_header`), five destination-options headers
/// and a hop-by-hop header after another one (`ipv6_ext_chain`), a first
/// fragment without its UDP header (`ipv6_fragment`): each reason moves
/// by exactly 3. A fragmented ping -6 to the uplink address is the host's
/// (passed untranslated, `untranslated6_in`, and answered), and NAT66
/// traffic works afterwards.
#[test]
fn hostile_ipv6_from_upstream_dropped_by_reason() {
    require_root!();
    let mut lab = lab66("");
    udp6_echo(&mut lab, 7, 0);
    let upmac = lab.sb.mac_of(&lab.ns("gw"), "uplink0");
    let reasons = [
        ("truncated_l3", 3),
        ("bad_ipv6_header", 3),
        ("ipv6_ext_chain", 6),
        ("ipv6_fragment", 3),
    ];
    let before: Vec<u64> = reasons.iter().map(|(r, _)| lab.counter(r)).collect();
    let py = format!(
        "from scapy.all import *\n\
         conf.verb = 0\n\
         me = get_if_hwaddr('eth0')\n\
         e = Ether(src=me, dst='{upmac}')\n\
         ip = IPv6(src='2001:db8:1::fe', dst='{UPLINK6}')\n\
         u = UDP(sport=5353, dport=40999)/Raw(b'x'*8)\n\
         def s(p): sendp(p, iface='eth0', count=3)\n\
         s(Ether(src=me, dst='{upmac}', type=0x86dd)/raw(ip/u)[:20])\n\
         s(e/IPv6(raw(ip/u)[:4] + b'\\xff\\x00' + raw(ip/u)[6:]))\n\
         s(e/ip/IPv6ExtHdrDestOpt()/IPv6ExtHdrDestOpt()/IPv6ExtHdrDestOpt()/IPv6ExtHdrDestOpt()/IPv6ExtHdrDestOpt()/u)\n\
         s(e/ip/IPv6ExtHdrDestOpt()/IPv6ExtHdrHopByHop()/u)\n\
         s(e/ip/IPv6ExtHdrFragment(id=9, m=1, nh=60)/IPv6ExtHdrDestOpt(nh=17, options=[PadN(optdata=b'\\x00'*60)]))\n"
    );
    let file = lab.sb.tmp_file("hostile6.py");
    std::fs::write(&file, py).unwrap();
    let passed = lab.counter("untranslated6_in");
    lab.sh("router", &format!("/usr/bin/python3 {}", file.display()));
    let moved = || -> Vec<u64> {
        let now = reasons.iter().map(|(r, _)| lab.counter(r));
        now.zip(&before).map(|(n, b)| n - b).collect()
    };
    let want: Vec<u64> = reasons.iter().map(|(_, n)| *n).collect();
    let got = netbridge_tests::Sandbox::wait_for(std::time::Duration::from_secs(10), || {
        let m = moved();
        (m == want).then_some(m)
    })
    .unwrap_or_else(moved);
    assert_eq!(got, want, "{reasons:?}");
    // Fragments to the uplink address: the host's, reassembled and answered.
    lab.sh(
        "router",
        &format!("ping -6 -c 2 -i 0.2 -W 2 -s 3000 {UPLINK6}"),
    );
    assert!(lab.counter("untranslated6_in") >= passed + 2);
    // NAT66 unharmed.
    lab.sh("black", &format!("ping -6 -c 1 -W 2 {SERVER6}"));
    let r = udp6_probe(&lab, "black", 2, &["43300:7"]);
    assert!(r["43300:7"].is_string(), "{r}");
    lab.down_clean();
}

/// `netbridge log` shows NAT66 as it shows the IPv4 NAT: a new SNAT66
/// session (inside endpoint, its port on the uplink address, the remote),
/// a new DNAT66 session (client, forwarded port, target) and a drop at the
/// uplink by name (a lab fragment, `nat_fragment`). `metrics` exposes the
/// NAT66 counters and the kernel's live NAT66 count.
#[test]
fn nat66_in_the_datapath_log_and_metrics() {
    require_root!();
    let mut lab = lab_fwd66();
    udp6_echo(&mut lab, 7, 0);
    let p = "8000".to_string();
    lab.spawn(
        "white",
        &["python3", "-m", "http.server", &p, "--bind", "::"],
    );
    lab.wait_listen("white", "tcp", 8000);
    let log = lab.sb.tmp_file("log6.txt");
    let bin = netbridge_tests::netbridge_bin();
    let (name, host) = (lab.topology(), lab.sb.host.clone());
    let argv = [
        bin.to_str().unwrap(),
        "log",
        "--name",
        &name,
        "--duration",
        "300s",
    ];
    let logger = lab
        .sb
        .spawn_ready(&host, &argv, Some(&log), "following the datapath log");
    let text = || std::fs::read_to_string(&log).unwrap();
    let frag = lab.sb.tmp_file("frag6.py");
    let py = format!(
        "from scapy.all import *\n\
         send(IPv6(dst='{SERVER6}')/IPv6ExtHdrFragment(offset=8, m=0, nh=17)/Raw(b'y'*16), verbose=0)\n"
    );
    std::fs::write(&frag, py).unwrap();
    let snat = "new snat6 proto 17 [fd00:77::10]:43400 -> port 43400 to [2001:db8:2::10]:7";
    let dnat = "to port 8080 -> [fd00:77::20]:8000";
    // Repeated until logged: events are rate-limited per CPU and second.
    let logged = netbridge_tests::Sandbox::wait_for(std::time::Duration::from_secs(20), || {
        let t = text();
        if !t.contains(snat) {
            udp6_probe(&lab, "black", 1, &["43400:7"]);
        }
        if !t.contains(dnat) {
            assert_eq!(
                lab.curl("server", &format!("http://[{UPLINK6}]:8080/")),
                "200"
            );
        }
        if !t.contains("drop nat_fragment (reason") {
            lab.sh("black", &format!("/usr/bin/python3 {}", frag.display()));
        }
        let t = text();
        (t.contains(snat) && t.contains(dnat) && t.contains("drop nat_fragment (reason"))
            .then_some(())
    });
    assert!(logged.is_some(), "NAT66 events missing:\n{}", text());
    assert!(
        text().contains(&format!("new dnat6 proto 6 from [{SERVER6}]:")),
        "{}",
        text()
    );
    let (status, err) = lab.sb.stop(logger);
    assert!(status.success(), "netbridge log: {status}\n{err}");

    let listen = "127.0.0.1:9479";
    let argv = [
        bin.to_str().unwrap(),
        "metrics",
        "--name",
        &name,
        "--listen",
        listen,
    ];
    lab.sb.spawn(&host, &argv);
    let url = format!("http://{listen}/metrics");
    let body = netbridge_tests::Sandbox::wait_for(std::time::Duration::from_secs(10), || {
        let out = lab.sb.sh(&host, &format!("curl -s {url} || true"));
        out.contains("netbridge_nat66_sessions_live").then_some(out)
    })
    .expect("metrics endpoint never served");
    let value = |metric: &str| -> u64 {
        let line = body
            .lines()
            .find(|l| l.starts_with(metric))
            .unwrap_or_else(|| panic!("no {metric}:\n{body}"));
        line.rsplit_once(' ').unwrap().1.parse().unwrap()
    };
    let t = format!("{{topology=\"{name}\"");
    assert!(
        value(&format!(
            "netbridge_nat_events_total{t},event=\"snat6_new\"}}"
        )) >= 1
    );
    assert!(
        value(&format!(
            "netbridge_nat_events_total{t},event=\"dnat6_new\"}}"
        )) >= 1
    );
    assert!(
        value(&format!(
            "netbridge_nat_events_total{t},event=\"translated6_out\"}}"
        )) >= 2
    );
    assert!(value(&format!("netbridge_nat66_sessions_live{t}}}")) >= 2);
    assert!(value(&format!("netbridge_nat66_sessions_high_water{t}}}")) >= 2);
    assert!(
        value(&format!(
            "netbridge_drops_total{t},reason=\"nat_fragment\"}}"
        )) >= 1
    );
    lab.down_clean();
}

#[test]
fn icmp6_errors_translated_pmtu_and_traceroute() {
    require_root!();
    let lab = lab66("");
    // uplink.gateway6: the host's IPv6 default route.
    let r = lab.sh("gw", "ip -6 route show default");
    assert!(r.contains("via 2001:db8:1::fe dev uplink0"), "{r}");
    let before = lab.counter("icmp6_errors_translated");
    // UDP traceroute: the router's Time Exceeded and the server's Port
    // Unreachable go to the uplink address and are translated back.
    let tr = lab.sh(
        "black",
        &format!("traceroute -6 -n -q 1 -w 2 -m 5 {SERVER6}"),
    );
    let hops: Vec<&str> = tr
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(hops, ["fd00:77::1", "2001:db8:1::fe", SERVER6], "{tr}");
    // PMTU: a 1280-byte hop beyond the NAT. The router's Packet Too Big is
    // translated back and the lab host learns the MTU.
    lab.sh("router", "ip link set eth1 mtu 1280");
    let out = lab.sb.sh_output(
        &lab.ns("black"),
        &format!("ping -6 -M do -s 1400 -c 3 -i 0.3 -W 1 {SERVER6}"),
    );
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("mtu=1280") || text.contains("mtu = 1280"),
        "{text}"
    );
    let route = lab.sh("black", &format!("ip -6 route get {SERVER6}"));
    assert!(route.contains("mtu 1280"), "PMTU not learned: {route}");
    let after = lab.counter("icmp6_errors_translated");
    assert!(after >= before + 3, "translated {before} -> {after}");
    lab.down_clean();
}

/// The lab with IPv6 forwards (tcp 8080 -> white:8000, tcp 9000-9001 ->
/// white:8000-8001, udp 5353 -> black:7, tcp 8081 -> grey:8000) and grey,
/// a lab host with IPv4 only.
fn lab_fwd66() -> NatLab {
    lab66(
        r#"
[[namespace]]
name = "grey"
addresses = ["192.168.3.10/24"]
routes = [{ to = "default", via = "192.168.0.1", dev = "eth0" }]

[[forward]]
proto = "tcp"
port = 8080
to = "white:8000"

[[forward]]
proto = "tcp"
port = "9000-9001"
to = "white:8000"

[[forward]]
proto = "udp"
port = 5353
to = "black:7"

[[forward]]
proto = "tcp"
port = 8081
to = "grey:8000"
"#,
    )
}

/// DNAT66: upstream reaches lab services on the uplink's IPv6 address
/// (HTTP, a port range, UDP), the services see the client's real address,
/// checksums are good both ways, `conntrack` lists the sessions, and a
/// forward to an IPv4-only host stays IPv4-only.
#[test]
fn dnat66_forwards_tcp_range_udp_with_valid_checksums() {
    require_root!();
    let mut lab = lab_fwd66();
    offload_off(
        &lab,
        &[
            ("black", "eth0"),
            ("white", "eth0"),
            ("server", "eth0"),
            ("router", "eth0"),
            ("router", "eth1"),
        ],
    );
    let p = "8000".to_string();
    lab.spawn(
        "white",
        &["python3", "-m", "http.server", &p, "--bind", "::"],
    );
    lab.wait_listen("white", "tcp", 8000);
    let argv = [
        "python3",
        &script("tcp_whoami.py"),
        "server",
        "8001",
        "120",
        "::",
    ];
    lab.spawn("white", &argv);
    lab.wait_listen("white", "tcp", 8001);
    let argv = ["python3", &script("udp6_echo.py"), "7", "black", "120", "0"];
    lab.spawn("black", &argv);
    lab.wait_listen("black", "udp", 7);
    lab.http_server("grey", 8000);
    let (pcap_s, pcap_w) = (pcap_path(&mut lab, "server"), pcap_path(&mut lab, "white"));
    let filter = "ip6 and not icmp6[0] >= 133";
    let ns = lab.ns("server");
    let dump_s = lab
        .sb
        .tcpdump(&ns, &["-i", "eth0", "-U", "-w", &pcap_s, filter], None);
    let ns = lab.ns("white");
    let dump_w = lab
        .sb
        .tcpdump(&ns, &["-i", "eth0", "-U", "-w", &pcap_w, filter], None);

    let url = format!("http://[{UPLINK6}]:8080/");
    assert_eq!(lab.curl("server", &url), "200");
    // The range: 9001 -> 8001, where white tells who it sees.
    let who = lab.sh(
        "server",
        &format!(
            "python3 {} client {SERVER6} 43300 {UPLINK6} 9001",
            script("tcp_whoami.py")
        ),
    );
    assert_eq!(who.trim(), format!("{SERVER6}:43300"), "white saw {who}");
    let r = udp6_probe_to(&lab, UPLINK6, &["43200:5353"]);
    assert_eq!(
        r["43200:5353"].as_str(),
        Some(format!("black [{SERVER6}]:43200").as_str()),
        "{r}"
    );
    // grey has no IPv6: its forward is IPv4-only (the host answers the
    // IPv6 connection itself: refused), over IPv4 it works.
    let v6 = lab.sb.sh_output(
        &lab.ns("server"),
        &format!("curl -sS -m 5 -o /dev/null http://[{UPLINK6}]:8081/"),
    );
    assert!(!v6.status.success(), "IPv6 reached an IPv4-only forward");
    assert_eq!(lab.curl("server", "http://203.0.113.1:8081/"), "200");

    let ct = lab.conntrack();
    let s6 = ct["sessions6"].as_array().unwrap_or_else(|| panic!("{ct}"));
    let udp = s6
        .iter()
        .find(|s| s["proto"] == "udp" && s["inside"] == "[fd00:77::10]:7")
        .unwrap_or_else(|| panic!("no DNAT66 UDP session: {ct}"));
    assert_eq!(
        udp["external"],
        format!("[{UPLINK6}]:5353").as_str(),
        "{udp}"
    );
    assert_eq!(
        udp["remote"],
        format!("[{SERVER6}]:43200").as_str(),
        "{udp}"
    );
    assert_eq!(udp["state"], "REPLIED", "{udp}");
    assert!(lab.counter("dnat6_new") >= 3);

    lab.sb.stop_tcpdump(dump_s);
    lab.sb.stop_tcpdump(dump_w);
    // Upstream sees only the uplink's address from the lab; white sees the
    // client's (no source NAT on forwarded traffic).
    let srcs = sources(&lab, "server", &pcap_s);
    assert!(srcs.iter().any(|s| s == UPLINK6), "{srcs:?}");
    assert!(srcs.iter().all(|s| !s.starts_with("fd00:")), "{srcs:?}");
    let srcs = sources(&lab, "white", &pcap_w);
    assert!(srcs.iter().any(|s| s == SERVER6), "{srcs:?}");
    // TCP both ways; UDP at the server (black's echo).
    let s = checksums_good(&lab, "server", &pcap_s);
    let w = checksums_good(&lab, "white", &pcap_w);
    assert!(s[0] >= 4 && s[1] >= 2 && w[0] >= 4, "checked {s:?} {w:?}");
    lab.down_clean();
}

/// UDP probes over IPv6 from the server to `dst`.
fn udp6_probe_to(lab: &NatLab, dst: &str, pairs: &[&str]) -> Value {
    let out = lab.sh(
        "server",
        &format!(
            "python3 {} {dst} 2 {}",
            script("udp6_probe.py"),
            pairs.join(" ")
        ),
    );
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// `netbridge forward` edits the IPv6 forwards live: a re-pointed forward
/// reaches its new target over IPv6, a removed one no longer does.
#[test]
fn dnat66_forward_changes_live() {
    require_root!();
    let mut lab = lab_fwd66();
    for ns in ["black", "white"] {
        let argv = ["python3", &script("udp6_echo.py"), "7", ns, "120", "0"];
        lab.spawn(ns, &argv);
        lab.wait_listen(ns, "udp", 7);
    }
    let r = udp6_probe_to(&lab, UPLINK6, &["43400:5353"]);
    assert!(
        r["43400:5353"]
            .as_str()
            .is_some_and(|s| s.starts_with("black ")),
        "{r}"
    );
    lab.nb_named(&["forward", "del", "udp", "5353"]);
    let r = udp6_probe_to(&lab, UPLINK6, &["43401:5353"]);
    assert!(r["43401:5353"].is_null(), "removed forward answered: {r}");
    let white = format!("{}:7", lab.ns("white"));
    lab.nb_named(&["forward", "add", "udp", "5353", &white]);
    let r = udp6_probe_to(&lab, UPLINK6, &["43400:5353"]);
    assert!(
        r["43400:5353"]
            .as_str()
            .is_some_and(|s| s.starts_with("white ")),
        "{r}"
    );
    lab.down_clean();
}

/// examples/nat-lab-dual-stack.toml: up turns on NAT66 and the IPv6
/// forwards; the lab reaches upstream over IPv6 (ping, curl: masquerade),
/// upstream reaches the lab's forwarded services over IPv6 and IPv4.
#[test]
fn dual_stack_example_both_ways() {
    require_root!();
    let mut lab = NatLab {
        sb: Sandbox::new(),
        file: example("nat-lab-dual-stack.toml"),
    };
    let out = lab.nb(&["up"]);
    for want in [
        "NAT66: masquerading fd00:77::/64 as 2001:db8:1::1",
        "IPv6 forward tcp 8080 -> [fd00:77::10]:8000",
        "IPv6 forward tcp 5000 -> [fd00:77::20]:5000",
    ] {
        assert!(out.contains(want), "no {want:?} in:\n{out}");
    }
    // Dual-stack servers (http.server --bind :: takes IPv4 too).
    for (ns, port) in [("upstream", "80"), ("black", "8000"), ("white", "5000")] {
        lab.spawn(ns, &["python3", "-m", "http.server", port, "--bind", "::"]);
        lab.wait_listen(ns, "tcp", port.parse().unwrap());
    }
    // Lab -> upstream over IPv6.
    lab.sh("black", "ping -6 -c 2 -i 0.2 -W 2 2001:db8:1::fe");
    assert_eq!(lab.curl("white", "http://[2001:db8:1::fe]/"), "200");
    assert!(lab.counter("snat6_new") >= 2);
    // Upstream -> lab through the forwards, over IPv6 and IPv4.
    for url in [
        "http://[2001:db8:1::1]:8080/",
        "http://[2001:db8:1::1]:5000/",
        "http://203.0.113.1:8080/",
    ] {
        assert_eq!(lab.curl("upstream", url), "200", "{url}");
    }
    assert!(lab.counter("dnat6_new") >= 2);
    lab.down_clean();
}

/// The NAT66 session (`conntrack --json` `sessions6`) of `inside` toward
/// `remote`.
fn session6(lab: &NatLab, inside: &str, remote: &str) -> Option<Value> {
    let ct = lab.conntrack();
    ct["sessions6"]
        .as_array()
        .and_then(|s| {
            s.iter()
                .find(|s| s["inside"] == inside && s["remote"] == remote)
        })
        .cloned()
}

/// Hairpin66 of forwards: lab hosts reach the IPv6 forwards on the
/// uplink's IPv6 address (TCP, a range port, UDP), and the target sees the
/// sender's external address and port, the uplink's address and the
/// sender's SNAT66 mapping (RFC 4787 REQ-9 a, RFC 5382 REQ-8); checksums
/// good at the target, where the sender's own address never shows.
#[test]
fn hairpin66_forwards_tcp_range_udp_source_is_external_mapping() {
    require_root!();
    let mut lab = lab_fwd66();
    offload_off(&lab, &[("black", "eth0"), ("white", "eth0")]);
    let p = "8000".to_string();
    lab.spawn(
        "white",
        &["python3", "-m", "http.server", &p, "--bind", "::"],
    );
    lab.wait_listen("white", "tcp", 8000);
    let argv = [
        "python3",
        &script("tcp_whoami.py"),
        "server",
        "8001",
        "120",
        "::",
    ];
    lab.spawn("white", &argv);
    lab.wait_listen("white", "tcp", 8001);
    let argv = ["python3", &script("udp6_echo.py"), "7", "black", "120", "0"];
    lab.spawn("black", &argv);
    lab.wait_listen("black", "udp", 7);
    let pcap = pcap_path(&mut lab, "white");
    let ns = lab.ns("white");
    let filter = "ip6 and not icmp6[0] >= 133";
    let dump = lab
        .sb
        .tcpdump(&ns, &["-i", "eth0", "-U", "-w", &pcap, filter], None);

    assert_eq!(
        lab.curl("black", &format!("http://[{UPLINK6}]:8080/")),
        "200"
    );
    // The range (9001 -> white:8001): white tells who it sees.
    let who = lab.sh(
        "black",
        &format!(
            "python3 {} client fd00:77::10 43600 {UPLINK6} 9001",
            script("tcp_whoami.py")
        ),
    );
    assert_eq!(who.trim(), format!("{UPLINK6}:43600"), "white saw {who}");
    // From the forward's own port: the mapping may not keep it (the key of
    // its way back would be a packet from 9001 to 9001, the sender's).
    let who = lab.sh(
        "black",
        &format!(
            "python3 {} client fd00:77::10 9001 {UPLINK6} 9001",
            script("tcp_whoami.py")
        ),
    );
    let seen = who.trim().strip_prefix(&format!("{UPLINK6}:"));
    assert!(seen.is_some_and(|p| p != "9001"), "white saw {who}");
    // UDP from white to black's forward: black sees white's mapping.
    let out = lab.sh(
        "white",
        &format!("python3 {} {UPLINK6} 2 43601:5353", script("udp6_probe.py")),
    );
    let r: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(
        r["43601:5353"].as_str(),
        Some(format!("black [{UPLINK6}]:43601").as_str()),
        "{r}"
    );
    lab.sb.stop_tcpdump(dump);

    // Both sessions of the range connection: the sender's SNAT66 one
    // toward the forward, the forward's DNAT66 one from that mapping.
    let (up, fd10) = (format!("[{UPLINK6}]"), "[fd00:77::10]");
    let snat = session6(&lab, &format!("{fd10}:43600"), &format!("{up}:9001"))
        .unwrap_or_else(|| panic!("no SNAT66 session: {}", lab.conntrack()));
    assert_eq!(snat["external"], format!("{up}:43600").as_str(), "{snat}");
    let dnat = session6(&lab, "[fd00:77::20]:8001", &format!("{up}:43600"))
        .unwrap_or_else(|| panic!("no DNAT66 session: {}", lab.conntrack()));
    assert_eq!(dnat["external"], format!("{up}:9001").as_str(), "{dnat}");
    // The SYN and each later packet of four TCP connections and a UDP
    // exchange, both ways.
    assert!(lab.counter("translated6_hairpin") >= 10);
    assert!(lab.counter("dnat6_new") >= 4);
    let srcs = sources(&lab, "white", &pcap);
    assert!(srcs.iter().any(|s| s == UPLINK6), "{srcs:?}");
    assert!(srcs.iter().all(|s| s != "fd00:77::10"), "{srcs:?}");
    let good = checksums_good(&lab, "white", &pcap);
    assert!(good[0] >= 10 && good[1] >= 2, "checked {good:?}");
    lab.down_clean();
}

/// Hairpin66 of SNAT66 mappings, as peers punch holes (RFC 4787 REQ-9,
/// REQ-9 a): white (port 41000) sends to black's external [uplink]:42000
/// first (no session of black's answers it: dropped as `nat_filtered`,
/// black's socket must not see it), then black sends to white's
/// [uplink]:41000: white receives it from black's external mapping (the
/// uplink's address, port 42000), answers, and black gets the answer from
/// white's external mapping.
#[test]
fn hairpin66_snat_mapping_udp_source_is_external_mapping() {
    require_root!();
    let mut lab = lab66("");
    let dir = lab.sb.tmp_file("hp");
    std::fs::create_dir_all(&dir).unwrap();
    let f = |n: &str| dir.join(n).display().to_string();
    let peers = [
        ("black", "fd00:77::10", "42000", "41000", "from-black"),
        ("white", "fd00:77::20", "41000", "42000", "from-white"),
    ];
    for (role, ip, port, dport, msg) in peers {
        let (out, go) = (f(role), f(&format!("{role}.go")));
        let peer = script("udp_hairpin_peer.py");
        let argv = [
            "python3", &peer, ip, port, &out, &go, UPLINK6, dport, msg, "60",
        ];
        lab.spawn(role, &argv);
    }
    let ready = Sandbox::wait_for(Duration::from_secs(10), || {
        (Path::new(&f("black.ready")).exists() && Path::new(&f("white.ready")).exists())
            .then_some(())
    });
    assert!(ready.is_some(), "peers not ready");
    let filtered = lab.counter("nat_filtered");
    std::fs::write(f("white.go"), "").unwrap();
    let up = format!("[{UPLINK6}]");
    let white_out = format!("{up}:42000");
    let punched = Sandbox::wait_for(Duration::from_secs(10), || {
        session6(&lab, "[fd00:77::20]:41000", &white_out)
    });
    assert!(punched.is_some(), "white's session: {}", lab.conntrack());
    assert_eq!(lab.counter("nat_filtered"), filtered + 1);
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
    let black_map = session6(&lab, "[fd00:77::10]:42000", &format!("{up}:41000"))
        .expect("black's session toward white's mapping");
    let white_map = session6(&lab, "[fd00:77::20]:41000", &white_out).unwrap();
    assert_eq!(black_map["external"], format!("{up}:42000").as_str());
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
    assert_eq!(lab.counter("translated6_hairpin"), 2);
    lab.down_clean();
}

/// IPv6 datagrams the host namespace's kernel forwarded
/// (Ip6OutForwDatagrams).
fn forwarded6(lab: &NatLab) -> u64 {
    let out = lab.sh("gw", "cat /proc/net/snmp6");
    out.lines()
        .find_map(|l| l.strip_prefix("Ip6OutForwDatagrams"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or_else(|| panic!("no Ip6OutForwDatagrams in {out}"))
}

/// Hop limits of the IPv6 packets from `src` in `pcap`.
fn hop_limits(lab: &NatLab, ns: &str, pcap: &str, src: &str) -> Vec<String> {
    let out = lab.sh(
        ns,
        &format!("tshark -r {pcap} -Y 'ipv6.src == {src}' -T fields -e ipv6.hlim"),
    );
    out.lines().map(|l| l.trim().to_string()).collect()
}

/// As `nat::fast_path_follows_the_routers_new_mac`, over IPv6.
#[test]
fn fast_path66_follows_the_routers_new_mac() {
    require_root!();
    let mut lab = lab66("");
    let filter = "icmp6 and ip6[40] == 128";
    lab.assert_fast_path_follows_new_router_mac(SERVER6, "2001:db8:1::fe", filter);
    lab.down_clean();
}

/// The NAT66 fast path (`fast_path = true`, the default): after the first
/// packet of each session (ping -6, curl -6, UDP), the kernel forwards
/// nothing (Ip6OutForwDatagrams), `fast_path_out`/`fast_path_in` count
/// the rest, every checksum is good and the hop limit went down by one at
/// the NAT (64 sent, 62 after it and the router) on both sides.
#[test]
fn fast_path66_skips_the_kernel_with_valid_checksums() {
    require_root!();
    let mut lab = lab66("");
    offload_off(
        &lab,
        &[
            ("black", "eth0"),
            ("server", "eth0"),
            ("router", "eth0"),
            ("router", "eth1"),
        ],
    );
    let p = "8080".to_string();
    lab.spawn(
        "server",
        &["python3", "-m", "http.server", &p, "--bind", "::"],
    );
    lab.wait_listen("server", "tcp", 8080);
    udp6_echo(&mut lab, 7, 0);
    let (pcap_s, pcap_b) = (pcap_path(&mut lab, "server"), pcap_path(&mut lab, "black"));
    let filter = "ip6 and not icmp6[0] >= 133";
    let ns = lab.ns("server");
    let dump_s = lab
        .sb
        .tcpdump(&ns, &["-i", "eth0", "-U", "-w", &pcap_s, filter], None);
    let ns = lab.ns("black");
    let dump_b = lab
        .sb
        .tcpdump(&ns, &["-i", "eth0", "-U", "-w", &pcap_b, filter], None);
    let (out0, in0, fwd0) = (
        lab.counter("fast_path_out"),
        lab.counter("fast_path_in"),
        forwarded6(&lab),
    );
    let peer0 = lab.counter("fast_path_to_uplink_peer");

    lab.sh("black", &format!("ping -6 -c 10 -i 0.2 -W 2 {SERVER6}"));
    assert_eq!(
        lab.curl("black", &format!("http://[{SERVER6}]:8080/")),
        "200"
    );
    let r = udp6_probe(&lab, "black", 2, &["43800:7"]);
    assert_eq!(
        r["43800:7"].as_str(),
        Some(format!("server [{UPLINK6}]:43800").as_str()),
        "{r}"
    );
    let (out1, in1, fwd1) = (
        lab.counter("fast_path_out"),
        lab.counter("fast_path_in"),
        forwarded6(&lab),
    );
    lab.sb.stop_tcpdump(dump_s);
    lab.sb.stop_tcpdump(dump_b);

    // The kernel forwarded each session's first packet (the echo request,
    // the SYN, the datagram; a retransmission would find its session), the
    // fast path the rest: out, 9 echo requests and every TCP segment but
    // the SYN (3 or more); in, 10 echo replies, the TCP segments (3 or
    // more) and the UDP answer.
    let (fast_out, fast_in, kernel) = (out1 - out0, in1 - in0, fwd1 - fwd0);
    assert_eq!(
        kernel, 3,
        "kernel-forwarded: {kernel} (fast {fast_out}/{fast_in})"
    );
    assert!(fast_out >= 9 + 3, "fast path out: {fast_out}");
    // The uplink is a veth: straight into its peer, once the router's
    // neighbour entry exists (the kernel-forwarded first packets made it).
    let peer = lab.counter("fast_path_to_uplink_peer") - peer0;
    assert!(
        peer >= 9 && peer <= fast_out,
        "to the peer {peer} of {fast_out}"
    );
    assert!(fast_in > 10 + 3, "fast path in: {fast_in}");
    let srcs = sources(&lab, "server", &pcap_s);
    assert!(
        srcs.iter().all(|s| s == UPLINK6 || s == SERVER6),
        "{srcs:?}"
    );
    for (ns, pcap, src) in [("server", &pcap_s, UPLINK6), ("black", &pcap_b, SERVER6)] {
        let hops = hop_limits(&lab, ns, pcap, src);
        assert!(hops.len() >= 14, "{ns}: {hops:?}");
        assert!(hops.iter().all(|h| h == "62"), "{ns}: {hops:?}");
        let good = checksums_good(&lab, ns, pcap);
        assert!(good.iter().all(|&g| g >= 1), "{ns}: checked {good:?}");
        assert!(good[0] >= 6 && good[2] >= 20, "{ns}: checked {good:?}");
    }
    lab.down_clean();
}

/// On an established session, the packets the fast path must leave to the
/// kernel: hop limit 1 (Time Exceeded from the gateway, not from the
/// router beyond it) and too big for the uplink (Packet Too Big from the
/// gateway with the uplink's MTU, 1280; the lab host learns it).
#[test]
fn fast_path66_leaves_hop_limit_and_mtu_to_the_kernel() {
    require_root!();
    let mut lab = lab66("");
    udp6_echo(&mut lab, 7, 0);
    lab.sh("gw", "ip link set uplink0 mtu 1280");
    lab.sh("router", "ip link set eth0 mtu 1280");
    let out = lab.sh(
        "black",
        &format!("python3 {} {SERVER6} 7 43900 1400", script("udp6_edges.py")),
    );
    let r: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(
        r["reply"].as_str(),
        Some(format!("server [{UPLINK6}]:43900").as_str()),
        "{r}"
    );
    // ICMPv6 type 3: Time Exceeded; type 2: Packet Too Big (info: MTU).
    assert_eq!(r["hop1"], serde_json::json!([3, 0, "fd00:77::1"]), "{r}");
    assert_eq!(r["big"], serde_json::json!([2, 1280, "fd00:77::1"]), "{r}");
    let route = lab.sh("black", &format!("ip -6 route get {SERVER6}"));
    assert!(route.contains("mtu 1280"), "PMTU not learned: {route}");
    // Positive control: the session's ordinary packets took the fast path.
    assert!(lab.counter("fast_path_in") >= 1);
    lab.down_clean();
}

/// The IPv6-only lab: as `lab66`'s, without a single IPv4 address (bridge,
/// lab hosts, uplink, router, server); `extra` appended to the file (after
/// `[uplink]`). Returns the lab and `up`'s output.
fn lab6only(extra: &str) -> (NatLab, String) {
    let lab = lab6only_file(extra, |t| t);
    let out = lab.nb(&["up"]);
    (lab, out)
}

/// The IPv6-only lab's file, `edit`ed, not brought up.
fn lab6only_file(extra: &str, edit: impl Fn(String) -> String) -> NatLab {
    let mut sb = Sandbox::new();
    let toml = format!(
        r#"name = "nat"
host_netns = "gw"

[bridge]
name = "br0"
addresses = ["fd00:77::1/64"]

[[namespace]]
name = "black"
addresses = ["fd00:77::10/64"]
routes = [{{ to = "::/0", via = "fd00:77::1", dev = "eth0" }}]

[[namespace]]
name = "white"
addresses = ["fd00:77::20/64"]
routes = [{{ to = "::/0", via = "fd00:77::1", dev = "eth0" }}]

[[namespace]]
name = "router"
bridge = false
sysctls = {{ "net.ipv6.conf.all.forwarding" = "1" }}

[[namespace]]
name = "server"
bridge = false

[[link]]
a = {{ ifname = "uplink0", addresses = ["2001:db8:1::1/64"] }}
b = {{ netns = "router", ifname = "eth0", addresses = ["2001:db8:1::fe/64"] }}

[[link]]
a = {{ netns = "router", ifname = "eth1", addresses = ["2001:db8:2::1/64"] }}
b = {{ netns = "server", ifname = "eth0", addresses = ["2001:db8:2::10/64"], routes = [{{ to = "::/0", via = "2001:db8:2::1" }}] }}

[uplink]
ifname = "uplink0"
masquerade = true
gateway6 = "2001:db8:1::fe"
{extra}
"#
    );
    let file = sb.tmp_file("nat6only.toml").display().to_string();
    std::fs::write(&file, edit(toml)).unwrap();
    NatLab { sb, file }
}

/// A dual-stack lab behind an uplink with only IPv6 addresses: `check`
/// and `up` warn that its IPv4 traffic is not translated (no NAT44), `up`
/// says the IPv4 NAT is off; IPv4 from black to upstream is then answered
/// "Destination Net Unreachable" by the gateway (no IPv4 route out of the
/// host namespace) and never leaves the uplink, while ping -6 goes out
/// through NAT66. Without NAT66 alone, `check` and `up` fail.
#[test]
fn dual_stack_lab_behind_ipv6_only_uplink_has_no_nat44() {
    require_root!();
    let mut lab = lab6only_file("", |t| {
        t.replacen(
            r#"addresses = ["fd00:77::1/64"]"#,
            r#"addresses = ["192.168.0.1/16", "fd00:77::1/64"]"#,
            1,
        )
        .replacen(
            r#"addresses = ["fd00:77::10/64"]
routes = ["#,
            r#"addresses = ["192.168.1.10/24", "fd00:77::10/64"]
routes = [{ to = "default", via = "192.168.0.1", dev = "eth0" }, "#,
            1,
        )
    });
    let run = |args: &[&str]| {
        let prefix = lab.sb.prefix();
        let mut full = args.to_vec();
        full.extend(["-f", &lab.file]);
        if args[0] != "check" {
            full.extend(["--prefix", &prefix]);
        }
        let out = lab.sb.netbridge(&full);
        assert!(out.status.success(), "{args:?}: {out:?}");
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (text(&out.stdout), text(&out.stderr))
    };
    let warning = "uplink uplink0 has no IPv4 address: NAT66 only; IPv4 traffic from bridge \
                   br0 to upstream is not translated (no NAT44)";
    let (_, err) = run(&["check"]);
    assert!(err.contains(warning), "check: {err}");
    let (out, err) = run(&["up"]);
    assert!(err.contains(warning), "up: {err}");
    assert!(
        out.contains("IPv4 NAT off: uplink uplink0 has no IPv4 address"),
        "{out}"
    );
    let ping6 = lab.sh("black", &format!("ping -6 -c 1 -W 2 {SERVER6}"));
    assert!(ping6.contains("1 received"), "{ping6}");
    let gw = lab.ns("gw");
    let td = lab.sb.tcpdump(&gw, &["-i", "uplink0", "-U", "ip"], None);
    let black = lab.ns("black");
    let ping4 = lab
        .sb
        .cmd(
            &black,
            &["ping", "-4", "-c", "1", "-W", "2", "198.51.100.10"],
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&ping4.stdout);
    assert!(!ping4.status.success(), "IPv4 got through: {text}");
    assert!(
        text.contains("From 192.168.0.1") && text.contains("Destination Net Unreachable"),
        "{text}"
    );
    assert_eq!(lab.sb.stop_tcpdump(td), 0, "no IPv4 packet on the uplink");
    assert_eq!(lab.counter("translated_out"), 0, "no IPv4 translated");
    lab.down_clean();
}

/// NAT66 on an uplink with only IPv6 addresses, in a lab with no IPv4 at
/// all: `up` says the IPv4 NAT is off and writes no IPv4 NAT state
/// (no IPv4 port pool, no IPv4 forward); ping -6 and curl -6 go out
/// masqueraded as the uplink's address (tshark upstream: no lab source,
/// every checksum good); an IPv6 forward is reached from upstream (and
/// from the lab, Hairpin66), and
/// `forward add|del` edits the IPv6 forwards live; `conntrack` and `stats`
/// show the sessions; the NAT66 fast path takes the established sessions'
/// packets. Without NAT66 alone, `up` fails ("NAT needs an IPv4
/// address on the uplink").
#[test]
fn ipv6_only_uplink_masquerade_and_forwards() {
    require_root!();
    let (mut lab, up) =
        lab6only("\n[[forward]]\nproto = \"tcp\"\nport = 8080\nto = \"white:8000\"\n");
    assert!(
        up.contains("IPv4 NAT off: uplink uplink0 has no IPv4 address (NAT66 only)"),
        "{up}"
    );
    assert!(
        up.contains("NAT66: masquerading fd00:77::/64 as 2001:db8:1::1"),
        "{up}"
    );
    assert!(
        up.contains("IPv6 forward tcp 8080 -> [fd00:77::20]:8000"),
        "{up}"
    );
    offload_off(
        &lab,
        &[
            ("black", "eth0"),
            ("server", "eth0"),
            ("router", "eth0"),
            ("router", "eth1"),
        ],
    );
    for (ns, port) in [("server", "8080"), ("white", "8000")] {
        lab.spawn(ns, &["python3", "-m", "http.server", port, "--bind", "::"]);
        lab.wait_listen(ns, "tcp", port.parse().unwrap());
    }
    let pcap = pcap_path(&mut lab, "server6only");
    let ns = lab.ns("server");
    let filter = "ip6 and not icmp6[0] >= 133";
    let dump = lab
        .sb
        .tcpdump(&ns, &["-i", "eth0", "-U", "-w", &pcap, filter], None);

    let ping = lab.sh("black", &format!("ping -6 -c 2 -i 0.2 -W 2 {SERVER6}"));
    assert!(ping.contains("2 received"), "{ping}");
    assert_eq!(
        lab.curl("black", &format!("http://[{SERVER6}]:8080/")),
        "200"
    );
    let fwd = |port: u16| lab.curl("server", &format!("http://[{UPLINK6}]:{port}/"));
    assert_eq!(fwd(8080), "200", "the IPv6 forward from upstream");
    let hairpin = lab.curl("black", &format!("http://[{UPLINK6}]:8080/"));
    assert_eq!(hairpin, "200", "Hairpin66 of the forward");
    let ct = lab.conntrack();
    let s6 = ct["sessions6"].as_array().unwrap().clone();
    let has = |inside: &str, external: &str| {
        s6.iter().any(|s| {
            s["inside"].as_str().unwrap().starts_with(inside)
                && s["external"].as_str().unwrap().starts_with(external)
        })
    };
    assert!(has("[fd00:77::10]:", "[2001:db8:1::1]:"), "SNAT66: {ct}");
    assert!(
        has("[fd00:77::20]:8000", "[2001:db8:1::1]:8080"),
        "DNAT66: {ct}"
    );
    // The IPv4 NAT is off: no IPv4 session, port pool or forward.
    assert_eq!(ct["sessions"].as_array().map(Vec::len), Some(0), "{ct}");
    assert_eq!(ct["pools"].as_array().map(Vec::len), Some(0), "{ct}");
    assert!(lab.nb_named(&["forward", "list", "--json"]).trim() == "[]");
    assert!(lab.counter("snat6_new") >= 2, "ping and curl");
    assert!(lab.counter("dnat6_new") >= 1);
    // `status` lists the uplink programs attached.
    let status = lab.nb(&["status"]);
    assert!(status.contains("nb_uplink_ingre"), "{status}");
    // The NAT66 fast path (on by default) runs on its own flag, without an
    // IPv4 NAT.
    assert!(lab.counter("fast_path_out") >= 1 && lab.counter("fast_path_in") >= 1);
    let stats: Value = serde_json::from_str(&lab.nb(&["stats", "--json"])).unwrap();
    assert!(
        stats["nat"]["live_sessions6"].as_u64() >= Some(3),
        "{stats}"
    );

    let white = format!("{}:8000", lab.ns("white"));
    let add = lab.nb_named(&["forward", "add", "tcp", "8081", &white]);
    assert!(
        add.contains("IPv6 forward tcp 8081 -> [fd00:77::20]:8000"),
        "{add}"
    );
    assert_eq!(fwd(8081), "200", "a forward added live");
    let del = lab.nb_named(&["forward", "del", "tcp", "8081"]);
    assert!(del.contains("removed IPv6 forward tcp 8081"), "{del}");
    let gone = lab.sh(
        "server",
        &format!("curl -sS -m 5 -o /dev/null -w '%{{http_code}}' http://[{UPLINK6}]:8081/ || true"),
    );
    assert_eq!(gone.trim(), "000", "the forward deleted live");
    let n = lab.sb.stop_tcpdump(dump);
    assert!(n > 0, "captured {n}");
    let srcs = sources(&lab, "server", &pcap);
    assert!(
        srcs.iter().all(|s| s == UPLINK6 || s == SERVER6),
        "a lab source left untranslated: {srcs:?}"
    );
    let [tcp, _udp, icmp] = checksums_good(&lab, "server", &pcap);
    assert!(tcp > 0 && icmp >= 4, "checked tcp {tcp}, icmpv6 {icmp}");
    lab.down_clean();
}

/// A connected UDP socket in `ns` sending from `sport` to the server's
/// `dport`: "answered", "silent" (2 s), or the errno its recv got.
fn udp6_errno(lab: &NatLab, ns: &str, sport: u16, dport: u16) -> String {
    let py = format!(
        "import errno, socket\n\
         s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n\
         s.bind(('::', {sport})); s.connect(('{SERVER6}', {dport})); s.settimeout(2)\n\
         s.send(b'new flow')\n\
         try:\n    s.recv(256); print('answered')\n\
         except socket.timeout:\n    print('silent')\n\
         except OSError as e:\n    print(errno.errorcode[e.errno])\n"
    );
    let file = format!("/tmp/{}udp6_errno.py", lab.sb.prefix());
    std::fs::write(&file, py).unwrap();
    let out = lab.sh(ns, &format!("python3 {file}"));
    let _ = std::fs::remove_file(&file);
    out.trim().to_string()
}

/// RFC 5508 REQ-8's IPv6 counterpart: a lab host whose new NAT66 session
/// is refused (its quota, `max_sessions_per_host = 1`, held by a ping) gets
/// an ICMPv6 Destination Unreachable, code 1 (administratively
/// prohibited), from the bridge's address fd00:77::1, quoting its packet:
/// its connected UDP socket fails at once (EACCES) and a second ping
/// reports it; tshark checks the error's checksum and sees the quote.
/// white, under its own quota, is answered. Without the error the UDP
/// socket times out ("silent") and ping only loses its packet.
#[test]
fn refused_nat66_session_gets_icmp6_prohibited() {
    require_root!();
    let (mut lab, _) = lab6only("max_sessions_per_host = 1\n");
    udp6_echo(&mut lab, 7, 0);
    let pcap = pcap_path(&mut lab, "black6");
    let black = lab.ns("black");
    let td = lab.sb.tcpdump(
        &black,
        &["-i", "eth0", "-U", "-w", &pcap, "icmp6 and ip6[40] == 1"],
        None,
    );
    let first = lab.sh("black", &format!("ping -6 -c 1 -W 2 {SERVER6}"));
    assert!(first.contains("1 received"), "control: {first}");
    let udp = udp6_errno(&lab, "black", 43000, 7);
    let ping = lab
        .sb
        .cmd(&black, &["ping", "-6", "-c", "1", "-W", "2", SERVER6])
        .output();
    let ping = String::from_utf8_lossy(&ping.unwrap().stdout).into_owned();
    let white = udp6_errno(&lab, "white", 43000, 7);
    let n = lab.sb.stop_tcpdump(td);
    assert_eq!(udp, "EACCES", "black's refused UDP flow");
    assert!(
        ping.contains("From fd00:77::1") && ping.contains("Administratively prohibited"),
        "{ping}"
    );
    assert_eq!(white, "answered", "control: white is not at black's quota");
    assert!(n >= 2, "captured {n}");
    let fields = lab.sh(
        "black",
        &format!(
            "tshark -r {pcap} -Y 'icmpv6.type == 1' -T fields -E separator=, \
             -E aggregator=';' -e ipv6.src -e ipv6.dst -e icmpv6.type -e icmpv6.code \
             -e icmpv6.checksum.status -e udp.dstport -e ipv6.plen"
        ),
    );
    let lines: Vec<Vec<&str>> = fields.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(lines.len(), 2, "two errors (UDP, ping):\n{fields}");
    for f in &lines {
        // Outer header first, then the quoted packet's (aggregated by ';').
        assert_eq!(f[0], "fd00:77::1;fd00:77::10", "{fields}");
        assert_eq!(f[1], format!("fd00:77::10;{SERVER6}"), "{fields}");
        assert_eq!(f[2].split(';').next(), Some("1"), "type: {fields}");
        assert_eq!(f[3].split(';').next(), Some("1"), "code: {fields}");
        // Status 1: good (the error's own checksum, over its pseudo-header).
        assert_eq!(f[4].split(';').next(), Some("1"), "checksum: {fields}");
    }
    assert_eq!(
        lines[0][5], "7",
        "quotes the UDP datagram to port 7: {fields}"
    );
    assert_eq!(lines[1][2], "1;128", "quotes the echo request: {fields}");
    assert_eq!(lab.counter("nat_quota"), 2);
    assert_eq!(lab.counter("icmp6_prohibited_sent"), 2);
    lab.down_clean();
}
