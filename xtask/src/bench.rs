//! `cargo xtask bench`: the datapaths side by side, interleaved, in one run.
//!
//! Every setup is two sandbox namespaces ("client", "server") joined by a
//! different datapath; rounds run A B D D' A B D D' ... so drift (thermal,
//! noisy neighbours) hits every setup alike. Each workload runs twice:
//! pinned (server on the last CPU, client on CPU 0) and unpinned (the
//! scheduler decides, as in a user's lab). On the netbridge setups the
//! programs' own cost (ns per packet, from the kernel's BPF statistics) is
//! measured per path in separate short runs, so statistics never slow the
//! throughput runs. Nothing touches the root namespace.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    bench_scale::{BIG_NAMESPACES, UP_NAMESPACES},
    crr::{Blast, Target, Wait},
};

const SERVER_IP: &str = "192.168.50.2";
const CLIENT_IP: &str = "192.168.50.1";
/// The bridged labs are dual-stack: the `_v6` workloads use these.
const SERVER_IP6: &str = "fd00:50::2";
const CLIENT_IP6: &str = "fd00:50::1";

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Setup {
    /// A: a direct veth pair, the physical limit.
    Direct,
    /// B: two veths on a Linux bridge.
    LinuxBridge,
    /// F: the floor, host-side ports whose TC program only redirects
    /// (crate::floor): the best any TC port datapath can do.
    Floor,
    /// D: netbridge, TC programs with bpf_redirect_peer.
    NetbridgeTc,
    /// D': netbridge, XDP programs with XDP_REDIRECT.
    NetbridgeXdp,
}

impl Setup {
    const ALL: [Setup; 5] = [
        Setup::Direct,
        Setup::LinuxBridge,
        Setup::Floor,
        Setup::NetbridgeTc,
        Setup::NetbridgeXdp,
    ];
    fn label(self) -> &'static str {
        match self {
            Setup::Direct => "A direct veth",
            Setup::LinuxBridge => "B linux bridge",
            Setup::Floor => "F floor (redirect)",
            Setup::NetbridgeTc => "D netbridge tc",
            Setup::NetbridgeXdp => "D' netbridge xdp",
        }
    }
    fn key(self) -> &'static str {
        match self {
            Setup::Direct => "direct",
            Setup::LinuxBridge => "bridge",
            Setup::Floor => "floor",
            Setup::NetbridgeTc => "netbridge_tc",
            Setup::NetbridgeXdp => "netbridge_xdp",
        }
    }
}

/// Workloads and their unit; higher is better except latency. udp64_pps
/// and rr_* use iperf3 and ping; udp64_pps_rust and udp_rr_* the tools in
/// crr.rs (udp_rr_spin_*: both ends polling, see [`crate::crr::Wait`]).
const WORKLOADS: [(&str, &str, bool); 11] = [
    ("tcp_stream", "Gbit/s", true),
    ("udp64_pps", "kpps", true),
    ("udp64_pps_rust", "kpps", true),
    ("rr_p50", "us", false),
    ("rr_p99", "us", false),
    ("udp_rr_tps", "ktps", true),
    ("udp_rr_p50", "us", false),
    ("udp_rr_spin_p50", "us", false),
    ("udp64_pps_v6", "kpps", true),
    ("udp64_pps_rust_v6", "kpps", true),
    ("udp_rr_p50_v6", "us", false),
];

/// Where the tools run.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Pin {
    /// Client on CPU 0, server on the last CPU.
    Pinned,
    /// Wherever the scheduler puts them.
    Unpinned,
}

impl Pin {
    const ALL: [Pin; 2] = [Pin::Pinned, Pin::Unpinned];
    fn client(self) -> Option<usize> {
        (self == Pin::Pinned).then_some(0)
    }
    fn server(self) -> Option<usize> {
        (self == Pin::Pinned).then(last_cpu)
    }
    /// Sample key of workload `w` run this way.
    fn key(self, w: &str) -> String {
        match self {
            Pin::Pinned => w.to_string(),
            Pin::Unpinned => format!("{w}_unpinned"),
        }
    }
}

/// `taskset -c CPU ` for a shell command, or nothing.
fn taskset(cpu: Option<usize>) -> String {
    cpu.map(|c| format!("taskset -c {c} ")).unwrap_or_default()
}

pub(crate) fn sh(ns: Option<&str>, script: &str) -> Result<String> {
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
pub(crate) struct Lab {
    prefix: String,
    netbridge: PathBuf,
    topo_file: Option<PathBuf>,
    /// Setup F: the floor program's id.
    floor: Option<u32>,
}

impl Lab {
    pub(crate) fn ns(&self, role: &str) -> String {
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
            floor: None,
        };
        let (c, s, h) = (lab.ns("client"), lab.ns("server"), lab.ns("host"));
        match setup {
            Setup::Direct => {
                add_netns(&[&c, &s])?;
                sh(
                    None,
                    &format!("ip -n {c} link add eth0 type veth peer name eth0 netns {s}"),
                )?;
                for (n, ip, ip6) in [(&c, CLIENT_IP, CLIENT_IP6), (&s, SERVER_IP, SERVER_IP6)] {
                    sh(
                        None,
                        &format!(
                            "ip -n {n} addr add {ip}/24 dev eth0 && \
                             ip -n {n} addr add {ip6}/64 dev eth0 nodad && ip -n {n} link set eth0 up"
                        ),
                    )?;
                }
            }
            Setup::LinuxBridge | Setup::Floor => {
                add_netns(&[&c, &s, &h])?;
                let bridge = setup == Setup::LinuxBridge;
                if bridge {
                    sh(
                        None,
                        &format!("ip -n {h} link add br0 type bridge && ip -n {h} link set br0 up"),
                    )?;
                }
                let ends = [
                    (&c, "p-client", CLIENT_IP, CLIENT_IP6),
                    (&s, "p-server", SERVER_IP, SERVER_IP6),
                ];
                for (n, port, ip, ip6) in ends {
                    let master = if bridge { "master br0" } else { "" };
                    sh(
                        None,
                        &format!(
                            "ip -n {h} link add {port} type veth peer name eth0 netns {n} && \
                             ip -n {h} link set {port} {master} up && \
                             ip -n {n} addr add {ip}/24 dev eth0 && \
                             ip -n {n} addr add {ip6}/64 dev eth0 nodad && ip -n {n} link set eth0 up"
                        ),
                    )?;
                }
                if !bridge {
                    lab.floor = Some(crate::floor::attach(&h, "p-client", "p-server")?);
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
                         [[namespace]]\nname = \"client\"\nhost_ifname = \"p-client\"\naddresses = [\"{CLIENT_IP}/24\", \"{CLIENT_IP6}/64\"]\n\
                         [[namespace]]\nname = \"server\"\nhost_ifname = \"p-server\"\naddresses = [\"{SERVER_IP}/24\", \"{SERVER_IP6}/64\"]\n"
                    ),
                )?;
                lab.netbridge_up(file)?;
            }
        }
        // Warm up ARP / ND and, for netbridge, the FDB.
        sh(Some(&c), &format!("ping -c 3 -i 0.2 -W 2 -q {SERVER_IP}"))?;
        sh(
            Some(&c),
            &format!("ping -6 -c 3 -i 0.2 -W 2 -q {SERVER_IP6}"),
        )?;
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
        for role in ["client", "server", "host", "peer"] {
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
pub(crate) const NAT_UPLINK: &str = "203.0.113.1";
pub(crate) const NAT_SERVER: &str = "203.0.113.2";
/// The NAT labs are dual-stack (but the 1,000-forward one): NAT66 between
/// a ULA lab and the uplink's /64, for the `*66_*` workloads.
const NAT_GW6: &str = "fd00:51::fe";
const NAT_CLIENT6: &str = "fd00:51::1";
const NAT_UPLINK6: &str = "2001:db8:50::1";
const NAT_SERVER6: &str = "2001:db8:50::2";

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub(crate) enum NatSetup {
    /// C: Linux bridge + iptables MASQUERADE/DNAT (the seeds' way).
    Iptables,
    /// D: netbridge, BPF NAT on the uplink.
    Netbridge,
}

impl NatSetup {
    pub(crate) const ALL: [NatSetup; 2] = [NatSetup::Iptables, NatSetup::Netbridge];
    pub(crate) fn label(self) -> &'static str {
        match self {
            NatSetup::Iptables => "C bridge+iptables",
            NatSetup::Netbridge => "D netbridge nat",
        }
    }
    pub(crate) fn key(self) -> &'static str {
        match self {
            NatSetup::Iptables => "iptables_nat",
            NatSetup::Netbridge => "netbridge_nat",
        }
    }
}

/// NAT workloads: (name, unit, higher is better).
const NAT_WORKLOADS: [(&str, &str, bool); 19] = [
    ("snat_tcp_stream", "Gbit/s", true),
    ("snat_udp64_pps", "kpps", true),
    ("snat_udp64_pps_rust", "kpps", true),
    ("snat_rr_p50", "us", false),
    ("snat_udp_rr_tps", "ktps", true),
    ("snat_udp_rr_p50", "us", false),
    ("snat_udp_rr_spin_p50", "us", false),
    ("dnat_tcp_stream", "Gbit/s", true),
    ("dnat_udp64_pps", "kpps", true),
    ("dnat_udp64_pps_rust", "kpps", true),
    ("dnat_udp_rr_tps", "ktps", true),
    ("dnat_udp_rr_p50", "us", false),
    ("dnat_udp_rr_spin_p50", "us", false),
    ("dnat_crr", "kconn/s", true),
    ("dnat_crr_1000fwd", "kconn/s", true),
    ("snat66_udp64_pps_rust", "kpps", true),
    ("snat66_udp_rr_p50", "us", false),
    ("dnat66_udp64_pps_rust", "kpps", true),
    ("dnat66_udp_rr_p50", "us", false),
];

/// A second lab host in the netbridge NAT lab, the hairpin client.
const PEER_NS: &str = "[[namespace]]\nname = \"peer\"\nhost_ifname = \"p-peer\"\n\
     addresses = [\"192.168.50.3/24\"]\nroutes = [{ to = \"default\", via = \"192.168.50.254\" }]\n";

/// Extra forwards (or iptables DNAT rules, all evaluated before the measured
/// one) for the 1,000-forward scale run.
const SCALE_FORWARDS: usize = 999;
/// NAT sessions for the 100,000-session scale run: 1,000 source ports x 100
/// destination ports.
const SCALE_SESSIONS: (u32, u32) = (1000, 100);

fn nat_lab(setup: NatSetup, id: &str, netbridge: &Path, dir: &Path, extra: usize) -> Result<Lab> {
    let max = netbridge_common::MAX_SESSIONS_LIMIT;
    nat_lab_with(setup, id, netbridge, dir, extra, max)
}

/// The NAT lab with netbridge's `max_sessions` set (iptables: the host's
/// conntrack limit) and no extra forwards (the flood figure).
pub(crate) fn nat_lab_sessions(
    setup: NatSetup,
    id: &str,
    netbridge: &Path,
    dir: &Path,
    max_sessions: u32,
) -> Result<Lab> {
    nat_lab_with(setup, id, netbridge, dir, 0, max_sessions)
}

fn nat_lab_with(
    setup: NatSetup,
    id: &str,
    netbridge: &Path,
    dir: &Path,
    extra: usize,
    max_sessions: u32,
) -> Result<Lab> {
    let tag = match (
        extra > 0,
        max_sessions != netbridge_common::MAX_SESSIONS_LIMIT,
    ) {
        (true, _) => "x",
        (false, true) => "f",
        (false, false) => "",
    };
    let mut lab = Lab {
        prefix: format!("nbn{id}{}{tag}-", &setup.key()[..1]),
        netbridge: netbridge.to_path_buf(),
        topo_file: None,
        floor: None,
    };
    let (c, s, h) = (lab.ns("client"), lab.ns("server"), lab.ns("host"));
    // Dual-stack but with the 999 extra forwards: more than the IPv6
    // forward table holds (64), and the scale figure is IPv4's.
    let dual = extra == 0;
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
            if dual {
                sh(
                    None,
                    &format!(
                        "set -e
                         ip -n {h} addr add {NAT_GW6}/64 dev br0 nodad
                         ip -n {c} addr add {NAT_CLIENT6}/64 dev eth0 nodad
                         ip -n {c} -6 route add default via {NAT_GW6}
                         ip -n {h} addr add {NAT_UPLINK6}/64 dev uplink0 nodad
                         ip -n {s} addr add {NAT_SERVER6}/64 dev eth0 nodad
                         ip netns exec {h} sysctl -qw net.ipv6.conf.all.forwarding=1
                         ip netns exec {h} ip6tables -t nat -A POSTROUTING -s fd00:51::/64 -o uplink0 -j MASQUERADE
                         ip netns exec {h} ip6tables -t nat -A PREROUTING -i uplink0 -p tcp --dport 5201 -j DNAT --to-destination [{NAT_CLIENT6}]:5201
                         ip netns exec {h} ip6tables -t nat -A PREROUTING -i uplink0 -p udp --dport 5201 -j DNAT --to-destination [{NAT_CLIENT6}]:5201
"
                    ),
                )?;
            }
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
                    dual.then_some([NAT_GW6, NAT_CLIENT6, NAT_UPLINK6, NAT_SERVER6]),
                    &format!(
                        "max_sessions = {}\n\
                         [[forward]]\nproto = \"tcp\"\nport = 5201\nto = \"client:5201\"\n\
                         [[forward]]\nproto = \"udp\"\nport = 5201\nto = \"client:5201\"\n\
                         {PEER_NS}{}",
                        // The highest limit but for the flood figure: the
                        // bench opens many short connections.
                        max_sessions,
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
    if dual {
        sh(
            Some(&c),
            &format!("ping -6 -c 3 -i 0.2 -W 2 -q {NAT_SERVER6}"),
        )?;
    }
    Ok(lab)
}

/// The NAT lab as a netbridge topology (bench and soak): lab host "client"
/// (`client`/24, default via the bridge at `gateway`) behind "uplink0"
/// (`uplink`/24), which faces "server" (`server`/24). `v6` (gateway,
/// client, uplink, server; /64s) makes it dual-stack (NAT66).
/// `uplink_extra` ends the `[uplink]` table and may add tables after it
/// (forwards).
pub(crate) fn nat_lab_toml(
    name: &str,
    gateway: &str,
    client: &str,
    uplink: &str,
    server: &str,
    v6: Option<[&str; 4]>,
    uplink_extra: &str,
) -> String {
    let [gw6, c6, up6, s6] = v6
        .map(|a| a.map(|x| format!(", \"{x}/64\"")))
        .unwrap_or_default();
    let route6 = v6.map_or(String::new(), |a| {
        format!(", {{ to = \"::/0\", via = \"{}\" }}", a[0])
    });
    format!(
        "name = \"{name}\"\nhost_netns = \"host\"\n\
         [bridge]\nname = \"br0\"\naddresses = [\"{gateway}/24\"{gw6}]\n\
         [[namespace]]\nname = \"client\"\nhost_ifname = \"p-client\"\naddresses = [\"{client}/24\"{c6}]\n\
         routes = [{{ to = \"default\", via = \"{gateway}\" }}{route6}]\n\
         [[namespace]]\nname = \"server\"\nbridge = false\n\
         [[link]]\na = {{ ifname = \"uplink0\", addresses = [\"{uplink}/24\"{up6}] }}\n\
         b = {{ netns = \"server\", ifname = \"eth0\", addresses = [\"{server}/24\"{s6}] }}\n\
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
fn dnat_crr(lab: &Lab, secs: f64, pin: Pin) -> Result<f64> {
    let _server = crate::crr::Server::start(
        &lab.ns("client"),
        format!("{CLIENT_IP}:5201").parse()?,
        pin.server(),
    )?;
    crate::crr::client(
        &lab.ns("server"),
        format!("{NAT_UPLINK}:5201").parse()?,
        secs,
        pin.client(),
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
fn rust_tools(
    c: &str,
    sv: &str,
    bind: &str,
    target: &str,
    secs: f64,
    pin: Pin,
) -> Result<(f64, f64, f64)> {
    let (bind, target) = (
        SocketAddr::new(bind.parse()?, 5201),
        SocketAddr::new(target.parse()?, 5201),
    );
    let pps = crate::crr::udp_blast(&Blast {
        tx_ns: c,
        rx_ns: sv,
        tx_bind: if target.is_ipv6() { ANY6 } else { ANY },
        rx_bind: bind,
        target: Target::To(target),
        secs,
        tx_cpu: pin.client(),
        rx_cpu: pin.server(),
    })?;
    let (tps, p50) = udp_rr(c, sv, bind, target, secs, pin, Wait::Block)?;
    Ok((pps / 1e3, tps / 1e3, p50))
}

/// UDP request/response from namespace `c` to an echo server in `sv`
/// bound to `bind`, addressed to `target`, both ends waiting `wait`'s way.
/// Returns (ktps, p50 us).
fn udp_rr(
    c: &str,
    sv: &str,
    bind: SocketAddr,
    target: SocketAddr,
    secs: f64,
    pin: Pin,
    wait: Wait,
) -> Result<(f64, f64)> {
    let _echo = crate::crr::UdpEcho::start(sv, bind, pin.server(), wait)?;
    let (tps, p50, _) = crate::crr::udp_rr(c, target, secs, pin.client(), wait)?;
    Ok((tps / 1e3, p50))
}

/// p50 (us) of [`udp_rr`] with both ends polling, port 5201 (a forwarded
/// port on the NAT paths).
fn spin_rr_p50(c: &str, sv: &str, bind: &str, target: &str, secs: f64, pin: Pin) -> Result<f64> {
    let (bind, target) = (
        SocketAddr::new(bind.parse()?, 5201),
        SocketAddr::new(target.parse()?, 5201),
    );
    Ok(udp_rr(c, sv, bind, target, secs, pin, Wait::Spin)?.1)
}

/// Any local address and port.
const ANY: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);
const ANY6: SocketAddr = SocketAddr::new(std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), 0);

/// One NAT round run `pin`'s way: SNAT stream, packet rate and latency,
/// DNAT stream, rate and connection rate; SNAT66 and DNAT66 packet rate
/// and UDP latency.
fn nat_round(lab: &Lab, opts: &Options, s: &mut Samples, pin: Pin) -> Result<()> {
    let (c, sv) = (lab.ns("client"), lab.ns("server"));
    let mut put = |w: &str, v: f64| s.entry(pin.key(w)).or_default().push(v);
    if opts.iperf(pin) {
        for (w, udp64) in [("snat_tcp_stream", false), ("snat_udp64_pps", true)] {
            put(
                w,
                iperf_between(&c, &sv, Some(NAT_SERVER), NAT_SERVER, opts.secs, udp64, pin)?,
            );
        }
        for (w, udp64) in [("dnat_tcp_stream", false), ("dnat_udp64_pps", true)] {
            put(
                w,
                iperf_between(&sv, &c, Some(CLIENT_IP), NAT_UPLINK, opts.secs, udp64, pin)?,
            );
        }
    }
    put(
        "snat_rr_p50",
        rr_between(&c, NAT_SERVER, opts.rr_count, pin)?.0,
    );
    let secs = opts.tool_secs(pin);
    put("dnat_crr", dnat_crr(lab, secs, pin)? / 1e3);
    let (pps, tps, p50) = rust_tools(&c, &sv, NAT_SERVER, NAT_SERVER, secs, pin)?;
    put("snat_udp64_pps_rust", pps);
    put("snat_udp_rr_tps", tps);
    put("snat_udp_rr_p50", p50);
    let spin = spin_rr_p50(&c, &sv, NAT_SERVER, NAT_SERVER, secs, pin)?;
    put("snat_udp_rr_spin_p50", spin);
    let (pps, tps, p50) = rust_tools(&sv, &c, CLIENT_IP, NAT_UPLINK, secs, pin)?;
    put("dnat_udp64_pps_rust", pps);
    put("dnat_udp_rr_tps", tps);
    put("dnat_udp_rr_p50", p50);
    let spin = spin_rr_p50(&sv, &c, CLIENT_IP, NAT_UPLINK, secs, pin)?;
    put("dnat_udp_rr_spin_p50", spin);
    // NAT66: the same tools over IPv6 (masquerade, the forward of 5201).
    let (pps, _, p50) = rust_tools(&c, &sv, NAT_SERVER6, NAT_SERVER6, secs, pin)?;
    put("snat66_udp64_pps_rust", pps);
    put("snat66_udp_rr_p50", p50);
    let (pps, _, p50) = rust_tools(&sv, &c, NAT_CLIENT6, NAT_UPLINK6, secs, pin)?;
    put("dnat66_udp64_pps_rust", pps);
    put("dnat66_udp_rr_p50", p50);
    Ok(())
}

/// iperf3 between the lab's client and server.
fn iperf(lab: &Lab, secs: u32, udp64: bool, pin: Pin) -> Result<f64> {
    let (c, s) = (lab.ns("client"), lab.ns("server"));
    iperf_between(&c, &s, Some(SERVER_IP), SERVER_IP, secs, udp64, pin)
}

/// iperf3 from namespace `c` to a one-shot server in `s` (bound to
/// `bind` if given), reached at `target` (differs through DNAT). Gbit/s,
/// or kpps the receiver got (UDP, 64-byte payloads). Also the CNI bench's.
pub(crate) fn iperf_between(
    c: &str,
    s: &str,
    bind: Option<&str>,
    target: &str,
    secs: u32,
    udp64: bool,
    pin: Pin,
) -> Result<f64> {
    let mut server = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{s}"))
        .args(["--", "sh", "-c"])
        .arg(format!(
            "exec {}iperf3 -s -1{}",
            taskset(pin.server()),
            bind.map(|b| format!(" -B {b}")).unwrap_or_default()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let args = if udp64 {
        format!("-u -b 0 -l 64 -t {secs}")
    } else {
        format!("-t {secs}")
    };
    let client = format!(
        "timeout {} {}iperf3 -c {target} {args} -J",
        secs + 10,
        taskset(pin.client())
    );
    // Retried until the server listens (it starts in well under a second):
    // cheaper than a fixed wait long enough for a loaded machine.
    let mut out = None;
    for _ in 0..40 {
        std::thread::sleep(Duration::from_millis(50));
        let o = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{c}"))
            .args(["--", "sh", "-c", &client])
            .stdin(Stdio::null())
            .output()?;
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        if o.status.success() || !text.contains("unable to connect") {
            out = Some((o.status.success(), text));
            break;
        }
    }
    let _ = server.kill();
    let _ = server.wait();
    let (ok, out) = out.with_context(|| format!("iperf3 server in {s} never answered"))?;
    if !ok {
        bail!("`{client}` in {c} failed: {}", out.trim());
    }
    let v: serde_json::Value = serde_json::from_str(&out).context("iperf3 JSON")?;
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
fn rr(lab: &Lab, count: u32, pin: Pin) -> Result<(f64, f64)> {
    rr_between(&lab.ns("client"), SERVER_IP, count, pin)
}

/// `count` ICMP echo exchanges from namespace `c` to `target`, one
/// outstanding at a time; (p50, p99) in microseconds.
fn rr_between(c: &str, target: &str, count: u32, pin: Pin) -> Result<(f64, f64)> {
    let out = sh(
        Some(c),
        &format!(
            "{}ping -c {count} -i 0.002 -W 1 {target}",
            taskset(pin.client())
        ),
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

pub(crate) fn median(v: &[f64]) -> f64 {
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
    /// Only the flood figure (`--flood-only`).
    pub flood_only: bool,
}

impl Options {
    /// Seconds of UDP-64 per path for the programs' cost.
    fn cost_secs(&self) -> f64 {
        if self.quick() {
            0.6
        } else {
            (self.secs as f64).min(3.0)
        }
    }

    /// 1 s streams: the `--quick` smoke test.
    fn quick(&self) -> bool {
        self.secs <= 1
    }

    /// Seconds of the Rust tools' runs `pin`'s way: `--quick` halves the
    /// unpinned ones (a smoke test of that pass).
    fn tool_secs(&self, pin: Pin) -> f64 {
        if self.quick() && pin == Pin::Unpinned {
            0.5
        } else {
            self.secs as f64
        }
    }

    /// Whether `pin` runs the iperf3 workloads. With 1 s streams (the
    /// `--quick` smoke test) the unpinned pass keeps to ping and the Rust
    /// tools, which cost the least time per run: iperf3's start-up and
    /// handshake take about as long as a 1 s stream.
    fn iperf(&self, pin: Pin) -> bool {
        pin == Pin::Pinned || !self.quick()
    }
}

/// Samples of one setup: workload key (see [`Pin::key`]) -> one per round.
type Samples = BTreeMap<String, Vec<f64>>;

/// One bridged round run `pin`'s way: every workload of [`WORKLOADS`].
fn bridged_round(lab: &Lab, opts: &Options, s: &mut Samples, pin: Pin) -> Result<()> {
    let mut put = |w: &str, v: f64| s.entry(pin.key(w)).or_default().push(v);
    if opts.iperf(pin) {
        put("tcp_stream", iperf(lab, opts.secs, false, pin)?);
        put("udp64_pps", iperf(lab, opts.secs, true, pin)?);
    }
    let (p50, p99) = rr(lab, opts.rr_count, pin)?;
    put("rr_p50", p50);
    put("rr_p99", p99);
    let (c, sv) = (lab.ns("client"), lab.ns("server"));
    let (pps, tps, rr50) = rust_tools(&c, &sv, SERVER_IP, SERVER_IP, opts.tool_secs(pin), pin)?;
    put("udp64_pps_rust", pps);
    put("udp_rr_tps", tps);
    put("udp_rr_p50", rr50);
    let spin = spin_rr_p50(&c, &sv, SERVER_IP, SERVER_IP, opts.tool_secs(pin), pin)?;
    put("udp_rr_spin_p50", spin);
    // The same over IPv6 (the port programs' IPv6 checks and fast path).
    if opts.iperf(pin) {
        let v6 = iperf_between(&c, &sv, Some(SERVER_IP6), SERVER_IP6, opts.secs, true, pin)?;
        put("udp64_pps_v6", v6);
    }
    let (pps, _, rr50) = rust_tools(&c, &sv, SERVER_IP6, SERVER_IP6, opts.tool_secs(pin), pin)?;
    put("udp64_pps_rust_v6", pps);
    put("udp_rr_p50_v6", rr50);
    Ok(())
}

/// Program cost: path -> program -> mean ns per run, one per round.
struct Cost(BTreeMap<&'static str, BTreeMap<String, Vec<f64>>>);

/// The paths, in the order they are reported.
const COST_PATHS: [(&str, &str); 13] = [
    ("bridged", "lab host -> lab host, TC"),
    ("bridged_floor", "the same through F (redirect only)"),
    ("bridged_xdp", "lab host -> lab host, XDP"),
    ("snat_out", "lab host -> upstream"),
    ("snat_in", "upstream replies -> lab host"),
    ("dnat_in", "upstream -> forwarded port"),
    ("dnat_out", "forward target replies -> upstream"),
    ("hairpin_req", "lab host -> uplink address:forwarded port"),
    ("hairpin_rep", "forward target replies (hairpin)"),
    ("snat66_out", "IPv6: lab host -> upstream"),
    ("snat66_in", "IPv6: upstream replies -> lab host"),
    ("dnat66_in", "IPv6: upstream -> forwarded port"),
    ("dnat66_out", "IPv6: forward target replies -> upstream"),
];

impl Cost {
    fn new() -> Cost {
        Cost(BTreeMap::new())
    }
    fn add(&mut self, path: &'static str, programs: BTreeMap<String, f64>) {
        let p = self.0.entry(path).or_default();
        for (name, ns) in programs {
            p.entry(name).or_default().push(ns);
        }
    }
}

/// A pinned UDP-64 blast from `tx` to `to` (`ip:port`), received in `rx`
/// on the same port.
fn blast_to<'a>(tx: &'a str, rx: &'a str, to: &str, secs: f64) -> Result<Blast<'a>> {
    let to: SocketAddr = to.parse()?;
    Ok(Blast {
        tx_ns: tx,
        rx_ns: rx,
        tx_bind: any_of(&to, 0),
        rx_bind: any_of(&to, to.port()),
        target: Target::To(to),
        secs,
        tx_cpu: Pin::Pinned.client(),
        rx_cpu: Pin::Pinned.server(),
    })
}

/// A pinned UDP-64 blast in a reply direction: `rx` (bound to port
/// `rx_port`) opens the session with a datagram to `open` (reaching `tx`,
/// bound to port `tx_port`), which then blasts back (see [`Target`]).
fn blast_back<'a>(
    tx: &'a str,
    tx_port: u16,
    rx: &'a str,
    rx_port: u16,
    open: &str,
    secs: f64,
) -> Result<Blast<'a>> {
    let open: SocketAddr = open.parse()?;
    Ok(Blast {
        tx_ns: tx,
        rx_ns: rx,
        tx_bind: any_of(&open, tx_port),
        rx_bind: any_of(&open, rx_port),
        target: Target::ReplyTo(open),
        secs,
        tx_cpu: Pin::Pinned.client(),
        rx_cpu: Pin::Pinned.server(),
    })
}

/// The unspecified address of `to`'s family, port `port`.
fn any_of(to: &SocketAddr, port: u16) -> SocketAddr {
    let any = if to.is_ipv6() { ANY6 } else { ANY };
    SocketAddr::new(any.ip(), port)
}

/// The programs' cost on each NAT path of the netbridge NAT lab.
fn nat_cost(lab: &Lab, netbridge: &Path, opts: &Options, cost: &mut Cost) -> Result<()> {
    let (c, sv, peer) = (lab.ns("client"), lab.ns("server"), lab.ns("peer"));
    let fwd = format!("{NAT_UPLINK}:5201");
    let fwd6 = format!("[{NAT_UPLINK6}]:5201");
    let secs = opts.cost_secs();
    let paths = [
        (
            "snat_out",
            blast_to(&c, &sv, &format!("{NAT_SERVER}:5201"), secs)?,
        ),
        (
            "snat_in",
            blast_back(&sv, 5302, &c, 5301, &format!("{NAT_SERVER}:5302"), secs)?,
        ),
        ("dnat_in", blast_to(&sv, &c, &fwd, secs)?),
        ("dnat_out", blast_back(&c, 5201, &sv, 5303, &fwd, secs)?),
        ("hairpin_req", blast_to(&peer, &c, &fwd, secs)?),
        (
            "hairpin_rep",
            blast_back(&c, 5201, &peer, 5304, &fwd, secs)?,
        ),
        // The lab is dual-stack: the same paths through NAT66 (masquerade
        // and the IPv6 forward of 5201).
        (
            "snat66_out",
            blast_to(&c, &sv, &format!("[{NAT_SERVER6}]:5201"), secs)?,
        ),
        (
            "snat66_in",
            blast_back(&sv, 5302, &c, 5301, &format!("[{NAT_SERVER6}]:5302"), secs)?,
        ),
        ("dnat66_in", blast_to(&sv, &c, &fwd6, secs)?),
        ("dnat66_out", blast_back(&c, 5201, &sv, 5303, &fwd6, secs)?),
    ];
    let topo = format!("{}benchnat", lab.prefix);
    for (path, blast) in paths {
        cost.add(path, prog_cost(netbridge, &topo, &blast)?);
    }
    Ok(())
}

/// Mean ns per run of the programs of topology `topo` that ran for (about)
/// every packet of `blast`: `netbridge stats --programs` samples the
/// kernel's BPF statistics inside the blast (and turns them off after).
fn prog_cost(netbridge: &Path, topo: &str, blast: &Blast) -> Result<BTreeMap<String, f64>> {
    // The sampler's window holds the whole blast: the blast starts once it
    // says it measures (a fixed head start lost the race on a loaded host)
    // and the window lasts a second longer. Idle time adds no run time.
    let mut sampler = Command::new(netbridge)
        .args([
            "stats",
            "--programs",
            "--json",
            "--name",
            topo,
            "--interval",
        ])
        .arg(format!("{}ms", ((blast.secs + 1.0) * 1000.0) as u64))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut err = std::io::BufReader::new(sampler.stderr.take().context("stderr")?);
    let mut said = String::new();
    while std::io::BufRead::read_line(&mut err, &mut said)? > 0 && !said.contains("sampling") {}
    if !said.contains("sampling") {
        let _ = sampler.wait();
        bail!("netbridge stats --programs: {said}");
    }
    let blasted = crate::crr::udp_blast(blast);
    let out = sampler.wait_with_output()?;
    blasted.with_context(|| format!("UDP-64 through {topo}"))?;
    if !out.status.success() {
        bail!("netbridge stats --programs failed: {said}");
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("stats --programs JSON")?;
    let progs = v["programs"].as_array().context("programs")?;
    let runs = |p: &serde_json::Value| p["runs"].as_f64().unwrap_or(0.0);
    let most = progs.iter().map(runs).fold(0.0, f64::max);
    if most < 1000.0 {
        bail!("{topo}: the programs ran {most} times during the blast");
    }
    // Programs on the packets' way run about once per packet; others only
    // for stray traffic.
    Ok(progs
        .iter()
        .filter(|p| runs(p) >= most / 2.0)
        .filter_map(|p| {
            Some((
                full_prog_name(p["name"].as_str()?),
                p["ns_per_run"].as_f64()?,
            ))
        })
        .collect())
}

/// The program's full name (the kernel keeps 15 characters).
fn full_prog_name(kernel: &str) -> String {
    use netbridge_common::*;
    [
        PROG_PORT_INGRESS,
        PROG_PORT_IPV6,
        PROG_PORT_XDP,
        PROG_PEER_XDP,
        PROG_PORT_NAT,
        PROG_UPLINK_INGRESS,
        PROG_UPLINK_EGRESS,
    ]
    .into_iter()
    .find(|n| n.starts_with(kernel))
    .unwrap_or(kernel)
    .to_string()
}

/// The bench inside the root-namespace guard: it fails if the bench
/// changed the root network namespace or left a process behind.
pub fn run(root: &Path, netbridge: &Path, opts: &Options) -> Result<()> {
    let id = format!("{:05}", std::process::id() % 100_000);
    let guard = crate::rootns::Guard::begin()?;
    let result = if opts.flood_only {
        flood_only(root, netbridge, &id)
    } else {
        run_rounds(root, netbridge, opts, &id)
    };
    // Every namespace of this run starts with one of these (Lab, nat_lab, bench_scale).
    let ours = ["nbb", "nbn", "nbu"].map(|k| format!("{k}{id}"));
    let check = guard.finish(&ours);
    match (result, check) {
        (Err(e), Err(c)) => Err(e.context(format!("and after it: {c:#}"))),
        (r, c) => r.and(c),
    }
}

/// `--flood-only`: the flood figure alone, written to
/// target/bench/flood.{txt,json}.
fn flood_only(root: &Path, netbridge: &Path, id: &str) -> Result<()> {
    let out_dir = root.join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    let (table, json) = crate::bench_flood::run(root, id, netbridge, &out_dir)?;
    print!("{table}");
    std::fs::write(out_dir.join("flood.txt"), &table)?;
    std::fs::write(
        out_dir.join("flood.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    Ok(())
}

fn run_rounds(root: &Path, netbridge: &Path, opts: &Options, id: &str) -> Result<()> {
    let out_dir = root.join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    // samples[setup][workload] = one value per round
    let mut samples: BTreeMap<Setup, Samples> = BTreeMap::new();
    let started = Instant::now();
    let (mut up_nb, mut up_ip) = (Vec::new(), Vec::new());
    let mut nat_samples: BTreeMap<NatSetup, Samples> = BTreeMap::new();
    let mut cost = Cost::new();
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
            for pin in Pin::ALL {
                bridged_round(&lab, opts, s, pin)?;
            }
            let path = match setup {
                Setup::NetbridgeTc => Some("bridged"),
                Setup::NetbridgeXdp => Some("bridged_xdp"),
                Setup::Floor => Some("bridged_floor"),
                _ => None,
            };
            if let Some(path) = path {
                let (c, sv) = (lab.ns("client"), lab.ns("server"));
                let blast = blast_to(&c, &sv, &format!("{SERVER_IP}:5201"), opts.cost_secs())?;
                // F's program is the bench's own: its statistics are read
                // directly, netbridge's through `stats --programs`.
                let programs = match lab.floor {
                    Some(id) => BTreeMap::from([(
                        "nb_floor".to_string(),
                        crate::floor::ns_per_run(id, &blast)?,
                    )]),
                    None => prog_cost(netbridge, &format!("{}bench", lab.prefix), &blast)?,
                };
                cost.add(path, programs);
            }
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
            for pin in Pin::ALL {
                nat_round(&lab, opts, nat_samples.entry(setup).or_default(), pin)?;
            }
            if setup == NatSetup::Netbridge {
                nat_cost(&lab, netbridge, opts, &mut cost)?;
            }
            drop(lab);
            eprintln!(
                "bench: round {round}/{} scale: {:<17} with {} more forwards",
                opts.rounds,
                setup.label(),
                SCALE_FORWARDS
            );
            let lab = nat_lab(setup, id, netbridge, &out_dir, SCALE_FORWARDS)?;
            let v = dnat_crr(&lab, opts.secs as f64, Pin::Pinned)? / 1e3;
            let s = nat_samples.entry(setup).or_default();
            s.entry("dnat_crr_1000fwd".into()).or_default().push(v);
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
                s.entry("snat_udp64_pps_100k".into())
                    .or_default()
                    .push(iperf_between(
                        &c,
                        &sv,
                        Some(NAT_SERVER),
                        NAT_SERVER,
                        opts.secs,
                        true,
                        Pin::Pinned,
                    )?);
            }
        }
        eprintln!(
            "bench: round {round}/{}: up of {UP_NAMESPACES} namespaces, netbridge vs ip script",
            opts.rounds
        );
        let (nb, ip) = crate::bench_scale::up_vs_script(netbridge, id, UP_NAMESPACES, &out_dir)?;
        up_nb.push(nb);
        up_ip.push(ip);
    }

    let (flood_table, flood_json) = crate::bench_flood::run(root, id, netbridge, &out_dir)?;
    let big = if opts.quick() {
        None
    } else {
        eprintln!("bench: {BIG_NAMESPACES} namespaces: up, up again, status, stats, down");
        Some(crate::bench_scale::big(
            netbridge,
            id,
            BIG_NAMESPACES,
            &out_dir,
        )?)
    };
    let r = Results {
        big,
        samples,
        nat_samples,
        cost,
        up_nb,
        up_ip,
        sessions_filled,
    };
    let (mut table, mut json) = r.report(opts);
    table.push_str(&flood_table);
    json["flood"] = flood_json;
    print!("{table}");
    std::fs::write(
        out_dir.join("results.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    std::fs::write(out_dir.join("results.txt"), &table)?;
    r.charts(&out_dir)?;
    eprintln!(
        "bench: wrote {}/results.{{txt,json,svg}} and results-nat.svg in {:.0}s",
        out_dir.display(),
        started.elapsed().as_secs_f64()
    );
    crate::bench_cni::run(root, netbridge, opts.rounds, opts.secs, id)?;
    Ok(())
}

/// Everything one run measured.
struct Results {
    samples: BTreeMap<Setup, Samples>,
    nat_samples: BTreeMap<NatSetup, Samples>,
    cost: Cost,
    up_nb: Vec<f64>,
    up_ip: Vec<f64>,
    sessions_filled: Vec<f64>,
    /// The 1,000-namespace run (not with `--quick`).
    big: Option<crate::bench_scale::Big>,
}

impl Results {
    fn med(&self, s: Setup, w: &str) -> f64 {
        median(
            self.samples
                .get(&s)
                .and_then(|m| m.get(w))
                .map(Vec::as_slice)
                .unwrap_or(&[]),
        )
    }

    fn nat_med(&self, s: NatSetup, w: &str) -> f64 {
        self.nat_samples
            .get(&s)
            .and_then(|m| m.get(w))
            .map(|v| median(v))
            .unwrap_or(f64::NAN)
    }

    /// The text tables and the JSON document.
    fn report(&self, opts: &Options) -> (String, serde_json::Value) {
        let mut table = String::new();
        let _ = writeln!(
            table,
            "medians of {} interleaved rounds ({} s per stream, {} RR exchanges); ratios are netbridge / baseline",
            opts.rounds, opts.secs, opts.rr_count
        );
        let mut json_workloads = serde_json::Map::new();
        for pin in Pin::ALL {
            json_workloads.extend(self.bridged_table(&mut table, pin));
        }
        let (up_table, up_json) =
            crate::bench_scale::report(&self.up_nb, &self.up_ip, self.big.as_ref());
        table += &up_table;
        let mut json_nat = serde_json::Map::new();
        for pin in Pin::ALL {
            json_nat.extend(self.nat_table(&mut table, pin));
        }
        let scale = self.scale(&mut table);
        let cost = self.cost_table(&mut table, opts);
        let json = serde_json::json!({
            "rounds": opts.rounds, "seconds_per_stream": opts.secs, "rr_exchanges": opts.rr_count,
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            "workloads": json_workloads,
            "nat_workloads": json_nat,
            "program_cost": cost,
            "scale": scale,
            "up_namespaces": up_json["up_namespaces"],
            "big": up_json["big"],
        });
        (table, json)
    }

    /// The bridged table of `pin`'s runs; JSON entries keyed as the samples.
    fn bridged_table(
        &self,
        table: &mut String,
        pin: Pin,
    ) -> serde_json::Map<String, serde_json::Value> {
        let _ = writeln!(
            table,
            "\nbridged, {}\n{:<18} {:>7} {:>10} {:>10} {:>10} {:>10} {:>10} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6}",
            pin_label(pin),
            "workload",
            "unit",
            "A direct",
            "B bridge",
            "F floor",
            "D tc",
            "D' xdp",
            "D/A",
            "D/B",
            "D/F",
            "F/B",
            "D'/A",
            "D'/B"
        );
        let mut json = serde_json::Map::new();
        for (w, unit, _) in WORKLOADS {
            let key = pin.key(w);
            let [a, b, f, d, x] = Setup::ALL.map(|s| self.med(s, &key));
            if [a, b, f, d, x].iter().all(|v| v.is_nan()) {
                // Not run this way (see Options::iperf).
                continue;
            }
            let _ = writeln!(
                table,
                "{w:<18} {unit:>7} {a:>10.2} {b:>10.2} {f:>10.2} {d:>10.2} {x:>10.2} {:>6.2} {:>6.2} {:>6.2} {:>6.2} {:>6.2} {:>6.2}",
                d / a,
                d / b,
                d / f,
                f / b,
                x / a,
                x / b
            );
            let per_setup: serde_json::Map<String, serde_json::Value> = Setup::ALL
                .iter()
                .map(|s| {
                    let v = self
                        .samples
                        .get(s)
                        .and_then(|m| m.get(&key))
                        .cloned()
                        .unwrap_or_default();
                    (
                        s.key().to_string(),
                        serde_json::json!({"median": self.med(*s, &key), "samples": v}),
                    )
                })
                .collect();
            json.insert(
                key,
                serde_json::json!({"unit": unit, "pinned": pin == Pin::Pinned, "setups": per_setup,
                    "ratios": {"tc_vs_direct": d / a, "tc_vs_bridge": d / b, "tc_vs_floor": d / f,
                        "floor_vs_bridge": f / b, "floor_vs_direct": f / a,
                        "xdp_vs_direct": x / a, "xdp_vs_bridge": x / b}}),
            );
        }
        json
    }

    /// The NAT table of `pin`'s runs (the scale runs are pinned only; rows
    /// not run this way are left out).
    fn nat_table(
        &self,
        table: &mut String,
        pin: Pin,
    ) -> serde_json::Map<String, serde_json::Value> {
        let _ = writeln!(
            table,
            "\nNAT paths, {} (lab host behind the uplink; SNAT: lab -> upstream, DNAT: upstream -> forwarded port)\n{:<22} {:>7} {:>12} {:>12} {:>8}",
            pin_label(pin),
            "workload",
            "unit",
            "C iptables",
            "D netbridge",
            "D/C"
        );
        let mut json = serde_json::Map::new();
        for (w, unit, _) in NAT_WORKLOADS {
            let key = pin.key(w);
            let [c, d] = NatSetup::ALL.map(|s| self.nat_med(s, &key));
            if c.is_nan() && d.is_nan() {
                continue;
            }
            let _ = writeln!(
                table,
                "{w:<22} {unit:>7} {c:>12.2} {d:>12.2} {:>8.2}",
                d / c
            );
            json.insert(
                key.clone(),
                serde_json::json!({"unit": unit, "pinned": pin == Pin::Pinned,
                    "samples": NatSetup::ALL.iter().map(|s| (s.key(), self.nat_samples.get(s).and_then(|m| m.get(&key)).cloned().unwrap_or_default())).collect::<BTreeMap<_, _>>(),
                    "medians": {"iptables_nat": c, "netbridge_nat": d},
                    "ratios": {"netbridge_vs_iptables": d / c}}),
            );
        }
        json
    }

    /// The scale lines: forwards and sessions.
    fn scale(&self, table: &mut String) -> serde_json::Value {
        let [c1, c1000, d1, d1000] = [
            (NatSetup::Iptables, "dnat_crr"),
            (NatSetup::Iptables, "dnat_crr_1000fwd"),
            (NatSetup::Netbridge, "dnat_crr"),
            (NatSetup::Netbridge, "dnat_crr_1000fwd"),
        ]
        .map(|(s, w)| self.nat_med(s, w));
        let [s100, s100k] =
            ["snat_udp64_pps", "snat_udp64_pps_100k"].map(|w| self.nat_med(NatSetup::Netbridge, w));
        let _ = writeln!(
            table,
            "\nscale: 1,000 forwards vs 1,000 iptables DNAT rules (new connections/s through the last one):\n  \
             iptables {c1000:.2} kconn/s ({:.2} of its 1-rule rate), netbridge {d1000:.2} kconn/s ({:.2} of its 1-forward rate); netbridge/iptables {:.2}\n\
             scale: SNAT UDP-64 with {:.0} live sessions vs a handful: {s100k:.1} vs {s100:.1} kpps, ratio {:.2}",
            c1000 / c1,
            d1000 / d1,
            d1000 / c1000,
            median(&self.sessions_filled),
            s100k / s100
        );
        serde_json::json!({"forwards": SCALE_FORWARDS + 1, "crr_1000_vs_1": {"iptables": c1000 / c1, "netbridge": d1000 / d1},
                  "crr_1000_netbridge_vs_iptables": d1000 / c1000,
                  "sessions_filled": self.sessions_filled, "snat_udp64_100k_vs_few": s100k / s100})
    }

    /// The programs' cost per path.
    fn cost_table(&self, table: &mut String, opts: &Options) -> serde_json::Value {
        let _ = writeln!(
            table,
            "\nprogram cost: mean ns per run (kernel BPF statistics) under UDP-64 for {:.1} s per path, pinned;\n\
             each packet runs each listed program once (the port program's time includes its NAT tail call)\n\
             {:<12} {:<42} {:<18} {:>8}",
            opts.cost_secs(),
            "path",
            "",
            "program",
            "ns/run"
        );
        let mut json = serde_json::Map::new();
        for (path, what) in COST_PATHS {
            let Some(progs) = self.cost.0.get(path) else {
                continue;
            };
            let mut per = serde_json::Map::new();
            for (i, (prog, v)) in progs.iter().enumerate() {
                let label = if i == 0 { (path, what) } else { ("", "") };
                let _ = writeln!(
                    table,
                    "{:<12} {:<42} {prog:<18} {:>8.0}",
                    label.0,
                    label.1,
                    median(v)
                );
                per.insert(
                    prog.clone(),
                    serde_json::json!({"median_ns": median(v), "samples": v}),
                );
            }
            json.insert(path.to_string(), serde_json::Value::Object(per));
        }
        serde_json::Value::Object(json)
    }

    fn charts(&self, out_dir: &Path) -> Result<()> {
        let labels: Vec<&str> = Setup::ALL.iter().map(|s| s.label()).collect();
        std::fs::write(
            out_dir.join("results.svg"),
            svg(
                "netbridge bench: bridged paths (pinned), medians relative to A (direct veth = 1.0)",
                &WORKLOADS,
                &labels,
                &|k, w| self.med(Setup::ALL[k], w),
            ),
        )?;
        let labels: Vec<&str> = NatSetup::ALL.iter().map(|s| s.label()).collect();
        std::fs::write(
            out_dir.join("results-nat.svg"),
            svg(
                "netbridge bench: NAT paths (pinned), medians relative to C (bridge + iptables = 1.0)",
                &NAT_WORKLOADS,
                &labels,
                &|k, w| self.nat_med(NatSetup::ALL[k], w),
            ),
        )?;
        Ok(())
    }
}

fn pin_label(pin: Pin) -> &'static str {
    match pin {
        Pin::Pinned => "pinned (server on the last CPU, client on CPU 0)",
        Pin::Unpinned => "unpinned (the scheduler places the tools)",
    }
}

/// Grouped bar chart: one panel per workload, one bar per setup
/// (`labels`), normalised to the first setup. `val(setup index, workload)`.
fn svg(
    title: &str,
    workloads: &[(&str, &str, bool)],
    labels: &[&str],
    val: &dyn Fn(usize, &str) -> f64,
) -> String {
    let colors = ["#888888", "#4477aa", "#aa3377", "#228833", "#ccbb44"];
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
