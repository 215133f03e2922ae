//! The ADD success result (SPEC.md section 5) in one version-neutral type,
//! read from and written in 0.4.0, 1.0.0 or 1.1.0 with the reference bridge
//! plugin's shape and key order.
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Serialize, Serializer, ser::SerializeMap};
use serde_json::{Map, Value};

use super::{
    error::{CniError, code},
    version::CniVersion,
};

/// One interface of the attachment: bridge, host veth, container side.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: Option<String>,
    /// 1.1.0 only.
    pub mtu: Option<u32>,
    /// CNI_NETNS for interfaces inside the container; None on the host.
    pub sandbox: Option<String>,
    /// 1.1.0 only.
    pub socket_path: Option<String>,
    /// 1.1.0 only.
    pub pci_id: Option<String>,
}

/// An address; `interface` indexes `interfaces` (absent in IPAM results).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    pub interface: Option<usize>,
    /// Address with its prefix, host bits kept (`192.168.1.3/24`).
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
    /// The rest are 1.1.0 only.
    pub mtu: Option<u32>,
    pub advmss: Option<u32>,
    pub priority: Option<u32>,
    pub table: Option<u32>,
    pub scope: Option<u32>,
}

impl Route {
    pub fn new(dst: IpNet, gw: Option<IpAddr>) -> Self {
        Route {
            dst,
            gw,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dns {
    pub nameservers: Vec<String>,
    pub domain: Option<String>,
    pub search: Vec<String>,
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

/// A success result (also an IPAM plugin's abbreviated one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

type Obj = Map<String, Value>;

fn bad(what: &str, v: &Value, why: impl std::fmt::Display) -> CniError {
    CniError::new(code::DECODING_FAILURE, format!("{what} = {v}: {why}"))
}

fn opt_str(o: &Obj, k: &str, at: &str) -> Result<Option<String>, CniError> {
    match o.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(bad(&format!("{at}.{k}"), v, "expected a string")),
    }
}

fn opt_u32(o: &Obj, k: &str, at: &str) -> Result<Option<u32>, CniError> {
    match o.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(|n| (n != 0).then_some(n))
            .ok_or_else(|| bad(&format!("{at}.{k}"), v, "expected an unsigned integer")),
    }
}

fn parsed<T: std::str::FromStr>(o: &Obj, k: &str, at: &str) -> Result<Option<T>, CniError> {
    match opt_str(o, k, at)? {
        None => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|_| bad(&format!("{at}.{k}"), &Value::String(s), "not an address")),
    }
}

fn list<'a>(o: &'a Obj, k: &str) -> Result<&'a [Value], CniError> {
    match o.get(k) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(v) => Err(bad(k, v, "expected a list")),
    }
}

fn obj<'a>(v: &'a Value, at: &str) -> Result<&'a Obj, CniError> {
    v.as_object()
        .ok_or_else(|| bad(at, v, "expected an object"))
}

fn strings(o: &Obj, k: &str, at: &str) -> Result<Vec<String>, CniError> {
    list(o, k)?
        .iter()
        .map(|s| {
            s.as_str()
                .map(str::to_string)
                .ok_or_else(|| bad(&format!("{at}.{k}"), s, "expected a string"))
        })
        .collect()
}

impl CniResult {
    /// Reads a result of any supported version (prevResult, a delegate's
    /// output). Unknown keys are ignored, as Go's decoder does.
    pub fn from_json(v: &Value) -> Result<Self, CniError> {
        let o = obj(v, "result")?;
        let mut r = CniResult::default();
        for (i, iv) in list(o, "interfaces")?.iter().enumerate() {
            let at = format!("interfaces[{i}]");
            let io = obj(iv, &at)?;
            r.interfaces.push(Interface {
                name: opt_str(io, "name", &at)?.unwrap_or_default(),
                mac: opt_str(io, "mac", &at)?,
                mtu: opt_u32(io, "mtu", &at)?,
                sandbox: opt_str(io, "sandbox", &at)?,
                socket_path: opt_str(io, "socketPath", &at)?,
                pci_id: opt_str(io, "pciID", &at)?,
            });
        }
        for (i, iv) in list(o, "ips")?.iter().enumerate() {
            r.ips.push(Self::ip_from(iv, i, r.interfaces.len())?);
        }
        for (i, rv) in list(o, "routes")?.iter().enumerate() {
            let at = format!("routes[{i}]");
            let ro = obj(rv, &at)?;
            let dst = parsed::<IpNet>(ro, "dst", &at)?
                .ok_or_else(|| bad(&at, rv, "route without dst"))?;
            r.routes.push(Route {
                dst,
                gw: parsed(ro, "gw", &at)?,
                mtu: opt_u32(ro, "mtu", &at)?,
                advmss: opt_u32(ro, "advmss", &at)?,
                priority: opt_u32(ro, "priority", &at)?,
                table: opt_u32(ro, "table", &at)?,
                scope: opt_u32(ro, "scope", &at)?,
            });
        }
        if let Some(dv) = o.get("dns").filter(|d| !d.is_null()) {
            let d = obj(dv, "dns")?;
            r.dns = Dns {
                nameservers: strings(d, "nameservers", "dns")?,
                domain: opt_str(d, "domain", "dns")?,
                search: strings(d, "search", "dns")?,
                options: strings(d, "options", "dns")?,
            };
        }
        Ok(r)
    }

    fn ip_from(iv: &Value, i: usize, n_ifaces: usize) -> Result<IpConfig, CniError> {
        let at = format!("ips[{i}]");
        let io = obj(iv, &at)?;
        let address = parsed::<IpNet>(io, "address", &at)?
            .ok_or_else(|| bad(&at, iv, "IP without address"))?;
        // 0.4.0's "version" must agree with the address family.
        if let Some(ver) = opt_str(io, "version", &at)? {
            let fam = if address.addr().is_ipv4() { "4" } else { "6" };
            if ver != fam {
                return Err(bad(
                    &format!("{at}.version"),
                    &Value::String(ver),
                    "does not match the address",
                ));
            }
        }
        let interface = match io.get("interface") {
            None | Some(Value::Null) => None,
            Some(x) => Some(
                x.as_u64()
                    .map(|n| n as usize)
                    .filter(|n| *n < n_ifaces)
                    .ok_or_else(|| {
                        bad(
                            &format!("{at}.interface"),
                            x,
                            "not an index into interfaces",
                        )
                    })?,
            ),
        };
        Ok(IpConfig {
            interface,
            address,
            gateway: parsed(io, "gateway", &at)?,
        })
    }

    /// Parses a result printed by a plugin (stdout bytes).
    pub fn from_slice(bytes: &[u8]) -> Result<Self, CniError> {
        let v: Value = serde_json::from_slice(bytes)
            .map_err(|e| CniError::new(code::DECODING_FAILURE, format!("decoding result: {e}")))?;
        Self::from_json(&v)
    }

    /// The result as printed in `version` (see [`Versioned`]).
    pub fn versioned(&self, version: CniVersion) -> Versioned<'_> {
        Versioned {
            result: self,
            version,
        }
    }

    /// The result in `version` as a JSON value (key order is not kept).
    pub fn to_json(&self, version: CniVersion) -> Value {
        serde_json::to_value(self.versioned(version)).expect("result serializes")
    }

    /// Index of the interface named `name` inside `sandbox` (the container side).
    pub fn container_interface(&self, ifname: &str) -> Option<usize> {
        self.interfaces
            .iter()
            .position(|i| i.name == ifname && i.sandbox.is_some())
    }
}

/// A result in one protocol version: hand-written `Serialize` so the keys
/// come in the reference bridge plugin's order and each version gets exactly
/// its fields (0.4.0: `ips[].version`; 1.1.0: interface and route extras).
/// `dns` is always present (`{}` when empty), as the reference prints it.
pub struct Versioned<'a> {
    pub result: &'a CniResult,
    pub version: CniVersion,
}

impl Serialize for Versioned<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (r, v) = (self.result, self.version);
        let full = v.has_1_1_fields();
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("cniVersion", v.as_str())?;
        if !r.interfaces.is_empty() {
            let ifs: Vec<_> = r.interfaces.iter().map(|i| IfaceOut(i, full)).collect();
            m.serialize_entry("interfaces", &ifs)?;
        }
        if !r.ips.is_empty() {
            let ips: Vec<_> = r.ips.iter().map(|i| IpOut(i, v)).collect();
            m.serialize_entry("ips", &ips)?;
        }
        if !r.routes.is_empty() {
            let routes: Vec<_> = r.routes.iter().map(|i| RouteOut(i, full)).collect();
            m.serialize_entry("routes", &routes)?;
        }
        m.serialize_entry("dns", &DnsOut(&r.dns))?;
        m.end()
    }
}

/// Writes `k: v` only when `v` is Some.
fn opt<M: SerializeMap, T: Serialize>(m: &mut M, k: &str, v: Option<T>) -> Result<(), M::Error> {
    match v {
        Some(v) => m.serialize_entry(k, &v),
        None => Ok(()),
    }
}

struct IfaceOut<'a>(&'a Interface, bool);

impl Serialize for IfaceOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (i, full) = (self.0, self.1);
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("name", &i.name)?;
        opt(&mut m, "mac", i.mac.as_ref())?;
        opt(&mut m, "mtu", i.mtu.filter(|_| full))?;
        opt(&mut m, "sandbox", i.sandbox.as_ref())?;
        opt(
            &mut m,
            "socketPath",
            i.socket_path.as_ref().filter(|_| full),
        )?;
        opt(&mut m, "pciID", i.pci_id.as_ref().filter(|_| full))?;
        m.end()
    }
}

struct IpOut<'a>(&'a IpConfig, CniVersion);

impl Serialize for IpOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (ip, v) = (self.0, self.1);
        let mut m = s.serialize_map(None)?;
        if v.ip_has_version_field() {
            m.serialize_entry(
                "version",
                if ip.address.addr().is_ipv4() {
                    "4"
                } else {
                    "6"
                },
            )?;
        }
        opt(&mut m, "interface", ip.interface)?;
        m.serialize_entry("address", &ip.address.to_string())?;
        opt(&mut m, "gateway", ip.gateway.map(|g| g.to_string()))?;
        m.end()
    }
}

struct RouteOut<'a>(&'a Route, bool);

impl Serialize for RouteOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (r, full) = (self.0, self.1);
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("dst", &r.dst.to_string())?;
        opt(&mut m, "gw", r.gw.map(|g| g.to_string()))?;
        if full {
            opt(&mut m, "mtu", r.mtu)?;
            opt(&mut m, "advmss", r.advmss)?;
            opt(&mut m, "priority", r.priority)?;
            opt(&mut m, "table", r.table)?;
            opt(&mut m, "scope", r.scope)?;
        }
        m.end()
    }
}

struct DnsOut<'a>(&'a Dns);

impl Serialize for DnsOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let d = self.0;
        let nonempty = |l: &'_ Vec<String>| (!l.is_empty()).then_some(l.clone());
        let mut m = s.serialize_map(None)?;
        opt(&mut m, "nameservers", nonempty(&d.nameservers))?;
        opt(&mut m, "domain", d.domain.as_ref())?;
        opt(&mut m, "search", nonempty(&d.search))?;
        opt(&mut m, "options", nonempty(&d.options))?;
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn reads_and_reprints_the_reference_bridge_results_exactly() {
        for (text, v) in [
            (
                include_str!("testdata/ref-bridge-1.0.0-ADD.result.json"),
                CniVersion::V1_0_0,
            ),
            (
                include_str!("testdata/ref-bridge-0.4.0-ADD.result.json"),
                CniVersion::V0_4_0,
            ),
            (
                include_str!("testdata/podman-bridge-ADD.result.json"),
                CniVersion::V1_0_0,
            ),
        ] {
            let reference = fixture(text);
            let r = CniResult::from_json(&reference).unwrap();
            assert_eq!(r.interfaces.len(), 3);
            assert_eq!(r.container_interface("eth0"), Some(2));
            assert_eq!(r.ips[0].interface, Some(2));
            assert!(
                r.interfaces[2]
                    .sandbox
                    .as_deref()
                    .unwrap()
                    .starts_with("/run/netns/")
            );
            // Same JSON as the Go plugin printed, and same key order.
            assert_eq!(r.to_json(v), reference);
            let pretty = serde_json::to_string_pretty(&r.versioned(v)).unwrap();
            assert_eq!(pretty.replace(' ', ""), text.trim().replace(' ', ""));
        }
    }

    #[test]
    fn converts_between_versions() {
        let r = CniResult::from_json(&fixture(include_str!(
            "testdata/ref-bridge-0.4.0-ADD.result.json"
        )))
        .unwrap();
        let v1 = r.to_json(CniVersion::V1_0_0);
        assert_eq!(v1["cniVersion"], "1.0.0");
        assert!(
            v1["ips"][0].get("version").is_none(),
            "1.0.0 has no ip version"
        );
        let back = r.to_json(CniVersion::V0_4_0);
        assert_eq!(back["ips"][0]["version"], "4");
        assert_eq!(CniResult::from_json(&v1).unwrap(), r);

        let mut r11 = r.clone();
        r11.interfaces[0].mtu = Some(1400);
        r11.routes[0].table = Some(100);
        r11.routes[0].scope = Some(253);
        let j11 = r11.to_json(CniVersion::V1_1_0);
        assert_eq!(j11["interfaces"][0]["mtu"], 1400);
        assert_eq!(j11["routes"][0]["table"], 100);
        assert_eq!(CniResult::from_json(&j11).unwrap(), r11);
        // Downgrading drops the 1.1.0-only fields.
        let j10 = r11.to_json(CniVersion::V1_0_0);
        assert!(j10["interfaces"][0].get("mtu").is_none());
        assert!(j10["routes"][0].get("scope").is_none());
    }

    #[test]
    fn ipv6_and_dns() {
        let v = serde_json::json!({
            "cniVersion": "0.4.0",
            "ips": [{"version": "6", "address": "fd00::5/64", "gateway": "fd00::1"}],
            "routes": [{"dst": "::/0"}],
            "dns": {"nameservers": ["fd00::1"], "domain": "lab", "search": ["a"], "options": ["ndots:2"]}
        });
        let r = CniResult::from_json(&v).unwrap();
        assert_eq!(r.ips[0].interface, None);
        assert_eq!(r.dns.domain.as_deref(), Some("lab"));
        assert_eq!(r.to_json(CniVersion::V0_4_0), v);
    }

    #[test]
    fn reads_ipam_results_of_both_versions() {
        for text in [
            include_str!("testdata/ref-host-local-0.4.0-ADD.result.json"),
            include_str!("testdata/ref-host-local-1.0.0-ADD.result.json"),
        ] {
            let r = CniResult::from_json(&fixture(text)).unwrap();
            assert!(r.interfaces.is_empty());
            assert_eq!(r.ips.len(), 1);
            assert_eq!(r.ips[0].interface, None);
            assert_eq!(r.ips[0].gateway, Some("192.168.99.1".parse().unwrap()));
            assert!(r.dns.is_empty());
        }
    }

    #[test]
    fn malformed_results_are_decoding_errors() {
        for bad in [
            serde_json::json!([]),
            serde_json::json!({"ips": [{"address": "300.1.1.1/24"}]}),
            serde_json::json!({"ips": [{"address": "10.0.0.1/24", "interface": 0}]}),
            serde_json::json!({"ips": [{"version": "6", "address": "10.0.0.1/24"}]}),
            serde_json::json!({"routes": [{"gw": "10.0.0.1"}]}),
            serde_json::json!({"interfaces": [{"name": 3}]}),
            serde_json::json!({"dns": {"nameservers": "x"}}),
        ] {
            let e = CniResult::from_json(&bad).unwrap_err();
            assert_eq!(e.code, code::DECODING_FAILURE, "{bad}: {e}");
        }
        assert_eq!(
            CniResult::from_slice(b"{").unwrap_err().code,
            code::DECODING_FAILURE
        );
    }
}
