//! Validation of a parsed [`Topology`], one function per section, in the
//! order a reader checks a file: limits, names, interfaces, sysctls,
//! addresses, segments, routes, uplink, isolation, forwards. The first
//! problem found is returned as `FILE: FIELD = VALUE: PROBLEM`.
//!
//! Nothing here is quadratic in the number of namespaces, links or
//! forwards: lookups go through indexes built once.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
    str::FromStr,
};

use ipnet::IpNet;

use super::{
    ConfigError, Endpoint, MAX_ADDRESSES, MAX_FORWARDS, MAX_LINKS, MAX_NAMESPACES, MAX_ROUTES,
    MAX_SYSCTLS, Namespace, Port, Proto, Route, Topology, UnsolicitedSyn,
};

/// Checks `t` (parsed from `file`). `host_has_link(name)` tells whether an
/// interface exists in the host namespace (uplink check).
pub(super) fn validate(
    file: &str,
    t: &Topology,
    host_has_link: &dyn Fn(&str) -> bool,
) -> Result<(), ConfigError> {
    let v = Validator {
        file,
        t,
        by_name: t.namespaces.iter().map(|n| (n.name.as_str(), n)).collect(),
    };
    v.validate_limits()?;
    v.validate_names()?;
    let ifaces = v.validate_interfaces()?;
    v.validate_sysctls()?;
    let addrs = v.validate_addresses()?;
    v.validate_segments(&addrs)?;
    v.validate_routes(&ifaces)?;
    v.validate_uplink(host_has_link)?;
    v.validate_isolate()?;
    v.validate_forwards()
}

struct Validator<'a> {
    file: &'a str,
    t: &'a Topology,
    by_name: HashMap<&'a str, &'a Namespace>,
}

/// Interfaces per namespace (None = host): name -> field that declared it.
type Interfaces = HashMap<Option<String>, HashMap<String, String>>;

/// An interface address, the field that assigns it and its L2 segment:
/// 0 the bridge (its own addresses and its namespaces'), i + 1 link i.
struct Address {
    field: String,
    net: IpNet,
    segment: usize,
}

fn segment_name(segment: usize) -> String {
    match segment {
        0 => "the bridge".into(),
        i => format!("link[{}]", i - 1),
    }
}

fn q(s: &str) -> String {
    format!("{s:?}")
}

/// The endpoint's namespace, None for the host (an endpoint in
/// `host_netns` is the host).
fn endpoint_ns<'a>(t: &Topology, e: &'a Endpoint) -> Option<&'a String> {
    e.netns
        .as_ref()
        .filter(|n| t.host_netns.as_ref() != Some(*n))
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

    /// Counts, sizes and numeric ranges: entries, addresses, routes and
    /// sysctls per owner, MTUs, FDB aging.
    fn validate_limits(&self) -> Result<(), ConfigError> {
        let t = self.t;
        for (what, n, max) in [
            ("namespace", t.namespaces.len(), MAX_NAMESPACES),
            ("link", t.links.len(), MAX_LINKS),
            ("forward", t.forwards.len(), MAX_FORWARDS),
        ] {
            if n > max {
                return Err(self.err(what, n.to_string(), format!("at most {max} entries")));
            }
        }
        self.mtu("mtu", t.mtu)?;
        if let Some(b) = &t.bridge {
            self.count(
                "bridge.addresses",
                b.addresses.len(),
                MAX_ADDRESSES,
                "addresses",
            )?;
            self.mtu("bridge.mtu", b.mtu)?;
            if !(1..=86400).contains(&b.aging_secs) {
                return Err(self.err(
                    "bridge.aging_secs",
                    b.aging_secs.to_string(),
                    "must be 1..=86400 seconds",
                ));
            }
        }
        for (i, ns) in t.namespaces.iter().enumerate() {
            let f = |x: &str| format!("namespace[{i}].{x}");
            self.mtu(&f("mtu"), ns.mtu)?;
            self.count(
                &f("addresses"),
                ns.addresses.len(),
                MAX_ADDRESSES,
                "addresses",
            )?;
            self.count(&f("routes"), ns.routes.len(), MAX_ROUTES, "routes")?;
            self.count(&f("sysctls"), ns.sysctls.len(), MAX_SYSCTLS, "sysctls")?;
        }
        for (i, l) in t.links.iter().enumerate() {
            self.mtu(&format!("link[{i}].mtu"), l.mtu)?;
            for (side, e) in [("a", &l.a), ("b", &l.b)] {
                let f = |x: &str| format!("link[{i}].{side}.{x}");
                self.count(
                    &f("addresses"),
                    e.addresses.len(),
                    MAX_ADDRESSES,
                    "addresses",
                )?;
                self.count(&f("routes"), e.routes.len(), MAX_ROUTES, "routes")?;
            }
        }
        Ok(())
    }

    fn count(&self, field: &str, n: usize, max: usize, what: &str) -> Result<(), ConfigError> {
        if n > max {
            return Err(self.err(field, n.to_string(), format!("at most {max} {what}")));
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

    /// Topology and namespace names: safe characters, unique, not the host
    /// namespace's; link endpoints name declared namespaces.
    fn validate_names(&self) -> Result<(), ConfigError> {
        let t = self.t;
        self.netns_name("name", &t.name)?;
        if let Some(h) = &t.host_netns {
            self.netns_name("host_netns", h)?;
        }
        let mut seen = HashSet::new();
        for (i, ns) in t.namespaces.iter().enumerate() {
            let f = format!("namespace[{i}].name");
            self.netns_name(&f, &ns.name)?;
            if !seen.insert(ns.name.as_str()) {
                return Err(self.err(f, q(&ns.name), "duplicate namespace name"));
            }
            if t.host_netns.as_deref() == Some(ns.name.as_str()) {
                return Err(self.err(f, q(&ns.name), "same name as host_netns"));
            }
        }
        for (i, l) in t.links.iter().enumerate() {
            for (side, e) in [("a", &l.a), ("b", &l.b)] {
                if let Some(n) = &e.netns
                    && !seen.contains(n.as_str())
                    && t.host_netns.as_ref() != Some(n)
                {
                    return Err(self.err(
                        format!("link[{i}].{side}.netns"),
                        q(n),
                        "unknown namespace (declare it with [[namespace]])",
                    ));
                }
            }
        }
        Ok(())
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

    /// Interface names: valid, unique per namespace; bridge ports need a
    /// [bridge]. Returns the interfaces each namespace declares.
    fn validate_interfaces(&self) -> Result<Interfaces, ConfigError> {
        let t = self.t;
        let mut ifaces = Interfaces::new();
        let mut declare = |netns: Option<&String>, ifname: &str, field: String| {
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
            declare(None, &b.name, "bridge.name".into())?;
        }
        for (i, ns) in t.namespaces.iter().enumerate() {
            let f = |x: &str| format!("namespace[{i}].{x}");
            self.ifname(&f("ifname"), &ns.ifname)?;
            if !t.on_bridge(ns) {
                continue;
            }
            if t.bridge.is_none() {
                return Err(self.err(
                    f("bridge"),
                    "true",
                    "namespace is on the bridge but the topology has no [bridge]",
                ));
            }
            let host_if = Topology::host_ifname(ns);
            self.ifname(&f("host_ifname"), &host_if)?;
            declare(None, &host_if, f("host_ifname"))?;
            declare(Some(&ns.name), &ns.ifname, f("ifname"))?;
        }
        for (i, l) in t.links.iter().enumerate() {
            for (side, e) in [("a", &l.a), ("b", &l.b)] {
                let f = format!("link[{i}].{side}.ifname");
                self.ifname(&f, &e.ifname)?;
                declare(endpoint_ns(t, e), &e.ifname, f)?;
            }
        }
        Ok(ifaces)
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

    /// Sysctls: keys under net.ipv4, net.ipv6 or net.core only (no path
    /// tricks), short plain values.
    fn validate_sysctls(&self) -> Result<(), ConfigError> {
        for (i, ns) in self.t.namespaces.iter().enumerate() {
            for (k, v) in &ns.sysctls {
                let field = format!("namespace[{i}].sysctls.{k:?}");
                let key_ok = (k.starts_with("net.ipv4.")
                    || k.starts_with("net.ipv6.")
                    || k.starts_with("net.core."))
                    && !k.contains("..")
                    && !k.ends_with('.')
                    && k.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
                if !key_ok {
                    return Err(self.err(
                        field,
                        q(k),
                        "only net.ipv4.*, net.ipv6.* and net.core.* keys are allowed",
                    ));
                }
                let val_ok = v.len() <= 64
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b" _.-".contains(&b));
                if !val_ok {
                    return Err(self.err(
                        field,
                        q(v),
                        "values are up to 64 bytes of A-Z a-z 0-9 space _ . -",
                    ));
                }
            }
        }
        Ok(())
    }

    /// Interface addresses: host addresses (no /0, network or broadcast),
    /// each assigned once in the topology, only where an interface carries
    /// them, within the anti-spoofing limit. Returns them all.
    fn validate_addresses(&self) -> Result<Vec<Address>, ConfigError> {
        let t = self.t;
        let mut all = Vec::new();
        let mut add = |field: String, addrs: &[IpNet], segment: usize| {
            all.extend(addrs.iter().enumerate().map(|(j, a)| Address {
                field: format!("{field}[{j}]"),
                net: *a,
                segment,
            }));
        };
        if let Some(b) = &t.bridge {
            add("bridge.addresses".into(), &b.addresses, 0);
        }
        for (i, ns) in t.namespaces.iter().enumerate() {
            // Only bridged namespaces have addresses of their own.
            self.port_addresses(i, ns)?;
            add(format!("namespace[{i}].addresses"), &ns.addresses, 0);
        }
        for (i, l) in t.links.iter().enumerate() {
            for (side, e) in [("a", &l.a), ("b", &l.b)] {
                add(format!("link[{i}].{side}.addresses"), &e.addresses, i + 1);
            }
        }
        let mut seen: HashMap<IpAddr, &str> = HashMap::new();
        for a in &all {
            self.host_address(&a.field, &a.net)?;
            if let Some(first) = seen.insert(a.net.addr(), &a.field) {
                return Err(self.err(
                    a.field.clone(),
                    q(&a.net.to_string()),
                    format!("address already assigned by {first}"),
                ));
            }
        }
        Ok(all)
    }

    /// A namespace's own addresses sit on its bridge port: none without
    /// one, and no more IPv4 than anti-spoofing can check.
    fn port_addresses(&self, i: usize, ns: &Namespace) -> Result<(), ConfigError> {
        if !self.t.on_bridge(ns) {
            if let Some(a) = ns.addresses.first() {
                return Err(self.err(
                    format!("namespace[{i}].addresses[0]"),
                    q(&a.to_string()),
                    "addresses given but the namespace is not on the bridge (put them on a [[link]] endpoint)",
                ));
            }
            return Ok(());
        }
        let v4 = ns.addresses.iter().filter(|a| a.addr().is_ipv4()).count();
        if ns.anti_spoof && v4 > netbridge_common::MAX_PORT_IPV4 {
            return Err(self.err(
                format!("namespace[{i}].addresses"),
                format!("{v4} IPv4 addresses"),
                format!(
                    "anti-spoofing allows at most {} IPv4 addresses per namespace; set anti_spoof = false",
                    netbridge_common::MAX_PORT_IPV4
                ),
            ));
        }
        // One slot holds the link-local address.
        let v6 = ns.addresses.len() - v4;
        let max6 = netbridge_common::MAX_PORT_IPV6 - 1;
        if ns.anti_spoof && v6 > max6 {
            return Err(self.err(
                format!("namespace[{i}].addresses"),
                format!("{v6} IPv6 addresses"),
                format!(
                    "anti-spoofing allows at most {max6} IPv6 addresses per namespace (plus its link-local one); set anti_spoof = false"
                ),
            ));
        }
        Ok(())
    }

    fn host_address(&self, field: &str, a: &IpNet) -> Result<(), ConfigError> {
        if a.prefix_len() == 0 {
            return Err(self.err(
                field,
                q(&a.to_string()),
                "prefix length 0 is not an interface address",
            ));
        }
        if let IpNet::V6(v6) = a
            && let Some(why) = not_a_v6_host(v6.addr())
        {
            return Err(self.err(field, q(&a.to_string()), why));
        }
        if let IpNet::V4(v4) = a
            && v4.prefix_len() < 31
            && (v4.addr() == v4.network() || v4.addr() == v4.broadcast())
        {
            return Err(self.err(
                field,
                q(&a.to_string()),
                "is the network or broadcast address of its subnet, not a host address",
            ));
        }
        Ok(())
    }

    /// L2 segments (the bridge with its namespaces, each link) must not
    /// share subnets. CIDRs overlap only by nesting, so one sweep in address
    /// order, keeping the chain of subnets that enclose the current one,
    /// finds every overlap.
    fn validate_segments(&self, addrs: &[Address]) -> Result<(), ConfigError> {
        let mut order: Vec<(u8, u128, u8, usize, usize)> = addrs
            .iter()
            .enumerate()
            .map(|(k, a)| {
                let (family, start, _) = span(&a.net);
                (family, start, a.net.prefix_len(), a.segment, k)
            })
            .collect();
        order.sort_unstable();
        // (family, start, end, index into addrs) of the enclosing subnets.
        let mut open: Vec<(u8, u128, u128, usize)> = Vec::new();
        for (family, start, _, segment, k) in order {
            let end = span(&addrs[k].net).2;
            open.retain(|o| o.0 == family && o.2 >= start);
            if let Some(o) = open.iter().find(|o| addrs[o.3].segment != segment) {
                // Report on the segment declared later, naming the earlier.
                let (a, b) = if addrs[o.3].segment < segment {
                    (&addrs[o.3], &addrs[k])
                } else {
                    (&addrs[k], &addrs[o.3])
                };
                return Err(self.err(
                    b.field.clone(),
                    q(&b.net.to_string()),
                    format!(
                        "subnet {} of {} overlaps subnet {} of {} ({})",
                        b.net.trunc(),
                        segment_name(b.segment),
                        a.net.trunc(),
                        segment_name(a.segment),
                        a.field
                    ),
                ));
            }
            // The same subnet twice in one segment adds nothing to check.
            if open.last().is_none_or(|o| (o.1, o.2) != (start, end)) {
                open.push((family, start, end, k));
            }
        }
        Ok(())
    }

    /// Routes of every namespace and link endpoint: a CIDR or "default",
    /// `via` and/or `dev`, a known device, a reachable gateway.
    fn validate_routes(&self, ifaces: &Interfaces) -> Result<(), ConfigError> {
        let t = self.t;
        // Subnets per namespace: its bridge port's and its link endpoints'.
        let mut nets: HashMap<Option<&String>, Vec<IpNet>> = HashMap::new();
        for l in &t.links {
            for e in [&l.a, &l.b] {
                nets.entry(endpoint_ns(t, e))
                    .or_default()
                    .extend(&e.addresses);
            }
        }
        let none = HashMap::new();
        for (i, ns) in t.namespaces.iter().enumerate() {
            let mut own: Vec<IpNet> = if t.on_bridge(ns) {
                ns.addresses.clone()
            } else {
                vec![]
            };
            own.extend(nets.get(&Some(&ns.name)).into_iter().flatten());
            let devs = ifaces.get(&Some(ns.name.clone())).unwrap_or(&none);
            for (j, r) in ns.routes.iter().enumerate() {
                let field = format!("namespace[{i}].routes[{j}]");
                self.route(&field, r, &ns.name, &own, devs)?;
            }
        }
        for (i, l) in t.links.iter().enumerate() {
            for (side, e) in [("a", &l.a), ("b", &l.b)] {
                let netns = endpoint_ns(t, e).cloned();
                let devs = ifaces.get(&netns).unwrap_or(&none);
                let label = netns.unwrap_or("(host)".into());
                for (j, r) in e.routes.iter().enumerate() {
                    let field = format!("link[{i}].{side}.routes[{j}]");
                    self.route(&field, r, &label, &e.addresses, devs)?;
                }
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
        let Some(via) = r.via else {
            return Ok(());
        };
        if to_v6.is_some_and(|v6| v6 != via.is_ipv6()) {
            return Err(self.err(
                format!("{field}.via"),
                q(&via.to_string()),
                format!("address family differs from {}", r.to),
            ));
        }
        if r.dev.is_none() && is_link_local(via) {
            return Err(self.err(
                format!("{field}.via"),
                q(&via.to_string()),
                "a link-local gateway (fe80::/10) is reachable on one interface only: add `dev`",
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
        Ok(())
    }

    /// The uplink: an interface of the host namespace (declared by a link
    /// or existing), sane NAT settings, an IPv4 address when NAT is on, a
    /// gateway inside its subnets.
    fn validate_uplink(&self, host_has_link: &dyn Fn(&str) -> bool) -> Result<(), ConfigError> {
        let t = self.t;
        let Some(u) = &t.uplink else {
            return Ok(());
        };
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
        for (field, quota) in [
            ("max_sessions_per_source", u.max_sessions_per_source),
            ("max_sessions_per_host", u.max_sessions_per_host),
        ] {
            if quota > u.max_sessions {
                return Err(self.err(
                    format!("uplink.{field}"),
                    quota.to_string(),
                    format!(
                        "must be 0 (no quota) or at most uplink.max_sessions ({})",
                        u.max_sessions
                    ),
                ));
            }
        }
        if u.endpoint_independent == Some(false) && !u.filtering.is_default() {
            return Err(self.err(
                "uplink.endpoint_independent",
                "false",
                format!(
                    "uplink.filtering = {} needs endpoint-independent mapping (RFC 4787 REQ-8): \
                     remove endpoint_independent or set it to true",
                    q(u.filtering.name())
                ),
            ));
        }
        if u.unsolicited_syn == UnsolicitedSyn::Drop && !u.masquerade {
            return Err(self.err(
                "uplink.unsolicited_syn",
                "\"drop\"",
                "needs masquerade = true: it drops SYNs to the SNAT port range \
                 (RFC 5382 REQ-4); without masquerade there are no mappings",
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
        self.validate_gateway6(u)?;
        let Some((near, _)) = t.uplink_ends() else {
            if host_has_link(&u.ifname) {
                return Ok(());
            }
            return Err(self.err(
                "uplink.ifname",
                q(&u.ifname),
                format!(
                    "interface {} does not exist in the host namespace and no [[link]] creates it there",
                    u.ifname
                ),
            ));
        };
        if u.masquerade || !t.forwards.is_empty() {
            self.validate_nat_family(u, &near.addresses)?;
        }
        for (field, gw) in [
            ("uplink.gateway", u.gateway),
            ("uplink.gateway6", u.gateway6),
        ] {
            if let Some(gw) = gw
                && !near.addresses.iter().any(|n| n.contains(&gw))
            {
                return Err(self.err(
                    field,
                    q(&gw.to_string()),
                    format!("gateway is outside every subnet of uplink {}", u.ifname),
                ));
            }
        }
        Ok(())
    }

    /// `uplink.gateway6`: an IPv6 address, not link-local (no `dev` to
    /// name), and not with an IPv6 `gateway` too (two default routes).
    fn validate_gateway6(&self, u: &super::Uplink) -> Result<(), ConfigError> {
        let Some(gw) = u.gateway6 else {
            return Ok(());
        };
        let v6 = match gw {
            IpAddr::V6(a) => a,
            IpAddr::V4(_) => {
                return Err(self.err(
                    "uplink.gateway6",
                    q(&gw.to_string()),
                    "must be an IPv6 address (an IPv4 gateway goes in uplink.gateway)",
                ));
            }
        };
        if v6.segments()[0] & 0xffc0 == 0xfe80 {
            return Err(self.err(
                "uplink.gateway6",
                q(&gw.to_string()),
                "a link-local gateway is not supported here: use an address in a subnet of the uplink",
            ));
        }
        if u.gateway.is_some_and(|g| g.is_ipv6()) {
            return Err(self.err(
                "uplink.gateway6",
                q(&gw.to_string()),
                "uplink.gateway is an IPv6 address already: set gateway to an IPv4 one, or drop gateway6",
            ));
        }
        Ok(())
    }

    /// Isolation pairs: two different bridged namespaces, each pair once.
    fn validate_isolate(&self) -> Result<(), ConfigError> {
        let t = self.t;
        let mut pairs = HashSet::new();
        for (i, pair) in t.isolate.iter().enumerate() {
            for (j, name) in pair.iter().enumerate() {
                let problem = match self.by_name.get(name.as_str()) {
                    Some(n) if t.on_bridge(n) => continue,
                    Some(_) => {
                        "namespace is not on the bridge (isolation is enforced on bridge ports)"
                            .to_string()
                    }
                    None => format!("unknown namespace {name:?}"),
                };
                return Err(self.err(format!("isolate[{i}][{j}]"), q(name), problem));
            }
            if pair[0] == pair[1] {
                return Err(self.err(
                    format!("isolate[{i}]"),
                    q(&pair[0]),
                    "a namespace cannot be isolated from itself",
                ));
            }
            let key = if pair[0] < pair[1] {
                (&pair[0], &pair[1])
            } else {
                (&pair[1], &pair[0])
            };
            if !pairs.insert(key) {
                return Err(self.err(
                    format!("isolate[{i}]"),
                    format!("[{}, {}]", q(&pair[0]), q(&pair[1])),
                    "pair listed twice",
                ));
            }
        }
        Ok(())
    }

    /// NAT translates to the uplink's IPv4 address, or, without one, runs
    /// as NAT66 alone: a global or ULA IPv6 address on the uplink, an IPv6
    /// network on the bridge and masquerade on (IPv6 forwards go with it).
    fn validate_nat_family(&self, u: &super::Uplink, near: &[IpNet]) -> Result<(), ConfigError> {
        if near.iter().any(|a| a.addr().is_ipv4()) {
            return Ok(());
        }
        let bridge6 = self
            .t
            .bridge
            .as_ref()
            .is_some_and(|b| !crate::nat6::lab_prefixes(&b.addresses).is_empty());
        if crate::nat6::masquerade_addr(near).is_none() || !bridge6 {
            return Err(self.err(
                "uplink.ifname",
                q(&u.ifname),
                "NAT needs an IPv4 address on the uplink (or, for NAT66 alone, a global or \
                 ULA IPv6 address on it and an IPv6 network on the bridge)",
            ));
        }
        if !u.masquerade {
            return Err(self.err(
                "uplink.masquerade",
                "false",
                format!(
                    "uplink {} has only IPv6 addresses: its forwards are IPv6 forwards, which \
                     run with NAT66 masquerade (set masquerade = true)",
                    u.ifname
                ),
            ));
        }
        Ok(())
    }

    /// Does the uplink, as the file declares it, have only IPv6 addresses
    /// (NAT66 alone: forwards need IPv6 targets)? None: not declared.
    fn uplink_v6_only(&self) -> Option<bool> {
        let (near, _) = self.t.uplink_ends()?;
        Some(!near.addresses.iter().any(|a| a.addr().is_ipv4()))
    }

    /// Port forwards: the TC datapath (hairpin), an uplink, valid ports, a
    /// bridged IPv4 target (IPv6 behind an IPv6-only uplink), no two
    /// forwards of one protocol on one external port, a bounded number of
    /// ranges. Taken ranges are kept per protocol, sorted by first port.
    fn validate_forwards(&self) -> Result<(), ConfigError> {
        if self.t.datapath == super::Datapath::Xdp && !self.t.forwards.is_empty() {
            return Err(self.err(
                "datapath",
                q("xdp"),
                "port forwards need datapath = \"tc\": lab hosts reach them through the uplink \
                 address (hairpin), which only the TC port program translates (masquerade alone \
                 works with \"xdp\")",
            ));
        }
        let mut taken: HashMap<Proto, BTreeMap<u16, (u16, usize)>> = HashMap::new();
        let (mut n_ranges, mut n_v6) = (0, 0);
        for (i, fw) in self.t.forwards.iter().enumerate() {
            let (first, last) = self.forward(i, fw)?;
            n_v6 += usize::from(self.forward_has_ipv6(fw));
            if n_v6 > netbridge_common::MAX_FWD6 as usize {
                return Err(self.err(
                    format!("forward[{i}].to"),
                    q(&fw.to),
                    format!(
                        "more than {} forwards to namespaces with an IPv6 address (the IPv6 \
                         forward table's size)",
                        netbridge_common::MAX_FWD6
                    ),
                ));
            }
            let field = format!("forward[{i}].port");
            let mine = taken.entry(fw.proto).or_default();
            // Earlier ranges overlapping first..=last start at most at
            // `last`; the first one (by index) is reported.
            let clash = mine
                .range(..=last)
                .rev()
                .take_while(|(_, (end, _))| *end >= first)
                .map(|(_, (_, j))| *j)
                .min();
            if let Some(j) = clash {
                return Err(self.err(
                    field,
                    q(&fw.port.raw),
                    format!("overlaps forward[{j}] (same protocol and external port)"),
                ));
            }
            mine.insert(first, (last, i));
            n_ranges += usize::from(first != last);
            if n_ranges > netbridge_common::MAX_FWD_RANGES as usize {
                return Err(self.err(
                    field,
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

    /// Does the forward's target have a global or ULA IPv6 address (the
    /// forward then works over IPv6 too, with NAT66)?
    fn forward_has_ipv6(&self, fw: &super::Forward) -> bool {
        let ns = fw.to.rsplit_once(':').map_or("", |(n, _)| n);
        self.by_name
            .get(ns)
            .is_some_and(|t| crate::nat6::masquerade_addr(&t.addresses).is_some())
    }

    /// One forward on its own; returns its external (first, last) ports.
    fn forward(&self, i: usize, fw: &super::Forward) -> Result<(u16, u16), ConfigError> {
        let f = |x: &str| format!("forward[{i}].{x}");
        if self.t.uplink.is_none() {
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
        let Some(target) = self.by_name.get(ns) else {
            return Err(self.err(f("to"), q(&fw.to), format!("unknown namespace {ns:?}")));
        };
        let v4 = target.addresses.iter().any(|a| a.addr().is_ipv4());
        let v6 = crate::nat6::masquerade_addr(&target.addresses).is_some();
        let (ok, family) = match self.uplink_v6_only() {
            Some(true) => (
                v6,
                "a global or ULA IPv6 address (the uplink has only IPv6 ones)",
            ),
            Some(false) => (v4, "an IPv4 address"),
            // An existing interface: `up` reads its addresses.
            None => (v4 || v6, "an IPv4 or a global or ULA IPv6 address"),
        };
        if !self.t.on_bridge(target) || !ok {
            return Err(self.err(
                f("to"),
                q(&fw.to),
                format!("namespace {ns} is not on the bridge with {family}"),
            ));
        }
        let fits = |p: &u16| *p >= 1 && (*p as u32 + (last - first) as u32) <= 65535;
        if !port.parse::<u16>().ok().is_some_and(|p| fits(&p)) {
            return Err(self.err(
                f("to"),
                q(&fw.to),
                "target port must be 1..=65535 and the whole range must fit",
            ));
        }
        Ok((first, last))
    }
}

/// (family, first address, last address) of a subnet, as numbers.
fn span(n: &IpNet) -> (u8, u128, u128) {
    match n.trunc() {
        IpNet::V4(v4) => (
            4,
            u32::from(v4.network()) as u128,
            u32::from(v4.broadcast()) as u128,
        ),
        IpNet::V6(v6) => (6, u128::from(v6.network()), u128::from(v6.broadcast())),
    }
}

/// The MTU a veth gets when the file sets none.
const DEFAULT_MTU: u32 = 1500;

impl Topology {
    /// Warnings that do not stop `up`: an L2 segment (the bridge with its
    /// ports, the file's and `attached`) whose MTUs disagree, naming the
    /// ports of each MTU. Larger frames would be dropped between them. A
    /// bridge without an MTU of its own follows its ports and is not
    /// counted. (A `[[link]]` has one MTU for both ends.)
    pub fn mtu_warnings(&self, attached: &[Port], file: &str) -> Vec<String> {
        let Some(b) = &self.bridge else {
            return vec![];
        };
        let mut by_mtu: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        if let Some(m) = b.mtu.or(self.mtu) {
            by_mtu
                .entry(m)
                .or_default()
                .push(format!("bridge {}", b.name));
        }
        for p in self.ports(attached) {
            let m = p.mtu.unwrap_or(DEFAULT_MTU);
            let label = format!("{} ({})", p.host_ifname, p.name);
            by_mtu.entry(m).or_default().push(label);
        }
        if by_mtu.len() < 2 {
            return vec![];
        }
        let groups: Vec<String> = by_mtu
            .iter()
            .map(|(m, ports)| format!("{m} on {}", ports.join(", ")))
            .collect();
        vec![format!(
            "{file}: the L2 segment of bridge {} mixes MTUs: {}; frames larger than {} are \
             dropped between these ports (give every namespace on the bridge the same mtu)",
            b.name,
            groups.join("; "),
            by_mtu.keys().next().expect("two MTUs"),
        )]
    }
}

impl Topology {
    /// Warnings about the NAT that do not stop `up`: an uplink with only
    /// IPv6 addresses (as the file declares it) runs NAT66 alone, so the
    /// lab's IPv4 traffic to upstream is not translated (and has no route
    /// out of the uplink).
    pub fn nat_warnings(&self, file: &str) -> Vec<String> {
        let (Some(u), Some(b)) = (&self.uplink, &self.bridge) else {
            return vec![];
        };
        let Some((near, _)) = self.uplink_ends() else {
            return vec![];
        };
        let v4 = |a: &[IpNet]| a.iter().any(|a| a.addr().is_ipv4());
        let nat = u.masquerade || !self.forwards.is_empty();
        if !nat || v4(&near.addresses) || !v4(&b.addresses) {
            return vec![];
        }
        vec![format!(
            "{file}: uplink {} has no IPv4 address: NAT66 only; IPv4 traffic from bridge {} \
             to upstream is not translated (no NAT44), and IPv4 forwards do not exist",
            u.ifname, b.name
        )]
    }
}

/// Why IPv6 address `a` cannot be configured on an interface, if so.
fn is_link_local(a: std::net::IpAddr) -> bool {
    matches!(a, std::net::IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
}

fn not_a_v6_host(a: std::net::Ipv6Addr) -> Option<&'static str> {
    let seg0 = a.segments()[0];
    if a.is_unspecified() || a.is_loopback() {
        Some("the unspecified and loopback addresses are not interface addresses")
    } else if a.is_multicast() {
        Some("is a multicast address (ff00::/8), not an interface address")
    } else if seg0 & 0xffc0 == 0xfe80 {
        Some(
            "is link-local (fe80::/10): the kernel assigns it from the MAC; give a ULA (fd00::/8) or global address",
        )
    } else if a.to_ipv4_mapped().is_some() {
        Some("is an IPv4-mapped address (::ffff:0:0/96); write the IPv4 address instead")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_err, parse};
    use super::super::*;

    /// `good` parses; `bad` fails with an error naming every part. Each rule
    /// is tested this way: the positive control proves the error comes from
    /// the one difference.
    fn rule(good: &str, bad: &str, parts: &[&str]) {
        if let Err(e) = parse(good) {
            panic!("control rejected: {e}\n{good}");
        }
        assert_err(bad, parts);
    }

    const BRIDGE: &str =
        "name = \"x\"\n[bridge]\nname = \"br0\"\naddresses = [\"192.168.0.1/16\"]\n";

    /// A bridged namespace `name` with one address.
    fn ns(name: &str, addr: &str) -> String {
        format!("[[namespace]]\nname = \"{name}\"\naddresses = [\"{addr}\"]\n")
    }

    /// BRIDGE + namespace a (192.168.1.1/24) + an upstream namespace joined
    /// to the host by a link whose host end `up0` is the uplink.
    fn nat_base(uplink_extra: &str, host_addr: &str) -> String {
        format!(
            "{BRIDGE}{}[[namespace]]\nname = \"wan\"\nbridge = false\n\
             [[link]]\na = {{ ifname = \"up0\", addresses = [{host_addr}] }}\n\
             b = {{ netns = \"wan\", ifname = \"eth0\", addresses = [\"203.0.113.2/24\"] }}\n\
             [uplink]\nifname = \"up0\"\n{uplink_extra}",
            ns("a", "192.168.1.1/24")
        )
    }

    fn list(n: usize, f: impl Fn(usize) -> String) -> String {
        (0..n).map(f).collect::<Vec<_>>().join(", ")
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
    fn ipv6_addresses() {
        let one = |a: &str| format!("{BRIDGE}{}", ns("a", a));
        parse(&one("fd00:77::5/64")).unwrap();
        for (bad, why) in [
            ("fe80::5/64", "link-local"),
            ("ff02::5/64", "multicast"),
            ("::1/128", "loopback"),
            ("::ffff:10.0.0.1/96", "IPv4-mapped"),
        ] {
            assert_err(
                &one(bad),
                &[&format!("namespace[0].addresses[0] = \"{bad}\""), why],
            );
        }
        let many: Vec<String> = (1..=5).map(|i| format!("\"fd00::{i}/64\"")).collect();
        assert_err(
            &format!(
                "{BRIDGE}[[namespace]]\nname = \"a\"\naddresses = [{}]\n",
                many.join(", ")
            ),
            &["namespace[0].addresses = 5 IPv6 addresses", "at most 4"],
        );
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

    /// RFC 4787 REQ-7 (internal and external addresses must not conflict):
    /// `check` rejects an uplink whose subnet overlaps the lab's, naming
    /// both; the same file with a distinct upstream subnet passes.
    #[test]
    fn rfc4787_req7_uplink_subnet_overlapping_the_lab_is_rejected() {
        let m = "masquerade = true\n";
        rule(
            &nat_base(m, "\"203.0.113.1/24\""),
            &nat_base(m, "\"192.168.9.1/24\""),
            &[
                "link[0].a.addresses[0] = \"192.168.9.1/24\"",
                "overlaps subnet 192.168.0.0/16 of the bridge",
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
        // The IPv6 forward table: 64 forwards to a dual-stack target.
        let v6 = format!(
            "{BRIDGE}[[namespace]]\nname = \"a\"\naddresses = [\"192.168.1.1/24\", \"fd00::5/64\"]\n\
             [uplink]\nifname = \"eth9\"\nmasquerade = true\n"
        );
        let fws = |n: u16| -> String {
            (0..n)
                .map(|i| {
                    format!(
                        "[[forward]]\nproto = \"udp\"\nport = {}\nto = \"a:80\"\n",
                        1000 + i
                    )
                })
                .collect()
        };
        parse(&format!("{v6}{}", fws(64))).unwrap();
        assert_err(
            &format!("{v6}{}", fws(65)),
            &[
                "forward[64].to",
                "\"a:80\"",
                "more than 64 forwards",
                "IPv6",
            ],
        );
        // IPv4-only targets do not count.
        parse(&format!("{up}{}", fws(65).replace("udp", "tcp"))).unwrap();
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

    #[test]
    fn limits_of_entries() {
        // Entry counts.
        let links = |n: usize| {
            let l: String = (0..n)
                .map(|i| {
                    format!("[[link]]\na = {{ ifname = \"a{i}\" }}\nb = {{ ifname = \"b{i}\" }}\n")
                })
                .collect();
            format!("name = \"x\"\n{l}")
        };
        rule(
            &links(1000),
            &links(1001),
            &["link = 1001", "at most 1000 entries"],
        );
        let fwds = |n: usize| {
            let f: String = (0..n)
                .map(|i| {
                    format!(
                        "[[forward]]\nproto = \"udp\"\nport = {}\nto = \"a:80\"\n",
                        i + 1
                    )
                })
                .collect();
            format!(
                "{}{f}",
                nat_base("masquerade = true\n", "\"203.0.113.1/24\"")
            )
        };
        rule(
            &fwds(4096),
            &fwds(4097),
            &["forward = 4097", "at most 4096 entries"],
        );
    }

    #[test]
    fn limits_per_interface() {
        // Addresses per interface: bridge, namespace, link endpoint.
        let v6 = |n: usize, base: u32| list(n, |i| format!("\"fd00::{:x}/64\"", base + i as u32));
        let bridge = |n| {
            format!(
                "name = \"x\"\n[bridge]\nname = \"br0\"\naddresses = [{}]\n",
                v6(n, 1)
            )
        };
        rule(
            &bridge(64),
            &bridge(65),
            &["bridge.addresses = 65", "at most 64 addresses"],
        );
        let nsa = |n| {
            format!(
                "{BRIDGE}[[namespace]]\nname = \"a\"\nanti_spoof = false\naddresses = [{}]\n",
                v6(n, 1)
            )
        };
        rule(
            &nsa(64),
            &nsa(65),
            &["namespace[0].addresses = 65", "at most 64"],
        );
        let link = |n| {
            format!(
                "name = \"x\"\n[[link]]\na = {{ ifname = \"a\", addresses = [{}] }}\nb = {{ ifname = \"b\" }}\n",
                v6(n, 1)
            )
        };
        rule(
            &link(64),
            &link(65),
            &["link[0].a.addresses = 65", "at most 64"],
        );
        // Routes and sysctls per namespace, routes per link endpoint.
        let routes = |n: usize| {
            list(n, |i| {
                format!("{{ to = \"10.{i}.0.0/16\", dev = \"eth0\" }}")
            })
        };
        let nsr = |n| {
            format!(
                "{BRIDGE}[[namespace]]\nname = \"a\"\nroutes = [{}]\n",
                routes(n)
            )
        };
        rule(
            &nsr(256),
            &nsr(257),
            &["namespace[0].routes = 257", "at most 256 routes"],
        );
        let lr = |n: usize| {
            let r = list(n, |i| format!("{{ to = \"10.{i}.0.0/16\", dev = \"a\" }}"));
            format!(
                "name = \"x\"\n[[link]]\na = {{ ifname = \"a\", routes = [{r}] }}\nb = {{ ifname = \"b\" }}\n"
            )
        };
        rule(
            &lr(256),
            &lr(257),
            &["link[0].a.routes = 257", "at most 256 routes"],
        );
        let sys = |n: usize| {
            let kv = list(n, |i| format!("\"net.ipv4.conf.d{i}.forwarding\" = \"1\""));
            format!("{BRIDGE}[[namespace]]\nname = \"a\"\nsysctls = {{ {kv} }}\n")
        };
        rule(
            &sys(64),
            &sys(65),
            &["namespace[0].sysctls = 65", "at most 64 sysctls"],
        );
    }

    #[test]
    fn mtus_and_aging() {
        for (field, good, bad) in [
            (
                "mtu",
                "name = \"x\"\nmtu = 68\n",
                "name = \"x\"\nmtu = 67\n",
            ),
            (
                "bridge.mtu",
                "name = \"x\"\n[bridge]\nname = \"b\"\nmtu = 65535\n",
                "name = \"x\"\n[bridge]\nname = \"b\"\nmtu = 65536\n",
            ),
            (
                "namespace[0].mtu",
                "name = \"x\"\n[[namespace]]\nname = \"a\"\nbridge = false\nmtu = 9000\n",
                "name = \"x\"\n[[namespace]]\nname = \"a\"\nbridge = false\nmtu = 0\n",
            ),
            (
                "link[0].mtu",
                "name = \"x\"\n[[link]]\nmtu = 1500\na = { ifname = \"a\" }\nb = { ifname = \"b\" }\n",
                "name = \"x\"\n[[link]]\nmtu = 40\na = { ifname = \"a\" }\nb = { ifname = \"b\" }\n",
            ),
        ] {
            rule(
                good,
                bad,
                &[&format!("{field} = "), "MTU must be 68..=65535"],
            );
        }
        let aging = |v: u32| format!("name = \"x\"\n[bridge]\nname = \"b\"\naging_secs = {v}\n");
        rule(
            &aging(1),
            &aging(0),
            &["bridge.aging_secs = 0", "1..=86400"],
        );
        rule(&aging(86400), &aging(86401), &["bridge.aging_secs = 86401"]);
    }

    #[test]
    fn name_rules() {
        let top = |n: &str| format!("name = \"{n}\"\n");
        rule(&top("a-b_9"), &top(""), &["name = \"\"", "1 to 32 bytes"]);
        rule(
            &top("a"),
            &top("-a"),
            &["name = \"-a\"", "starting with a letter or digit"],
        );
        rule(
            &top(&"n".repeat(32)),
            &top(&"n".repeat(33)),
            &["1 to 32 bytes"],
        );
        let host = |n: &str| format!("name = \"x\"\nhost_netns = \"{n}\"\n");
        rule(&host("h-1"), &host("h.1"), &["host_netns = \"h.1\""]);
        let link = |n: &str| {
            format!(
                "name = \"x\"\n[[namespace]]\nname = \"r\"\nbridge = false\n[[link]]\na = {{ netns = \"{n}\", ifname = \"a\" }}\nb = {{ ifname = \"b\" }}\n"
            )
        };
        rule(
            &link("r"),
            &link("ghost"),
            &["link[0].a.netns = \"ghost\"", "unknown namespace"],
        );
        // An endpoint in host_netns is the host, not an unknown namespace.
        parse(&format!("host_netns = \"h\"\n{}", link("h"))).unwrap();
    }

    #[test]
    fn interface_rules() {
        let nsif = |n: &str| format!("{BRIDGE}[[namespace]]\nname = \"a\"\nifname = \"{n}\"\n");
        rule(
            &nsif("eth1"),
            &nsif(".."),
            &["namespace[0].ifname = \"..\"", "may only use"],
        );
        rule(
            &nsif("e.1"),
            &nsif(""),
            &["namespace[0].ifname = \"\"", "1 to 15 bytes"],
        );
        let onb = |b: &str| format!("name = \"x\"\n[[namespace]]\nname = \"a\"\nbridge = {b}\n");
        rule(
            &onb("false"),
            &onb("true"),
            &["namespace[0].bridge = true", "has no [bridge]"],
        );
        let link = |a: &str, b: &str| {
            format!(
                "name = \"x\"\n[[link]]\na = {{ ifname = \"{a}\" }}\nb = {{ ifname = \"{b}\" }}\n"
            )
        };
        rule(
            &link("a", "b"),
            &link("a", "a"),
            &[
                "link[0].b.ifname = \"a\"",
                "duplicate interface in namespace (host)",
                "link[0].a.ifname",
            ],
        );
        rule(
            &link("a", "b"),
            &link("a", "b c"),
            &["link[0].b.ifname = \"b c\""],
        );
        // A namespace's port end and a link end of the same name collide.
        let both = |ifname: &str| {
            format!(
                "{BRIDGE}[[namespace]]\nname = \"a\"\n[[link]]\na = {{ netns = \"a\", ifname = \"{ifname}\" }}\nb = {{ ifname = \"b\" }}\n"
            )
        };
        rule(
            &both("eth1"),
            &both("eth0"),
            &[
                "link[0].a.ifname = \"eth0\"",
                "duplicate interface in namespace a",
                "namespace[0].ifname",
            ],
        );
    }

    #[test]
    fn sysctl_rules() {
        let sys = |k: &str, v: &str| {
            format!("{BRIDGE}[[namespace]]\nname = \"a\"\nsysctls = {{ \"{k}\" = \"{v}\" }}\n")
        };
        let good = sys("net.core.somaxconn", "1024");
        for k in ["net.ipv4..conf", "net.ipv4.", "net.ipv4.a/b", "net.ipv4"] {
            rule(
                &good,
                &sys(k, "1"),
                &[&format!("sysctls.{k:?} = {k:?}"), "only net.ipv4.*"],
            );
        }
        rule(
            &sys("net.ipv6.conf.all.forwarding", &"1".repeat(64)),
            &sys("net.ipv6.conf.all.forwarding", &"1".repeat(65)),
            &["up to 64 bytes"],
        );
        rule(
            &sys("net.ipv4.ip_local_port_range", "1024 65000"),
            &sys("net.ipv4.ip_forward", "$(x)"),
            &["\"$(x)\"", "up to 64 bytes"],
        );
    }

    #[test]
    fn address_rules() {
        let one = |a: &str| format!("{BRIDGE}{}", ns("a", a));
        rule(
            &one("192.168.1.1/24"),
            &one("0.0.0.1/0"),
            &[
                "namespace[0].addresses[0] = \"0.0.0.1/0\"",
                "prefix length 0",
            ],
        );
        rule(&one("fd00::1/64"), &one("::1/0"), &["prefix length 0"]);
        rule(
            &one("192.168.1.255/31"),
            &one("192.168.1.255/24"),
            &["network or broadcast"],
        );
        // /32 and /31: every address is a host address.
        parse(&one("192.168.1.0/32")).unwrap();
        let off = |a: &str| {
            format!("{BRIDGE}[[namespace]]\nname = \"a\"\nbridge = false\naddresses = [{a}]\n")
        };
        rule(
            &off(""),
            &off("\"192.168.1.1/24\""),
            &["namespace[0].addresses[0]", "not on the bridge"],
        );
        // The same address on two link ends.
        let links = |b: &str| {
            format!(
                "name = \"x\"\n[[link]]\na = {{ ifname = \"a\", addresses = [\"10.0.0.1/24\"] }}\nb = {{ ifname = \"b\", addresses = [\"{b}\"] }}\n"
            )
        };
        rule(
            &links("10.0.0.2/24"),
            &links("10.0.0.1/24"),
            &[
                "link[0].b.addresses[0]",
                "already assigned by link[0].a.addresses[0]",
            ],
        );
    }

    #[test]
    fn segment_rules() {
        let two = |second: &str| {
            format!(
                "name = \"x\"\n[[link]]\na = {{ ifname = \"a\", addresses = [\"10.0.0.1/8\"] }}\nb = {{ ifname = \"b\" }}\n\
                 [[link]]\na = {{ ifname = \"c\", addresses = [\"{second}\"] }}\nb = {{ ifname = \"d\" }}\n"
            )
        };
        rule(
            &two("11.0.0.1/16"),
            &two("10.1.0.1/16"),
            &[
                "link[1].a.addresses[0]",
                "subnet 10.1.0.0/16 of link[1] overlaps subnet 10.0.0.0/8 of link[0] (link[0].a.addresses[0])",
            ],
        );
        // Nesting the other way round is found too.
        rule(
            &two("32.0.0.1/4"),
            &two("11.0.0.1/4"),
            &["subnet 0.0.0.0/4 of link[1] overlaps subnet 10.0.0.0/8 of link[0]"],
        );
        rule(&two("fd00:1::1/64"), &two("10.0.0.99/32"), &["overlaps"]);
        // IPv6 the same way; one link's own subnets may overlap each other.
        let v6 = |second: &str| {
            format!(
                "name = \"x\"\n[[link]]\na = {{ ifname = \"a\", addresses = [\"fd00::1/48\", \"fd00::2/64\"] }}\nb = {{ ifname = \"b\" }}\n\
                 [[link]]\na = {{ ifname = \"c\", addresses = [\"{second}\"] }}\nb = {{ ifname = \"d\" }}\n"
            )
        };
        rule(
            &v6("fd01::1/64"),
            &v6("fd00:0:0:5::1/64"),
            &[
                "link[1].a.addresses[0]",
                "overlaps subnet fd00::/48 of link[0]",
            ],
        );
    }

    #[test]
    fn route_rules() {
        let ns_route = |r: &str| format!("{BRIDGE}{}routes = [{r}]\n", ns("a", "192.168.1.1/24"));
        rule(
            &ns_route("{ to = \"default\", dev = \"eth0\" }"),
            &ns_route("{ to = \"default\", dev = \"e/0\" }"),
            &["routes[0].dev = \"e/0\"", "may only use"],
        );
        rule(
            &ns_route("{ to = \"::/0\", via = \"fd00::1\", dev = \"eth0\" }"),
            &ns_route("{ to = \"::/0\", via = \"10.0.0.1\", dev = \"eth0\" }"),
            &[
                "routes[0].via = \"10.0.0.1\"",
                "address family differs from ::/0",
            ],
        );
        // A gateway in a subnet of one of the namespace's link ends is fine.
        let via_link = |gw: &str| {
            format!(
                "{BRIDGE}[[namespace]]\nname = \"a\"\nroutes = [{{ to = \"10.0.0.0/8\", via = \"{gw}\" }}]\n\
                 [[link]]\na = {{ netns = \"a\", ifname = \"l0\", addresses = [\"172.16.0.1/24\"] }}\nb = {{ ifname = \"l1\" }}\n"
            )
        };
        rule(
            &via_link("172.16.0.9"),
            &via_link("172.17.0.9"),
            &["outside every subnet of namespace a (172.16.0.0/24)"],
        );
        // A link-local gateway needs its interface.
        let ll = |route: &str| {
            format!(
                "{BRIDGE}[[namespace]]\nname = \"a\"\naddresses = [\"fd00:1::5/64\"]\nroutes = [{route}]\n"
            )
        };
        rule(
            &ll("{ to = \"::/0\", via = \"fe80::1\", dev = \"eth0\" }"),
            &ll("{ to = \"::/0\", via = \"fe80::1\" }"),
            &[
                "routes[0].via = \"fe80::1\"",
                "link-local gateway",
                "add `dev`",
            ],
        );
        // Routes on link endpoints: their own subnets and devices.
        let ep = |r: &str| {
            format!(
                "name = \"x\"\n[[link]]\na = {{ ifname = \"a\", addresses = [\"10.0.0.1/24\"], routes = [{r}] }}\nb = {{ ifname = \"b\" }}\n"
            )
        };
        rule(
            &ep("{ to = \"default\", via = \"10.0.0.254\" }"),
            &ep("{ to = \"default\", via = \"10.0.1.254\" }"),
            &[
                "link[0].a.routes[0].via",
                "outside every subnet of namespace (host) (10.0.0.0/24)",
            ],
        );
        rule(
            &ep("{ to = \"default\", dev = \"b\" }"),
            &ep("{ to = \"default\", dev = \"c\" }"),
            &[
                "link[0].a.routes[0].dev = \"c\"",
                "namespace (host) has no interface c",
            ],
        );
    }

    #[test]
    fn uplink_rules() {
        let addr = "\"203.0.113.1/24\"";
        let m = "masquerade = true\n";
        rule(
            &nat_base(m, addr),
            &nat_base(m, addr).replace("ifname = \"up0\"\n", "ifname = \"up 0\"\n"),
            &["ifname = \"up 0\""],
        );
        let ports = |p: &str| nat_base(&format!("{m}nat_ports = \"{p}\"\n"), addr);
        rule(
            &ports("2000-3000"),
            &ports("3000-2000"),
            &["uplink.nat_ports = \"3000-2000\"", "first <= last"],
        );
        rule(
            &ports("1-65535"),
            &ports("0-100"),
            &["uplink.nat_ports = \"0-100\""],
        );
        let quota =
            |k: &str, n: u32| nat_base(&format!("{m}max_sessions = 100\n{k} = {n}\n"), addr);
        for k in ["max_sessions_per_source", "max_sessions_per_host"] {
            rule(
                &quota(k, 100),
                &quota(k, 101),
                &[
                    &format!("uplink.{k} = 101"),
                    "at most uplink.max_sessions (100)",
                ],
            );
        }
        let max = |n: u32| nat_base(&format!("{m}max_sessions = {n}\n"), addr);
        let limit = netbridge_common::MAX_SESSIONS_LIMIT;
        rule(
            &max(1),
            &max(0),
            &["uplink.max_sessions = 0", &format!("must be 1..={limit}")],
        );
        rule(
            &max(limit),
            &max(limit + 1),
            &[&format!("uplink.max_sessions = {}", limit + 1)],
        );
        for field in NatTimeouts::default().fields().map(|(f, _)| f) {
            let t = |v: u32| nat_base(&format!("{m}timeouts = {{ {field} = {v} }}\n"), addr);
            rule(
                &t(604_800),
                &t(0),
                &[&format!("uplink.timeouts.{field} = 0"), "1..=604800"],
            );
            rule(
                &t(1),
                &t(604_801),
                &[&format!("uplink.timeouts.{field} = 604801")],
            );
        }
        // Non-default filtering needs endpoint-independent mapping.
        let filt = |f: &str, eim: &str| nat_base(&format!("{m}filtering = \"{f}\"\n{eim}"), addr);
        for f in ["address-dependent", "endpoint-independent"] {
            parse(&filt(f, "")).unwrap();
            rule(
                &filt(f, "endpoint_independent = true\n"),
                &filt(f, "endpoint_independent = false\n"),
                &[
                    "uplink.endpoint_independent = false",
                    &format!("uplink.filtering = \"{f}\" needs endpoint-independent mapping"),
                ],
            );
        }
        parse(&filt(
            "address-and-port-dependent",
            "endpoint_independent = false\n",
        ))
        .unwrap();
        // unsolicited_syn: "reset" (default) or "drop", which needs
        // masquerade; another value is named with the field's line.
        let syn =
            |v: &str, masq: &str| nat_base(&format!("{masq}unsolicited_syn = \"{v}\"\n"), addr);
        parse(&syn("reset", m)).unwrap();
        rule(
            &syn("drop", m),
            &syn("drop", ""),
            &[
                "uplink.unsolicited_syn = \"drop\"",
                "needs masquerade = true",
            ],
        );
        assert_err(
            &syn("silent", m),
            &["unsolicited_syn = \"silent\"", "unknown variant `silent`"],
        );
        // NAT (masquerade or a forward) needs an IPv4 address on the uplink.
        let v6 = "\"2001:db8::1/64\"";
        parse(&nat_base("", v6)).unwrap();
        assert_err(
            &nat_base(m, v6),
            &["uplink.ifname = \"up0\"", "NAT needs an IPv4 address"],
        );
        let fwd = "[[forward]]\nproto = \"tcp\"\nport = 80\nto = \"a:80\"\n";
        parse(&format!("{}{fwd}", nat_base("", addr))).unwrap();
        assert_err(
            &format!("{}{fwd}", nat_base("", v6)),
            &["NAT needs an IPv4 address"],
        );
        // An IPv6-only uplink runs NAT66 alone: an IPv6 network on the
        // bridge, masquerade on, forwards to IPv6 targets; a dual-stack lab
        // is told its IPv4 traffic is not translated.
        let lab6 = |extra: &str, target: &str| {
            format!(
                "name = \"x\"\n[bridge]\nname = \"br0\"\naddresses = [\"fd00:77::1/64\"]\n{}\
                 [[namespace]]\nname = \"wan\"\nbridge = false\n\
                 [[link]]\na = {{ ifname = \"up0\", addresses = [{v6}] }}\n\
                 b = {{ netns = \"wan\", ifname = \"eth0\", addresses = [\"2001:db8::2/64\"] }}\n\
                 [uplink]\nifname = \"up0\"\n{extra}\
                 [[forward]]\nproto = \"tcp\"\nport = 80\nto = \"a:80\"\n",
                ns("a", target)
            )
        };
        let t = parse(&lab6(m, "fd00:77::10/64")).unwrap();
        assert!(t.nat_warnings("t.toml").is_empty());
        rule(
            &lab6(m, "fd00:77::10/64"),
            &lab6("", "fd00:77::10/64"),
            &["uplink.masquerade = false", "only IPv6 addresses"],
        );
        rule(
            &lab6(m, "fd00:77::10/64"),
            &lab6(m, "192.168.1.1/24"),
            &[
                "forward[0].to = \"a:80\"",
                "not on the bridge with a global or ULA IPv6 address",
            ],
        );
        let dual = lab6(m, "fd00:77::10/64").replace(
            "[\"fd00:77::1/64\"]",
            "[\"192.168.0.1/16\", \"fd00:77::1/64\"]",
        );
        let w = parse(&dual).unwrap().nat_warnings("t.toml");
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("uplink up0 has no IPv4 address") && w[0].contains("no NAT44"));
        // The gateway must sit in a subnet of the uplink.
        let gw = |g: &str| nat_base(&format!("{m}gateway = \"{g}\"\n"), addr);
        rule(
            &gw("203.0.113.254"),
            &gw("198.51.100.1"),
            &[
                "uplink.gateway = \"198.51.100.1\"",
                "outside every subnet of uplink up0",
            ],
        );
        // gateway6: IPv6, in a subnet of the uplink, not beside an IPv6 gateway.
        let dual = "\"203.0.113.1/24\", \"2001:db8:1::1/64\"";
        let gw6 = |g: &str| nat_base(&format!("{m}gateway6 = \"{g}\"\n"), dual);
        rule(
            &gw6("2001:db8:1::fe"),
            &gw6("2001:db8:2::fe"),
            &[
                "uplink.gateway6 = \"2001:db8:2::fe\"",
                "outside every subnet of uplink up0",
            ],
        );
        assert_err(
            &gw6("203.0.113.254"),
            &[
                "uplink.gateway6 = \"203.0.113.254\"",
                "must be an IPv6 address",
            ],
        );
        assert_err(
            &gw6("fe80::1"),
            &["uplink.gateway6 = \"fe80::1\"", "link-local"],
        );
        assert_err(
            &nat_base(
                &format!("{m}gateway = \"2001:db8:1::fe\"\ngateway6 = \"2001:db8:1::fd\"\n"),
                dual,
            ),
            &["uplink.gateway6", "IPv6 address already"],
        );
        // An existing host interface (not declared by a link) is accepted.
        let existing =
            |ifname: &str| format!("{BRIDGE}[uplink]\nifname = \"{ifname}\"\nmasquerade = true\n");
        rule(
            &existing("eth9"),
            &existing("eth8"),
            &[
                "uplink.ifname = \"eth8\"",
                "does not exist in the host namespace",
            ],
        );
    }

    #[test]
    fn isolate_rules() {
        let iso = |pairs: &str| {
            format!(
                "isolate = [{pairs}]\n{BRIDGE}{}{}[[namespace]]\nname = \"off\"\nbridge = false\n",
                ns("a", "192.168.1.1/24"),
                ns("b", "192.168.2.1/24")
            )
        };
        let good = iso("[\"a\", \"b\"]");
        rule(
            &good,
            &iso("[\"a\", \"off\"]"),
            &["isolate[0][1] = \"off\"", "not on the bridge"],
        );
        rule(
            &good,
            &iso("[\"ghost\", \"a\"]"),
            &["isolate[0][0] = \"ghost\"", "unknown namespace \"ghost\""],
        );
        rule(
            &good,
            &iso("[\"b\", \"b\"]"),
            &["isolate[0] = \"b\"", "cannot be isolated from itself"],
        );
        rule(
            &good,
            &iso("[\"a\", \"b\"], [\"b\", \"a\"]"),
            &["isolate[1] = [\"b\", \"a\"]", "pair listed twice"],
        );
    }

    #[test]
    fn forward_rules() {
        let base = format!(
            "{}{}[[namespace]]\nname = \"v6\"\naddresses = [\"fd00::5/64\"]\n",
            nat_base("masquerade = true\n", "\"203.0.113.1/24\""),
            ns("b", "192.168.2.1/24")
        );
        let fw = |port: &str, to: &str| {
            format!("{base}[[forward]]\nproto = \"tcp\"\nport = {port}\nto = \"{to}\"\n")
        };
        // The target: a bridged namespace with an IPv4 address.
        rule(
            &fw("80", "a:80"),
            &fw("80", "wan:80"),
            &[
                "forward[0].to = \"wan:80\"",
                "namespace wan is not on the bridge with an IPv4 address",
            ],
        );
        rule(
            &fw("80", "a:80"),
            &fw("80", "v6:80"),
            &[
                "forward[0].to = \"v6:80\"",
                "not on the bridge with an IPv4 address",
            ],
        );
        // The whole range must fit the target ports.
        rule(
            &fw("\"100-110\"", "a:65525"),
            &fw("\"100-110\"", "a:65526"),
            &["forward[0].to = \"a:65526\"", "whole range must fit"],
        );
        // The first overlapping forward (by index) is named.
        let three = |third: &str| {
            format!(
                "{base}[[forward]]\nproto = \"udp\"\nport = \"10-20\"\nto = \"a:10\"\n[[forward]]\nproto = \"udp\"\nport = 30\nto = \"a:30\"\n[[forward]]\nproto = \"udp\"\nport = {third}\nto = \"b:1\"\n"
            )
        };
        rule(
            &three("\"21-29\""),
            &three("\"15-35\""),
            &["forward[2].port = \"15-35\"", "overlaps forward[0]"],
        );
        rule(&three("31"), &three("\"30-31\""), &["overlaps forward[1]"]);
        // At most MAX_FWD_RANGES ranges; single ports do not count.
        let max = netbridge_common::MAX_FWD_RANGES as usize;
        let ranges = |n: usize| {
            let f: String = (0..n)
                .map(|i| {
                    format!(
                        "[[forward]]\nproto = \"tcp\"\nport = \"{}-{}\"\nto = \"a:1000\"\n",
                        2000 + 10 * i,
                        2005 + 10 * i
                    )
                })
                .collect();
            format!("{base}{f}[[forward]]\nproto = \"tcp\"\nport = 80\nto = \"a:80\"\n")
        };
        rule(
            &ranges(max),
            &ranges(max + 1),
            &[
                &format!("forward[{max}].port"),
                &format!("more than {max} port ranges"),
            ],
        );
        // Forwards need the TC datapath (hairpin); masquerade alone does not.
        let one = fw("80", "a:80");
        let xdp = |t: &str| t.replacen("name = \"x\"\n", "name = \"x\"\ndatapath = \"xdp\"\n", 1);
        parse(&xdp(&base)).unwrap();
        rule(
            &one,
            &xdp(&one),
            &["datapath = \"xdp\": port forwards need datapath = \"tc\""],
        );
    }

    /// Ports of the bridge's segment with different MTUs are named in one
    /// warning, grouped by MTU; uniform MTUs (set or default, the bridge
    /// following its ports) give none.
    #[test]
    fn mtu_mismatch_on_the_bridge_warns() {
        let base = "name = \"x\"\n[bridge]\nname = \"br0\"\naddresses = [\"10.0.0.1/16\"]\n";
        let ns = |name: &str, mtu: &str| {
            format!(
                "[[namespace]]\nname = \"{name}\"\naddresses = [\"10.0.{}.1/24\"]\n{mtu}",
                name.len()
            )
        };
        let warn = |text: &str| parse(text).unwrap().mtu_warnings(&[], "t.toml");
        // Controls: defaults everywhere; one explicit 1500 among defaults;
        // all 9000 with the bridge left to follow them; a top-level mtu.
        assert!(warn(&format!("{base}{}{}", ns("a", ""), ns("bb", ""))).is_empty());
        assert!(
            warn(&format!(
                "{base}{}{}",
                ns("a", "mtu = 1500\n"),
                ns("bb", "")
            ))
            .is_empty()
        );
        assert!(
            warn(&format!(
                "{base}{}{}",
                ns("a", "mtu = 9000\n"),
                ns("bb", "mtu = 9000\n")
            ))
            .is_empty()
        );
        let top = format!("mtu = 9000\n{base}{}{}", ns("a", ""), ns("bb", ""));
        assert!(warn(&top).is_empty(), "{:?}", warn(&top));
        // A namespace that differs.
        let w = warn(&format!(
            "{base}{}{}{}",
            ns("a", ""),
            ns("bb", "mtu = 9000\n"),
            ns("ccc", "")
        ));
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(
            w[0],
            "t.toml: the L2 segment of bridge br0 mixes MTUs: 1500 on nb-a (a), nb-ccc (ccc); \
             9000 on nb-bb (bb); frames larger than 1500 are dropped between these ports (give \
             every namespace on the bridge the same mtu)"
        );
        // The bridge's own MTU (which its namespaces inherit) against a
        // port's.
        let bridged = |a: &str| format!("{base}mtu = 1400\n{}{}", ns("a", a), ns("bb", ""));
        assert!(warn(&bridged("")).is_empty());
        let w = warn(&bridged("mtu = 1500\n"));
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("1400 on bridge br0, nb-bb (bb); 1500 on nb-a (a);"),
            "{w:?}"
        );
        // An attached port counts too; a namespace off the bridge does not.
        let t = parse(&format!(
            "{base}{}{}",
            ns("a", ""),
            "[[namespace]]\nname = \"off\"\nbridge = false\nmtu = 9000\n"
        ))
        .unwrap();
        assert!(t.mtu_warnings(&[], "t.toml").is_empty());
        let mut p = t.ports(&[])[0].clone();
        (p.name, p.host_ifname, p.mtu) = ("cni1".into(), "nb-cni1".into(), Some(9000));
        let w = t.mtu_warnings(&[p], "t.toml");
        assert!(w[0].contains("9000 on nb-cni1 (cni1)"), "{w:?}");
    }
}
