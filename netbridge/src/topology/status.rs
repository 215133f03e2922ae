//! `status`: a live view of every namespace of a topology (its attached
//! ports' included).
use ipnet::IpNet;
use serde::Serialize;

use super::{Result, host_of, in_ns, port};
use crate::{
    bpf,
    config::Topology,
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
