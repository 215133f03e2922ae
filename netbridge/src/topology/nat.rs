//! The NAT phase of `up` (uplink programs, NAT maps) and runtime changes of
//! the forwards (`netbridge forward add|del`).
use std::collections::HashMap;

use netbridge_common::{
    FwdTarget, NAT_EIM, NAT_FAST_PATH, NAT_FORWARDS, NAT_MASQUERADE, NatConfig,
};

use super::{
    Result, TopologyError, host_has_link, host_of, in_ns, lock_topology,
    phases::{self, Macs},
    port,
    run::{Run, Step},
    up,
};
use crate::{
    bpf::{Datapath, PinDir},
    config::{ConfigError, Forward, NatTimeouts, Port, Topology, ipv4s},
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
    timeouts: NatTimeouts,
    forwards: Vec<FwdTarget>,
}

/// The topology's forwards in datapath terms (target namespace's first
/// IPv4 address).
pub fn forward_targets(t: &Topology) -> Vec<FwdTarget> {
    let first_v4: HashMap<&str, _> = t
        .namespaces
        .iter()
        .filter_map(|n| Some((n.name.as_str(), ipv4s(&n.addresses).next()?)))
        .collect();
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
            | flag(u.endpoint_independent, NAT_EIM)
            | flag(!t.forwards.is_empty(), NAT_FORWARDS)
            | flag(u.fast_path, NAT_FAST_PATH),
        ports: u.port_range(),
        max_sessions: u.max_sessions,
        timeouts: u.timeouts.clone(),
        forwards: forward_targets(t),
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
        let (plan, keep) = match &inputs {
            Some(inp) => {
                let up = phases::find(&links, &inp.uplink)?;
                let addr = ipv4s(&netlink::addresses(&h, up.index).await?).next();
                (plan(inp, up, addr, hosts)?, Some(inp.uplink.as_str()))
            }
            None => (off(hosts), None),
        };
        for ifname in dp.detach_uplinks_except(keep) {
            let what = format!("detached the NAT programs from {ifname}");
            run.changed(Step::Program, what)?;
        }
        run.changes.extend(dp.maps.nat.apply(&plan)?);
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

fn plan(
    inp: &NatInputs,
    up: &LinkInfoLite,
    addr: Option<std::net::Ipv4Addr>,
    hosts: Vec<(std::net::Ipv4Addr, netbridge_common::HostEntry)>,
) -> Result<NatPlan> {
    let addr = addr.ok_or_else(|| {
        TopologyError::Conflict(format!(
            "uplink {} has no IPv4 address: NAT needs one to masquerade as",
            inp.uplink
        ))
    })?;
    Ok(NatPlan {
        config: NatConfig {
            uplink_ipv4: addr.into(),
            uplink_ifindex: up.index,
            flags: inp.flags,
            port_min: inp.ports.0,
            port_max: inp.ports.1,
            max_sessions: inp.max_sessions,
            range_count: 0,
            uplink_mtu: up.mtu.min(u16::MAX as u32) as u16,
            timeouts: crate::nat::timeouts_by_state(&inp.timeouts),
            ..NatConfig::default()
        },
        forwards: inp.forwards.clone(),
        hosts,
    })
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
    let text = toml::to_string(&t).map_err(|e| ConfigError::Parse {
        file: file.into(),
        message: e.to_string(),
    })?;
    let host_ns = t.host_netns.clone();
    let t = Topology::parse(&text, file, &|ifname| {
        host_has_link(host_ns.as_deref(), ifname)
    })?;
    t.check_ports(&st.attachments, file)?;
    let mut nat = match &st.pin_dir {
        Some(dir) => Some(NatMaps::open_pinned(&PinDir(dir.clone()))?),
        None => None,
    };
    match nat.as_mut().filter(|n| n.config().flags != 0) {
        Some(nat) => {
            let changes = nat.set_forwards(forward_targets(&t))?;
            st.topology = Some(t);
            st.save()?;
            Ok(changes)
        }
        // No NAT programs on the uplink yet: a full (idempotent) up.
        None => Ok(up::up_locked(&t, up::UpOptions::default())?.changes),
    }
}
