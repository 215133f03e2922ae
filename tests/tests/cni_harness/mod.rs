//! CNI harness shared by the `cni*` tests: drives a CNI plugin binary the
//! way libcni and the reference plugins' testutils do (environment +
//! stdin, one process per call, a network list executed in order for
//! ADD/CHECK and in reverse for DEL, with `prevResult` threaded through),
//! inside a sandbox "node" namespace; and a node with its own mount
//! namespace (what podman and a second node need).
//!
//! Every scenario is written against a [`Subject`]: the plugin under test,
//! its versions and what it does on its own. Debian 12's reference
//! `bridge` (+ `portmap`) is the positive control that proves the harness
//! and the checks can pass and fail; `netbridge-cni` runs the same
//! scenarios. The reference `tuning` and `bandwidth` plugins are chained
//! after the subject up to 1.0.0 (all Debian's speak): they parse its
//! result with Go's libcni types (bandwidth finds the host veth through
//! `interfaces[].sandbox`), so a malformed result fails the chain.
#![allow(dead_code)]

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use netbridge::cni::{CniVersion, names};
use netbridge_tests::{Sandbox, netbridge_bin};
use serde_json::{Value, json};

/// Where Debian's containernetworking-plugins installs the reference plugins.
pub const REFERENCE_DIR: &str = "/usr/lib/cni";

/// The plugin under test and what the scenarios may expect of it.
#[derive(Debug, Clone)]
pub struct Subject {
    /// `type` in the config: the binary's file name.
    pub plugin_type: &'static str,
    /// Directory holding it (first on CNI_PATH).
    pub dir: PathBuf,
    /// Versions it must serve; the others of 0.4.0/1.0.0/1.1.0 it must
    /// refuse with code 1.
    pub versions: Vec<CniVersion>,
    /// netbridge-cni: publishes `runtimeConfig.portMappings` itself (else
    /// `portmap` is chained), takes netbridge's keys, no iptables.
    pub netbridge: bool,
    /// Plugins of the chain whose CHECK is known broken, left out of CHECK
    /// (what an admin's `disableCheck` is for).
    pub check_skips: &'static [&'static str],
}

impl Subject {
    /// Debian 12's reference bridge (containernetworking-plugins 1.1.1):
    /// up to 1.0.0, no GC/STATUS, ports through the chained portmap.
    pub fn reference_bridge() -> Subject {
        let dir = PathBuf::from(REFERENCE_DIR);
        for p in ["bridge", "host-local", "portmap", "tuning", "bandwidth"] {
            assert!(
                dir.join(p).is_file(),
                "{}/{p} missing: install Debian's containernetworking-plugins (cargo xtask setup)",
                dir.display()
            );
        }
        Subject {
            plugin_type: "bridge",
            dir,
            versions: vec![CniVersion::V0_4_0, CniVersion::V1_0_0],
            netbridge: false,
            // portmap 1.1.1 CHECKs an IPv6 DNAT chain it never creates for an
            // IPv4-only result: "could not check ipv6 dnat: chain CNI-DN-...
            // not found in iptables table nat" (podman never calls CHECK).
            check_skips: &["portmap"],
        }
    }

    /// `netbridge-cni` as cargo built it (next to the `netbridge` binary).
    pub fn netbridge() -> Subject {
        let dir = netbridge_bin().parent().unwrap().to_path_buf();
        assert!(
            dir.join("netbridge-cni").is_file(),
            "netbridge-cni not found in {} (build it first: cargo build -p netbridge --bins)",
            dir.display()
        );
        assert!(
            Path::new(REFERENCE_DIR).join("host-local").is_file(),
            "{REFERENCE_DIR}/host-local missing: install Debian's containernetworking-plugins"
        );
        Subject {
            plugin_type: "netbridge-cni",
            dir,
            versions: CniVersion::SUPPORTED.to_vec(),
            netbridge: true,
            check_skips: &[],
        }
    }

    pub fn bin(&self) -> PathBuf {
        self.dir.join(self.plugin_type)
    }

    pub fn cni_path(&self) -> String {
        format!("{}:{REFERENCE_DIR}", self.dir.display())
    }
}

/// One plugin process's outcome.
#[derive(Debug)]
pub struct Outcome {
    pub rc: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    /// Asserts a spec error object and returns its code.
    pub fn error_code(&self) -> u64 {
        assert_ne!(self.rc, 0, "expected a failure: {self:?}");
        let e = self.json();
        assert!(e["msg"].is_string(), "error without msg: {e}");
        e["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("error without code: {e}"))
    }

    /// Asserts success and an empty stdout (DEL, CHECK, GC, STATUS).
    pub fn ok_empty(&self) {
        assert_eq!((self.rc, self.stdout.trim()), (0, ""), "{self:?}");
    }
}

/// The per-attachment parameters (SPEC.md section 3).
#[derive(Debug, Clone)]
pub struct Attachment {
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: String,
    /// Capability arguments the runtime offers (e.g. portMappings).
    pub capability_args: Value,
}

impl Attachment {
    /// As `cni.dev/valid-attachments` lists it.
    pub fn valid(&self) -> Value {
        json!({"containerID": self.container_id, "ifname": self.ifname})
    }

    /// The engine port netbridge-cni gives it.
    pub fn port(&self) -> String {
        names::port_name(&netbridge::cni::Attachment {
            container_id: self.container_id.clone(),
            ifname: self.ifname.clone(),
        })
    }
}

/// Runs one plugin binary in namespace `ns` with CNI env and stdin.
pub fn exec_in(
    sb: &Sandbox,
    ns: &str,
    subject: &Subject,
    plugin: &str,
    command: &str,
    att: Option<&Attachment>,
    stdin: &Value,
) -> Outcome {
    let c = plugin_cmd(sb, ns, subject, plugin, command, att);
    run_plugin(c, plugin, command, att, stdin)
}

/// The command running plugin `plugin` in `ns` with the CNI environment.
pub fn plugin_cmd(
    sb: &Sandbox,
    ns: &str,
    subject: &Subject,
    plugin: &str,
    command: &str,
    att: Option<&Attachment>,
) -> Command {
    let bin = if plugin == subject.plugin_type {
        subject.bin()
    } else {
        Path::new(REFERENCE_DIR).join(plugin)
    };
    with_cni_env(sb.cmd(ns, &[bin.to_str().unwrap()]), subject, command, att)
}

/// `c` (a plugin's command) with exactly the CNI environment: the verb,
/// CNI_PATH and the attachment's parameters.
pub fn with_cni_env(
    mut c: Command,
    subject: &Subject,
    command: &str,
    att: Option<&Attachment>,
) -> Command {
    c.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", command)
        .env("CNI_PATH", subject.cni_path());
    if let Some(a) = att {
        c.env("CNI_CONTAINERID", &a.container_id)
            .env("CNI_NETNS", &a.netns)
            .env("CNI_IFNAME", &a.ifname)
            .env("CNI_ARGS", &a.args);
    }
    c
}

/// Spawns a prepared plugin command, feeds stdin, logs and returns.
pub fn run_plugin(
    c: Command,
    plugin: &str,
    command: &str,
    att: Option<&Attachment>,
    stdin: &Value,
) -> Outcome {
    Pending::start(c, plugin, command, att, stdin).wait()
}

/// A plugin process started and fed, not yet waited for.
pub struct Pending {
    child: std::process::Child,
    what: String,
}

impl Pending {
    pub fn start(
        mut c: Command,
        plugin: &str,
        command: &str,
        att: Option<&Attachment>,
        stdin: &Value,
    ) -> Pending {
        let mut child = c
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {plugin}: {e}"));
        // Small enough for the pipe: written without waiting for a reader.
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.to_string().as_bytes())
            .unwrap();
        let what = format!(
            "{plugin} {command} {}",
            att.map_or("", |a| a.container_id.as_str())
        );
        Pending { child, what }
    }

    pub fn wait(self) -> Outcome {
        let out = self.child.wait_with_output().unwrap();
        let o = Outcome {
            rc: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        println!(
            "{}: rc={} {}{}",
            self.what,
            o.rc,
            o.stdout.replace('\n', ""),
            if o.stderr.is_empty() {
                String::new()
            } else {
                format!(" stderr: {}", o.stderr.trim())
            }
        );
        o
    }
}

/// A network configuration list, executed like libcni does.
pub struct NetList<'a> {
    pub sb: &'a Sandbox,
    /// The node namespace the plugins run in.
    pub node: String,
    pub subject: &'a Subject,
    pub version: CniVersion,
    pub name: String,
    pub plugins: Vec<Value>,
}

impl NetList<'_> {
    /// The request config of plugin `i` (SPEC.md "Deriving request
    /// configuration"): cniVersion, name, runtimeConfig from declared
    /// capabilities, prevResult; capabilities removed.
    pub fn request(&self, i: usize, att: Option<&Attachment>, prev: Option<&Value>) -> Value {
        let mut c = self.plugins[i].clone();
        let o = c.as_object_mut().unwrap();
        o.insert("cniVersion".into(), self.version.as_str().into());
        o.insert("name".into(), self.name.clone().into());
        if let (Some(caps), Some(a)) = (o.remove("capabilities"), att) {
            let mut rc = serde_json::Map::new();
            for (k, on) in caps.as_object().unwrap() {
                if on == &Value::Bool(true)
                    && let Some(v) = a.capability_args.get(k)
                {
                    rc.insert(k.clone(), v.clone());
                }
            }
            if !rc.is_empty() {
                o.insert("runtimeConfig".into(), Value::Object(rc));
            }
        } else {
            o.remove("capabilities");
        }
        if let Some(p) = prev {
            o.insert("prevResult".into(), p.clone());
        }
        c
    }

    pub fn plugin_type(&self, i: usize) -> String {
        self.plugins[i]["type"].as_str().unwrap().to_string()
    }

    /// Starts the subject alone (a one-plugin list) on `att`: parallel
    /// calls start them all, then wait.
    pub fn start(&self, verb: &str, att: &Attachment) -> Pending {
        assert_eq!(self.plugins.len(), 1, "start() runs one-plugin lists");
        let req = self.request(0, Some(att), None);
        Pending::start(
            plugin_cmd(
                self.sb,
                &self.node,
                self.subject,
                self.subject.plugin_type,
                verb,
                Some(att),
            ),
            self.subject.plugin_type,
            verb,
            Some(att),
            &req,
        )
    }

    fn exec(&self, i: usize, verb: &str, att: Option<&Attachment>, req: &Value) -> Outcome {
        exec_in(
            self.sb,
            &self.node,
            self.subject,
            &self.plugin_type(i),
            verb,
            att,
            req,
        )
    }

    /// ADD in order; Ok(final result) or the first failure.
    pub fn add(&self, att: &Attachment) -> Result<Value, Outcome> {
        let mut prev: Option<Value> = None;
        for i in 0..self.plugins.len() {
            let req = self.request(i, Some(att), prev.as_ref());
            let o = self.exec(i, "ADD", Some(att), &req);
            if o.rc != 0 {
                return Err(o);
            }
            prev = Some(o.json());
        }
        Ok(prev.expect("a non-empty list"))
    }

    /// DEL in reverse with the final ADD result (None: as after a crash).
    pub fn del(&self, att: &Attachment, prev: Option<&Value>) -> Result<(), Outcome> {
        for i in (0..self.plugins.len()).rev() {
            let req = self.request(i, Some(att), prev);
            let o = self.exec(i, "DEL", Some(att), &req);
            if o.rc != 0 {
                return Err(o);
            }
            assert_eq!(o.stdout.trim(), "", "DEL prints nothing on success");
        }
        Ok(())
    }

    pub fn check(&self, att: &Attachment, prev: &Value) -> Result<(), Outcome> {
        for i in 0..self.plugins.len() {
            if self
                .subject
                .check_skips
                .contains(&self.plugin_type(i).as_str())
            {
                continue;
            }
            let req = self.request(i, Some(att), Some(prev));
            let o = self.exec(i, "CHECK", Some(att), &req);
            if o.rc != 0 {
                return Err(o);
            }
        }
        Ok(())
    }

    /// The subject alone (first plugin), with any verb and config tweak.
    pub fn subject_call(
        &self,
        verb: &str,
        att: Option<&Attachment>,
        tweak: impl FnOnce(&mut Value),
    ) -> Outcome {
        let mut req = self.request(0, att, None);
        tweak(&mut req);
        self.exec(0, verb, att, &req)
    }

    /// GC (1.1.0) with exactly `valid` still valid.
    pub fn gc(&self, valid: &[&Attachment]) -> Outcome {
        let list: Vec<Value> = valid.iter().map(|a| a.valid()).collect();
        self.subject_call("GC", None, |c| {
            c["cni.dev/valid-attachments"] = Value::Array(list);
        })
    }

    /// The netbridge topology of this network.
    pub fn topology(&self) -> String {
        names::topology_name(&self.name)
    }
}

/// Node, two containers and an upstream in one sandbox; the node's uplink
/// `u<id>` is 203.0.113.1/24, the upstream 203.0.113.2 (no route back to
/// the pod subnet).
pub struct Lab {
    pub sb: Sandbox,
    pub ctrs: Vec<String>,
    pub upstream: String,
    pub uplink: String,
    pub dir: PathBuf,
    pub bridge: String,
}

impl Lab {
    pub fn new() -> Lab {
        Self::with_containers(2)
    }

    pub fn with_containers(n: usize) -> Lab {
        let mut sb = Sandbox::new();
        let ctrs = (1..=n).map(|i| sb.add_ns(&format!("c{i}"))).collect();
        let upstream = sb.add_ns("up");
        let uplink = format!("u{}", sb.id);
        sb.veth(
            &sb.host,
            &uplink,
            Some("203.0.113.1/24"),
            &upstream,
            "eth0",
            Some("203.0.113.2/24"),
        );
        let dir = std::env::temp_dir().join(format!("nb-cni-{}", sb.id));
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.clone();
        sb.on_cleanup(move || {
            let _ = std::fs::remove_dir_all(d);
        });
        forget_cni_state(&mut sb);
        let bridge = format!("cb{}", sb.id);
        Lab {
            sb,
            ctrs,
            upstream,
            uplink,
            dir,
            bridge,
        }
    }

    /// The CNI network name: under the sandbox's prefix, so its topology's
    /// journal and pins are swept with the sandbox.
    pub fn net_name(&self) -> String {
        self.sb.name("net")
    }

    /// The subject's main plugin config: the reference bridge's keys,
    /// host-local IPAM on 192.168.93.0/24 (netbridge: its uplink too).
    pub fn main_plugin(&self, subject: &Subject) -> Value {
        let mut main = json!({
            "type": subject.plugin_type,
            "bridge": self.bridge,
            "isGateway": true,
            "ipMasq": true,
            "hairpinMode": true,
            "mtu": 1400,
            "ipam": {
                "type": "host-local",
                "dataDir": self.dir.join("leases"),
                "ranges": [[{"subnet": "192.168.93.0/24", "gateway": "192.168.93.1"}]],
                "routes": [{"dst": "0.0.0.0/0"}]
            }
        });
        if subject.netbridge {
            main["uplink"] = self.uplink.clone().into();
            main["capabilities"] = json!({"portMappings": true});
        }
        main
    }

    /// The subject (+ portmap for the reference), then tuning and
    /// bandwidth when `chained` (Debian's speak up to 1.0.0).
    pub fn netlist<'a>(
        &'a self,
        subject: &'a Subject,
        version: CniVersion,
        chained: bool,
    ) -> NetList<'a> {
        let mut plugins = vec![self.main_plugin(subject)];
        if !subject.netbridge {
            plugins.push(json!({"type": "portmap", "capabilities": {"portMappings": true}}));
        }
        if chained {
            plugins.push(
                json!({"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.log_martians": "1"}}),
            );
            plugins.push(
                json!({"type": "bandwidth", "ingressRate": 100_000_000, "ingressBurst": 1_000_000,
                                "egressRate": 100_000_000, "egressBurst": 1_000_000}),
            );
        }
        NetList {
            sb: &self.sb,
            node: self.sb.host.clone(),
            subject,
            version,
            name: self.net_name(),
            plugins,
        }
    }

    /// Container `i` (0-based) publishing `host_port` tcp -> 80.
    pub fn attachment(&self, i: usize, host_port: u16) -> Attachment {
        self.attachment_with(
            i,
            json!([{"hostPort": host_port, "containerPort": 80, "protocol": "tcp"}]),
        )
    }

    pub fn attachment_with(&self, i: usize, port_mappings: Value) -> Attachment {
        Attachment {
            container_id: format!("ctr{i}-{}", self.sb.id),
            netns: format!("/run/netns/{}", self.ctrs[i]),
            ifname: "eth0".into(),
            args: format!("IgnoreUnknown=1;K8S_POD_NAME=pod{i};K8S_POD_NAMESPACE=default"),
            capability_args: json!({ "portMappings": port_mappings }),
        }
    }

    /// host-local's leases (addresses) of the network, sorted.
    pub fn leases(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.dir.join("leases"))
            .into_iter()
            .flatten()
            .flatten()
            .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
            .collect();
        v.sort();
        v
    }

    /// A file server (busybox httpd) in `ns` on `port` serving `text` at /.
    pub fn web(&mut self, ns: &str, port: u16, text: &str) {
        let www = self.dir.join(format!("www-{ns}-{port}"));
        std::fs::create_dir_all(&www).unwrap();
        std::fs::write(www.join("index.html"), text).unwrap();
        let (www, port) = (www.to_str().unwrap().to_string(), port.to_string());
        self.sb
            .spawn(ns, &["busybox", "httpd", "-f", "-p", &port, "-h", &www]);
    }

    /// GET http://`url` from `ns`, retried for up to 5 s.
    pub fn fetch(&self, ns: &str, url: &str) -> Option<String> {
        Sandbox::wait_for(Duration::from_secs(5), || {
            let o = self
                .sb
                .sh_output(ns, &format!("curl -sS -m 2 http://{url}"));
            o.status
                .success()
                .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
        })
    }
}

/// Removes netbridge-cni's per-network records and the topology locks of
/// this sandbox's networks at cleanup (the sandbox sweeps journals and
/// pins by prefix, not these).
pub fn forget_cni_state(sb: &mut Sandbox) {
    let prefix = sb.prefix();
    sb.on_cleanup(move || {
        for dir in [
            netbridge::cni::store::CNI_STATE_DIR,
            netbridge::lock::LOCK_DIR,
        ] {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    let p = e.path();
                    let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
                }
            }
        }
    });
}

/// A node with its own mount namespace besides its network namespace,
/// kept alive by a sleeping process of the sandbox: podman and a node's
/// netbridge state live there, never in the machine's mount namespace.
/// Dropped (before the sandbox: declare it after), it runs its cleanup
/// script and kills every process left in it; the sandbox then kills the
/// keeper and the mount namespace is gone.
pub struct Node {
    pub net: String,
    /// /proc/PID/ns/mnt of the keeper.
    pub mnt: String,
    keeper: u32,
    cleanup: Option<String>,
}

impl Node {
    /// A private mount namespace for network namespace `net`, with its own
    /// sysfs (like `ip netns exec`), then `setup` (a shell script) run in
    /// it. Namespaces added under /run/netns afterwards are not seen there.
    pub fn new(sb: &mut Sandbox, net: &str, setup: &str) -> Node {
        let keeper = sb.spawn(
            net,
            &[
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sleep",
                "3600",
            ],
        );
        let mnt = format!("/proc/{keeper}/ns/mnt");
        // The keeper has unshared once its mount namespace differs.
        let me = std::fs::read_link("/proc/self/ns/mnt").unwrap();
        let ready = Sandbox::wait_for(Duration::from_secs(10), || {
            std::fs::read_link(&mnt).ok().filter(|m| *m != me)
        });
        assert!(ready.is_some(), "the keeper of {net} never unshared");
        let node = Node {
            net: net.into(),
            mnt,
            keeper,
            cleanup: None,
        };
        node.sh(&format!(
            "set -e; umount -l /sys; mount -t sysfs sysfs /sys\n{setup}"
        ));
        node
    }

    /// A script run in the node when it is dropped, before its processes
    /// are killed (e.g. `podman rm -a -f`).
    pub fn on_drop(&mut self, script: &str) {
        self.cleanup = Some(script.into());
    }

    /// A command run in the node (both namespaces).
    pub fn cmd(&self, argv: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--mount={}", self.mnt))
            .arg(format!("--net=/run/netns/{}", self.net))
            .arg("--")
            .args(argv);
        c
    }

    /// A shell snippet in the node; panics with its output if it fails.
    pub fn sh(&self, script: &str) -> String {
        let out = self.sh_output(script);
        assert!(
            out.status.success(),
            "in node {}: `{script}` failed ({}):\nstdout: {}\nstderr: {}",
            self.net,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn sh_output(&self, script: &str) -> std::process::Output {
        self.cmd(&["sh", "-c", script])
            .stdin(Stdio::null())
            .output()
            .expect("spawn nsenter")
    }

    /// Kills (by pid) every process living in the node's mount namespace
    /// but the keeper, and their descendants (a container's processes
    /// have mount namespaces of their own), until none is left.
    pub fn kill_all(&self) {
        let Ok(ns) = std::fs::read_link(&self.mnt) else {
            return;
        };
        for _ in 0..50 {
            let procs = processes();
            let mut doomed: Vec<i32> = procs
                .iter()
                .filter(|(pid, _)| *pid != self.keeper as i32)
                .filter(|(pid, _)| {
                    std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok() == Some(ns.clone())
                })
                .map(|(pid, _)| *pid)
                .collect();
            let mut i = 0;
            while i < doomed.len() {
                let parent = doomed[i];
                doomed.extend(
                    procs
                        .iter()
                        .filter(|(_, pp)| *pp == parent)
                        .map(|(p, _)| *p),
                );
                i += 1;
            }
            if doomed.is_empty() {
                return;
            }
            for pid in doomed {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(script) = self.cleanup.take() {
            let _ = self.sh_output(&script);
        }
        self.kill_all();
    }
}

/// (pid, ppid) of every process.
fn processes() -> Vec<(i32, i32)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // After the ")" closing the command: state, ppid.
            let ppid = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((pid, ppid))
        })
        .collect()
}
