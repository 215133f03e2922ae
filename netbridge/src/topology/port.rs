//! One port on the bridge, end to end: the routine each phase of `up` runs
//! for every port, and [`add_port`] / [`remove_port`], which run it (or
//! undo it) for one port of a running topology without touching the
//! others: no other port's link, program, FDB entry, counter or NAT
//! session is read-modified-written, and the eBPF object is loaded once.
use std::net::{Ipv4Addr, Ipv6Addr};

use serde::Serialize;

use netbridge_common::{HostEntry, PROG_PEER_XDP, PROG_PORT_INGRESS, PROG_PORT_XDP, PortConfig};

use super::{
    Held, Result, TopologyError, dad, host_of, in_ns,
    phases::{self, Macs},
    run::{Run, Step},
    teardown, up,
};
use crate::{
    bpf::{self, Datapath, PinDir},
    config::{Datapath as Mode, Ipv6Dad, Port, PortNetns, Topology, ipv4s, ipv6s},
    netlink::{self, LinkInfoLite},
    netns::{self, Netns},
    state::State,
};

/// The engine's handle on a port's namespace.
pub(super) fn netns_of(p: &Port) -> Netns {
    match &p.netns {
        PortNetns::Named(n) => Netns::Named(n.clone()),
        PortNetns::Path(path) => Netns::Path(path.clone()),
    }
}

/// Phase 1 for a port: its named namespace, created if missing (returned:
/// the engine owns its loopback); a namespace given by path must exist.
pub(super) fn namespace(run: &mut Run, p: &Port) -> Result<Option<Netns>> {
    match &p.netns {
        PortNetns::Named(n) => {
            phases::ensure_netns(run, n)?;
            Ok(Some(Netns::named(n)))
        }
        PortNetns::Path(path) if netns_of(p).exists() => Ok(None),
        PortNetns::Path(path) => Err(TopologyError::Conflict(format!(
            "port {}: {} is not a network namespace; nothing was changed",
            p.name,
            path.display()
        ))),
    }
}

/// Phase 2 for a port: the veth pair (journaled by its host end), the MAC
/// asked for on the namespace end, the host end up on the bridge.
/// `exists`: whether the host end exists, when the caller knows.
pub(super) fn create(
    run: &mut Run,
    host: &Netns,
    bridge: Option<&str>,
    p: &Port,
    exists: Option<bool>,
) -> Result<()> {
    let ns = netns_of(p);
    phases::ensure_veth(run, host, &p.host_ifname, &ns, &p.ifname, p.mtu, exists)?;
    if let Some(mac) = p.mac {
        set_mac(run, &ns, &p.ifname, mac)?;
    }
    phases::configure_endpoint(run, host, &p.host_ifname, p.mtu, bridge, &[], &[])?;
    Ok(())
}

fn set_mac(run: &mut Run, ns: &Netns, ifname: &str, mac: [u8; 6]) -> Result<()> {
    in_ns(ns, |h| async move {
        let Some(l) = netlink::link(&h, ifname).await? else {
            return Err(TopologyError::Vanished {
                ns: ns.label().into(),
                ifname: ifname.into(),
            });
        };
        if l.mac == Some(mac) {
            return Ok(());
        }
        netlink::set_mac(&h, l.index, mac).await?;
        run.changed(
            Step::Link,
            format!("set MAC {} on {ifname} in {}", mac_text(&mac), ns.label()),
        )
    })
}

pub(super) fn mac_text(mac: &[u8; 6]) -> String {
    let hex: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    hex.join(":")
}

/// Phase 3 for a port: the namespace end up with its MTU, addresses and
/// routes. Returns its MAC (the port's identity in the datapath).
pub(super) fn address(run: &mut Run, p: &Port) -> Result<[u8; 6]> {
    let ns = netns_of(p);
    let mac =
        phases::configure_endpoint(run, &ns, &p.ifname, p.mtu, None, &p.addresses, &p.routes)?;
    mac.ok_or_else(|| {
        TopologyError::Conflict(format!("{} in {} has no MAC address", p.ifname, ns.label()))
    })
}

/// Phase 4 for a port: the sysctls of its namespace.
pub(super) fn sysctls(run: &mut Run, p: &Port) -> Result<()> {
    phases::set_sysctls(run, &netns_of(p), &p.sysctls)
}

/// Phase 5, host side: the port program of the topology's datapath on the
/// host end (the other mode's program detached). Runs on the host
/// namespace's thread.
pub(super) fn attach(
    run: &mut Run,
    dp: &mut Datapath,
    t: &Topology,
    p: &Port,
    l: &LinkInfoLite,
) -> Result<()> {
    let name = &p.host_ifname;
    let xdp = t.datapath == Mode::Xdp;
    let (dropped, attached) = if xdp {
        let attached = dp.attach_xdp(PROG_PORT_XDP, name, name, l.xdp_prog)?.1;
        (dp.detach_port_tc(name)?, attached)
    } else {
        // A file's ports come by the hundred: filters (no grace period
        // per attach); attached ones one at a time, often in a CNI chain.
        let hook = match t.namespace(&p.name) {
            Some(_) => bpf::PortHook::Filter,
            None => bpf::PortHook::Tcx,
        };
        (dp.detach_xdp(name), dp.attach_port(name, hook)?.1)
    };
    if dropped {
        let other = if xdp { "TC" } else { "XDP" };
        run.changed(
            Step::Program,
            format!("detached the {other} program from {name}"),
        )?;
    }
    if attached {
        let (prog, hook) = if xdp {
            (PROG_PORT_XDP, "XDP")
        } else {
            (PROG_PORT_INGRESS, "TC ingress")
        };
        let verb = if dp.reload {
            "attached (replacing)"
        } else {
            "attached"
        };
        run.changed(Step::Program, format!("{verb} {prog} to {name} ({hook})"))?;
    }
    Ok(())
}

/// Pin key of the pass-through XDP program on a port's namespace end.
fn peer_key(p: &Port) -> String {
    format!("{}@{}", p.name, p.ifname)
}

/// Phase 5, namespace side. XDP mode: a pass-through program on the
/// namespace end (a veth only accepts XDP_REDIRECTed frames when its peer
/// runs XDP) and TX checksum offload off (XDP_REDIRECT loses the "checksum
/// still to be filled in" state). TC mode: both undone if present.
pub(super) fn attach_peer(run: &mut Run, dp: &mut Datapath, t: &Topology, p: &Port) -> Result<()> {
    let ns = &netns_of(p);
    let (ifname, key) = (p.ifname.as_str(), peer_key(p));
    let csum_err = |source| TopologyError::Sysctl {
        ns: ns.label().into(),
        key: format!("ethtool tx-checksumming of {ifname}"),
        source,
    };
    if t.datapath != Mode::Xdp {
        if dp.detach_xdp(&key) {
            // Back to the kernel default for veth.
            netns::run_blocking_in(ns, || netlink::set_tx_checksum(ifname, true))?
                .map_err(csum_err)?;
            let what = format!("detached {PROG_PEER_XDP} from {ifname} in {}", ns.label());
            run.changed(Step::Program, what)?;
        }
        return Ok(());
    }
    let r = &mut *run;
    in_ns(ns, |h| async move {
        let xdp_prog = netlink::link(&h, ifname).await?.and_then(|l| l.xdp_prog);
        let attached = dp.attach_xdp(PROG_PEER_XDP, ifname, &key, xdp_prog)?.1;
        netlink::set_tx_checksum(ifname, false).map_err(csum_err)?;
        if attached {
            let what = format!(
                "attached {PROG_PEER_XDP} to eth end in {} (XDP)",
                ns.label()
            );
            r.changed(Step::Program, what)?;
        }
        Ok::<_, TopologyError>(())
    })
}

/// The port's datapath entry: fast path on; its namespace end's MAC and
/// addresses, checked with anti-spoofing; RA guard unless a router.
pub(super) fn config(p: &Port, l: &LinkInfoLite, macs: &Macs) -> PortConfig {
    let v4: Vec<Ipv4Addr> = ipv4s(&p.addresses).collect();
    let v6: Vec<Ipv6Addr> = ipv6s(&p.addresses).collect();
    let identity = macs.get(&p.name).map(|m| bpf::Identity {
        mac: *m,
        ipv4: &v4,
        ipv6: &v6,
        anti_spoof: p.anti_spoof,
        router: p.ipv6_router,
    });
    bpf::port_config(l.index, identity)
}

/// The port's lab hosts: each IPv4 address -> its port, MAC and MTU
/// (hairpin delivery, isolation by address).
pub(super) fn hosts(p: &Port, l: &LinkInfoLite, mac: [u8; 6]) -> Vec<(Ipv4Addr, HostEntry)> {
    let entry = HostEntry {
        ifindex: l.index,
        mac,
        mtu: l.mtu.min(u16::MAX as u32) as u16,
    };
    ipv4s(&p.addresses).map(|a| (a, entry)).collect()
}

/// What [`add_port`] or [`remove_port`] did.
#[derive(Debug, Default, Serialize)]
pub struct PortReport {
    pub changes: Vec<String>,
    /// Set when NETBRIDGE_FAULT asked for a step this run never reached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault_not_reached: Option<String>,
}

/// Attaches `port` to the running topology `name` (its bridge): creates
/// its namespace if it is a named one that does not exist, the veth pair,
/// addresses, routes and sysctls, attaches the topology's port program to
/// the host end and adds the port to the datapath's tables (port table,
/// lab hosts), all journaled as the port's. Other ports are not touched.
///
/// The port is validated with the topology first (name unique among
/// namespaces and ports, addresses unique and in the bridge's segment,
/// routes, anti-spoofing limit): an invalid one changes nothing. Adding
/// the same port again repairs it (idempotent); a different port under a
/// taken name is refused. A failure rolls back what this call created.
/// `up` keeps attached ports, `down` removes them.
pub fn add_port(name: &str, port: &Port) -> Result<PortReport> {
    super::hold(name)?.add_port(port)
}

impl Held {
    /// [`add_port`] under this lock.
    pub fn add_port(&self, port: &Port) -> Result<PortReport> {
        let name = self.name();
        let st = load_up(name)?;
        let t = st
            .topology
            .clone()
            .ok_or_else(|| TopologyError::NotUp(name.into()))?;
        let known = st.attachments.iter().find(|a| a.name == port.name).cloned();
        if known.as_ref().is_some_and(|a| a != port) {
            return Err(TopologyError::Conflict(format!(
                "port {} is already attached to {name} with other settings; remove it first",
                port.name
            )));
        }
        let mut attached = st.attachments.clone();
        if known.is_none() {
            attached.push(port.clone());
        }
        t.check_ports(&attached, &format!("<{name} + port {}>", port.name))?;
        let mut run = Run::new(st)?;
        if known.is_none() {
            run.st.attachments = attached;
            run.st.save()?;
        }
        let result = one_port(&t, port, &mut run);
        let new = known.is_none().then_some(port.name.as_str());
        let run = up::conclude(run, result, new)?;
        Ok(PortReport {
            fault_not_reached: run.fault_not_reached(),
            changes: run.changes,
        })
    }
}

/// Every phase of `up`, for `p` alone.
fn one_port(t: &Topology, p: &Port, run: &mut Run) -> Result<()> {
    let host = host_of(t);
    if let Some(ns) = namespace(run, p)? {
        phases::loopback_up(run, &ns)?;
    }
    create(
        run,
        &host,
        t.bridge.as_ref().map(|b| b.name.as_str()),
        p,
        None,
    )?;
    run.dad = t.ipv6_dad;
    let mac = address(run, p)?;
    sysctls(run, p)?;
    if t.ipv6_dad == Ipv6Dad::Wait {
        dad::wait_port(p, run)?;
    }
    let pins = phases::ensure_pins(run, &t.name)?;
    let macs = Macs::from([(p.name.clone(), mac)]);
    let r = &mut *run;
    let mut dp = in_ns(&host, |h| async move {
        let run = r;
        // Only this port's programs: the verifier is most of the time.
        let progs: &[&'static str] = match t.datapath {
            Mode::Tc => &[PROG_PORT_INGRESS],
            Mode::Xdp => &[PROG_PORT_XDP, PROG_PEER_XDP],
        };
        let max = netbridge_common::DEFAULT_MAX_SESSIONS;
        let nat = super::nat::inputs(t).is_some();
        let mut dp = Datapath::load_programs(pins, max, progs, nat)?;
        let links = netlink::links(&h).await?;
        let links = phases::by_name(&links);
        let l = phases::find(&links, &p.host_ifname)?;
        attach(run, &mut dp, t, p, l)?;
        dp.maps.add_port(config(p, l, &macs))?;
        run.point(Step::Maps, format!("port table: added {}", p.host_ifname))?;
        // The bridge's gateway and aging, for a datapath this port starts.
        phases::bridge_config(&mut dp, t, &links)?;
        for (a, e) in hosts(p, l, mac) {
            dp.maps.add_host(a, e)?;
        }
        run.point(Step::Nat, format!("lab hosts: added {}", p.name))?;
        Ok::<_, TopologyError>(dp)
    })?;
    attach_peer(run, &mut dp, t, p)
}

/// Detaches port `port` (a name [`add_port`] was given) from the running
/// topology `name` and removes what was made for it: the forwards to it,
/// its programs and datapath entries (port table, FDB entries on it, lab
/// hosts, counters), its NAT sessions (those of its addresses, both ways,
/// and those of its forwards), its veth pair, its namespace if netbridge
/// created it, the sysctls it changed in a namespace that stays. Other
/// ports are not touched. Works when the port's namespace (and so its veth
/// pair) is already gone. Ports declared in the topology's file are
/// changed through the file.
pub fn remove_port(name: &str, port: &str) -> Result<PortReport> {
    super::hold(name)?.remove_port(port)
}

impl Held {
    /// [`remove_port`] under this lock.
    pub fn remove_port(&self, port: &str) -> Result<PortReport> {
        let name = self.name();
        let mut st = load_up(name)?;
        let t = st
            .topology
            .clone()
            .ok_or_else(|| TopologyError::NotUp(name.into()))?;
        let Some(i) = st.attachments.iter().position(|a| a.name == port) else {
            let why = if t.namespace(port).is_some() {
                "is a [[namespace]] of its file: remove it there and run `up`"
            } else {
                "is not attached"
            };
            return Err(TopologyError::Conflict(format!(
                "port {port} of {name} {why}"
            )));
        };
        let p = st.attachments[i].clone();
        let mut changes = super::nat::drop_forwards_to(&mut st, port)?;
        // A filter goes with the veth, but not if the host end stays (not
        // made by netbridge) or the pins are gone.
        changes.extend(detach_filter(&host_of(&t), &p.host_ifname)?);
        if let Some(pins) = pinned(&st) {
            changes.extend(detach(&host_of(&t), &pins, &p)?);
        }
        let mine = journaled_for(&st, &t, &p);
        let td = teardown::teardown(&mine);
        changes.extend(td.done);
        if !td.errors.is_empty() {
            return Err(TopologyError::Teardown {
                name: format!("port {port} of {name}"),
                errors: td.errors,
            });
        }
        st.forget(&mine);
        st.attachments.remove(i);
        st.save()?;
        Ok(PortReport {
            changes,
            fault_not_reached: None,
        })
    }
}

/// What the journal lists as made for port `p`: its veth (by its host
/// end), its namespace, sysctls changed in it.
fn journaled_for(st: &State, t: &Topology, p: &Port) -> State {
    let host = host_of(t).to_record();
    let ns = netns_of(p).to_record();
    let mut mine = State::new(&st.name);
    mine.topology = st.topology.clone();
    mine.links = st
        .links
        .iter()
        .filter(|l| l.netns == host && l.ifname == p.host_ifname)
        .cloned()
        .collect();
    mine.netns = st
        .netns
        .iter()
        .filter(|n| ns.as_ref() == Some(*n))
        .cloned()
        .collect();
    mine.sysctls = st
        .sysctls
        .iter()
        .filter(|s| s.netns == ns)
        .cloned()
        .collect();
    mine
}

/// Deletes the port program's filter from `ifname` in `host` (see
/// [`crate::tcfilter`]), if it is there. Attached ports get TCX links
/// (see `bpf::PortHook`), so this only makes sure no filter outlives the
/// port on a host end that stays.
fn detach_filter(host: &Netns, ifname: &str) -> Result<Option<String>> {
    if !host.exists() {
        return Ok(None);
    }
    let name = ifname.to_string();
    let detached =
        crate::netns::run_blocking_in(host, move || {
            match nix::net::if_::if_nametoindex(name.as_str()) {
                Ok(index) => crate::tcfilter::detach(index),
                Err(_) => Ok(false),
            }
        })?;
    let detached = detached.map_err(|source| TopologyError::Filter {
        ns: host.label().into(),
        ifname: ifname.into(),
        source,
    })?;
    Ok(detached.then(|| format!("detached {} filter of {ifname}", bpf::HOOK_TC_INGRESS)))
}

/// Takes port `p` out of the datapath: its link pins (which detaches its
/// XDP programs), its filter's program pin, its entries in the pinned
/// tables and its NAT sessions. With
/// its host end already gone (the namespace was deleted), the tables are
/// cleaned by the ifindex its lab hosts recorded.
fn detach(host: &Netns, pins: &PinDir, p: &Port) -> Result<Vec<String>> {
    let mut changes = Vec::new();
    for (ifname, hook) in [
        (p.host_ifname.clone(), bpf::HOOK_TC_INGRESS),
        (p.host_ifname.clone(), bpf::HOOK_XDP),
        (peer_key(p), bpf::HOOK_XDP),
    ] {
        if bpf::unpin_link(&pins.link(&ifname, hook)) {
            changes.push(format!("detached {hook} program of {ifname}"));
        }
    }
    let _ = std::fs::remove_file(pins.filter(&p.host_ifname, bpf::HOOK_TC_INGRESS));
    let ifname = p.host_ifname.as_str();
    let links = in_ns(host, |h| async move { netlink::links(&h).await })?;
    let mut maps = bpf::Maps::open_pinned(pins)?;
    let v4: Vec<Ipv4Addr> = ipv4s(&p.addresses).collect();
    let index = match links.iter().find(|l| l.name == ifname) {
        Some(l) => Some(l.index),
        // Gone: the index its lab hosts point at, unless a live link
        // holds that index now.
        None => v4
            .iter()
            .find_map(|a| maps.nat.hosts.get(&(*a).into(), 0).ok())
            .map(|h| h.ifindex)
            .filter(|i| !links.iter().any(|l| l.index == *i)),
    };
    if let Some(index) = index {
        let fdb = maps.remove_port(index, &v4)?;
        changes.push(format!(
            "removed {} from the datapath tables ({fdb} FDB entries)",
            p.host_ifname
        ));
    }
    if maps.nat.config().flags != 0 {
        let n = maps.nat.purge_hosts(&v4)?;
        changes.push(format!("purged {n} NAT sessions of {}", p.name));
    }
    Ok(changes)
}

/// The topology's pin directory when its maps are pinned there (someone
/// may have emptied netbridge's bpffs: then there is nothing to clean, the
/// maps went with their last user).
pub(super) fn pinned(st: &State) -> Option<PinDir> {
    let pins = PinDir(st.pin_dir.clone()?);
    pins.map(netbridge_common::MAP_PORTS)
        .exists()
        .then_some(pins)
}

/// The journal of running topology `name`.
fn load_up(name: &str) -> Result<State> {
    State::load(name)?.ok_or_else(|| TopologyError::NotUp(name.into()))
}
