//! Traps turned into clear errors: netbridge under `ip netns exec` (or
//! `unshare -m`) refuses before changing anything and shows the
//! `nsenter --net=` way, while a mount namespace whose /run/netns is shared
//! with the host's works (and its namespaces are seen outside); a bridge
//! segment whose MTUs disagree is warned about, naming the ports; `down
//! --name` of a topology that is not up fails and says so.
use std::process::Output;

use netbridge_tests::{Sandbox, example, netbridge_bin, opkit::text, require_root};

/// Runs `wrapper... netbridge args...` from the test's own namespaces.
fn run(wrapper: &[&str], args: &[&str]) -> Output {
    let bin = netbridge_bin();
    std::process::Command::new(wrapper[0])
        .args(&wrapper[1..])
        .arg(&bin)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{wrapper:?}: {e}"))
}

/// This test process shares PID 1's mount table (mount ids are unique
/// across namespaces): so do the `nsenter --net` runs of every other test.
fn assert_in_init_mount_namespace() {
    let ids = |p: &str| -> Vec<String> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| l.split(' ').next().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        ids("/proc/self/mountinfo"),
        ids("/proc/1/mountinfo"),
        "the tests do not run in init's mount namespace"
    );
}

#[test]
fn private_mount_namespace_is_refused_before_any_change() {
    require_root!();
    assert_in_init_mount_namespace();
    let sb = Sandbox::new();
    let prefix = sb.prefix();
    let file = example("bridge-three.toml");
    let before = sb.snapshot();
    let netns_exec = ["ip", "netns", "exec", sb.host.as_str()];
    for args in [
        vec!["up", "-f", &file, "--prefix", &prefix],
        vec!["down", "--name", "whatever"],
        vec!["demo", "--duration", "1s", "--prefix", &prefix],
    ] {
        let o = run(&netns_exec, &args);
        assert!(!o.status.success(), "{}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("private mount namespace"), "{err}");
        assert!(err.contains("Nothing was changed"), "{err}");
        // The way out, with this very command line.
        let way = format!(
            "nsenter --net=/run/netns/{} netbridge {}",
            sb.host,
            args.join(" ")
        );
        assert!(err.contains(&way), "no `{way}` in:\n{err}");
        assert_eq!(sb.snapshot(), before, "changed under ip netns exec");
    }
    // `unshare -m` (private propagation) is the same trap.
    let nsenter = format!("--net=/run/netns/{}", sb.host);
    let o = run(
        &["unshare", "-m", "nsenter", &nsenter],
        &["up", "-f", &file, "--prefix", &prefix],
    );
    assert!(!o.status.success(), "{}", text(&o));
    assert_eq!(sb.snapshot(), before);

    // Controls. A private mount namespace that shares /run/netns's peer
    // group with init's is fine: the namespaces it makes show outside. (Its
    // bpffs must be init's: on a fresh machine no netbridge has mounted it
    // yet, so mount it here, in init's namespace, as any `up` would.)
    netbridge::pins::mount_bpffs().unwrap();
    let o = run(
        &[
            "unshare",
            "-m",
            "--propagation",
            "shared",
            "nsenter",
            &nsenter,
        ],
        &["up", "-f", &file, "--prefix", &prefix],
    );
    assert!(o.status.success(), "{}", text(&o));
    let seen = sb.snapshot();
    for ns in ["black", "white", "green"] {
        assert!(
            seen.netns.contains(&sb.name(ns)),
            "{ns} not seen outside: {seen:?}"
        );
    }
    assert_eq!(seen.pin_dirs, vec![sb.name("bridge-three")]);
    // And nsenter --net alone (what every test does) works as ever.
    sb.nb_ok(&["down", "--name", &sb.name("bridge-three")]);
    assert_eq!(sb.snapshot(), before);
}

#[test]
fn mtu_mismatch_on_the_bridge_is_warned_naming_the_ports() {
    require_root!();
    let mut sb = Sandbox::new();
    let prefix = sb.prefix();
    let path = sb.tmp_file("mtu.toml");
    let three = std::fs::read_to_string(example("bridge-three.toml")).unwrap();
    // white gets jumbo frames, the others the default 1500.
    let jumbo = three.replacen(
        "host_ifname = \"nb-white\"\n",
        "host_ifname = \"nb-white\"\nmtu = 9000\n",
        1,
    );
    assert_ne!(jumbo, three);
    std::fs::write(&path, &jumbo).unwrap();
    let file = path.to_str().unwrap();
    let expect = |p: &str| {
        format!(
            "netbridge: warning: {file}: the L2 segment of bridge bri0 mixes MTUs: 1500 on \
             nb-black ({p}black), nb-green ({p}green); 9000 on nb-white ({p}white); frames \
             larger than 1500 are dropped"
        )
    };
    let o = sb.netbridge(&["check", "-f", file]);
    assert!(
        o.status.success(),
        "a warning is not an error: {}",
        text(&o)
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&expect("")), "{err}");
    // `up` says it too, and goes on.
    let o = sb.netbridge(&["up", "-f", file, "--prefix", &prefix]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(&expect(&prefix)),
        "{}",
        text(&o)
    );
    // (Through netlink: nsenter keeps the caller's /sys.)
    let link = sb.sh(&sb.name("white"), "ip -o link show eth0");
    assert!(link.contains(" mtu 9000 "), "{link}");
    sb.nb_ok(&["down", "--name", &sb.name("bridge-three")]);
    // Control: the example as it is gives no warning.
    let o = sb.netbridge(&["check", "-f", &example("bridge-three.toml")]);
    assert!(o.status.success());
    assert!(
        !String::from_utf8_lossy(&o.stderr).contains("warning"),
        "{}",
        text(&o)
    );
}

#[test]
fn down_of_a_name_that_is_not_up_says_so() {
    require_root!();
    let sb = Sandbox::new();
    let prefix = sb.prefix();
    let file = example("two-namespaces.toml");
    sb.nb_ok(&["up", "-f", &file, "--prefix", &prefix]);
    let topo = sb.name("two-namespaces");
    let missing = sb.name("two-namespacez");
    let o = sb.netbridge(&["down", "--name", &missing]);
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("no topology named \"{missing}\" is up")),
        "{err}"
    );
    // The running ones are listed (the typo'd one's neighbour among them).
    assert!(err.contains(&topo), "{err}");
    // Nothing was touched: the real one is still up.
    assert!(sb.snapshot().state_files.contains(&format!("{topo}.json")));
    // Controls: down by the right name works; by file, a topology that is
    // not up is nothing to do (idempotent scripts), exit 0.
    sb.nb_ok(&["down", "--name", &topo]);
    let out = sb.nb_ok(&["down", "-f", &file, "--prefix", &prefix]);
    assert!(out.contains("not up, nothing to remove"), "{out}");
}
