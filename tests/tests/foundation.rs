//! Foundation: the embedded object loads, a TC program attaches to a veth in
//! a sandbox, real pings pass through it, and its per-CPU map counts them.
use netbridge::{
    bpf::{Datapath, PinDir, ensure_bpffs},
    netns::{Netns, run_blocking_in},
};
use netbridge_tests::{Sandbox, require_root};

#[test]
fn tc_program_counts_real_pings_in_per_cpu_map() {
    require_root!();
    let mut sb = Sandbox::new();
    let peer = sb.add_ns("peer");
    let host_if = format!("t{}a", sb.id);
    sb.veth(
        &sb.host,
        &host_if,
        Some("192.168.77.1/24"),
        &peer,
        "eth0",
        Some("192.168.77.2/24"),
    );

    let pins = PinDir(ensure_bpffs(&sb.name("pins")).unwrap());
    sb.adopt_pins(&pins.0);

    let ifname = host_if.clone();
    let pins2 = pins.clone();
    let (maps, ifindex) = run_blocking_in(&Netns::named(&sb.host), move || {
        let mut dp = Datapath::load(pins2).expect("load eBPF object");
        let (_, new) = dp
            .attach_port(&ifname, netbridge::bpf::PortHook::Filter)
            .expect("attach TC ingress");
        assert!(new, "first attach must be new");
        let ifindex = nix::net::if_::if_nametoindex(ifname.as_str()).unwrap();
        // Program and object fds close here: the cls_bpf filter keeps the
        // program attached, which is what `netbridge up` relies on.
        let Datapath { maps, .. } = dp;
        (maps, ifindex)
    })
    .unwrap();
    let prog_pin = pins.filter(&host_if, netbridge::bpf::HOOK_TC_INGRESS);
    let pinned = netbridge::bpf::pinned_prog_id(&prog_pin);
    assert!(
        pinned.is_some(),
        "program pin {} missing",
        prog_pin.display()
    );
    // The filter (pref/handle netbridge's) runs the pinned program.
    let ids = run_blocking_in(&Netns::named(&sb.host), move || {
        netbridge::bpf::attached_tc_ids(&host_if)
    })
    .unwrap();
    assert_eq!(ids, vec![pinned.unwrap()], "programs on the port");

    let before = maps
        .port_stats()
        .unwrap()
        .get(&ifindex)
        .copied()
        .unwrap_or_default();
    // Frames from the peer enter the host-side veth: exactly the 5 echo
    // requests are IPv4 (ARP and IPv6 ND are counted elsewhere).
    sb.sh(&peer, "ping -c 5 -i 0.2 -W 2 192.168.77.1");
    let after = maps.port_stats().unwrap()[&ifindex];

    println!("port stats before: {before:?}\nport stats after:  {after:?}");
    assert_eq!(after.rx_ipv4 - before.rx_ipv4, 5, "IPv4 frames counted");
    assert!(after.rx_packets - before.rx_packets >= 5);
    assert!(
        after.rx_bytes - before.rx_bytes >= 5 * 98,
        "5 x 98-byte echo frames"
    );
    assert_eq!(after.rx_dropped, 0);

    // The same counters are readable from the pins alone (what `stats` does).
    let reopened = netbridge::bpf::Maps::open_pinned(&pins).unwrap();
    assert_eq!(reopened.port_stats().unwrap()[&ifindex], after);
    let drops = reopened.drop_stats().unwrap();
    assert!(
        drops.values().all(|&d| d == 0),
        "unexpected drops: {drops:?}"
    );
}

/// A port moves between the two TC hooks without keeping the other: a
/// TCX link (an older netbridge's, or an attached port's) gives way to the
/// filter once it is in place, and the filter to a TCX link.
#[test]
fn port_hook_switches_leave_one_attachment() {
    use netbridge::bpf::{HOOK_TC_INGRESS, PortHook, attached_tc_ids};
    require_root!();
    let mut sb = Sandbox::new();
    let peer = sb.add_ns("peer");
    let host_if = format!("t{}a", sb.id);
    sb.veth(&sb.host, &host_if, None, &peer, "eth0", None);
    let pins = PinDir(ensure_bpffs(&sb.name("pins")).unwrap());
    sb.adopt_pins(&pins.0);
    let (link, filter) = (
        pins.link(&host_if, HOOK_TC_INGRESS),
        pins.filter(&host_if, HOOK_TC_INGRESS),
    );
    let ifname = host_if.clone();
    let pins2 = pins.clone();
    run_blocking_in(&Netns::named(&sb.host), move || {
        let mut dp = Datapath::load(pins2).expect("load eBPF object");
        let tcx = |ifname: &str| {
            aya::programs::SchedClassifier::query_tcx(ifname, aya::programs::TcAttachType::Ingress)
                .unwrap()
                .1
                .len()
        };
        let index = nix::net::if_::if_nametoindex(ifname.as_str()).unwrap();
        let ours = || netbridge::tcfilter::ours(index).unwrap();
        assert!(dp.attach_port(&ifname, PortHook::Tcx).unwrap().1);
        assert!(link.exists() && !filter.exists());
        assert_eq!((tcx(&ifname), ours()), (1, None));
        assert!(dp.attach_port(&ifname, PortHook::Filter).unwrap().1);
        assert!(!link.exists() && filter.exists(), "TCX link pin left");
        assert_eq!(tcx(&ifname), 0, "TCX link still attached");
        let f = ours().expect("no filter");
        assert_eq!(f.prog_id, netbridge::bpf::pinned_prog_id(&filter));
        assert_eq!(attached_tc_ids(&ifname), vec![f.prog_id.unwrap()]);
        // Again: nothing to do.
        assert!(!dp.attach_port(&ifname, PortHook::Filter).unwrap().1);
        assert!(dp.attach_port(&ifname, PortHook::Tcx).unwrap().1);
        assert!(link.exists() && !filter.exists(), "filter pin left");
        assert_eq!((tcx(&ifname), ours()), (1, None), "filter left");
    })
    .unwrap();
}
