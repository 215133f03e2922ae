//! `up`, `down` and `status`: turning a [`Topology`] into namespaces, veths,
//! a bridge, addresses, routes and attached programs, and back.
//!
//! `up` is a reconciler: every step checks what exists and only changes what
//! differs, so a second run reports no changes and a manual change is
//! repaired. Every object it creates is journaled in [`State`] before the
//! next step, so a failure rolls back what this run created, and a crash
//! leaves a journal that `down` (or the next `up`) finishes.
use std::{fs, io, net::IpAddr, os::fd::AsRawFd, path::PathBuf, str::FromStr};

use ipnet::IpNet;
use rtnetlink::Handle;
use serde::Serialize;

use netbridge_common::{
    FwdTarget, HostEntry, NAT_EIM, NAT_FORWARDS, NAT_MASQUERADE, NatConfig, PROG_PEER_XDP,
    PROG_PORT_INGRESS, PROG_PORT_XDP,
};

use crate::{
    bpf::{self, BpfError, Datapath, PinDir},
    config::{Route, Topology, ipv4s},
    nat::NatPlan,
    netlink::{self, NetlinkError, RouteSpec},
    netns::{self, Netns, NetnsError},
    state::{ChangedSysctl, CreatedLink, State, StateError},
};

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("in namespace {ns}: {source}")]
    Netlink {
        ns: String,
        #[source]
        source: NetlinkError,
    },
    #[error(transparent)]
    Bpf(#[from] BpfError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("sysctl {key} in namespace {ns}: {source}")]
    Sysctl {
        ns: String,
        key: String,
        #[source]
        source: io::Error,
    },
    /// Something on the host is in the way; nothing was changed.
    #[error("{0}")]
    Conflict(String),
    #[error("interface {ifname} is missing in namespace {ns} right after it was created")]
    Vanished { ns: String, ifname: String },
    #[error("{source}\n  rolled back: {}{}", if undone.is_empty() { "nothing was created".to_string() } else { undone.join(", ") },
        if rollback_errors.is_empty() { String::new() } else { format!("\n  rollback failed for: {}", rollback_errors.join("; ")) })]
    RolledBack {
        #[source]
        source: Box<TopologyError>,
        undone: Vec<String>,
        rollback_errors: Vec<String>,
    },
    #[error("teardown of {name} incomplete:\n  - {}", errors.join("\n  - "))]
    Teardown { name: String, errors: Vec<String> },
}

type Result<T, E = TopologyError> = std::result::Result<T, E>;

fn nl(ns: &Netns) -> impl Fn(NetlinkError) -> TopologyError + '_ {
    move |source| TopologyError::Netlink {
        ns: ns.label().to_string(),
        source,
    }
}

/// The namespace a topology calls "host": its own `host_netns`, or the one
/// netbridge runs in.
pub fn host_of(t: &Topology) -> Netns {
    match &t.host_netns {
        Some(n) => Netns::Named(n.clone()),
        None => Netns::Current,
    }
}

fn ns_of(t: &Topology, netns: &Option<String>) -> Netns {
    match netns {
        Some(n) => Netns::Named(n.clone()),
        None => host_of(t),
    }
}

fn state_ns(ns: &Netns) -> Option<String> {
    match ns {
        Netns::Current => None,
        Netns::Named(n) => Some(n.clone()),
    }
}

/// Whether interface `ifname` exists in the host namespace of `t` (for the
/// config's uplink check). A host namespace netbridge has not made yet has
/// no interfaces.
pub fn host_has_link(host_netns: Option<&str>, ifname: &str) -> bool {
    let ns = match host_netns {
        Some(n) if !netns::exists(n) => return false,
        Some(n) => Netns::named(n),
        None => Netns::Current,
    };
    let name = ifname.to_string();
    netns::run_in(&ns, move |h| async move {
        netlink::link(&h, &name).await.ok().flatten().is_some()
    })
    .unwrap_or(false)
}

/// `t` with `prefix` put before its name and every namespace name
/// (references in links and forwards included), re-validated.
pub fn prefixed(
    t: &Topology,
    prefix: &str,
    file: &str,
) -> Result<Topology, crate::config::ConfigError> {
    let mut t = t.clone();
    let p = |n: &mut String| *n = format!("{prefix}{n}");
    p(&mut t.name);
    if let Some(h) = &mut t.host_netns {
        p(h);
    }
    for ns in &mut t.namespaces {
        // Keep the host-side name the file implied (the prefixed default
        // would not fit 15 bytes).
        ns.host_ifname = Some(Topology::host_ifname(ns));
        p(&mut ns.name);
    }
    for l in &mut t.links {
        for e in [&mut l.a, &mut l.b] {
            if let Some(n) = &mut e.netns {
                p(n);
            }
        }
    }
    for f in &mut t.forwards {
        p(&mut f.to);
    }
    for pair in &mut t.isolate {
        pair.iter_mut().for_each(p);
    }
    // Re-validate: a prefixed name may now be too long.
    let text = toml::to_string(&t).map_err(|e| crate::config::ConfigError::Parse {
        file: file.to_string(),
        message: e.to_string(),
    })?;
    Topology::parse(&text, file, &|_| true)
}

/// What `up` did.
#[derive(Debug, Default, Serialize)]
pub struct UpReport {
    pub changes: Vec<String>,
}

struct Run {
    st: State,
    /// Objects created by this run only: what a failure rolls back.
    mine: State,
    changes: Vec<String>,
}

/// Fault injection for tests: `NETBRIDGE_FAULT=fail:N` makes the N-th
/// creation of this run fail (exercises rollback); `NETBRIDGE_FAULT=crash:N`
/// aborts the process right after journaling it (like kill -9 mid-`up`).
fn inject_fault(created: usize) -> Result<()> {
    let Ok(spec) = std::env::var("NETBRIDGE_FAULT") else {
        return Ok(());
    };
    let (kind, n) = spec.split_once(':').unwrap_or((&spec, "1"));
    if n.parse::<usize>().ok() != Some(created) {
        return Ok(());
    }
    match kind {
        "crash" => std::process::abort(),
        _ => Err(TopologyError::Conflict(format!(
            "injected fault after {created} creations (NETBRIDGE_FAULT={spec})"
        ))),
    }
}

impl Run {
    /// Journals an object *before* creating it, so a crash in between
    /// cannot leave something `down` does not know about.
    fn intend_netns(&mut self, name: &str) -> Result<()> {
        self.st.netns.push(name.to_string());
        self.mine.netns.push(name.to_string());
        Ok(self.st.save()?)
    }

    fn intend_link(&mut self, ns: &Netns, ifname: &str) -> Result<()> {
        let l = CreatedLink {
            netns: state_ns(ns),
            ifname: ifname.to_string(),
        };
        self.st.links.push(l.clone());
        self.mine.links.push(l);
        Ok(self.st.save()?)
    }

    /// Records a completed creation (and is where faults are injected).
    fn created(&mut self, what: String) -> Result<()> {
        self.changes.push(what);
        inject_fault(self.mine.netns.len() + self.mine.links.len())
    }

    fn ensure_netns(&mut self, name: &str) -> Result<()> {
        if netns::exists(name) {
            return Ok(());
        }
        self.intend_netns(name)?;
        netns::create(name)?;
        self.created(format!("created namespace {name}"))
    }

    /// Creates veth `ifa`@`na` <-> `ifb`@`nb` unless `ifa` exists.
    fn ensure_veth(
        &mut self,
        na: &Netns,
        ifa: &str,
        nb: &Netns,
        ifb: &str,
        mtu: Option<u32>,
    ) -> Result<()> {
        let name = ifa.to_string();
        if in_ns(na, move |h| async move {
            netlink::link(&h, &name).await.map(|l| l.is_some())
        })? {
            return Ok(());
        }
        self.intend_link(na, ifa)?;
        let peer_fd = netns::open(nb)?;
        let raw = peer_fd.as_raw_fd();
        let (a, b) = (ifa.to_string(), ifb.to_string());
        // peer_fd stays open until the namespace thread has joined.
        in_ns(na, move |h| async move {
            netlink::create_veth(&h, &a, &b, raw, mtu).await
        })?;
        drop(peer_fd);
        self.created(format!(
            "created veth {ifa} in {} (peer {ifb} in {})",
            na.label(),
            nb.label()
        ))
    }

    fn ensure_bridge(&mut self, ns: &Netns, name: &str, mtu: Option<u32>) -> Result<()> {
        let n = name.to_string();
        if in_ns(ns, move |h| async move {
            netlink::link(&h, &n).await.map(|l| l.is_some())
        })? {
            return Ok(());
        }
        self.intend_link(ns, name)?;
        let n = name.to_string();
        in_ns(ns, move |h| async move {
            netlink::create_bridge(&h, &n, mtu).await
        })?;
        self.created(format!("created bridge {name} in {}", ns.label()))
    }
}

/// Options of [`up_with`].
#[derive(Debug, Clone, Copy, Default)]
pub struct UpOptions {
    /// Replace attached TC programs with this binary's, without a gap
    /// (upgrade); maps and sessions are kept.
    pub reload: bool,
}

/// Brings the topology up (or repairs it). See the module docs.
pub fn up(t: &Topology) -> Result<UpReport> {
    up_with(t, UpOptions::default())
}

/// [`up`] with options.
pub fn up_with(t: &Topology, opts: UpOptions) -> Result<UpReport> {
    preflight(t)?;
    let st = State::load(&t.name)?.unwrap_or_else(|| State {
        name: t.name.clone(),
        ..State::default()
    });
    let mut run = Run {
        st,
        mine: State {
            name: t.name.clone(),
            ..State::default()
        },
        changes: Vec::new(),
    };
    run.st.topology = Some(t.clone());
    match apply(t, &mut run, opts) {
        Ok(()) => {
            run.st.save()?;
            Ok(UpReport {
                changes: run.changes,
            })
        }
        Err(e) => {
            let (undone, rollback_errors) = teardown(&run.mine);
            // Forget what was rolled back; keep older objects journaled.
            run.st.netns.retain(|n| !run.mine.netns.contains(n));
            run.st.links.retain(|l| !run.mine.links.contains(l));
            run.st
                .host_routes
                .retain(|r| !run.mine.host_routes.contains(r));
            run.st.sysctls.retain(|s| !run.mine.sysctls.contains(s));
            if run.mine.pin_dir.is_some() {
                run.st.pin_dir = None;
            }
            let _ = if run.st.is_empty() {
                run.st.remove()
            } else {
                run.st.save()
            };
            Err(TopologyError::RolledBack {
                source: Box::new(e),
                undone,
                rollback_errors,
            })
        }
    }
}

/// Read-only checks against what already exists: an existing interface of
/// the wrong kind where the topology wants its own is refused up front.
fn preflight(t: &Topology) -> Result<()> {
    let mut wanted: Vec<(Netns, String, &'static str)> = Vec::new();
    let host = host_of(t);
    if let Some(b) = &t.bridge {
        wanted.push((host.clone(), b.name.clone(), "bridge"));
    }
    for ns in t.namespaces.iter().filter(|n| t.on_bridge(n)) {
        wanted.push((host.clone(), Topology::host_ifname(ns), "veth"));
        wanted.push((Netns::named(&ns.name), ns.ifname.clone(), "veth"));
    }
    for l in &t.links {
        for e in [&l.a, &l.b] {
            wanted.push((ns_of(t, &e.netns), e.ifname.clone(), "veth"));
        }
    }
    for (ns, ifname, kind) in wanted {
        if let Netns::Named(n) = &ns
            && !netns::exists(n)
        {
            continue;
        }
        let name = ifname.clone();
        let found = netns::run_in(&ns, move |h| async move { netlink::link(&h, &name).await })?
            .map_err(nl(&ns))?;
        if let Some(l) = found
            && l.kind.as_deref() != Some(kind)
        {
            return Err(TopologyError::Conflict(format!(
                "interface {ifname} already exists in namespace {} as a {}, but the topology needs a {kind} there; \
                 nothing was changed",
                ns.label(),
                l.kind.as_deref().unwrap_or("physical device")
            )));
        }
    }
    Ok(())
}

fn apply(t: &Topology, run: &mut Run, opts: UpOptions) -> Result<()> {
    let host = host_of(t);
    if let Some(h) = &t.host_netns {
        run.ensure_netns(h)?;
    }
    for ns in &t.namespaces {
        run.ensure_netns(&ns.name)?;
    }
    let mut all = vec![host.clone()];
    all.extend(t.namespaces.iter().map(|n| Netns::named(&n.name)));
    for ns in &all {
        let changes = in_ns(ns, |h| async move { loopback_up(&h).await })?;
        run.changes.extend(changes);
    }

    if let Some(b) = &t.bridge {
        let mtu = b.mtu.or(t.mtu);
        run.ensure_bridge(&host, &b.name, mtu)?;
        let changes = configure_endpoint(&host, &b.name, mtu, None, &b.addresses, &[])?;
        run.changes.extend(changes);
    }

    for ns in t.namespaces.iter().filter(|n| t.on_bridge(n)) {
        let target = Netns::named(&ns.name);
        let host_if = Topology::host_ifname(ns);
        let mtu = t.mtu_for_namespace(ns);
        run.ensure_veth(&host, &host_if, &target, &ns.ifname, mtu)?;
        let bridge = t.bridge.as_ref().map(|b| b.name.as_str());
        let changes = configure_endpoint(&host, &host_if, mtu, bridge, &[], &[])?;
        run.changes.extend(changes);
        let changes =
            configure_endpoint(&target, &ns.ifname, mtu, None, &ns.addresses, &ns.routes)?;
        run.changes.extend(changes);
    }
    for ns in &t.namespaces {
        for (k, v) in &ns.sysctls {
            set_sysctl(run, &Netns::named(&ns.name), k, v)?;
        }
    }

    for l in &t.links {
        let (na, nb) = (ns_of(t, &l.a.netns), ns_of(t, &l.b.netns));
        let mtu = l.mtu.or(t.mtu);
        run.ensure_veth(&na, &l.a.ifname, &nb, &l.b.ifname, mtu)?;
        for (ns, e) in [(&na, &l.a), (&nb, &l.b)] {
            let changes = configure_endpoint(ns, &e.ifname, mtu, None, &e.addresses, &e.routes)?;
            run.changes.extend(changes);
        }
    }

    if let Some(u) = &t.uplink {
        // Lab traffic leaves through the uplink: the host must route.
        set_sysctl(run, &host, "net.ipv4.ip_forward", "1")?;
        if let Some(gw) = u.gateway {
            let dst = default_for(gw);
            let label = host.label().to_string();
            let spec = RouteSpec {
                dst,
                via: Some(gw),
                oif: None,
            };
            let added = in_ns(&host, move |h| async move {
                netlink::add_route(&h, &spec)
                    .await
                    .map_err(|e| e.with_ns(&label))
            })?;
            if added {
                let r = (dst.to_string(), Some(gw.to_string()));
                run.st.host_routes.push(r.clone());
                run.mine.host_routes.push(r);
                run.changes
                    .push(format!("added route {dst} via {gw} in {}", host.label()));
                run.st.save()?;
            }
        }
    }

    // (host-side port, namespace, namespace-side ifname) of every bridge port.
    let ports: Vec<(String, String, String)> = t
        .namespaces
        .iter()
        .filter(|n| t.on_bridge(n))
        .map(|n| (Topology::host_ifname(n), n.name.clone(), n.ifname.clone()))
        .collect();
    let nat_inputs = nat_inputs(t);
    let max_sessions = nat_inputs
        .as_ref()
        .map_or(netbridge_common::DEFAULT_MAX_SESSIONS, |n| n.max_sessions);
    if !ports.is_empty() || nat_inputs.is_some() || run.st.pin_dir.is_some() {
        let dir = bpf::ensure_bpffs(&t.name)?;
        if run.st.pin_dir.is_none() {
            run.st.pin_dir = Some(dir.clone());
            run.mine.pin_dir = Some(dir.clone());
            run.st.save()?;
        }
        let pins = PinDir(dir);
        let aging = t
            .bridge
            .as_ref()
            .map(|b| b.aging_secs)
            .unwrap_or(netbridge_common::DEFAULT_AGING_SECS);
        let bridge = t
            .bridge
            .as_ref()
            .map(|b| (b.name.clone(), ipv4s(&b.addresses).next()));
        let xdp = t.datapath == crate::config::Datapath::Xdp;
        // Each port's identity for anti-spoofing: the namespace end's MAC
        // and the namespace's IPv4 addresses.
        let mut host_ports = Vec::new();
        // (port, namespace MAC, its IPv4 addresses): hairpin delivery.
        let mut lab_hosts = Vec::new();
        for n in t.namespaces.iter().filter(|n| t.on_bridge(n)) {
            let ifname = n.ifname.clone();
            let mac = in_ns(&Netns::named(&n.name), move |h| async move {
                netlink::link(&h, &ifname)
                    .await
                    .map(|l| l.and_then(|l| l.mac))
            })?;
            let v4: Vec<std::net::Ipv4Addr> = ipv4s(&n.addresses).collect();
            if let Some(m) = mac {
                lab_hosts.push((Topology::host_ifname(n), m, v4.clone()));
            }
            let identity = if n.anti_spoof {
                mac.map(|m| (m, v4))
            } else {
                None
            };
            host_ports.push((Topology::host_ifname(n), identity));
        }
        // Isolated pairs, by host-side port name.
        let isolate: Vec<(String, String)> = t
            .isolate
            .iter()
            .filter_map(|[a, b]| {
                Some((
                    Topology::host_ifname(t.namespace(a)?),
                    Topology::host_ifname(t.namespace(b)?),
                ))
            })
            .collect();
        // Host side: load (maps reused from pins), attach the port program
        // of the chosen datapath, detach the other one, write the port set.
        let (mut dp, changes) = in_ns(&host, move |h| async move {
            let mut dp = Datapath::load_sized(pins, max_sessions)?;
            dp.reload = opts.reload;
            let links = netlink::links(&h).await?;
            let find = |n: &str| links.iter().find(|l| l.name == n);
            let mut changes = Vec::new();
            let mut port_configs = Vec::new();
            for (p, identity) in &host_ports {
                let l = find(p).ok_or_else(|| TopologyError::Vanished {
                    ns: "host".into(),
                    ifname: p.clone(),
                })?;
                let identity = identity.as_ref().map(|(mac, v4)| (*mac, v4.as_slice()));
                port_configs.push(bpf::port_config(l.index, identity));
                let (drop_other, attached) = if xdp {
                    (
                        dp.detach_port_tc(p),
                        dp.attach_xdp(PROG_PORT_XDP, p, p, l.xdp_prog)?.1,
                    )
                } else {
                    (dp.detach_xdp(p), dp.attach_port(p)?.1)
                };
                if drop_other {
                    changes.push(format!(
                        "detached the {} program from {p}",
                        if xdp { "TC" } else { "XDP" }
                    ));
                }
                if attached {
                    let (prog, hook) = if xdp {
                        (PROG_PORT_XDP, "XDP")
                    } else {
                        (PROG_PORT_INGRESS, "TC ingress")
                    };
                    let verb = if opts.reload {
                        "attached (replacing)"
                    } else {
                        "attached"
                    };
                    changes.push(format!("{verb} {prog} to {p} ({hook})"));
                }
            }
            let gateway = bridge.and_then(|(name, ipv4)| {
                find(&name).map(|l| bpf::Gateway {
                    ifindex: l.index,
                    mac: l.mac.unwrap_or_default(),
                    ipv4,
                })
            });
            dp.maps.configure(&port_configs, aging, gateway)?;
            let pairs: Vec<(u32, u32)> = isolate
                .iter()
                .filter_map(|(a, b)| Some((find(a)?.index, find(b)?.index)))
                .collect();
            if dp.maps.set_policy(&pairs)? {
                changes.push(format!("isolation policy: {} pairs", pairs.len()));
            }
            changes.extend(apply_nat(&h, &mut dp, nat_inputs, &lab_hosts, &links).await?);
            Ok::<_, TopologyError>((dp, changes))
        })?;
        run.changes.extend(changes);
        // Namespace side, XDP only: a pass-through program so the veth
        // accepts XDP_REDIRECTed frames.
        for (_, ns, ifname) in ports {
            let key = format!("{ns}@{ifname}");
            if !xdp {
                if dp.detach_xdp(&key) {
                    run.changes
                        .push(format!("detached {PROG_PEER_XDP} from {ifname} in {ns}"));
                    // Back to the kernel default for veth.
                    let (i, n) = (ifname.clone(), ns.clone());
                    netns::run_blocking_in(&Netns::named(&ns), move || {
                        netlink::set_tx_checksum(&i, true)
                    })?
                    .map_err(|source| TopologyError::Sysctl {
                        ns: n,
                        key: format!("ethtool tx-checksumming of {ifname}"),
                        source,
                    })?;
                }
                continue;
            }
            let label = ns.clone();
            let (moved, attached) = in_ns(&Netns::named(&ns), move |h| async move {
                let xdp_prog = netlink::link(&h, &ifname).await?.and_then(|l| l.xdp_prog);
                let attached = dp.attach_xdp(PROG_PEER_XDP, &ifname, &key, xdp_prog)?.1;
                // Checksums must be complete before XDP_REDIRECT (see
                // set_tx_checksum); the sender computes them in software.
                netlink::set_tx_checksum(&ifname, false).map_err(|source| {
                    TopologyError::Sysctl {
                        ns: label,
                        key: format!("ethtool tx-checksumming of {ifname}"),
                        source,
                    }
                })?;
                Ok::<_, TopologyError>((dp, attached))
            })?;
            dp = moved;
            if attached {
                run.changes
                    .push(format!("attached {PROG_PEER_XDP} to eth end in {ns} (XDP)"));
            }
        }
    }
    Ok(())
}

/// The NAT part of a topology, resolved to datapath terms (the uplink's
/// address and the port ifindexes are found in the host namespace).
#[derive(Debug, Clone)]
struct NatInputs {
    uplink: String,
    flags: u32,
    ports: (u16, u16),
    max_sessions: u32,
    timeouts: crate::config::NatTimeouts,
    forwards: Vec<FwdTarget>,
}

/// The topology's forwards in datapath terms (target namespace's first
/// IPv4 address).
pub fn forward_targets(t: &Topology) -> Vec<FwdTarget> {
    t.forwards
        .iter()
        .filter_map(|f| {
            let (first, last) = f.port.range()?;
            let (ns, port) = f.target();
            let addr = ipv4s(&t.namespace(&ns)?.addresses).next()?;
            Some(FwdTarget {
                addr: addr.octets(),
                port,
                first,
                last,
                proto: crate::nat::proto_num(f.proto),
                _pad: 0,
            })
        })
        .collect()
}

fn nat_inputs(t: &Topology) -> Option<NatInputs> {
    let u = t.uplink.as_ref()?;
    if !u.masquerade && t.forwards.is_empty() {
        return None;
    }
    let mut flags = 0;
    if u.masquerade {
        flags |= NAT_MASQUERADE;
    }
    if u.endpoint_independent {
        flags |= NAT_EIM;
    }
    if !t.forwards.is_empty() {
        flags |= NAT_FORWARDS;
    }
    if u.fast_path {
        flags |= netbridge_common::NAT_FAST_PATH;
    }
    let forwards = forward_targets(t);
    Some(NatInputs {
        uplink: u.ifname.clone(),
        flags,
        ports: u.port_range(),
        max_sessions: u.max_sessions,
        timeouts: u.timeouts.clone(),
        forwards,
    })
}

/// Attaches (or detaches) the uplink programs and writes the NAT maps.
/// Runs on the host namespace's thread.
async fn apply_nat(
    h: &Handle,
    dp: &mut Datapath,
    inputs: Option<NatInputs>,
    lab_hosts: &[(String, [u8; 6], Vec<std::net::Ipv4Addr>)],
    links: &[netlink::LinkInfoLite],
) -> Result<Vec<String>> {
    let mut changes = Vec::new();
    let find = |n: &str| links.iter().find(|l| l.name == n);
    // Lab hosts by address: hairpin delivery and the isolation policy.
    let mut hosts = Vec::new();
    for (port, mac, v4) in lab_hosts {
        if let Some(l) = find(port) {
            for a in v4 {
                hosts.push((
                    *a,
                    HostEntry {
                        ifindex: l.index,
                        mac: *mac,
                        mtu: l.mtu.min(u16::MAX as u32) as u16,
                    },
                ));
            }
        }
    }
    let Some(inp) = inputs else {
        for ifname in dp.detach_uplinks_except(None) {
            changes.push(format!("detached the NAT programs from {ifname}"));
        }
        let off = NatPlan {
            config: NatConfig::default(),
            forwards: vec![],
            hosts,
        };
        changes.extend(dp.maps.nat.apply(&off)?);
        return Ok(changes);
    };
    let up = find(&inp.uplink).ok_or_else(|| TopologyError::Vanished {
        ns: "host".into(),
        ifname: inp.uplink.clone(),
    })?;
    let addr = ipv4s(&netlink::addresses(h, up.index).await?)
        .next()
        .ok_or_else(|| {
            TopologyError::Conflict(format!(
                "uplink {} has no IPv4 address: NAT needs one to masquerade as",
                inp.uplink
            ))
        })?;
    let plan = NatPlan {
        config: NatConfig {
            uplink_ipv4: addr.octets(),
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
        forwards: inp.forwards,
        hosts,
    };
    for ifname in dp.detach_uplinks_except(Some(&inp.uplink)) {
        changes.push(format!("detached the NAT programs from {ifname}"));
    }
    changes.extend(dp.maps.nat.apply(&plan)?);
    changes.extend(dp.start_ct_sweep()?);
    for prog in dp.attach_uplink(&inp.uplink)? {
        let verb = if dp.reload {
            "attached (replacing)"
        } else {
            "attached"
        };
        changes.push(format!("{verb} {prog} to {}", inp.uplink));
    }
    Ok(changes)
}

impl NetlinkError {
    fn with_ns(self, ns: &str) -> TopologyError {
        TopologyError::Netlink {
            ns: ns.to_string(),
            source: self,
        }
    }
}

/// Runs `f` in `ns` and flattens both error layers.
fn in_ns<T, E, F, Fut>(ns: &Netns, f: F) -> Result<T>
where
    T: Send + 'static,
    E: Into<TopologyError> + Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, E>>,
{
    match netns::run_in(ns, f)? {
        Ok(v) => Ok(v),
        Err(e) => Err(match e.into() {
            // Attach the namespace to bare netlink errors.
            TopologyError::Netlink { ns: n, source } if n.is_empty() => TopologyError::Netlink {
                ns: ns.label().to_string(),
                source,
            },
            other => other,
        }),
    }
}

impl From<NetlinkError> for TopologyError {
    fn from(source: NetlinkError) -> Self {
        TopologyError::Netlink {
            ns: String::new(),
            source,
        }
    }
}

fn default_for(gw: IpAddr) -> IpNet {
    match gw {
        IpAddr::V4(_) => IpNet::from_str("0.0.0.0/0").unwrap(),
        IpAddr::V6(_) => IpNet::from_str("::/0").unwrap(),
    }
}

async fn loopback_up(h: &Handle) -> Result<Vec<String>, NetlinkError> {
    let lo = netlink::link(h, "lo").await?;
    match lo {
        Some(l) if !l.up => {
            netlink::set_link(h, l.index, None, None).await?;
            Ok(vec!["set lo up".into()])
        }
        _ => Ok(vec![]),
    }
}

/// Makes `ifname` up, with the MTU, bridge master and addresses wanted;
/// returns what it had to change.
async fn configure(
    h: &Handle,
    label: &str,
    ifname: &str,
    mtu: Option<u32>,
    master: Option<&str>,
    addrs: &[IpNet],
) -> Result<Vec<String>, TopologyError> {
    let mut changes = Vec::new();
    let Some(link) = netlink::link(h, ifname).await? else {
        return Err(TopologyError::Vanished {
            ns: label.into(),
            ifname: ifname.into(),
        });
    };
    let master_idx = match master {
        Some(m) => netlink::link(h, m).await?.map(|l| l.index),
        None => None,
    };
    let mtu_fix = mtu.filter(|m| *m != link.mtu);
    let master_fix = master_idx.filter(|m| link.master != Some(*m));
    if !link.up || mtu_fix.is_some() || master_fix.is_some() {
        netlink::set_link(h, link.index, mtu_fix, master_fix).await?;
        let mut what = Vec::new();
        if !link.up {
            what.push("up".to_string());
        }
        if let Some(m) = mtu_fix {
            what.push(format!("mtu {m}"));
        }
        if master_fix.is_some() {
            what.push(format!("master {}", master.unwrap_or_default()));
        }
        changes.push(format!("set {ifname} {} in {label}", what.join(", ")));
    }
    let have = netlink::addresses(h, link.index).await?;
    for a in addrs {
        if !have.contains(a) {
            netlink::add_address(h, link.index, *a).await?;
            changes.push(format!("added address {a} to {ifname} in {label}"));
        }
    }
    Ok(changes)
}

/// Configures one interface inside `ns` (up, MTU, master, addresses), then
/// its routes.
fn configure_endpoint(
    ns: &Netns,
    ifname: &str,
    mtu: Option<u32>,
    master: Option<&str>,
    addrs: &[IpNet],
    routes: &[Route],
) -> Result<Vec<String>> {
    let (label, ifname, addrs, routes) = (
        ns.label().to_string(),
        ifname.to_string(),
        addrs.to_vec(),
        routes.to_vec(),
    );
    let master = master.map(String::from);
    in_ns(ns, move |h| async move {
        let mut changes = configure(&h, &label, &ifname, mtu, master.as_deref(), &addrs).await?;
        for r in &routes {
            let spec = route_spec(&h, r).await?;
            if netlink::add_route(&h, &spec).await? {
                changes.push(format!("added route {} in {label}", describe_route(r)));
            }
        }
        Ok::<_, TopologyError>(changes)
    })
}

fn describe_route(r: &Route) -> String {
    let mut s = r.to.clone();
    if let Some(v) = r.via {
        s += &format!(" via {v}");
    }
    if let Some(d) = &r.dev {
        s += &format!(" dev {d}");
    }
    s
}

async fn route_spec(h: &Handle, r: &Route) -> Result<RouteSpec, TopologyError> {
    let dst = if r.to == "default" {
        default_for(r.via.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)))
    } else {
        // Validated by the config loader.
        IpNet::from_str(&r.to)
            .map(|n| n.trunc())
            .unwrap_or_else(|_| default_for(IpAddr::V4(0.into())))
    };
    let oif = match &r.dev {
        Some(d) => netlink::link(h, d).await?.map(|l| l.index),
        None => None,
    };
    Ok(RouteSpec {
        dst,
        via: r.via,
        oif,
    })
}

fn sysctl_path(key: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(key.replace('.', "/"))
}

/// Sets a sysctl inside `ns`, journaling the old value so `down` restores it.
fn set_sysctl(run: &mut Run, ns: &Netns, key: &str, value: &str) -> Result<()> {
    let (k, v) = (key.to_string(), value.to_string());
    let previous = netns::run_blocking_in(ns, move || -> io::Result<Option<String>> {
        let path = sysctl_path(&k);
        let old = fs::read_to_string(&path)?.trim().to_string();
        if old == v {
            return Ok(None);
        }
        fs::write(&path, &v)?;
        Ok(Some(old))
    })?
    .map_err(|source| TopologyError::Sysctl {
        ns: ns.label().into(),
        key: key.into(),
        source,
    })?;
    if let Some(previous) = previous {
        let already = run
            .st
            .sysctls
            .iter()
            .any(|s| s.netns == state_ns(ns) && s.key == key);
        if !already {
            let c = ChangedSysctl {
                netns: state_ns(ns),
                key: key.into(),
                previous,
            };
            run.st.sysctls.push(c.clone());
            run.mine.sysctls.push(c);
        }
        run.changes
            .push(format!("set {key}={value} in {}", ns.label()));
        run.st.save()?;
    }
    Ok(())
}

/// Removes everything `st` lists; returns (done, errors). Never stops at the
/// first error: teardown collects all of them.
pub fn teardown(st: &State) -> (Vec<String>, Vec<String>) {
    let mut done = Vec::new();
    let mut errors = Vec::new();
    let dying = |n: &Option<String>| {
        n.as_ref()
            .is_some_and(|n| st.netns.contains(n) || !netns::exists(n))
    };
    if let Some(dir) = &st.pin_dir {
        // Unpinning the links detaches the programs; unpinning maps frees them.
        match PinDir(dir.clone()).remove() {
            Ok(()) => done.push(format!("removed pins {}", dir.display())),
            Err(e) => errors.push(format!("remove pins {}: {e}", dir.display())),
        }
    }
    for s in st.sysctls.iter().rev().filter(|s| !dying(&s.netns)) {
        let ns = s.netns.clone().map(Netns::Named).unwrap_or(Netns::Current);
        let (k, v) = (s.key.clone(), s.previous.clone());
        match netns::run_blocking_in(&ns, move || fs::write(sysctl_path(&k), v)) {
            Ok(Ok(())) => done.push(format!("restored {}={}", s.key, s.previous)),
            Ok(Err(e)) => errors.push(format!("restore {}: {e}", s.key)),
            Err(e) => errors.push(format!("restore {}: {e}", s.key)),
        }
    }
    let host = st.topology.as_ref().map(host_of).unwrap_or(Netns::Current);
    if !dying(&state_ns(&host)) {
        for (dst, via) in &st.host_routes {
            let (dst, via) = (dst.clone(), via.clone());
            let r = in_ns(&host, move |h| async move {
                del_route(&h, &dst, via.as_deref()).await
            });
            match r {
                Ok(()) => done.push("removed host route".to_string()),
                Err(e) => errors.push(format!("remove host route: {e}")),
            }
        }
    }
    for l in st.links.iter().rev().filter(|l| !dying(&l.netns)) {
        let ns = l.netns.clone().map(Netns::Named).unwrap_or(Netns::Current);
        let name = l.ifname.clone();
        let r = in_ns(&ns, move |h| async move {
            match netlink::link(&h, &name).await? {
                Some(link) => netlink::del_link(&h, link.index).await.map(|_| true),
                None => Ok(false),
            }
        });
        match r {
            Ok(true) => done.push(format!("deleted {} in {}", l.ifname, ns.label())),
            Ok(false) => {}
            Err(e) => errors.push(format!("delete {} in {}: {e}", l.ifname, ns.label())),
        }
    }
    // Lab namespaces before the host namespace they hang off.
    for n in st.netns.iter().rev() {
        match netns::delete(n) {
            Ok(()) => done.push(format!("deleted namespace {n}")),
            Err(e) => errors.push(e.to_string()),
        }
    }
    (done, errors)
}

async fn del_route(h: &Handle, dst: &str, via: Option<&str>) -> Result<(), TopologyError> {
    let dst = IpNet::from_str(dst).ok();
    let via = via.and_then(|v| IpAddr::from_str(v).ok());
    for v6 in [false, true] {
        for r in netlink::routes(h, v6).await? {
            if Some(r.dst) == dst && r.via == via {
                netlink::del_route(h, &r).await?;
            }
        }
    }
    Ok(())
}

/// What `down` did.
#[derive(Debug, Default, Serialize)]
pub struct DownReport {
    pub done: Vec<String>,
}

/// Tears down topology `name` as journaled; unknown names are a no-op.
pub fn down(name: &str) -> Result<DownReport> {
    let Some(st) = State::load(name)? else {
        return Ok(DownReport::default());
    };
    let (done, errors) = teardown(&st);
    if errors.is_empty() {
        st.remove()?;
        Ok(DownReport { done })
    } else {
        Err(TopologyError::Teardown {
            name: name.into(),
            errors,
        })
    }
}

/// One interface as `status` shows it.
#[derive(Debug, Serialize)]
pub struct LinkStatus {
    pub name: String,
    pub kind: Option<String>,
    pub up: bool,
    pub mtu: u32,
    pub master: Option<String>,
    pub addresses: Vec<String>,
    /// TCX programs attached (egress ones marked "(egress)").
    pub programs: Vec<String>,
    /// Their kernel program ids (change when `up --reload` replaces them).
    pub program_ids: Vec<u32>,
}

#[derive(Debug, Serialize)]
pub struct NsStatus {
    pub name: String,
    pub exists: bool,
    pub links: Vec<LinkStatus>,
}

/// Live view of every namespace of the topology.
pub fn status(t: &Topology) -> Result<Vec<NsStatus>> {
    let mut all = vec![host_of(t)];
    all.extend(t.namespaces.iter().map(|n| Netns::named(&n.name)));
    let mut out = Vec::new();
    for ns in all {
        if let Netns::Named(n) = &ns
            && !netns::exists(n)
        {
            out.push(NsStatus {
                name: n.clone(),
                exists: false,
                links: vec![],
            });
            continue;
        }
        let links = in_ns(&ns, |h| async move {
            let links = netlink::links(&h).await?;
            let mut v = Vec::new();
            for l in &links {
                if l.name == "lo" {
                    continue;
                }
                let addresses = netlink::addresses(&h, l.index)
                    .await?
                    .iter()
                    .filter(|a| !is_link_local(a))
                    .map(|a| a.to_string())
                    .collect();
                v.push(LinkStatus {
                    name: l.name.clone(),
                    kind: l.kind.clone(),
                    up: l.up,
                    mtu: l.mtu,
                    master: l
                        .master
                        .and_then(|m| links.iter().find(|x| x.index == m).map(|x| x.name.clone())),
                    addresses,
                    programs: bpf::attached_ingress(&l.name)
                        .into_iter()
                        .chain(
                            bpf::attached_tc(&l.name, aya::programs::TcAttachType::Egress)
                                .into_iter()
                                .map(|p| format!("{p}(egress)")),
                        )
                        .collect(),
                    program_ids: bpf::attached_tc_ids(&l.name),
                });
            }
            Ok::<_, NetlinkError>(v)
        })?;
        out.push(NsStatus {
            name: ns.label().to_string(),
            exists: true,
            links,
        });
    }
    Ok(out)
}

fn is_link_local(a: &IpNet) -> bool {
    match a {
        IpNet::V6(v6) => (v6.addr().segments()[0] & 0xffc0) == 0xfe80,
        IpNet::V4(v4) => v4.addr().is_link_local(),
    }
}
