//! The gateway masquerades the lab, not the world: a packet from upstream
//! that the gateway routes back out of the uplink keeps its source (no
//! session is opened for it), while lab traffic is still masqueraded.
//! Real traffic in the routed NAT lab, seen by a capture at the server.
use std::time::Duration;

use netbridge_tests::{
    Sandbox,
    natlab::{NatLab, SERVER, UPLINK, sessions},
    require_root,
};

/// How many datagrams the upstream host asks the gateway to relay.
const RELAYED: usize = 5;
/// An upstream host on the uplink's segment.
const OUTSIDER: &str = "203.0.113.99";

/// Datagrams in `pcap` (read in the sandbox's host namespace) matching
/// `filter`.
fn captured(lab: &NatLab, pcap: &str, filter: &str) -> usize {
    let out = lab.sb.sh(
        &lab.sb.host,
        &format!("tcpdump -n -r {pcap} '{filter}' 2>/dev/null | wc -l"),
    );
    out.trim().parse().unwrap()
}

/// A host on the uplink's segment (203.0.113.99, played by the router's
/// interface) sends UDP 203.0.113.99:5555 -> server:5555 to the gateway's
/// uplink MAC: the gateway routes it back out of the uplink (its default
/// route), the router delivers it to the server. It must arrive from
/// 203.0.113.99, not from the uplink address, and leave no NAT session;
/// black's datagram (the control) is masqueraded as ever. (Not the
/// router's own address: the router would drop its own source coming back
/// as a martian.)
#[test]
fn upstream_traffic_routed_back_out_is_not_masqueraded() {
    require_root!();
    let mut lab = NatLab::new("", "");
    let pcap = lab.sb.tmp_file("relay.pcap").display().to_string();
    let server = lab.ns("server");
    let cap = lab
        .sb
        .tcpdump(&server, &["-i", "eth0", "-U", "-w", &pcap, "udp"], None);
    let snat_before = lab.counter("snat_new");

    // Control: lab traffic leaves with the uplink address.
    let r = lab.udp_probe("black", SERVER, &["6000:6000".into()]);
    assert!(r["6000:6000"].is_null(), "nothing answers on 6000: {r}");

    let gw_mac = lab.sb.mac_of(&lab.ns("gw"), "uplink0");
    let router_mac = lab.sb.mac_of(&lab.ns("router"), "eth0");
    let send = format!(
        "/usr/bin/python3 -c 'from scapy.all import *; conf.verb = 0; \
         sendp(Ether(src=\"{router_mac}\", dst=\"{gw_mac}\") / \
         IP(src=\"{OUTSIDER}\", dst=\"{SERVER}\") / UDP(sport=5555, dport=5555) / \
         Raw(b\"relay\"), iface=\"eth0\", count={RELAYED})'"
    );
    lab.sh("router", &send);

    let relayed = format!("src {OUTSIDER} and udp port 5555");
    let arrived = Sandbox::wait_for(Duration::from_secs(10), || {
        (captured(&lab, &pcap, &relayed) == RELAYED).then_some(())
    });
    lab.sb.stop_tcpdump(cap);
    assert_eq!(
        captured(&lab, &pcap, &format!("src {UPLINK} and udp port 5555")),
        0,
        "upstream's datagrams were masqueraded (an open relay)"
    );
    assert!(
        arrived.is_some(),
        "routed back untranslated: {} of {RELAYED}",
        captured(&lab, &pcap, &relayed)
    );
    let control = format!("src {UPLINK} and udp src port 6000 and dst port 6000");
    assert_eq!(captured(&lab, &pcap, &control), 1, "control masqueraded");

    assert_eq!(
        lab.counter("snat_new"),
        snat_before + 1,
        "only black's session"
    );
    let ct = lab.conntrack();
    let insides: Vec<String> = sessions(&ct)
        .iter()
        .map(|s| s["inside"].as_str().unwrap().to_string())
        .collect();
    assert!(
        insides.iter().any(|i| i == "192.168.1.10:6000"),
        "{insides:?}"
    );
    assert!(
        !insides.iter().any(|i| i.starts_with(OUTSIDER)),
        "a session for upstream: {insides:?}"
    );
    lab.nb(&["down"]);
}
