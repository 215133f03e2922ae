//! A CNI network as a netbridge topology in the node (the namespace the
//! plugin runs in): derived from the configuration, the node's uplink and
//! the gateways IPAM handed out, brought up (or repaired) only when that
//! topology differs from the running one or the datapath is not all there.
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;

use super::{
    conf::NetConf,
    error::{CniError, code},
    names,
};
use crate::{
    config::{Bridge, PortSpec, Topology, Uplink, ipv4s},
    netlink,
    netns::{self, Netns},
    state::State,
    topology::{self, Held, TopologyError},
};

/// A topology error as a CNI error: bad input is code 7, the journal or
/// the lock 102, anything else 999; the message says what was being done.
pub fn engine_err(what: impl std::fmt::Display) -> impl FnOnce(TopologyError) -> CniError {
    move |e| {
        let code = match &e {
            TopologyError::Config(_) => code::INVALID_CONFIG,
            TopologyError::State(_) | TopologyError::Lock(_) => code::STATE_FAILURE,
            _ => code::INTERNAL,
        };
        CniError::new(code, format!("netbridge: {what}")).with_details(e.to_string())
    }
}

/// The node interface NAT uses: its name and IPv4 addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeUplink {
    pub ifname: String,
    pub ipv4: Vec<Ipv4Addr>,
}

/// The node's uplink: `uplink` of the configuration, else the interface of
/// the node's IPv4 default route; None when there is neither.
pub fn node_uplink(conf: &NetConf) -> Result<Option<NodeUplink>, CniError> {
    let wanted = conf.netbridge.uplink.clone();
    let found = netns::run_in(&Netns::Current, |h| async move {
        let links = netlink::links(&h).await?;
        let ifname = match wanted {
            Some(u) => Some(u),
            None => netlink::routes(&h, false)
                .await?
                .iter()
                .find(|r| r.dst.prefix_len() == 0)
                .and_then(|r| r.oif)
                .and_then(|i| links.iter().find(|l| l.index == i))
                .map(|l| l.name.clone()),
        };
        let Some(ifname) = ifname else {
            return Ok(None);
        };
        let Some(link) = links.iter().find(|l| l.name == ifname) else {
            return Ok(Some((ifname, None)));
        };
        let addrs = netlink::addresses(&h, link.index).await?;
        Ok::<_, netlink::NetlinkError>(Some((ifname, Some(ipv4s(&addrs).collect()))))
    });
    let io =
        |e: String| CniError::new(code::INTERNAL, format!("netbridge: the node's uplink: {e}"));
    match found
        .map_err(|e| io(e.to_string()))?
        .map_err(|e| io(e.to_string()))?
    {
        None => Ok(None),
        Some((ifname, None)) => Err(CniError::invalid(
            "uplink",
            &ifname.into(),
            "no such interface in the node",
        )),
        Some((ifname, Some(ipv4))) => Ok(Some(NodeUplink { ifname, ipv4 })),
    }
}

/// The topology network `conf` wants: the running one's bridge addresses
/// (gateways earlier ADDs put there) plus `gateways`, its forwards, and an
/// uplink when `uplink` is given (masquerade as `ipMasq` says).
pub fn wanted(
    conf: &NetConf,
    running: Option<&Topology>,
    gateways: &[IpNet],
    uplink: Option<&str>,
) -> Topology {
    let mut addresses: Vec<IpNet> = running
        .and_then(|t| t.bridge.as_ref())
        .map(|b| b.addresses.clone())
        .unwrap_or_default();
    for g in gateways.iter().filter(|_| conf.bridge.is_gateway) {
        if !addresses.contains(g) {
            addresses.push(*g);
        }
    }
    let nb = &conf.netbridge;
    Topology {
        name: names::topology_name(&conf.name),
        host_netns: None,
        datapath: nb.datapath.clone(),
        // Container runtimes expect an address usable at once.
        ipv6_dad: Default::default(),
        mtu: conf.bridge.mtu,
        bridge: Some(Bridge {
            name: conf.bridge.name.clone(),
            addresses,
            mtu: None,
            aging_secs: nb
                .aging_secs
                .unwrap_or(netbridge_common::DEFAULT_AGING_SECS),
        }),
        namespaces: vec![],
        links: vec![],
        uplink: uplink.map(|ifname| Uplink {
            ifname: ifname.into(),
            masquerade: conf.bridge.ip_masq,
            gateway: None,
            gateway6: None,
            nat_ports: nb.nat_ports.map(|(a, b)| PortSpec {
                raw: format!("{a}-{b}"),
            }),
            endpoint_independent: None,
            max_sessions: nb
                .max_sessions
                .unwrap_or(netbridge_common::DEFAULT_MAX_SESSIONS),
            max_sessions_per_source: 0,
            max_sessions_per_host: 0,
            fast_path: true,
            timeouts: Default::default(),
            filtering: Default::default(),
            inbound_refresh: false,
            unsolicited_syn: Default::default(),
        }),
        forwards: running.map(|t| t.forwards.clone()).unwrap_or_default(),
        isolate: vec![],
    }
}

/// The gateways of an IPAM result, with their subnets' prefixes: what
/// `isGateway` puts on the bridge.
pub fn gateways(ips: &[super::result::IpConfig]) -> Vec<IpNet> {
    ips.iter()
        .filter_map(|i| IpNet::new(i.gateway?, i.address.prefix_len()).ok())
        .collect()
}

/// Checks `t` as a topology file would be checked (names, addresses, the
/// uplink exists in the node); forwards were checked when they were set.
fn validate(t: &Topology) -> Result<(), CniError> {
    let mut alone = t.clone();
    alone.forwards.clear();
    let text = toml::to_string(&alone).map_err(|e| {
        CniError::new(
            code::INTERNAL,
            format!("netbridge: topology {}: {e}", t.name),
        )
    })?;
    let file = format!("<CNI network topology {}>", t.name);
    Topology::parse(&text, &file, &|ifname| {
        topology::host_has_link(None, ifname)
    })
    .map(drop)
    .map_err(|e| CniError::new(code::INVALID_CONFIG, e.to_string()))
}

/// Another netbridge topology already using bridge `bridge` in this node.
fn bridge_owner(me: &str, bridge: &str) -> Option<String> {
    State::list().into_iter().filter(|n| n != me).find(|n| {
        State::load(n).ok().flatten().is_some_and(|st| {
            st.topology
                .and_then(|t| t.bridge)
                .is_some_and(|b| b.name == bridge)
        })
    })
}

/// Makes the running topology `want`, with every part of its datapath
/// attached: nothing when it already is; else attachments whose namespace
/// is gone (their container died without a DEL) are detached first and the
/// topology is brought up, which repairs what is missing. Returns the
/// changes made.
pub fn ensure(held: &Held, want: &Topology, ip_forward: bool) -> Result<Vec<String>, CniError> {
    validate(want)?;
    let st = held.state().map_err(engine_err("reading the journal"))?;
    let running = st.as_ref().and_then(|s| s.topology.as_ref());
    if running.is_none()
        && let Some(b) = &want.bridge
        && let Some(other) = bridge_owner(&want.name, &b.name)
    {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!(
                "bridge = {:?}: already the bridge of netbridge topology {other}; give each \
                 network its own bridge",
                b.name
            ),
        ));
    }
    let probe = topology::probe(&want.name).map_err(engine_err("probing the datapath"))?;
    let mut changes = Vec::new();
    if running != Some(want) || !probe.is_some_and(|p| p.is_ok()) {
        let mut want = want.clone();
        for p in st.iter().flat_map(|s| s.attachments.iter()) {
            if !crate::topology::port_netns_exists(p) {
                let r = held
                    .remove_port(&p.name)
                    .map_err(engine_err(format!("detaching dead port {}", p.name)))?;
                changes.extend(r.changes);
                // Its forwards went with it.
                want.forwards.retain(|f| f.target().0 != p.name);
            }
        }
        let r = held
            .up(&want)
            .map_err(engine_err(format!("bringing up network {}", want.name)))?;
        changes.extend(r.changes);
    }
    if ip_forward && want.uplink.is_none() {
        // What the reference bridge does for isGateway; with an uplink the
        // engine sets (and journals) it.
        set_ip_forward()?;
    }
    Ok(changes)
}

fn set_ip_forward() -> Result<(), CniError> {
    let path = "/proc/sys/net/ipv4/ip_forward";
    match std::fs::read_to_string(path) {
        Ok(v) if v.trim() == "1" => Ok(()),
        _ => std::fs::write(path, "1")
            .map_err(|e| CniError::new(code::INTERNAL, format!("netbridge: {path}: {e}"))),
    }
}

/// Whether `ip` is one `mapping.hostIP` may name: unset, 0.0.0.0 or an
/// address of the uplink (forwards listen on the uplink's address).
pub fn host_ip_ok(host_ip: Option<IpAddr>, uplink: &NodeUplink) -> bool {
    match host_ip {
        None => true,
        Some(IpAddr::V4(a)) => a.is_unspecified() || uplink.ipv4.contains(&a),
        Some(IpAddr::V6(_)) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(extra: serde_json::Value) -> NetConf {
        let mut v =
            serde_json::json!({"cniVersion": "1.0.0", "name": "my.net", "type": "netbridge-cni"});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        NetConf::parse(v.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn wanted_topology_keeps_what_runs_and_adds_gateways() {
        let c = conf(
            serde_json::json!({"bridge": "br9", "isGateway": true, "ipMasq": true,
            "mtu": 1400, "natPorts": "20000-30000", "agingSecs": 60}),
        );
        let gw: Vec<IpNet> = vec!["192.168.5.1/24".parse().unwrap()];
        let t = wanted(&c, None, &gw, Some("eth0"));
        assert_eq!(t.name, names::topology_name("my.net"));
        let b = t.bridge.as_ref().unwrap();
        assert_eq!(
            (b.name.as_str(), b.addresses.clone(), b.aging_secs),
            ("br9", gw.clone(), 60)
        );
        assert_eq!(t.mtu, Some(1400));
        let u = t.uplink.as_ref().unwrap();
        assert!(u.masquerade && u.ifname == "eth0");
        assert_eq!(u.port_range(), (20000, 30000));
        validate(&Topology {
            uplink: None,
            ..t.clone()
        })
        .unwrap();
        // A second ADD with another gateway keeps the first; without
        // isGateway none is added; no uplink, none in the topology.
        let more: Vec<IpNet> = vec!["fd00:5::1/64".parse().unwrap()];
        let t2 = wanted(&c, Some(&t), &more, Some("eth0"));
        assert_eq!(t2.bridge.unwrap().addresses, [gw[0], more[0]]);
        let plain = conf(serde_json::json!({}));
        let t3 = wanted(&plain, None, &gw, None);
        assert!(t3.bridge.as_ref().unwrap().addresses.is_empty() && t3.uplink.is_none());
        assert_eq!(t3.bridge.unwrap().name, "cni0");
    }

    #[test]
    fn host_ips_must_be_the_uplinks() {
        let u = NodeUplink {
            ifname: "eth0".into(),
            ipv4: vec!["203.0.113.1".parse().unwrap()],
        };
        for ok in [None, Some("0.0.0.0"), Some("203.0.113.1")] {
            assert!(host_ip_ok(ok.map(|a| a.parse().unwrap()), &u), "{ok:?}");
        }
        for bad in ["203.0.113.9", "::", "2001:db8::1"] {
            assert!(!host_ip_ok(Some(bad.parse().unwrap()), &u), "{bad}");
        }
    }
}
