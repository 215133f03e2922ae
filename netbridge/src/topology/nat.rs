//! The NAT phase of `up` (uplink programs, NAT maps) and runtime changes of
//! the forwards (`netbridge forward add|del`).
use std::collections::HashMap;

use ipnet::IpNet;

use netbridge_common::{
    Fwd6Target, FwdTarget, MAX_FWD6, NAT_EIM, NAT_FAST_PATH, NAT_FORWARDS, NAT_INBOUND_REFRESH,
    NAT_MASQUERADE, NAT_SYN_DROP, NAT_UPLINK_PEER, NAT6_FAST_PATH, NAT6_UPLINK_PEER, NatConfig,
};

use crate::config::UnsolicitedSyn;

use super::{
    Held, Result, TopologyError, host_has_link, host_of, in_ns, lock_topology,
    phases::{self, Macs},
    port,
    run::{Run, Step},
    up,
};
use crate::{
    bpf::{Datapath, PinDir},
    config::{ConfigError, Forward, NatTimeouts, Port, PortSpec, Proto, Topology, ipv4s},
    nat::{NatMaps, NatPlan, proto_num},
    netlink::{self, LinkInfoLite},
    state::State,
};

/// The NAT part of a topology in datapath terms; the uplink's address and
/// ifindex are read in the host namespace.
#[derive(Debug, Clone)]
pub(super) struct NatInputs {
    uplink: String,
    flags: u32,
    ports: (u16, u16),
    max_sessions: u32,
    /// Per upstream source, per lab host; 0: none.
    quotas: (u32, u32),
    timeouts: NatTimeouts,
    /// `FILTER_*` code.
    filtering: u8,
}

/// One forward to an attached port (a CNI port mapping): `external` on the
/// uplink address, `proto`, to `target` on the port's first IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortForward {
    pub proto: Proto,
    pub external: u16,
    pub target: u16,
}

/// The topology's forwards in datapath terms (target namespace's or
/// attached port's first IPv4 address).
pub fn forward_targets(t: &Topology, attached: &[Port]) -> Vec<FwdTarget> {
    let first_v4 = target_addrs(t, attached, |a| ipv4s(a).next());
    t.forwards
        .iter()
        .filter_map(|f| {
            let (first, last) = f.port.range()?;
            let (ns, port) = f.target();
            let addr = first_v4.get(ns.as_str())?;
            Some(FwdTarget {
                addr: (*addr).into(),
                port,
                first,
                last,
                proto: proto_num(f.proto),
                _pad: 0,
            })
        })
        .collect()
}

/// The topology's forwards over IPv6: those whose target (namespace or
/// attached port) has a global or ULA IPv6 address (its first); the rest
/// are IPv4-only.
pub fn forward_targets6(t: &Topology, attached: &[Port]) -> Vec<Fwd6Target> {
    let first_v6 = target_addrs(t, attached, crate::nat6::masquerade_addr);
    t.forwards
        .iter()
        .filter_map(|f| {
            let (first, last) = f.port.range()?;
            let (ns, port) = f.target();
            Some(Fwd6Target {
                addr: crate::nat6::in6(*first_v6.get(ns.as_str())?),
                port,
                first,
                last,
                proto: proto_num(f.proto),
                _pad: 0,
            })
        })
        .take(MAX_FWD6 as usize)
        .collect()
}

/// The address `pick` finds for each namespace and port (attached ones
/// too) a forward may name, by name.
fn target_addrs<A>(
    t: &Topology,
    attached: &[Port],
    pick: impl Fn(&[IpNet]) -> Option<A>,
) -> HashMap<String, A> {
    let ports = t.ports(attached);
    t.namespaces
        .iter()
        .map(|n| (&n.name, &n.addresses))
        .chain(ports.iter().map(|p| (&p.name, &p.addresses)))
        .filter_map(|(n, a)| Some((n.clone(), pick(a)?)))
        .collect()
}

/// Session limit the conntrack table is sized for when first created.
pub(super) fn max_sessions(t: &Topology) -> u32 {
    inputs(t).map_or(netbridge_common::DEFAULT_MAX_SESSIONS, |n| n.max_sessions)
}

/// The topology's NAT, or None without masquerade and forwards.
pub(super) fn inputs(t: &Topology) -> Option<NatInputs> {
    let u = t.uplink.as_ref()?;
    if !u.masquerade && t.forwards.is_empty() {
        return None;
    }
    let flag = |on: bool, f: u32| if on { f } else { 0 };
    Some(NatInputs {
        uplink: u.ifname.clone(),
        flags: flag(u.masquerade, NAT_MASQUERADE)
            | flag(
                u.endpoint_independent == Some(true) || !u.filtering.is_default(),
                NAT_EIM,
            )
            | flag(u.inbound_refresh, NAT_INBOUND_REFRESH)
            | flag(
                u.unsolicited_syn == UnsolicitedSyn::Drop && u.masquerade,
                NAT_SYN_DROP,
            )
            | flag(!t.forwards.is_empty(), NAT_FORWARDS)
            | flag(u.fast_path, NAT_FAST_PATH),
        ports: u.port_range(),
        max_sessions: u.max_sessions,
        quotas: (u.max_sessions_per_source, u.max_sessions_per_host),
        timeouts: u.timeouts.clone(),
        filtering: u.filtering.code(),
    })
}

/// Phase 6: the NAT maps written (the uplink's settings, the forwards, the
/// lab hosts for hairpin) and the uplink programs attached, or both
/// cleared when the topology has no NAT. Uses the object the datapath
/// phase loaded.
pub(super) fn apply(
    t: &Topology,
    ports: &[Port],
    macs: &Macs,
    run: &mut Run,
    dp: &mut Datapath,
) -> Result<()> {
    let inputs = inputs(t);
    let forwards = forward_targets(t, &run.st.attachments);
    let forwards6 = forward_targets6(t, &run.st.attachments);
    let n_forwards = t.forwards.len();
    let bridge_addrs = t.bridge.as_ref().map_or(&[][..], |b| &b.addresses);
    let lab6 = crate::nat6::lab_prefixes(bridge_addrs);
    let gateway6 = crate::nat6::masquerade_addr(bridge_addrs);
    in_ns(&host_of(t), |h| async move {
        let links = netlink::links(&h).await?;
        let links = phases::by_name(&links);
        let hosts = ports
            .iter()
            .filter_map(|p| {
                Some(port::hosts(
                    p,
                    links.get(p.host_ifname.as_str())?,
                    *macs.get(&p.name)?,
                ))
            })
            .flatten()
            .collect();
        let (plan, keep, plan6) = match &inputs {
            Some(inp) => {
                let up = phases::find(&links, &inp.uplink)?;
                let addrs = netlink::addresses(&h, up.index).await?;
                let addr = ipv4s(&addrs).next();
                let plan6 = plan6(inp, up, &addrs, &lab6, gateway6);
                let mapped = if addr.is_some() {
                    forwards.len()
                } else {
                    forwards6.len()
                };
                check_forward_families(inp, addr.is_some(), n_forwards, mapped)?;
                (
                    plan(inp, up, addr, hosts, forwards, plan6.flags != 0)?,
                    Some(inp.uplink.as_str()),
                    plan6,
                )
            }
            None => (off(hosts), None, Default::default()),
        };
        for ifname in dp.detach_uplinks_except(keep) {
            let what = format!("detached the NAT programs from {ifname}");
            run.changed(Step::Program, what)?;
        }
        let was4 = dp.maps.nat.config().flags != 0;
        run.changes.extend(dp.maps.nat.apply(&plan)?);
        if let Some(inp) = inputs.as_ref().filter(|_| plan.config.flags == 0 && !was4) {
            // NAT66 alone: the IPv4 NAT stays off; say so once.
            if dp.maps.nat6.as_ref().is_none_or(|n| n.config().flags == 0) {
                let what = format!(
                    "IPv4 NAT off: uplink {} has no IPv4 address (NAT66 only)",
                    inp.uplink
                );
                run.changes.push(what);
            }
        }
        if let Some(nat6) = dp.maps.nat6.as_mut() {
            // IPv6 forwards go with NAT66 (masquerade on).
            let fwd6 = if plan6.flags != 0 {
                &forwards6[..]
            } else {
                &[]
            };
            run.changes.extend(nat6.set_forwards(fwd6)?);
            run.changes.extend(nat6.apply(plan6)?);
        }
        run.point(Step::Nat, "NAT maps")?;
        let Some(uplink) = keep else {
            return Ok(());
        };
        run.changes.extend(dp.start_ct_sweep()?);
        run.point(Step::Nat, "conntrack sweep")?;
        for prog in dp.attach_uplink(uplink)? {
            let verb = if dp.reload {
                "attached (replacing)"
            } else {
                "attached"
            };
            run.changed(Step::Program, format!("{verb} {prog} to {uplink}"))?;
        }
        Ok::<_, TopologyError>(())
    })
}

/// Every forward maps over the uplink's family (`v4`: IPv4, else IPv6):
/// `mapped` of `all` have a target address of it. (A file with an
/// existing uplink interface cannot be checked before its addresses are
/// read.)
fn check_forward_families(inp: &NatInputs, v4: bool, all: usize, mapped: usize) -> Result<()> {
    if mapped >= all {
        return Ok(());
    }
    let family = if v4 {
        "an IPv4 address"
    } else {
        "a global or ULA IPv6 address (the uplink has no IPv4 one)"
    };
    Err(TopologyError::Conflict(format!(
        "{} of {all} forwards target a namespace or port without {family}: uplink {} \
         cannot forward to them",
        all - mapped,
        inp.uplink
    )))
}

/// The IPv4 NAT: on with an IPv4 address on the uplink; without one, off
/// (`nat6`: NAT66 runs alone) or an error (no NAT at all could run).
fn plan(
    inp: &NatInputs,
    up: &LinkInfoLite,
    addr: Option<std::net::Ipv4Addr>,
    hosts: Vec<(std::net::Ipv4Addr, netbridge_common::HostEntry)>,
    forwards: Vec<FwdTarget>,
    nat6: bool,
) -> Result<NatPlan> {
    let limits = NatConfig {
        max_sessions: inp.max_sessions,
        timeouts: crate::nat::timeouts_by_state(&inp.timeouts),
        source_quota: inp.quotas.0,
        host_quota: inp.quotas.1,
        ..NatConfig::default()
    };
    let Some(addr) = addr else {
        if nat6 {
            // IPv4 NAT off (flags 0: no IPv4 path reads anything); the
            // config carries only the limits and sweep period NAT66 shares.
            return Ok(NatPlan {
                config: limits,
                ..off(hosts)
            });
        }
        return Err(TopologyError::Conflict(format!(
            "uplink {} has no IPv4 address, and NAT66 cannot run alone (no global or ULA \
             IPv6 address on it, no IPv6 network on the bridge, or masquerade off): NAT \
             needs an address to translate to",
            inp.uplink
        )));
    };
    Ok(NatPlan {
        config: NatConfig {
            uplink_ipv4: addr.into(),
            uplink_ifindex: up.index,
            flags: inp.flags | uplink_peer(inp, up, NAT_UPLINK_PEER),
            port_min: inp.ports.0,
            port_max: inp.ports.1,
            range_count: 0,
            uplink_mtu: up.mtu.min(u16::MAX as u32) as u16,
            filtering: inp.filtering,
            ..limits
        },
        forwards,
        hosts,
    })
}

/// NAT66 (IPv6 masquerade): with masquerade on, an IPv6 address on the
/// uplink (global or ULA) and IPv6 networks on the bridge; else off.
/// `gateway6`: the bridge's address, the source of its ICMPv6 errors.
fn plan6(
    inp: &NatInputs,
    up: &LinkInfoLite,
    uplink_addrs: &[ipnet::IpNet],
    lab6: &[ipnet::Ipv6Net],
    gateway6: Option<std::net::Ipv6Addr>,
) -> netbridge_common::Nat6Config {
    match crate::nat6::masquerade_addr(uplink_addrs) {
        Some(a) if inp.flags & NAT_MASQUERADE != 0 && !lab6.is_empty() => {
            let timeouts = crate::nat::timeouts_by_state(&inp.timeouts);
            let mut cfg = crate::nat6::config(a, up.index, lab6, inp.ports, timeouts);
            if inp.flags & NAT_FAST_PATH != 0 {
                cfg.flags |= NAT6_FAST_PATH | uplink_peer(inp, up, NAT6_UPLINK_PEER);
            }
            if let Some(g) = gateway6 {
                cfg.lab_gateway = crate::nat6::in6(g);
            }
            cfg
        }
        _ => Default::default(),
    }
}

/// `flag` if the fast path is on and the uplink is a veth: its packets go
/// straight to the veth's peer (see `NAT_UPLINK_PEER`).
fn uplink_peer(inp: &NatInputs, up: &LinkInfoLite, flag: u32) -> u32 {
    let veth = up.kind.as_deref() == Some("veth");
    if veth && inp.flags & NAT_FAST_PATH != 0 {
        flag
    } else {
        0
    }
}

/// NAT off; the lab hosts stay (isolation by address uses them).
fn off(hosts: Vec<(std::net::Ipv4Addr, netbridge_common::HostEntry)>) -> NatPlan {
    NatPlan {
        config: NatConfig::default(),
        forwards: vec![],
        hosts,
    }
}

/// Replaces the forwards of running topology `name` (`netbridge forward
/// add|del`): validated like a file (`file` names it in errors; nothing
/// changes on error), then written to the maps only, purging the sessions
/// of forwards that go or change. A topology whose NAT is not running yet
/// gets a full `up`. Returns the changes.
pub fn set_forwards(name: &str, forwards: Vec<Forward>, file: &str) -> Result<Vec<String>> {
    let _lock = lock_topology(name)?;
    let mut st = State::load(name)?.ok_or_else(|| TopologyError::NotUp(name.into()))?;
    let mut t = st
        .topology
        .clone()
        .ok_or_else(|| TopologyError::NotUp(name.into()))?;
    t.forwards = forwards;
    let t = revalidate(&t, &st.attachments, file)?;
    apply_forwards(&mut st, t)
}

/// `t` checked as a file would be, with its attached ports as bridged
/// namespaces (forwards may target them).
fn revalidate(t: &Topology, attached: &[Port], file: &str) -> Result<Topology> {
    let text = |t: &Topology| {
        toml::to_string(t).map_err(|e| ConfigError::Parse {
            file: file.into(),
            message: e.to_string(),
        })
    };
    let host_ns = t.host_netns.clone();
    let host = |ifname: &str| host_has_link(host_ns.as_deref(), ifname);
    if attached.is_empty() {
        return Ok(Topology::parse(&text(t)?, file, &host)?);
    }
    // The file alone does not know the ports its forwards name: the rest
    // is checked as a file, then everything with the ports.
    let mut alone = t.clone();
    alone.forwards.clear();
    Topology::parse(&text(&alone)?, file, &host)?;
    t.check_ports(attached, file)?;
    Ok(t.clone())
}

/// Makes `t`'s forwards the running ones: through the maps when the NAT
/// runs (sessions of forwards that go or change purged, and of new ones,
/// so no stale session outlives its mapping), else a full `up`.
fn apply_forwards(st: &mut State, t: Topology) -> Result<Vec<String>> {
    let pins = port::pinned(st);
    let mut nat = match &pins {
        Some(pins) => Some(NatMaps::open_pinned(pins)?),
        None => None,
    };
    let on6 = nat6_on(pins.clone());
    match nat.as_mut().filter(|n| n.config().flags != 0 || on6) {
        Some(nat) => {
            let mut changes = set_forwards4(nat, &t, &st.attachments)?;
            changes.extend(set_forwards6(pins, &t, &st.attachments)?);
            st.topology = Some(t);
            st.save()?;
            Ok(changes)
        }
        // No NAT programs on the uplink yet: a full (idempotent) up.
        None => Ok(up::up_locked(&t, up::UpOptions::default())?.changes),
    }
}

/// Does NAT66 run (its maps pinned in `pins`, masquerade on)?
fn nat6_on(pins: Option<PinDir>) -> bool {
    let nat6 = pins.and_then(|mut p| crate::nat6::Nat6Maps::from_source(&mut p).ok());
    nat6.is_some_and(|n| n.config().flags != 0)
}

/// The IPv4 forwards of `t`, if the IPv4 NAT runs (an IPv6-only uplink
/// has none: they stay off with it).
fn set_forwards4(nat: &mut NatMaps, t: &Topology, attached: &[Port]) -> Result<Vec<String>> {
    if nat.config().flags == 0 {
        return Ok(vec![]);
    }
    Ok(nat.set_forwards(forward_targets(t, attached))?)
}

/// The IPv6 forwards of a running NAT66 (masquerade on) made `t`'s.
fn set_forwards6(pins: Option<PinDir>, t: &Topology, attached: &[Port]) -> Result<Vec<String>> {
    let nat6 = pins.and_then(|mut p| crate::nat6::Nat6Maps::from_source(&mut p).ok());
    match nat6.filter(|n| n.config().flags != 0) {
        Some(mut n) => Ok(n.set_forwards(&forward_targets6(t, attached))?),
        None => Ok(vec![]),
    }
}

/// Removes the forwards to port `port` from the journal and the maps
/// (their sessions purged). Returns the changes.
pub(super) fn drop_forwards_to(st: &mut State, port: &str) -> Result<Vec<String>> {
    let Some(mut t) = st.topology.clone() else {
        return Ok(vec![]);
    };
    let before = t.forwards.len();
    t.forwards.retain(|f| f.target().0 != port);
    if t.forwards.len() == before {
        return Ok(vec![]);
    }
    let mut changes = Vec::new();
    if let Some(pins) = port::pinned(st) {
        let mut nat = NatMaps::open_pinned(&pins)?;
        changes = set_forwards4(&mut nat, &t, &st.attachments)?;
        changes.extend(set_forwards6(Some(pins), &t, &st.attachments)?);
    }
    st.topology = Some(t);
    st.save()?;
    Ok(changes)
}

impl Held {
    /// Makes `forwards` the forwards to attached port `port` (replacing the
    /// ones it had): checked with the topology (an external port another
    /// forward holds is refused; nothing changes on error), then written
    /// to the maps, the sessions of each forward that goes, changes or
    /// comes purged. Other forwards and their sessions are not touched.
    /// Returns the changes.
    pub fn set_port_forwards(&self, port: &str, forwards: &[PortForward]) -> Result<Vec<String>> {
        let name = self.name();
        let mut st = State::load(name)?.ok_or_else(|| TopologyError::NotUp(name.into()))?;
        let mut t = st
            .topology
            .clone()
            .ok_or_else(|| TopologyError::NotUp(name.into()))?;
        if !st.attachments.iter().any(|a| a.name == port) {
            return Err(TopologyError::Conflict(format!(
                "port {port} is not attached to {name}"
            )));
        }
        let before = t.forwards.clone();
        t.forwards.retain(|f| f.target().0 != port);
        t.forwards.extend(forwards.iter().map(|f| Forward {
            proto: f.proto,
            port: PortSpec {
                raw: f.external.to_string(),
            },
            to: format!("{port}:{}", f.target),
        }));
        if t.forwards == before {
            return Ok(vec![]);
        }
        t.check_ports(
            &st.attachments,
            &format!("<{name} + forwards of port {port}>"),
        )?;
        apply_forwards(&mut st, t)
    }
}
