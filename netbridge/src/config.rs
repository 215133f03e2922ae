//! The topology file: TOML format, parsing and validation.
//!
//! Everything is checked before anything on the host changes; every error
//! names the file, the field (as a path like `namespace[2].addresses[0]`),
//! the offending value and the problem.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt,
    net::{IpAddr, Ipv4Addr},
    path::Path,
    str::FromStr,
};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The embedded default lab (`cargo xtask run`, `netbridge up` without -f).
pub const DEFAULT_LAB: &str = include_str!("default-lab.toml");

pub const MAX_NAMESPACES: usize = 1000;
pub const MAX_LINKS: usize = 1000;
pub const MAX_FORWARDS: usize = 4096;
pub const MAX_ADDRESSES: usize = 64;
pub const MAX_ROUTES: usize = 256;
pub const MAX_SYSCTLS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: invalid TOML: {message}")]
    Parse { file: String, message: String },
    #[error("{file}: {field} = {value}: {problem}")]
    Invalid {
        file: String,
        field: String,
        value: String,
        problem: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Datapath {
    #[default]
    Tc,
    Xdp,
}

/// The IPv4 addresses among `addrs`, in order.
pub fn ipv4s(addrs: &[IpNet]) -> impl Iterator<Item = Ipv4Addr> + '_ {
    addrs.iter().filter_map(|a| match a.addr() {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(_) => None,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    pub name: String,
    /// If set, netbridge creates this namespace and uses it as the "host".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_netns: Option<String>,
    #[serde(default)]
    pub datapath: Datapath,
    /// Default MTU for the bridge and every veth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<Bridge>,
    #[serde(default, rename = "namespace", skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<Namespace>,
    #[serde(default, rename = "link", skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<Link>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uplink: Option<Uplink>,
    #[serde(default, rename = "forward", skip_serializing_if = "Vec::is_empty")]
    pub forwards: Vec<Forward>,
    /// Pairs of bridged namespaces that must not exchange packets
    /// (enforced on the bridge ports, fast path and kernel path alike).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub isolate: Vec<[String; 2]>,
}

fn default_aging() -> u32 {
    netbridge_common::DEFAULT_AGING_SECS
}

fn default_ifname() -> String {
    "eth0".into()
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Bridge {
    pub name: String,
    #[serde(default)]
    pub addresses: Vec<IpNet>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// FDB aging in seconds (1..=86400).
    #[serde(default = "default_aging")]
    pub aging_secs: u32,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Namespace {
    pub name: String,
    /// Attach one veth to the bridge; default: true iff there is a bridge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<bool>,
    /// Interface name inside the namespace.
    #[serde(default = "default_ifname")]
    pub ifname: String,
    /// Host-side veth name; default "nb-" + name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ifname: Option<String>,
    #[serde(default)]
    pub addresses: Vec<IpNet>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sysctls: BTreeMap<String, String>,
    /// Drop frames from this namespace whose source MAC, IPv4 address or ARP
    /// sender is not its own (bridge ports only).
    #[serde(default = "default_true")]
    pub anti_spoof: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// "default" or a CIDR.
    pub to: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<IpAddr>,
    /// On-link route through this interface of the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev: Option<String>,
}

/// A direct veth pair, no bridge.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    pub a: Endpoint,
    pub b: Endpoint,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// None: the host namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    pub ifname: String,
    #[serde(default)]
    pub addresses: Vec<IpNet>,
    #[serde(default)]
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Uplink {
    /// An interface of the host namespace (existing, or a host link endpoint).
    pub ifname: String,
    #[serde(default)]
    pub masquerade: bool,
    /// If set: default route in the host namespace via this gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// SNAT port range, "first-last" (default 1024-65535).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat_ports: Option<PortSpec>,
    /// Endpoint-independent mapping (RFC 4787): an inside address:port keeps
    /// one external port for every destination.
    #[serde(default)]
    pub endpoint_independent: bool,
    /// New NAT sessions are dropped (counted) beyond this many.
    #[serde(default = "default_max_sessions")]
    pub max_sessions: u32,
    /// Established sessions skip the kernel's bridge and routing (see
    /// README, NAT). Off: every packet is routed by the kernel and
    /// translated on the uplink.
    #[serde(default = "default_true")]
    pub fast_path: bool,
    #[serde(default)]
    pub timeouts: NatTimeouts,
}

fn default_max_sessions() -> u32 {
    netbridge_common::DEFAULT_MAX_SESSIONS
}

/// Conntrack timeouts in seconds, enforced in the kernel (see README, NAT).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatTimeouts {
    pub tcp_syn: u32,
    /// RFC 5382: at least 2 h 4 min.
    pub tcp_established: u32,
    pub tcp_closing: u32,
    pub tcp_closed: u32,
    /// UDP seen one way only.
    pub udp: u32,
    /// UDP with replies (RFC 4787: at least 2 min).
    pub udp_replied: u32,
    pub icmp: u32,
}

impl Default for NatTimeouts {
    fn default() -> Self {
        NatTimeouts {
            tcp_syn: 60,
            tcp_established: 7440,
            tcp_closing: 120,
            tcp_closed: 10,
            udp: 30,
            udp_replied: 180,
            icmp: 30,
        }
    }
}

impl NatTimeouts {
    /// Timeout of a session in conntrack `state` (CT_* code).
    pub fn for_state(&self, state: u8) -> u32 {
        use netbridge_common::*;
        match state {
            CT_TCP_SYN => self.tcp_syn,
            CT_TCP_ESTABLISHED => self.tcp_established,
            CT_TCP_CLOSING => self.tcp_closing,
            CT_TCP_CLOSED => self.tcp_closed,
            CT_UDP => self.udp,
            CT_UDP_REPLIED => self.udp_replied,
            _ => self.icmp,
        }
    }

    fn fields(&self) -> [(&'static str, u32); 7] {
        [
            ("tcp_syn", self.tcp_syn),
            ("tcp_established", self.tcp_established),
            ("tcp_closing", self.tcp_closing),
            ("tcp_closed", self.tcp_closed),
            ("udp", self.udp),
            ("udp_replied", self.udp_replied),
            ("icmp", self.icmp),
        ]
    }
}

impl Uplink {
    /// SNAT port range (first, last); valid after validation.
    pub fn port_range(&self) -> (u16, u16) {
        self.nat_ports
            .as_ref()
            .and_then(|p| p.range())
            .unwrap_or((1024, 65535))
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Forward {
    pub proto: Proto,
    pub port: PortSpec,
    /// "namespace:port"; for a range, the first target port.
    pub to: String,
}

/// An external port or inclusive range: `8080` or `"8000-8010"`. Kept as
/// written (validated later) so errors can quote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    pub raw: String,
}

impl PortSpec {
    /// (first, last), if valid.
    pub fn range(&self) -> Option<(u16, u16)> {
        let (a, b) = match self.raw.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (self.raw.trim(), self.raw.trim()),
        };
        let (a, b) = (a.parse::<u16>().ok()?, b.parse::<u16>().ok()?);
        (a >= 1 && a <= b).then_some((a, b))
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl<'de> Deserialize<'de> for PortSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Str(String),
        }
        Ok(match Raw::deserialize(d)? {
            Raw::Int(i) => PortSpec { raw: i.to_string() },
            Raw::Str(s) => PortSpec { raw: s },
        })
    }
}

impl Serialize for PortSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.raw.parse::<i64>() {
            Ok(i) => s.serialize_i64(i),
            Err(_) => s.serialize_str(&self.raw),
        }
    }
}

impl Forward {
    /// (namespace, first target port); valid after validation.
    pub fn target(&self) -> (String, u16) {
        let (ns, port) = self.to.rsplit_once(':').unwrap_or((&self.to, "0"));
        (ns.to_string(), port.parse().unwrap_or(0))
    }
}

impl Topology {
    /// Reads, parses and validates a file. `host_has_link(name)` tells
    /// whether an interface exists in the host namespace (uplink check).
    pub fn load(
        path: &Path,
        host_has_link: &dyn Fn(&str) -> bool,
    ) -> Result<Topology, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        Self::parse(&text, &file, host_has_link)
    }

    pub fn parse(
        text: &str,
        file: &str,
        host_has_link: &dyn Fn(&str) -> bool,
    ) -> Result<Topology, ConfigError> {
        let t: Topology = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: file.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        Validator { file, t: &t }.run(host_has_link)?;
        Ok(t)
    }

    pub fn default_lab() -> Topology {
        Self::parse(DEFAULT_LAB, "<default lab>", &|_| false)
            .expect("embedded default lab is valid")
    }

    pub fn on_bridge(&self, ns: &Namespace) -> bool {
        ns.bridge.unwrap_or(self.bridge.is_some())
    }

    pub fn host_ifname(ns: &Namespace) -> String {
        ns.host_ifname
            .clone()
            .unwrap_or_else(|| format!("nb-{}", ns.name))
    }

    pub fn mtu_for_namespace(&self, ns: &Namespace) -> Option<u32> {
        ns.mtu
            .or(self.bridge.as_ref().and_then(|b| b.mtu))
            .or(self.mtu)
    }

    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        self.namespaces.iter().find(|n| n.name == name)
    }

    /// The uplink's NAT timeouts (defaults without an uplink).
    pub fn nat_timeouts(&self) -> NatTimeouts {
        self.uplink
            .as_ref()
            .map(|u| u.timeouts.clone())
            .unwrap_or_default()
    }

    /// The link the uplink is one end of, if the file declares it:
    /// (the uplink's end in the host namespace, the far end).
    pub fn uplink_ends(&self) -> Option<(&Endpoint, &Endpoint)> {
        let u = self.uplink.as_ref()?;
        let near = |e: &Endpoint| {
            (e.netns.is_none() || e.netns == self.host_netns) && e.ifname == u.ifname
        };
        self.links.iter().find_map(|l| {
            if near(&l.a) {
                Some((&l.a, &l.b))
            } else if near(&l.b) {
                Some((&l.b, &l.a))
            } else {
                None
            }
        })
    }
}

struct Validator<'a> {
    file: &'a str,
    t: &'a Topology,
}

fn q(s: &str) -> String {
    format!("{s:?}")
}

impl Validator<'_> {
    fn err(
        &self,
        field: impl Into<String>,
        value: impl Into<String>,
        problem: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_string(),
            field: field.into(),
            value: value.into(),
            problem: problem.into(),
        }
    }

    fn netns_name(&self, field: &str, name: &str) -> Result<(), ConfigError> {
        let ok_chars = name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        let first_ok = name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric());
        if name.is_empty() || name.len() > 32 || !ok_chars || !first_ok {
            return Err(self.err(
                field,
                q(name),
                "names must be 1 to 32 bytes of A-Z a-z 0-9 - _ starting with a letter or digit",
            ));
        }
        Ok(())
    }

    fn ifname(&self, field: &str, name: &str) -> Result<(), ConfigError> {
        if name.is_empty() || name.len() > 15 {
            return Err(self.err(
                field,
                q(name),
                "interface names must be 1 to 15 bytes (at most 15 bytes, IFNAMSIZ)",
            ));
        }
        let ok = name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !ok || name == "." || name == ".." {
            return Err(self.err(
                field,
                q(name),
                "interface names may only use A-Z a-z 0-9 - _ .",
            ));
        }
        Ok(())
    }

    fn mtu(&self, field: &str, mtu: Option<u32>) -> Result<(), ConfigError> {
        match mtu {
            Some(m) if !(68..=65535).contains(&m) => {
                Err(self.err(field, m.to_string(), "MTU must be 68..=65535"))
            }
            _ => Ok(()),
        }
    }

    fn addresses(&self, field: &str, addrs: &[IpNet]) -> Result<(), ConfigError> {
        if addrs.len() > MAX_ADDRESSES {
            return Err(self.err(
                field,
                addrs.len().to_string(),
                format!("at most {MAX_ADDRESSES} addresses"),
            ));
        }
        for (i, a) in addrs.iter().enumerate() {
            let f = format!("{field}[{i}]");
            if a.prefix_len() == 0 {
                return Err(self.err(
                    f,
                    q(&a.to_string()),
                    "prefix length 0 is not an interface address",
                ));
            }
            if let IpNet::V4(v4) = a
                && v4.prefix_len() < 31
                && (v4.addr() == v4.network() || v4.addr() == v4.broadcast())
            {
                return Err(self.err(
                    f,
                    q(&a.to_string()),
                    "is the network or broadcast address of its subnet, not a host address",
                ));
            }
        }
        Ok(())
    }

    fn run(&self, host_has_link: &dyn Fn(&str) -> bool) -> Result<(), ConfigError> {
        let t = self.t;
        self.netns_name("name", &t.name)?;
        self.mtu("mtu", t.mtu)?;
        if let Some(h) = &t.host_netns {
            self.netns_name("host_netns", h)?;
        }
        for (what, n, max) in [
            ("namespace", t.namespaces.len(), MAX_NAMESPACES),
            ("link", t.links.len(), MAX_LINKS),
            ("forward", t.forwards.len(), MAX_FORWARDS),
        ] {
            if n > max {
                return Err(self.err(what, n.to_string(), format!("at most {max} entries")));
            }
        }

        // Interfaces per namespace (None = host): name -> field that declared it.
        let mut ifaces: HashMap<Option<String>, HashMap<String, String>> = HashMap::new();
        let mut declare =
            |netns: Option<&String>, ifname: &str, field: String| -> Result<(), ConfigError> {
                let seen = ifaces.entry(netns.cloned()).or_default();
                if let Some(first) = seen.get(ifname) {
                    return Err(self.err(
                        field,
                        q(ifname),
                        format!(
                            "duplicate interface in namespace {} (already declared by {first})",
                            netns.map(String::as_str).unwrap_or("(host)")
                        ),
                    ));
                }
                seen.insert(ifname.to_string(), field);
                Ok(())
            };

        if let Some(b) = &t.bridge {
            self.ifname("bridge.name", &b.name)?;
            self.addresses("bridge.addresses", &b.addresses)?;
            self.mtu("bridge.mtu", b.mtu)?;
            if !(1..=86400).contains(&b.aging_secs) {
                return Err(self.err(
                    "bridge.aging_secs",
                    b.aging_secs.to_string(),
                    "must be 1..=86400 seconds",
                ));
            }
            declare(None, &b.name, "bridge.name".into())?;
        }

        let mut ns_names = HashSet::new();
        for (i, ns) in t.namespaces.iter().enumerate() {
            let f = |x: &str| format!("namespace[{i}].{x}");
            self.netns_name(&f("name"), &ns.name)?;
            if !ns_names.insert(ns.name.as_str()) {
                return Err(self.err(f("name"), q(&ns.name), "duplicate namespace name"));
            }
            if t.host_netns.as_deref() == Some(ns.name.as_str()) {
                return Err(self.err(f("name"), q(&ns.name), "same name as host_netns"));
            }
            self.ifname(&f("ifname"), &ns.ifname)?;
            self.mtu(&f("mtu"), ns.mtu)?;
            self.addresses(&f("addresses"), &ns.addresses)?;
            if ns.routes.len() > MAX_ROUTES {
                return Err(self.err(
                    f("routes"),
                    ns.routes.len().to_string(),
                    format!("at most {MAX_ROUTES} routes"),
                ));
            }
            if ns.sysctls.len() > MAX_SYSCTLS {
                return Err(self.err(
                    f("sysctls"),
                    ns.sysctls.len().to_string(),
                    format!("at most {MAX_SYSCTLS} sysctls"),
                ));
            }
            for (k, v) in &ns.sysctls {
                let key_ok = (k.starts_with("net.ipv4.")
                    || k.starts_with("net.ipv6.")
                    || k.starts_with("net.core."))
                    && !k.contains("..")
                    && !k.ends_with('.')
                    && k.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
                if !key_ok {
                    return Err(self.err(
                        f(&format!("sysctls.{k:?}")),
                        q(k),
                        "only net.ipv4.*, net.ipv6.* and net.core.* keys are allowed",
                    ));
                }
                let val_ok = v.len() <= 64
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b" _.-".contains(&b));
                if !val_ok {
                    return Err(self.err(
                        f(&format!("sysctls.{k:?}")),
                        q(v),
                        "values are up to 64 bytes of A-Z a-z 0-9 space _ . -",
                    ));
                }
            }
            if t.on_bridge(ns) {
                if t.bridge.is_none() {
                    return Err(self.err(
                        f("bridge"),
                        "true",
                        "namespace is on the bridge but the topology has no [bridge]",
                    ));
                }
                let v4 = ns.addresses.iter().filter(|a| a.addr().is_ipv4()).count();
                if ns.anti_spoof && v4 > netbridge_common::MAX_PORT_IPV4 {
                    return Err(self.err(
                        f("addresses"),
                        format!("{v4} IPv4 addresses"),
                        format!(
                            "anti-spoofing allows at most {} IPv4 addresses per namespace; set anti_spoof = false",
                            netbridge_common::MAX_PORT_IPV4
                        ),
                    ));
                }
                let host_if = Topology::host_ifname(ns);
                self.ifname(&f("host_ifname"), &host_if)?;
                declare(None, &host_if, f("host_ifname"))?;
                declare(Some(&ns.name), &ns.ifname, f("ifname"))?;
            } else if let Some(a) = ns.addresses.first() {
                return Err(self.err(
                    f("addresses[0]"),
                    q(&a.to_string()),
                    "addresses given but the namespace is not on the bridge (put them on a [[link]] endpoint)",
                ));
            }
        }

        for (i, l) in t.links.iter().enumerate() {
            self.mtu(&format!("link[{i}].mtu"), l.mtu)?;
            for (side, e) in [("a", &l.a), ("b", &l.b)] {
                let f = |x: &str| format!("link[{i}].{side}.{x}");
                if let Some(n) = &e.netns
                    && !ns_names.contains(n.as_str())
                    && t.host_netns.as_ref() != Some(n)
                {
                    return Err(self.err(
                        f("netns"),
                        q(n),
                        "unknown namespace (declare it with [[namespace]])",
                    ));
                }
                self.ifname(&f("ifname"), &e.ifname)?;
                self.addresses(&f("addresses"), &e.addresses)?;
                // An endpoint in host_netns is the host.
                let netns = e
                    .netns
                    .as_ref()
                    .filter(|n| t.host_netns.as_ref() != Some(*n));
                declare(netns, &e.ifname, f("ifname"))?;
            }
        }

        // Addresses: unique across the topology.
        let mut all_addrs: Vec<(String, IpNet)> = Vec::new();
        if let Some(b) = &t.bridge {
            all_addrs.extend(
                b.addresses
                    .iter()
                    .enumerate()
                    .map(|(j, a)| (format!("bridge.addresses[{j}]"), *a)),
            );
        }
        for (i, ns) in t.namespaces.iter().enumerate() {
            all_addrs.extend(
                ns.addresses
                    .iter()
                    .enumerate()
                    .map(|(j, a)| (format!("namespace[{i}].addresses[{j}]"), *a)),
            );
        }
        for (i, l) in t.links.iter().enumerate() {
            for (side, e) in [("a", &l.a), ("b", &l.b)] {
                all_addrs.extend(
                    e.addresses
                        .iter()
                        .enumerate()
                        .map(|(j, a)| (format!("link[{i}].{side}.addresses[{j}]"), *a)),
                );
            }
        }
        let mut seen_ip: HashMap<IpAddr, &str> = HashMap::new();
        for (field, a) in &all_addrs {
            if let Some(first) = seen_ip.insert(a.addr(), field) {
                return Err(self.err(
                    field.clone(),
                    q(&a.to_string()),
                    format!("address already assigned by {first}"),
                ));
            }
        }

        // Segments: the bridge (+ its namespaces) and each link must not overlap.
        let mut segments: Vec<(String, Vec<(String, IpNet)>)> = Vec::new();
        if t.bridge.is_some() {
            let mut nets: Vec<(String, IpNet)> = Vec::new();
            nets.extend(
                all_addrs
                    .iter()
                    .filter(|(f, _)| f.starts_with("bridge."))
                    .cloned(),
            );
            for (i, ns) in t.namespaces.iter().enumerate() {
                if t.on_bridge(ns) {
                    let p = format!("namespace[{i}].");
                    nets.extend(all_addrs.iter().filter(|(f, _)| f.starts_with(&p)).cloned());
                }
            }
            segments.push(("the bridge".into(), nets));
        }
        for i in 0..t.links.len() {
            let p = format!("link[{i}].");
            let nets = all_addrs
                .iter()
                .filter(|(f, _)| f.starts_with(&p))
                .cloned()
                .collect();
            segments.push((format!("link[{i}]"), nets));
        }
        for (si, (sname, snets)) in segments.iter().enumerate() {
            for (oname, onets) in segments.iter().skip(si + 1) {
                for (f1, n1) in snets {
                    for (f2, n2) in onets {
                        let (a, b) = (n1.trunc(), n2.trunc());
                        if a.contains(&b.network()) || b.contains(&a.network()) {
                            return Err(self.err(
                                f2.clone(),
                                q(&n2.to_string()),
                                format!(
                                    "subnet {b} of {oname} overlaps subnet {a} of {sname} ({f1})"
                                ),
                            ));
                        }
                    }
                }
            }
        }

        // Routes.
        for (i, ns) in t.namespaces.iter().enumerate() {
            let mut nets: Vec<IpNet> = if t.on_bridge(ns) {
                ns.addresses.clone()
            } else {
                vec![]
            };
            for l in &t.links {
                for e in [&l.a, &l.b] {
                    if e.netns.as_deref() == Some(&ns.name) {
                        nets.extend(e.addresses.iter().copied());
                    }
                }
            }
            let devs = ifaces
                .get(&Some(ns.name.clone()))
                .cloned()
                .unwrap_or_default();
            for (j, r) in ns.routes.iter().enumerate() {
                self.route(
                    &format!("namespace[{i}].routes[{j}]"),
                    r,
                    &ns.name,
                    &nets,
                    &devs,
                )?;
            }
        }
        for (i, l) in t.links.iter().enumerate() {
            for (side, e) in [("a", &l.a), ("b", &l.b)] {
                let netns = e
                    .netns
                    .as_ref()
                    .filter(|n| t.host_netns.as_ref() != Some(*n))
                    .cloned();
                let devs = ifaces.get(&netns).cloned().unwrap_or_default();
                let label = netns.clone().unwrap_or("(host)".into());
                for (j, r) in e.routes.iter().enumerate() {
                    self.route(
                        &format!("link[{i}].{side}.routes[{j}]"),
                        r,
                        &label,
                        &e.addresses,
                        &devs,
                    )?;
                }
            }
        }

        // Uplink.
        if let Some(u) = &t.uplink {
            self.ifname("uplink.ifname", &u.ifname)?;
            if let Some(p) = &u.nat_ports
                && p.range().is_none()
            {
                return Err(self.err(
                    "uplink.nat_ports",
                    q(&p.raw),
                    "must be \"first-last\" within 1..=65535 with first <= last",
                ));
            }
            let limit = netbridge_common::MAX_SESSIONS_LIMIT;
            if u.max_sessions == 0 || u.max_sessions > limit {
                return Err(self.err(
                    "uplink.max_sessions",
                    u.max_sessions.to_string(),
                    format!("must be 1..={limit}"),
                ));
            }
            for (name, v) in u.timeouts.fields() {
                if v == 0 || v > 604_800 {
                    return Err(self.err(
                        format!("uplink.timeouts.{name}"),
                        v.to_string(),
                        "must be 1..=604800 seconds",
                    ));
                }
            }
            match t.uplink_ends().map(|(near, _)| near) {
                Some(e) => {
                    if (u.masquerade || !t.forwards.is_empty())
                        && !e.addresses.iter().any(|a| a.addr().is_ipv4())
                    {
                        return Err(self.err(
                            "uplink.ifname",
                            q(&u.ifname),
                            "NAT needs an IPv4 address on the uplink",
                        ));
                    }
                    if let Some(gw) = u.gateway
                        && !e.addresses.iter().any(|n| n.contains(&gw))
                    {
                        return Err(self.err(
                            "uplink.gateway",
                            q(&gw.to_string()),
                            format!("gateway is outside every subnet of uplink {}", u.ifname),
                        ));
                    }
                }
                None if host_has_link(&u.ifname) => {}
                None => {
                    return Err(self.err(
                        "uplink.ifname",
                        q(&u.ifname),
                        format!(
                            "interface {} does not exist in the host namespace and no [[link]] creates it there",
                            u.ifname
                        ),
                    ));
                }
            }
        }

        // Isolation pairs.
        let mut pairs = HashSet::new();
        for (i, pair) in t.isolate.iter().enumerate() {
            for (j, name) in pair.iter().enumerate() {
                match t.namespace(name) {
                    Some(n) if t.on_bridge(n) => {}
                    Some(_) => {
                        return Err(self.err(
                            format!("isolate[{i}][{j}]"),
                            q(name),
                            "namespace is not on the bridge (isolation is enforced on bridge ports)",
                        ));
                    }
                    None => {
                        return Err(self.err(
                            format!("isolate[{i}][{j}]"),
                            q(name),
                            format!("unknown namespace {name:?}"),
                        ));
                    }
                }
            }
            if pair[0] == pair[1] {
                return Err(self.err(
                    format!("isolate[{i}]"),
                    q(&pair[0]),
                    "a namespace cannot be isolated from itself",
                ));
            }
            let key = if pair[0] < pair[1] {
                (pair[0].clone(), pair[1].clone())
            } else {
                (pair[1].clone(), pair[0].clone())
            };
            if !pairs.insert(key) {
                return Err(self.err(
                    format!("isolate[{i}]"),
                    format!("[{}, {}]", q(&pair[0]), q(&pair[1])),
                    "pair listed twice",
                ));
            }
        }

        // Forwards.
        let mut ranges: Vec<(usize, Proto, u16, u16)> = Vec::new();
        for (i, fw) in t.forwards.iter().enumerate() {
            let f = |x: &str| format!("forward[{i}].{x}");
            if t.uplink.is_none() {
                return Err(self.err(f("port"), q(&fw.port.raw), "port forwards need an [uplink]"));
            }
            let Some((first, last)) = fw.port.range() else {
                return Err(self.err(
                    f("port"),
                    q(&fw.port.raw),
                    "ports must be 1..=65535, as a number or \"first-last\" with first <= last",
                ));
            };
            let Some((ns, port)) = fw.to.rsplit_once(':') else {
                return Err(self.err(f("to"), q(&fw.to), "must be \"namespace:port\""));
            };
            let Some(target) = t.namespace(ns) else {
                return Err(self.err(f("to"), q(&fw.to), format!("unknown namespace {ns:?}")));
            };
            if !t.on_bridge(target) || !target.addresses.iter().any(|a| a.addr().is_ipv4()) {
                return Err(self.err(
                    f("to"),
                    q(&fw.to),
                    format!("namespace {ns} is not on the bridge with an IPv4 address"),
                ));
            }
            let tport = port.parse::<u16>().ok().filter(|p| *p >= 1);
            let Some(tport) = tport.filter(|p| (*p as u32 + (last - first) as u32) <= 65535) else {
                return Err(self.err(
                    f("to"),
                    q(&fw.to),
                    "target port must be 1..=65535 and the whole range must fit",
                ));
            };
            let _ = tport;
            if let Some((j, ..)) = ranges
                .iter()
                .find(|(_, p, a, b)| *p == fw.proto && first <= *b && *a <= last)
            {
                return Err(self.err(
                    format!("forward[{i}].port"),
                    q(&fw.port.raw),
                    format!("overlaps forward[{j}] (same protocol and external port)"),
                ));
            }
            ranges.push((i, fw.proto, first, last));
            let n_ranges = ranges.iter().filter(|(_, _, a, b)| a != b).count();
            if n_ranges > netbridge_common::MAX_FWD_RANGES as usize {
                return Err(self.err(
                    f("port"),
                    q(&fw.port.raw),
                    format!(
                        "more than {} port ranges (single ports are unlimited up to {MAX_FORWARDS})",
                        netbridge_common::MAX_FWD_RANGES
                    ),
                ));
            }
        }
        Ok(())
    }

    fn route(
        &self,
        field: &str,
        r: &Route,
        ns: &str,
        nets: &[IpNet],
        devs: &HashMap<String, String>,
    ) -> Result<(), ConfigError> {
        let to_v6 = if r.to == "default" {
            r.via.map(|v| v.is_ipv6())
        } else {
            match IpNet::from_str(&r.to) {
                Ok(n) => Some(matches!(n, IpNet::V6(_))),
                Err(_) => {
                    return Err(self.err(
                        format!("{field}.to"),
                        q(&r.to),
                        "must be \"default\" or a CIDR like 10.0.0.0/8",
                    ));
                }
            }
        };
        if r.via.is_none() && r.dev.is_none() {
            return Err(self.err(
                format!("{field}.to"),
                q(&r.to),
                "a route needs `via`, `dev` or both",
            ));
        }
        if let Some(d) = &r.dev {
            self.ifname(&format!("{field}.dev"), d)?;
            if !devs.contains_key(d) {
                return Err(self.err(
                    format!("{field}.dev"),
                    q(d),
                    format!("namespace {ns} has no interface {d}"),
                ));
            }
        }
        if let Some(via) = r.via {
            if to_v6.is_some_and(|v6| v6 != via.is_ipv6()) {
                return Err(self.err(
                    format!("{field}.via"),
                    q(&via.to_string()),
                    format!("address family differs from {}", r.to),
                ));
            }
            if r.dev.is_none() && !nets.iter().any(|n| n.contains(&via)) {
                let subnets: Vec<String> = nets.iter().map(|n| n.trunc().to_string()).collect();
                return Err(self.err(
                    format!("{field}.via"),
                    q(&via.to_string()),
                    format!(
                        "gateway {via} is outside every subnet of namespace {ns} ({}); use an address on one of its links or add `dev` for an on-link gateway",
                        if subnets.is_empty() { "none".to_string() } else { subnets.join(", ") }
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Topology, ConfigError> {
        Topology::parse(text, "t.toml", &|n| n == "eth9")
    }

    fn err(text: &str) -> String {
        match parse(text) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    fn assert_err(text: &str, parts: &[&str]) {
        let e = err(text);
        assert!(e.starts_with("t.toml: "), "{e}");
        for p in parts {
            assert!(e.contains(p), "error {e:?} lacks {p:?}");
        }
    }

    const BRIDGE: &str =
        "name = \"x\"\n[bridge]\nname = \"br0\"\naddresses = [\"192.168.0.1/16\"]\n";

    #[test]
    fn examples_and_default_lab_are_valid() {
        for (name, text) in [
            (
                "two-namespaces",
                include_str!("../../examples/two-namespaces.toml"),
            ),
            (
                "bridge-three",
                include_str!("../../examples/bridge-three.toml"),
            ),
            ("nat-lab", include_str!("../../examples/nat-lab.toml")),
            ("default-lab", DEFAULT_LAB),
        ] {
            let t = Topology::parse(text, name, &|_| false).unwrap_or_else(|e| panic!("{e}"));
            // Round-trips through TOML unchanged (the journal relies on it).
            let again = Topology::parse(&toml::to_string(&t).unwrap(), name, &|_| false).unwrap();
            assert_eq!(t, again, "{name}");
        }
        let lab = Topology::default_lab();
        assert!(
            lab.host_netns.is_some(),
            "default lab must not use the root namespace"
        );
        let bt = parse(include_str!("../../examples/bridge-three.toml")).unwrap();
        assert_eq!(bt.namespaces.iter().filter(|n| bt.on_bridge(n)).count(), 3);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Arbitrary text never panics the parser, and every error names
        /// the file.
        #[test]
        fn arbitrary_text_never_panics(text in ".{0,400}") {
            if let Err(e) = Topology::parse(&text, "fuzz.toml", &|_| false) {
                proptest::prop_assert!(e.to_string().starts_with("fuzz.toml: "));
            }
        }

        /// Valid files with one byte range replaced: still no panic, and
        /// what is accepted is really valid (re-parses from its own TOML).
        #[test]
        fn mutated_examples_never_panic(
            which in 0usize..4,
            at in 0usize..4000,
            len in 0usize..8,
            insert in "[ -~]{0,8}",
        ) {
            let base = [
                include_str!("../../examples/two-namespaces.toml"),
                include_str!("../../examples/bridge-three.toml"),
                include_str!("../../examples/nat-lab.toml"),
                DEFAULT_LAB,
            ][which];
            let mut bytes = base.as_bytes().to_vec();
            let at = at % (bytes.len() + 1);
            let end = (at + len).min(bytes.len());
            bytes.splice(at..end, insert.bytes());
            let text = String::from_utf8_lossy(&bytes);
            match Topology::parse(&text, "fuzz.toml", &|_| true) {
                Ok(t) => {
                    let again = toml::to_string(&t).unwrap();
                    proptest::prop_assert!(Topology::parse(&again, "fuzz.toml", &|_| true).is_ok());
                }
                Err(e) => proptest::prop_assert!(e.to_string().starts_with("fuzz.toml: ")),
            }
        }
    }

    #[test]
    fn anti_spoof() {
        let ns = |extra: &str, n: usize| {
            let addrs: Vec<String> = (1..=n).map(|i| format!("\"192.168.{i}.1/24\"")).collect();
            format!(
                "{BRIDGE}[[namespace]]\nname = \"a\"\naddresses = [{}]\n{extra}",
                addrs.join(", ")
            )
        };
        assert!(
            parse(&ns("", 1)).unwrap().namespaces[0].anti_spoof,
            "on by default"
        );
        assert_err(
            &ns("", 5),
            &[
                "namespace[0].addresses = 5 IPv4 addresses",
                "anti_spoof = false",
            ],
        );
        assert!(!parse(&ns("anti_spoof = false\n", 5)).unwrap().namespaces[0].anti_spoof);
    }

    #[test]
    fn datapath() {
        assert_eq!(
            parse("name = \"x\"\ndatapath = \"tc\"\n").unwrap().datapath,
            Datapath::Tc
        );
        assert_eq!(
            parse("name = \"x\"\ndatapath = \"xdp\"\n")
                .unwrap()
                .datapath,
            Datapath::Xdp
        );
        assert_err(
            "name = \"x\"\ndatapath = \"dpdk\"\n",
            &["invalid TOML", "dpdk"],
        );
    }

    #[test]
    fn syntax_and_unknown_fields() {
        assert!(matches!(
            parse("name = \"x\"\n[bridge\n"),
            Err(ConfigError::Parse { .. })
        ));
        assert_err("name = \"x\"\ncolour = 1\n", &["colour"]);
        assert_err("name = 5\n", &["invalid TOML"]);
    }

    #[test]
    fn names() {
        assert_err("name = \"a/b\"\n", &["name = \"a/b\""]);
        assert_err(
            &format!("name = \"{}\"\n", "n".repeat(33)),
            &["1 to 32 bytes"],
        );
        assert_err(
            "name = \"x\"\n[[namespace]]\nname = \"..\"\nbridge = false\n",
            &["namespace[0].name", "\"..\""],
        );
        assert_err(
            "name = \"x\"\n[[namespace]]\nname = \"r$(id)\"\nbridge = false\n",
            &["namespace[0].name"],
        );
        assert_err(
            "name = \"x\"\n[[namespace]]\nname = \"rüd\"\nbridge = false\n",
            &["namespace[0].name"],
        );
        assert_err(
            "name = \"x\"\n[[namespace]]\nname = \"a\"\nbridge = false\n[[namespace]]\nname = \"a\"\nbridge = false\n",
            &["namespace[1].name", "duplicate"],
        );
        assert_err(
            "name = \"x\"\nhost_netns = \"a\"\n[[namespace]]\nname = \"a\"\nbridge = false\n",
            &["host_netns"],
        );
    }

    #[test]
    fn interface_names() {
        assert_err(
            "name = \"x\"\n[bridge]\nname = \"sixteen-bytes-xx\"\n",
            &["bridge.name", "at most 15 bytes"],
        );
        assert_err(
            "name = \"x\"\n[bridge]\nname = \"a b\"\n",
            &["bridge.name", "\"a b\""],
        );
        assert_err(
            &format!("{BRIDGE}[[namespace]]\nname = \"verylongname1\"\n"),
            &["namespace[0].host_ifname", "nb-verylongname1"],
        );
        assert_err(
            &format!("{BRIDGE}[[namespace]]\nname = \"a\"\nhost_ifname = \"br0\"\n"),
            &[
                "namespace[0].host_ifname",
                "duplicate interface",
                "bridge.name",
            ],
        );
    }

    #[test]
    fn addresses_and_overlaps() {
        assert_err(
            &format!("{BRIDGE}[[namespace]]\nname = \"a\"\naddresses = [\"192.168.1.0/24\"]\n"),
            &["network or broadcast"],
        );
        assert_err(
            &format!("{BRIDGE}[[namespace]]\nname = \"a\"\naddresses = [\"192.168.0.1/24\"]\n"),
            &["already assigned by bridge.addresses[0]"],
        );
        assert_err(
            &format!("{BRIDGE}[[namespace]]\nname = \"a\"\naddresses = [\"192.168.1.999/24\"]\n"),
            &["invalid TOML"],
        );
        let overlap = format!(
            "{BRIDGE}[[namespace]]\nname = \"r\"\nbridge = false\n[[namespace]]\nname = \"g\"\nbridge = false\n\
             [[link]]\na = {{ netns = \"r\", ifname = \"x\", addresses = [\"192.168.5.1/24\"] }}\n\
             b = {{ netns = \"g\", ifname = \"y\", addresses = [\"192.168.5.2/24\"] }}\n"
        );
        assert_err(
            &overlap,
            &["link[0].a.addresses[0]", "overlaps", "the bridge"],
        );
        // /24s inside the bridge /16 are one segment: fine.
        parse(&format!(
            "{BRIDGE}[[namespace]]\nname = \"a\"\naddresses = [\"192.168.1.1/24\"]\n"
        ))
        .unwrap();
    }

    #[test]
    fn routes_and_gateways() {
        let ns = |route: &str| {
            format!(
                "{BRIDGE}[[namespace]]\nname = \"a\"\naddresses = [\"192.168.1.1/24\"]\nroutes = [{route}]\n"
            )
        };
        parse(&ns("{ to = \"default\", dev = \"eth0\" }")).unwrap();
        parse(&ns("{ to = \"10.0.0.0/8\", via = \"192.168.1.254\" }")).unwrap();
        assert_err(
            &ns("{ to = \"default\", via = \"10.9.9.9\" }"),
            &[
                "routes[0].via",
                "10.9.9.9",
                "outside every subnet",
                "192.168.1.0/24",
            ],
        );
        assert_err(
            &ns("{ to = \"nowhere\", dev = \"eth0\" }"),
            &["routes[0].to", "nowhere"],
        );
        assert_err(&ns("{ to = \"default\" }"), &["needs `via`, `dev`"]);
        assert_err(
            &ns("{ to = \"default\", dev = \"eth7\" }"),
            &["routes[0].dev", "no interface eth7"],
        );
        assert_err(
            &ns("{ to = \"10.0.0.0/8\", via = \"2001:db8::1\" }"),
            &["family"],
        );
    }

    #[test]
    fn mtu_sysctls_and_limits() {
        assert_err("name = \"x\"\nmtu = 20\n", &["mtu = 20", "68..=65535"]);
        assert_err("name = \"x\"\nmtu = 100000\n", &["mtu = 100000"]);
        assert_err(
            &format!(
                "{BRIDGE}[[namespace]]\nname = \"a\"\nsysctls = {{ \"kernel.core_pattern\" = \"|sh\" }}\n"
            ),
            &["kernel.core_pattern", "only net.ipv4"],
        );
        assert_err(
            &format!(
                "{BRIDGE}[[namespace]]\nname = \"a\"\nsysctls = {{ \"net.ipv4.ip_forward\" = \"1;reboot\" }}\n"
            ),
            &["1;reboot"],
        );
        let many: String = (0..1001)
            .map(|i| format!("[[namespace]]\nname = \"n{i}\"\nbridge = false\n"))
            .collect();
        assert_err(&format!("name = \"x\"\n{many}"), &["at most 1000"]);
    }

    #[test]
    fn uplink_and_forwards() {
        let base =
            format!("{BRIDGE}[[namespace]]\nname = \"a\"\naddresses = [\"192.168.1.1/24\"]\n");
        assert_err(
            &format!("{base}[uplink]\nifname = \"nosuch0\"\n"),
            &["uplink.ifname", "nosuch0", "does not exist"],
        );
        let up = format!("{base}[uplink]\nifname = \"eth9\"\nmasquerade = true\n");
        parse(&up).unwrap();
        let fw = |port: &str, to: &str| {
            format!("{up}[[forward]]\nproto = \"tcp\"\nport = {port}\nto = \"{to}\"\n")
        };
        parse(&fw("8080", "a:80")).unwrap();
        parse(&fw("\"8000-8010\"", "a:9000")).unwrap();
        assert_err(&fw("0", "a:80"), &["forward[0].port = \"0\""]);
        assert_err(&fw("70000", "a:80"), &["70000"]);
        assert_err(&fw("\"9-3\"", "a:80"), &["\"9-3\""]);
        assert_err(&fw("\"abc\"", "a:80"), &["\"abc\""]);
        assert_err(
            &fw("8080", "nosuch:80"),
            &["forward[0].to", "unknown namespace"],
        );
        assert_err(&fw("8080", "a:0"), &["forward[0].to", "a:0"]);
        assert_err(&fw("\"65000-65100\"", "a:65500"), &["whole range"]);
        assert_err(&fw("8080", "a"), &["namespace:port"]);
        let dup = format!(
            "{}[[forward]]\nproto = \"tcp\"\nport = \"8000-8090\"\nto = \"a:81\"\n",
            fw("8080", "a:80")
        );
        assert_err(&dup, &["forward[1].port", "overlaps forward[0]"]);
        // Same port, other protocol: fine.
        parse(&format!(
            "{}[[forward]]\nproto = \"udp\"\nport = 8080\nto = \"a:81\"\n",
            fw("8080", "a:80")
        ))
        .unwrap();
        assert_err(
            &format!("{base}[[forward]]\nproto = \"tcp\"\nport = 80\nto = \"a:80\"\n"),
            &["need an [uplink]"],
        );
    }
}
