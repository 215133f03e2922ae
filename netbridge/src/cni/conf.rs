//! The plugin configuration a runtime passes on stdin: the reference bridge
//! plugin's keys, the keys the runtime adds, and netbridge's own keys.
//! Parsed by hand so every error names the key and value; netbridge's
//! unknown keys are errors (code 2), so a typo never passes silently.
use std::{collections::BTreeMap, net::IpAddr};

use serde_json::{Map, Value};

use super::{
    env::{ifname_problem, is_cni_name, parse_ip_maybe_cidr},
    error::{CniError, code},
    ipam::IpamConf,
    result::{CniResult, Dns},
    version::CniVersion,
};
use crate::config::{Datapath, Proto};

/// One plugin request configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub cni_version: CniVersion,
    /// Network name (`name`).
    pub name: String,
    /// `type`: the plugin binary's name, normally `netbridge-cni`.
    pub plugin_type: String,
    pub bridge: BridgeConf,
    pub netbridge: NetbridgeConf,
    /// None: no `ipam` section (L2 only, as the reference bridge allows).
    pub ipam: Option<IpamConf>,
    /// Well-known `dns` key, copied into the result.
    pub dns: Dns,
    /// `capabilities` as configured (the runtime strips it before calling
    /// plugins, but a single `.conf` file may carry it).
    pub capabilities: BTreeMap<String, bool>,
    pub runtime: RuntimeConfig,
    /// `args.cni.ips` / `args.cni.mac` (CONVENTIONS.md).
    pub args_ips: Vec<IpAddr>,
    pub args_mac: Option<String>,
    pub prev_result: Option<CniResult>,
    /// GC's `cni.dev/valid-attachments`; None when absent.
    pub valid_attachments: Option<Vec<Attachment>>,
}

/// The reference bridge plugin's keys that netbridge-cni implements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeConf {
    /// `bridge` (default `cni0`).
    pub name: String,
    /// `isGateway`: the IPAM gateway address goes on the bridge. Implied by
    /// `isDefaultGateway`, as in the reference plugin.
    pub is_gateway: bool,
    /// `isDefaultGateway`: default route in the container via the gateway.
    pub is_default_gateway: bool,
    /// `ipMasq`: SNAT to the uplink for traffic leaving the network (BPF).
    pub ip_masq: bool,
    /// `mtu` of the bridge and both veth ends; None = kernel default.
    pub mtu: Option<u32>,
    /// `hairpinMode`: a container reaches itself through a published port.
    pub hairpin_mode: bool,
}

/// netbridge's own keys (camelCase like the bridge plugin's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetbridgeConf {
    /// `uplink`: node interface for masquerade and port mappings; None =
    /// the interface of the node's default route, found at ADD.
    pub uplink: Option<String>,
    /// `antiSpoof` (default true): drop frames whose source MAC/IPv4/ARP
    /// sender is not the container's.
    pub anti_spoof: bool,
    /// `datapath`: "tc" (default) or "xdp".
    pub datapath: Datapath,
    /// `natPorts`: SNAT port range "first-last" (engine default 1024-65535).
    pub nat_ports: Option<(u16, u16)>,
    /// `maxSessions`: NAT session limit.
    pub max_sessions: Option<u32>,
    /// `agingSecs`: FDB aging (1-86400).
    pub aging_secs: Option<u32>,
}

impl Default for NetbridgeConf {
    fn default() -> Self {
        NetbridgeConf {
            uplink: None,
            anti_spoof: true,
            datapath: Datapath::Tc,
            nat_ports: None,
            max_sessions: None,
            aging_secs: None,
        }
    }
}

/// `runtimeConfig`: capability arguments the runtime inserted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeConfig {
    pub port_mappings: Vec<PortMapping>,
    /// `ips` capability: requested addresses.
    pub ips: Vec<IpAddr>,
    /// `mac` capability.
    pub mac: Option<String>,
}

/// One `portMappings` entry (CONVENTIONS.md), `hostIP` included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Proto,
    /// None: every address of the node ("" and absent, as podman sends them).
    pub host_ip: Option<IpAddr>,
}

impl PortMapping {
    /// Whether the mapping listens on `addr` (unspecified = all addresses).
    pub fn applies_to(&self, addr: IpAddr) -> bool {
        match self.host_ip {
            None => true,
            Some(h) => h.is_unspecified() && h.is_ipv4() == addr.is_ipv4() || h == addr,
        }
    }
}

/// One attachment: what ADD/DEL key on and what GC lists as still valid.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The reference bridge keys netbridge-cni does not implement, and the
/// value that means "off" there (accepted silently; anything else is code 2).
const REFERENCE_ONLY: [(&str, &str); 7] = [
    ("forceAddress", "false"),
    ("promiscMode", "false"),
    ("vlan", "0"),
    ("vlanTrunk", "[]"),
    ("enabledad", "false"),
    ("disableContainerInterface", "false"),
    ("portIsolation", "false"),
];

/// Keys of a network list that may appear when a runtime passes a single
/// `.conf` file as is; they mean nothing to a plugin.
const LIST_KEYS: [&str; 4] = [
    "cniVersions",
    "disableCheck",
    "disableGC",
    "loadOnlyInlinedPlugins",
];

/// A JSON object being consumed key by key; what is left at the end is unknown.
pub(crate) struct Fields {
    pub(crate) at: String,
    pub(crate) m: Map<String, Value>,
}

impl Fields {
    pub(crate) fn new(at: &str, v: Value) -> Result<Self, CniError> {
        match v {
            Value::Object(m) => Ok(Fields { at: at.into(), m }),
            other => Err(CniError::invalid(at, &other, "expected an object")),
        }
    }

    pub(crate) fn key(&self, k: &str) -> String {
        if self.at.is_empty() {
            k.into()
        } else {
            format!("{}.{k}", self.at)
        }
    }

    /// Removes `k`; JSON null counts as absent.
    pub(crate) fn take(&mut self, k: &str) -> Option<Value> {
        self.m.remove(k).filter(|v| !v.is_null())
    }

    pub(crate) fn bool(&mut self, k: &str, default: bool) -> Result<bool, CniError> {
        match self.take(k) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(b),
            Some(v) => Err(CniError::invalid(
                &self.key(k),
                &v,
                "expected true or false",
            )),
        }
    }

    pub(crate) fn string(&mut self, k: &str) -> Result<Option<String>, CniError> {
        match self.take(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(CniError::invalid(&self.key(k), &v, "expected a string")),
        }
    }

    /// A string key parsed with `FromStr`; `problem` says what it must be.
    pub(crate) fn parsed<T: std::str::FromStr>(
        &mut self,
        k: &str,
        problem: &str,
    ) -> Result<Option<T>, CniError> {
        let key = self.key(k);
        match self.string(k)? {
            None => Ok(None),
            Some(s) => s
                .parse()
                .map(Some)
                .map_err(|_| CniError::invalid(&key, &Value::String(s), problem)),
        }
    }

    pub(crate) fn uint(&mut self, k: &str, min: u64, max: u64) -> Result<Option<u64>, CniError> {
        match self.take(k) {
            None => Ok(None),
            Some(v) => match v.as_u64().filter(|n| (min..=max).contains(n)) {
                Some(n) => Ok(Some(n)),
                None => Err(CniError::invalid(
                    &self.key(k),
                    &v,
                    format!("expected an integer in {min}..={max}"),
                )),
            },
        }
    }

    pub(crate) fn list(&mut self, k: &str) -> Result<Vec<Value>, CniError> {
        match self.take(k) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => Ok(a),
            Some(v) => Err(CniError::invalid(&self.key(k), &v, "expected a list")),
        }
    }

    pub(crate) fn ip_list(&mut self, k: &str) -> Result<Vec<IpAddr>, CniError> {
        let key = self.key(k);
        self.list(k)?
            .into_iter()
            .map(|v| {
                v.as_str()
                    .and_then(parse_ip_maybe_cidr)
                    .ok_or_else(|| CniError::invalid(&key, &v, "expected an IP address"))
            })
            .collect()
    }

    /// Code 2 for the first key nobody consumed.
    pub(crate) fn deny_unknown(self, whose: &str) -> Result<(), CniError> {
        match self.m.into_iter().next() {
            None => Ok(()),
            Some((k, v)) => Err(CniError::unsupported(
                &if self.at.is_empty() {
                    k
                } else {
                    format!("{}.{k}", self.at)
                },
                &v,
                format!("unknown key in {whose}"),
            )),
        }
    }
}

impl NetConf {
    /// Parses stdin. Errors: 6 (not JSON / not an object), 1 (version),
    /// 7 (a known key with a bad value), 2 (a key netbridge does not know or
    /// a reference bridge feature it does not implement).
    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        let v: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                code::DECODING_FAILURE,
                format!("error unmarshall network config: {e}"),
            )
        })?;
        if !v.is_object() {
            return Err(CniError::new(
                code::DECODING_FAILURE,
                format!("network config is not a JSON object: {v}"),
            ));
        }
        let mut f = Fields::new("", v)?;
        let cni_version = CniVersion::parse(f.take("cniVersion").as_ref().and_then(Value::as_str))?;
        let name = f.string("name")?.unwrap_or_default();
        if !is_cni_name(&name) {
            return Err(CniError::invalid(
                "name",
                &Value::String(name),
                "network names are [A-Za-z0-9][A-Za-z0-9_.-]*",
            ));
        }
        let plugin_type = f
            .string("type")?
            .filter(|t| !t.is_empty() && !t.contains('/'));
        let plugin_type = plugin_type.ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                "type: missing or not a plugin binary name",
            )
        })?;
        let bridge = parse_bridge(&mut f)?;
        let netbridge = parse_netbridge(&mut f)?;
        let ipam = match f.take("ipam") {
            None => None,
            Some(v) => Some(IpamConf::parse(v, &plugin_type)?),
        };
        let dns = match f.take("dns") {
            None => Dns::default(),
            Some(v) => parse_dns(v)?,
        };
        let capabilities = parse_capabilities(&mut f)?;
        let runtime = match f.take("runtimeConfig") {
            None => RuntimeConfig::default(),
            Some(v) => parse_runtime(Fields::new("runtimeConfig", v)?)?,
        };
        let (args_ips, args_mac) = parse_args(&mut f)?;
        let prev_result = match f.take("prevResult") {
            None => None,
            Some(v) => Some(CniResult::from_json(&v).map_err(|e| e.context("prevResult"))?),
        };
        let valid_attachments = parse_attachments(&mut f)?;
        // Reserved for the runtime: other cni.dev/ keys pass.
        f.m.retain(|k, _| !k.starts_with("cni.dev/") && !LIST_KEYS.contains(&k.as_str()));
        f.deny_unknown("the netbridge-cni configuration")?;
        Ok(NetConf {
            cni_version,
            name,
            plugin_type,
            bridge,
            netbridge,
            ipam,
            dns,
            capabilities,
            runtime,
            args_ips,
            args_mac,
            prev_result,
            valid_attachments,
        })
    }

    /// Addresses asked for by the runtime or user: `runtimeConfig.ips`, then
    /// `args.cni.ips` (CONVENTIONS.md); CNI_ARGS `IP=` is the env's.
    pub fn requested_ips(&self) -> Vec<IpAddr> {
        let mut v = self.runtime.ips.clone();
        v.extend(
            self.args_ips
                .iter()
                .filter(|ip| !v.contains(ip))
                .copied()
                .collect::<Vec<_>>(),
        );
        v
    }
}

fn parse_bridge(f: &mut Fields) -> Result<BridgeConf, CniError> {
    let name = f.string("bridge")?.unwrap_or_else(|| "cni0".into());
    if let Some(why) = ifname_problem(&name) {
        return Err(CniError::invalid("bridge", &Value::String(name), why));
    }
    let is_default_gateway = f.bool("isDefaultGateway", false)?;
    let is_gateway = f.bool("isGateway", false)? || is_default_gateway;
    let ip_masq = f.bool("ipMasq", false)?;
    // The reference plugin treats 0 as "not set".
    let mtu = match f.uint("mtu", 0, 65535)? {
        Some(0) | None => None,
        Some(m) if m < 68 => {
            return Err(CniError::invalid(
                "mtu",
                &m.into(),
                "MTU must be 68..=65535",
            ));
        }
        Some(m) => Some(m as u32),
    };
    let hairpin_mode = f.bool("hairpinMode", false)?;
    for (k, off) in REFERENCE_ONLY {
        if let Some(v) = f.take(k)
            && v != serde_json::from_str::<Value>(off).expect("literal JSON")
        {
            return Err(CniError::unsupported(
                k,
                &v,
                "a reference bridge plugin feature netbridge-cni does not implement",
            ));
        }
    }
    // Implementation choices of the reference plugin, moot for a BPF
    // datapath: any value is fine. (netbridge masquerades in BPF.)
    for k in ["ipMasqBackend", "preserveDefaultVlan"] {
        f.take(k);
    }
    if let Some(v) = f.take("macspoofchk") {
        if !v.is_boolean() {
            return Err(CniError::invalid(
                "macspoofchk",
                &v,
                "expected true or false",
            ));
        }
        // netbridge's anti-spoofing is `antiSpoof`; a contradiction is an error.
        if v == Value::Bool(true) && f.m.get("antiSpoof") == Some(&Value::Bool(false)) {
            return Err(CniError::invalid(
                "macspoofchk",
                &v,
                "contradicts antiSpoof = false",
            ));
        }
    }
    Ok(BridgeConf {
        name,
        is_gateway,
        is_default_gateway,
        ip_masq,
        mtu,
        hairpin_mode,
    })
}

fn parse_netbridge(f: &mut Fields) -> Result<NetbridgeConf, CniError> {
    let uplink = f.string("uplink")?;
    if let Some(u) = &uplink
        && let Some(why) = ifname_problem(u)
    {
        return Err(CniError::invalid("uplink", &Value::String(u.clone()), why));
    }
    let datapath = match f.take("datapath") {
        None => Datapath::Tc,
        Some(v) => match v.as_str() {
            Some("tc") => Datapath::Tc,
            Some("xdp") => Datapath::Xdp,
            _ => {
                return Err(CniError::invalid(
                    "datapath",
                    &v,
                    "expected \"tc\" or \"xdp\"",
                ));
            }
        },
    };
    let nat_ports = match f.take("natPorts") {
        None => None,
        Some(v) => Some(parse_port_range(&v).ok_or_else(|| {
            CniError::invalid(
                "natPorts",
                &v,
                "expected \"first-last\" within 1..=65535, first <= last",
            )
        })?),
    };
    Ok(NetbridgeConf {
        anti_spoof: f.bool("antiSpoof", true)?,
        uplink,
        datapath,
        nat_ports,
        max_sessions: f.uint("maxSessions", 1, u32::MAX as u64)?.map(|n| n as u32),
        aging_secs: f.uint("agingSecs", 1, 86400)?.map(|n| n as u32),
    })
}

fn parse_port_range(v: &Value) -> Option<(u16, u16)> {
    let (a, b) = v.as_str()?.split_once('-')?;
    let (a, b) = (a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?);
    (a >= 1 && a <= b).then_some((a, b))
}

fn parse_dns(v: Value) -> Result<Dns, CniError> {
    let mut f = Fields::new("dns", v)?;
    let strings = |f: &mut Fields, k: &str| -> Result<Vec<String>, CniError> {
        let key = f.key(k);
        f.list(k)?
            .into_iter()
            .map(|s| match s {
                Value::String(s) => Ok(s),
                other => Err(CniError::invalid(&key, &other, "expected a string")),
            })
            .collect()
    };
    let dns = Dns {
        nameservers: strings(&mut f, "nameservers")?,
        domain: f.string("domain")?,
        search: strings(&mut f, "search")?,
        options: strings(&mut f, "options")?,
    };
    f.deny_unknown("dns")?;
    Ok(dns)
}

fn parse_capabilities(f: &mut Fields) -> Result<BTreeMap<String, bool>, CniError> {
    let Some(v) = f.take("capabilities") else {
        return Ok(BTreeMap::new());
    };
    let m = v
        .as_object()
        .ok_or_else(|| CniError::invalid("capabilities", &v, "expected an object"))?;
    m.iter()
        .map(|(k, b)| match b {
            Value::Bool(b) => Ok((k.clone(), *b)),
            other => Err(CniError::invalid(
                &format!("capabilities.{k}"),
                other,
                "expected true or false",
            )),
        })
        .collect()
}

fn parse_runtime(mut f: Fields) -> Result<RuntimeConfig, CniError> {
    let maps = f.list("portMappings")?;
    let mut port_mappings: Vec<PortMapping> = Vec::new();
    for (i, v) in maps.into_iter().enumerate() {
        let pm = parse_port_mapping(&format!("runtimeConfig.portMappings[{i}]"), v)?;
        if port_mappings.iter().any(|o| {
            (o.protocol, o.host_port, o.host_ip) == (pm.protocol, pm.host_port, pm.host_ip)
        }) {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!(
                    "runtimeConfig.portMappings[{i}]: host port {} mapped twice",
                    pm.host_port
                ),
            ));
        }
        port_mappings.push(pm);
    }
    let ips = f.ip_list("ips")?;
    let mac = f.string("mac")?;
    // Capabilities netbridge-cni does not declare (aliases, bandwidth, ...)
    // only arrive if the admin declared them; they are not ours to judge.
    Ok(RuntimeConfig {
        port_mappings,
        ips,
        mac,
    })
}

fn parse_port_mapping(at: &str, v: Value) -> Result<PortMapping, CniError> {
    let mut f = Fields::new(at, v)?;
    let host_port = f.uint("hostPort", 1, 65535)?;
    let container_port = f.uint("containerPort", 1, 65535)?;
    let (Some(host_port), Some(container_port)) = (host_port, container_port) else {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!("{at}: hostPort and containerPort are required"),
        ));
    };
    let protocol = match f.take("protocol") {
        None => Proto::Tcp,
        Some(v) => match v.as_str().map(str::to_ascii_lowercase).as_deref() {
            Some("tcp") => Proto::Tcp,
            Some("udp") => Proto::Udp,
            Some("sctp") => {
                return Err(CniError::unsupported(
                    &f.key("protocol"),
                    &v,
                    "netbridge maps tcp and udp only",
                ));
            }
            _ => {
                return Err(CniError::invalid(
                    &f.key("protocol"),
                    &v,
                    "expected tcp or udp",
                ));
            }
        },
    };
    // podman sends "" for "every address".
    if f.m.get("hostIP").and_then(Value::as_str) == Some("") {
        f.take("hostIP");
    }
    let host_ip = f.parsed("hostIP", "expected an IP address")?;
    f.deny_unknown("a port mapping")?;
    Ok(PortMapping {
        host_port: host_port as u16,
        container_port: container_port as u16,
        protocol,
        host_ip,
    })
}

fn parse_args(f: &mut Fields) -> Result<(Vec<IpAddr>, Option<String>), CniError> {
    let Some(v) = f.take("args") else {
        return Ok((Vec::new(), None));
    };
    let mut args = Fields::new("args", v)?;
    let Some(cni) = args.take("cni") else {
        return Ok((Vec::new(), None));
    };
    // Other namespaces under `args` belong to other consumers.
    let mut cni = Fields::new("args.cni", cni)?;
    Ok((cni.ip_list("ips")?, cni.string("mac")?))
}

fn parse_attachments(f: &mut Fields) -> Result<Option<Vec<Attachment>>, CniError> {
    const KEY: &str = "cni.dev/valid-attachments";
    let Some(v) = f.take(KEY) else {
        return Ok(None);
    };
    serde_json::from_value::<Vec<Attachment>>(v.clone())
        .map(Some)
        .map_err(|e| CniError::invalid(KEY, &v, e))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::cni::ipam::IpamConf;

    fn parse(v: Value) -> Result<NetConf, CniError> {
        NetConf::parse(v.to_string().as_bytes())
    }

    fn base() -> Value {
        json!({"cniVersion": "1.1.0", "name": "nb", "type": "netbridge-cni"})
    }

    fn with(extra: Value) -> Value {
        let mut b = base();
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        b
    }

    #[test]
    fn reads_podmans_bridge_config_with_delegated_ipam() {
        let c = NetConf::parse(include_bytes!("testdata/podman-bridge-ADD.stdin.json")).unwrap();
        assert_eq!(c.cni_version, CniVersion::V1_0_0);
        assert_eq!(c.plugin_type, "bridge");
        assert!(c.bridge.is_gateway && c.bridge.ip_masq && c.bridge.hairpin_mode);
        assert!(!c.bridge.is_default_gateway);
        assert!(c.bridge.name.starts_with("cni-"));
        assert_eq!(
            c.ipam,
            Some(IpamConf::Delegated {
                plugin: "host-local".into()
            })
        );
        assert_eq!(c.prev_result, None);
        assert!(c.netbridge.anti_spoof);
    }

    #[test]
    fn reads_runtime_keys_podman_adds() {
        // portmap's stdin: prevResult + runtimeConfig.portMappings.
        let c = NetConf::parse(include_bytes!("testdata/podman-portmap-ADD.stdin.json")).unwrap();
        assert_eq!(c.capabilities.get("portMappings"), Some(&true));
        let pm = c.runtime.port_mappings[0];
        assert_eq!(
            (pm.host_port, pm.container_port, pm.protocol),
            (8080, 80, Proto::Tcp)
        );
        assert_eq!(pm.host_ip, None);
        assert_eq!(
            c.prev_result.as_ref().unwrap().container_interface("eth0"),
            Some(2)
        );
        // DEL: prevResult from libcni's cache.
        let d = NetConf::parse(include_bytes!("testdata/podman-bridge-DEL.stdin.json")).unwrap();
        assert_eq!(d.prev_result.unwrap().ips.len(), 1);
        // podman -p 203.0.113.1:8083:80 on a plugin declaring portMappings.
        let h = NetConf::parse(include_bytes!(
            "testdata/podman-netbridge-cni-hostip-ADD.stdin.json"
        ))
        .unwrap();
        let pm = h.runtime.port_mappings[0];
        assert_eq!(pm.host_ip, Some("203.0.113.1".parse().unwrap()));
        assert!(pm.applies_to("203.0.113.1".parse().unwrap()));
        assert!(!pm.applies_to("203.0.113.9".parse().unwrap()));
    }

    #[test]
    fn reads_the_reference_check_config() {
        for text in [
            &include_bytes!("testdata/ref-bridge-0.4.0-CHECK.stdin.json")[..],
            include_bytes!("testdata/ref-bridge-1.0.0-CHECK.stdin.json"),
        ] {
            let c = NetConf::parse(text).unwrap();
            assert!(c.bridge.is_default_gateway && c.bridge.is_gateway);
            assert_eq!(c.bridge.mtu, Some(1400));
            assert_eq!(c.prev_result.unwrap().routes.len(), 1);
        }
    }

    #[test]
    fn defaults() {
        let c = parse(base()).unwrap();
        assert_eq!(c.bridge.name, "cni0");
        assert!(!c.bridge.is_gateway && !c.bridge.ip_masq);
        assert_eq!(c.bridge.mtu, None);
        assert_eq!(c.ipam, None);
        assert_eq!(c.netbridge, NetbridgeConf::default());
        assert_eq!(c.valid_attachments, None);
        assert!(parse(with(json!({"mtu": 0}))).unwrap().bridge.mtu.is_none());
    }

    #[test]
    fn decoding_version_and_name_errors() {
        assert_eq!(
            NetConf::parse(b"{").unwrap_err().code,
            code::DECODING_FAILURE
        );
        assert_eq!(
            NetConf::parse(b"[1]").unwrap_err().code,
            code::DECODING_FAILURE
        );
        let e = parse(with(json!({"cniVersion": "0.3.1"}))).unwrap_err();
        assert_eq!(e.code, code::INCOMPATIBLE_VERSION);
        let e = parse(json!({"name": "nb", "type": "netbridge-cni"})).unwrap_err();
        assert_eq!(
            e.code,
            code::INCOMPATIBLE_VERSION,
            "missing cniVersion is 0.1.0"
        );
        for bad in ["", "-x", "a/b", "a b"] {
            let e = parse(with(json!({"name": bad}))).unwrap_err();
            assert_eq!(e.code, code::INVALID_CONFIG, "{bad:?}");
            assert!(e.msg.starts_with("name = "), "{}", e.msg);
        }
        let e = parse(with(json!({"type": "../x"}))).unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
    }

    #[test]
    fn bad_values_name_key_and_value() {
        for (extra, key) in [
            (json!({"bridge": 3}), "bridge = 3"),
            (
                json!({"bridge": "a-name-that-is-too-long"}),
                "bridge = \"a-name-that-is-too-long\"",
            ),
            (json!({"isGateway": "yes"}), "isGateway = \"yes\""),
            (json!({"mtu": 20}), "mtu = 20"),
            (json!({"mtu": 70000}), "mtu = 70000"),
            (json!({"uplink": "a/b"}), "uplink = \"a/b\""),
            (json!({"datapath": "ebpf"}), "datapath = \"ebpf\""),
            (json!({"natPorts": "2000-1000"}), "natPorts = \"2000-1000\""),
            (json!({"agingSecs": 0}), "agingSecs = 0"),
            (
                json!({"capabilities": {"portMappings": 1}}),
                "capabilities.portMappings = 1",
            ),
            (json!({"dns": {"nameservers": [1]}}), "dns.nameservers = 1"),
            (
                json!({"runtimeConfig": {"portMappings": [{"hostPort": 0, "containerPort": 80}]}}),
                "runtimeConfig.portMappings[0].hostPort = 0",
            ),
            (
                json!({"runtimeConfig": {"portMappings": [{"hostPort": 80, "containerPort": 80, "protocol": "icmp"}]}}),
                "runtimeConfig.portMappings[0].protocol = \"icmp\"",
            ),
            (
                json!({"runtimeConfig": {"portMappings": [{"hostPort": 80, "containerPort": 80, "hostIP": "x"}]}}),
                "runtimeConfig.portMappings[0].hostIP = \"x\"",
            ),
            (
                json!({"runtimeConfig": {"ips": ["nope"]}}),
                "runtimeConfig.ips = \"nope\"",
            ),
            (
                json!({"cni.dev/valid-attachments": [{"containerID": 1}]}),
                "cni.dev/valid-attachments = ",
            ),
            (
                json!({"macspoofchk": true, "antiSpoof": false}),
                "macspoofchk = true",
            ),
        ] {
            let e = parse(with(extra.clone())).unwrap_err();
            assert_eq!(e.code, code::INVALID_CONFIG, "{extra}: {e}");
            assert!(e.msg.starts_with(key), "{extra}: {}", e.msg);
        }
    }

    #[test]
    fn unknown_and_unimplemented_keys_are_code_2() {
        for (extra, key) in [
            (json!({"bridgee": "x"}), "bridgee = \"x\": unknown key"),
            (
                json!({"antispoof": false}),
                "antispoof = false: unknown key",
            ),
            (
                json!({"vlan": 10}),
                "vlan = 10: a reference bridge plugin feature",
            ),
            (json!({"promiscMode": true}), "promiscMode = true"),
            (json!({"portIsolation": true}), "portIsolation = true"),
            (
                json!({"dns": {"server": []}}),
                "dns.server = []: unknown key",
            ),
            (
                json!({"runtimeConfig": {"portMappings": [{"hostPort": 1, "containerPort": 2, "protocol": "sctp"}]}}),
                "runtimeConfig.portMappings[0].protocol = \"sctp\"",
            ),
            (
                json!({"runtimeConfig": {"portMappings": [{"hostPort": 1, "containerPort": 2, "hostIp": "1.2.3.4"}]}}),
                "runtimeConfig.portMappings[0].hostIp",
            ),
        ] {
            let e = parse(with(extra.clone())).unwrap_err();
            assert_eq!(e.code, code::UNSUPPORTED_FIELD, "{extra}: {e}");
            assert!(e.msg.starts_with(key), "{extra}: {}", e.msg);
        }
        // The "off" values of unimplemented reference keys pass.
        let ok = with(
            json!({"vlan": 0, "promiscMode": false, "vlanTrunk": [], "forceAddress": false,
            "ipMasqBackend": "iptables", "preserveDefaultVlan": true, "macspoofchk": true,
            "enabledad": false, "disableContainerInterface": false, "portIsolation": false}),
        );
        parse(ok).unwrap();
    }

    #[test]
    fn runtime_reserved_and_list_keys_pass() {
        let c = parse(with(json!({
            "cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}],
            "cni.dev/some-future-key": {"x": 1},
            "cniVersions": ["1.0.0", "1.1.0"], "disableCheck": false, "disableGC": false,
            "args": {"cni": {"ips": ["192.168.1.5/24"], "mac": "c2:11:22:33:44:55"}, "k8s": {"x": 1}},
            "runtimeConfig": {"ips": ["192.168.1.6"], "aliases": {"nb": ["a"]},
                              "portMappings": [{"hostPort": 53, "containerPort": 5353, "protocol": "UDP", "hostIP": ""}]},
            "dns": {"nameservers": ["192.168.1.1"], "search": ["lab"]},
        })))
        .unwrap();
        assert_eq!(
            c.valid_attachments,
            Some(vec![Attachment {
                container_id: "c1".into(),
                ifname: "eth0".into()
            }])
        );
        assert_eq!(c.args_mac.as_deref(), Some("c2:11:22:33:44:55"));
        let ips: Vec<String> = c.requested_ips().iter().map(|i| i.to_string()).collect();
        assert_eq!(ips, ["192.168.1.6", "192.168.1.5"]);
        let pm = c.runtime.port_mappings[0];
        assert_eq!((pm.protocol, pm.host_ip), (Proto::Udp, None));
        assert_eq!(c.dns.search, ["lab"]);
    }

    #[test]
    fn duplicate_port_mapping_is_an_error() {
        let e = parse(with(json!({"runtimeConfig": {"portMappings": [
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 8080, "containerPort": 81, "protocol": "tcp"}]}})))
        .unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
        // Same port, other protocol or other host IP: fine.
        parse(with(json!({"runtimeConfig": {"portMappings": [
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 8080, "containerPort": 80, "protocol": "udp"},
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "203.0.113.1"}]}})))
        .unwrap();
    }

    #[test]
    fn netbridge_keys() {
        let c = parse(with(
            json!({"uplink": "eth0", "antiSpoof": false, "datapath": "xdp",
            "natPorts": "20000-30000", "maxSessions": 1000, "agingSecs": 60}),
        ))
        .unwrap();
        assert_eq!(
            c.netbridge,
            NetbridgeConf {
                uplink: Some("eth0".into()),
                anti_spoof: false,
                datapath: Datapath::Xdp,
                nat_ports: Some((20000, 30000)),
                max_sessions: Some(1000),
                aging_secs: Some(60),
            }
        );
    }
}
