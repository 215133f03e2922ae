//! The NAT66 fast path (`fast_path = true`, as the IPv4 NAT's): packets
//! of established sessions skip the host's routing. From a lab host, the
//! bridge port translates the source, decrements the hop limit and sends
//! the packet out of the uplink (bpf_redirect_neigh: the kernel fills in
//! the next hop's MAC); from upstream, the uplink ingress, having
//! translated the destination, delivers it into the lab host's namespace
//! (bpf_redirect_peer). A packet whose hop limit would expire or that does
//! not fit the next device's MTU (GSO: per segment) stays on the kernel
//! path, which sends Time Exceeded or Packet Too Big. The first packet of
//! a session always takes the kernel path (the uplink egress opens it).
use core::ffi::c_void;

use aya_ebpf::{
    bindings::TC_ACT_OK,
    helpers::{bpf_check_mtu, bpf_redirect_peer},
    programs::TcContext,
};
use netbridge_common::{CT_DIR_OUT, NAT6_FAST_PATH, Nat6Config, nat_stat};

use super::{
    ct, encode,
    packet::{self, ICMPV6_ECHO_REQUEST, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, Ip6, Pkt6},
    port,
};
use crate::nat::{Hook, count, dnat};

/// bpf_check_mtu: check each segment of a GSO skb.
const BPF_MTU_CHK_SEGS: u64 = 1;

/// Is the fast path on? It follows the uplink's `fast_path` (NAT66's own
/// flag: the uplink may have no IPv4 NAT beside it).
#[inline(always)]
fn enabled() -> bool {
    super::config().is_some_and(|c| c.flags & NAT6_FAST_PATH != 0)
}

/// Does the packet fit the MTU of `ifindex` (GSO: each segment)?
#[inline(always)]
fn fits(ctx: &TcContext, ifindex: u32) -> bool {
    // 0: check the skb's own length.
    let mut mtu_len = 0u32;
    // SAFETY: the skb and a u32 on the stack the helper writes.
    let r = unsafe {
        bpf_check_mtu(
            ctx.skb.skb as *mut c_void,
            ifindex,
            &mut mtu_len,
            0,
            BPF_MTU_CHK_SEGS,
        )
    };
    r == 0
}

/// Fast path out: a lab host's packet `ip` (parsed into `p`, not to the
/// uplink's address, its hop limit above 1) of an established session
/// (TCP, UDP, ICMPv6 echo request), translated here for the uplink.
#[inline(always)]
pub(super) fn out(
    ctx: &TcContext,
    ip: &Ip6,
    p: &mut Pkt6,
    cfg: &Nat6Config,
) -> Result<Option<Hook>, u32> {
    if !enabled() || !fits(ctx, cfg.uplink_ifindex) {
        return Ok(None);
    }
    match ip.proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            ip.check_l4(ctx)?;
            ip.ports(ctx, p, false, CT_DIR_OUT)?;
        }
        IPPROTO_ICMPV6 if ip.icmp_type(ctx)? == ICMPV6_ECHO_REQUEST => {
            ip.ports(ctx, p, true, CT_DIR_OUT)?;
        }
        _ => return Ok(None),
    }
    // No session (or an expired one): the kernel path, whose uplink
    // egress opens it.
    let ct::Found::Hit = ct::lookup(cfg, p, ip.tcp_flags(ctx)) else {
        return Ok(None);
    };
    packet::rewrite(ctx, ip, p, true)?;
    port::decrement_hops(ctx)?;
    count(nat_stat::XLATE6_OUT);
    count(nat_stat::FAST_OUT);
    Ok(Some(Hook::Neigh(cfg.uplink_ifindex)))
}

/// Fast path in, at the uplink ingress: a packet translated to lab host
/// `Pkt6::nat_addr` goes straight into its namespace. The TC action, or a
/// drop reason negated. Its own BPF function, off the ingress's frame.
#[inline(never)]
pub(super) fn into_lab(ctx: &TcContext) -> i64 {
    encode(try_into_lab(ctx))
}

#[inline(always)]
fn try_into_lab(ctx: &TcContext) -> Result<i32, u32> {
    if !enabled() {
        return Ok(TC_ACT_OK);
    }
    let p = packet::pkt()?;
    let Some(h) = port::host(&p.nat_addr) else {
        return Ok(TC_ACT_OK);
    };
    if !fits(ctx, h.ifindex) || !port::decrement_hops(ctx)? {
        return Ok(TC_ACT_OK);
    }
    dnat::readdress(ctx, &h)?;
    count(nat_stat::FAST_IN);
    crate::stats::count_tx(h.ifindex, ctx.len() as u64);
    // SAFETY: a helper call with a plain ifindex; no memory passed.
    Ok(unsafe { bpf_redirect_peer(h.ifindex, 0) } as i32)
}
