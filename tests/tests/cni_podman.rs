//! A real CNI client: Debian 12's podman 4.3 with its CNI backend, offline,
//! running containers on a `netbridge-cni` network inside a sandbox node
//! (its own network and mount namespace: podman's state, mounts, container
//! namespaces, libcni's cache, host-local's leases and netbridge's state
//! stay there). Two containers reach each other, their published ports
//! answer from an upstream namespace, a container reaches the upstream
//! masqueraded, a port on an address that is not the uplink's is refused
//! with netbridge's error, `podman rm` cleans up; no iptables or nft rule
//! appears in the node at any time (a poller watches throughout, and is
//! first shown to see one).
mod cni_harness;

use std::{
    path::{Path, PathBuf},
    process::Output,
    time::Duration,
};

use cni_harness::{Node, Subject, forget_cni_state};
use netbridge_tests::{Sandbox, netbridge_bin, require_root};
use serde_json::{Value, json};

/// Fails (never skips) when a tool the test drives is missing.
fn require_tools() {
    for (bin, pkg) in [
        ("/usr/bin/podman", "podman"),
        ("/usr/bin/crun", "crun"),
        ("/usr/bin/conmon", "conmon"),
        ("/bin/busybox", "busybox-static"),
        ("/usr/lib/cni/host-local", "containernetworking-plugins"),
        ("/usr/sbin/iptables-save", "iptables"),
        ("/usr/sbin/nft", "nftables"),
    ] {
        assert!(
            Path::new(bin).exists(),
            "{bin} missing: install {pkg} (cargo xtask setup does)"
        );
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Podman in the node, with its own storage under `w`.
struct Podman<'a> {
    node: &'a Node,
    w: PathBuf,
}

impl Podman<'_> {
    fn run(&self, args: &[&str]) -> Output {
        let (root, runroot) = (self.w.join("root"), self.w.join("runroot"));
        let conf = self.w.join("containers.conf");
        let conf = format!("CONTAINERS_CONF={}", conf.display());
        let mut argv = vec![
            "timeout",
            "120",
            "env",
            &conf,
            "podman",
            "--root",
            root.to_str().unwrap(),
            "--runroot",
            runroot.to_str().unwrap(),
            "--storage-driver",
            "vfs",
        ];
        argv.extend_from_slice(args);
        let out = self.node.cmd(&argv).output().expect("spawn podman");
        println!("podman {args:?}: {}", text(&out).replace('\n', " | "));
        out
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "podman {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `podman run -d` of busybox httpd serving /www on 80, port `publish`.
    fn start(&self, name: &str, net: &str, publish: &str) -> Output {
        let rootfs = self.w.join("rootfs");
        self.run(&[
            "run",
            "-d",
            "--name",
            name,
            "--cgroups=disabled",
            "--ulimit",
            "nofile=20000:20000",
            "--ulimit",
            "nproc=1024:1024",
            "--network",
            net,
            "-p",
            publish,
            "--rootfs",
            rootfs.to_str().unwrap(),
            "/bin/httpd",
            "-f",
            "-p",
            "80",
            "-h",
            "/www",
        ])
    }

    fn ip(&self, name: &str, net: &str) -> String {
        self.ok(&[
            "inspect",
            name,
            "--format",
            &format!("{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}"),
        ])
    }
}

/// The podman configuration, plugin directory, network and rootfs.
fn prepare(w: &Path, subject: &Subject, net: &str, bridge: &str) {
    for d in [
        "plugins",
        "net.d",
        "root",
        "runroot",
        "rootfs/bin",
        "rootfs/www",
    ] {
        std::fs::create_dir_all(w.join(d)).unwrap();
    }
    std::fs::write(
        w.join("containers.conf"),
        format!(
            "[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{p}\"]\n\
             network_config_dir = \"{n}\"\n[engine]\ncgroup_manager = \"cgroupfs\"\n\
             events_logger = \"file\"\n",
            p = w.join("plugins").display(),
            n = w.join("net.d").display()
        ),
    )
    .unwrap();
    std::os::unix::fs::symlink(subject.bin(), w.join("plugins/netbridge-cni")).unwrap();
    for p in ["host-local", "loopback"] {
        std::os::unix::fs::symlink(format!("/usr/lib/cni/{p}"), w.join("plugins").join(p)).unwrap();
    }
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": net,
        "plugins": [{
            "type": "netbridge-cni",
            "bridge": bridge,
            "isGateway": true,
            "ipMasq": true,
            "hairpinMode": true,
            "capabilities": {"portMappings": true},
            "ipam": {
                "type": "host-local",
                "routes": [{"dst": "0.0.0.0/0"}],
                "ranges": [[{"subnet": "192.168.88.0/24", "gateway": "192.168.88.1"}]]
            }
        }]
    });
    std::fs::write(
        w.join("net.d").join(format!("{net}.conflist")),
        serde_json::to_string_pretty(&conflist).unwrap(),
    )
    .unwrap();
    // busybox-static needs no library; every applet a link (not busybox
    // itself: the link would loop).
    let bin = w.join("rootfs/bin");
    std::fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
    let list = std::process::Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .unwrap();
    for a in String::from_utf8_lossy(&list.stdout).lines() {
        if !bin.join(a).exists() {
            std::os::unix::fs::symlink("busybox", bin.join(a)).unwrap();
        }
    }
    std::fs::write(w.join("rootfs/www/index.html"), "hello from podman\n").unwrap();
}

/// Watches the node's iptables, ip6tables and nft rulesets every 0.2 s
/// into `log` (one `iter` line per round, then any line of a non-empty
/// ruleset) until `stop` exists or 600 s passed.
fn netfilter_poller(sb: &mut Sandbox, node: &str, log: &Path, stop: &Path) {
    let script = format!(
        "end=$((SECONDS+600)); n=0; while [ $SECONDS -lt $end ] && [ ! -e {stop} ]; do \
           r=$( (iptables-save; ip6tables-save; nft list ruleset) 2>&1 | grep -v '^#' | grep -v '^$'); \
           n=$((n+1)); echo \"iter $n $(printf '%s' \"$r\" | grep -c .)\" >> {log}; \
           [ -n \"$r\" ] && printf '%s\\n' \"$r\" >> {log}; sleep 0.2; done",
        stop = stop.display(),
        log = log.display()
    );
    sb.spawn(node, &["bash", "-c", &script]);
}

fn log_text(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

#[test]
fn podman_runs_containers_on_netbridge_cni() {
    require_root!();
    require_tools();
    let subject = Subject::netbridge();
    let mut sb = Sandbox::new();
    forget_cni_state(&mut sb);
    let (node_ns, up) = (sb.host.clone(), sb.add_ns("up"));
    sb.veth(
        &node_ns,
        "eth0",
        Some("203.0.113.1/24"),
        &up,
        "eth0",
        Some("203.0.113.2/24"),
    );
    // The uplink is found by the node's default route (no "uplink" key).
    sb.sh(&node_ns, "ip route add default via 203.0.113.2");
    let w = std::env::temp_dir().join(format!("nb-podman-{}", sb.id));
    let wc = w.clone();
    sb.on_cleanup(move || {
        let _ = std::fs::remove_dir_all(wc);
    });
    let net = sb.name("pod");
    let bridge = format!("nbp{}", &sb.id[sb.id.len().saturating_sub(8)..]);
    prepare(&w, &subject, &net, &bridge);
    let up_www = w.join("up-www");
    std::fs::create_dir_all(&up_www).unwrap();
    std::fs::write(up_www.join("index.html"), "hello from upstream\n").unwrap();
    sb.spawn(
        &up,
        &[
            "busybox",
            "httpd",
            "-f",
            "-p",
            "8000",
            "-h",
            up_www.to_str().unwrap(),
        ],
    );

    // The netfilter poller, and proof that it sees a rule.
    let (log, stop) = (w.join("netfilter.log"), w.join("stop-poller"));
    netfilter_poller(&mut sb, &node_ns, &log, &stop);
    sb.sh(&node_ns, "iptables -A INPUT -p udp --dport 9 -j ACCEPT");
    let seen = Sandbox::wait_for(Duration::from_secs(10), || {
        log_text(&log).contains("--dport 9").then_some(())
    });
    assert!(
        seen.is_some(),
        "the poller never saw the control rule:\n{}",
        log_text(&log)
    );
    sb.sh(&node_ns, "nft flush ruleset");
    let clean = Sandbox::wait_for(Duration::from_secs(10), || {
        let t = log_text(&log);
        let last = t
            .lines()
            .rev()
            .find(|l| l.starts_with("iter "))?
            .to_string();
        last.ends_with(" 0").then_some(t.len())
    });
    let from = clean.expect("the node's ruleset never came back empty");

    // The node: own mount namespace, sysfs, cgroup tmpfs, /run,
    // /var/lib/cni and /dev/shm; podman cleans up when it goes.
    let mut node = Node::new(
        &mut sb,
        &node_ns,
        "mount -t tmpfs cgroup /sys/fs/cgroup\n\
         mount -t tmpfs run /run; mkdir -p /run/netns\n\
         mkdir -p /var/lib/cni; mount -t tmpfs cni /var/lib/cni\n\
         mount -t tmpfs shm /dev/shm",
    );
    let pm_cleanup = format!(
        "CONTAINERS_CONF={w}/containers.conf timeout 60 podman --root {w}/root --runroot {w}/runroot \
         --storage-driver vfs rm -a -f -t 0",
        w = w.display()
    );
    node.on_drop(&pm_cleanup);
    let pm = Podman {
        node: &node,
        w: w.clone(),
    };
    let ls = pm.ok(&["network", "ls", "--format", "{{.Name}} {{.Driver}}"]);
    assert!(ls.contains(&format!("{net} netbridge-cni")), "{ls}");

    for (name, port) in [("c1", "8080:80/tcp"), ("c2", "8081:80/tcp")] {
        let out = pm.start(name, &net, port);
        assert!(out.status.success(), "podman run {name}: {}", text(&out));
    }
    let (ip1, ip2) = (pm.ip("c1", &net), pm.ip("c2", &net));
    assert!(ip1.starts_with("192.168.88.") && ip2.starts_with("192.168.88.") && ip1 != ip2);
    // Container to container, both ways.
    for (from, to) in [("c2", &ip1), ("c1", &ip2)] {
        let got = pm.ok(&[
            "exec",
            from,
            "timeout",
            "5",
            "wget",
            "-qO-",
            &format!("http://{to}/"),
        ]);
        assert_eq!(got, "hello from podman", "{from} -> {to}");
    }
    // Published ports from upstream.
    for port in [8080, 8081] {
        let got = sb.sh(&up, &format!("curl -sS -m 5 http://203.0.113.1:{port}/"));
        assert_eq!(got, "hello from podman\n", "port {port}");
    }
    // Out through the masquerade (upstream has no route back).
    let r = sb.sh_output(&up, "ip route get 192.168.88.2");
    assert!(!r.status.success(), "upstream routes to the pods");
    let got = pm.ok(&[
        "exec",
        "c1",
        "timeout",
        "5",
        "wget",
        "-qO-",
        "http://203.0.113.2:8000/",
    ]);
    assert_eq!(got, "hello from upstream");
    // hostIP: the uplink's address works, another is refused with
    // netbridge's error and leaves nothing.
    let out = pm.start("c3", &net, "203.0.113.1:8083:80/tcp");
    assert!(out.status.success(), "{}", text(&out));
    let got = sb.sh(&up, "curl -sS -m 5 http://203.0.113.1:8083/");
    assert_eq!(got, "hello from podman\n");
    let out = pm.start("c4", &net, "203.0.113.9:8084:80/tcp");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("netbridge publishes ports on the uplink eth0"),
        "{}",
        text(&out)
    );
    // netbridge's CLI in the node sees the network's three ports.
    let nb = netbridge_bin();
    let stats = node.sh(&format!("{} stats --json --name {net}", nb.display()));
    let stats: Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["ports"].as_object().unwrap().len(), 3, "{stats}");
    let ct = node.sh(&format!("{} conntrack --name {net}", nb.display()));
    assert!(ct.contains(&format!("{ip1}:80")), "{ct}");

    // podman rm: every veth, netns, lease, cache entry and port goes.
    pm.ok(&["rm", "-f", "-t", "0", "c1", "c2", "c3", "c4"]);
    let left = node.sh(&format!(
        "ip -o link show type veth | grep -v ' eth0@' | wc -l; ls /run/netns | wc -l; \
         ls /var/lib/cni/networks/{net} | grep -c '^[0-9]' || true; ls /var/lib/cni/results | wc -l"
    ));
    let left: Vec<&str> = left.split_whitespace().collect();
    assert_eq!(
        left,
        ["0", "0", "0", "0"],
        "veths, netns, leases, cache entries left"
    );
    let st = node.sh(&format!("cat /run/netbridge/state/{net}.json"));
    let st: Value = serde_json::from_str(&st).unwrap();
    assert!(st.get("attachments").is_none(), "ports left: {st}");

    // No rule at any time after the control.
    std::fs::write(&stop, "").unwrap();
    let t = log_text(&log);
    let after = &t[from..];
    let rounds = after.lines().filter(|l| l.starts_with("iter ")).count();
    let rules: Vec<&str> = after
        .lines()
        .filter(|l| !(l.starts_with("iter ") && l.ends_with(" 0")))
        .collect();
    assert!(rounds > 10, "the poller stopped early:\n{after}");
    assert_eq!(
        rules,
        Vec::<&str>::new(),
        "netfilter rules appeared in the node"
    );
    // Nothing of the node's in the machine's mount namespace.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(w.to_str().unwrap()) && !mounts.contains("/var/lib/cni"),
        "{mounts}"
    );
    drop(pm);
    drop(node);
}
