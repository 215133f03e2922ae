//! `status`: a live view of every namespace of a topology (its attached
//! ports' included).
use ipnet::IpNet;
use serde::Serialize;

use aya::programs::TcAttachType;
use netbridge_common::{PROG_PORT_INGRESS, PROG_UPLINK_EGRESS, PROG_UPLINK_INGRESS};

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
    /// TCX programs attached (egress ones marked "(egress)").
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
    let mut out = Vec::new();
    for ns in all {
        let name = ns.label().to_string();
        if !ns.exists() {
            out.push(NsStatus {
                name,
                exists: false,
                links: vec![],
            });
            continue;
        }
        let links = in_ns(&ns, |h| async move {
            let links = netlink::links(&h).await?;
            let mut v = Vec::new();
            for l in links.iter().filter(|l| l.name != "lo") {
                v.push(link_status(&h, l, &links).await?);
            }
            Ok::<_, NetlinkError>(v)
        })?;
        out.push(NsStatus {
            name,
            exists: true,
            links,
        });
    }
    Ok(out)
}

/// One link; runs on the namespace's thread (programs are queried there).
async fn link_status(
    h: &rtnetlink::Handle,
    l: &LinkInfoLite,
    links: &[LinkInfoLite],
) -> Result<LinkStatus, NetlinkError> {
    let addresses = netlink::addresses(h, l.index)
        .await?
        .iter()
        .filter(|a| !is_link_local(a))
        .map(|a| a.to_string())
        .collect();
    let egress = bpf::attached_tc(&l.name, aya::programs::TcAttachType::Egress);
    Ok(LinkStatus {
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
            .chain(egress.into_iter().map(|p| format!("{p}(egress)")))
            .collect(),
        program_ids: bpf::attached_tc_ids(&l.name),
        xdp_program_id: l.xdp_prog,
    })
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
                (Some(_), Datapath::Tc) => has(name, TcAttachType::Ingress, PROG_PORT_INGRESS),
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
/// attached to `ifname` at `kind` (TCX), in the calling thread's namespace.
fn has(ifname: &str, kind: TcAttachType, prog: &str) -> bool {
    let short = &prog[..prog.len().min(15)];
    bpf::attached_tc(ifname, kind).iter().any(|n| n == short)
}
