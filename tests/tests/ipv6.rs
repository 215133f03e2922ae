//! IPv6 and dual-stack labs (issue 17, bridged half): addresses and routes
//! set by `up` (no DAD race), IPv6 traffic on the fast path, anti-spoofing
//! of IPv6 sources and Neighbor Advertisements, RA/DHCPv6 guard, the
//! isolation policy on IPv6, ICMPv6 errors, and hostile IPv6 frames, each
//! drop with a positive control sent the same way.
use netbridge_tests::{Sandbox, example, require_root};

/// The dual-stack example, optionally edited, as a file of the sandbox.
fn lab(sb: &mut Sandbox, edit: impl Fn(String) -> String) -> String {
    let base = std::fs::read_to_string(example("dual-stack.toml")).unwrap();
    let file = sb.tmp_file("dual-stack.toml");
    std::fs::write(&file, edit(base)).unwrap();
    file.display().to_string()
}

fn up(sb: &Sandbox, file: &str) -> String {
    let prefix = sb.prefix();
    sb.nb_ok(&["up", "-f", file, "--prefix", &prefix])
}

fn down(sb: &Sandbox, file: &str) {
    let prefix = sb.prefix();
    let out = sb.netbridge(&["down", "-f", file, "--prefix", &prefix]);
    assert!(out.status.success(), "{out:?}");
}

fn stats(sb: &Sandbox, file: &str) -> serde_json::Value {
    let prefix = sb.prefix();
    let out = sb.netbridge(&["stats", "--json", "-f", file, "--prefix", &prefix]);
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn drops(sb: &Sandbox, file: &str, reason: &str) -> u64 {
    stats(sb, file)["drops"][reason]
        .as_u64()
        .unwrap_or_else(|| panic!("no drop reason {reason}"))
}

/// Runs scapy (Debian's python3) in `ns` with `code` after
/// `from scapy.all import *` and the frame helpers below.
fn scapy(sb: &Sandbox, ns: &str, code: &str) {
    let prelude = "from scapy.all import *\nconf.verb = 0\n\
                   me = get_if_hwaddr('eth0')\n\
                   def send(p, n=3):\n    sendp(Ether(src=me, dst='33:33:00:00:00:01')/p if not isinstance(p, Ether) else p, iface='eth0', count=n)\n";
    let script = format!("{prelude}{code}\n");
    let out = sb
        .cmd(ns, &["/usr/bin/python3", "-c", &script])
        .output()
        .expect("spawn scapy");
    assert!(
        out.status.success(),
        "scapy in {ns} failed:\n{script}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `up` gives every namespace its IPv6 address, usable at once (no
/// tentative address), and its IPv6 default route; ping -6 and an HTTP
/// download over IPv6 work between namespaces on the BPF fast path and
/// to the gateway; `stats` counts the IPv6 frames.
#[test]
fn dual_stack_lab_carries_ipv6_on_the_fast_path() {
    require_root!();
    let mut sb = Sandbox::new();
    let file = lab(&mut sb, |t| t);
    up(&sb, &file);
    let (black, white) = (sb.name("black"), sb.name("white"));
    // The configured address is usable at once (the kernel's link-local
    // one may still be in DAD).
    let addrs = sb.sh(&white, "ip -6 addr show dev eth0");
    let line = addrs.lines().find(|l| l.contains("fd00:77::b2/64"));
    assert!(line.is_some_and(|l| !l.contains("tentative")), "{addrs}");
    let routes = sb.sh(&white, "ip -6 route show default");
    assert!(routes.contains("via fd00:77::1"), "{routes}");

    // Right after `up`: no wait for DAD.
    sb.sh(&black, "ping -6 -c 3 -i 0.2 -W 2 fd00:77::b2");
    sb.sh(&black, "ping -6 -c 2 -i 0.2 -W 2 fd00:77::1");
    sb.sh(&black, "ping -c 2 -i 0.2 -W 2 192.168.2.1");

    let root = sb.tmp_file("www");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("blob"), vec![b'6'; 1 << 20]).unwrap();
    let root = root.display().to_string();
    sb.spawn(
        &white,
        &[
            "/usr/bin/python3",
            "-m",
            "http.server",
            "8066",
            "--bind",
            "::",
            "--directory",
            &root,
        ],
    );
    let got = Sandbox::wait_for(std::time::Duration::from_secs(10), || {
        let o = sb.sh_output(
            &black,
            "curl -6 -sS -m 5 -o /dev/null -w '%{size_download}' 'http://[fd00:77::b2]:8066/blob'",
        );
        let s = String::from_utf8_lossy(&o.stdout).into_owned();
        (o.status.success() && s == "1048576").then_some(s)
    });
    assert_eq!(got.as_deref(), Some("1048576"));

    let s = stats(&sb, &file);
    let port = &s["ports"]["nb-black"];
    assert!(port["rx_ipv6"].as_u64().unwrap() >= 5, "{port}");
    assert!(port["rx_redirected"].as_u64().unwrap() >= 5, "{port}");
    down(&sb, &file);
}

/// A namespace that takes another host's IPv6 address as a second source
/// gets nothing through (spoofed_ipv6); its own address keeps working.
#[test]
fn forged_ipv6_source_is_dropped() {
    require_root!();
    let mut sb = Sandbox::new();
    let file = lab(&mut sb, |t| t);
    up(&sb, &file);
    let black = sb.name("black");
    // Positive control, from black's own address.
    sb.sh(&black, "ping -6 -c 2 -i 0.2 -W 2 -I fd00:77::b1 fd00:77::1");
    let before = drops(&sb, &file, "spoofed_ipv6");
    sb.sh(&black, "ip addr add fd00:77::b2/128 dev eth0 nodad");
    let o = sb.sh_output(&black, "ping -6 -c 3 -i 0.2 -W 1 -I fd00:77::b2 fd00:77::1");
    assert!(!o.status.success(), "spoofed ping got an answer");
    let after = drops(&sb, &file, "spoofed_ipv6");
    assert!(after >= before + 3, "spoofed_ipv6 {before} -> {after}");
    sb.sh(&black, "ip addr del fd00:77::b2/128 dev eth0");
    sb.sh(&black, "ping -6 -c 2 -i 0.2 -W 2 fd00:77::1");
    down(&sb, &file);
}

/// RA guard, DHCPv6 guard and ND spoofing, with scapy: black (a plain
/// host) sends a Router Advertisement, a DHCPv6 server reply and Neighbor
/// Advertisements for white's address; each is dropped under its reason
/// and never seen in white. green, marked `ipv6_router`, sends the same
/// RA and DHCPv6 reply, and black an NA for its own address: those arrive.
#[test]
fn ra_guard_dhcpv6_guard_and_nd_spoofing() {
    require_root!();
    let mut sb = Sandbox::new();
    let file = lab(&mut sb, |t| {
        t.replace(
            "name = \"green\"\n",
            "name = \"green\"\nipv6_router = true\n",
        )
    });
    up(&sb, &file);
    let (black, white, green) = (sb.name("black"), sb.name("white"), sb.name("green"));
    let dump = sb.tmp_file("white.txt");
    let cap = sb.tcpdump(
        &white,
        &["-i", "eth0", "-l", "-v", "icmp6 or udp port 546"],
        Some(&dump),
    );
    let before: Vec<u64> = ["ra_guard", "dhcpv6_guard", "spoofed_nd"]
        .iter()
        .map(|r| drops(&sb, &file, r))
        .collect();
    let ra = |prefix: &str| {
        format!(
            "IPv6(src=ll, dst='ff02::1')/ICMPv6ND_RA(routerlifetime=0)/ICMPv6NDOptPrefixInfo(prefix='{prefix}', prefixlen=64)"
        )
    };
    let dhcp = "IPv6(src=ll, dst='ff02::1')/UDP(sport=547, dport=546)/DHCP6_Reply(trid=7)";
    let na = |target: &str| {
        format!(
            "IPv6(src='fd00:77::b1', dst='ff02::1')/ICMPv6ND_NA(tgt='{target}', R=0, S=0, O=1)/ICMPv6NDOptDstLLAddr(lladdr=me)"
        )
    };
    let ll =
        "ll = [a[0] for a in in6_getifaddr() if a[2] == 'eth0' and a[0].startswith('fe80')][0]";
    scapy(
        &sb,
        &black,
        &format!(
            "{ll}\nsend({})\nsend({dhcp})\nsend({})",
            ra("2001:db8:bad::"),
            na("fd00:77::b2")
        ),
    );
    // NA claiming white's address with black's own MAC, and black's own
    // address with another MAC: both spoofed.
    scapy(
        &sb,
        &black,
        "send(IPv6(src='fd00:77::b1', dst='ff02::1')/ICMPv6ND_NA(tgt='fd00:77::b1', O=1)/ICMPv6NDOptDstLLAddr(lladdr='02:66:66:66:66:66'))",
    );
    // Positive controls: the same RA and reply from the router; an honest NA.
    scapy(
        &sb,
        &green,
        &format!("{ll}\nsend({})\nsend({dhcp})", ra("2001:db8:600d::")),
    );
    scapy(&sb, &black, &format!("send({})", na("fd00:77::b1")));
    std::thread::sleep(std::time::Duration::from_millis(500));
    sb.stop_tcpdump(cap);
    let text = std::fs::read_to_string(&dump).unwrap();
    let after: Vec<u64> = ["ra_guard", "dhcpv6_guard", "spoofed_nd"]
        .iter()
        .map(|r| drops(&sb, &file, r))
        .collect();
    assert!(
        after[0] >= before[0] + 3,
        "ra_guard {before:?} -> {after:?}"
    );
    assert!(
        after[1] >= before[1] + 3,
        "dhcpv6_guard {before:?} -> {after:?}"
    );
    assert!(
        after[2] >= before[2] + 6,
        "spoofed_nd {before:?} -> {after:?}"
    );
    let count = |needle: &str| text.lines().filter(|l| l.contains(needle)).count();
    assert!(
        count("router advertisement") >= 3,
        "router RAs missing:\n{text}"
    );
    assert!(
        count("dhcp6 reply") >= 3,
        "router DHCPv6 replies missing:\n{text}"
    );
    assert_eq!(
        count("tgt is fd00:77::b2"),
        0,
        "spoofed NA arrived:\n{text}"
    );
    assert!(
        count("tgt is fd00:77::b1") >= 3,
        "honest NAs missing:\n{text}"
    );
    // white took the router's prefix (SLAAC), not black's; it still
    // reaches black.
    let addrs = Sandbox::wait_for(std::time::Duration::from_secs(5), || {
        let a = sb.sh(&white, "ip -6 addr show dev eth0");
        a.contains("2001:db8:600d:").then_some(a)
    })
    .unwrap_or_else(|| sb.sh(&white, "ip -6 addr show dev eth0"));
    assert!(addrs.contains("2001:db8:600d:"), "{addrs}");
    assert!(!addrs.contains("2001:db8:bad:"), "{addrs}");
    sb.sh(&white, "ping -6 -c 2 -i 0.2 -W 2 fd00:77::b1");
    down(&sb, &file);
}

/// Isolated namespaces exchange no IPv6 either (ND included); the others
/// are unaffected. ICMPv6 errors pass: a UDP datagram to a closed port
/// gets its Port Unreachable back.
#[test]
fn isolation_covers_ipv6_and_icmpv6_errors_pass() {
    require_root!();
    let mut sb = Sandbox::new();
    let file = lab(&mut sb, |t| {
        format!("isolate = [[\"black\", \"white\"]]\n{t}")
    });
    up(&sb, &file);
    let (black, white) = (sb.name("black"), sb.name("white"));
    sb.sh(&black, "ping -6 -c 2 -i 0.2 -W 2 fd00:77::b3");
    sb.sh(&white, "ping -6 -c 2 -i 0.2 -W 2 fd00:77::b3");
    // Neighbor Solicitations for white are dropped: no neighbour entry.
    let before = drops(&sb, &file, "policy_denied");
    let o = sb.sh_output(&black, "ping -6 -c 3 -i 0.2 -W 1 fd00:77::b2");
    assert!(!o.status.success(), "isolated ping -6 got an answer");
    let mid = drops(&sb, &file, "policy_denied");
    assert!(mid > before, "policy_denied {before} -> {mid}");
    let neigh = sb.sh(&black, "ip -6 neigh show fd00:77::b2");
    assert!(!neigh.contains("REACHABLE"), "{neigh}");
    // With white's MAC set by hand, the echoes themselves are dropped.
    let wmac = sb.mac_of(&white, "eth0");
    sb.sh(
        &black,
        &format!("ip -6 neigh replace fd00:77::b2 lladdr {wmac} dev eth0 nud permanent"),
    );
    let o = sb.sh_output(&black, "ping -6 -c 3 -i 0.2 -W 1 fd00:77::b2");
    assert!(!o.status.success(), "isolated ping -6 got an answer");
    let after = drops(&sb, &file, "policy_denied");
    assert!(after >= mid + 3, "policy_denied {mid} -> {after}");

    let refused = "import socket\n\
                   s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n\
                   s.settimeout(3)\n\
                   s.connect(('fd00:77::b3', 9))\n\
                   s.send(b'x')\n\
                   try:\n    s.recv(10)\n    print('answer')\n\
                   except ConnectionRefusedError:\n    print('refused')\n\
                   except socket.timeout:\n    print('timeout')\n";
    let o = sb
        .cmd(&black, &["/usr/bin/python3", "-c", refused])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "refused",
        "{o:?}"
    );
    down(&sb, &file);
}

/// Hostile IPv6 frames from a lab namespace, each dropped under its
/// reason; the valid frame next to each (same sender, same path) arrives
/// in white, and a fragmented ping -6 still works.
#[test]
fn hostile_ipv6_frames_are_dropped_by_reason() {
    require_root!();
    let mut sb = Sandbox::new();
    let file = lab(&mut sb, |t| t);
    up(&sb, &file);
    let (black, white) = (sb.name("black"), sb.name("white"));
    // Resolve white's MAC (and let the FDB learn it): frames go unicast.
    sb.sh(&black, "ping -6 -c 2 -i 0.2 -W 2 fd00:77::b2");
    let wmac = sb.mac_of(&white, "eth0");
    let reasons = [
        "truncated_l3",
        "bad_ipv6_header",
        "ipv6_ext_chain",
        "ipv6_fragment",
    ];
    let before: Vec<u64> = reasons.iter().map(|r| drops(&sb, &file, r)).collect();
    let dump = sb.tmp_file("white.txt");
    let cap = sb.tcpdump(
        &white,
        &["-i", "eth0", "-l", "ip6 and src fd00:77::b1"],
        Some(&dump),
    );
    let code = format!(
        "e = Ether(src=me, dst='{wmac}')\n\
         ip = IPv6(src='fd00:77::b1', dst='fd00:77::b2')\n\
         echo = ICMPv6EchoRequest(id=77, data=b'x'*32)\n\
         # truncated: 20 bytes of an IPv6 header\n\
         send(Ether(src=me, dst='{wmac}', type=0x86dd)/raw(ip/echo)[:20])\n\
         # payload length past the frame\n\
         send(e/IPv6(raw(ip/echo)[:4] + b'\\xff\\x00' + raw(ip/echo)[6:]))\n\
         # five destination-options headers\n\
         send(e/ip/IPv6ExtHdrDestOpt()/IPv6ExtHdrDestOpt()/IPv6ExtHdrDestOpt()/IPv6ExtHdrDestOpt()/IPv6ExtHdrDestOpt()/echo)\n\
         # a hop-by-hop header after a destination-options header\n\
         send(e/ip/IPv6ExtHdrDestOpt()/IPv6ExtHdrHopByHop()/echo)\n\
         # first fragment without the upper-layer header (RFC 7112)\n\
         send(e/ip/IPv6ExtHdrFragment(id=9, m=1, nh=60)/IPv6ExtHdrDestOpt(nh=58, options=[PadN(optdata=b'\\x00'*60)]))\n\
         # an NA in a fragment (RFC 6980)\n\
         send(e/ip/IPv6ExtHdrFragment(id=10, m=0, nh=58)/ICMPv6ND_NA(tgt='fd00:77::b1'))\n\
         # controls: the same echo with two destination-options headers, and alone\n\
         send(e/ip/IPv6ExtHdrDestOpt()/IPv6ExtHdrDestOpt()/ICMPv6EchoRequest(id=78))\n\
         send(e/ip/ICMPv6EchoRequest(id=79))\n"
    );
    scapy(&sb, &black, &code);
    // A ping -6 larger than the MTU travels in fragments.
    sb.sh(&black, "ping -6 -c 2 -i 0.2 -W 2 -s 3000 fd00:77::b2");
    std::thread::sleep(std::time::Duration::from_millis(300));
    sb.stop_tcpdump(cap);
    let text = std::fs::read_to_string(&dump).unwrap();
    let after: Vec<u64> = reasons.iter().map(|r| drops(&sb, &file, r)).collect();
    for (i, r) in reasons.iter().enumerate() {
        let want = match *r {
            "ipv6_fragment" | "ipv6_ext_chain" => 6,
            _ => 3,
        };
        assert!(
            after[i] >= before[i] + want,
            "{r}: {before:?} -> {after:?}\n{text}"
        );
    }
    let count = |needle: &str| text.lines().filter(|l| l.contains(needle)).count();
    assert!(
        count("id 78") >= 3,
        "echo with extension headers missing:\n{text}"
    );
    assert!(count("id 79") >= 3, "plain echo missing:\n{text}");
    assert_eq!(count("id 77"), 0, "a hostile echo arrived:\n{text}");
    down(&sb, &file);
}

/// `datapath = "xdp"` applies the same IPv6 checks: a forged IPv6 source
/// and an RA from a plain namespace are dropped under their reasons, while
/// the namespace's own IPv6 traffic flows.
#[test]
fn xdp_mode_applies_the_ipv6_guards() {
    require_root!();
    let mut sb = Sandbox::new();
    let file = lab(&mut sb, |t| {
        t.replace(
            "name = \"dual-stack\"",
            "name = \"dual-stack\"\ndatapath = \"xdp\"",
        )
    });
    let out = up(&sb, &file);
    assert!(out.contains("XDP"), "{out}");
    let black = sb.name("black");
    sb.sh(&black, "ping -6 -c 2 -i 0.2 -W 2 fd00:77::b2");
    let before = (
        drops(&sb, &file, "spoofed_ipv6"),
        drops(&sb, &file, "ra_guard"),
    );
    sb.sh(&black, "ip addr add fd00:77::b3/128 dev eth0 nodad");
    let o = sb.sh_output(
        &black,
        "ping -6 -c 3 -i 0.2 -W 1 -I fd00:77::b3 fd00:77::b2",
    );
    assert!(!o.status.success(), "spoofed ping got an answer");
    sb.sh(&black, "ip addr del fd00:77::b3/128 dev eth0");
    scapy(
        &sb,
        &black,
        "send(IPv6(src='fd00:77::b1', dst='ff02::1')/ICMPv6ND_RA(routerlifetime=0))",
    );
    let after = (
        drops(&sb, &file, "spoofed_ipv6"),
        drops(&sb, &file, "ra_guard"),
    );
    assert!(
        after.0 >= before.0 + 3,
        "spoofed_ipv6 {before:?} -> {after:?}"
    );
    assert!(after.1 >= before.1 + 3, "ra_guard {before:?} -> {after:?}");
    sb.sh(&black, "ping -6 -c 2 -i 0.2 -W 2 fd00:77::b2");
    down(&sb, &file);
}

/// The dual-stack veth pair example: IPv6 works as soon as `up` returns,
/// and the namespace's IPv6 sysctl is set.
#[test]
fn dual_stack_veth_pair_example() {
    require_root!();
    let sb = Sandbox::new();
    let file = example("two-ns-v6.toml");
    up(&sb, &file);
    let (red, green) = (sb.name("red"), sb.name("green"));
    let fwd = sb.sh(&red, "sysctl -n net.ipv6.conf.all.forwarding");
    assert_eq!(fwd.trim(), "1");
    let addrs = sb.sh(&green, "ip -6 addr show dev veth-green");
    let line = addrs.lines().find(|l| l.contains("fd00:12::2/64"));
    assert!(line.is_some_and(|l| !l.contains("tentative")), "{addrs}");
    sb.sh(&red, "ping -6 -c 2 -i 0.2 -W 2 fd00:12::2");
    sb.sh(&red, "ping -c 2 -i 0.2 -W 2 192.168.1.2");
    down(&sb, &file);
}

/// `ipv6_dad = "wait"`: addresses go on with DAD (no `nodad` flag) and
/// `up` returns only once none of them, link-local ones included, is
/// tentative; an address another node on the bridge already holds fails
/// `up` naming the namespace, interface and address, and the run is
/// rolled back (the lab that was up keeps working).
#[test]
fn ipv6_dad_wait_waits_and_names_a_duplicate() {
    require_root!();
    let mut sb = Sandbox::new();
    let with_wait = |t: String| {
        t.replacen(
            "name = \"dual-stack\"",
            "name = \"dual-stack\"\nipv6_dad = \"wait\"",
            1,
        )
    };
    let file = lab(&mut sb, with_wait);
    up(&sb, &file);
    let (black, white) = (sb.name("black"), sb.name("white"));
    for ns in [&black, &white] {
        let addrs = sb.sh(ns, "ip -6 addr show dev eth0");
        assert!(addrs.contains("scope link"), "{addrs}");
        assert!(
            !addrs.contains("tentative"),
            "DAD not finished after up:\n{addrs}"
        );
        // With "nodad" the kernel would skip DAD: `ip` shows the flag.
        assert!(!addrs.contains("nodad"), "{addrs}");
    }
    let bridge = sb.sh(&sb.name("host"), "ip -6 addr show dev brds");
    assert!(
        bridge.contains("fd00:77::1/64") && !bridge.contains("tentative"),
        "{bridge}"
    );

    // Another node on the bridge holds fd00:77::b9 already.
    let intruder = sb.add_ns("intr");
    sb.veth(&sb.name("host"), "nb-intr", None, &intruder, "eth0", None);
    sb.sh(&sb.name("host"), "ip link set nb-intr master brds");
    sb.sh(&intruder, "ip addr add fd00:77::b9/64 dev eth0");
    let settled = Sandbox::wait_for(std::time::Duration::from_secs(10), || {
        let a = sb.sh(&intruder, "ip -6 addr show dev eth0");
        (!a.contains("tentative") && a.contains("fd00:77::b9")).then_some(())
    });
    assert!(settled.is_some(), "intruder's address never left DAD");

    let blue = "[[namespace]]\nname = \"blue\"\nhost_ifname = \"nb-blue\"\n\
                addresses = [\"192.168.4.1/24\", \"fd00:77::b9/64\"]\n";
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, format!("{text}\n{blue}")).unwrap();
    let prefix = sb.prefix();
    let out = sb.netbridge(&["up", "-f", &file, "--prefix", &prefix]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "up with a duplicate address succeeded"
    );
    let blue_ns = sb.name("blue");
    for want in [
        "fd00:77::b9",
        "eth0",
        blue_ns.as_str(),
        "duplicate address detection",
    ] {
        assert!(err.contains(want), "error does not name {want:?}:\n{err}");
    }
    assert!(err.contains("rolled back"), "{err}");
    assert!(
        !sb.live_namespaces().contains(&blue_ns),
        "{blue_ns} left behind"
    );
    sb.sh(&black, "ping -6 -c 2 -i 0.2 -W 2 fd00:77::b2");

    // Without the duplicate, the same file comes up.
    sb.remove_ns(&intruder);
    up(&sb, &file);
    let addrs = sb.sh(&blue_ns, "ip -6 addr show dev eth0");
    assert!(
        addrs.contains("fd00:77::b9/64") && !addrs.contains("tentative"),
        "{addrs}"
    );
    down(&sb, &file);
}

/// An IPv6 route via a link-local gateway (the bridge's own fe80::
/// address, with `dev`) goes on with `up` and carries traffic; without
/// `dev` the file is refused naming the field (nothing changes).
#[test]
fn ipv6_route_via_link_local_gateway() {
    require_root!();
    let mut sb = Sandbox::new();
    let no_v6_default = |t: String| t.replace(", { to = \"::/0\", via = \"fd00:77::1\" }", "");
    let file = lab(&mut sb, no_v6_default);
    up(&sb, &file);
    let host = sb.name("host");
    let ll = sb.sh(&host, "ip -6 -o addr show dev brds scope link");
    let gw = ll
        .split_whitespace()
        .skip_while(|w| *w != "inet6")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("no link-local address on brds: {ll}"))
        .to_string();
    sb.sh(&host, "ip link add nbx0 type veth peer name nbx1 && ip link set nbx1 up && ip link set nbx0 up && ip addr add 2001:db8:77::1/64 dev nbx0 nodad");
    let black = sb.name("black");
    let unreachable = sb.sh_output(&black, "ping -6 -c 1 -W 1 2001:db8:77::1");
    assert!(!unreachable.status.success(), "reachable before the route");

    let text = std::fs::read_to_string(&file).unwrap();
    let black_routes = "routes = [{ to = \"default\", dev = \"eth0\" }]";
    let without_dev = format!(
        "routes = [{{ to = \"default\", dev = \"eth0\" }}, {{ to = \"2001:db8:77::/64\", via = \"{gw}\" }}]"
    );
    std::fs::write(&file, text.replacen(black_routes, &without_dev, 1)).unwrap();
    let prefix = sb.prefix();
    let out = sb.netbridge(&["up", "-f", &file, "--prefix", &prefix]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("link-local gateway") && err.contains(&gw),
        "{err}"
    );

    let with_dev = without_dev.replace(" }]", ", dev = \"eth0\" }]");
    std::fs::write(&file, text.replacen(black_routes, &with_dev, 1)).unwrap();
    let report = up(&sb, &file);
    assert!(report.contains("added route"), "{report}");
    let routes = sb.sh(&black, "ip -6 route show 2001:db8:77::/64");
    assert!(routes.contains(&format!("via {gw} dev eth0")), "{routes}");
    sb.sh(&black, "ping -6 -c 2 -i 0.2 -W 2 2001:db8:77::1");
    down(&sb, &file);
}

/// IPv6 frames are checked by the port's IPv6 program (a tail call of the
/// port program): with its slot emptied, they are dropped and counted as
/// `port_program_missing`, never bridged unchecked, while IPv4 still
/// flows; `up` again fills the slot and IPv6 flows again. A tail-call
/// array pinned by an older build (one slot) makes `up` fail with what to
/// do, naming the map.
#[test]
fn ipv6_without_its_program_fails_closed_and_up_repairs() {
    require_root!();
    let mut sb = Sandbox::new();
    let file = lab(&mut sb, |t| t);
    up(&sb, &file);
    let black = sb.name("black");
    sb.sh(&black, "ping -6 -c 2 -i 0.2 -W 2 -q fd00:77::b2");
    let pins = format!("/run/netbridge/bpf/{}dual-stack", sb.prefix());
    let map = format!("{pins}/{}", netbridge_common::MAP_PORT_PROGS);
    let slot = netbridge_common::PORT_PROG_IPV6;
    sb.sh(
        &sb.host,
        &format!("bpftool map delete pinned {map} key {slot} 0 0 0"),
    );

    let before = drops(&sb, &file, "port_program_missing");
    let out = sb.sh_output(&black, "ping -6 -c 3 -i 0.2 -W 1 -q fd00:77::b2");
    assert!(
        !out.status.success(),
        "IPv6 bridged without its checks: {out:?}"
    );
    assert!(drops(&sb, &file, "port_program_missing") >= before + 3);
    sb.sh(&black, "ping -c 2 -i 0.2 -W 2 -q 192.168.2.1");

    up(&sb, &file);
    sb.sh(&black, "ping -6 -c 2 -i 0.2 -W 2 -q fd00:77::b2");

    // An older build's array: one slot.
    let arr = netbridge_common::MAP_PORT_PROGS;
    sb.sh(
        &sb.host,
        &format!("rm {map} && bpftool map create {map} type prog_array key 4 value 4 entries 1 name {arr}"),
    );
    let prefix = sb.prefix();
    let out = sb.netbridge(&["up", "-f", &file, "--prefix", &prefix]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    assert!(err.contains(arr) && err.contains("netbridge down"), "{err}");
    down(&sb, &file);
}
