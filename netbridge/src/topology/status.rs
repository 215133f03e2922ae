//! `status`: a live view of every namespace of a topology (its attached
//! ports' included).
use std::collections::HashMap;

use ipnet::IpNet;
use serde::Serialize;

use aya::programs::TcAttachType;
use netbridge_common::{PROG_UPLINK_EGRESS, PROG_UPLINK_INGRESS};

use super::{Result, host_of, in_ns, nat, port};
use crate::{
    bpf,
    config::{Datapath, Topology},
    netlink::{self, LinkInfoLite, NetlinkError},
    netns::Netns,
    state::State,
};

/// One interface as `status` shows it.
#[derive(Debug, Serialize)]
pub struct LinkStatus {
    pub name: String,
    pub kind: Option<String>,
    pub up: bool,
    pub mtu: u32,
    pub master: Option<String>,
    pub addresses: Vec<String>,
    /// TC programs attached, TCX links and cls_bpf filters (egress ones
    /// marked "(egress)").
    pub programs: Vec<String>,
    /// Their kernel program ids (change when `up --reload` replaces them).
    pub program_ids: Vec<u32>,
    /// Id of the XDP program attached, if any.
    pub xdp_program_id: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct NsStatus {
    pub name: String,
    pub exists: bool,
    pub links: Vec<LinkStatus>,
}

/// Live view of every namespace of the topology: the host, each
/// `[[namespace]]`, then each attached port's.
pub fn status(t: &Topology) -> Result<Vec<NsStatus>> {
    let mut all = vec![host_of(t)];
    all.extend(t.namespaces.iter().map(|n| Netns::named(&n.name)));
    if let Some(st) = State::load(&t.name)? {
        all.extend(st.attachments.iter().map(port::netns_of));
    }
    let one = |ns: &Netns| -> Result<NsStatus> {
        let name = ns.label().to_string();
        if !ns.exists() {
            return Ok(NsStatus {
                name,
                exists: false,
                links: vec![],
            });
        }
        let links = in_ns(ns, |h| async move {
            let links = netlink::links(&h).await?;
            let addrs = netlink::all_addresses(&h).await?;
            let mut by_link: HashMap<u32, Vec<String>> = HashMap::new();
            for (index, a) in addrs.iter().filter(|(_, a)| !is_link_local(a)) {
                by_link.entry(*index).or_default().push(a.to_string());
            }
            let names: HashMap<u32, &str> =
                links.iter().map(|l| (l.index, l.name.as_str())).collect();
            let v = links
                .iter()
                .filter(|l| l.name != "lo")
                .map(|l| link_status(l, &names, by_link.remove(&l.index).unwrap_or_default()))
                .collect();
            Ok::<_, NetlinkError>(v)
        })?;
        Ok(NsStatus {
            name,
            exists: true,
            links,
        })
    };
    // Each namespace on its own thread (see `netns::run_in`): a few at a
    // time, in order.
    let mut out = Vec::with_capacity(all.len());
    for chunk in all.chunks(8) {
        let done: Vec<Result<NsStatus>> = std::thread::scope(|s| {
            let threads: Vec<_> = chunk.iter().map(|ns| s.spawn(|| one(ns))).collect();
            threads
                .into_iter()
                .map(|t| t.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        });
        for r in done {
            out.push(r?);
        }
    }
    Ok(out)
}

/// One link; runs on the namespace's thread (programs are queried there).
fn link_status(l: &LinkInfoLite, names: &HashMap<u32, &str>, addresses: Vec<String>) -> LinkStatus {
    let egress = bpf::attached_tc(&l.name, aya::programs::TcAttachType::Egress);
    LinkStatus {
        name: l.name.clone(),
        kind: l.kind.clone(),
        up: l.up,
        mtu: l.mtu,
        master: l.master.and_then(|m| names.get(&m).map(|n| n.to_string())),
        addresses,
        programs: bpf::attached_ingress(&l.name)
            .into_iter()
            .chain(egress.into_iter().map(|p| format!("{p}(egress)")))
            .collect(),
        program_ids: bpf::attached_tc_ids(&l.name),
        xdp_program_id: l.xdp_prog,
    }
}

fn is_link_local(a: &IpNet) -> bool {
    match a {
        IpNet::V6(v6) => (v6.addr().segments()[0] & 0xffc0) == 0xfe80,
        IpNet::V4(v4) => v4.addr().is_link_local(),
    }
}

/// Whether a running topology's datapath is in place in the kernel: what
/// the CNI plugin's STATUS reports.
#[derive(Debug, Default, Serialize)]
pub struct Probe {
    /// Ports attached beyond the file's namespaces.
    pub attachments: usize,
    /// What the network as a whole misses: the bridge, the uplink's NAT
    /// programs.
    pub network: Vec<String>,
    /// What single ports miss: (port name, problem).
    pub ports: Vec<(String, String)>,
}

impl Probe {
    /// The bridge, every port's program and the uplink's are attached.
    pub fn is_ok(&self) -> bool {
        self.network.is_empty() && self.ports.is_empty()
    }

    /// Every problem, one line each.
    pub fn problems(&self) -> Vec<String> {
        let ports = self.ports.iter().map(|(p, m)| format!("port {p}: {m}"));
        self.network.iter().cloned().chain(ports).collect()
    }
}

/// Probes topology `name` (None: it is not up): the bridge exists, each
/// port's host end exists with the datapath's port program attached (TC
/// or XDP), and with NAT the uplink has both NAT programs. Reads the
/// journal without the lock (it is replaced atomically).
pub fn probe(name: &str) -> Result<Option<Probe>> {
    let Some(st) = State::load(name)? else {
        return Ok(None);
    };
    let Some(t) = st.topology.clone() else {
        return Ok(None);
    };
    let ports = t.ports(&st.attachments);
    let uplink = nat::inputs(&t).map(|_| t.uplink.as_ref().map(|u| u.ifname.clone()));
    let bridge = t.bridge.as_ref().map(|b| b.name.clone());
    let pins = st.pin_dir.clone().map(bpf::PinDir);
    let mut probe = in_ns(&host_of(&t), |h| async move {
        let links = netlink::links(&h).await?;
        let find = |n: &str| links.iter().find(|l| l.name == n);
        let mut probe = Probe::default();
        if let Some(b) = &bridge
            && !find(b).is_some_and(|l| l.up)
        {
            probe.network.push(format!("bridge {b} is missing or down"));
        }
        for p in &ports {
            let name = &p.host_ifname;
            let attached = match (find(name), &t.datapath) {
                (None, _) => {
                    probe
                        .ports
                        .push((p.name.clone(), format!("{name} is missing")));
                    continue;
                }
                (Some(l), Datapath::Xdp) => l.xdp_prog.is_some(),
                (Some(_), Datapath::Tc) => bpf::port_tc_attached(pins.as_ref(), name),
            };
            if !attached {
                let why = format!("no datapath program on {name}");
                probe.ports.push((p.name.clone(), why));
            }
        }
        if let Some(Some(u)) = &uplink {
            for (kind, prog) in [
                (TcAttachType::Ingress, PROG_UPLINK_INGRESS),
                (TcAttachType::Egress, PROG_UPLINK_EGRESS),
            ] {
                if !has(u, kind, prog) {
                    probe
                        .network
                        .push(format!("uplink {u}: {prog} is not attached"));
                }
            }
        }
        Ok::<_, NetlinkError>(probe)
    })?;
    probe.attachments = st.attachments.len();
    Ok(Some(probe))
}

/// Whether program `prog` (the kernel keeps 15 bytes of a name) is
/// attached to `ifname` at `kind` (TCX or a filter), in the calling
/// thread's namespace.
fn has(ifname: &str, kind: TcAttachType, prog: &str) -> bool {
    let short = &prog[..prog.len().min(15)];
    bpf::attached_tc(ifname, kind).iter().any(|n| n == short)
}
