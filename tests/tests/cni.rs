//! CNI harness: drives a CNI plugin binary the way libcni and the reference
//! plugins' testutils do (environment + stdin, one process per call, a
//! network list executed in order for ADD/CHECK and in reverse for DEL, with
//! `prevResult` threaded through), inside a sandbox "node" namespace.
//!
//! Every scenario is written against a [`Subject`]: the plugin under test,
//! its versions and what it does on its own. Today the subject is Debian
//! 12's reference `bridge` plugin (+ `portmap`), the positive control that
//! proves the harness and the checks can pass and fail; `netbridge-cni`
//! becomes a second subject running the same scenarios once the engine can
//! add one port to a running topology. The reference `tuning` and
//! `bandwidth` plugins are chained after the subject: they parse its result
//! with Go's libcni types (bandwidth finds the host veth through
//! `interfaces[].sandbox`), so a malformed result fails the chain.
use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use netbridge::cni::{CniResult, CniVersion};
use netbridge_tests::{Sandbox, require_root};
use serde_json::{Value, json};

/// Where Debian's containernetworking-plugins installs the reference plugins.
const REFERENCE_DIR: &str = "/usr/lib/cni";

/// The plugin under test and what the scenarios may expect of it.
#[derive(Debug, Clone)]
struct Subject {
    /// `type` in the config: the binary's file name.
    plugin_type: &'static str,
    /// Directory holding it (first on CNI_PATH).
    dir: PathBuf,
    /// Versions it must serve; the others of 0.4.0/1.0.0/1.1.0 it must
    /// refuse with code 1.
    versions: Vec<CniVersion>,
    /// Publishes `runtimeConfig.portMappings` itself; else `portmap` is chained.
    maps_ports: bool,
    /// Plugins of the chain whose CHECK is known broken, left out of CHECK
    /// (what an admin's `disableCheck` is for).
    check_skips: &'static [&'static str],
}

impl Subject {
    /// Debian 12's reference bridge (containernetworking-plugins 1.1.1):
    /// up to 1.0.0, no GC/STATUS, ports through the chained portmap.
    fn reference_bridge() -> Subject {
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
            maps_ports: false,
            // portmap 1.1.1 CHECKs an IPv6 DNAT chain it never creates for an
            // IPv4-only result: "could not check ipv6 dnat: chain CNI-DN-...
            // not found in iptables table nat" (podman never calls CHECK).
            check_skips: &["portmap"],
        }
    }

    fn bin(&self) -> PathBuf {
        self.dir.join(self.plugin_type)
    }

    fn cni_path(&self) -> String {
        format!("{}:{REFERENCE_DIR}", self.dir.display())
    }
}

/// One plugin process's outcome.
#[derive(Debug)]
struct Outcome {
    rc: i32,
    stdout: String,
    stderr: String,
}

impl Outcome {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    /// Asserts a spec error object and returns its code.
    fn error_code(&self) -> u64 {
        assert_ne!(self.rc, 0, "expected a failure: {self:?}");
        let e = self.json();
        assert!(e["msg"].is_string(), "error without msg: {e}");
        e["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("error without code: {e}"))
    }
}

/// The per-attachment parameters (SPEC.md section 3).
#[derive(Debug, Clone)]
struct Attachment {
    container_id: String,
    netns: String,
    ifname: String,
    args: String,
    /// Capability arguments the runtime offers (e.g. portMappings).
    capability_args: Value,
}

/// Runs one plugin binary in the node namespace with CNI env and stdin.
fn exec(
    sb: &Sandbox,
    subject: &Subject,
    plugin: &str,
    command: &str,
    att: Option<&Attachment>,
    stdin: &Value,
) -> Outcome {
    let bin = if plugin == subject.plugin_type {
        subject.bin()
    } else {
        Path::new(REFERENCE_DIR).join(plugin)
    };
    let mut c: Command = sb.cmd(&sb.host, &[bin.to_str().unwrap()]);
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
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let o = Outcome {
        rc: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    println!(
        "{plugin} {command} {}: rc={} {}{}",
        att.map_or("", |a| a.ifname.as_str()),
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

/// A network configuration list, executed like libcni does.
struct NetList<'a> {
    sb: &'a Sandbox,
    subject: &'a Subject,
    version: CniVersion,
    name: String,
    plugins: Vec<Value>,
}

impl NetList<'_> {
    /// The request config of plugin `i` (SPEC.md "Deriving request
    /// configuration"): cniVersion, name, runtimeConfig from declared
    /// capabilities, prevResult; capabilities removed.
    fn request(&self, i: usize, att: Option<&Attachment>, prev: Option<&Value>) -> Value {
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
        }
        if let Some(p) = prev {
            o.insert("prevResult".into(), p.clone());
        }
        c
    }

    fn plugin_type(&self, i: usize) -> String {
        self.plugins[i]["type"].as_str().unwrap().to_string()
    }

    /// ADD in order; Ok(final result) or the first failure.
    fn add(&self, att: &Attachment) -> Result<Value, Outcome> {
        let mut prev: Option<Value> = None;
        for i in 0..self.plugins.len() {
            let req = self.request(i, Some(att), prev.as_ref());
            let o = exec(
                self.sb,
                self.subject,
                &self.plugin_type(i),
                "ADD",
                Some(att),
                &req,
            );
            if o.rc != 0 {
                return Err(o);
            }
            prev = Some(o.json());
        }
        Ok(prev.expect("a non-empty list"))
    }

    /// DEL in reverse with the final ADD result (None: as after a crash).
    fn del(&self, att: &Attachment, prev: Option<&Value>) -> Result<(), Outcome> {
        for i in (0..self.plugins.len()).rev() {
            let req = self.request(i, Some(att), prev);
            let o = exec(
                self.sb,
                self.subject,
                &self.plugin_type(i),
                "DEL",
                Some(att),
                &req,
            );
            if o.rc != 0 {
                return Err(o);
            }
            assert_eq!(o.stdout.trim(), "", "DEL prints nothing on success");
        }
        Ok(())
    }

    fn check(&self, att: &Attachment, prev: &Value) -> Result<(), Outcome> {
        for i in 0..self.plugins.len() {
            if self
                .subject
                .check_skips
                .contains(&self.plugin_type(i).as_str())
            {
                continue;
            }
            let req = self.request(i, Some(att), Some(prev));
            let o = exec(
                self.sb,
                self.subject,
                &self.plugin_type(i),
                "CHECK",
                Some(att),
                &req,
            );
            if o.rc != 0 {
                return Err(o);
            }
        }
        Ok(())
    }

    /// The subject alone (first plugin), with any verb and config tweak.
    fn subject_call(
        &self,
        verb: &str,
        att: Option<&Attachment>,
        tweak: impl FnOnce(&mut Value),
    ) -> Outcome {
        let mut req = self.request(0, att, None);
        tweak(&mut req);
        exec(
            self.sb,
            self.subject,
            self.subject.plugin_type,
            verb,
            att,
            &req,
        )
    }
}

/// Node, two containers and an upstream in one sandbox; the node's uplink
/// is 203.0.113.1/24, the upstream 203.0.113.2.
struct Lab {
    sb: Sandbox,
    ctrs: Vec<String>,
    upstream: String,
    ipam_dir: PathBuf,
    bridge: String,
}

impl Lab {
    fn new() -> Lab {
        let mut sb = Sandbox::new();
        let ctrs = vec![sb.add_ns("c1"), sb.add_ns("c2")];
        let upstream = sb.add_ns("up");
        let up_if = format!("u{}", sb.id);
        sb.veth(
            &sb.host,
            &up_if,
            Some("203.0.113.1/24"),
            &upstream,
            "eth0",
            Some("203.0.113.2/24"),
        );
        let ipam_dir = std::env::temp_dir().join(format!("nb-cni-{}", sb.id));
        let dir = ipam_dir.clone();
        sb.on_cleanup(move || {
            let _ = std::fs::remove_dir_all(dir);
        });
        let bridge = format!("cb{}", sb.id);
        Lab {
            sb,
            ctrs,
            upstream,
            ipam_dir,
            bridge,
        }
    }

    fn netlist<'a>(&'a self, subject: &'a Subject, version: CniVersion) -> NetList<'a> {
        let mut main = json!({
            "type": subject.plugin_type,
            "bridge": self.bridge,
            "isGateway": true,
            "ipMasq": true,
            "hairpinMode": true,
            "mtu": 1400,
            "ipam": {
                "type": "host-local",
                "dataDir": self.ipam_dir.join("leases"),
                "ranges": [[{"subnet": "192.168.93.0/24", "gateway": "192.168.93.1"}]],
                "routes": [{"dst": "0.0.0.0/0"}]
            }
        });
        let mut plugins = Vec::new();
        if subject.maps_ports {
            main["capabilities"] = json!({"portMappings": true});
            plugins.push(main);
        } else {
            plugins.push(main);
            plugins.push(json!({"type": "portmap", "capabilities": {"portMappings": true}}));
        }
        plugins.push(json!({"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.log_martians": "1"}}));
        plugins.push(
            json!({"type": "bandwidth", "ingressRate": 100_000_000, "ingressBurst": 1_000_000,
                            "egressRate": 100_000_000, "egressBurst": 1_000_000}),
        );
        NetList {
            sb: &self.sb,
            subject,
            version,
            name: format!("net{}", self.sb.id),
            plugins,
        }
    }

    fn attachment(&self, i: usize, host_port: u16) -> Attachment {
        Attachment {
            container_id: format!("ctr{i}-{}", self.sb.id),
            netns: format!("/run/netns/{}", self.ctrs[i]),
            ifname: "eth0".into(),
            args: format!("IgnoreUnknown=1;K8S_POD_NAME=pod{i};K8S_POD_NAMESPACE=default"),
            capability_args: json!({"portMappings": [{"hostPort": host_port, "containerPort": 80, "protocol": "tcp"}]}),
        }
    }

    fn leases(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.ipam_dir.join("leases"))
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
}

/// Every verb at one version against a subject that serves it.
fn full_lifecycle(subject: &Subject, version: CniVersion) {
    let mut lab = Lab::new();
    // A web server in c1 from the start (it binds before eth0 exists).
    let www = lab.ipam_dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "hello from c1\n").unwrap();
    let c1 = lab.ctrs[0].clone();
    let www = www.to_str().unwrap().to_string();
    lab.sb
        .spawn(&c1, &["busybox", "httpd", "-f", "-p", "80", "-h", &www]);
    let up_www = lab.ipam_dir.join("up-www");
    std::fs::create_dir_all(&up_www).unwrap();
    std::fs::write(up_www.join("index.html"), "hello from upstream\n").unwrap();
    let (up, up_www) = (lab.upstream.clone(), up_www.to_str().unwrap().to_string());
    lab.sb.spawn(
        &up,
        &["busybox", "httpd", "-f", "-p", "8000", "-h", &up_www],
    );
    let sb = &lab.sb;
    let net = lab.netlist(subject, version);

    // VERSION lists the version.
    let v = net.subject_call("VERSION", None, |_| {});
    assert_eq!(v.rc, 0);
    let listed = v.json()["supportedVersions"].clone();
    assert!(
        listed
            .as_array()
            .unwrap()
            .contains(&version.as_str().into()),
        "{listed}"
    );

    // ADD both containers through the whole chain.
    let (a1, a2) = (lab.attachment(0, 8080), lab.attachment(1, 8081));
    let r1 = net.add(&a1).unwrap_or_else(|o| panic!("ADD c1: {o:?}"));
    let r2 = net.add(&a2).unwrap_or_else(|o| panic!("ADD c2: {o:?}"));
    assert_eq!(r1["cniVersion"], version.as_str());
    // Our parser reads what the chain printed; the container interface has
    // the sandbox and the IP points at it.
    let p1 = CniResult::from_json(&r1).unwrap();
    let idx = p1
        .container_interface("eth0")
        .expect("container interface with sandbox");
    assert_eq!(
        p1.interfaces[idx].sandbox.as_deref(),
        Some(a1.netns.as_str())
    );
    assert_eq!(p1.ips[0].interface, Some(idx));
    let ip1 = p1.ips[0].address.addr().to_string();
    let ip2 = CniResult::from_json(&r2).unwrap().ips[0]
        .address
        .addr()
        .to_string();
    let mut both = vec![ip1.clone(), ip2.clone()];
    both.sort();
    assert_eq!(lab.leases(), both);

    // The chained Go plugins acted on the subject's result: tuning's sysctl
    // in the container, bandwidth's qdisc on the host veth it found by
    // interfaces[].sandbox.
    assert_eq!(
        sb.sh(&lab.ctrs[0], "sysctl -n net.ipv4.conf.eth0.log_martians")
            .trim(),
        "1"
    );
    let host_veth = &p1
        .interfaces
        .iter()
        .find(|i| i.sandbox.is_none() && i.name != lab.bridge)
        .unwrap()
        .name;
    let qd = sb.sh(&sb.host, &format!("tc qdisc show dev {host_veth}"));
    assert!(qd.contains("tbf"), "bandwidth shaped the host veth: {qd}");
    assert!(
        sb.sh(&lab.ctrs[0], "ip link show eth0")
            .contains("mtu 1400")
    );

    // Real traffic: container to container, to the gateway, a published port
    // from upstream, and out through the masquerade (upstream has no route
    // to the pod subnet, so only a masqueraded connection completes).
    sb.sh(&lab.ctrs[0], &format!("ping -c 2 -W 2 {ip2}"));
    sb.sh(&lab.ctrs[1], "ping -c 1 -W 2 192.168.93.1");
    let got = Sandbox::wait_for(std::time::Duration::from_secs(5), || {
        let o = sb.sh_output(&lab.upstream, "curl -sS -m 2 http://203.0.113.1:8080/");
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
    });
    assert_eq!(
        got.as_deref(),
        Some("hello from c1\n"),
        "published port from upstream"
    );
    // Upstream has no route back to the pod subnet: only a masqueraded
    // connection can complete.
    let route = sb.sh_output(&lab.upstream, "ip route get 192.168.93.3");
    assert!(
        !route.status.success(),
        "upstream must not route to the pods: {route:?}"
    );
    let got = sb.sh(&lab.ctrs[1], "curl -sS -m 5 http://203.0.113.2:8000/");
    assert_eq!(
        got, "hello from upstream\n",
        "c2 out through the masquerade"
    );

    // CHECK passes; a duplicate ADD of the same (id, ifname) fails as JSON.
    net.check(&a1, &r1)
        .unwrap_or_else(|o| panic!("CHECK: {o:?}"));
    let dup = net.subject_call("ADD", Some(&a1), |_| {});
    let code = dup.error_code();
    println!("duplicate ADD: code {code}");

    // DEL: everything of c1 goes, twice is fine, c2 is untouched.
    net.del(&a1, Some(&r1))
        .unwrap_or_else(|o| panic!("DEL: {o:?}"));
    assert!(!sb.sh(&lab.ctrs[0], "ip -o link").contains("eth0"));
    assert!(!sb.sh(&sb.host, "ip -o link").contains(host_veth.as_str()));
    assert_eq!(lab.leases(), vec![ip2.clone()]);
    net.del(&a1, Some(&r1))
        .unwrap_or_else(|o| panic!("second DEL: {o:?}"));
    sb.sh(&lab.ctrs[1], "ping -c 1 -W 2 192.168.93.1");

    // DEL without prevResult and with the netns gone (runtime crashed).
    netbridge::netns::delete(&lab.ctrs[1]).unwrap();
    net.del(&a2, None)
        .unwrap_or_else(|o| panic!("DEL, netns gone: {o:?}"));
    let mut gone = a2.clone();
    gone.netns = String::new();
    net.del(&gone, None)
        .unwrap_or_else(|o| panic!("DEL, empty CNI_NETNS: {o:?}"));
    assert_eq!(lab.leases(), Vec::<String>::new(), "every lease released");
}

/// What every subject must refuse, with spec error codes.
fn protocol_errors(subject: &Subject) {
    let lab = Lab::new();
    let net = lab.netlist(subject, CniVersion::V1_0_0);
    let a = lab.attachment(0, 8080);
    // Versions outside the subject's list: code 1.
    for v in CniVersion::SUPPORTED
        .into_iter()
        .filter(|v| !subject.versions.contains(v))
    {
        let o = net.subject_call("ADD", Some(&a), |c| c["cniVersion"] = v.as_str().into());
        assert_eq!(o.error_code(), 1, "{v}: {o:?}");
    }
    let o = net.subject_call("ADD", Some(&a), |c| c["cniVersion"] = "9.9.9".into());
    assert_eq!(o.error_code(), 1);
    // Missing env (no CNI_NETNS for ADD): code 4, naming it.
    let mut no_netns = a.clone();
    no_netns.netns = String::new();
    let o = net.subject_call("ADD", Some(&no_netns), |_| {});
    assert_eq!(o.error_code(), 4);
    assert!(
        o.json()["msg"].as_str().unwrap().contains("CNI_NETNS"),
        "{o:?}"
    );
    // Not JSON: code 6. Nothing was created by any of these.
    let bad = exec(
        &lab.sb,
        subject,
        subject.plugin_type,
        "ADD",
        Some(&a),
        &Value::String("{".into()),
    );
    assert_eq!(bad.error_code(), 6);
    assert!(!lab.sb.sh(&lab.ctrs[0], "ip -o link").contains("eth0"));
    assert_eq!(lab.leases(), Vec::<String>::new());
    // GC/STATUS: served from 1.1.0 by subjects that list it; the others
    // refuse (the reference 1.1.1 does not know the verbs).
    if !subject.versions.contains(&CniVersion::V1_1_0) {
        for verb in ["GC", "STATUS"] {
            let o = net.subject_call(verb, None, |c| {
                c["cniVersion"] = "1.1.0".into();
                c["cni.dev/valid-attachments"] = json!([]);
            });
            // 1.1.1 checks the env by its own table first: no CNI_CONTAINERID
            // (GC and STATUS have none) is code 3; else 1 or 4.
            let code = o.error_code();
            assert!([1, 3, 4].contains(&code), "{verb}: {o:?}");
        }
    }
}

#[test]
fn reference_bridge_lifecycle_cni_0_4_0() {
    require_root!();
    full_lifecycle(&Subject::reference_bridge(), CniVersion::V0_4_0);
}

#[test]
fn reference_bridge_lifecycle_cni_1_0_0() {
    require_root!();
    full_lifecycle(&Subject::reference_bridge(), CniVersion::V1_0_0);
}

#[test]
fn reference_bridge_protocol_errors() {
    require_root!();
    protocol_errors(&Subject::reference_bridge());
}
