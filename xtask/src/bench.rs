//! `cargo xtask bench`: the datapaths side by side, interleaved, in one run.
//!
//! Every setup is two sandbox namespaces ("client", "server") joined by a
//! different datapath; rounds run A B D D' A B D D' ... so drift (thermal,
//! noisy neighbours) hits every setup alike. Each tool is pinned: server on
//! the last CPU, client on CPU 0. Nothing touches the root namespace.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

const SERVER_IP: &str = "192.168.50.2";
const CLIENT_IP: &str = "192.168.50.1";

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Setup {
    /// A: a direct veth pair, the physical limit.
    Direct,
    /// B: two veths on a Linux bridge.
    LinuxBridge,
    /// D: netbridge, TC programs with bpf_redirect_peer.
    NetbridgeTc,
    /// D': netbridge, XDP programs with XDP_REDIRECT.
    NetbridgeXdp,
}

impl Setup {
    const ALL: [Setup; 4] = [
        Setup::Direct,
        Setup::LinuxBridge,
        Setup::NetbridgeTc,
        Setup::NetbridgeXdp,
    ];
    fn label(self) -> &'static str {
        match self {
            Setup::Direct => "A direct veth",
            Setup::LinuxBridge => "B linux bridge",
            Setup::NetbridgeTc => "D netbridge tc",
            Setup::NetbridgeXdp => "D' netbridge xdp",
        }
    }
    fn key(self) -> &'static str {
        match self {
            Setup::Direct => "direct",
            Setup::LinuxBridge => "bridge",
            Setup::NetbridgeTc => "netbridge_tc",
            Setup::NetbridgeXdp => "netbridge_xdp",
        }
    }
}

/// Workloads and their unit; higher is better except latency. udp64_pps
/// and rr_* use iperf3 and ping; udp64_pps_rust and udp_rr_* the tools in
/// crr.rs.
const WORKLOADS: [(&str, &str, bool); 7] = [
    ("tcp_stream", "Gbit/s", true),
    ("udp64_pps", "kpps", true),
    ("udp64_pps_rust", "kpps", true),
    ("rr_p50", "us", false),
    ("rr_p99", "us", false),
    ("udp_rr_tps", "ktps", true),
    ("udp_rr_p50", "us", false),
];

fn sh(ns: Option<&str>, script: &str) -> Result<String> {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{ns}"))
                .args(["--", "sh", "-c", script]);
            c
        }
        None => {
            let mut c = Command::new("sh");
            c.args(["-c", script]);
            c
        }
    };
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {script}"))?;
    if !out.status.success() {
        bail!(
            "`{script}` in {} failed: {}",
            ns.unwrap_or("(bench host)"),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn add_netns(names: &[&str]) -> Result<()> {
    for n in names {
        sh(
            None,
            &format!("ip netns add {n} && ip -n {n} link set lo up"),
        )?;
    }
    Ok(())
}

/// One setup's namespaces; removed on drop, also on error or panic.
struct Lab {
    prefix: String,
    netbridge: PathBuf,
    topo_file: Option<PathBuf>,
}

impl Lab {
    fn ns(&self, role: &str) -> String {
        format!("{}{role}", self.prefix)
    }

    /// `netbridge up` of `file` under this lab's prefix; `down` on drop.
    fn netbridge_up(&mut self, file: PathBuf) -> Result<()> {
        self.topo_file = Some(file.clone());
        let out = Command::new(&self.netbridge)
            .args(["up", "-f"])
            .arg(&file)
            .args(["--prefix", &self.prefix])
            .output()?;
        if !out.status.success() {
            bail!(
                "netbridge up {}: {}",
                file.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    fn up(setup: Setup, id: &str, netbridge: &Path, dir: &Path) -> Result<Lab> {
        let mut lab = Lab {
            prefix: format!("nbb{id}{}-", setup.key().chars().next().unwrap_or('x')),
            netbridge: netbridge.to_path_buf(),
            topo_file: None,
        };
        let (c, s, h) = (lab.ns("client"), lab.ns("server"), lab.ns("host"));
        match setup {
            Setup::Direct => {
                add_netns(&[&c, &s])?;
                sh(
                    None,
                    &format!("ip -n {c} link add eth0 type veth peer name eth0 netns {s}"),
                )?;
                for (n, ip) in [(&c, CLIENT_IP), (&s, SERVER_IP)] {
                    sh(
                        None,
                        &format!(
                            "ip -n {n} addr add {ip}/24 dev eth0 && ip -n {n} link set eth0 up"
                        ),
                    )?;
                }
            }
            Setup::LinuxBridge => {
                add_netns(&[&c, &s, &h])?;
                sh(
                    None,
                    &format!("ip -n {h} link add br0 type bridge && ip -n {h} link set br0 up"),
                )?;
                for (n, port, ip) in [(&c, "p-client", CLIENT_IP), (&s, "p-server", SERVER_IP)] {
                    sh(
                        None,
                        &format!(
                            "ip -n {h} link add {port} type veth peer name eth0 netns {n} && \
                             ip -n {h} link set {port} master br0 up && \
                             ip -n {n} addr add {ip}/24 dev eth0 && ip -n {n} link set eth0 up"
                        ),
                    )?;
                }
            }
            Setup::NetbridgeTc | Setup::NetbridgeXdp => {
                let datapath = if setup == Setup::NetbridgeXdp {
                    "xdp"
                } else {
                    "tc"
                };
                let file = dir.join(format!("{}{datapath}.toml", lab.prefix));
                std::fs::write(
                    &file,
                    format!(
                        "name = \"bench\"\nhost_netns = \"host\"\ndatapath = \"{datapath}\"\n\
                         [bridge]\nname = \"br0\"\n\
                         [[namespace]]\nname = \"client\"\nhost_ifname = \"p-client\"\naddresses = [\"{CLIENT_IP}/24\"]\n\
                         [[namespace]]\nname = \"server\"\nhost_ifname = \"p-server\"\naddresses = [\"{SERVER_IP}/24\"]\n"
                    ),
                )?;
                lab.netbridge_up(file)?;
            }
        }
        // Warm up ARP and, for netbridge, the FDB.
        sh(Some(&c), &format!("ping -c 3 -i 0.2 -W 2 -q {SERVER_IP}"))?;
        Ok(lab)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(f) = &self.topo_file {
            let _ = Command::new(&self.netbridge)
                .args(["down", "-f"])
                .arg(f)
                .args(["--prefix", &self.prefix])
                .stdout(Stdio::null())
                .status();
            let _ = std::fs::remove_file(f);
        }
        for role in ["client", "server", "host"] {
            let n = self.ns(role);
            if Path::new("/run/netns").join(&n).exists() {
                let _ = sh(None, &format!("ip netns del {n}"));
            }
        }
    }
}

/// The NAT comparison: a lab host ("client", 192.168.50.1) on a bridge in
/// "host", whose uplink (203.0.113.1) faces "server" (203.0.113.2). SNAT:
/// client -> server; DNAT: server -> 203.0.113.1:5201 -> client:5201.
const NAT_UPLINK: &str = "203.0.113.1";
const NAT_SERVER: &str = "203.0.113.2";

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum NatSetup {
    /// C: Linux bridge + iptables MASQUERADE/DNAT (the seeds' way).
    Iptables,
    /// D: netbridge, BPF NAT on the uplink.
    Netbridge,
}

impl NatSetup {
    const ALL: [NatSetup; 2] = [NatSetup::Iptables, NatSetup::Netbridge];
    fn label(self) -> &'static str {
        match self {
            NatSetup::Iptables => "C bridge+iptables",
            NatSetup::Netbridge => "D netbridge nat",
        }
    }
    fn key(self) -> &'static str {
        match self {
            NatSetup::Iptables => "iptables_nat",
            NatSetup::Netbridge => "netbridge_nat",
        }
    }
}

/// NAT workloads: (name, unit, higher is better).
const NAT_WORKLOADS: [(&str, &str, bool); 13] = [
    ("snat_tcp_stream", "Gbit/s", true),
    ("snat_udp64_pps", "kpps", true),
    ("snat_udp64_pps_rust", "kpps", true),
    ("snat_rr_p50", "us", false),
    ("snat_udp_rr_tps", "ktps", true),
    ("snat_udp_rr_p50", "us", false),
    ("dnat_tcp_stream", "Gbit/s", true),
    ("dnat_udp64_pps", "kpps", true),
    ("dnat_udp64_pps_rust", "kpps", true),
    ("dnat_udp_rr_tps", "ktps", true),
    ("dnat_udp_rr_p50", "us", false),
    ("dnat_crr", "kconn/s", true),
    ("dnat_crr_1000fwd", "kconn/s", true),
];

/// Extra forwards (or iptables DNAT rules, all evaluated before the measured
/// one) for the 1,000-forward scale run.
const SCALE_FORWARDS: usize = 999;
/// NAT sessions for the 100,000-session scale run: 1,000 source ports x 100
/// destination ports.
const SCALE_SESSIONS: (u32, u32) = (1000, 100);

fn nat_lab(setup: NatSetup, id: &str, netbridge: &Path, dir: &Path, extra: usize) -> Result<Lab> {
    let mut lab = Lab {
        prefix: format!(
            "nbn{id}{}{}-",
            &setup.key()[..1],
            if extra > 0 { "x" } else { "" }
        ),
        netbridge: netbridge.to_path_buf(),
        topo_file: None,
    };
    let (c, s, h) = (lab.ns("client"), lab.ns("server"), lab.ns("host"));
    match setup {
        NatSetup::Iptables => {
            add_netns(&[&c, &s, &h])?;
            sh(
                None,
                &format!(
                    "set -e
                     ip -n {h} link add br0 type bridge && ip -n {h} link set br0 up
                     ip -n {h} addr add 192.168.50.254/24 dev br0
                     ip -n {h} link add p-client type veth peer name eth0 netns {c}
                     ip -n {h} link set p-client master br0 up
                     ip -n {c} addr add {CLIENT_IP}/24 dev eth0 && ip -n {c} link set eth0 up
                     ip -n {c} route add default via 192.168.50.254
                     ip -n {h} link add uplink0 type veth peer name eth0 netns {s}
                     ip -n {h} addr add {NAT_UPLINK}/24 dev uplink0 && ip -n {h} link set uplink0 up
                     ip -n {s} addr add {NAT_SERVER}/24 dev eth0 && ip -n {s} link set eth0 up
                     ip netns exec {h} sysctl -qw net.ipv4.ip_forward=1
                     ip netns exec {h} iptables -t nat -A POSTROUTING -s 192.168.50.0/24 -o uplink0 -j MASQUERADE
                     ip netns exec {h} iptables -t nat -A PREROUTING -i uplink0 -p tcp --dport 5201 -j DNAT --to-destination {CLIENT_IP}:5201
                     ip netns exec {h} iptables -t nat -A PREROUTING -i uplink0 -p udp --dport 5201 -j DNAT --to-destination {CLIENT_IP}:5201
"
                ),
            )?;
            if extra > 0 {
                // Inserted in front: every new connection to 5201 walks them.
                let mut rules = String::from("*nat\n");
                for i in 0..extra {
                    let p = 10000 + i;
                    let _ = writeln!(
                        rules,
                        "-I PREROUTING 1 -i uplink0 -p tcp --dport {p} -j DNAT --to-destination {CLIENT_IP}:{p}"
                    );
                }
                rules.push_str("COMMIT\n");
                let file = dir.join(format!("{}rules", lab.prefix));
                std::fs::write(&file, rules)?;
                let r = sh(
                    Some(&h),
                    &format!("iptables-restore --noflush < {}", file.display()),
                );
                let _ = std::fs::remove_file(&file);
                r?;
            }
        }
        NatSetup::Netbridge => {
            let file = dir.join(format!("{}nat.toml", lab.prefix));
            std::fs::write(
                &file,
                nat_lab_toml(
                    "benchnat",
                    "192.168.50.254",
                    CLIENT_IP,
                    NAT_UPLINK,
                    NAT_SERVER,
                    &format!(
                        "max_sessions = {}\n\
                         [[forward]]\nproto = \"tcp\"\nport = 5201\nto = \"client:5201\"\n\
                         [[forward]]\nproto = \"udp\"\nport = 5201\nto = \"client:5201\"\n{}",
                        // The highest limit: the bench opens many short
                        // connections and never runs the GC.
                        netbridge_common::MAX_SESSIONS_LIMIT,
                        (0..extra)
                            .map(|i| format!(
                                "[[forward]]\nproto = \"tcp\"\nport = {0}\nto = \"client:{0}\"\n",
                                10000 + i
                            ))
                            .collect::<String>()
                    ),
                ),
            )?;
            lab.netbridge_up(file)?;
        }
    }
    sh(Some(&c), &format!("ping -c 3 -i 0.2 -W 2 -q {NAT_SERVER}"))?;
    Ok(lab)
}

/// The NAT lab as a netbridge topology (bench and soak): lab host "client"
/// (`client`/24, default via the bridge at `gateway`) behind "uplink0"
/// (`uplink`/24), which faces "server" (`server`/24). `uplink_extra` ends
/// the `[uplink]` table and may add tables after it (forwards).
pub(crate) fn nat_lab_toml(
    name: &str,
    gateway: &str,
    client: &str,
    uplink: &str,
    server: &str,
    uplink_extra: &str,
) -> String {
    format!(
        "name = \"{name}\"\nhost_netns = \"host\"\n\
         [bridge]\nname = \"br0\"\naddresses = [\"{gateway}/24\"]\n\
         [[namespace]]\nname = \"client\"\nhost_ifname = \"p-client\"\naddresses = [\"{client}/24\"]\n\
         routes = [{{ to = \"default\", via = \"{gateway}\" }}]\n\
         [[namespace]]\nname = \"server\"\nbridge = false\n\
         [[link]]\na = {{ ifname = \"uplink0\", addresses = [\"{uplink}/24\"] }}\n\
         b = {{ netns = \"server\", ifname = \"eth0\", addresses = [\"{server}/24\"] }}\n\
         [uplink]\nifname = \"uplink0\"\nmasquerade = true\n{uplink_extra}"
    )
}

/// Servers are pinned here, clients on CPU 0.
fn last_cpu() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get() - 1)
        .unwrap_or(0)
}

/// New connections per second through DNAT: upstream -> uplink:5201 ->
/// client:5201 (a transaction server there).
fn dnat_crr(lab: &Lab, secs: u32) -> Result<f64> {
    let last_cpu = last_cpu();
    let _server = crate::crr::Server::start(
        &lab.ns("client"),
        format!("{CLIENT_IP}:5201").parse()?,
        last_cpu,
    )?;
    crate::crr::client(
        &lab.ns("server"),
        format!("{NAT_UPLINK}:5201").parse()?,
        secs as f64,
        0,
    )
}

/// Opens SCALE_SESSIONS UDP sessions from the lab host through SNAT.
fn fill_sessions(lab: &Lab) -> Result<()> {
    let (ports, dports) = SCALE_SESSIONS;
    let script = format!(
        "import socket\nsocks = []\nfor p in range(40000, 40000 + {ports}):\n    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n    s.bind(('0.0.0.0', p))\n    socks.append(s)\nfor d in range(20000, 20000 + {dports}):\n    for s in socks:\n        s.sendto(b'x', ('{NAT_SERVER}', d))\n"
    );
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", lab.ns("client")))
        .args(["--", "python3", "-c", &script])
        .output()?;
    if !out.status.success() {
        bail!("filling sessions: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// The Rust tools from namespace `c` to `sv`, port 5201 (a forwarded port
/// on the NAT paths): UDP-64 rate received at `bind`, then UDP
/// request/response to an echo server there, both addressed to `target`.
/// Returns (kpps, ktps, p50 us).
fn rust_tools(c: &str, sv: &str, bind: &str, target: &str, secs: u32) -> Result<(f64, f64, f64)> {
    let last_cpu = last_cpu();
    let (bind, target): (std::net::SocketAddr, std::net::SocketAddr) = (
        format!("{bind}:5201").parse()?,
        format!("{target}:5201").parse()?,
    );
    let pps = crate::crr::udp_blast(c, sv, bind, target, secs as f64, 0, last_cpu)?;
    let _echo = crate::crr::UdpEcho::start(sv, bind, last_cpu)?;
    let (tps, p50, _) = crate::crr::udp_rr(c, target, secs as f64, 0)?;
    Ok((pps / 1e3, tps / 1e3, p50))
}

/// One NAT round: SNAT stream, packet rate and latency, DNAT stream and rate.
fn nat_round(lab: &Lab, opts: &Options, s: &mut BTreeMap<&'static str, Vec<f64>>) -> Result<()> {
    let (c, sv) = (lab.ns("client"), lab.ns("server"));
    s.entry("snat_tcp_stream").or_default().push(iperf_between(
        &c, &sv, NAT_SERVER, NAT_SERVER, opts.secs, false,
    )?);
    s.entry("snat_udp64_pps").or_default().push(iperf_between(
        &c, &sv, NAT_SERVER, NAT_SERVER, opts.secs, true,
    )?);
    let (p50, _) = rr_between(&c, NAT_SERVER, opts.rr_count)?;
    s.entry("snat_rr_p50").or_default().push(p50);
    s.entry("dnat_tcp_stream").or_default().push(iperf_between(
        &sv, &c, CLIENT_IP, NAT_UPLINK, opts.secs, false,
    )?);
    s.entry("dnat_udp64_pps").or_default().push(iperf_between(
        &sv, &c, CLIENT_IP, NAT_UPLINK, opts.secs, true,
    )?);
    s.entry("dnat_crr")
        .or_default()
        .push(dnat_crr(lab, opts.secs)? / 1e3);
    let (pps, tps, p50) = rust_tools(&c, &sv, NAT_SERVER, NAT_SERVER, opts.secs)?;
    s.entry("snat_udp64_pps_rust").or_default().push(pps);
    s.entry("snat_udp_rr_tps").or_default().push(tps);
    s.entry("snat_udp_rr_p50").or_default().push(p50);
    let (pps, tps, p50) = rust_tools(&sv, &c, CLIENT_IP, NAT_UPLINK, opts.secs)?;
    s.entry("dnat_udp64_pps_rust").or_default().push(pps);
    s.entry("dnat_udp_rr_tps").or_default().push(tps);
    s.entry("dnat_udp_rr_p50").or_default().push(p50);
    Ok(())
}

/// Runs an iperf3 client against a one-shot server, both pinned.
fn iperf(lab: &Lab, secs: u32, udp64: bool) -> Result<f64> {
    let (c, s) = (lab.ns("client"), lab.ns("server"));
    iperf_between(&c, &s, SERVER_IP, SERVER_IP, secs, udp64)
}

/// iperf3 from namespace `c` to a one-shot server in `s` bound to `bind`,
/// reached at `target` (differs through DNAT). Gbit/s or receiver kpps.
fn iperf_between(
    c: &str,
    s: &str,
    bind: &str,
    target: &str,
    secs: u32,
    udp64: bool,
) -> Result<f64> {
    let last_cpu = last_cpu();
    let mut server = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{s}"))
        .args([
            "--",
            "taskset",
            "-c",
            &last_cpu.to_string(),
            "iperf3",
            "-s",
            "-1",
            "-B",
            bind,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(300));
    let args = if udp64 {
        format!("-u -b 0 -l 64 -t {secs}")
    } else {
        format!("-t {secs}")
    };
    let out = sh(
        Some(c),
        &format!(
            "timeout {} taskset -c 0 iperf3 -c {target} {args} -J",
            secs + 10
        ),
    );
    let _ = server.kill();
    let _ = server.wait();
    let v: serde_json::Value = serde_json::from_str(&out?).context("iperf3 JSON")?;
    if udp64 {
        // Packets the receiver got per second.
        let sum = &v["end"]["sum"];
        let sent = sum["packets"].as_f64().context("udp packets")?;
        let lost = sum["lost_packets"].as_f64().unwrap_or(0.0);
        let secs = sum["seconds"].as_f64().unwrap_or(secs as f64);
        Ok((sent - lost) / secs / 1e3)
    } else {
        let bps = v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .context("tcp bits_per_second")?;
        Ok(bps / 1e9)
    }
}

/// Request/response latency: `count` ICMP echo exchanges, one outstanding
/// at a time; returns (p50, p99) in microseconds.
fn rr(lab: &Lab, count: u32) -> Result<(f64, f64)> {
    rr_between(&lab.ns("client"), SERVER_IP, count)
}

/// `count` ICMP echo exchanges from namespace `c` to `target`, one
/// outstanding at a time; (p50, p99) in microseconds.
fn rr_between(c: &str, target: &str, count: u32) -> Result<(f64, f64)> {
    let out = sh(
        Some(c),
        &format!("taskset -c 0 ping -c {count} -i 0.002 -W 1 {target}"),
    )?;
    let mut rtts: Vec<f64> = out
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.split_whitespace().next())
        .filter_map(|t| t.parse::<f64>().ok())
        .map(|ms| ms * 1000.0)
        .collect();
    if rtts.is_empty() {
        bail!("no RTTs measured");
    }
    rtts.sort_by(f64::total_cmp);
    let pct = |p: f64| rtts[((rtts.len() - 1) as f64 * p).round() as usize];
    Ok((pct(0.50), pct(0.99)))
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let m = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[m - 1] + v[m]) / 2.0
    } else {
        v[m]
    }
}

pub struct Options {
    pub rounds: u32,
    pub secs: u32,
    pub rr_count: u32,
}

/// Namespaces brought up by the `up`-time comparison.
const UP_NAMESPACES: usize = 100;

/// Seconds for `netbridge up` of a bridge with `n` namespaces vs a shell
/// script of the equivalent `ip` commands (netbridge also attaches and pins
/// its programs, the script does not). Both are torn down afterwards.
fn up_time(netbridge: &Path, id: &str, n: usize, dir: &Path) -> Result<(f64, f64)> {
    let prefix = format!("nbu{id}-");
    let mut toml = String::from(
        "name = \"up100\"\nhost_netns = \"h\"\n[bridge]\nname = \"br0\"\naddresses = [\"192.168.60.254/24\"]\n",
    );
    for i in 0..n {
        let _ = write!(
            toml,
            "[[namespace]]\nname = \"n{i}\"\nhost_ifname = \"p{i}\"\naddresses = [\"192.168.60.{}/24\"]\n",
            i + 1
        );
    }
    let file = dir.join(format!("{prefix}up.toml"));
    std::fs::write(&file, toml)?;
    let t0 = Instant::now();
    let out = Command::new(netbridge)
        .args(["up", "-f"])
        .arg(&file)
        .args(["--prefix", &prefix])
        .output()?;
    let nb = t0.elapsed().as_secs_f64();
    let down = Command::new(netbridge)
        .args(["down", "-f"])
        .arg(&file)
        .args(["--prefix", &prefix])
        .output();
    let _ = std::fs::remove_file(&file);
    if !out.status.success() {
        bail!(
            "netbridge up of {n} namespaces: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if !down?.status.success() {
        bail!("netbridge down of {n} namespaces failed");
    }

    let h = format!("{prefix}ip-h");
    let mut script = format!(
        "set -e\nip netns add {h}\nip -n {h} link set lo up\nip -n {h} link add br0 type bridge\n\
         ip -n {h} addr add 192.168.60.254/24 dev br0\nip -n {h} link set br0 up\n"
    );
    for i in 0..n {
        let ns = format!("{prefix}ip-n{i}");
        let _ = write!(
            script,
            "ip netns add {ns}\nip -n {ns} link set lo up\n\
             ip -n {h} link add p{i} type veth peer name eth0 netns {ns}\n\
             ip -n {h} link set p{i} master br0 up\n\
             ip -n {ns} addr add 192.168.60.{}/24 dev eth0\nip -n {ns} link set eth0 up\n",
            i + 1
        );
    }
    let t0 = Instant::now();
    let result = sh(None, &script);
    let ip = t0.elapsed().as_secs_f64();
    for i in 0..n {
        let ns = format!("{prefix}ip-n{i}");
        if Path::new("/run/netns").join(&ns).exists() {
            let _ = sh(None, &format!("ip netns del {ns}"));
        }
    }
    let _ = sh(None, &format!("ip netns del {h}"));
    result?;
    Ok((nb, ip))
}

/// The bench inside the root-namespace guard: it fails if the bench
/// changed the root network namespace or left a process behind.
pub fn run(root: &Path, netbridge: &Path, opts: &Options) -> Result<()> {
    let id = format!("{:05}", std::process::id() % 100_000);
    let guard = crate::rootns::Guard::begin()?;
    let result = run_rounds(root, netbridge, opts, &id);
    // Every namespace of this run starts with one of these (Lab, nat_lab, up_time).
    let ours = ["nbb", "nbn", "nbu"].map(|k| format!("{k}{id}"));
    let check = guard.finish(&ours);
    match (result, check) {
        (Err(e), Err(c)) => Err(e.context(format!("and after it: {c:#}"))),
        (r, c) => r.and(c),
    }
}

fn run_rounds(root: &Path, netbridge: &Path, opts: &Options, id: &str) -> Result<()> {
    let out_dir = root.join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    // samples[setup][workload] = one value per round
    let mut samples: BTreeMap<Setup, BTreeMap<&str, Vec<f64>>> = BTreeMap::new();
    let started = Instant::now();
    let (mut up_nb, mut up_ip) = (Vec::new(), Vec::new());
    let mut nat_samples: BTreeMap<NatSetup, BTreeMap<&str, Vec<f64>>> = BTreeMap::new();
    let mut sessions_filled: Vec<f64> = Vec::new();
    let total = opts.rounds as usize * Setup::ALL.len();
    let mut done = 0;
    for round in 1..=opts.rounds {
        for setup in Setup::ALL {
            done += 1;
            eprintln!(
                "bench: [{done}/{total}] round {round}/{} {:<17} ({:.0}s elapsed)",
                opts.rounds,
                setup.label(),
                started.elapsed().as_secs_f64()
            );
            let lab = Lab::up(setup, id, netbridge, &out_dir)?;
            let s = samples.entry(setup).or_default();
            s.entry("tcp_stream")
                .or_default()
                .push(iperf(&lab, opts.secs, false)?);
            s.entry("udp64_pps")
                .or_default()
                .push(iperf(&lab, opts.secs, true)?);
            let (p50, p99) = rr(&lab, opts.rr_count)?;
            s.entry("rr_p50").or_default().push(p50);
            s.entry("rr_p99").or_default().push(p99);
            let (c, sv) = (lab.ns("client"), lab.ns("server"));
            let (pps, tps, rr50) = rust_tools(&c, &sv, SERVER_IP, SERVER_IP, opts.secs)?;
            s.entry("udp64_pps_rust").or_default().push(pps);
            s.entry("udp_rr_tps").or_default().push(tps);
            s.entry("udp_rr_p50").or_default().push(rr50);
            drop(lab);
        }
        for setup in NatSetup::ALL {
            eprintln!(
                "bench: round {round}/{} NAT paths: {:<17} ({:.0}s elapsed)",
                opts.rounds,
                setup.label(),
                started.elapsed().as_secs_f64()
            );
            let lab = nat_lab(setup, id, netbridge, &out_dir, 0)?;
            nat_round(&lab, opts, nat_samples.entry(setup).or_default())?;
            drop(lab);
            eprintln!(
                "bench: round {round}/{} scale: {:<17} with {} more forwards",
                opts.rounds,
                setup.label(),
                SCALE_FORWARDS
            );
            let lab = nat_lab(setup, id, netbridge, &out_dir, SCALE_FORWARDS)?;
            let v = dnat_crr(&lab, opts.secs)? / 1e3;
            let s = nat_samples.entry(setup).or_default();
            s.entry("dnat_crr_1000fwd").or_default().push(v);
            if setup == NatSetup::Netbridge {
                // SNAT packet rate with 100,000 live sessions in the table.
                eprintln!(
                    "bench: round {round}/{} scale: {} SNAT sessions",
                    opts.rounds,
                    SCALE_SESSIONS.0 * SCALE_SESSIONS.1
                );
                fill_sessions(&lab)?;
                let live = Command::new(netbridge)
                    .args(["conntrack", "--json", "--name"])
                    .arg(format!("{}benchnat", lab.prefix))
                    .output()?;
                let live: serde_json::Value =
                    serde_json::from_slice(&live.stdout).unwrap_or_default();
                sessions_filled.push(live["live_sessions"].as_f64().unwrap_or(0.0));
                let (c, sv) = (lab.ns("client"), lab.ns("server"));
                s.entry("snat_udp64_pps_100k")
                    .or_default()
                    .push(iperf_between(
                        &c, &sv, NAT_SERVER, NAT_SERVER, opts.secs, true,
                    )?);
            }
        }
        eprintln!(
            "bench: round {round}/{}: up of {UP_NAMESPACES} namespaces, netbridge vs ip script",
            opts.rounds
        );
        let (nb, ip) = up_time(netbridge, id, UP_NAMESPACES, &out_dir)?;
        up_nb.push(nb);
        up_ip.push(ip);
    }

    let med = |s: Setup, w: &str| {
        median(
            samples
                .get(&s)
                .and_then(|m| m.get(w))
                .map(Vec::as_slice)
                .unwrap_or(&[]),
        )
    };
    let mut table = String::new();
    let _ = writeln!(
        table,
        "medians of {} interleaved rounds ({} s per stream, {} RR exchanges); ratios are netbridge / baseline\n",
        opts.rounds, opts.secs, opts.rr_count
    );
    let _ = writeln!(
        table,
        "{:<15} {:>7} {:>10} {:>10} {:>10} {:>10} {:>8} {:>8} {:>8} {:>8}",
        "workload", "unit", "A direct", "B bridge", "D tc", "D' xdp", "D/A", "D/B", "D'/A", "D'/B"
    );
    let mut json_workloads = serde_json::Map::new();
    for (w, unit, _) in WORKLOADS {
        let (a, b, d, x) = (
            med(Setup::Direct, w),
            med(Setup::LinuxBridge, w),
            med(Setup::NetbridgeTc, w),
            med(Setup::NetbridgeXdp, w),
        );
        let _ = writeln!(
            table,
            "{w:<15} {unit:>7} {a:>10.2} {b:>10.2} {d:>10.2} {x:>10.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
            d / a,
            d / b,
            x / a,
            x / b
        );
        let per_setup: serde_json::Map<String, serde_json::Value> = Setup::ALL
            .iter()
            .map(|s| {
                let v = samples
                    .get(s)
                    .and_then(|m| m.get(w))
                    .cloned()
                    .unwrap_or_default();
                (
                    s.key().to_string(),
                    serde_json::json!({"median": med(*s, w), "samples": v}),
                )
            })
            .collect();
        json_workloads.insert(
            w.to_string(),
            serde_json::json!({"unit": unit, "setups": per_setup,
                "ratios": {"tc_vs_direct": d / a, "tc_vs_bridge": d / b, "xdp_vs_direct": x / a, "xdp_vs_bridge": x / b}}),
        );
    }
    let (up_nb_med, up_ip_med) = (median(&up_nb), median(&up_ip));
    let _ = writeln!(
        table,
        "\nup of {UP_NAMESPACES} namespaces on a bridge: netbridge {up_nb_med:.2} s (with programs attached), \
         ip-command script {up_ip_med:.2} s, ratio {:.2}",
        up_nb_med / up_ip_med
    );
    let nat_med = |s: NatSetup, w: &str| {
        nat_samples
            .get(&s)
            .and_then(|m| m.get(w))
            .map(|v| median(v))
            .unwrap_or(f64::NAN)
    };
    let _ = writeln!(
        table,
        "\nNAT paths (lab host behind the uplink; SNAT: lab -> upstream, DNAT: upstream -> forwarded port)\n\n{:<20} {:>7} {:>12} {:>12} {:>8}",
        "workload", "unit", "C iptables", "D netbridge", "D/C"
    );
    let mut json_nat = serde_json::Map::new();
    for (w, unit, _) in NAT_WORKLOADS {
        let (c, d) = (
            nat_med(NatSetup::Iptables, w),
            nat_med(NatSetup::Netbridge, w),
        );
        let _ = writeln!(
            table,
            "{w:<20} {unit:>7} {c:>12.2} {d:>12.2} {:>8.2}",
            d / c
        );
        json_nat.insert(
            w.to_string(),
            serde_json::json!({"unit": unit,
                "samples": NatSetup::ALL.iter().map(|s| (s.key(), nat_samples.get(s).and_then(|m| m.get(w)).cloned().unwrap_or_default())).collect::<BTreeMap<_, _>>(),
                "medians": {"iptables_nat": c, "netbridge_nat": d},
                "ratios": {"netbridge_vs_iptables": d / c}}),
        );
    }
    let (c1, c1000) = (
        nat_med(NatSetup::Iptables, "dnat_crr"),
        nat_med(NatSetup::Iptables, "dnat_crr_1000fwd"),
    );
    let (d1, d1000) = (
        nat_med(NatSetup::Netbridge, "dnat_crr"),
        nat_med(NatSetup::Netbridge, "dnat_crr_1000fwd"),
    );
    let (s100, s100k) = (
        nat_med(NatSetup::Netbridge, "snat_udp64_pps"),
        nat_med(NatSetup::Netbridge, "snat_udp64_pps_100k"),
    );
    let _ = writeln!(
        table,
        "\nscale: 1,000 forwards vs 1,000 iptables DNAT rules (new connections/s through the last one):\n  \
         iptables {c1000:.2} kconn/s ({:.2} of its 1-rule rate), netbridge {d1000:.2} kconn/s ({:.2} of its 1-forward rate); netbridge/iptables {:.2}\n\
         scale: SNAT UDP-64 with {:.0} live sessions vs a handful: {s100k:.1} vs {s100:.1} kpps, ratio {:.2}",
        c1000 / c1,
        d1000 / d1,
        d1000 / c1000,
        median(&sessions_filled),
        s100k / s100
    );
    print!("{table}");
    let json = serde_json::json!({
        "rounds": opts.rounds, "seconds_per_stream": opts.secs, "rr_exchanges": opts.rr_count,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "workloads": json_workloads,
        "nat_workloads": json_nat,
        "scale": {"forwards": SCALE_FORWARDS + 1, "crr_1000_vs_1": {"iptables": c1000 / c1, "netbridge": d1000 / d1},
                  "crr_1000_netbridge_vs_iptables": d1000 / c1000,
                  "sessions_filled": sessions_filled, "snat_udp64_100k_vs_few": s100k / s100},
        "up_namespaces": {"count": UP_NAMESPACES, "netbridge_secs": up_nb, "ip_script_secs": up_ip,
                          "ratio": up_nb_med / up_ip_med},
    });
    std::fs::write(
        out_dir.join("results.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    std::fs::write(out_dir.join("results.txt"), &table)?;
    let labels: Vec<&str> = Setup::ALL.iter().map(|s| s.label()).collect();
    std::fs::write(
        out_dir.join("results.svg"),
        svg(
            "netbridge bench: bridged paths, medians relative to A (direct veth = 1.0)",
            &WORKLOADS,
            &labels,
            &|k, w| med(Setup::ALL[k], w),
        ),
    )?;
    let labels: Vec<&str> = NatSetup::ALL.iter().map(|s| s.label()).collect();
    std::fs::write(
        out_dir.join("results-nat.svg"),
        svg(
            "netbridge bench: NAT paths, medians relative to C (bridge + iptables = 1.0)",
            &NAT_WORKLOADS,
            &labels,
            &|k, w| nat_med(NatSetup::ALL[k], w),
        ),
    )?;
    eprintln!(
        "bench: wrote {}/results.{{txt,json,svg}} and results-nat.svg in {:.0}s",
        out_dir.display(),
        started.elapsed().as_secs_f64()
    );
    crate::bench_cni::run(root, netbridge, opts.rounds, opts.secs, id)?;
    Ok(())
}

/// Grouped bar chart: one panel per workload, one bar per setup
/// (`labels`), normalised to the first setup. `val(setup index, workload)`.
fn svg(
    title: &str,
    workloads: &[(&str, &str, bool)],
    labels: &[&str],
    val: &dyn Fn(usize, &str) -> f64,
) -> String {
    let colors = ["#888888", "#4477aa", "#228833", "#ccbb44"];
    let (pw, ph, pad) = (230.0, 220.0, 40.0);
    let width = pad + workloads.len() as f64 * (pw + pad);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{pad}\" y=\"20\" font-size=\"14\">{title}</text>\n",
        ph + 110.0
    );
    for (i, (w, unit, higher_better)) in workloads.iter().enumerate() {
        let x0 = pad + i as f64 * (pw + pad);
        let y0 = 50.0;
        let base = val(0, w);
        let vals: Vec<f64> = (0..labels.len()).map(|k| val(k, w) / base).collect();
        let max = vals
            .iter()
            .cloned()
            .filter(|v| v.is_finite())
            .fold(1.0, f64::max)
            * 1.1;
        let _ = writeln!(
            s,
            "<text x=\"{x0}\" y=\"{}\">{w} ({unit}, {} is better)</text>",
            y0 - 6.0,
            if *higher_better { "higher" } else { "lower" }
        );
        let _ = writeln!(
            s,
            "<line x1=\"{x0}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>",
            y0 + ph,
            x0 + pw,
            y0 + ph
        );
        let bw = pw / (vals.len() as f64 * 1.5);
        for (j, v) in vals.iter().enumerate() {
            let v = if v.is_finite() { *v } else { 0.0 };
            let h = v / max * ph;
            let x = x0 + j as f64 * bw * 1.5 + bw * 0.25;
            let _ = writeln!(
                s,
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{bw:.1}\" height=\"{h:.1}\" fill=\"{}\"/>\n\
                 <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{v:.2}</text>",
                y0 + ph - h,
                colors[j % colors.len()],
                x + bw / 2.0,
                y0 + ph - h - 3.0
            );
        }
    }
    for (j, label) in labels.iter().enumerate() {
        let x = pad + j as f64 * 160.0;
        let y = ph + 85.0;
        let _ = writeln!(
            s,
            "<rect x=\"{x}\" y=\"{y}\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">{label}</text>",
            colors[j % colors.len()],
            x + 16.0,
            y + 10.0
        );
    }
    s.push_str("</svg>\n");
    s
}
