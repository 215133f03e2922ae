//! The graph itself (what `--format json` prints, schema
//! `schemas/graph.schema.json`): nodes (the host namespace, the bridge,
//! lab namespaces, attached ports, the network behind an uplink) and
//! edges (ports, links, the uplink, forwards), with live figures.
use std::collections::BTreeMap;

use netbridge::{
    config::{Datapath, Endpoint, Port, PortNetns, Route, Topology},
    stats::{PortRow, Snapshot},
};
use serde::Serialize;

/// Live counters of a running topology: the latest snapshot and, for
/// rates, the one before it.
pub struct Sample {
    pub now: Snapshot,
    pub prev: Option<Snapshot>,
}

impl Sample {
    fn secs(&self) -> Option<f64> {
        let prev = self.prev.as_ref()?;
        Some(self.now.at.duration_since(prev.at).as_secs_f64()).filter(|s| *s > 0.0)
    }
}

#[derive(Debug, Serialize)]
pub struct Graph {
    pub topology: String,
    pub datapath: &'static str,
    /// A journal exists: the topology is up (or half up).
    pub running: bool,
    /// Seconds the rates were measured over (None: no rates).
    pub sample_secs: Option<f64>,
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
    /// Drops of the whole datapath by reason (running topologies only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drops: Option<BTreeMap<&'static str, u64>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    /// The namespace the bridge and uplink live in.
    Host,
    Bridge,
    Namespace,
    /// A port attached to the running topology (CNI, `add_port`).
    Port,
    /// The network behind an uplink interface the file does not create.
    External,
}

#[derive(Debug, Serialize)]
pub struct Node {
    pub id: String,
    pub kind: NodeKind,
    pub name: String,
    /// The namespace it stands for: a name under /run/netns, a path, or
    /// None for the namespace netbridge runs in (and the external node).
    pub netns: Option<String>,
    /// The node drawn inside this one (the bridge is inside the host).
    pub parent: Option<String>,
    pub interfaces: Vec<Iface>,
    /// Routes, as "to via GW dev IF".
    pub routes: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Iface {
    pub name: String,
    pub addresses: Vec<String>,
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EdgeKind {
    /// A veth between the bridge and a namespace.
    Port,
    /// A direct veth pair.
    Link,
    /// The uplink: the host's way out (a link or an existing interface).
    Uplink,
    /// A DNAT port forward from the uplink address to a namespace.
    Forward,
}

#[derive(Debug, Serialize)]
pub struct Edge {
    pub id: String,
    pub kind: EdgeKind,
    pub from: String,
    pub to: String,
    /// Interface at the `from` end, at the `to` end.
    pub from_ifname: Option<String>,
    pub to_ifname: Option<String>,
    /// One line saying what it is (veth names, forward rule, NAT mode).
    pub label: String,
    pub live: Option<Live>,
}

/// Live figures of an edge; which one depends on the edge's kind.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Live {
    Port(PortLive),
    Uplink(UplinkLive),
    Forward(ForwardLive),
}

/// A port's counters: rx is what came out of the namespace onto the port,
/// tx what the BPF fast path delivered into it (the kernel bridge's own
/// deliveries are not counted by the datapath).
#[derive(Debug, Serialize)]
pub struct PortLive {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub redirected: u64,
    pub fallback: u64,
    pub dropped: u64,
    pub rates: Option<PortRates>,
}

#[derive(Debug, Serialize)]
pub struct PortRates {
    pub rx_pps: f64,
    pub rx_bps: f64,
    pub tx_pps: f64,
    pub tx_bps: f64,
    pub dropped_pps: f64,
}

/// The uplink's NAT figures: packets translated each way, live sessions,
/// NAT drops (every `nat_*` drop reason).
#[derive(Debug, Serialize)]
pub struct UplinkLive {
    pub translated_out: u64,
    pub translated_in: u64,
    pub live_sessions: u64,
    pub nat_drops: u64,
    pub rates: Option<UplinkRates>,
}

#[derive(Debug, Serialize)]
pub struct UplinkRates {
    pub out_pps: f64,
    pub in_pps: f64,
    pub nat_drops_pps: f64,
}

/// New DNAT sessions a forward opened, and their rate.
#[derive(Debug, Serialize)]
pub struct ForwardLive {
    pub sessions: u64,
    pub sessions_per_sec: Option<f64>,
}

pub const HOST: &str = "host";
pub const BRIDGE: &str = "bridge";
pub const EXTERNAL: &str = "external";

fn ns_id(name: &str) -> String {
    format!("ns:{name}")
}

fn strings<T: ToString>(v: &[T]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn route_text(r: &Route) -> String {
    let mut s = r.to.clone();
    if let Some(v) = r.via {
        s += &format!(" via {v}");
    }
    if let Some(d) = &r.dev {
        s += &format!(" dev {d}");
    }
    s
}

/// The graph of `t` with ports `attached`; `live` annotates it.
pub fn build(t: &Topology, attached: &[Port], running: bool, live: Option<&Sample>) -> Graph {
    let mut g = Graph {
        topology: t.name.clone(),
        datapath: match t.datapath {
            Datapath::Tc => "tc",
            Datapath::Xdp => "xdp",
        },
        running,
        sample_secs: live.and_then(Sample::secs),
        nodes: Vec::new(),
        edges: Vec::new(),
        drops: live.map(|l| l.now.drops.clone()),
    };
    g.nodes.push(host_node(t));
    if let Some(b) = &t.bridge {
        g.nodes.push(Node {
            id: BRIDGE.into(),
            kind: NodeKind::Bridge,
            name: b.name.clone(),
            netns: t.host_netns.clone(),
            parent: Some(HOST.into()),
            interfaces: vec![Iface {
                name: b.name.clone(),
                addresses: strings(&b.addresses),
                mtu: b.mtu.or(t.mtu),
            }],
            routes: vec![],
        });
    }
    for ns in &t.namespaces {
        g.nodes.push(namespace_node(t, &ns.name));
    }
    for p in attached {
        g.nodes.push(port_node(p));
    }
    let ports = t.ports(attached);
    for (i, p) in ports.iter().enumerate() {
        let attached_port = i >= ports.len() - attached.len();
        g.edges.push(port_edge(p, attached_port, live));
    }
    link_edges(t, &mut g, live);
    forward_edges(t, &mut g, live);
    // A host with no bridge, no uplink and no link end plays no part.
    if t.bridge.is_none()
        && g.nodes[0].interfaces.is_empty()
        && !g.edges.iter().any(|e| e.from == HOST || e.to == HOST)
    {
        g.nodes.remove(0);
    }
    g
}

fn host_node(t: &Topology) -> Node {
    let mut interfaces: Vec<Iface> = host_ends(t)
        .map(|(e, mtu)| Iface {
            name: e.ifname.clone(),
            addresses: strings(&e.addresses),
            mtu,
        })
        .collect();
    if let Some(u) = &t.uplink
        && !interfaces.iter().any(|i| i.name == u.ifname)
    {
        interfaces.push(Iface {
            name: u.ifname.clone(),
            addresses: vec![],
            mtu: None,
        });
    }
    let routes = t
        .uplink
        .as_ref()
        .and_then(|u| u.gateway)
        .map(|gw| format!("default via {gw}"))
        .into_iter()
        .chain(host_ends(t).flat_map(|(e, _)| e.routes.iter().map(route_text)))
        .collect();
    Node {
        id: HOST.into(),
        kind: NodeKind::Host,
        name: t.host_netns.clone().unwrap_or_else(|| "host".into()),
        netns: t.host_netns.clone(),
        parent: None,
        interfaces,
        routes,
    }
}

/// Link endpoints in the host namespace, with their link's MTU.
fn host_ends(t: &Topology) -> impl Iterator<Item = (&Endpoint, Option<u32>)> {
    t.links.iter().flat_map(move |l| {
        [&l.a, &l.b]
            .into_iter()
            .filter(|e| is_host(t, e))
            .map(move |e| (e, l.mtu.or(t.mtu)))
    })
}

fn is_host(t: &Topology, e: &Endpoint) -> bool {
    e.netns.is_none() || e.netns == t.host_netns
}

/// The node id of a link endpoint.
fn end_id(t: &Topology, e: &Endpoint) -> String {
    match &e.netns {
        Some(n) if !is_host(t, e) => ns_id(n),
        _ => HOST.into(),
    }
}

fn namespace_node(t: &Topology, name: &str) -> Node {
    let ns = t.namespace(name).expect("namespace of the topology");
    let mut interfaces = Vec::new();
    let mut routes: Vec<String> = Vec::new();
    if t.on_bridge(ns) {
        interfaces.push(Iface {
            name: ns.ifname.clone(),
            addresses: strings(&ns.addresses),
            mtu: t.mtu_for_namespace(ns),
        });
        routes.extend(ns.routes.iter().map(route_text));
    }
    for l in &t.links {
        for e in [&l.a, &l.b] {
            if e.netns.as_deref() == Some(name) {
                interfaces.push(Iface {
                    name: e.ifname.clone(),
                    addresses: strings(&e.addresses),
                    mtu: l.mtu.or(t.mtu),
                });
                routes.extend(e.routes.iter().map(route_text));
            }
        }
    }
    Node {
        id: ns_id(name),
        kind: NodeKind::Namespace,
        name: name.into(),
        netns: Some(name.into()),
        parent: None,
        interfaces,
        routes,
    }
}

fn port_node(p: &Port) -> Node {
    Node {
        id: format!("port:{}", p.name),
        kind: NodeKind::Port,
        name: p.name.clone(),
        netns: Some(match &p.netns {
            PortNetns::Named(n) => n.clone(),
            PortNetns::Path(path) => path.display().to_string(),
        }),
        parent: None,
        interfaces: vec![Iface {
            name: p.ifname.clone(),
            addresses: strings(&p.addresses),
            mtu: p.mtu,
        }],
        routes: p.routes.iter().map(route_text).collect(),
    }
}

fn port_edge(p: &Port, attached: bool, live: Option<&Sample>) -> Edge {
    let to = if attached {
        format!("port:{}", p.name)
    } else {
        ns_id(&p.name)
    };
    Edge {
        id: format!("port:{}", p.host_ifname),
        kind: EdgeKind::Port,
        from: BRIDGE.into(),
        to,
        from_ifname: Some(p.host_ifname.clone()),
        to_ifname: Some(p.ifname.clone()),
        label: format!("{} - {}", p.host_ifname, p.ifname),
        live: live
            .and_then(|l| port_live(l, &p.host_ifname))
            .map(Live::Port),
    }
}

fn port_row<'a>(s: &'a Snapshot, ifname: &str) -> Option<&'a PortRow> {
    s.ports.iter().find(|r| r.port == ifname)
}

/// Per-second difference of a counter between two snapshots.
fn per_sec(now: u64, before: u64, secs: f64) -> f64 {
    now.saturating_sub(before) as f64 / secs
}

fn port_live(l: &Sample, ifname: &str) -> Option<PortLive> {
    let s = &port_row(&l.now, ifname)?.stats;
    let rates = l.secs().and_then(|secs| {
        let p = &port_row(l.prev.as_ref()?, ifname)?.stats;
        Some(PortRates {
            rx_pps: per_sec(s.rx_packets, p.rx_packets, secs),
            rx_bps: per_sec(s.rx_bytes, p.rx_bytes, secs) * 8.0,
            tx_pps: per_sec(s.tx_packets, p.tx_packets, secs),
            tx_bps: per_sec(s.tx_bytes, p.tx_bytes, secs) * 8.0,
            dropped_pps: per_sec(s.rx_dropped, p.rx_dropped, secs),
        })
    });
    Some(PortLive {
        rx_packets: s.rx_packets,
        rx_bytes: s.rx_bytes,
        tx_packets: s.tx_packets,
        tx_bytes: s.tx_bytes,
        redirected: s.rx_redirected,
        fallback: s.rx_fallback,
        dropped: s.rx_dropped,
        rates,
    })
}

/// Links (the uplink's marked as such), and the uplink to the network
/// behind it when it is an interface the file does not create.
fn link_edges(t: &Topology, g: &mut Graph, live: Option<&Sample>) {
    let uplink = t.uplink.as_ref();
    for (i, l) in t.links.iter().enumerate() {
        let (mut a, mut b) = (&l.a, &l.b);
        let is_uplink =
            uplink.is_some_and(|u| [a, b].iter().any(|e| is_host(t, e) && e.ifname == u.ifname));
        // The uplink edge starts at the host.
        if is_uplink && !is_host(t, a) {
            std::mem::swap(&mut a, &mut b);
        }
        let mut label = format!("{} - {}", a.ifname, b.ifname);
        let kind = if is_uplink {
            label = uplink_label(t, &label);
            EdgeKind::Uplink
        } else {
            EdgeKind::Link
        };
        g.edges.push(Edge {
            id: format!("link:{i}"),
            kind,
            from: end_id(t, a),
            to: end_id(t, b),
            from_ifname: Some(a.ifname.clone()),
            to_ifname: Some(b.ifname.clone()),
            label,
            live: is_uplink
                .then(|| live.and_then(uplink_live).map(Live::Uplink))
                .flatten(),
        });
    }
    if let Some(u) = uplink
        && t.uplink_ends().is_none()
    {
        g.nodes.push(Node {
            id: EXTERNAL.into(),
            kind: NodeKind::External,
            name: format!("network on {}", u.ifname),
            netns: None,
            parent: None,
            interfaces: vec![],
            routes: vec![],
        });
        g.edges.push(Edge {
            id: "uplink".into(),
            kind: EdgeKind::Uplink,
            from: HOST.into(),
            to: EXTERNAL.into(),
            from_ifname: Some(u.ifname.clone()),
            to_ifname: None,
            label: uplink_label(t, &u.ifname),
            live: live.and_then(uplink_live).map(Live::Uplink),
        });
    }
}

fn uplink_label(t: &Topology, base: &str) -> String {
    let u = t.uplink.as_ref().expect("uplink");
    let mut s = format!("{base}: uplink");
    if u.masquerade {
        s += ", masquerade";
    }
    s
}

fn uplink_live(l: &Sample) -> Option<UplinkLive> {
    let figures = |s: &Snapshot| {
        let n = s.nat.as_ref()?;
        let c = |k: &str| n.counters.get(k).copied().unwrap_or(0);
        let drops = s
            .drops
            .iter()
            .filter(|(k, _)| k.starts_with("nat_"))
            .map(|(_, v)| v)
            .sum::<u64>();
        Some((
            c("translated_out"),
            c("translated_in"),
            n.live_sessions,
            drops,
        ))
    };
    let (out, inb, sessions, drops) = figures(&l.now)?;
    let rates = l.secs().and_then(|secs| {
        let (o, i, _, d) = figures(l.prev.as_ref()?)?;
        Some(UplinkRates {
            out_pps: per_sec(out, o, secs),
            in_pps: per_sec(inb, i, secs),
            nat_drops_pps: per_sec(drops, d, secs),
        })
    });
    Some(UplinkLive {
        translated_out: out,
        translated_in: inb,
        live_sessions: sessions,
        nat_drops: drops,
        rates,
    })
}

/// Forwards: from where the uplink leads to the target namespace.
fn forward_edges(t: &Topology, g: &mut Graph, live: Option<&Sample>) {
    let Some(origin) = g
        .edges
        .iter()
        .find(|e| e.kind == EdgeKind::Uplink)
        .map(|e| e.to.clone())
    else {
        return;
    };
    for f in &t.forwards {
        let (ns, port) = f.target();
        let proto = match f.proto {
            netbridge::config::Proto::Tcp => "tcp",
            netbridge::config::Proto::Udp => "udp",
        };
        let first = f.port.range().map_or(0, |r| r.0);
        let sessions = |s: &Snapshot| {
            s.nat
                .as_ref()?
                .forwards
                .iter()
                .find(|u| u.proto == proto && u.port.split('-').next() == Some(&first.to_string()))
                .map(|u| u.hits)
        };
        let live = live.and_then(|l| {
            let now = sessions(&l.now)?;
            let rate = l
                .secs()
                .and_then(|secs| Some(per_sec(now, sessions(l.prev.as_ref()?)?, secs)));
            Some(Live::Forward(ForwardLive {
                sessions: now,
                sessions_per_sec: rate,
            }))
        });
        g.edges.push(Edge {
            id: format!("forward:{proto}:{}", f.port),
            kind: EdgeKind::Forward,
            from: origin.clone(),
            to: ns_id(&ns),
            from_ifname: None,
            to_ifname: None,
            label: format!("{proto} {} -> {ns}:{port}", f.port),
            live,
        });
    }
}

/// "1.2 k" style figure with a unit.
pub fn human(v: f64, unit: &str) -> String {
    let (v, p) = match v {
        v if v >= 1e9 => (v / 1e9, "G"),
        v if v >= 1e6 => (v / 1e6, "M"),
        v if v >= 1e3 => (v / 1e3, "k"),
        v => (v, ""),
    };
    let digits = if p.is_empty() && v.fract() == 0.0 {
        0
    } else {
        1
    };
    let sep = if unit.starts_with('/') { "" } else { " " };
    format!("{v:.digits$}{sep}{p}{unit}")
}

fn sessions(n: u64) -> String {
    format!("{n} session{}", if n == 1 { "" } else { "s" })
}

impl Node {
    /// The title and text lines of the node as drawn.
    pub fn lines(&self) -> (String, Vec<String>) {
        let title = match self.kind {
            NodeKind::Host => match &self.netns {
                Some(n) => format!("host namespace {n}"),
                None => "host (netbridge's namespace)".into(),
            },
            NodeKind::Bridge => format!("bridge {}", self.name),
            NodeKind::Port => format!("port {}", self.name),
            _ => self.name.clone(),
        };
        let mut lines = Vec::new();
        if self.kind == NodeKind::Port
            && let Some(n) = &self.netns
        {
            lines.push(format!("netns {n}"));
        }
        for i in &self.interfaces {
            if self.kind == NodeKind::Bridge && i.addresses.is_empty() && i.mtu.is_none() {
                continue;
            }
            let mut s = if self.kind == NodeKind::Bridge {
                String::new()
            } else {
                format!("{} ", i.name)
            };
            s += &i.addresses.join(" ");
            if let Some(m) = i.mtu {
                s += &format!(" mtu {m}");
            }
            lines.push(s.trim().to_string());
        }
        lines.extend(self.routes.iter().map(|r| format!("route {r}")));
        (title, lines)
    }
}

impl Edge {
    /// The label lines of the edge: what it is, then its live figures.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![self.label.clone()];
        match &self.live {
            Some(Live::Port(p)) => match &p.rates {
                Some(r) => {
                    out.push(format!(
                        "from ns {} {}",
                        human(r.rx_pps, "pps"),
                        human(r.rx_bps, "bit/s")
                    ));
                    out.push(format!(
                        "to ns {} {} (fast path)",
                        human(r.tx_pps, "pps"),
                        human(r.tx_bps, "bit/s")
                    ));
                    out.push(format!(
                        "drops {} ({})",
                        p.dropped,
                        human(r.dropped_pps, "/s")
                    ));
                }
                None => {
                    out.push(format!("from ns {} pkts", p.rx_packets));
                    out.push(format!("to ns {} pkts (fast path)", p.tx_packets));
                    out.push(format!("drops {}", p.dropped));
                }
            },
            Some(Live::Uplink(u)) => {
                if let Some(r) = &u.rates {
                    out.push(format!(
                        "snat out {} dnat in {}",
                        human(r.out_pps, "pps"),
                        human(r.in_pps, "pps")
                    ));
                }
                out.push(format!(
                    "{}, nat drops {}",
                    sessions(u.live_sessions),
                    u.nat_drops
                ));
            }
            Some(Live::Forward(f)) => out.push(match f.sessions_per_sec {
                Some(r) => format!("{} ({})", sessions(f.sessions), human(r, "/s")),
                None => sessions(f.sessions),
            }),
            None => {}
        }
        out
    }

    /// Whether the live figures show drops (drawn in red).
    pub fn has_drops(&self) -> bool {
        match &self.live {
            Some(Live::Port(p)) => p.dropped > 0,
            Some(Live::Uplink(u)) => u.nat_drops > 0,
            _ => false,
        }
    }
}
