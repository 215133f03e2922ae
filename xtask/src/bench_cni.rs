//! `cargo xtask bench`, CNI part: `netbridge-cni` against the reference
//! `bridge` + `portmap` plugins (Debian's containernetworking-plugins), in
//! the same run, rounds interleaved. Each setup is a sandbox node (its
//! uplink 203.0.113.1 facing an upstream namespace, 203.0.113.2) and two
//! pod namespaces attached by calling the plugins as a runtime does
//! (ADD/DEL with the CNI environment; host-local IPAM; tcp and udp 5201
//! published). Workloads (iperf3, server pinned to the last CPU, client
//! to CPU 0): pod to pod, and upstream to the published port (DNAT), each
//! as a TCP stream and as UDP with 64-byte payloads counted at the
//! receiver. Nothing touches the root namespace; every namespace starts
//! with the bench's `nbb<id>` prefix.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

use crate::bench::{Pin, iperf_between, median, sh};

const UPLINK: &str = "203.0.113.1";
const PORT: u16 = 5201;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Plugin {
    /// R: the reference bridge + portmap (iptables DNAT and MASQUERADE).
    Reference,
    /// N: netbridge-cni (BPF bridging, forwards, masquerade).
    Netbridge,
}

impl Plugin {
    const ALL: [Plugin; 2] = [Plugin::Reference, Plugin::Netbridge];
    fn label(self) -> &'static str {
        match self {
            Plugin::Reference => "R bridge+portmap",
            Plugin::Netbridge => "N netbridge-cni",
        }
    }
    fn key(self) -> &'static str {
        match self {
            Plugin::Reference => "reference",
            Plugin::Netbridge => "netbridge",
        }
    }
}

/// (workload, unit): TCP in Gbit/s, UDP-64 in received kpps.
const WORKLOADS: [(&str, &str); 4] = [
    ("pod_tcp_stream", "Gbit/s"),
    ("pod_udp64_pps", "kpps"),
    ("published_tcp_stream", "Gbit/s"),
    ("published_udp64_pps", "kpps"),
];

/// One setup: node, upstream and two pods, attached by `plugin`; DEL and
/// removal on drop (also on error).
struct Setup {
    plugin: Plugin,
    prefix: String,
    bins: PathBuf,
    dir: PathBuf,
    attached: Vec<usize>,
}

impl Setup {
    fn ns(&self, role: &str) -> String {
        format!("{}{role}", self.prefix)
    }

    fn net(&self) -> String {
        format!("{}net", self.prefix)
    }

    fn up(plugin: Plugin, id: &str, bins: &Path, dir: &Path) -> Result<(Setup, String)> {
        let prefix = format!("nbb{id}c{}-", &plugin.key()[..1]);
        let mut s = Setup {
            plugin,
            prefix: prefix.clone(),
            bins: bins.to_path_buf(),
            dir: dir.join(format!("{prefix}ipam")),
            attached: Vec::new(),
        };
        for role in ["node", "up", "pa", "pb"] {
            let n = s.ns(role);
            sh(
                None,
                &format!("ip netns add {n} && ip -n {n} link set lo up"),
            )?;
        }
        let (node, up) = (s.ns("node"), s.ns("up"));
        sh(
            None,
            &format!(
                "ip -n {node} link add uplink0 type veth peer name eth0 netns {up} && \
                 ip -n {node} addr add {UPLINK}/24 dev uplink0 && ip -n {node} link set uplink0 up && \
                 ip -n {up} addr add 203.0.113.2/24 dev eth0 && ip -n {up} link set eth0 up"
            ),
        )?;
        let mut ip_a = String::new();
        for (i, pod) in ["pa", "pb"].iter().enumerate() {
            let r = s.cni("ADD", i, pod)?;
            s.attached.push(i);
            if i == 0 {
                ip_a = r["ips"][0]["address"]
                    .as_str()
                    .and_then(|a| a.split('/').next())
                    .context("no address in the ADD result")?
                    .to_string();
            }
        }
        // Warm up ARP and the FDB.
        sh(
            Some(&s.ns("pb")),
            &format!("ping -c 3 -i 0.2 -W 2 -q {ip_a}"),
        )?;
        Ok((s, ip_a))
    }

    /// The network list as libcni hands it to each plugin.
    fn confs(&self) -> Vec<serde_json::Value> {
        let maps = serde_json::json!([
            {"hostPort": PORT, "containerPort": PORT, "protocol": "tcp"},
            {"hostPort": PORT, "containerPort": PORT, "protocol": "udp"}]);
        let mut main = serde_json::json!({
            "cniVersion": "1.0.0", "name": self.net(), "bridge": "cnibench0",
            "isGateway": true, "ipMasq": true, "hairpinMode": true,
            "ipam": {"type": "host-local", "dataDir": self.dir,
                     "ranges": [[{"subnet": "192.168.61.0/24", "gateway": "192.168.61.1"}]],
                     "routes": [{"dst": "0.0.0.0/0"}]}
        });
        match self.plugin {
            Plugin::Netbridge => {
                main["type"] = "netbridge-cni".into();
                main["uplink"] = "uplink0".into();
                main["runtimeConfig"] = serde_json::json!({ "portMappings": maps });
                vec![main]
            }
            Plugin::Reference => {
                main["type"] = "bridge".into();
                let portmap = serde_json::json!({"cniVersion": "1.0.0", "name": self.net(),
                    "type": "portmap", "runtimeConfig": {"portMappings": maps}});
                vec![main, portmap]
            }
        }
    }

    /// Runs the list for pod `i` (ADD in order, DEL in reverse); the last
    /// ADD result. Only pod 0 publishes the ports.
    fn cni(&self, verb: &str, i: usize, pod: &str) -> Result<serde_json::Value> {
        let mut confs = self.confs();
        if i != 0 {
            confs.truncate(1);
            confs[0].as_object_mut().unwrap().remove("runtimeConfig");
        }
        if verb == "DEL" {
            confs.reverse();
        }
        let mut prev = serde_json::Value::Null;
        for mut conf in confs {
            if verb == "ADD" && !prev.is_null() {
                conf["prevResult"] = prev.clone();
            }
            let ty = conf["type"].as_str().unwrap().to_string();
            let bin = if ty == "netbridge-cni" {
                self.bins.join(&ty)
            } else {
                PathBuf::from("/usr/lib/cni").join(&ty)
            };
            let mut child = Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", self.ns("node")))
                .arg("--")
                .arg(&bin)
                .env("CNI_COMMAND", verb)
                .env("CNI_CONTAINERID", format!("{}{pod}", self.prefix))
                .env("CNI_NETNS", format!("/run/netns/{}", self.ns(pod)))
                .env("CNI_IFNAME", "eth0")
                .env("CNI_PATH", format!("{}:/usr/lib/cni", self.bins.display()))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .with_context(|| format!("running {}", bin.display()))?;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(conf.to_string().as_bytes())?;
            let out = child.wait_with_output()?;
            if !out.status.success() {
                bail!(
                    "{ty} {verb} {pod}: {} {}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            if verb == "ADD" {
                prev = serde_json::from_slice(&out.stdout).context("ADD result")?;
            }
        }
        Ok(prev)
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        for i in std::mem::take(&mut self.attached).into_iter().rev() {
            let _ = self.cni("DEL", i, ["pa", "pb"][i]);
        }
        if self.plugin == Plugin::Netbridge {
            let _ = Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", self.ns("node")))
                .arg("--")
                .arg(self.bins.join("netbridge"))
                .args(["down", "--name", &self.net()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            for dir in ["/run/netbridge/cni", "/run/netbridge/locks"] {
                let p = Path::new(dir).join(self.net());
                let _ = std::fs::remove_dir_all(&p);
                let _ = std::fs::remove_file(p.with_extension("lock"));
            }
        }
        for role in ["pa", "pb", "up", "node"] {
            let n = self.ns(role);
            if Path::new("/run/netns").join(&n).exists() {
                let _ = sh(None, &format!("ip netns del {n}"));
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The CNI comparison: `rounds` interleaved rounds of `secs`-second
/// streams; prints a table and writes target/bench/cni.{txt,json}.
/// `netbridge` is the netbridge binary (netbridge-cni sits beside it).
pub fn run(root: &Path, netbridge: &Path, rounds: u32, secs: u32, id: &str) -> Result<()> {
    let bins = netbridge.parent().context("netbridge binary's directory")?;
    if !bins.join("netbridge-cni").is_file() {
        bail!(
            "{}/netbridge-cni missing: cargo build -p netbridge --bins",
            bins.display()
        );
    }
    for p in ["bridge", "portmap", "host-local"] {
        if !Path::new("/usr/lib/cni").join(p).is_file() {
            bail!(
                "/usr/lib/cni/{p} missing: install containernetworking-plugins (cargo xtask setup)"
            );
        }
    }
    let out_dir = root.join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    let mut samples: BTreeMap<Plugin, BTreeMap<&str, Vec<f64>>> = BTreeMap::new();
    for round in 1..=rounds {
        for plugin in Plugin::ALL {
            eprintln!("bench: round {round}/{rounds} CNI: {}", plugin.label());
            let (setup, ip_a) = Setup::up(plugin, id, bins, &out_dir)?;
            let s = samples.entry(plugin).or_default();
            let (pa, pb, up) = (setup.ns("pa"), setup.ns("pb"), setup.ns("up"));
            for (w, client, target, udp) in [
                ("pod_tcp_stream", &pb, ip_a.as_str(), false),
                ("pod_udp64_pps", &pb, ip_a.as_str(), true),
                ("published_tcp_stream", &up, UPLINK, false),
                ("published_udp64_pps", &up, UPLINK, true),
            ] {
                s.entry(w).or_default().push(iperf_between(
                    client,
                    &pa,
                    None,
                    target,
                    secs,
                    udp,
                    Pin::Pinned,
                )?);
            }
            drop(setup);
        }
    }
    let med = |p: Plugin, w: &str| {
        median(
            samples
                .get(&p)
                .and_then(|m| m.get(w))
                .map_or(&[][..], |v| v),
        )
    };
    let mut table = format!(
        "\nCNI plugins, medians of {rounds} interleaved rounds ({secs} s per stream); N/R > 1 is better\n\n\
         {:<22} {:>7} {:>18} {:>18} {:>6}\n",
        "workload",
        "unit",
        Plugin::Reference.label(),
        Plugin::Netbridge.label(),
        "N/R"
    );
    let mut json = serde_json::Map::new();
    for (w, unit) in WORKLOADS {
        let (r, n) = (med(Plugin::Reference, w), med(Plugin::Netbridge, w));
        let _ = writeln!(
            table,
            "{w:<22} {unit:>7} {r:>18.2} {n:>18.2} {:>6.2}",
            n / r
        );
        let per: serde_json::Map<String, serde_json::Value> = Plugin::ALL
            .iter()
            .map(|p| {
                let v = samples
                    .get(p)
                    .and_then(|m| m.get(w))
                    .cloned()
                    .unwrap_or_default();
                (
                    p.key().to_string(),
                    serde_json::json!({"median": med(*p, w), "samples": v}),
                )
            })
            .collect();
        json.insert(
            w.to_string(),
            serde_json::json!({"unit": unit, "plugins": per, "netbridge_vs_reference": n / r}),
        );
    }
    print!("{table}");
    std::fs::write(out_dir.join("cni.txt"), &table)?;
    std::fs::write(
        out_dir.join("cni.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "rounds": rounds, "seconds_per_stream": secs, "workloads": json}))?,
    )?;
    Ok(())
}
