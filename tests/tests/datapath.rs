//! Bridging datapath: parser and FDB decisions with hand-built frames
//! (BPF_PROG_TEST_RUN), then the fast path proven on real traffic.
use std::time::Duration;

use netbridge::{
    bpf::{Datapath, PinDir, ensure_bpffs, port_config},
    netns::{Netns, run_blocking_in},
};
use netbridge_common::{FdbKey, drop_reason};
use netbridge_tests::{
    Sandbox, example, require_root,
    testrun::{frame, run_tc, run_xdp},
};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb];
const MAC_UNKNOWN: [u8; 6] = [0x02, 0, 0, 0, 0, 0xee];
const MAC_GW: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];
const BROADCAST_MAC: [u8; 6] = [0xff; 6];

/// BPF_PROG_TEST_RUN frames enter on `lo` (ifindex 1: this kernel rejects
/// any ifindex in the test context), configured as bridge port "A"; a
/// real veth is port "B". Entries for MACs behind B are learned by the same
/// code path when a frame enters B; here they are seeded from userspace.
#[test]
fn parser_and_fdb_decisions_with_hand_built_frames() {
    require_root!();
    let mut sb = Sandbox::new();
    let lab = sb.add_ns("lab");
    let pb = format!("t{}pb", sb.id);
    sb.veth(&sb.host, &pb, None, &lab, "e1", None);
    let pins = PinDir(ensure_bpffs(&format!("{}unit", sb.prefix())).unwrap());
    sb.adopt_pins(&pins.0);

    let report = run_blocking_in(&Netns::named(&sb.host), move || {
        let mut dp = Datapath::load(pins).expect("load");
        let ia = 1; // lo
        let ib = nix::net::if_::if_nametoindex(pb.as_str()).unwrap();
        // The gateway: frames to its MAC always go to the kernel.
        let gw = netbridge::bpf::Gateway {
            ifindex: 0,
            mac: MAC_GW,
            ipv4: Some(std::net::Ipv4Addr::new(192, 168, 0, 1)),
        };
        dp.maps
            .configure(
                &[port_config(ia, None), port_config(ib, None)],
                300,
                Some(gw),
            )
            .unwrap();
        let fd = dp.prog_fd(netbridge_common::PROG_PORT_INGRESS).unwrap();
        let run = |f: &[u8]| {
            run_tc(fd, f).unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN on {f:02x?}: {e}"))
        };
        let drops =
            |dp: &Datapath, r: u32| dp.maps.drop_stats().unwrap()[drop_reason::NAMES[r as usize]];
        let port = |dp: &Datapath, i: u32| {
            dp.maps
                .port_stats()
                .unwrap()
                .get(&i)
                .copied()
                .unwrap_or_default()
        };
        let fdb_port = |dp: &Datapath, mac: [u8; 6]| {
            dp.maps
                .fdb
                .get(&FdbKey { mac, vlan: 0 }, 0)
                .ok()
                .map(|e| e.ifindex)
        };
        let seed = |dp: &mut Datapath, mac: [u8; 6], ifindex: u32| {
            let e = netbridge_common::FdbEntry {
                ifindex,
                _pad: 0,
                last_seen_ns: netbridge::bpf::monotonic_ns(),
            };
            dp.maps.fdb.insert(FdbKey { mac, vlan: 0 }, e, 0).unwrap();
        };

        // Broadcast ARP from A: the kernel floods it; A is learned on port A.
        assert_eq!(run(&frame::arp(MAC_A)), TC_ACT_OK, "broadcast -> kernel");
        assert_eq!(fdb_port(&dp, MAC_A), Some(ia), "A learned on its port");
        assert_eq!(port(&dp, ia).rx_arp, 1);

        // Unknown unicast A -> B: kernel.
        assert_eq!(
            run(&frame::ipv4_udp(MAC_B, MAC_A, 5)),
            TC_ACT_OK,
            "unknown unicast -> kernel"
        );

        // Known unicast A -> B: redirected into B's peer, counted both sides.
        seed(&mut dp, MAC_B, ib);
        let f = frame::ipv4_udp(MAC_B, MAC_A, 5);
        assert_eq!(run(&f), TC_ACT_REDIRECT, "known unicast -> redirect");
        let (sa, sb_) = (port(&dp, ia), port(&dp, ib));
        assert_eq!((sa.rx_redirected, sa.rx_fallback), (1, 2));
        assert_eq!((sb_.tx_packets, sb_.tx_bytes), (1, f.len() as u64));

        // To the gateway: the kernel (routing), even if its MAC was learned.
        seed(&mut dp, MAC_GW, ib);
        assert_eq!(
            run(&frame::ipv4_udp(MAC_GW, MAC_A, 5)),
            TC_ACT_OK,
            "gateway -> kernel"
        );

        // Non-IP ethertype (LLDP-like 0x88cc) to a known MAC: still bridged.
        let mut lldp = frame::eth(MAC_B, MAC_A, &[], 0x88cc);
        lldp.resize(60, 0);
        assert_eq!(run(&lldp), TC_ACT_REDIRECT);
        assert_eq!(port(&dp, ia).rx_other, 1);

        // VLAN-tagged: parsed, counted, left to the kernel bridge.
        let mut tagged = frame::eth(MAC_B, MAC_A, &[100], 0x0800);
        tagged.extend_from_slice(&frame::ipv4_udp(MAC_B, MAC_A, 5)[14..]);
        assert_eq!(run(&tagged), TC_ACT_OK, "tagged -> kernel");
        let sa = port(&dp, ia);
        assert_eq!((sa.rx_vlan, sa.rx_ipv4), (1, 4));

        // Multicast destination (IPv6 all-nodes): kernel.
        let mut mcast = frame::eth([0x33, 0x33, 0, 0, 0, 1], MAC_A, &[], 0x86dd);
        mcast.resize(74, 0);
        mcast[14] = 0x60;
        assert_eq!(run(&mcast), TC_ACT_OK);
        assert_eq!(port(&dp, ia).rx_ipv6, 1);

        // Destination behind the ingress port itself: kernel, no hairpin.
        assert_eq!(
            run(&frame::ipv4_udp(MAC_A, [0x02, 0, 0, 0, 0, 0xd], 5)),
            TC_ACT_OK
        );

        // A MAC moves: B now sends from port A; the entry follows it.
        assert_eq!(run(&frame::ipv4_udp(MAC_UNKNOWN, MAC_B, 5)), TC_ACT_OK);
        assert_eq!(fdb_port(&dp, MAC_B), Some(ia), "moved MAC relearned");

        // Malformed: each dropped with its own reason.
        assert_eq!(run(&frame::ipv4_udp(MAC_B, MAC_A, 3)), TC_ACT_SHOT, "IHL 3");
        assert_eq!(drops(&dp, drop_reason::BAD_IPV4_HEADER), 1);
        // IHL 15 claims a 60-byte header; the frame carries 28 bytes of IP.
        // (The kernel itself refuses test frames shorter than 20 bytes of IP.)
        let mut short = frame::ipv4_udp(MAC_B, MAC_A, 5);
        short[14] = 0x4f;
        assert_eq!(run(&short), TC_ACT_SHOT, "truncated IPv4 options");
        assert_eq!(drops(&dp, drop_reason::TRUNCATED_L3), 1);
        let mut deep = frame::eth(MAC_B, MAC_A, &[1, 2, 3], 0x0800);
        deep.resize(64, 0);
        assert_eq!(run(&deep), TC_ACT_SHOT, "3 VLAN tags");
        assert_eq!(drops(&dp, drop_reason::VLAN_TOO_DEEP), 1);
        let mut tag_cut = frame::eth(MAC_B, MAC_A, &[], 0x8100);
        tag_cut.push(0);
        assert_eq!(run(&tag_cut), TC_ACT_SHOT, "VLAN tag cut short");
        assert_eq!(drops(&dp, drop_reason::TRUNCATED_ETH), 1);
        let bad_src = frame::ipv4_udp(MAC_B, [0x01, 0, 0x5e, 0, 0, 1], 5);
        assert_eq!(run(&bad_src), TC_ACT_SHOT, "multicast source MAC");
        assert_eq!(drops(&dp, drop_reason::BAD_SRC_MAC), 1);
        assert_eq!(port(&dp, ia).rx_dropped, 5);

        // Anti-spoofing: port A may only use MAC_A and 192.168.1.1.
        let a_ip = [std::net::Ipv4Addr::new(192, 168, 1, 1)];
        let guarded = [
            port_config(ia, Some((MAC_A, &a_ip[..]))),
            port_config(ib, None),
        ];
        dp.maps.configure(&guarded, 300, Some(gw)).unwrap();
        seed(&mut dp, MAC_B, ib);
        assert_eq!(
            run(&frame::ipv4_udp(MAC_B, MAC_A, 5)),
            TC_ACT_REDIRECT,
            "own MAC and IP pass"
        );
        assert_eq!(
            run(&frame::ipv4_udp(MAC_B, [0x02, 0, 0, 0, 0, 0x66], 5)),
            TC_ACT_SHOT,
            "forged MAC"
        );
        assert_eq!(drops(&dp, drop_reason::SPOOFED_MAC), 1);
        let mut forged_ip = frame::ipv4_udp(MAC_B, MAC_A, 5);
        forged_ip[14 + 12..14 + 16].copy_from_slice(&[10, 9, 9, 9]);
        assert_eq!(run(&forged_ip), TC_ACT_SHOT, "forged IPv4 source");
        assert_eq!(drops(&dp, drop_reason::SPOOFED_IPV4), 1);
        assert_eq!(run(&frame::arp(MAC_A)), TC_ACT_OK, "own ARP");
        let mut arp_spoof = frame::arp(MAC_A);
        arp_spoof[14 + 14..14 + 18].copy_from_slice(&[192, 168, 1, 77]);
        assert_eq!(run(&arp_spoof), TC_ACT_SHOT, "ARP claiming another IP");
        assert_eq!(drops(&dp, drop_reason::SPOOFED_ARP), 1);
        let mut dhcp = frame::ipv4_udp(BROADCAST_MAC, MAC_A, 5);
        dhcp[14 + 12..14 + 16].copy_from_slice(&[0, 0, 0, 0]);
        assert_eq!(run(&dhcp), TC_ACT_OK, "0.0.0.0 (DHCP) is allowed");
        // A forged source is not learned: it cannot poison the FDB.
        assert_eq!(fdb_port(&dp, [0x02, 0, 0, 0, 0, 0x66]), None);
        dp.maps
            .configure(
                &[port_config(ia, None), port_config(ib, None)],
                300,
                Some(gw),
            )
            .unwrap();

        // Aging: with a 1 s aging time, an entry 2 s old is ignored and removed.
        seed(&mut dp, MAC_UNKNOWN, ib);
        dp.maps
            .configure(&[port_config(ia, None), port_config(ib, None)], 1, Some(gw))
            .unwrap();
        std::thread::sleep(Duration::from_millis(2100));
        assert_eq!(
            run(&frame::ipv4_udp(MAC_UNKNOWN, [0x02, 0, 0, 0, 0, 0xc], 5)),
            TC_ACT_OK,
            "expired -> kernel"
        );
        assert_eq!(fdb_port(&dp, MAC_UNKNOWN), None, "expired entry removed");
        // The sender was learned meanwhile and is listed with its age.
        let rows = dp.maps.fdb().unwrap();
        assert!(
            rows.iter()
                .any(|r| r.mac == "02:00:00:00:00:0c" && r.ifindex == ia && r.age_secs < 1.0),
            "{rows:?}"
        );
        assert!(
            rows.iter()
                .any(|r| r.mac == "02:00:00:00:00:0a" && r.expired),
            "{rows:?}"
        );

        // The XDP variant makes the same decisions with XDP verdicts.
        let xfd = dp.prog_fd(netbridge_common::PROG_PORT_XDP).unwrap();
        let xrun =
            |f: &[u8]| run_xdp(xfd, f).unwrap_or_else(|e| panic!("XDP test run on {f:02x?}: {e}"));
        dp.maps
            .configure(
                &[port_config(ia, None), port_config(ib, None)],
                300,
                Some(gw),
            )
            .unwrap();
        seed(&mut dp, MAC_B, ib);
        let before = port(&dp, ib).tx_packets;
        assert_eq!(
            xrun(&frame::ipv4_udp(MAC_B, MAC_A, 5)),
            XDP_REDIRECT,
            "XDP known unicast"
        );
        assert_eq!(port(&dp, ib).tx_packets, before + 1);
        assert_eq!(xrun(&frame::arp(MAC_A)), XDP_PASS, "XDP broadcast");
        assert_eq!(
            xrun(&frame::ipv4_udp(MAC_UNKNOWN, MAC_A, 5)),
            XDP_PASS,
            "XDP unknown unicast"
        );
        assert_eq!(xrun(&tagged), XDP_PASS, "XDP tagged");
        assert_eq!(
            xrun(&frame::ipv4_udp(MAC_B, MAC_A, 3)),
            XDP_DROP,
            "XDP IHL 3"
        );
        assert_eq!(drops(&dp, drop_reason::BAD_IPV4_HEADER), 2);

        // A port removed from the configuration no longer gets redirects.
        seed(&mut dp, MAC_B, ib);
        dp.maps
            .configure(&[port_config(ia, None)], 300, Some(gw))
            .unwrap();
        assert_eq!(
            run(&frame::ipv4_udp(MAC_B, MAC_A, 5)),
            TC_ACT_OK,
            "unconfigured target -> kernel"
        );
        assert_eq!(
            xrun(&frame::ipv4_udp(MAC_B, MAC_A, 5)),
            XDP_PASS,
            "unconfigured target -> kernel (XDP)"
        );
        format!("{:?}", dp.maps.port_stats().unwrap())
    })
    .unwrap();
    println!("{report}");
}

/// Kernel TX packet counter of an interface (what the Linux bridge bumps
/// when it forwards out of a port).
fn kernel_tx_packets(sb: &Sandbox, ns: &str, ifname: &str) -> u64 {
    // nsenter keeps the caller's /sys, so ask netlink instead.
    let out = sb.sh(ns, &format!("ip -j -s link show {ifname} | python3 -c 'import json,sys; print(json.load(sys.stdin)[0][\"stats64\"][\"tx\"][\"packets\"])'"));
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("tx_packets of {ifname}: {out}"))
}

fn port_stats(sb: &Sandbox, file: &str) -> serde_json::Value {
    let prefix = sb.prefix();
    let out = sb.netbridge(&["stats", "--json", "-f", file, "--prefix", &prefix]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Known unicast between two namespaces is redirected by BPF straight into
/// the destination namespace: the BPF redirect counters rise by the flow,
/// the kernel bridge's port does not transmit it, and tcpdump inside the
/// destination sees every packet.
#[test]
fn fast_path_bypasses_the_kernel_bridge_on_real_traffic() {
    require_root!();
    let sb = Sandbox::new();
    let file = example("bridge-three.toml");
    let prefix = sb.prefix();
    sb.nb_ok(&["up", "-f", &file, "--prefix", &prefix]);
    let (black, white) = (sb.name("black"), sb.name("white"));
    // Warm up: ARP goes through the kernel bridge, both MACs get learned.
    sb.sh(&black, "ping -c 2 -i 0.2 -W 2 192.168.2.1");

    let before = port_stats(&sb, &file);
    let tx_before = kernel_tx_packets(&sb, &sb.host, "nb-white");

    // tcpdump in white counts the echo requests that arrive (seed check).
    let dump = format!("/tmp/{}dump.txt", sb.prefix());
    let mut tcpdump = sb
        .cmd(
            &white,
            &[
                "timeout",
                "30",
                "tcpdump",
                "-i",
                "eth0",
                "--immediate-mode",
                "-n",
                "-l",
                "-c",
                "100",
                "icmp[icmptype] == icmp-echo and src 192.168.1.1",
            ],
        )
        .stdout(std::fs::File::create(&dump).unwrap())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    // Meanwhile, what the kernel bridge sends out of nb-white for this flow.
    let egress = sb
        .cmd(
            &sb.host,
            &[
                "timeout",
                "5",
                "tcpdump",
                "-i",
                "nb-white",
                "-Q",
                "out",
                "--immediate-mode",
                "-n",
                "-l",
                "icmp and host 192.168.1.1",
            ],
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    sb.sh(&black, "ping -c 100 -i 0.01 -W 2 -q 192.168.2.1");
    let status = tcpdump.wait().unwrap();
    let egress = egress.wait_with_output().unwrap();
    let kernel_forwarded = String::from_utf8_lossy(&egress.stdout)
        .lines()
        .filter(|l| l.contains("ICMP"))
        .count();
    let seen = std::fs::read_to_string(&dump).unwrap();
    let _ = std::fs::remove_file(&dump);
    assert!(
        status.success(),
        "tcpdump did not see 100 echo requests:\n{seen}"
    );
    assert_eq!(
        seen.lines()
            .filter(|l| l.contains("ICMP echo request"))
            .count(),
        100,
        "{seen}"
    );

    let after = port_stats(&sb, &file);
    let tx_after = kernel_tx_packets(&sb, &sb.host, "nb-white");
    let delta = |port: &str, field: &str| {
        after["ports"][port][field].as_u64().unwrap()
            - before["ports"][port][field].as_u64().unwrap()
    };
    println!(
        "nb-black rx_redirected +{}, nb-white tx +{} (BPF), nb-white kernel tx +{}",
        delta("nb-black", "rx_redirected"),
        delta("nb-white", "tx_packets"),
        tx_after - tx_before
    );
    // 100 requests black->white and 100 replies white->black, all redirected.
    assert!(delta("nb-black", "rx_redirected") >= 100);
    assert!(delta("nb-white", "rx_redirected") >= 100);
    assert!(delta("nb-white", "tx_packets") >= 100);
    // The kernel bridge forwarded none of the flow out of nb-white (its TX
    // counter only moves for flooded multicast such as IPv6 ND/MLD).
    assert_eq!(
        kernel_forwarded,
        0,
        "kernel bridge forwarded the flow:\n{}",
        String::from_utf8_lossy(&egress.stdout)
    );

    // `netbridge fdb` lists the learned MACs of both namespaces.
    let out = sb.netbridge(&["fdb", "--json", "-f", &file, "--prefix", &prefix]);
    assert!(out.status.success());
    let fdb: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ports: Vec<&str> = fdb
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["port"].as_str().unwrap())
        .collect();
    assert!(
        ports.contains(&"nb-black") && ports.contains(&"nb-white"),
        "{fdb}"
    );
    let out = sb.netbridge(&["down", "-f", &file, "--prefix", &prefix]);
    assert!(out.status.success());
}

/// `datapath = "xdp"`: the same lookups in XDP carry real ICMP and TCP
/// (HTTP) traffic with correct checksums; switching the file back to "tc"
/// swaps the programs in place and restores checksum offload.
#[test]
fn xdp_mode_carries_real_traffic_and_switches_back_to_tc() {
    require_root!();
    let mut sb = Sandbox::new();
    let dir = std::env::temp_dir().join(format!("{}xdp", sb.prefix()));
    std::fs::create_dir_all(&dir).unwrap();
    let rm = dir.clone();
    sb.on_cleanup(move || {
        let _ = std::fs::remove_dir_all(rm);
    });
    let base = std::fs::read_to_string(example("bridge-three.toml")).unwrap();
    let xdp_file = dir.join("xdp.toml");
    let tc_file = dir.join("tc.toml");
    std::fs::write(
        &xdp_file,
        base.replace(
            "name = \"bridge-three\"",
            "name = \"b3\"\ndatapath = \"xdp\"",
        ),
    )
    .unwrap();
    std::fs::write(
        &tc_file,
        base.replace(
            "name = \"bridge-three\"",
            "name = \"b3\"\ndatapath = \"tc\"",
        ),
    )
    .unwrap();
    let (xdp_file, tc_file) = (
        xdp_file.display().to_string(),
        tc_file.display().to_string(),
    );
    let prefix = sb.prefix();
    fn nb_in(sb: &Sandbox, args: &[&str]) -> String {
        let out = sb.netbridge(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
    let out = nb_in(&sb, &["up", "-f", &xdp_file, "--prefix", &prefix]);
    assert!(
        out.contains("attached nb_port_xdp to nb-white (XDP)"),
        "{out}"
    );
    let (black, white) = (sb.name("black"), sb.name("white"));
    let csum = |sb: &Sandbox, ns: &str| sb.sh(ns, "ethtool -k eth0 | grep '^tx-checksumming'");
    assert!(
        csum(&sb, &white).contains("off"),
        "XDP mode needs software checksums"
    );

    sb.sh(&black, "ping -c 2 -i 0.2 -W 2 192.168.2.1");
    let before = port_stats(&sb, &xdp_file);
    sb.sh(&black, "ping -c 100 -i 0.01 -W 2 -q 192.168.2.1");
    // TCP through XDP_REDIRECT: a corrupt checksum would stall the fetch.
    sb.spawn(
        &white,
        &["python3", "-m", "http.server", "8000", "--bind", "0.0.0.0"],
    );
    let got = Sandbox::wait_for(Duration::from_secs(10), || {
        let o = sb.sh_output(
            &black,
            "curl -s -m 2 -o /dev/null -w '%{http_code} %{size_download}' http://192.168.2.1:8000/",
        );
        let s = String::from_utf8_lossy(&o.stdout).into_owned();
        s.starts_with("200").then_some(s)
    });
    assert!(got.is_some(), "HTTP through the XDP datapath failed");
    let after = port_stats(&sb, &xdp_file);
    let redirected = after["ports"]["nb-black"]["rx_redirected"]
        .as_u64()
        .unwrap()
        - before["ports"]["nb-black"]["rx_redirected"]
            .as_u64()
            .unwrap();
    assert!(redirected >= 100, "XDP redirected only {redirected}");

    // Back to TC in place: programs swapped, offload restored, still works.
    let out = nb_in(&sb, &["up", "-f", &tc_file, "--prefix", &prefix]);
    assert!(
        out.contains("detached the XDP program from nb-white"),
        "{out}"
    );
    assert!(
        out.contains("attached nb_port_ingress to nb-white (TC ingress)"),
        "{out}"
    );
    assert!(csum(&sb, &white).contains("on"), "offload not restored");
    sb.sh(&black, "ping -c 3 -i 0.2 -W 2 192.168.2.1");
    let out = nb_in(&sb, &["up", "-f", &tc_file, "--prefix", &prefix]);
    assert!(out.contains("no changes"), "{out}");
    nb_in(&sb, &["down", "-f", &tc_file, "--prefix", &prefix]);
}

/// Anti-spoofing on real traffic: a namespace that claims an address or a
/// MAC that is not its own gets nothing through, and the drops are counted
/// by reason; its own traffic is unaffected.
#[test]
fn forged_source_ip_or_mac_is_dropped_and_counted() {
    require_root!();
    let sb = Sandbox::new();
    let file = example("bridge-three.toml");
    let prefix = sb.prefix();
    sb.nb_ok(&["up", "-f", &file, "--prefix", &prefix]);
    let (black, white) = (sb.name("black"), sb.name("white"));
    sb.sh(&black, "ping -c 2 -i 0.2 -W 2 192.168.2.1");
    let drops = |sb: &Sandbox| {
        let s = port_stats(sb, &file);
        let d = |r: &str| s["drops"][r].as_u64().unwrap();
        (d("spoofed_mac"), d("spoofed_ipv4"), d("spoofed_arp"))
    };
    let before = drops(&sb);

    // Forged IPv4 source: an address black was never given (white's).
    sb.sh(&black, "ip addr add 192.168.2.1/32 dev eth0");
    let o = sb.sh_output(&black, "ping -c 3 -i 0.2 -W 1 -I 192.168.2.1 192.168.3.1");
    assert!(!o.status.success(), "spoofed ping got an answer");
    sb.sh(&black, "ip addr del 192.168.2.1/32 dev eth0");
    let mid = drops(&sb);
    assert!(
        mid.1 + mid.2 > before.1 + before.2,
        "no spoofed_ipv4/arp drops: {before:?} -> {mid:?}"
    );

    // Forged MAC.
    // Not /sys: nsenter keeps the caller's /sys, so ask netlink.
    let mac = sb.sh(&black, "ip -br link show eth0 | awk '{print $3}'");
    let mac = mac.trim().to_string();
    sb.sh(&black, "ip link set eth0 address 02:66:66:66:66:66");
    let o = sb.sh_output(
        &black,
        "ip neigh flush all; ping -c 3 -i 0.2 -W 1 192.168.2.1",
    );
    assert!(!o.status.success(), "ping with a forged MAC got an answer");
    let after = drops(&sb);
    assert!(
        after.0 > mid.0,
        "no spoofed_mac drops: {mid:?} -> {after:?}"
    );

    // Back to its own identity: traffic flows again, and white was never affected.
    sb.sh(
        &black,
        &format!("ip link set eth0 address {mac}; ip neigh flush all"),
    );
    sb.sh(&black, "ping -c 2 -i 0.2 -W 2 192.168.2.1");
    sb.sh(&white, "ping -c 2 -i 0.2 -W 2 192.168.3.1");
    let out = sb.netbridge(&["down", "-f", &file, "--prefix", &prefix]);
    assert!(out.status.success());
}

#[test]
fn isolated_pairs_exchange_nothing_others_unaffected() {
    require_root!();
    let mut sb = Sandbox::new();
    // bridge-three (on-link routes: ARP and the BPF fast path) with black and
    // white isolated. Top-level keys go before the first table.
    let base = std::fs::read_to_string(example("bridge-three.toml")).unwrap();
    let file = format!("/tmp/{}isolate.toml", sb.prefix());
    std::fs::write(&file, format!("isolate = [[\"black\", \"white\"]]\n{base}")).unwrap();
    let f = file.clone();
    sb.on_cleanup(move || {
        let _ = std::fs::remove_file(f);
    });
    let prefix = sb.prefix();
    let out = sb.nb_ok(&["up", "-f", &file, "--prefix", &prefix]);
    assert!(out.contains("isolation policy: 1 pairs"), "{out}");
    let (black, white, green) = (sb.name("black"), sb.name("white"), sb.name("green"));
    let denied = |sb: &Sandbox| {
        port_stats(sb, &file)["drops"]["policy_denied"]
            .as_u64()
            .unwrap()
    };

    // Allowed pairs are unaffected.
    sb.sh(&black, "ping -c 2 -i 0.2 -W 2 192.168.3.1");
    sb.sh(&white, "ping -c 2 -i 0.2 -W 2 192.168.3.1");
    sb.sh(&green, "ping -c 2 -i 0.2 -W 2 192.168.1.1");

    // Nothing from black arrives in white while both try, on-link
    // (fast path) and routed through the gateway (kernel path).
    let before = denied(&sb);
    let pid = sb.spawn(
        &white,
        &[
            "sh",
            "-c",
            &format!(
                "timeout 8 tcpdump -i eth0 -Q in --immediate-mode -n -l 'ip host 192.168.1.1' > /tmp/{prefix}white.txt 2>/dev/null"
            ),
        ],
    );
    let dump = format!("/tmp/{prefix}white.txt");
    let d = dump.clone();
    sb.on_cleanup(move || {
        let _ = std::fs::remove_file(d);
    });
    std::thread::sleep(Duration::from_millis(1000));
    for (from, to) in [(&black, "192.168.2.1"), (&white, "192.168.1.1")] {
        let o = sb.sh_output(from, &format!("ping -c 3 -i 0.2 -W 1 {to}"));
        assert!(
            !o.status.success(),
            "isolated ping {from} -> {to} got through"
        );
    }
    sb.sh(
        &black,
        "ip route add 192.168.2.1/32 via 192.168.0.1 dev eth0 onlink",
    );
    let o = sb.sh_output(&black, "ping -c 3 -i 0.2 -W 1 192.168.2.1");
    assert!(
        !o.status.success(),
        "isolated ping via the gateway got through"
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    std::thread::sleep(Duration::from_millis(300));
    let seen = std::fs::read_to_string(&dump).unwrap_or_default();
    assert_eq!(
        seen.lines().count(),
        0,
        "white saw black's packets:\n{seen}"
    );
    assert!(
        denied(&sb) >= before + 6,
        "policy_denied {} -> {}",
        before,
        denied(&sb)
    );

    // Without the policy (the plain file), the same pair talks again.
    sb.sh(&black, "ip route del 192.168.2.1/32");
    let plain = example("bridge-three.toml");
    let out = sb.nb_ok(&["up", "-f", &plain, "--prefix", &prefix]);
    assert!(out.contains("isolation policy: 0 pairs"), "{out}");
    sb.sh(&black, "ping -c 2 -i 0.2 -W 2 192.168.2.1");
    sb.nb_ok(&["down", "-f", &plain, "--prefix", &prefix]);
}
