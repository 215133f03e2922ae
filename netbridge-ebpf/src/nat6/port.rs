//! NAT66 on the bridge ports (`nb_port_nat`, IPv6 frames to the gateway
//! MAC): a lab host's packet to the uplink's address is hairpinned
//! ([`super::hairpin`]), one of an established session elsewhere takes
//! the fast path out of the uplink ([`super::fast`]); anything else
//! carries on (bridging, the kernel).
use aya_ebpf::programs::TcContext;
use netbridge_common::In6;

use super::{config, fast, hairpin, is_lab, packet};
use crate::{
    bridge,
    nat::{
        Hook,
        packet::{load, store},
    },
    parse::ETH_HLEN,
    policy,
};

/// Hop limit, in the IPv6 header.
const IP6_HOPS: usize = 7;
/// [`port_hook`]'s result: out of this interface (bpf_redirect_neigh).
const NEIGH: i64 = 1 << 32;

/// The bridge-port hook of an IPv6 frame: the receiver's port for a
/// hairpinned packet, `NEIGH` | the uplink's ifindex for the fast path,
/// 0 to carry on, or a drop reason negated (no enum crosses a call). Its
/// own BPF function: the SNAT66 allocator's frame stacks on this one, not
/// on the port program's.
#[inline(never)]
pub fn port_hook(ctx: &TcContext) -> i64 {
    match try_port_hook(ctx) {
        Ok(Some(Hook::Peer(out))) => out as i64,
        Ok(Some(Hook::Neigh(out))) => NEIGH | out as i64,
        Ok(_) => 0,
        Err(reason) => -(reason as i64),
    }
}

/// [`port_hook`]'s result as a [`Hook`].
#[inline(always)]
pub fn decode(r: i64) -> Result<Option<Hook>, u32> {
    Ok(match r {
        r if r < 0 => return Err((-r) as u32),
        0 => None,
        r if r & NEIGH != 0 => Some(Hook::Neigh(r as u32)),
        r => Some(Hook::Peer(r as u32)),
    })
}

#[inline(always)]
fn try_port_hook(ctx: &TcContext) -> Result<Option<Hook>, u32> {
    let Some(cfg) = config() else {
        return Ok(None);
    };
    let p = packet::pkt()?;
    let Some(ip) = packet::parse(ctx, p)? else {
        return Ok(None);
    };
    // A packet whose hop limit would expire here is the kernel's (Time
    // Exceeded, or the host's own for the uplink address).
    if !is_lab(cfg, &p.key.saddr) || hop_limit(ctx)? <= 1 {
        return Ok(None);
    }
    if p.key.daddr == cfg.uplink_ipv6 {
        return Ok(hairpin::hairpin(ctx, &ip, p, cfg)?.map(Hook::Peer));
    }
    fast::out(ctx, &ip, p, cfg)
}

#[inline(always)]
fn hop_limit(ctx: &TcContext) -> Result<u8, u32> {
    load(ctx, ETH_HLEN + IP6_HOPS)
}

/// Decrements the hop limit as a router does; false, untouched, if it
/// would reach zero.
#[inline(always)]
pub(super) fn decrement_hops(ctx: &TcContext) -> Result<bool, u32> {
    let hops = hop_limit(ctx)?;
    if hops <= 1 {
        return Ok(false);
    }
    store(ctx, ETH_HLEN + IP6_HOPS, &(hops - 1))?;
    Ok(true)
}

/// The lab host with IPv6 address `a`: its port and MAC.
#[inline(always)]
pub(super) fn host(a: &In6) -> Option<netbridge_common::HostEntry> {
    let ifindex = policy::host6(a)?;
    let port = bridge::port(ifindex)?;
    if port.mac == [0; 6] {
        return None;
    }
    Some(netbridge_common::HostEntry {
        ifindex,
        mac: port.mac,
        mtu: 0,
    })
}
