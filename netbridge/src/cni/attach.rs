//! `netbridge-cni`: the [`Plugin`] on netbridge's engine. A CNI network is
//! one netbridge topology in the node (see [`names`]), an attachment
//! (container id, ifname) one port on its bridge, a port mapping one
//! forward to that port. Every verb but STATUS holds the topology's lock
//! (the one `netbridge up`, `down` and `forward` take) from start to end,
//! so parallel ADD/DEL/GC on one network run one at a time.
use std::{
    collections::HashSet,
    net::IpAddr,
    path::{Path, PathBuf},
};

use ipnet::IpNet;

use super::{
    conf::{Attachment, NetConf},
    env::Command,
    error::{CniError, code},
    ipam::IpamConf,
    names,
    network::{self, NodeUplink, engine_err},
    plugin::{Plugin, Request},
    result::{CniResult, Interface, IpConfig, Route},
    store::{CNI_STATE_DIR, NetworkLock, NetworkStore, Record, Records},
};
use crate::{
    config::{self, Port, PortNetns, Topology},
    netlink::{self, LinkInfoLite},
    netns::{self, Netns},
    state::State,
    topology::{self, Held, PortForward},
};

/// The plugin; `state_dir` holds each network's attachment records and
/// built-in IPAM leases.
#[derive(Debug, Clone)]
pub struct NetbridgeCni {
    pub state_dir: PathBuf,
}

impl Default for NetbridgeCni {
    fn default() -> Self {
        NetbridgeCni {
            state_dir: PathBuf::from(CNI_STATE_DIR),
        }
    }
}

/// One verb's hold on a network: the topology's lock, the CNI store's
/// lock and the network's attachment records.
struct Session<'a> {
    req: &'a Request,
    topo: String,
    held: Held,
    store: NetworkLock,
    records: Records,
}

impl<'a> Session<'a> {
    fn open(req: &'a Request, dir: &Path) -> Result<Self, CniError> {
        let topo = names::topology_name(&req.conf.name);
        let held = topology::hold(&topo)
            .map_err(engine_err(format!("locking network {}", req.conf.name)))?;
        let store = NetworkStore::new(dir, &topo).lock()?;
        let records = store.load_records(&req.conf.name)?;
        Ok(Session {
            req,
            topo,
            held,
            store,
            records,
        })
    }

    fn conf(&self) -> &NetConf {
        &self.req.conf
    }

    fn save(&self) -> Result<(), CniError> {
        self.store.save_records(&self.records)
    }

    fn state(&self) -> Result<Option<State>, CniError> {
        self.held.state().map_err(engine_err("reading the journal"))
    }

    /// Detaches `port` if the topology has it (forwards, sessions, veth).
    fn detach(&self, port: &str) -> Result<(), CniError> {
        let attached = self
            .state()?
            .is_some_and(|st| st.attachments.iter().any(|a| a.name == port));
        if attached {
            self.held
                .remove_port(port)
                .map_err(engine_err(format!("removing port {port}")))?;
        }
        Ok(())
    }

    /// IPAM ADD: the delegate's result or a built-in allocation.
    fn ipam_add(&self, att: &Attachment) -> Result<CniResult, CniError> {
        match &self.conf().ipam {
            None => Ok(CniResult::default()),
            Some(IpamConf::Builtin(b)) => {
                let mut leases = self.store.load_leases()?;
                let mut wanted = self.conf().requested_ips();
                for ip in &self.req.env.args.ips {
                    if !wanted.contains(ip) {
                        wanted.push(*ip);
                    }
                }
                let r = leases.allocate(b, att, &wanted)?;
                self.store.save_leases(&leases)?;
                Ok(r)
            }
            Some(IpamConf::Delegated { .. }) => self.delegate(att)?.add(),
        }
    }

    /// IPAM DEL of `att` (the request's attachment, or a stale one GC
    /// found): built-in leases released, or the delegate's DEL.
    fn ipam_del(&self, att: &Attachment) -> Result<(), CniError> {
        match &self.conf().ipam {
            None => Ok(()),
            Some(IpamConf::Builtin(_)) => {
                let mut leases = self.store.load_leases()?;
                if !leases.release(att).is_empty() {
                    self.store.save_leases(&leases)?;
                }
                Ok(())
            }
            Some(IpamConf::Delegated { .. }) => self.delegate(att)?.run(Command::Del),
        }
    }

    fn delegate(&self, att: &Attachment) -> Result<super::ipam::Delegate, CniError> {
        let d = self.req.ipam_delegate().expect("delegated ipam")?;
        Ok(if *att == self.req.attachment() {
            d
        } else {
            d.for_attachment(att)
        })
    }
}

impl Plugin for NetbridgeCni {
    fn add(&mut self, req: &Request) -> Result<CniResult, CniError> {
        let mut s = Session::open(req, &self.state_dir)?;
        let att = req.attachment();
        let port = names::port_name(&att);
        let st = s.state()?;
        let in_engine = st
            .as_ref()
            .is_some_and(|st| st.attachments.iter().any(|a| a.name == port));
        if s.records.get(&att).is_some() || in_engine {
            return Err(CniError::new(
                code::ALREADY_ATTACHED,
                format!(
                    "container {} interface {} is already attached to network {}; DEL it first",
                    att.container_id, att.ifname, req.conf.name
                ),
            ));
        }
        let running = st.as_ref().and_then(|s| s.topology.clone());
        let uplink = uplink_for(&req.conf, running.as_ref())?;
        let forwards = port_forwards(&s, st.as_ref(), uplink.as_ref(), &port)?;
        let mac = requested_mac(req)?;
        // The record first: a crash from here on leaves something DEL and
        // GC find.
        s.records.put(Record {
            attachment: att.clone(),
            port: port.clone(),
            netns: req.env.netns.clone(),
            ips: vec![],
            complete: false,
        });
        s.save()?;
        let ipam = match s.ipam_add(&att) {
            Ok(r) => r,
            Err(e) => {
                s.records.remove(&att);
                let _ = s.save();
                return Err(e);
            }
        };
        let plan = Plan {
            att: &att,
            port: &port,
            ipam: &ipam,
            running: running.as_ref(),
            uplink: uplink.as_ref(),
            mac,
            forwards: &forwards,
        };
        match attach(&s, &plan) {
            Ok(result) => {
                s.records.put(Record {
                    attachment: att.clone(),
                    port,
                    netns: req.env.netns.clone(),
                    ips: ipam.ips.iter().map(|i| i.address).collect(),
                    complete: true,
                });
                s.save()?;
                Ok(result)
            }
            Err(e) => {
                // Undo in reverse; the error of the ADD is what matters.
                let _ = s.detach(&port);
                let _ = s.ipam_del(&att);
                s.records.remove(&att);
                let _ = s.save();
                Err(e)
            }
        }
    }

    fn del(&mut self, req: &Request) -> Result<(), CniError> {
        let mut s = Session::open(req, &self.state_dir)?;
        let att = req.attachment();
        s.detach(&names::port_name(&att))?;
        s.ipam_del(&att)?;
        if s.records.remove(&att).is_some() {
            s.save()?;
        }
        Ok(())
    }

    fn check(&mut self, req: &Request) -> Result<(), CniError> {
        let s = Session::open(req, &self.state_dir)?;
        check(&s)
    }

    fn gc(&mut self, req: &Request) -> Result<(), CniError> {
        let mut s = Session::open(req, &self.state_dir)?;
        gc(&mut s)
    }

    fn status(&mut self, req: &Request) -> Result<(), CniError> {
        status(req, &self.state_dir)
    }
}

/// What one ADD attaches.
struct Plan<'a> {
    att: &'a Attachment,
    port: &'a str,
    ipam: &'a CniResult,
    running: Option<&'a Topology>,
    uplink: Option<&'a NodeUplink>,
    mac: Option<[u8; 6]>,
    forwards: &'a [PortForward],
}

/// The node's uplink when the network needs one: masquerade, a port
/// mapping, or a running topology that has one. Error 7 when it does and
/// the node has none.
fn uplink_for(conf: &NetConf, running: Option<&Topology>) -> Result<Option<NodeUplink>, CniError> {
    let needed = conf.bridge.ip_masq
        || !conf.runtime.port_mappings.is_empty()
        || running.is_some_and(|t| t.uplink.is_some());
    if !needed {
        return Ok(None);
    }
    network::node_uplink(conf)?.map(Some).ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "ipMasq and port mappings need the node's uplink: set \"uplink\" or give the node \
             an IPv4 default route",
        )
    })
}

/// The forwards of the request's port mappings. Refused (nothing changed):
/// a `hostIP` that is not the uplink's address (forwards listen there), an
/// external port another attachment publishes, one port mapped twice.
fn port_forwards(
    s: &Session,
    st: Option<&State>,
    uplink: Option<&NodeUplink>,
    port: &str,
) -> Result<Vec<PortForward>, CniError> {
    let mut out: Vec<PortForward> = Vec::new();
    for (i, m) in s.conf().runtime.port_mappings.iter().enumerate() {
        let at = format!("runtimeConfig.portMappings[{i}]");
        let u = uplink.expect("a mapping makes the uplink needed");
        if !network::host_ip_ok(m.host_ip, u) {
            let have: Vec<String> = u.ipv4.iter().map(|a| a.to_string()).collect();
            return Err(CniError::invalid(
                &format!("{at}.hostIP"),
                &m.host_ip.map(|a| a.to_string()).unwrap_or_default().into(),
                format!(
                    "netbridge publishes ports on the uplink {}'s IPv4 address ({}) only",
                    u.ifname,
                    have.join(", ")
                ),
            ));
        }
        let f = PortForward {
            proto: m.protocol,
            external: m.host_port,
            target: m.container_port,
        };
        let proto = crate::nat::proto_name(crate::nat::proto_num(f.proto));
        if let Some(o) = out
            .iter()
            .find(|o| (o.proto, o.external) == (f.proto, f.external))
        {
            if *o == f {
                continue;
            }
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!("{at}: {proto} host port {} mapped twice", f.external),
            ));
        }
        let holder = publisher(st, &f).filter(|o| o != port);
        if let Some(other) = holder.filter(|o| !dead_port(st, o)) {
            let who = s
                .records
                .attachments
                .iter()
                .find(|r| r.port == other)
                .map_or("?".to_string(), |r| r.attachment.container_id.clone());
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!(
                    "{at}: {proto} host port {} is already published by container {who} \
                     (netbridge port {other})",
                    f.external
                ),
            ));
        }
        out.push(f);
    }
    Ok(out)
}

/// Whether attached port `name`'s namespace is gone: its container died
/// without a DEL. Its host ports are free for others (ADD detaches it);
/// its addresses stay until DEL or GC.
fn dead_port(st: Option<&State>, name: &str) -> bool {
    st.into_iter()
        .flat_map(|st| st.attachments.iter())
        .any(|p| p.name == name && !topology::port_netns_exists(p))
}

/// The port a running forward of `f`'s protocol and external port goes to.
fn publisher(st: Option<&State>, f: &PortForward) -> Option<String> {
    let t = st?.topology.as_ref()?;
    t.forwards.iter().find_map(|fw| {
        let (first, last) = fw.port.range()?;
        (fw.proto == f.proto && (first..=last).contains(&f.external)).then(|| fw.target().0)
    })
}

/// `mac` capability, `args.cni.mac` or CNI_ARGS `MAC=`, in that order.
fn requested_mac(req: &Request) -> Result<Option<[u8; 6]>, CniError> {
    let c = &req.conf;
    let (key, text) = match (&c.runtime.mac, &c.args_mac, &req.env.args.mac) {
        (Some(m), _, _) => ("runtimeConfig.mac", m),
        (_, Some(m), _) => ("args.cni.mac", m),
        (_, _, Some(m)) => ("CNI_ARGS MAC", m),
        _ => return Ok(None),
    };
    parse_mac(text).map(Some).ok_or_else(|| {
        CniError::invalid(
            key,
            &text.clone().into(),
            "expected a MAC like 02:00:00:00:00:01",
        )
    })
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let bytes: Vec<u8> = s
        .split(':')
        .map(|b| {
            (b.len() == 2)
                .then(|| u8::from_str_radix(b, 16).ok())
                .flatten()
        })
        .collect::<Option<_>>()?;
    let mac: [u8; 6] = bytes.try_into().ok()?;
    // Unicast only: a multicast source address is never a host's.
    (mac[0] & 1 == 0).then_some(mac)
}

/// Brings the network up if needed, attaches the port and its forwards,
/// and reads back what the result reports.
fn attach(s: &Session, plan: &Plan) -> Result<CniResult, CniError> {
    let conf = s.conf();
    let gateways = network::gateways(&plan.ipam.ips);
    let want = network::wanted(
        conf,
        plan.running,
        &gateways,
        plan.uplink.map(|u| u.ifname.as_str()),
    );
    network::ensure(&s.held, &want, conf.bridge.is_gateway)?;
    // Dead containers holding a host port this one publishes let it go.
    let st = s.state()?;
    let dead: std::collections::BTreeSet<String> = plan
        .forwards
        .iter()
        .filter_map(|f| publisher(st.as_ref(), f))
        .filter(|h| dead_port(st.as_ref(), h))
        .collect();
    for holder in dead {
        s.held
            .remove_port(&holder)
            .map_err(engine_err(format!("detaching dead port {holder}")))?;
    }
    let routes = routes(conf, plan.ipam);
    let p = port(s, plan, &routes);
    s.held
        .add_port(&p)
        .map_err(engine_err(format!("attaching port {}", p.name)))?;
    s.held
        .set_port_forwards(plan.port, plan.forwards)
        .map_err(engine_err(format!("publishing ports of {}", p.name)))?;
    result(s, &want, &p, plan.ipam, routes)
}

/// The routes the container gets (and the result lists): IPAM's, plus a
/// default route via each family's gateway with `isDefaultGateway`
/// (unless IPAM gave one).
fn routes(conf: &NetConf, ipam: &CniResult) -> Vec<Route> {
    let mut routes = ipam.routes.clone();
    if conf.bridge.is_default_gateway {
        for ip in &ipam.ips {
            let Some(gw) = ip.gateway else { continue };
            let dst = match gw {
                IpAddr::V4(_) => "0.0.0.0/0".parse().expect("literal"),
                IpAddr::V6(_) => "::/0".parse().expect("literal"),
            };
            if !routes.iter().any(|r| r.dst == dst) {
                routes.push(Route::new(dst, Some(gw)));
            }
        }
    }
    routes
}

/// The engine's port for the plan.
fn port(s: &Session, plan: &Plan, routes: &[Route]) -> Port {
    let env = &s.req.env;
    let ifname = env.ifname.clone();
    let ips = &plan.ipam.ips;
    Port {
        name: plan.port.to_string(),
        netns: PortNetns::Path(env.netns.clone().expect("ADD has CNI_NETNS")),
        ifname: ifname.clone(),
        host_ifname: names::host_ifname(&s.topo, plan.att),
        addresses: ips.iter().map(|i| i.address).collect(),
        routes: routes
            .iter()
            .map(|r| config_route(r, ips, &ifname))
            .collect(),
        mtu: s.conf().bridge.mtu,
        sysctls: Default::default(),
        anti_spoof: s.conf().netbridge.anti_spoof,
        mac: plan.mac,
        ipv6_router: false,
    }
}

/// A CNI route as the engine's: a missing `gw` is the gateway of an
/// address of the family (the reference plugins' rule), none at all makes
/// it on-link; a gateway outside the container's subnets is on-link on
/// the interface.
fn config_route(r: &Route, ips: &[IpConfig], ifname: &str) -> config::Route {
    let v4 = r.dst.addr().is_ipv4();
    let gw = r.gw.or_else(|| {
        ips.iter()
            .filter(|i| i.address.addr().is_ipv4() == v4)
            .find_map(|i| i.gateway)
    });
    let in_subnet = gw.is_some_and(|g| ips.iter().any(|i| i.address.trunc().contains(&g)));
    config::Route {
        to: r.dst.trunc().to_string(),
        via: gw,
        dev: (!in_subnet).then(|| ifname.to_string()),
    }
}

fn mac_text(mac: Option<[u8; 6]>) -> Option<String> {
    mac.map(|m| {
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    })
}

/// Link `ifname` in `ns`, or the error naming it.
fn live_link(ns: &Netns, ifname: &str) -> Result<LinkInfoLite, CniError> {
    let err = |e: String| {
        CniError::new(
            code::INTERNAL,
            format!("netbridge: interface {ifname} in {}: {e}", ns.label()),
        )
    };
    let found = netns::run_in(ns, |h| async move { netlink::link(&h, ifname).await })
        .map_err(|e| err(e.to_string()))?
        .map_err(|e| err(e.to_string()))?;
    found.ok_or_else(|| err("missing".into()))
}

/// The ADD result, the reference bridge's shape: bridge, host veth,
/// container interface (with its sandbox); the IPs on the container
/// interface; routes; DNS from the configuration, else IPAM's.
fn result(
    s: &Session,
    t: &Topology,
    p: &Port,
    ipam: &CniResult,
    routes: Vec<Route>,
) -> Result<CniResult, CniError> {
    let bridge = t
        .bridge
        .as_ref()
        .map(|b| b.name.clone())
        .unwrap_or_default();
    let sandbox = s.req.env.netns.clone().expect("ADD has CNI_NETNS");
    let iface = |l: LinkInfoLite, sandbox: Option<&Path>| Interface {
        name: l.name,
        mac: mac_text(l.mac),
        mtu: Some(l.mtu),
        sandbox: sandbox.map(|p| p.display().to_string()),
        ..Interface::default()
    };
    let interfaces = vec![
        iface(live_link(&Netns::Current, &bridge)?, None),
        iface(live_link(&Netns::Current, &p.host_ifname)?, None),
        iface(
            live_link(&Netns::Path(sandbox.clone()), &p.ifname)?,
            Some(&sandbox),
        ),
    ];
    let ips = ipam
        .ips
        .iter()
        .map(|i| IpConfig {
            interface: Some(2),
            ..i.clone()
        })
        .collect();
    let dns = if s.conf().dns.is_empty() {
        ipam.dns.clone()
    } else {
        s.conf().dns.clone()
    };
    Ok(CniResult {
        interfaces,
        ips,
        routes,
        dns,
    })
}

/// CHECK: the attachment is recorded and attached, the container
/// interface is there with prevResult's MAC and addresses, the host end
/// is on the bridge with its program, and IPAM still holds the addresses.
fn check(s: &Session) -> Result<(), CniError> {
    let req = s.req;
    let att = req.attachment();
    let fail = |what: String| CniError::new(code::INTERNAL, format!("CHECK: {what}"));
    let port = names::port_name(&att);
    if !s.records.get(&att).is_some_and(|r| r.complete) {
        return Err(fail(format!(
            "container {} interface {} is not attached to network {}",
            att.container_id, att.ifname, req.conf.name
        )));
    }
    let st = s
        .state()?
        .ok_or_else(|| fail(format!("network {} is not up", s.topo)))?;
    let p = st
        .attachments
        .iter()
        .find(|a| a.name == port)
        .ok_or_else(|| fail(format!("netbridge port {port} is not attached")))?;
    let prev = req.conf.prev_result.as_ref().expect("dispatch checked");
    let idx = prev.container_interface(&att.ifname).ok_or_else(|| {
        fail(format!(
            "prevResult lists no interface {} with a sandbox",
            att.ifname
        ))
    })?;
    let sandbox = req.env.netns.clone().expect("CHECK has CNI_NETNS");
    let c = live_link(&Netns::Path(sandbox.clone()), &att.ifname)?;
    let want_mac = prev.interfaces[idx].mac.as_deref();
    if want_mac.is_some() && want_mac != mac_text(c.mac).as_deref() {
        return Err(fail(format!(
            "{} has MAC {:?}, prevResult says {want_mac:?}",
            att.ifname,
            mac_text(c.mac)
        )));
    }
    let index = c.index;
    let have = netns::run_in(&Netns::Path(sandbox), |h| async move {
        netlink::addresses(&h, index).await
    })
    .map_err(|e| fail(e.to_string()))?
    .map_err(|e| fail(e.to_string()))?;
    for ip in prev.ips.iter().filter(|i| i.interface == Some(idx)) {
        if !have.contains(&ip.address) {
            return Err(fail(format!("{} lacks {}", att.ifname, ip.address)));
        }
    }
    let probe = topology::probe(&s.topo)
        .map_err(engine_err("probing the datapath"))?
        .unwrap_or_default();
    let mine = probe
        .ports
        .iter()
        .filter(|(p, _)| *p == port)
        .map(|(_, m)| m);
    if let Some(problem) = probe.network.iter().chain(mine).next() {
        return Err(fail(problem.clone()));
    }
    let host = live_link(&Netns::Current, &p.host_ifname)?;
    let bridge = st.topology.as_ref().and_then(|t| t.bridge.as_ref());
    let master = bridge
        .map(|b| live_link(&Netns::Current, &b.name))
        .transpose()?;
    if master.is_none() || host.master != master.map(|m| m.index) {
        return Err(fail(format!("{} is not on the bridge", p.host_ifname)));
    }
    match &req.conf.ipam {
        Some(IpamConf::Builtin(_)) => {
            let leases = s.store.load_leases()?;
            let held: Vec<IpNet> = leases.of(&att).map(|l| l.address).collect();
            if let Some(ip) = prev.ips.iter().find(|i| !held.contains(&i.address)) {
                return Err(fail(format!("no lease holds {}", ip.address)));
            }
            Ok(())
        }
        Some(IpamConf::Delegated { .. }) => s.delegate(&att)?.run(Command::Check),
        None => Ok(()),
    }
}

/// GC: every port, forward (and so its sessions), record and address of
/// an attachment `cni.dev/valid-attachments` does not list goes; every
/// one is tried, the failures reported together.
fn gc(s: &mut Session) -> Result<(), CniError> {
    let valid = s.conf().valid_attachments.clone().unwrap_or_default();
    let keep: HashSet<String> = valid.iter().map(names::port_name).collect();
    let mut errors = Vec::new();
    if let Some(st) = s.state()? {
        for a in st.attachments.iter().filter(|a| !keep.contains(&a.name)) {
            if let Err(e) = s.detach(&a.name) {
                errors.push(e.to_string());
            }
        }
    }
    let stale: Vec<Record> = s
        .records
        .attachments
        .iter()
        .filter(|r| !valid.contains(&r.attachment))
        .cloned()
        .collect();
    for r in &stale {
        match s.ipam_del(&r.attachment) {
            Ok(()) => {
                s.records.remove(&r.attachment);
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    if let Some(IpamConf::Builtin(_)) = &s.conf().ipam {
        let mut leases = s.store.load_leases()?;
        if !leases.gc(&valid).is_empty() {
            s.store.save_leases(&leases)?;
        }
    }
    s.save()?;
    if let Some(d) = s.req.ipam_delegate()
        && let Err(e) = d.and_then(|d| d.run_if_supported(Command::Gc))
    {
        errors.push(e.to_string());
    }
    match errors.len() {
        0 => Ok(()),
        n => Err(CniError::new(
            code::INTERNAL,
            format!("GC: {n} attachment(s) or IPAM could not be cleaned"),
        )
        .with_details(errors.join("; "))),
    }
}

/// STATUS: ready unless IPAM cannot serve an ADD (its plugin missing or
/// not ready, the built-in ranges full), the uplink masquerade needs is
/// missing, or the running network's datapath is not all attached: code
/// 51 when attachments exist (they may have lost connectivity), else 50.
fn status(req: &Request, dir: &Path) -> Result<(), CniError> {
    let conf = &req.conf;
    let down = |msg: String| CniError::new(code::PLUGIN_NOT_AVAILABLE, msg);
    match &conf.ipam {
        Some(IpamConf::Delegated { plugin }) => {
            let d = req
                .ipam_delegate()
                .expect("delegated")
                .map_err(|e| down(format!("ipam plugin {plugin}: {}", e.msg)))?;
            d.run_if_supported(Command::Status).map_err(|e| {
                if e.code == code::LIMITED_CONNECTIVITY {
                    e
                } else {
                    down(format!("ipam plugin {plugin}: {}", e.msg))
                }
            })?;
        }
        Some(IpamConf::Builtin(b)) => {
            let topo = names::topology_name(&conf.name);
            let leases = NetworkStore::new(dir, &topo).read_leases()?;
            if let Some(i) = leases.free(b, 1).iter().position(|n| *n == 0) {
                return Err(down(format!("no free address in ipam range set {i}")));
            }
        }
        None => {}
    }
    if conf.bridge.ip_masq {
        match network::node_uplink(conf) {
            Ok(Some(u)) if !u.ipv4.is_empty() => {}
            Ok(Some(u)) => return Err(down(format!("uplink {} has no IPv4 address", u.ifname))),
            Ok(None) => {
                return Err(down(
                    "no uplink for ipMasq: no \"uplink\" and no default route".into(),
                ));
            }
            Err(e) => return Err(down(e.msg)),
        }
    }
    let topo = names::topology_name(&conf.name);
    let Some(p) = topology::probe(&topo).map_err(engine_err("probing the datapath"))? else {
        return Ok(());
    };
    if p.is_ok() {
        return Ok(());
    }
    let code = if p.attachments > 0 {
        code::LIMITED_CONNECTIVITY
    } else {
        code::PLUGIN_NOT_AVAILABLE
    };
    Err(CniError::new(
        code,
        format!(
            "netbridge datapath of network {} is not attached",
            conf.name
        ),
    )
    .with_details(p.problems().join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_unicast_only() {
        assert_eq!(
            parse_mac("02:00:00:aa:bb:0c"),
            Some([2, 0, 0, 0xaa, 0xbb, 0x0c])
        );
        for bad in [
            "03:00:00:00:00:01",
            "02:00:00:00:00",
            "02-00-00-00-00-01",
            "zz:00:00:00:00:01",
            "2:0:0:0:0:1",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }

    #[test]
    fn routes_take_the_family_gateway_or_go_on_link() {
        let ips = vec![IpConfig {
            interface: None,
            address: "192.168.5.7/24".parse().unwrap(),
            gateway: Some("192.168.5.1".parse().unwrap()),
        }];
        let r = config_route(
            &Route::new("0.0.0.0/0".parse().unwrap(), None),
            &ips,
            "eth0",
        );
        assert_eq!(
            (r.to.as_str(), r.via, r.dev),
            ("0.0.0.0/0", Some("192.168.5.1".parse().unwrap()), None)
        );
        let far = config_route(
            &Route::new(
                "10.0.0.0/8".parse().unwrap(),
                Some("10.9.9.9".parse().unwrap()),
            ),
            &ips,
            "eth0",
        );
        assert_eq!(
            far.dev.as_deref(),
            Some("eth0"),
            "gateway outside the subnet: on-link"
        );
        let v6 = config_route(&Route::new("fd00::/8".parse().unwrap(), None), &ips, "eth0");
        assert_eq!(
            (v6.via, v6.dev.as_deref()),
            (None, Some("eth0")),
            "no v6 gateway: on-link"
        );
    }
}
