//! The topology file: TOML format, parsing and validation.
//!
//! Everything is checked before anything on the host changes; every error
//! names the file, the field (as a path like `namespace[2].addresses[0]`),
//! the offending value and the problem.
use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

mod validate;

/// The embedded default lab (`cargo xtask run`, `netbridge up` without -f).
pub const DEFAULT_LAB: &str = include_str!("../default-lab.toml");

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

/// What `up` does about IPv6 duplicate address detection.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Ipv6Dad {
    /// Addresses go on with IFA_F_NODAD: usable at once (netbridge
    /// assigns each once).
    #[default]
    Nodad,
    /// The kernel runs DAD; `up` waits until no IPv6 address of the
    /// topology is tentative and fails, naming it, on a duplicate.
    Wait,
}

/// The IPv4 addresses among `addrs`, in order.
pub fn ipv4s(addrs: &[IpNet]) -> impl Iterator<Item = Ipv4Addr> + '_ {
    addrs.iter().filter_map(|a| match a.addr() {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(_) => None,
    })
}

/// The IPv6 addresses among `addrs`.
pub fn ipv6s(addrs: &[IpNet]) -> impl Iterator<Item = Ipv6Addr> + '_ {
    addrs.iter().filter_map(|a| match a.addr() {
        IpAddr::V6(v6) => Some(v6),
        IpAddr::V4(_) => None,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
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
    /// IPv6 duplicate address detection: `"nodad"` (default) or `"wait"`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub ipv6_dad: Ipv6Dad,
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

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
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
    /// The namespace is an IPv6 router: its Router Advertisements,
    /// Redirects and DHCPv6 server replies pass (RA guard off).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ipv6_router: bool,
}

/// Where a port's inner end lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PortNetns {
    /// A namespace under /run/netns, created by netbridge if missing (and
    /// then deleted with the port).
    Named(String),
    /// An existing namespace file (a CNI runtime's CNI_NETNS,
    /// /proc/PID/ns/net), never created or deleted by netbridge.
    Path(PathBuf),
}

/// One port on the bridge: a veth pair whose host end (`host_ifname`) is
/// enslaved to the bridge and whose other end (`ifname`) sits in `netns`
/// with the port's addresses and routes. A bridged `[[namespace]]` is one;
/// a port attached to a running topology (`topology::add_port`, the CNI
/// plugin's attachment) is another.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Port {
    /// Unique among the topology's namespaces and ports (1-32 of A-Z a-z
    /// 0-9 - _); names it in the journal, `stats`, `fdb` and `status`.
    pub name: String,
    pub netns: PortNetns,
    pub ifname: String,
    pub host_ifname: String,
    #[serde(default)]
    pub addresses: Vec<IpNet>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sysctls: BTreeMap<String, String>,
    /// Drop frames whose source MAC, IPv4 address or ARP sender is not this
    /// port's namespace end's (see `Namespace::anti_spoof`).
    #[serde(default = "default_true")]
    pub anti_spoof: bool,
    /// MAC of the namespace end; None: the kernel's random one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<[u8; 6]>,
    /// See `Namespace::ipv6_router`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ipv6_router: bool,
}

impl Port {
    /// The port of bridged namespace `ns` of `t`.
    pub fn of_namespace(t: &Topology, ns: &Namespace) -> Port {
        Port {
            name: ns.name.clone(),
            netns: PortNetns::Named(ns.name.clone()),
            ifname: ns.ifname.clone(),
            host_ifname: Topology::host_ifname(ns),
            addresses: ns.addresses.clone(),
            routes: ns.routes.clone(),
            mtu: t.mtu_for_namespace(ns),
            sysctls: ns.sysctls.clone(),
            anti_spoof: ns.anti_spoof,
            mac: None,
            ipv6_router: ns.ipv6_router,
        }
    }

    /// The port as a bridged `[[namespace]]`, for validation.
    fn as_namespace(&self) -> Namespace {
        Namespace {
            name: self.name.clone(),
            bridge: Some(true),
            ifname: self.ifname.clone(),
            host_ifname: Some(self.host_ifname.clone()),
            addresses: self.addresses.clone(),
            routes: self.routes.clone(),
            mtu: self.mtu,
            sysctls: self.sysctls.clone(),
            anti_spoof: self.anti_spoof,
            ipv6_router: self.ipv6_router,
        }
    }
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
    /// If set: IPv6 default route in the host namespace via this gateway
    /// (with `gateway` an IPv4 one, for a dual-stack uplink).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<IpAddr>,
    /// SNAT port range, "first-last" (default 1024-65535).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat_ports: Option<PortSpec>,
    /// Endpoint-independent mapping (RFC 4787): an inside address:port keeps
    /// one external port for every destination. Absent: off, unless a
    /// non-default `filtering` turns it on (explicit `false` with one is an
    /// error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_independent: Option<bool>,
    /// New NAT sessions are dropped (counted) beyond this many.
    #[serde(default = "default_max_sessions")]
    pub max_sessions: u32,
    /// Live sessions one upstream address may hold through the forwards;
    /// 0 (default): no quota, the admission policy alone (README, "Admission
    /// under pressure"). Beyond it, its new sessions are refused
    /// (`nat_quota`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_sessions_per_source: u32,
    /// Live sessions one lab host may hold (SNAT, hairpin); 0 (default): no
    /// quota.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_sessions_per_host: u32,
    /// Established sessions skip the kernel's bridge and routing (see
    /// README, NAT). Off: every packet is routed by the kernel and
    /// translated on the uplink.
    #[serde(default = "default_true")]
    pub fast_path: bool,
    #[serde(default)]
    pub timeouts: NatTimeouts,
    /// Which inbound packets with no session reach a mapping (RFC 4787
    /// REQ-8, RFC 5382 REQ-3). Other than the default it needs, and turns
    /// on, endpoint-independent mapping.
    #[serde(default, skip_serializing_if = "Filtering::is_default")]
    pub filtering: Filtering,
    /// Inbound packets refresh SNAT mappings too (RFC 4787 REQ-6 MAY); off,
    /// only outbound ones do (RFC 7857 sec. 7).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inbound_refresh: bool,
    /// What an unsolicited inbound TCP SYN to the uplink address in the
    /// NAT port range gets (RFC 5382 REQ-4): the host stack's RST
    /// (default, as MASQUERADE) or nothing (dropped, counted).
    #[serde(default, skip_serializing_if = "UnsolicitedSyn::is_default")]
    pub unsolicited_syn: UnsolicitedSyn,
}

/// `uplink.unsolicited_syn` (RFC 5382 REQ-4).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnsolicitedSyn {
    /// The host's stack answers with a RST at once (Linux MASQUERADE).
    #[default]
    Reset,
    /// Dropped silently (`nat_unsolicited_syn`): a TCP simultaneous open
    /// whose outside SYN comes first still works.
    Drop,
}

impl UnsolicitedSyn {
    pub fn is_default(&self) -> bool {
        *self == UnsolicitedSyn::Reset
    }
}

/// `uplink.filtering` (RFC 4787 sec. 5).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Filtering {
    /// Only the remote address and port a mapping sent to may answer
    /// (Linux MASQUERADE's behaviour).
    #[default]
    AddressAndPortDependent,
    /// Any port of a remote address the mapping sent to may answer.
    AddressDependent,
    /// Anyone may send to a mapping ("full cone", for P2P labs).
    EndpointIndependent,
}

impl Filtering {
    pub fn is_default(&self) -> bool {
        *self == Filtering::AddressAndPortDependent
    }

    /// The setting's name in the topology file.
    pub fn name(self) -> &'static str {
        match self {
            Filtering::AddressAndPortDependent => "address-and-port-dependent",
            Filtering::AddressDependent => "address-dependent",
            Filtering::EndpointIndependent => "endpoint-independent",
        }
    }

    /// The `FILTER_*` code of the datapath.
    pub fn code(self) -> u8 {
        match self {
            Filtering::AddressAndPortDependent => netbridge_common::FILTER_APDF,
            Filtering::AddressDependent => netbridge_common::FILTER_ADF,
            Filtering::EndpointIndependent => netbridge_common::FILTER_EIF,
        }
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
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
        // The RFCs' floors (README, NAT conformance): UDP 2 min (RFC 4787
        // REQ-5), 5 min recommended; TCP established 2 h 4 min and
        // transitory 4 min (RFC 5382 REQ-5, RFC 7857 sec. 2.1/2.2); ICMP
        // query 60 s (RFC 5508 REQ-2).
        NatTimeouts {
            tcp_syn: 240,
            tcp_established: 7440,
            tcp_closing: 240,
            tcp_closed: 240,
            udp: 120,
            udp_replied: 300,
            icmp: 60,
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

    pub(crate) fn fields(&self) -> [(&'static str, u32); 7] {
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
        validate::validate(file, &t, host_has_link)?;
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

    /// Every port on the bridge: the bridged namespaces, then `attached`.
    pub fn ports(&self, attached: &[Port]) -> Vec<Port> {
        self.namespaces
            .iter()
            .filter(|n| self.on_bridge(n))
            .map(|n| Port::of_namespace(self, n))
            .chain(attached.iter().cloned())
            .collect()
    }

    /// Checks the topology with `attached` ports added, as if each were a
    /// bridged `[[namespace]]` of `file`: unique names and interfaces,
    /// addresses unique and inside the bridge's segment, routes, limits.
    pub fn check_ports(&self, attached: &[Port], file: &str) -> Result<(), ConfigError> {
        if attached.is_empty() {
            return Ok(());
        }
        let mut t = self.clone();
        t.namespaces.extend(attached.iter().map(Port::as_namespace));
        if t.bridge.is_none() {
            return Err(ConfigError::Invalid {
                file: file.into(),
                field: "bridge".into(),
                value: "none".into(),
                problem: format!("topology {} has no bridge to attach ports to", self.name),
            });
        }
        validate::validate(file, &t, &|_| true)
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

/// Parsing helpers of the unit tests here and in `validate`.
#[cfg(test)]
mod testing {
    use super::*;

    /// Parses `text` as file t.toml; only eth9 exists in the host.
    pub fn parse(text: &str) -> Result<Topology, ConfigError> {
        Topology::parse(text, "t.toml", &|n| n == "eth9")
    }

    pub fn err(text: &str) -> String {
        match parse(text) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    pub fn assert_err(text: &str, parts: &[&str]) {
        let e = err(text);
        assert!(e.starts_with("t.toml: "), "{e}");
        for p in parts {
            assert!(e.contains(p), "error {e:?} lacks {p:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{assert_err, parse};
    use super::*;

    #[test]
    fn examples_and_default_lab_are_valid() {
        for (name, text) in [
            (
                "two-namespaces",
                include_str!("../../../examples/two-namespaces.toml"),
            ),
            (
                "bridge-three",
                include_str!("../../../examples/bridge-three.toml"),
            ),
            ("nat-lab", include_str!("../../../examples/nat-lab.toml")),
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
        let bt = parse(include_str!("../../../examples/bridge-three.toml")).unwrap();
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
                include_str!("../../../examples/two-namespaces.toml"),
                include_str!("../../../examples/bridge-three.toml"),
                include_str!("../../../examples/nat-lab.toml"),
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
    fn ipv6_dad() {
        let dad = |v: &str| parse(&format!("name = \"x\"\n{v}")).map(|t| t.ipv6_dad);
        assert_eq!(dad("").unwrap(), Ipv6Dad::Nodad);
        assert_eq!(dad("ipv6_dad = \"nodad\"\n").unwrap(), Ipv6Dad::Nodad);
        assert_eq!(dad("ipv6_dad = \"wait\"\n").unwrap(), Ipv6Dad::Wait);
        assert_err(
            "name = \"x\"\nipv6_dad = \"skip\"\n",
            &["invalid TOML", "ipv6_dad", "skip", "nodad", "wait"],
        );
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

    /// Attached ports are checked as bridged namespaces of the topology;
    /// a topology without a bridge takes none.
    #[test]
    fn attached_ports_are_validated_with_the_topology() {
        let t = parse(include_str!("../../../examples/bridge-three.toml")).unwrap();
        let ports = t.ports(&[]);
        assert_eq!(ports.len(), 3);
        let mut p = ports[0].clone();
        p.name = "new".into();
        p.netns = PortNetns::Path("/proc/1/ns/net".into());
        p.host_ifname = "nb-new".into();
        p.addresses = vec!["192.168.7.1/24".parse().unwrap()];
        t.check_ports(std::slice::from_ref(&p), "add").unwrap();
        assert_eq!(t.ports(std::slice::from_ref(&p)).len(), 4);
        let clash = Port {
            addresses: vec!["192.168.1.1/24".parse().unwrap()],
            ..p.clone()
        };
        let e = t.check_ports(&[clash], "add").unwrap_err().to_string();
        assert!(
            e.starts_with(
                "add: namespace[3].addresses[0] = \"192.168.1.1/24\": address already assigned"
            ),
            "{e}"
        );
        let e = t
            .check_ports(&[p.clone(), p.clone()], "add")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("namespace[4].name = \"new\": duplicate namespace name"),
            "{e}"
        );
        let bare = parse("name = \"x\"\n").unwrap();
        let e = bare.check_ports(&[p], "add").unwrap_err().to_string();
        assert!(
            e.contains("bridge = none: topology x has no bridge to attach ports to"),
            "{e}"
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
}
