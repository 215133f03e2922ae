//! Hairpin66 on the bridge ports: a lab host's TCP/UDP packet to the
//! uplink's IPv6 address is translated as if it left through the uplink
//! (the sender's SNAT66 session toward uplink:port, opened here if new)
//! and came back in (the receiver's session toward the sender's mapping,
//! or a forward opening a DNAT66 session), then delivered straight to the
//! receiver's port. The receiver sees the sender's external address and
//! port (RFC 4787 REQ-9 a, RFC 5382 REQ-8), forwards included; its
//! replies, routed to the uplink address as well, take the same way
//! back. The kernel could not do it: the address is its own.
use aya_ebpf::programs::TcContext;
use netbridge_common::{CT_DIR_IN, CT_DIR_OUT, HostEntry, In6, drop_reason, nat_stat};

use super::{
    config, ct, decode, fwd, is_lab,
    packet::{self, IPPROTO_TCP, IPPROTO_UDP, Pkt6},
};
use crate::{
    bridge,
    nat::{
        count, dnat,
        packet::{load, store},
    },
    parse::ETH_HLEN,
    policy,
};

/// Hop limit, in the IPv6 header.
const IP6_HOPS: usize = 7;

/// The bridge-port hook for an IPv6 frame routed to the gateway: the
/// receiver's port (> 0) for a hairpinned packet, 0 to carry on (bridging,
/// the kernel), or a drop reason negated. Its own BPF function: the SNAT66
/// allocator's frame stacks on this one, not on the port program's.
#[inline(never)]
pub fn port_hook(ctx: &TcContext) -> i64 {
    match try_port_hook(ctx) {
        Ok(Some(out)) => out as i64,
        Ok(None) => 0,
        Err(reason) => -(reason as i64),
    }
}

#[inline(always)]
fn try_port_hook(ctx: &TcContext) -> Result<Option<u32>, u32> {
    let Some(cfg) = config() else {
        return Ok(None);
    };
    let p = packet::pkt()?;
    let Some(ip) = packet::parse(ctx, p)? else {
        return Ok(None);
    };
    // ICMPv6 to the uplink address (echo) is the host's own, as is a
    // packet whose hop limit would expire (the kernel answers it).
    if p.key.daddr != cfg.uplink_ipv6
        || !is_lab(cfg, &p.key.saddr)
        || (ip.proto != IPPROTO_TCP && ip.proto != IPPROTO_UDP)
        || load::<u8>(ctx, ETH_HLEN + IP6_HOPS)? <= 1
    {
        return Ok(None);
    }
    ip.check_l4(ctx)?;
    ip.ports(ctx, p, false, CT_DIR_OUT)?;
    let flags = ip.tcp_flags(ctx);
    // Out: the sender's session toward uplink:port, as at the egress.
    match ct::lookup(cfg, p, flags) {
        ct::Found::Hit => {}
        _ => ct::new_session(cfg, p, flags)?,
    }
    packet::rewrite(ctx, &ip, p, true)?;
    // In: from the sender's mapping, as at the ingress.
    p.key.saddr = p.nat_addr;
    p.key.sport = p.nat_port;
    p.key.dir = CT_DIR_IN;
    let hit = match ct::lookup(cfg, p, flags) {
        ct::Found::Hit => true,
        _ => decode(fwd::open(cfg, p, flags))? == 1,
    };
    if !hit {
        // From outside it would reach no lab host either.
        return Err(drop_reason::NAT_FILTERED);
    }
    packet::rewrite(ctx, &ip, p, false)?;
    deliver(ctx, p).map(Some)
}

/// Readdresses the frame to the lab host `p.nat_addr` from the gateway,
/// with the hop limit decremented as the router would; its port.
#[inline(always)]
fn deliver(ctx: &TcContext, p: &Pkt6) -> Result<u32, u32> {
    let h = host(&p.nat_addr).ok_or(drop_reason::NAT_NO_ROUTE)?;
    let hops: u8 = load(ctx, ETH_HLEN + IP6_HOPS)?;
    store(ctx, ETH_HLEN + IP6_HOPS, &hops.saturating_sub(1))?;
    dnat::readdress(ctx, &h)?;
    count(nat_stat::XLATE6_HAIRPIN);
    Ok(h.ifindex)
}

/// The lab host with IPv6 address `a`: its port and MAC.
#[inline(always)]
fn host(a: &In6) -> Option<HostEntry> {
    let ifindex = policy::host6(a)?;
    let port = bridge::port(ifindex)?;
    if port.mac == [0; 6] {
        return None;
    }
    Some(HostEntry {
        ifindex,
        mac: port.mac,
        mtu: 0,
    })
}
