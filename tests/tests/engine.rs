//! The engine beyond `up`/`down`: one port added to and removed from a
//! running topology (the CNI plugin's operations) without touching the
//! other ports, the topology lock between concurrent processes, and
//! shared mounts made once by concurrent processes.
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    path::PathBuf,
    process::{Child, Output, Stdio},
};

use netbridge::{
    config::{Port, PortNetns, Route},
    topology,
};
use netbridge_tests::{Sandbox, example, require_root};
use serde_json::Value;

fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ping(sb: &Sandbox, from: &str, to: &str) {
    let out = sb.sh_output(from, &format!("ping -c 2 -i 0.2 -W 2 {to}"));
    assert!(out.status.success(), "ping {from} -> {to}:\n{}", text(&out));
}

fn json(sb: &Sandbox, args: &[&str]) -> Value {
    serde_json::from_str(&sb.nb_ok(args)).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// What must not change for a port when another one comes or goes: its
/// TCX program ids, its learned MACs, and the established TCP sessions
/// of the NAT (long timeouts: they cannot expire during the test).
#[derive(Debug, PartialEq)]
struct Untouched {
    program_ids: BTreeMap<String, Value>,
    fdb: BTreeMap<String, String>,
    sessions: Vec<(String, String, String, String)>,
}

fn untouched(sb: &Sandbox, topo: &str, ports: &[&str]) -> Untouched {
    let status = json(sb, &["status", "--json", "--name", topo]);
    let program_ids = status[0]["links"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| ports.contains(&l["name"].as_str().unwrap()))
        .map(|l| {
            (
                l["name"].as_str().unwrap().to_string(),
                l["program_ids"].clone(),
            )
        })
        .collect();
    let fdb = json(sb, &["fdb", "--json", "--name", topo])
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| ports.contains(&e["port"].as_str().unwrap()))
        .map(|e| {
            (
                e["mac"].as_str().unwrap().to_string(),
                e["port"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let ct = json(sb, &["conntrack", "--json", "--name", topo]);
    let mut sessions: Vec<_> = ct["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["proto"] == "tcp" && s["state"] == "ESTABLISHED")
        .filter(|s| {
            let all = format!("{} {}", s["inside"], s["remote"]);
            !all.contains("192.168.3.") && !all.contains("192.168.4.")
        })
        .map(|s| {
            let f = |k: &str| s[k].as_str().unwrap().to_string();
            (f("proto"), f("inside"), f("external"), f("remote"))
        })
        .collect();
    sessions.sort();
    Untouched {
        program_ids,
        fdb,
        sessions,
    }
}

/// A port on the lab's bridge in the 192.168.N.0/24 of its own.
fn port(name: &str, netns: PortNetns, ifname: &str, host_ifname: &str, net: u8) -> Port {
    Port {
        name: name.into(),
        netns,
        ifname: ifname.into(),
        host_ifname: host_ifname.into(),
        addresses: vec![format!("192.168.{net}.10/24").parse().unwrap()],
        routes: vec![Route {
            to: "default".into(),
            via: Some("192.168.0.1".parse().unwrap()),
            dev: Some(ifname.into()),
        }],
        mtu: None,
        sysctls: Default::default(),
        anti_spoof: true,
        mac: None,
        ipv6_router: false,
    }
}

/// The CNI plugin's two operations on a running nat-lab: a port in a
/// namespace netbridge creates (with a fixed MAC) and one in an existing
/// namespace given by path are added, bridged, NATed (SNAT and hairpin to
/// a forward) and anti-spoofed like the file's own; then removed. Through
/// all of it a ping stream between the file's namespaces loses nothing,
/// and their program ids, FDB entries and NAT sessions stay as they were.
#[test]
fn ports_come_and_go_on_a_running_topology_without_touching_the_others() {
    require_root!();
    let mut sb = Sandbox::new();
    let cni = sb.add_ns("cni");
    let before = sb.snapshot();
    let (file, prefix) = sb.up_example("nat-lab.toml");
    let topo = sb.name("nat-lab");
    let (black, white, upstream) = (sb.name("black"), sb.name("white"), sb.name("upstream"));
    // Traffic and state of the file's ports before any change: a TCP
    // connection from black held open through SNAT.
    ping(&sb, &black, "192.168.2.10");
    ping(&sb, &white, "203.0.113.254");
    sb.spawn(
        &upstream,
        &["python3", "-m", "http.server", "80", "--bind", "0.0.0.0"],
    );
    let hold = "import socket,time\nfor _ in range(100):\n  try:\n    s=socket.create_connection(('203.0.113.254',80)); break\n  except OSError: time.sleep(0.1)\nprint('up', flush=True); time.sleep(120)";
    let mut holder = sb
        .cmd(&black, &["python3", "-c", hold])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(holder.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "up");
    let others = ["nb-black", "nb-white", "uplink0"];
    let start = untouched(&sb, &topo, &others);
    assert_eq!(start.fdb.len(), 2, "{start:?}");
    assert_eq!(start.sessions.len(), 1, "{start:?}");
    let mut stream = sb
        .cmd(
            &black,
            &[
                "ping",
                "-w",
                "600",
                "-i",
                "0.05",
                "-W",
                "2",
                "-q",
                "192.168.2.10",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Add: a named namespace netbridge creates, with a fixed MAC.
    let green_ns = sb.name("green");
    let mut green = port(
        &green_ns,
        PortNetns::Named(green_ns.clone()),
        "eth0",
        "nb-green",
        3,
    );
    green.mac = Some([0x02, 0, 0, 0, 0x33, 0x01]);
    let r = topology::add_port(&topo, &green).unwrap();
    assert!(
        r.changes
            .iter()
            .any(|c| c == &format!("created namespace {green_ns}")),
        "{r:?}"
    );
    assert!(
        r.changes
            .iter()
            .any(|c| c.contains("nb_port_ingress to nb-green")),
        "{r:?}"
    );
    // And a namespace given by path (a CNI runtime's), not created.
    let path = PathBuf::from(netbridge::netns::NETNS_RUN_DIR).join(&cni);
    let c = port(&cni, PortNetns::Path(path), "eth1", "nb-cni", 4);
    topology::add_port(&topo, &c).unwrap();
    // Again: idempotent, nothing to do.
    assert_eq!(
        topology::add_port(&topo, &green).unwrap().changes,
        Vec::<String>::new()
    );

    attached_ports_work(&mut sb, &topo, &green_ns, &cni);
    assert_eq!(
        untouched(&sb, &topo, &others),
        start,
        "add touched the other ports"
    );
    // A declarative up keeps the attached ports and finds nothing to do.
    let out = sb.nb_ok(&["up", "-f", &file, "--prefix", &prefix]);
    assert!(out.contains("no changes"), "{out}");

    // Remove: the namespace netbridge made goes, the given one stays.
    let r = topology::remove_port(&topo, &green_ns).unwrap();
    assert!(
        r.changes
            .iter()
            .any(|c| c.contains("removed nb-green from the datapath")),
        "{r:?}"
    );
    assert!(!netbridge::netns::exists(&green_ns));
    let fdb = sb.nb_ok(&["fdb", "--json", "--name", &topo]);
    assert!(
        !fdb.contains("nb-green") && !fdb.contains("02:00:00:00:33:01"),
        "{fdb}"
    );
    ping(&sb, &cni, "192.168.1.10");
    topology::remove_port(&topo, &cni).unwrap();
    assert!(
        netbridge::netns::exists(&cni),
        "a namespace given by path was deleted"
    );
    let links = sb.sh(&cni, "ip -o link show");
    assert!(!links.contains("eth1"), "{links}");
    let status = sb.nb_ok(&["status", "--json", "--name", &topo]);
    assert!(
        !status.contains("nb-green") && !status.contains("nb-cni"),
        "{status}"
    );

    // The stream ran through every change above, and lost nothing.
    assert!(
        stream.try_wait().unwrap().is_none(),
        "stream ended before the changes did"
    );
    let (sent, received) = stop_ping(stream);
    assert!(
        sent >= 20 && received == sent,
        "stream between the other ports lost packets: {received} of {sent}"
    );
    assert_eq!(
        untouched(&sb, &topo, &others),
        start,
        "remove touched the other ports"
    );
    ping(&sb, &upstream, "203.0.113.1");
    let _ = holder.kill();
    let _ = holder.wait();
    sb.nb_ok(&["down", "--name", &topo]);
    assert_eq!(sb.snapshot(), before, "residue after down");
}

/// The attached ports as the file's own: bridged to each other and the
/// lab, SNAT to upstream, hairpin to a forward (their lab-host entries),
/// anti-spoofing with their own MAC and address, in stats and fdb.
fn attached_ports_work(sb: &mut Sandbox, topo: &str, green: &str, cni: &str) {
    let link = sb.sh(green, "ip -o link show dev eth0");
    assert!(link.contains("link/ether 02:00:00:00:33:01 "), "{link}");
    ping(sb, green, "192.168.1.10");
    ping(sb, green, "192.168.4.10");
    ping(sb, cni, "192.168.2.10");
    ping(sb, green, "203.0.113.254");
    // Hairpin: green -> uplink address:5000 -> white:5000, and back.
    let white = sb.name("white");
    sb.spawn(
        &white,
        &["python3", "-m", "http.server", "5000", "--bind", "0.0.0.0"],
    );
    assert!(
        sb.http_200_within_10s(green, "http://203.0.113.1:5000/"),
        "hairpin from an attached port"
    );
    // The SNAT session of the new port is listed.
    let ct = sb.nb_ok(&["conntrack", "--json", "--name", topo]);
    assert!(ct.contains("192.168.3.10:"), "{ct}");
    // Anti-spoofing knows the new port: a second address it does not own
    // is dropped and counted; its own address (above) passes.
    let drops = |sb: &Sandbox| {
        let d = &json(sb, &["stats", "--json", "--name", topo])["drops"];
        d["spoofed_ipv4"].as_u64().unwrap() + d["spoofed_arp"].as_u64().unwrap()
    };
    let spoofed = drops(sb);
    sb.sh(green, "ip addr add 192.168.3.99/24 dev eth0");
    let o = sb.sh_output(green, "ping -c 2 -i 0.2 -W 1 -I 192.168.3.99 192.168.1.10");
    assert!(!o.status.success(), "spoofed source got through");
    assert!(drops(sb) >= spoofed + 2, "spoofed frames not counted");
    sb.sh(green, "ip addr del 192.168.3.99/24 dev eth0");
    // stats and fdb name the new ports.
    let stats = json(sb, &["stats", "--json", "--name", topo]);
    assert_eq!(stats["ports"]["nb-green"]["namespace"], green, "{stats}");
    assert!(
        stats["ports"]["nb-cni"]["rx_ipv4"].as_u64().unwrap() > 0,
        "{stats}"
    );
    let fdb = sb.nb_ok(&["fdb", "--json", "--name", topo]);
    assert!(
        fdb.contains("02:00:00:00:33:01") && fdb.contains("nb-green"),
        "{fdb}"
    );
}

/// Bad ports change nothing: a taken address or name, a name declared in
/// the file, a missing namespace path, an unknown topology.
#[test]
fn invalid_ports_are_refused_without_changes() {
    require_root!();
    let sb = Sandbox::new();
    let _ = sb.up_example("bridge-three.toml");
    let topo = sb.name("bridge-three");
    let before = sb.snapshot();
    let journal = std::fs::read(netbridge::state::State::path(&topo)).unwrap();
    let named = |n: &str| PortNetns::Named(sb.name(n));
    let mut taken = port(&sb.name("x"), named("x"), "eth0", "nb-x", 7);
    taken.addresses = vec!["192.168.1.1/24".parse().unwrap()];
    let cases = [
        (taken, "already assigned by namespace[0].addresses[0]"),
        (
            port(&sb.name("black"), named("black"), "eth0", "nb-x", 7),
            "duplicate namespace name",
        ),
        (
            port(&sb.name("x"), named("x"), "eth0", "nb-black", 7),
            "duplicate interface",
        ),
        (
            port(
                &sb.name("x"),
                PortNetns::Path("/run/netns/no-such-ns".into()),
                "eth0",
                "nb-x",
                7,
            ),
            "/run/netns/no-such-ns is not a network namespace",
        ),
    ];
    for (p, expect) in cases {
        let e = topology::add_port(&topo, &p).unwrap_err().to_string();
        assert!(e.contains(expect), "{p:?}: {e}");
        assert_eq!(sb.snapshot(), before, "{expect}: changed the host");
        let now = std::fs::read(netbridge::state::State::path(&topo)).unwrap();
        assert_eq!(now, journal, "{expect}: changed the journal");
    }
    let e = topology::remove_port(&topo, &sb.name("black"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("is a [[namespace]] of its file"), "{e}");
    let e = topology::add_port(&sb.name("nope"), &port("p", named("p"), "eth0", "nb-p", 7));
    assert!(
        e.unwrap_err().to_string().contains("is up"),
        "unknown topology"
    );
    sb.nb_ok(&["down", "--name", &topo]);
}

/// Spawns `netbridge ARGS` in the sandbox host with stdout/stderr piped.
fn spawn_nb(sb: &Sandbox, args: &[&str]) -> Child {
    let bin = netbridge_tests::netbridge_bin();
    let mut argv = vec![bin.to_str().unwrap()];
    argv.extend_from_slice(args);
    sb.cmd(&sb.host, &argv)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Two `up`s of one topology at once: one builds it, the other waits and
/// then finds nothing to do (without the lock both would create the same
/// objects and fail). While another process holds the lock, `up` says it
/// waits and creates nothing until the lock is free.
#[test]
fn concurrent_ups_of_one_topology_are_serialized() {
    require_root!();
    let sb = Sandbox::new();
    let file = example("bridge-three.toml");
    let prefix = sb.prefix();
    let before = sb.snapshot();
    let args = ["up", "-f", &file, "--prefix", &prefix];
    let (a, b) = (spawn_nb(&sb, &args), spawn_nb(&sb, &args));
    let outs = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
    for o in &outs {
        assert!(o.status.success(), "{}", text(o));
    }
    let made: Vec<bool> = outs
        .iter()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("created namespace"))
        .collect();
    let idle = outs
        .iter()
        .filter(|o| String::from_utf8_lossy(&o.stdout).contains("no changes"))
        .count();
    assert_eq!(
        (made.iter().filter(|m| **m).count(), idle),
        (1, 1),
        "{outs:?}"
    );
    ping(&sb, &sb.name("black"), "192.168.3.1");
    sb.nb_ok(&["down", "-f", &file, "--prefix", &prefix]);
    assert_eq!(sb.snapshot(), before);

    // Hold the lock here; `up` must wait and touch nothing meanwhile.
    let topo = sb.name("bridge-three");
    let held = netbridge::lock::exclusive(&topo, |_| panic!("lock busy")).unwrap();
    let mut up = spawn_nb(&sb, &args);
    let mut err = BufReader::new(up.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(
        line.contains(&format!(
            "topology {topo} is being changed by another netbridge (pid {})",
            std::process::id()
        )) && line.contains("waiting"),
        "{line}"
    );
    assert_eq!(sb.snapshot(), before, "up changed things while waiting");
    drop(held);
    let out = up.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    ping(&sb, &sb.name("black"), "192.168.3.1");

    // `up` and `down` at once: whichever runs second sees the first's
    // complete result, never half a lab.
    let (u, d) = (
        spawn_nb(&sb, &args),
        spawn_nb(&sb, &["down", "-f", &file, "--prefix", &prefix]),
    );
    let (u, d) = (u.wait_with_output().unwrap(), d.wait_with_output().unwrap());
    assert!(
        u.status.success() && d.status.success(),
        "{}\n{}",
        text(&u),
        text(&d)
    );
    if netbridge::state::State::load(&topo).unwrap().is_some() {
        let again = sb.nb_ok(&args);
        assert!(
            again.contains("no changes"),
            "up after down left half a lab: {again}"
        );
        sb.nb_ok(&["down", "-f", &file, "--prefix", &prefix]);
    }
    assert_eq!(sb.snapshot(), before);
}

/// Concurrent processes mount netbridge's bpffs and make /run/netns a
/// mount point exactly once. Run in a private mount namespace where
/// neither is mounted yet (nothing outside it is affected), four `up`s of
/// separate labs race to mount both; each mount point ends up with one
/// mount, and every lab's pins are on it. (The private mount namespace is
/// meant here: `NETBRIDGE_PRIVATE_MOUNTS=1` lets `up` run in it.)
#[test]
fn concurrent_processes_mount_shared_points_once() {
    require_root!();
    let sb = Sandbox::new();
    let bin = netbridge_tests::netbridge_bin();
    let file = example("nat-lab.toml");
    let p = sb.prefix();
    let script = format!(
        r#"set -e
while mountpoint -q /run/netbridge/bpf; do umount -l /run/netbridge/bpf; done
while mountpoint -q /run/netns; do umount -l /run/netns; done
pids=""
export NETBRIDGE_PRIVATE_MOUNTS=1
for i in 1 2 3 4; do {nb} up -f {file} --prefix {p}m$i- > /dev/null 2>/tmp/{p}m$i.err & pids="$pids $!"; done
fail=0; for pid in $pids; do wait $pid || fail=1; done
echo "bpffs=$(grep -c ' /run/netbridge/bpf ' /proc/self/mountinfo)"
echo "netns=$(grep -c ' /run/netns ' /proc/self/mountinfo)"
echo "pins=$(ls /run/netbridge/bpf | grep -c '^{p}m')"
for i in 1 2 3 4; do {nb} down --name {p}m$i-nat-lab > /dev/null; cat /tmp/{p}m$i.err; rm -f /tmp/{p}m$i.err; done
echo "failed=$fail"
"#,
        nb = bin.display()
    );
    let out = sb
        .cmd(
            &sb.host,
            &[
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                &script,
            ],
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", text(&out));
    for expect in ["bpffs=1", "netns=1", "pins=4", "failed=0"] {
        assert!(
            stdout.lines().any(|l| l == expect),
            "{expect}:\n{}",
            text(&out)
        );
    }
}

/// nat-lab on the XDP datapath, masquerade only (forwards need TC, see
/// the corpus).
fn xdp_nat_lab() -> String {
    let lab = std::fs::read_to_string(example("nat-lab.toml")).unwrap();
    let lab = &lab[..lab.find("[[forward]]").expect("nat-lab has forwards")];
    let with = lab.replacen("\n[bridge]", "\ndatapath = \"xdp\"\n\n[bridge]", 1);
    assert_ne!(with, lab, "nat-lab has no [bridge]");
    with
}

/// Program ids of the lab: XDP on each port and namespace end, TC on the
/// uplink.
fn xdp_ids(sb: &Sandbox, topo: &str) -> BTreeMap<String, Value> {
    let mut ids = BTreeMap::new();
    for ns in json(sb, &["status", "--json", "--name", topo])
        .as_array()
        .unwrap()
    {
        for l in ns["links"].as_array().unwrap() {
            let key = format!(
                "{}/{}",
                ns["name"].as_str().unwrap(),
                l["name"].as_str().unwrap()
            );
            if l["name"] == "uplink0" {
                ids.insert(key, l["program_ids"].clone());
            } else if !l["xdp_program_id"].is_null() {
                ids.insert(key, l["xdp_program_id"].clone());
            }
        }
    }
    ids
}

/// NAT with `datapath = "xdp"`: masquerade works (lab hosts reach upstream
/// through SNAT, replies come back). `up --reload` then swaps every XDP
/// program (ports and namespace ends) inside its pinned link and the
/// uplink's TC programs, while a stream between lab hosts on the XDP fast
/// path loses nothing, the FDB and the NAT sessions stay, and a TCP
/// connection through the NAT carries on.
#[test]
fn xdp_datapath_masquerades_and_reloads_without_a_gap() {
    require_root!();
    let mut sb = Sandbox::new();
    let file = std::env::temp_dir().join(format!("{}xnat.toml", sb.prefix()));
    std::fs::write(&file, xdp_nat_lab()).unwrap();
    let f = file.clone();
    sb.on_cleanup(move || {
        let _ = std::fs::remove_file(f);
    });
    let (file, prefix) = (file.display().to_string(), sb.prefix());
    let before = sb.snapshot();
    let up = ["up", "-f", &file, "--prefix", &prefix];
    sb.nb_ok(&up);
    let topo = sb.name("nat-lab");
    let (black, white, upstream) = (sb.name("black"), sb.name("white"), sb.name("upstream"));
    sb.spawn(
        &upstream,
        &["python3", "-m", "http.server", "80", "--bind", "0.0.0.0"],
    );
    assert!(
        sb.http_200_within_10s(&white, "http://203.0.113.254/"),
        "SNAT from white in XDP mode"
    );
    // A TCP connection through the NAT, used again after the reload.
    let hold = "import socket,sys\ns=socket.create_connection(('203.0.113.254',80))\nprint('up',flush=True)\nsys.stdin.readline()\ns.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\nprint(s.recv(64).decode().splitlines()[0],flush=True)";
    let mut holder = sb
        .cmd(&black, &["python3", "-c", hold])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut replies = BufReader::new(holder.stdout.take().unwrap());
    let mut line = String::new();
    replies.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "up");
    ping(&sb, &black, "192.168.2.10");
    let ports = ["nb-black", "nb-white"];
    let start = untouched(&sb, &topo, &ports);
    assert_eq!((start.fdb.len(), start.sessions.len()), (2, 1), "{start:?}");
    let ids = xdp_ids(&sb, &topo);
    assert_eq!(
        ids.len(),
        5,
        "XDP on 2 ports and 2 namespace ends, TC on the uplink: {ids:?}"
    );
    let redirected = |sb: &Sandbox| {
        json(sb, &["stats", "--json", "--name", &topo])["ports"]["nb-black"]["rx_redirected"]
            .as_u64()
            .unwrap()
    };
    let redirected_before = redirected(&sb);
    let mut stream = sb
        .cmd(
            &black,
            &[
                "ping",
                "-w",
                "600",
                "-i",
                "0.02",
                "-W",
                "2",
                "-q",
                "192.168.2.10",
            ],
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Reload once the stream is flowing.
    let flowing = Sandbox::wait_for(std::time::Duration::from_secs(10), || {
        (redirected(&sb) > redirected_before + 10).then_some(())
    });
    assert!(flowing.is_some(), "stream did not start");
    let reload: Vec<&str> = up.iter().copied().chain(["--reload"]).collect();
    let out_reload = sb.nb_ok(&reload);
    assert!(
        stream.try_wait().unwrap().is_none(),
        "stream ended before the reload did"
    );
    assert!(
        out_reload.contains("attached (replacing) nb_port_xdp to nb-black (XDP)"),
        "{out_reload}"
    );
    let after = xdp_ids(&sb, &topo);
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        ids.keys().collect::<Vec<_>>()
    );
    for (k, v) in &ids {
        assert_ne!(&after[k], v, "{k}: program not replaced");
    }
    let (sent, received) = stop_ping(stream);
    assert!(
        sent >= 20 && received == sent,
        "the XDP stream lost packets across the reload: {received} of {sent}"
    );
    assert!(
        redirected(&sb) >= redirected_before + sent,
        "stream not on the XDP fast path"
    );
    assert_eq!(
        untouched(&sb, &topo, &ports),
        start,
        "reload lost FDB entries or sessions"
    );
    holder.stdin.as_mut().unwrap().write_all(b"\n").unwrap();
    line.clear();
    replies.read_line(&mut line).unwrap();
    assert!(
        line.starts_with("HTTP/1.0 200"),
        "TCP through the NAT after reload: {line:?}"
    );
    let _ = holder.wait();
    sb.nb_ok(&["down", "--name", &topo]);
    assert_eq!(sb.snapshot(), before);
}

/// What the CNI plugin starts from: a network that is only a bridge (no
/// port, no NAT, so no datapath yet). The first attached port brings the
/// datapath up (pins, program, gateway); two attached ports reach the
/// gateway and each other (over the BPF fast path) and show in `stats`;
/// removing both and `down` leave nothing.
#[test]
fn ports_on_a_bare_bridge_start_the_datapath() {
    require_root!();
    let mut sb = Sandbox::new();
    let dir = std::env::temp_dir().join(format!("{}bare.toml", sb.prefix()));
    std::fs::write(
        &dir,
        "name = \"bare\"\nhost_netns = \"h\"\n[bridge]\nname = \"cni0\"\naddresses = [\"192.168.0.1/16\"]\n",
    )
    .unwrap();
    let f = dir.clone();
    sb.on_cleanup(move || {
        let _ = std::fs::remove_file(f);
    });
    let before = sb.snapshot();
    let (file, prefix) = (dir.display().to_string(), sb.prefix());
    sb.nb_ok(&["up", "-f", &file, "--prefix", &prefix]);
    let topo = sb.name("bare");
    let st = netbridge::state::State::load(&topo).unwrap().unwrap();
    assert!(st.pin_dir.is_none(), "a bare bridge needs no datapath");
    let (a, b) = (sb.name("ca"), sb.name("cb"));
    // On-link default routes (no IP forwarding in a bare host): the two
    // subnets share the bridge's segment.
    let onlink = |p: Port| Port {
        routes: vec![Route {
            to: "default".into(),
            via: None,
            dev: Some("eth0".into()),
        }],
        ..p
    };
    let pa = onlink(port(&a, PortNetns::Named(a.clone()), "eth0", "veth-ca", 1));
    let r = topology::add_port(&topo, &pa).unwrap();
    assert!(
        r.changes
            .iter()
            .any(|c| c.starts_with("created pin directory")),
        "{r:?}"
    );
    let pb = onlink(port(&b, PortNetns::Named(b.clone()), "eth0", "veth-cb", 2));
    topology::add_port(&topo, &pb).unwrap();
    ping(&sb, &a, "192.168.0.1");
    ping(&sb, &a, "192.168.2.10");
    let stats = json(&sb, &["stats", "--json", "--name", &topo]);
    assert_eq!(
        stats["ports"]["veth-ca"]["namespace"],
        a.as_str(),
        "{stats}"
    );
    assert!(
        stats["ports"]["veth-cb"]["rx_ipv4"].as_u64().unwrap() >= 2,
        "{stats}"
    );
    // Learned neighbours on one segment: the BPF fast path carried them.
    let redirected = stats["ports"]["veth-ca"]["rx_redirected"].as_u64().unwrap();
    assert!(redirected >= 1, "{stats}");
    topology::remove_port(&topo, &a).unwrap();
    topology::remove_port(&topo, &b).unwrap();
    let e = topology::remove_port(&topo, &b).unwrap_err().to_string();
    assert!(e.contains("is not attached"), "{e}");
    sb.nb_ok(&["down", "--name", &topo]);
    assert_eq!(sb.snapshot(), before);
}

/// Stops a `ping -q` stream (SIGINT, as Ctrl-C: it prints its summary and
/// exits 0 when every reply came) and returns (transmitted, received).
fn stop_ping(stream: std::process::Child) -> (u64, u64) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(stream.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = stream.wait_with_output().unwrap();
    let summary = String::from_utf8_lossy(&out.stdout);
    let field = |word: &str| -> u64 {
        let (before, _) = summary
            .split_once(word)
            .unwrap_or_else(|| panic!("no '{word}' in ping summary: {summary}"));
        before
            .rsplit(|c: char| c.is_whitespace() || c == ',')
            .find(|s| !s.is_empty())
            .unwrap()
            .parse()
            .unwrap()
    };
    (field(" packets transmitted"), field(" received"))
}
