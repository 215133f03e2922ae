//! `up` as named phases, in order: namespaces; ports and links; addresses
//! and routes; sysctls; datapath attach; NAT (in `nat.rs`). Each phase
//! runs the per-port routine of `port.rs` for every port (the one
//! `add_port` runs for a single port) and its own work for the bridge,
//! the direct links and the host. The helpers below reconcile one object
//! each: they read what exists, change only what differs and report every
//! change to the [`Run`] (a fault point each).
use std::{
    collections::{BTreeMap, HashMap},
    fs, io,
    net::IpAddr,
    os::fd::AsRawFd,
    path::PathBuf,
    str::FromStr,
};

use ipnet::IpNet;
use netbridge_common::{PROG_PEER_XDP, PROG_PORT_INGRESS, PROG_PORT_XDP};
use rtnetlink::Handle;

use super::{
    Result, TopologyError, dad, host_of, in_ns, nat, ns_of, port,
    run::{Run, Step},
    up::UpOptions,
};
use crate::{
    bpf::{self, Datapath, PinDir},
    config::{Ipv6Dad, Port, Route, Topology, ipv4s},
    netlink::{self, LinkInfoLite, RouteSpec},
    netns::{self, Netns},
};

/// The namespace end's MAC of every port, by port name.
pub(super) type Macs = HashMap<String, [u8; 6]>;

/// Every phase of `up`, in order. The eBPF object is loaded on its own
/// thread while the netlink phases run: the verifier is most of a load's
/// time, and loading needs no namespace (maps are shared through pins).
pub(super) fn apply(t: &Topology, run: &mut Run, opts: UpOptions) -> Result<()> {
    let ports = t.ports(&run.st.attachments);
    let wanted = !ports.is_empty() || nat::inputs(t).is_some() || run.st.pin_dir.is_some();
    let pins = if wanted {
        Some(ensure_pins(run, &t.name)?)
    } else {
        None
    };
    let (max_sessions, (progs, port_nat)) = (nat::max_sessions(t), programs_needed(t, opts));
    run.dad = t.ipv6_dad;
    std::thread::scope(|s| {
        let loader = pins.map(|pins| {
            s.spawn(move || Datapath::load_programs(pins, max_sessions, progs, port_nat))
        });
        let timed = timer();
        namespaces(t, &ports, run)?;
        timed("namespaces");
        ports_and_links(t, &ports, run)?;
        timed("ports and links");
        let macs = addresses_and_routes(t, &ports, run)?;
        timed("addresses and routes");
        sysctls(t, &ports, run)?;
        timed("sysctls");
        if t.ipv6_dad == Ipv6Dad::Wait {
            dad::wait(t, &ports, run)?;
            timed("ipv6 dad");
        }
        let Some(loader) = loader else {
            return Ok(());
        };
        let mut dp = loader
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
        timed("program load (rest of)");
        dp.reload = opts.reload;
        datapath(t, &ports, &macs, run, &mut dp)?;
        timed("datapath");
        nat::apply(t, &ports, &macs, run, &mut dp)?;
        timed("nat");
        Ok(())
    })
}

/// Logs (at debug level, `RUST_LOG=netbridge=debug`) how long each phase
/// took: where the time of a large `up` goes.
fn timer() -> impl Fn(&str) {
    let start = std::cell::Cell::new(std::time::Instant::now());
    move |phase| {
        let now = std::time::Instant::now();
        log::debug!("phase {phase}: {:.3} s", (now - start.get()).as_secs_f64());
        start.set(now);
    }
}

/// Phase 1: the topology's own host namespace, every `[[namespace]]` and
/// every port's named namespace, each with its loopback up.
fn namespaces(t: &Topology, ports: &[Port], run: &mut Run) -> Result<()> {
    let mut all: Vec<Netns> = t.host_netns.iter().map(Netns::named).collect();
    all.extend(t.namespaces.iter().map(|n| Netns::named(&n.name)));
    let missing: Vec<&str> = all
        .iter()
        .filter_map(|ns| match ns {
            Netns::Named(n) if !netns::exists(n) => Some(n.as_str()),
            _ => None,
        })
        .collect();
    run.intend_netns_all(&missing)?;
    for p in ports.iter().filter(|p| t.namespace(&p.name).is_none()) {
        all.extend(port::namespace(run, p)?);
    }
    all.push(host_of(t));
    // Once each (the host may be a named namespace already listed): two
    // workers must never create the same namespace.
    let mut seen = std::collections::HashSet::new();
    all.retain(|ns| seen.insert(ns.clone()));
    parallel(run, &all, |run, ns| {
        if let Netns::Named(n) = ns {
            ensure_netns(run, n)?;
        }
        loopback_up(run, ns)
    })?;
    Ok(())
}

/// Threads of a parallel phase: each namespace's work waits on the kernel
/// (and its own thread, runtime and netlink socket), so a few more than
/// the cores.
const WORKERS: usize = 8;

/// Runs `f` for every item on up to [`WORKERS`] threads, each with a
/// worker [`Run`] (whatever `f` creates must be journaled before), and
/// merges their changes and fault points in item order. Returns the
/// results in item order, or the first error (the other items are done
/// anyway: a failed run rolls back all it journaled).
pub(super) fn parallel<I, R, F>(run: &mut Run, items: &[I], f: F) -> Result<Vec<R>>
where
    I: Sync,
    R: Send,
    F: Fn(&mut Run, &I) -> Result<R> + Sync,
{
    if items.len() < 2 {
        return items.iter().map(|i| f(run, i)).collect();
    }
    let size = items.len().div_ceil(WORKERS);
    let done: Vec<(Run, Result<Vec<R>>)> = std::thread::scope(|s| {
        let f = &f;
        let threads: Vec<_> = items
            .chunks(size)
            .map(|chunk| {
                let mut w = run.worker();
                s.spawn(move || {
                    let r = chunk.iter().map(|i| f(&mut w, i)).collect();
                    (w, r)
                })
            })
            .collect();
        let join = |t: std::thread::ScopedJoinHandle<'_, _>| {
            t.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
        };
        threads.into_iter().map(join).collect()
    });
    let (mut out, mut failed) = (Vec::new(), None);
    for (w, r) in done {
        run.merge(w)?;
        match r {
            Ok(v) => out.extend(v),
            Err(e) => {
                failed.get_or_insert(e);
            }
        }
    }
    failed.map_or(Ok(out), Err)
}

/// Phase 2: the bridge, every port's veth pair with its host end on the
/// bridge, and every direct link.
fn ports_and_links(t: &Topology, ports: &[Port], run: &mut Run) -> Result<()> {
    let host = host_of(t);
    if let Some(b) = &t.bridge {
        let mtu = b.mtu.or(t.mtu);
        ensure_bridge(run, &host, &b.name, mtu)?;
        configure_endpoint(run, &host, &b.name, mtu, None, &[], &[])?;
    }
    let bridge = t.bridge.as_ref().map(|b| b.name.as_str());
    // One dump of the host's links, and the missing host ends journaled
    // in one write.
    let have = in_ns(&host, |h| async move { netlink::links(&h).await })?;
    let have = by_name(&have);
    let missing: Vec<&str> = ports
        .iter()
        .map(|p| p.host_ifname.as_str())
        .filter(|n| !have.contains_key(n))
        .collect();
    run.intend_links(&host, &missing)?;
    parallel(run, ports, |run, p| {
        let exists = have.contains_key(p.host_ifname.as_str());
        port::create(run, &host, bridge, p, Some(exists))
    })?;
    for l in &t.links {
        let (na, nb) = (ns_of(t, &l.a.netns), ns_of(t, &l.b.netns));
        ensure_veth(
            run,
            &na,
            &l.a.ifname,
            &nb,
            &l.b.ifname,
            l.mtu.or(t.mtu),
            None,
        )?;
    }
    Ok(())
}

/// Phase 3: addresses and routes of the bridge, every port's namespace
/// end, both ends of every link, and the host's default route through the
/// uplink's gateway. Returns the ports' MACs (the datapath's identities).
fn addresses_and_routes(t: &Topology, ports: &[Port], run: &mut Run) -> Result<Macs> {
    let host = host_of(t);
    if let Some(b) = &t.bridge {
        configure_endpoint(run, &host, &b.name, None, None, &b.addresses, &[])?;
    }
    let found = parallel(run, ports, port::address)?;
    let names = ports.iter().map(|p| p.name.clone());
    let macs: Macs = names.zip(found).collect();
    for l in &t.links {
        let mtu = l.mtu.or(t.mtu);
        for (ns, e) in [(ns_of(t, &l.a.netns), &l.a), (ns_of(t, &l.b.netns), &l.b)] {
            configure_endpoint(run, &ns, &e.ifname, mtu, None, &e.addresses, &e.routes)?;
        }
    }
    let uplink = t.uplink.as_ref();
    for gw in uplink
        .into_iter()
        .flat_map(|u| [u.gateway, u.gateway6])
        .flatten()
    {
        host_gateway(run, &host, gw)?;
    }
    Ok(macs)
}

/// The host's default route via the uplink's gateway, journaled first so
/// `down` removes it.
fn host_gateway(run: &mut Run, host: &Netns, gw: IpAddr) -> Result<()> {
    let dst = default_for(gw);
    let spec = RouteSpec {
        dst,
        via: Some(gw),
        oif: None,
    };
    let routes = in_ns(
        host,
        |h| async move { netlink::routes(&h, gw.is_ipv6()).await },
    )?;
    if routes.iter().any(|r| r.dst == dst && r.via == Some(gw)) {
        return Ok(());
    }
    run.intend_host_route(dst.to_string(), Some(gw.to_string()))?;
    if in_ns(host, |h| async move { netlink::add_route(&h, &spec).await })? {
        run.changed(
            Step::Route,
            format!("added route {dst} via {gw} in {}", host.label()),
        )?;
    }
    Ok(())
}

/// Phase 4: sysctls of every namespace and port, and IP forwarding in the
/// host when lab traffic leaves through an uplink.
fn sysctls(t: &Topology, ports: &[Port], run: &mut Run) -> Result<()> {
    for ns in t.namespaces.iter().filter(|n| !t.on_bridge(n)) {
        set_sysctls(run, &Netns::named(&ns.name), &ns.sysctls)?;
    }
    for p in ports {
        port::sysctls(run, p)?;
    }
    if t.uplink.is_some() {
        let mut on = BTreeMap::from([("net.ipv4.ip_forward".to_string(), "1".to_string())]);
        // A dual-stack lab routes IPv6 through the host too.
        if t.bridge
            .iter()
            .flat_map(|b| &b.addresses)
            .any(|a| a.addr().is_ipv6())
        {
            on.insert("net.ipv6.conf.all.forwarding".into(), "1".into());
        }
        set_sysctls(run, &host_of(t), &on)?;
    }
    Ok(())
}

/// Phase 5: with the eBPF object loaded once (maps shared through pins),
/// the port program of the chosen datapath on every port, the port table,
/// the gateway and the isolation policy.
fn datapath(
    t: &Topology,
    ports: &[Port],
    macs: &Macs,
    run: &mut Run,
    dp: &mut Datapath,
) -> Result<()> {
    let host = host_of(t);
    let (r, d) = (&mut *run, &mut *dp);
    in_ns(&host, |h| async move {
        let (run, dp) = (r, d);
        let links = netlink::links(&h).await?;
        let by_name = by_name(&links);
        let mut configs = Vec::new();
        for p in ports {
            let l = find(&by_name, &p.host_ifname)?;
            port::attach(run, dp, t, p, l)?;
            configs.push(port::config(p, l, macs));
        }
        dp.maps.set_ports(&configs)?;
        bridge_config(dp, t, &by_name)?;
        run.point(Step::Maps, format!("port table: {} ports", configs.len()))?;
        isolation(run, dp, t, &by_name)
    })?;
    for p in ports {
        port::attach_peer(run, dp, t, p)?;
    }
    Ok(())
}

/// The programs `up` loads (the verifier is most of a load's time): with
/// NAT, or replacing every program (`--reload`), all of them; otherwise
/// the port programs of the datapath, without the NAT tail call (a
/// `forward add` on a topology without NAT is a full `up`, which loads
/// it). Also whether the NAT tail call is wanted.
fn programs_needed(t: &Topology, opts: UpOptions) -> (&'static [&'static str], bool) {
    if opts.reload || nat::inputs(t).is_some() {
        return (&[], true);
    }
    match t.datapath {
        crate::config::Datapath::Tc => (&[PROG_PORT_INGRESS], false),
        crate::config::Datapath::Xdp => (&[PROG_PORT_XDP, PROG_PEER_XDP], false),
    }
}

/// The bridge as the datapath's gateway (ifindex, MAC, first IPv4
/// address) and the FDB aging.
pub(super) fn bridge_config(
    dp: &mut Datapath,
    t: &Topology,
    links: &HashMap<&str, &LinkInfoLite>,
) -> Result<()> {
    let gateway = t.bridge.as_ref().and_then(|b| {
        let l = links.get(b.name.as_str())?;
        Some(bpf::Gateway {
            ifindex: l.index,
            mac: l.mac.unwrap_or_default(),
            ipv4: ipv4s(&b.addresses).next(),
        })
    });
    let aging = t.bridge.as_ref().map(|b| b.aging_secs);
    let aging = aging.unwrap_or(netbridge_common::DEFAULT_AGING_SECS);
    Ok(dp.maps.set_bridge(aging, gateway)?)
}

/// The isolation policy: the isolated pairs, by their ports' ifindexes.
fn isolation(
    run: &mut Run,
    dp: &mut Datapath,
    t: &Topology,
    links: &HashMap<&str, &LinkInfoLite>,
) -> Result<()> {
    let index = |ns: &str| {
        let n = t.namespace(ns)?;
        links
            .get(Topology::host_ifname(n).as_str())
            .map(|l| l.index)
    };
    let pairs: Vec<(u32, u32)> = t
        .isolate
        .iter()
        .filter_map(|[a, b]| Some((index(a)?, index(b)?)))
        .collect();
    if dp.maps.set_policy(&pairs)? {
        run.changed(
            Step::Maps,
            format!("isolation policy: {} pairs", pairs.len()),
        )
    } else {
        run.point(Step::Maps, "isolation policy")
    }
}

/// The topology's pin directory on netbridge's bpffs, journaled before it
/// is made.
pub(super) fn ensure_pins(run: &mut Run, name: &str) -> Result<PinDir> {
    if let Some(dir) = &run.st.pin_dir {
        bpf::ensure_bpffs(name)?;
        return Ok(PinDir(dir.clone()));
    }
    run.intend_pins(&PathBuf::from(bpf::BPFFS_ROOT).join(name))?;
    let dir = bpf::ensure_bpffs(name)?;
    run.changed(
        Step::Pins,
        format!("created pin directory {}", dir.display()),
    )?;
    Ok(PinDir(dir))
}

/// Links by name.
pub(super) fn by_name(links: &[LinkInfoLite]) -> HashMap<&str, &LinkInfoLite> {
    links.iter().map(|l| (l.name.as_str(), l)).collect()
}

/// Link `name` of the host, or the error saying it vanished.
pub(super) fn find<'a>(
    links: &HashMap<&str, &'a LinkInfoLite>,
    name: &str,
) -> Result<&'a LinkInfoLite> {
    links
        .get(name)
        .copied()
        .ok_or_else(|| TopologyError::Vanished {
            ns: "host".into(),
            ifname: name.into(),
        })
}

/// Creates the named namespace unless it exists (journaled first).
pub(super) fn ensure_netns(run: &mut Run, name: &str) -> Result<()> {
    if netns::exists(name) {
        return Ok(());
    }
    run.intend_netns(name)?;
    netns::create(name)?;
    run.changed(Step::Namespace, format!("created namespace {name}"))
}

pub(super) fn loopback_up(run: &mut Run, ns: &Netns) -> Result<()> {
    in_ns(ns, |h| async move {
        match netlink::link(&h, "lo").await? {
            Some(l) if !l.up => {
                netlink::set_link(&h, l.index, None, None).await?;
                run.changed(Step::Link, format!("set lo up in {}", ns.label()))
            }
            _ => Ok(()),
        }
    })
}

fn link_exists(ns: &Netns, ifname: &str) -> Result<bool> {
    in_ns(ns, |h| async move {
        netlink::link(&h, ifname).await.map(|l| l.is_some())
    })
}

/// Creates veth `ifa`@`na` <-> `ifb`@`nb` unless `ifa` exists (journaled
/// first, by its `na` end). `exists`: whether `ifa` exists, when the
/// caller knows (None: looked up).
pub(super) fn ensure_veth(
    run: &mut Run,
    na: &Netns,
    ifa: &str,
    nb: &Netns,
    ifb: &str,
    mtu: Option<u32>,
    exists: Option<bool>,
) -> Result<()> {
    let exists = match exists {
        Some(e) => e,
        None => link_exists(na, ifa)?,
    };
    if exists {
        return Ok(());
    }
    run.intend_link(na, ifa)?;
    let peer = netns::open(nb)?;
    let raw = peer.as_raw_fd();
    in_ns(na, |h| async move {
        netlink::create_veth(&h, ifa, ifb, raw, mtu).await
    })?;
    drop(peer);
    run.changed(
        Step::Link,
        format!(
            "created veth {ifa} in {} (peer {ifb} in {})",
            na.label(),
            nb.label()
        ),
    )
}

fn ensure_bridge(run: &mut Run, ns: &Netns, name: &str, mtu: Option<u32>) -> Result<()> {
    if link_exists(ns, name)? {
        return Ok(());
    }
    run.intend_link(ns, name)?;
    in_ns(ns, |h| async move {
        netlink::create_bridge(&h, name, mtu).await?;
        // A bridge whose MAC was never set takes the lowest MAC of its
        // ports and changes it when ports come and go, which strands every
        // neighbour's ARP entry for the gateway. Setting it (to the random
        // one it got) pins it.
        match netlink::link(&h, name).await? {
            Some(LinkInfoLite {
                index,
                mac: Some(mac),
                ..
            }) => netlink::set_mac(&h, index, mac).await,
            _ => Ok(()),
        }
    })?;
    run.changed(
        Step::Link,
        format!("created bridge {name} in {}", ns.label()),
    )
}

/// Makes `ifname` in `ns` up with the MTU, bridge master, addresses and
/// routes wanted (`None` / empty: left as they are). Returns its MAC.
pub(super) fn configure_endpoint(
    run: &mut Run,
    ns: &Netns,
    ifname: &str,
    mtu: Option<u32>,
    master: Option<&str>,
    addrs: &[IpNet],
    routes: &[Route],
) -> Result<Option<[u8; 6]>> {
    let label = ns.label();
    in_ns(ns, |h| async move {
        let link = configure_link(run, &h, label, ifname, mtu, master).await?;
        // No dump when nothing is wanted: a host with 1,000 ports has
        // 1,000 link-local addresses, and one dump per port is quadratic.
        let have = if addrs.is_empty() {
            Vec::new()
        } else {
            netlink::addresses(&h, link.index).await?
        };
        for a in addrs.iter().filter(|a| !have.contains(a)) {
            netlink::add_address(&h, link.index, *a, run.dad == Ipv6Dad::Nodad).await?;
            run.changed(
                Step::Address,
                format!("added address {a} to {ifname} in {label}"),
            )?;
        }
        for r in routes {
            let spec = route_spec(&h, r).await?;
            if netlink::add_route(&h, &spec).await? {
                let what = format!("added route {} in {label}", describe_route(r));
                run.changed(Step::Route, what)?;
            }
        }
        Ok::<_, TopologyError>(link.mac)
    })
}

/// Link state, MTU and master of `ifname`.
async fn configure_link(
    run: &mut Run,
    h: &Handle,
    label: &str,
    ifname: &str,
    mtu: Option<u32>,
    master: Option<&str>,
) -> Result<LinkInfoLite> {
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
    if link.up && mtu_fix.is_none() && master_fix.is_none() {
        return Ok(link);
    }
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
    run.changed(
        Step::Link,
        format!("set {ifname} {} in {label}", what.join(", ")),
    )?;
    Ok(link)
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

pub(super) fn default_for(gw: IpAddr) -> IpNet {
    match gw {
        IpAddr::V4(_) => IpNet::from_str("0.0.0.0/0").unwrap(),
        IpAddr::V6(_) => IpNet::from_str("::/0").unwrap(),
    }
}

async fn route_spec(h: &Handle, r: &Route) -> Result<RouteSpec> {
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

pub(super) fn sysctl_path(key: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(key.replace('.', "/"))
}

/// Sets sysctls inside `ns`, journaling each one's old value (before the
/// write) so `down` restores it.
pub(super) fn set_sysctls(
    run: &mut Run,
    ns: &Netns,
    sysctls: &BTreeMap<String, String>,
) -> Result<()> {
    if sysctls.is_empty() {
        return Ok(());
    }
    let label = ns.label();
    let err = |key: &str, source: io::Error| TopologyError::Sysctl {
        ns: label.into(),
        key: key.into(),
        source,
    };
    netns::run_blocking_in(ns, || {
        for (key, value) in sysctls {
            let path = sysctl_path(key);
            let old = fs::read_to_string(&path).map_err(|e| err(key, e))?;
            let old = old.trim();
            if old == value {
                continue;
            }
            run.intend_sysctl(ns, key, old)?;
            fs::write(&path, value).map_err(|e| err(key, e))?;
            run.changed(Step::Sysctl, format!("set {key}={value} in {label}"))?;
        }
        Ok(())
    })?
}
