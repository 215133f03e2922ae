//! The routed NAT lab of the NAT tests: lab namespaces black (192.168.1.10)
//! and white (192.168.2.10) on a bridge in a host namespace ("gw") whose
//! uplink (203.0.113.1) faces a router (203.0.113.254), behind which sits a
//! server (198.51.100.10). The router has no route back to the lab's
//! 192.168.0.0/16: only translated traffic can come back.
//! (`tests/tests/nat.rs` has its own copy of this lab, to be replaced.)
use std::{path::PathBuf, time::Duration};

use serde_json::Value;

use crate::Sandbox;

pub const SERVER: &str = "198.51.100.10";
pub const UPLINK: &str = "203.0.113.1";

/// A script of `tests/scripts`.
pub fn script(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
        .display()
        .to_string()
}

pub struct NatLab {
    pub sb: Sandbox,
    pub file: String,
}

impl NatLab {
    /// Brings the lab (topology "nat") up; `uplink_extra` is appended to
    /// `[uplink]`, `extra` (forwards) at the end of the file.
    pub fn new(uplink_extra: &str, extra: &str) -> NatLab {
        let mut sb = Sandbox::new();
        let toml = format!(
            r#"name = "nat"
host_netns = "gw"

[bridge]
name = "br0"
addresses = ["192.168.0.1/16"]

[[namespace]]
name = "black"
addresses = ["192.168.1.10/24"]
routes = [{{ to = "default", via = "192.168.0.1", dev = "eth0" }}]

[[namespace]]
name = "white"
addresses = ["192.168.2.10/24"]
routes = [{{ to = "default", via = "192.168.0.1", dev = "eth0" }}]

[[namespace]]
name = "router"
bridge = false
sysctls = {{ "net.ipv4.ip_forward" = "1" }}

[[namespace]]
name = "server"
bridge = false

[[link]]
a = {{ ifname = "uplink0", addresses = ["203.0.113.1/24"] }}
b = {{ netns = "router", ifname = "eth0", addresses = ["203.0.113.254/24"] }}

[[link]]
a = {{ netns = "router", ifname = "eth1", addresses = ["198.51.100.1/24"] }}
b = {{ netns = "server", ifname = "eth0", addresses = ["198.51.100.10/24"], routes = [{{ to = "default", via = "198.51.100.1" }}] }}

[uplink]
ifname = "uplink0"
masquerade = true
gateway = "203.0.113.254"
{uplink_extra}

{extra}
"#
        );
        let file = format!("/tmp/{}nat.toml", sb.prefix());
        std::fs::write(&file, toml).unwrap();
        let f = file.clone();
        sb.on_cleanup(move || {
            let _ = std::fs::remove_file(f);
        });
        let lab = NatLab { sb, file };
        lab.nb(&["up"]);
        lab
    }

    /// The sandbox name of lab namespace `n`.
    pub fn ns(&self, n: &str) -> String {
        self.sb.name(n)
    }

    /// The topology's name.
    pub fn topology(&self) -> String {
        self.sb.name("nat")
    }

    /// `netbridge ARGS -f FILE --prefix P`, asserting success.
    pub fn nb(&self, args: &[&str]) -> String {
        let prefix = self.sb.prefix();
        let mut full: Vec<&str> = args.to_vec();
        full.extend(["-f", &self.file, "--prefix", &prefix]);
        self.sb.nb_ok(&full)
    }

    /// `netbridge ARGS --name <lab>` (commands that take no file).
    pub fn nb_named(&self, args: &[&str]) -> String {
        let name = self.topology();
        let mut full: Vec<&str> = args.to_vec();
        full.extend(["--name", &name]);
        self.sb.nb_ok(&full)
    }

    pub fn sh(&self, ns: &str, script: &str) -> String {
        self.sb.sh(&self.ns(ns), script)
    }

    pub fn spawn(&mut self, ns: &str, argv: &[&str]) -> u32 {
        let ns = self.ns(ns);
        self.sb.spawn(&ns, argv)
    }

    pub fn conntrack(&self) -> Value {
        serde_json::from_str(&self.nb_named(&["conntrack", "--json"])).unwrap()
    }

    /// A drop or NAT counter by name (kernel figures from `stats`).
    pub fn counter(&self, name: &str) -> u64 {
        let v: Value = serde_json::from_str(&self.nb(&["stats", "--json"])).unwrap();
        v["drops"][name]
            .as_u64()
            .or_else(|| v["nat"]["counters"][name].as_u64())
            .unwrap_or_else(|| panic!("no counter {name} in {v}"))
    }

    /// UDP probes from `ns`: pairs "sport:dport" to `dst`; reply per pair.
    pub fn udp_probe(&self, ns: &str, dst: &str, pairs: &[String]) -> Value {
        let out = self.sh(
            ns,
            &format!(
                "python3 {} {dst} {}",
                script("udp_probe.py"),
                pairs.join(" ")
            ),
        );
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    /// Waits until a TCP or UDP port listens in `ns`.
    pub fn wait_listen(&self, ns: &str, proto: &str, port: u16) {
        let flag = if proto == "udp" { "-uln" } else { "-tln" };
        let ok = Sandbox::wait_for(Duration::from_secs(10), || {
            self.sh(ns, &format!("ss {flag}"))
                .contains(&format!(":{port} "))
                .then_some(())
        });
        assert!(ok.is_some(), "nothing listens on {proto}/{port} in {ns}");
    }

    /// A UDP echo server (tests/scripts/udp_echo.py) answering as `tag`.
    pub fn udp_echo(&mut self, ns: &str, port: u16, tag: &str) {
        let p = port.to_string();
        self.spawn(ns, &["python3", &script("udp_echo.py"), &p, tag, "300"]);
        self.wait_listen(ns, "udp", port);
    }

    /// Waits (bounded) until `cond` holds for the conntrack listing.
    pub fn wait_ct(&self, secs: u64, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
        Sandbox::wait_for(Duration::from_secs(secs), || {
            let ct = self.conntrack();
            cond(&ct).then_some(ct)
        })
        .unwrap_or_else(|| panic!("{what}: {}", self.conntrack()))
    }
}

/// The sessions of a conntrack listing.
pub fn sessions(ct: &Value) -> Vec<Value> {
    ct["sessions"].as_array().cloned().unwrap_or_default()
}
