//! Control plane: the example topologies come up in a sandbox, real traffic
//! flows, `up` is idempotent and repairs, bad input changes nothing, a
//! failure or crash mid-`up` is rolled back or repaired, `down` leaves no
//! residue.
use std::{path::PathBuf, process::Output};

use netbridge_tests::{Sandbox, example, require_root};

fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `netbridge ARGS -f FILE --prefix <sandbox prefix>`, asserting success.
fn nb_ok(sb: &Sandbox, args: &[&str], file: &str) -> String {
    let prefix = sb.prefix();
    let mut full: Vec<&str> = args.to_vec();
    full.extend(["-f", file, "--prefix", &prefix]);
    sb.nb_ok(&full)
}

/// `netbridge up -f FILE --prefix P` with fault injection (NETBRIDGE_FAULT).
fn up_with_fault(sb: &Sandbox, file: &str, fault: &str) -> Output {
    let prefix = sb.prefix();
    let bin = netbridge_tests::netbridge_bin();
    sb.cmd(
        &sb.host,
        &[bin.to_str().unwrap(), "up", "-f", file, "--prefix", &prefix],
    )
    .env("NETBRIDGE_FAULT", fault)
    .output()
    .unwrap()
}

fn ping(sb: &Sandbox, from: &str, to: &str) {
    let out = sb.sh_output(from, &format!("ping -c 2 -i 0.2 -W 2 {to}"));
    assert!(
        out.status.success(),
        "ping {from} -> {to} failed:\n{}",
        text(&out)
    );
}

/// `down` must leave exactly what the sandbox had before `up`.
fn assert_down_clean(sb: &Sandbox, file: &str, before: &netbridge_tests::Snapshot) {
    let out = nb_ok(sb, &["down"], file);
    assert!(out.contains("down"), "{out}");
    let after = sb.snapshot();
    assert_eq!(&after, before, "residue after down");
    // No qdiscs or programs left on the sandbox host's interfaces.
    let tc = sb.sh(
        &sb.host,
        "tc qdisc show | grep -v -e noqueue -e 'qdisc mq' || true",
    );
    assert!(!tc.contains("clsact"), "qdisc residue: {tc}");
    // A second down is a no-op, not an error.
    nb_ok(sb, &["down"], file);
}

#[test]
fn two_namespaces_direct_veth() {
    require_root!();
    let sb = Sandbox::new();
    let file = example("two-namespaces.toml");
    let before = sb.snapshot();
    let out = nb_ok(&sb, &["up"], &file);
    assert!(out.contains("created namespace"), "{out}");
    let (red, green) = (sb.name("red"), sb.name("green"));
    // Namespaces are visible to `ip netns`.
    let list = sb.sh(&sb.host, "ip netns list");
    assert!(list.contains(&red) && list.contains(&green), "{list}");
    ping(&sb, &red, "192.168.1.2");
    ping(&sb, &green, "192.168.1.1");
    // The example's per-namespace sysctl is set in red only.
    let fwd = |ns: &str| {
        sb.sh(ns, "cat /proc/sys/net/ipv4/ip_forward")
            .trim()
            .to_string()
    };
    assert_eq!((fwd(&red), fwd(&green)), ("1".to_string(), "0".to_string()));
    assert_down_clean(&sb, &file, &before);
    assert!(!netbridge::netns::exists(&red) && !netbridge::netns::exists(&green));
}

#[test]
fn bridge_three_all_pairs_http_status_and_stats() {
    require_root!();
    let mut sb = Sandbox::new();
    let file = example("bridge-three.toml");
    let before = sb.snapshot();
    nb_ok(&sb, &["up"], &file);
    let ns: Vec<(String, &str)> = [
        ("black", "192.168.1.1"),
        ("white", "192.168.2.1"),
        ("green", "192.168.3.1"),
    ]
    .into_iter()
    .map(|(n, ip)| (sb.name(n), ip))
    .collect();
    for (a, _) in &ns {
        ping(&sb, a, "192.168.0.1");
        for (b, ip) in &ns {
            if a != b {
                ping(&sb, a, ip);
            }
        }
    }
    // A real HTTP server in white, fetched from black and green. 0.0.0.0: a
    // specific --bind makes http.server do a reverse DNS lookup at start.
    sb.spawn(
        &ns[1].0,
        &["python3", "-m", "http.server", "8000", "--bind", "0.0.0.0"],
    );
    for (client, _) in [&ns[0], &ns[2]] {
        assert!(
            sb.http_200_within_10s(client, "http://192.168.2.1:8000/"),
            "curl from {client}"
        );
    }

    // status: the three ports, enslaved to bri0, each with the program.
    let st = nb_ok(&sb, &["status", "--json"], &file);
    let v: serde_json::Value = serde_json::from_str(&st).unwrap();
    let host_links = v[0]["links"].as_array().unwrap();
    let ports: Vec<&serde_json::Value> = host_links
        .iter()
        .filter(|l| l["master"] == "bri0")
        .collect();
    assert_eq!(ports.len(), 3, "{st}");
    for p in &ports {
        assert_eq!(p["programs"][0], netbridge_common::PROG_PORT_INGRESS, "{p}");
    }
    // stats: every port saw IPv4 traffic (read from the pinned maps).
    let prefix = sb.prefix();
    let out = sb.netbridge(&["stats", "--json", "-f", &file, "--prefix", &prefix]);
    assert!(out.status.success(), "{}", text(&out));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for p in &ports {
        let name = p["name"].as_str().unwrap();
        assert!(
            s["ports"][name]["rx_ipv4"].as_u64().unwrap() > 0,
            "{name}: {s}"
        );
    }
    assert_down_clean(&sb, &file, &before);
}

#[test]
fn up_is_idempotent_and_repairs_manual_changes() {
    require_root!();
    let sb = Sandbox::new();
    let file = example("bridge-three.toml");
    let before = sb.snapshot();
    nb_ok(&sb, &["up"], &file);
    // What `up` controls: links (flags, MTU, master), addresses, routes;
    // not what the kernel changes by itself (operstate, IPv6 DAD flags).
    let script = "ip -o link show | sed -E 's/ link\\/.*//; s/ state [A-Z]+//; s/,?LOWER_UP//'; \
                  ip -o addr show | awk '{print $2, $4}'; ip route show";
    let dump = |sb: &Sandbox| {
        let mut s = String::new();
        for n in ["black", "white", "green"] {
            s += &sb.sh(&sb.name(n), script);
        }
        s + &sb.sh(&sb.host, script)
    };
    let state1 = dump(&sb);
    // Journal and pins are root-only.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &str| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let journal = format!(
        "{}/{}bridge-three.json",
        netbridge::state::STATE_DIR,
        sb.prefix()
    );
    assert_eq!(mode(netbridge::state::STATE_DIR), 0o700);
    assert_eq!(mode(&journal), 0o600);
    assert_eq!(mode(netbridge::bpf::BPFFS_ROOT), 0o700);
    let out = nb_ok(&sb, &["up"], &file);
    assert!(
        out.contains("no changes"),
        "second up changed something:\n{out}"
    );
    assert_eq!(dump(&sb), state1, "second up altered the host");

    // Break things by hand: remove an address, down a link, delete a port.
    let (black, white, green) = (sb.name("black"), sb.name("white"), sb.name("green"));
    sb.sh(&black, "ip addr flush dev eth0");
    sb.sh(&green, "ip link set eth0 down");
    sb.sh(&sb.host, "ip link del nb-white");
    let out = nb_ok(&sb, &["up"], &file);
    assert!(out.contains("added address 192.168.1.1/24"), "{out}");
    assert!(out.contains("set eth0 up"), "{out}");
    assert!(out.contains("created veth nb-white"), "{out}");
    ping(&sb, &black, "192.168.2.1");
    ping(&sb, &green, "192.168.1.1");
    ping(&sb, &white, "192.168.0.1");
    let out = nb_ok(&sb, &["up"], &file);
    assert!(out.contains("no changes"), "{out}");
    assert_down_clean(&sb, &file, &before);
}

#[test]
fn nat_lab_and_default_lab_come_up_self_contained() {
    require_root!();
    let sb = Sandbox::new();
    for file in [example("nat-lab.toml"), String::new()] {
        let before = sb.snapshot();
        let prefix = sb.prefix();
        let args: Vec<&str> = if file.is_empty() {
            vec!["up", "--prefix", &prefix]
        } else {
            vec!["up", "-f", &file, "--prefix", &prefix]
        };
        let out = sb.netbridge(&args);
        assert!(out.status.success(), "{}", text(&out));
        // The lab's own host namespace holds the bridge and the uplink; the
        // sandbox host (where netbridge ran) got nothing.
        let after = sb.snapshot();
        assert_eq!(
            after.host_links, before.host_links,
            "lab touched the namespace netbridge ran in"
        );
        let host = after
            .netns
            .iter()
            .find(|n| n.ends_with("-host") && **n != sb.host)
            .expect("lab host namespace")
            .clone();
        let upstream = after
            .netns
            .iter()
            .find(|n| n.contains("up"))
            .expect("upstream namespace")
            .clone();
        ping(&sb, &upstream, "203.0.113.1");
        // Routed between the /24s behind the bridge, via the gateway.
        let black = after
            .netns
            .iter()
            .find(|n| n.ends_with("black"))
            .expect("black namespace")
            .clone();
        ping(&sb, &black, "192.168.0.1");
        ping(&sb, &black, "192.168.2.10");
        ping(&sb, &black, "203.0.113.1");
        assert_eq!(
            sb.sh(&host, "cat /proc/sys/net/ipv4/ip_forward").trim(),
            "1"
        );
        let down: Vec<&str> = args
            .iter()
            .map(|a| if *a == "up" { "down" } else { a })
            .collect();
        let out = sb.netbridge(&down);
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(sb.snapshot(), before, "residue after down");
    }
}

#[test]
fn exec_runs_inside_the_namespace() {
    require_root!();
    let sb = Sandbox::new();
    let file = example("two-namespaces.toml");
    nb_ok(&sb, &["up"], &file);
    let red = sb.name("red");
    let out = sb.netbridge(&[
        "exec", &red, "--", "ip", "-o", "addr", "show", "dev", "veth-red",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("192.168.1.1/24"),
        "{}",
        text(&out)
    );
    // /sys is the namespace's own.
    let out = sb.netbridge(&["exec", &red, "--", "ls", "/sys/class/net"]);
    let ls = String::from_utf8_lossy(&out.stdout);
    assert!(ls.contains("veth-red") && !ls.contains("eth0"), "{ls}");
    let out = sb.netbridge(&["exec", "no-such-ns-xyz", "--", "true"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"no-such-ns-xyz\" does not exist"));
    nb_ok(&sb, &["down"], &file);
}

/// One bad file per validation rule: each fails with a message naming the
/// field and the value, and the host is left exactly as it was.
#[test]
fn bad_input_is_rejected_and_changes_nothing() {
    require_root!();
    let mut sb = Sandbox::new();
    let dir = tempdir(&mut sb);
    let base = |body: &str| format!("name = \"bad\"\n{body}");
    let bridge = "[bridge]\nname = \"br0\"\naddresses = [\"192.168.0.1/16\"]\n";
    let ns = |n: &str, addr: &str| {
        format!(
            "[[namespace]]\nname = \"{n}\"\nhost_ifname = \"v-{n}\"\naddresses = [\"{addr}\"]\n"
        )
    };
    let uplink = "[[link]]\na = { ifname = \"up0\", addresses = [\"203.0.113.1/24\"] }\nb = { netns = \"wan\", ifname = \"eth0\", addresses = [\"203.0.113.2/24\"] }\n[uplink]\nifname = \"up0\"\nmasquerade = true\n";
    let wan = "[[namespace]]\nname = \"wan\"\nbridge = false\n";
    let fwd = |proto: &str, port: &str, to: &str| {
        format!("[[forward]]\nproto = \"{proto}\"\nport = {port}\nto = \"{to}\"\n")
    };
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "syntax",
            "name = \"x\"\n[bridge\n".into(),
            vec!["invalid TOML"],
        ),
        ("unknown field", base("colour = \"red\"\n"), vec!["colour"]),
        (
            "overlapping CIDRs",
            base(&format!(
                "{bridge}{}[[namespace]]\nname = \"r\"\nbridge = false\n[[namespace]]\nname = \"g\"\nbridge = false\n[[link]]\na = {{ netns = \"r\", ifname = \"x\", addresses = [\"192.168.5.1/24\"] }}\nb = {{ netns = \"g\", ifname = \"y\", addresses = [\"192.168.5.2/24\"] }}\n",
                ns("a", "192.168.1.1/24")
            )),
            vec!["192.168.5", "overlap"],
        ),
        (
            "invalid CIDR",
            base(&format!("{bridge}{}", ns("a", "192.168.1.300/24"))),
            vec!["192.168.1.300"],
        ),
        (
            "duplicate namespace",
            base(&format!(
                "{bridge}{}{}",
                ns("a", "192.168.1.1/24"),
                ns("a", "192.168.1.2/24")
            )),
            vec!["namespace[1].name", "\"a\""],
        ),
        (
            "interface name too long",
            base("[bridge]\nname = \"bridge-name-too-long\"\n"),
            vec!["bridge.name", "bridge-name-too-long", "15 bytes"],
        ),
        (
            "interface name bad chars",
            base("[bridge]\nname = \"br 0;rm\"\n"),
            vec!["bridge.name", "br 0;rm"],
        ),
        (
            "namespace name path trick",
            base("[[namespace]]\nname = \"../etc\"\nbridge = false\n"),
            vec!["namespace[0].name", "../etc"],
        ),
        (
            "gateway outside bridge subnet",
            base(&format!(
                "{bridge}[[namespace]]\nname = \"a\"\nhost_ifname = \"v-a\"\naddresses = [\"192.168.1.1/24\"]\nroutes = [{{ to = \"default\", via = \"10.9.9.9\" }}]\n"
            )),
            vec!["10.9.9.9", "outside"],
        ),
        (
            "forward to unknown namespace",
            base(&format!(
                "{bridge}{}{wan}{uplink}{}",
                ns("a", "192.168.1.1/24"),
                fwd("tcp", "8080", "nosuch:80")
            )),
            vec!["forward[0].to", "nosuch"],
        ),
        (
            "forward port 0",
            base(&format!(
                "{bridge}{}{wan}{uplink}{}",
                ns("a", "192.168.1.1/24"),
                fwd("tcp", "0", "a:80")
            )),
            vec!["forward[0].port", "0"],
        ),
        (
            "forward port out of range",
            base(&format!(
                "{bridge}{}{wan}{uplink}{}",
                ns("a", "192.168.1.1/24"),
                fwd("udp", "\"70000\"", "a:80")
            )),
            vec!["forward[0].port", "70000"],
        ),
        (
            "duplicate forwards",
            base(&format!(
                "{bridge}{}{wan}{uplink}{}{}",
                ns("a", "192.168.1.1/24"),
                fwd("tcp", "8080", "a:80"),
                fwd("tcp", "\"8000-8090\"", "a:9000")
            )),
            vec!["forward[1]", "forward[0]"],
        ),
        (
            "missing uplink interface",
            base(&format!(
                "{bridge}{}[uplink]\nifname = \"nosuch0\"\nmasquerade = true\n",
                ns("a", "192.168.1.1/24")
            )),
            vec!["uplink.ifname", "nosuch0", "does not exist"],
        ),
        ("mtu out of range", base("mtu = 20\n"), vec!["mtu", "20"]),
        (
            "unknown datapath",
            base("datapath = \"dpdk\"\n"),
            vec!["datapath", "dpdk"],
        ),
    ];
    let before = sb.snapshot();
    for (what, body, expect) in &cases {
        let path = dir.join(format!("{}.toml", what.replace(' ', "-")));
        std::fs::write(&path, body).unwrap();
        let p = path.display().to_string();
        let prefix = sb.prefix();
        let out = sb.netbridge(&["up", "-f", &p, "--prefix", &prefix]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{what}: accepted:\n{body}\n{}",
            text(&out)
        );
        assert!(
            err.contains(&p),
            "{what}: error does not name the file:\n{err}"
        );
        for e in expect {
            assert!(err.contains(e), "{what}: error lacks {e:?}:\n{err}");
        }
        assert_eq!(sb.snapshot(), before, "{what}: host changed");
    }

    // Pre-flight: an existing interface of the wrong kind where the bridge
    // should go is refused before anything is created.
    sb.sh(
        &sb.host,
        &format!("ip link add bri0 type veth peer name t{}x", sb.id),
    );
    let before = sb.snapshot();
    let prefix = sb.prefix();
    let f = example("bridge-three.toml");
    let out = sb.netbridge(&["up", "-f", &f, "--prefix", &prefix]);
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bri0 already exists") && err.contains("as a veth"),
        "{err}"
    );
    assert_eq!(sb.snapshot(), before, "pre-flight failure changed the host");
}

/// Every kind of step `up` takes; the fault loops must meet each.
const STEP_KINDS: [&str; 9] = [
    "namespace",
    "link",
    "address",
    "route",
    "sysctl",
    "pins",
    "program",
    "maps",
    "nat",
];

/// `NETBRIDGE_FAULT=fail:N` for N = 1, 2, ... until `up` reports the fault
/// point is no longer reached: each failing run names its step, rolls back
/// everything it made (the sandbox is exactly as before), and together
/// they meet every kind of step. nat-lab makes its own host namespace and
/// has NAT, routes, a sysctl and programs on ports and the uplink.
#[test]
fn failure_at_every_step_of_up_rolls_back() {
    require_root!();
    let sb = Sandbox::new();
    let file = example("nat-lab.toml");
    let before = sb.snapshot();
    let mut kinds = std::collections::BTreeSet::new();
    let mut n = 1;
    let last = loop {
        let out = up_with_fault(&sb, &file, &format!("fail:{n}"));
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.success() {
            break err;
        }
        let at = format!("injected fault at step {n} (");
        let Some(i) = err.find(&at) else {
            panic!("fail:{n}: no injected fault:\n{}", text(&out));
        };
        let kind = err[i + at.len()..]
            .split(':')
            .next()
            .unwrap()
            .to_lowercase();
        kinds.insert(kind);
        assert!(err.contains("rolled back:"), "fail:{n}:\n{err}");
        assert!(!err.contains("rollback failed"), "fail:{n}:\n{err}");
        assert_eq!(sb.snapshot(), before, "fail:{n}: rollback left residue");
        n += 1;
        assert!(n < 1000, "fault points never run out");
    };
    let points = format!(
        "fail:{n} not reached: this run had {} fault points (",
        n - 1
    );
    assert!(last.contains(&points), "{last}");
    let expected: std::collections::BTreeSet<String> =
        STEP_KINDS.iter().map(|k| k.to_string()).collect();
    assert_eq!(kinds, expected, "kinds of steps failed at");
    // The run past the last fault point brought the lab up, complete.
    let out = nb_ok(&sb, &["up"], &file);
    assert!(out.contains("no changes"), "{out}");
    ping(&sb, &sb.name("black"), "203.0.113.254");
    assert_down_clean(&sb, &file, &before);
}

/// A lab whose host is the namespace netbridge runs in (the sandbox
/// host), so a crash leaves links, a route and a sysctl there that only
/// the journal can find; with NAT, a forward and a namespace sysctl.
const CRASH_LAB: &str = r#"
name = "crashlab"
[bridge]
name = "cb0"
addresses = ["192.168.0.1/16"]
[[namespace]]
name = "a"
host_ifname = "cv-a"
addresses = ["192.168.1.10/24"]
routes = [{ to = "default", via = "192.168.0.1", dev = "eth0" }]
sysctls = { "net.ipv4.ip_forward" = "1" }
[[namespace]]
name = "up"
bridge = false
[[link]]
a = { ifname = "cup0", addresses = ["203.0.113.1/24"] }
b = { netns = "up", ifname = "eth0", addresses = ["203.0.113.254/24"] }
[uplink]
ifname = "cup0"
masquerade = true
gateway = "203.0.113.254"
[[forward]]
proto = "tcp"
port = 8080
to = "a:80"
"#;

/// `NETBRIDGE_FAULT=crash:N` (abort right after step N, like kill -9) for
/// every N until the point is no longer reached: the journal survives each
/// crash, the next `up` completes the lab (a further `up` changes
/// nothing), and `down` leaves the sandbox exactly as before, the host's
/// sysctl restored.
#[test]
fn crash_at_every_step_of_up_is_repaired() {
    use std::os::unix::process::ExitStatusExt;
    require_root!();
    let mut sb = Sandbox::new();
    let dir = tempdir(&mut sb);
    let file = dir.join("crashlab.toml").display().to_string();
    std::fs::write(&file, CRASH_LAB).unwrap();
    let forwarding = |sb: &Sandbox| sb.sh(&sb.host, "cat /proc/sys/net/ipv4/ip_forward");
    let (before, fwd_before) = (sb.snapshot(), forwarding(&sb));
    let mut n = 1;
    let last = loop {
        let out = up_with_fault(&sb, &file, &format!("crash:{n}"));
        if out.status.success() {
            break String::from_utf8_lossy(&out.stderr).into_owned();
        }
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGABRT),
            "crash:{n}:\n{}",
            text(&out)
        );
        assert_ne!(sb.snapshot(), before, "crash:{n} left nothing to repair");
        let repaired = nb_ok(&sb, &["up"], &file);
        assert!(repaired.contains("crashlab: up"), "crash:{n}: {repaired}");
        let again = nb_ok(&sb, &["up"], &file);
        assert!(
            again.contains("no changes"),
            "crash:{n}: repair incomplete:\n{again}"
        );
        nb_ok(&sb, &["down"], &file);
        assert_eq!(sb.snapshot(), before, "crash:{n}: residue after down");
        assert_eq!(
            forwarding(&sb),
            fwd_before,
            "crash:{n}: sysctl not restored"
        );
        n += 1;
        assert!(n < 1000, "fault points never run out");
    };
    let points = format!(
        "crash:{n} not reached: this run had {} fault points (",
        n - 1
    );
    assert!(last.contains(&points), "{last}");
    for kind in STEP_KINDS {
        let listed = [format!("({kind} "), format!(", {kind} ")];
        assert!(
            listed.iter().any(|k| last.contains(k)),
            "no {kind} step: {last}"
        );
    }
    ping(&sb, &sb.name("a"), "203.0.113.254");
    assert_down_clean(&sb, &file, &before);
    assert_eq!(forwarding(&sb), fwd_before);
}

/// `down` removes what `up` created and nothing else: a namespace that
/// existed before stays (its link from the file goes), and a sysctl `up`
/// changed gets back the value it had, not the kernel's default.
#[test]
fn down_keeps_pre_existing_namespaces_and_restores_sysctls() {
    require_root!();
    let mut sb = Sandbox::new();
    let dir = tempdir(&mut sb);
    let red = sb.add_ns("red");
    sb.sh(&red, "echo 99 > /proc/sys/net/ipv4/ip_default_ttl");
    let file = dir.join("pre.toml").display().to_string();
    std::fs::write(
        &file,
        "name = \"pre\"\n[[namespace]]\nname = \"red\"\nsysctls = { \"net.ipv4.ip_default_ttl\" = \"33\" }\n\
         [[namespace]]\nname = \"green\"\n\
         [[link]]\na = { netns = \"red\", ifname = \"v-red\", addresses = [\"192.168.9.1/24\"] }\n\
         b = { netns = \"green\", ifname = \"v-green\", addresses = [\"192.168.9.2/24\"] }\n",
    )
    .unwrap();
    let ttl = |sb: &Sandbox| {
        sb.sh(&red, "cat /proc/sys/net/ipv4/ip_default_ttl")
            .trim()
            .to_string()
    };
    let out = nb_ok(&sb, &["up"], &file);
    assert!(!out.contains(&format!("created namespace {red}")), "{out}");
    assert!(
        out.contains(&format!("created namespace {}", sb.name("green"))),
        "{out}"
    );
    // Positive control: up did change the pre-existing namespace.
    assert_eq!(ttl(&sb), "33");
    ping(&sb, &red, "192.168.9.2");
    let out = nb_ok(&sb, &["down"], &file);
    assert!(out.contains("restored net.ipv4.ip_default_ttl=99"), "{out}");
    assert!(
        netbridge::netns::exists(&red),
        "pre-existing namespace deleted"
    );
    assert!(!netbridge::netns::exists(&sb.name("green")));
    assert_eq!(ttl(&sb), "99", "sysctl not restored to its previous value");
    let links = sb.sh(&red, "ip -o link show");
    assert!(
        !links.contains("v-red"),
        "link made by up left in red: {links}"
    );
}

/// A journal that is not valid JSON: `up` and `down` refuse with an error
/// naming the file and the way out, and change nothing; following it
/// (removing the file) gets the topology going again.
#[test]
fn corrupt_journal_is_refused_with_a_way_out() {
    require_root!();
    let sb = Sandbox::new();
    let file = example("bridge-three.toml");
    nb_ok(&sb, &["up"], &file);
    let journal = format!(
        "{}/{}bridge-three.json",
        netbridge::state::STATE_DIR,
        sb.prefix()
    );
    std::fs::write(&journal, b"{\"name\": \"half-written").unwrap();
    let before = sb.snapshot();
    let prefix = sb.prefix();
    for cmd in ["up", "down", "status"] {
        let out = sb.netbridge(&[cmd, "-f", &file, "--prefix", &prefix]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{cmd} accepted a corrupt journal:\n{}",
            text(&out)
        );
        assert!(
            err.contains(&format!("state file {journal} is corrupt")),
            "{cmd}: {err}"
        );
        assert!(
            err.contains(&format!("rm {journal}")),
            "{cmd}: no way out in: {err}"
        );
        assert_eq!(sb.snapshot(), before, "{cmd} changed something");
    }
    std::fs::remove_file(&journal).unwrap();
    nb_ok(&sb, &["up"], &file);
    ping(&sb, &sb.name("black"), "192.168.2.1");
}

fn tempdir(sb: &mut Sandbox) -> PathBuf {
    let d = std::env::temp_dir().join(format!("netbridge-{}", sb.id));
    std::fs::create_dir_all(&d).unwrap();
    let rm = d.clone();
    sb.on_cleanup(move || {
        let _ = std::fs::remove_dir_all(rm);
    });
    d
}

/// Files in tests/corpus/bad: exactly this many (a lost file fails).
const CORPUS_FILES: usize = 54;

/// The hostile-input corpus (tests/corpus/bad/*.toml): syntax errors, wrong
/// types, huge values, unicode and shell metacharacters, path tricks,
/// duplicates and overlaps. Each file starts with `# expect: ...` lines,
/// every one of which its error must contain; none may be part of the
/// file's own path (the error names the path, so such an expectation could
/// not fail).
fn corpus() -> Vec<(String, Vec<String>)> {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus/bad");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert_eq!(files.len(), CORPUS_FILES, "corpus files: {files:?}");
    files
        .into_iter()
        .map(|f| {
            let path = f.display().to_string();
            let body = String::from_utf8_lossy(&std::fs::read(&f).unwrap()).into_owned();
            let expect: Vec<String> = body
                .lines()
                .map_while(|l| l.strip_prefix("# expect: "))
                .map(String::from)
                .collect();
            assert!(
                !expect.is_empty(),
                "{path}: first line must be `# expect: ...`"
            );
            for e in &expect {
                assert!(
                    !path.contains(e.as_str()),
                    "{path}: {e:?} is part of its own path"
                );
            }
            (path, expect)
        })
        .collect()
}

/// The corpus through the parser and validator alone: no root, no
/// namespace, every file refused with its expected error.
#[test]
fn hostile_corpus_is_refused_by_the_parser_without_root() {
    for (path, expect) in corpus() {
        let err = match netbridge::config::Topology::load(std::path::Path::new(&path), &|_| false) {
            Ok(_) => panic!("{path} was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(err.starts_with(&format!("{path}: ")), "{path}: {err}");
        for e in &expect {
            assert!(
                err.contains(e.as_str()),
                "{path}: error lacks {e:?}:\n{err}"
            );
        }
    }
}

/// The corpus through `netbridge up`: each file is refused with an error
/// naming the file and saying what its expectations say, nothing on the
/// host changes, and nothing panics.
#[test]
fn hostile_topology_corpus_is_refused_without_changes() {
    require_root!();
    let sb = Sandbox::new();
    let before = sb.snapshot();
    let prefix = sb.prefix();
    for (path, expect) in corpus() {
        let out = sb.netbridge(&["up", "-f", &path, "--prefix", &prefix]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{path} was accepted:\n{}",
            text(&out)
        );
        assert!(
            err.contains(&path),
            "{path}: error does not name the file:\n{err}"
        );
        for e in &expect {
            assert!(
                err.contains(e.as_str()),
                "{path}: error lacks {e:?}:\n{err}"
            );
        }
        assert!(!err.contains("panicked"), "{path}: panic:\n{err}");
        assert_eq!(sb.snapshot(), before, "{path}: host changed");
    }
}

/// The filters at ingress of `dev` in the sandbox host, as (pref, handle,
/// program name, program id): `tc` itself reads them, not netbridge.
fn tc_filters(sb: &Sandbox, dev: &str) -> Vec<(u64, String, String, u64)> {
    let out = sb.sh(&sb.host, &format!("tc -j filter show dev {dev} ingress"));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    v.as_array()
        .unwrap()
        .iter()
        .filter(|f| f["options"]["handle"].is_string())
        .map(|f| {
            let o = &f["options"];
            (
                f["pref"].as_u64().unwrap(),
                o["handle"].as_str().unwrap().to_string(),
                o["bpf_name"].as_str().unwrap_or("-").to_string(),
                o["prog"]["id"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// The port program is one cls_bpf filter (pref 65000, handle 0x6e62)
/// beside another tool's filter: a second `up` keeps it, `--reload`
/// replaces its program in place (no second filter), switching the port to
/// XDP deletes only it (the other filter and its qdisc stay; a port without
/// one keeps no qdisc), and back to TC attaches it again.
#[test]
fn port_filter_is_replaced_in_place_beside_another_tools_filter() {
    require_root!();
    let mut sb = Sandbox::new();
    let file = example("bridge-three.toml");
    let before = sb.snapshot();
    nb_ok(&sb, &["up"], &file);
    let ours = |id: u64| {
        (
            65000,
            "0x6e62".to_string(),
            "nb_port_ingress".to_string(),
            id,
        )
    };
    let theirs = (10, "0x7".to_string(), "-".to_string(), 0);
    let first = tc_filters(&sb, "nb-black");
    assert_eq!(first.len(), 1, "{first:?}");
    let id1 = first[0].3;
    assert_eq!(first, vec![ours(id1)]);
    // Another tool's filter, run first, matching nothing (classic BPF
    // returning 0: the next filter classifies).
    sb.sh(
        &sb.host,
        "tc filter add dev nb-black ingress pref 10 handle 7 bpf bytecode '1,6 0 0 0,'",
    );
    let out = nb_ok(&sb, &["up"], &file);
    assert!(out.contains("no changes"), "{out}");
    assert_eq!(tc_filters(&sb, "nb-black"), vec![theirs.clone(), ours(id1)]);

    let out = nb_ok(&sb, &["up", "--reload"], &file);
    assert!(
        out.contains("attached (replacing) nb_port_ingress to nb-black"),
        "{out}"
    );
    let now = tc_filters(&sb, "nb-black");
    assert_eq!(now.len(), 2, "{now:?}");
    let id2 = now[1].3;
    assert_ne!(id2, id1, "program not replaced");
    assert_eq!(now, vec![theirs.clone(), ours(id2)]);
    // The new program runs behind the other filter: black's pings are
    // counted on its port.
    let prefix = sb.prefix();
    let rx = |sb: &Sandbox| {
        let out = sb.netbridge(&["stats", "--json", "-f", &file, "--prefix", &prefix]);
        let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        s["ports"]["nb-black"]["rx_ipv4"].as_u64().unwrap()
    };
    let rx0 = rx(&sb);
    ping(&sb, &sb.name("black"), "192.168.2.1");
    assert!(rx(&sb) >= rx0 + 2, "the port program did not run");

    // XDP: the filter goes, the other tool's filter and qdisc stay.
    let xdp = sb.tmp_file("bridge-three-xdp.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    let text = text.replacen("\n[bridge]", "\ndatapath = \"xdp\"\n\n[bridge]", 1);
    std::fs::write(&xdp, text).unwrap();
    let out = nb_ok(&sb, &["up"], xdp.to_str().unwrap());
    assert!(
        out.contains("detached the TC program from nb-black"),
        "{out}"
    );
    assert_eq!(tc_filters(&sb, "nb-black"), vec![theirs.clone()]);
    let qdisc = |dev: &str| sb.sh(&sb.host, &format!("tc qdisc show dev {dev}"));
    assert!(
        qdisc("nb-black").contains("clsact"),
        "{}",
        qdisc("nb-black")
    );
    assert!(
        !qdisc("nb-white").contains("clsact"),
        "{}",
        qdisc("nb-white")
    );
    // Back to TC.
    let out = nb_ok(&sb, &["up"], &file);
    assert!(
        out.contains("attached nb_port_ingress to nb-black"),
        "{out}"
    );
    let back = tc_filters(&sb, "nb-black");
    assert_eq!(back.len(), 2, "{back:?}");
    assert_eq!(back, vec![theirs, ours(back[1].3)]);
    ping(&sb, &sb.name("white"), "192.168.1.1");
    sb.sh(&sb.host, "tc filter del dev nb-black ingress pref 10");
    assert_down_clean(&sb, &file, &before);
}
