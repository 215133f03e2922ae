//! Thin async helpers over rtnetlink for the objects netbridge manages.
//! Every call runs on a handle bound to one namespace (see `netns::run_in`).
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::RawFd,
};

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::{
    address::{AddressAttribute, AddressFlags, AddressMessage},
    link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
    route::{RouteAttribute, RouteMessage, RouteScope},
};
use rtnetlink::{
    Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
};

#[derive(Debug, thiserror::Error)]
#[error("{op}: {source}")]
pub struct NetlinkError {
    pub op: String,
    #[source]
    pub source: rtnetlink::Error,
}

impl NetlinkError {
    /// The kernel's errno, if the kernel answered with an error.
    pub fn errno(&self) -> Option<i32> {
        match &self.source {
            rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, NetlinkError>;

fn ctx(op: impl FnOnce() -> String) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    move |source| NetlinkError { op: op(), source }
}

/// What netbridge needs to know about an existing interface.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LinkInfoLite {
    pub index: u32,
    pub name: String,
    /// rtnetlink kind ("veth", "bridge", ...); None for physical/loopback.
    pub kind: Option<String>,
    pub up: bool,
    pub mtu: u32,
    pub master: Option<u32>,
    pub mac: Option<[u8; 6]>,
    /// Id of the XDP program attached, if any.
    pub xdp_prog: Option<u32>,
}

fn lite(msg: &LinkMessage) -> LinkInfoLite {
    let mut l = LinkInfoLite {
        index: msg.header.index,
        name: String::new(),
        kind: None,
        up: msg.header.flags.contains(LinkFlags::Up),
        mtu: 0,
        master: None,
        mac: None,
        xdp_prog: None,
    };
    for a in &msg.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::Mtu(m) => l.mtu = *m,
            LinkAttribute::Controller(c) if *c != 0 => l.master = Some(*c),
            LinkAttribute::Address(a) if a.len() == 6 => {
                l.mac = Some(a[..6].try_into().unwrap());
            }
            LinkAttribute::Xdp(xdp) => {
                l.xdp_prog = xdp.iter().find_map(|x| match x {
                    netlink_packet_route::link::LinkXdp::ProgId(id) if *id != 0 => Some(*id),
                    _ => None,
                });
            }
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        l.kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    l
}

pub async fn links(h: &Handle) -> Result<Vec<LinkInfoLite>> {
    let msgs: Vec<LinkMessage> = h
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(ctx(|| "list links".into()))?;
    Ok(msgs.iter().map(lite).collect())
}

/// Link `name`, asked by name (one lookup in the kernel, not a dump of
/// every link: namespaces with many ports stay linear).
pub async fn link(h: &Handle, name: &str) -> Result<Option<LinkInfoLite>> {
    Ok(link_message(h, name).await?.as_ref().map(lite))
}

/// Whether link `name` has carrier (IFF_LOWER_UP): DAD waits for it.
pub async fn has_carrier(h: &Handle, name: &str) -> Result<Option<bool>> {
    let msg = link_message(h, name).await?;
    Ok(msg.map(|m| m.header.flags.contains(LinkFlags::LowerUp)))
}

async fn link_message(h: &Handle, name: &str) -> Result<Option<LinkMessage>> {
    let mut answer = h.link().get().match_name(name).execute();
    match answer.try_next().await {
        Ok(msg) => Ok(msg),
        Err(e) => {
            let err = ctx(|| format!("look up link {name}"))(e);
            if err.errno() == Some(libc::ENODEV) {
                Ok(None)
            } else {
                Err(err)
            }
        }
    }
}

pub async fn create_bridge(h: &Handle, name: &str, mtu: Option<u32>) -> Result<()> {
    let mut b = LinkBridge::new(name);
    if let Some(m) = mtu {
        b = b.mtu(m);
    }
    h.link()
        .add(b.build())
        .execute()
        .await
        .map_err(ctx(|| format!("create bridge {name}")))
}

/// Creates veth `name` here with its peer `peer` directly in the namespace
/// behind `peer_ns` (no temporary names, no move afterwards).
pub async fn create_veth(
    h: &Handle,
    name: &str,
    peer: &str,
    peer_ns: RawFd,
    mtu: Option<u32>,
) -> Result<()> {
    let mut peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
        .name(peer.to_string())
        .setns_by_fd(peer_ns);
    let mut msg =
        LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth).name(name.to_string());
    if let Some(m) = mtu {
        peer_msg = peer_msg.mtu(m);
        msg = msg.mtu(m);
    }
    let msg = msg
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg.build())))
        .build();
    h.link()
        .add(msg)
        .execute()
        .await
        .map_err(ctx(|| format!("create veth {name} (peer {peer})")))
}

/// Brings `index` up, optionally setting its MTU and bridge master.
pub async fn set_link(h: &Handle, index: u32, mtu: Option<u32>, master: Option<u32>) -> Result<()> {
    let mut b = LinkUnspec::new_with_index(index).up();
    if let Some(m) = mtu {
        b = b.mtu(m);
    }
    if let Some(m) = master {
        b = b.controller(m);
    }
    h.link()
        .change(b.build())
        .execute()
        .await
        .map_err(ctx(|| format!("configure link #{index}")))
}

pub async fn del_link(h: &Handle, index: u32) -> Result<()> {
    h.link()
        .del(index)
        .execute()
        .await
        .map_err(ctx(|| format!("delete link #{index}")))
}

/// Addresses on `index` (scope global and link-local alike).
pub async fn addresses(h: &Handle, index: u32) -> Result<Vec<IpNet>> {
    let all = address_dump(h, Some(index)).await?;
    Ok(all.into_iter().map(|(_, a)| a).collect())
}

/// Every address of the namespace with its link's index, in one dump
/// (one dump per link is quadratic in a namespace with many links).
pub async fn all_addresses(h: &Handle) -> Result<Vec<(u32, IpNet)>> {
    address_dump(h, None).await
}

async fn address_dump(h: &Handle, index: Option<u32>) -> Result<Vec<(u32, IpNet)>> {
    let mut req = h.address().get();
    if let Some(i) = index {
        req = req.set_link_index_filter(i);
    }
    let msgs: Vec<_> = req
        .execute()
        .try_collect()
        .await
        .map_err(ctx(|| match index {
            Some(i) => format!("list addresses of link #{i}"),
            None => "list addresses".into(),
        }))?;
    Ok(msgs
        .iter()
        .filter(|m| index.is_none_or(|i| m.header.index == i))
        .filter_map(|m| Some((m.header.index, address_of(m)?)))
        .collect())
}

/// The interface's own address in an address message: IFA_LOCAL on
/// point-to-point links, IFA_ADDRESS otherwise.
fn address_of(m: &AddressMessage) -> Option<IpNet> {
    let addr = m
        .attributes
        .iter()
        .find_map(|a| match a {
            AddressAttribute::Local(ip) => Some(*ip),
            _ => None,
        })
        .or_else(|| {
            m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            })
        })?;
    IpNet::new(addr, m.header.prefix_len).ok()
}

/// Adds `net` to link `index`. With `nodad`, an IPv6 address skips
/// duplicate address detection (IFA_F_NODAD): netbridge assigns each once
/// (validated), and a tentative address would fail binds and pings for the
/// first seconds. Without it the kernel runs DAD (see [`dad_states`]).
pub async fn add_address(h: &Handle, index: u32, net: IpNet, nodad: bool) -> Result<()> {
    let mut req = h.address().add(index, net.addr(), net.prefix_len());
    if nodad && net.addr().is_ipv6() {
        req.message_mut()
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    req.execute()
        .await
        .map_err(ctx(|| format!("add address {net} to link #{index}")))
}

/// Where duplicate address detection of an IPv6 address stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dad {
    Done,
    /// Still tentative: DAD runs (or waits for the link's carrier).
    Tentative,
    /// Another node on the link answered for the address.
    Failed,
}

/// The IPv6 addresses of link `index` (its link-local one included) and
/// where their DAD stands, from the 32-bit IFA_FLAGS when present.
pub async fn dad_states(h: &Handle, index: u32) -> Result<Vec<(IpNet, Dad)>> {
    let msgs: Vec<_> = h
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(ctx(|| format!("list addresses of link #{index}")))?;
    Ok(msgs
        .iter()
        .filter(|m| m.header.index == index)
        .filter_map(|m| {
            let net = address_of(m).filter(|n| n.addr().is_ipv6())?;
            let flags = m
                .attributes
                .iter()
                .find_map(|a| match a {
                    AddressAttribute::Flags(f) => Some(*f),
                    _ => None,
                })
                .unwrap_or_else(|| AddressFlags::from_bits_retain(m.header.flags.bits().into()));
            let dad = if flags.contains(AddressFlags::Dadfailed) {
                Dad::Failed
            } else if flags.contains(AddressFlags::Tentative) {
                Dad::Tentative
            } else {
                Dad::Done
            };
            Some((net, dad))
        })
        .collect())
}

/// A route as netbridge configures it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub dst: IpNet,
    pub via: Option<IpAddr>,
    pub oif: Option<u32>,
}

/// The netlink message for `r`: on-link (`dev X`) without a gateway, and a
/// gateway named together with its device is on-link there even outside
/// the interface's subnet (`... dev X onlink`). `for_delete` leaves out
/// what the kernel does not match on.
fn route_message(r: &RouteSpec, for_delete: bool) -> Result<RouteMessage> {
    // Only a family mismatch fails here, which validation rules out.
    fn invalid<E: std::fmt::Display>(r: &RouteSpec) -> impl Fn(E) -> NetlinkError + '_ {
        move |e| NetlinkError {
            op: format!("route {}", r.dst),
            source: rtnetlink::Error::InvalidNla(e.to_string()),
        }
    }
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(r.dst.addr(), r.dst.prefix_len())
        .map_err(invalid(r))?;
    if let Some(gw) = r.via {
        b = b.gateway(gw).map_err(invalid(r))?;
    }
    if for_delete {
        return Ok(b.build());
    }
    if r.via.is_none() {
        b = b.scope(RouteScope::Link);
    }
    if let Some(oif) = r.oif {
        b = b.output_interface(oif);
        if r.via.is_some() {
            b = b.onlink();
        }
    }
    Ok(b.build())
}

/// Adds a route; an identical existing route is not an error (returns false).
pub async fn add_route(h: &Handle, r: &RouteSpec) -> Result<bool> {
    let msg = route_message(r, false)?;
    match h.route().add(msg).execute().await {
        Ok(()) => Ok(true),
        Err(e) => {
            let err = ctx(|| format!("add route {} via {:?} dev #{:?}", r.dst, r.via, r.oif))(e);
            if err.errno() == Some(libc::EEXIST) {
                Ok(false)
            } else {
                Err(err)
            }
        }
    }
}

/// Routes of the main table, as (dst, via, oif), for reconciliation/status.
pub async fn routes(h: &Handle, v6: bool) -> Result<Vec<RouteSpec>> {
    let msg = if v6 {
        RouteMessageBuilder::<Ipv6Addr>::new().build()
    } else {
        RouteMessageBuilder::<Ipv4Addr>::new().build()
    };
    let msgs: Vec<_> = h
        .route()
        .get(msg)
        .execute()
        .try_collect()
        .await
        .map_err(ctx(|| "list routes".into()))?;
    Ok(msgs
        .iter()
        .filter(|m| m.header.table == 254)
        .filter_map(|m| {
            let mut dst = None;
            let mut via = None;
            let mut oif = None;
            for a in &m.attributes {
                match a {
                    RouteAttribute::Destination(d) => dst = route_addr(d),
                    RouteAttribute::Gateway(g) => via = route_addr(g),
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    _ => {}
                }
            }
            let len = m.header.destination_prefix_length;
            let dst = match dst {
                Some(d) => IpNet::new(d, len).ok()?,
                None if v6 => IpNet::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0).ok()?,
                None => IpNet::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0).ok()?,
            };
            Some(RouteSpec { dst, via, oif })
        })
        .collect())
}

fn route_addr(a: &netlink_packet_route::route::RouteAddress) -> Option<IpAddr> {
    use netlink_packet_route::route::RouteAddress;
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

pub async fn del_route(h: &Handle, r: &RouteSpec) -> Result<()> {
    h.route()
        .del(route_message(r, true)?)
        .execute()
        .await
        .map_err(ctx(|| format!("delete route {}", r.dst)))
}

/// Sets the MAC address of link `index` (before it carries traffic).
pub async fn set_mac(h: &Handle, index: u32, mac: [u8; 6]) -> Result<()> {
    h.link()
        .change(
            LinkUnspec::new_with_index(index)
                .address(mac.to_vec())
                .build(),
        )
        .execute()
        .await
        .map_err(ctx(|| format!("set MAC of link #{index}")))
}

/// Turns TX checksum offload of `ifname` (in the calling thread's namespace)
/// on or off with the ethtool ioctl. Returns the previous setting.
///
/// XDP mode needs it off on the namespace end of each port: XDP_REDIRECT
/// between veths drops the skb's "checksum still to be filled in" state, so
/// partially checksummed TCP/UDP would arrive corrupt.
pub fn set_tx_checksum(ifname: &str, on: bool) -> std::io::Result<bool> {
    const ETHTOOL_GTXCSUM: u32 = 0x16;
    const ETHTOOL_STXCSUM: u32 = 0x17;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        data: *mut EthtoolValue,
        _pad: [u8; 16],
    }
    if ifname.len() >= libc::IFNAMSIZ {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "interface name too long",
        ));
    }
    // SAFETY: plain socket; closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let call = |cmd: u32, data: u32| -> std::io::Result<u32> {
        let mut value = EthtoolValue { cmd, data };
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            data: &mut value,
            _pad: [0; 16],
        };
        req.name[..ifname.len()].copy_from_slice(ifname.as_bytes());
        // SAFETY: req and value outlive the call; SIOCETHTOOL reads/writes them.
        let rc = unsafe { libc::ioctl(fd, libc::SIOCETHTOOL as _, &mut req) };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(value.data)
    };
    let result = call(ETHTOOL_GTXCSUM, 0).and_then(|prev| {
        if (prev != 0) != on {
            call(ETHTOOL_STXCSUM, on as u32)?;
        }
        Ok(prev != 0)
    });
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    result
}
