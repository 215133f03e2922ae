//! The routed NAT lab of the NAT tests: lab namespaces black (192.168.1.10)
//! and white (192.168.2.10) on a bridge in a host namespace ("gw") whose
//! uplink (203.0.113.1) faces a router (203.0.113.254), behind which sits a
//! server (198.51.100.10). The router has no route back to the lab's
//! 192.168.0.0/16: only translated traffic can come back.
use std::time::Duration;

use serde_json::Value;

use crate::Sandbox;
pub use crate::script;

pub const SERVER: &str = "198.51.100.10";
pub const UPLINK: &str = "203.0.113.1";

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
        let file = sb.tmp_file("nat.toml").display().to_string();
        std::fs::write(&file, toml).unwrap();
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

    /// Echo replies to `n` pings from lab host `ns` to `dst` (IPv6 if it
    /// has a colon), 10 ms apart.
    pub fn ping_replies(&self, ns: &str, dst: &str, n: u32) -> u32 {
        let v6 = if dst.contains(':') { "-6" } else { "" };
        let out = self.sh(
            ns,
            &format!("ping {v6} -c {n} -i 0.01 -W 1 -q {dst} || true"),
        );
        out.split(" received")
            .next()
            .and_then(|s| s.rsplit(' ').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no ping summary: {out}"))
    }

    /// Runs `f` while capturing on `dev` in lab namespace `ns` (tcpdump
    /// `filter`); its result and the captured frames' destination MACs.
    pub fn dst_macs<T>(
        &mut self,
        ns: &str,
        dev: &str,
        filter: &str,
        f: impl FnOnce(&Self) -> T,
    ) -> (T, Vec<String>) {
        let file = self.sb.tmp_file(&format!("{ns}-{dev}.txt"));
        let ns = self.ns(ns);
        let dump = self
            .sb
            .tcpdump(&ns, &["-e", "-l", "-i", dev, filter], Some(&file));
        let r = f(self);
        self.sb.stop_tcpdump(dump);
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        // "TIME SRC > DST, ethertype ...".
        let macs = text
            .lines()
            .filter_map(|l| l.split_whitespace().nth(3))
            .map(|m| m.trim_end_matches(',').to_string())
            .collect();
        (r, macs)
    }

    /// The fast path's FIB answers for a veth uplink are kept 100 ms, not
    /// for good (`nat::fast_path_follows_the_routers_new_mac`, and its
    /// NAT66 twin): with a session through the fast path to `dst`, the
    /// router (its end of the uplink at `router_ip`) gets a new MAC, the
    /// host's neighbour entry too; 300 ms later, every echo request (from
    /// "black", captured at the router with tcpdump `filter`) carries the
    /// new MAC and is answered, still through the uplink's peer. A frame
    /// redirected into the peer has its MAC never checked there, so the
    /// replies alone could not tell a stale cache.
    pub fn assert_fast_path_follows_new_router_mac(
        &mut self,
        dst: &str,
        router_ip: &str,
        filter: &str,
    ) {
        const NEW_MAC: &str = "02:00:5e:00:53:fe";
        self.ping_replies("black", dst, 2);
        let peer0 = self.counter("fast_path_to_uplink_peer");
        assert_eq!(self.ping_replies("black", dst, 50), 50);
        self.sh("router", &format!("ip link set eth0 address {NEW_MAC}"));
        self.sh(
            "gw",
            &format!("ip neigh replace {router_ip} lladdr {NEW_MAC} dev uplink0 nud reachable"),
        );
        std::thread::sleep(Duration::from_millis(300));
        let peer1 = self.counter("fast_path_to_uplink_peer");
        let (got, macs) = self.dst_macs("router", "eth0", filter, |lab| {
            lab.ping_replies("black", dst, 50)
        });
        let peer = self.counter("fast_path_to_uplink_peer") - peer1;
        assert_eq!(got, 50, "replies after the MAC change ({peer} to the peer)");
        assert!(peer >= 45, "to the peer after the change: {peer}");
        assert!(peer1 - peer0 >= 45, "to the peer before: {}", peer1 - peer0);
        let stale: Vec<_> = macs.iter().filter(|m| *m != NEW_MAC).collect();
        assert!(
            macs.len() >= 50 && stale.is_empty(),
            "{} requests, {} to old MACs (first: {:?})",
            macs.len(),
            stale.len(),
            stale.first()
        );
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

    pub fn http_server(&mut self, ns: &str, port: u16) {
        let p = port.to_string();
        // --bind 0.0.0.0: with an address, http.server does reverse DNS.
        self.spawn(
            ns,
            &["python3", "-m", "http.server", &p, "--bind", "0.0.0.0"],
        );
        self.wait_listen(ns, "tcp", port);
    }

    pub fn curl(&self, ns: &str, url: &str) -> String {
        self.sh(
            ns,
            &format!("curl -sS -m 5 -o /dev/null -w '%{{http_code}}' {url}"),
        )
    }

    /// No iptables or nftables rule in the sandbox host or in any namespace
    /// of the lab (every one that exists under the sandbox's prefix). The
    /// detector is first shown to see a rule, in a scratch namespace.
    pub fn assert_no_netfilter_rules(&mut self) {
        let ctl = self.sb.add_ns("nfctl");
        self.sb.sh(
            &ctl,
            "nft add table inet nbctl && iptables -A INPUT -p tcp --dport 9 -j DROP",
        );
        let seen = self.sb.netfilter_rules(&ctl);
        assert!(
            seen.iter().any(|l| l.contains("table inet nbctl"))
                && seen.iter().any(|l| l.contains("--dport 9")),
            "the netfilter check cannot see rules: {seen:?}"
        );
        let all: Vec<String> = self
            .sb
            .live_namespaces()
            .into_iter()
            .filter(|n| *n != ctl)
            .collect();
        for n in ["gw", "black", "white", "router", "server"] {
            assert!(all.contains(&self.ns(n)), "{n} not among {all:?}");
        }
        assert!(all.contains(&self.sb.host), "{all:?}");
        for ns in &all {
            let rules = self.sb.netfilter_rules(ns);
            assert!(rules.is_empty(), "netfilter rules in {ns}: {rules:?}");
        }
        self.sb.remove_ns(&ctl);
    }

    pub fn down_clean(&self) {
        self.nb(&["down"]);
        let left: Vec<String> = netbridge::netns::list()
            .into_iter()
            .filter(|n| n.starts_with(&self.sb.prefix()) && *n != self.sb.host)
            .collect();
        assert!(left.is_empty(), "namespaces left after down: {left:?}");
    }
}

/// The sessions of a conntrack listing.
pub fn sessions(ct: &Value) -> Vec<Value> {
    ct["sessions"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("no session list in conntrack output: {ct}"))
}
