//! In-kernel NAT: SNAT masquerade and DNAT port forwards on the uplink
//! (TC ingress and egress), hairpin on the bridge ports.
//!
//! Every session has two conntrack entries in an LRU hash: the key of the
//! packets going out (rewrite the source) and of those coming in (rewrite
//! the destination); each names the other. New sessions insert the reverse
//! entry first with BPF_NOEXIST (that claims the mapping), then the forward
//! one, and roll back on failure. Timeouts are enforced by the userspace GC
//! (`netbridge gc`); the programs only refresh `last_seen_ns` and the state.
pub mod ct;
pub mod dnat;
pub mod icmp;
pub mod packet;
pub mod snat;

use aya_ebpf::{
    bindings::TC_ACT_OK,
    macros::map,
    maps::{Array, PerCpuArray},
    programs::TcContext,
};
use netbridge_common::{
    CT_DIR_IN, CT_DIR_OUT, CT_HAIRPIN, NAT_FORWARDS, NAT_MASQUERADE, NatConfig, drop_reason,
    nat_stat,
};

use crate::{
    nat::packet::{ICMP_ECHO, ICMP_ECHO_REPLY, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
    parse::ETH_HLEN,
};

#[map]
static NB_NAT_CONFIG: Array<NatConfig> = Array::pinned(1, 0);

#[map]
static NB_NAT_STATS: PerCpuArray<u64> = PerCpuArray::pinned(nat_stat::COUNT, 0);

#[inline(always)]
pub fn count(stat: u32) {
    if let Some(c) = NB_NAT_STATS.get_ptr_mut(stat) {
        unsafe { *c += 1 };
    }
}

#[inline(always)]
pub fn config() -> Option<&'static NatConfig> {
    NB_NAT_CONFIG.get(0).filter(|c| c.flags != 0)
}

/// A packet's addressing: raw (network order) values as loaded.
#[derive(Clone, Copy)]
pub struct Tuple {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

/// Uplink egress: rewrite the source of established sessions (SNAT and
/// DNAT replies), open SNAT sessions for lab traffic, translate ICMP errors.
#[inline(always)]
pub fn try_uplink_egress(ctx: &TcContext) -> Result<i32, u32> {
    let Some(cfg) = config() else {
        return Ok(TC_ACT_OK);
    };
    let Some(ip) = packet::parse_ipv4(ctx, ETH_HLEN)? else {
        return Ok(TC_ACT_OK);
    };
    let uplink = u32::from_ne_bytes(cfg.uplink_ipv4);
    let masq = cfg.flags & NAT_MASQUERADE != 0 && ip.saddr != uplink;
    if ip.non_first_fragment() {
        return if masq && ip.is_nat_proto() {
            Err(drop_reason::NAT_FRAGMENT)
        } else {
            Ok(TC_ACT_OK)
        };
    }
    let t = match ip.proto {
        IPPROTO_TCP | IPPROTO_UDP => ip.tuple(ctx, false)?,
        IPPROTO_ICMP => match packet::icmp_type(ctx, &ip)? {
            ICMP_ECHO => ip.tuple(ctx, true)?,
            ty if packet::is_icmp_error(ty) => {
                icmp::translate_error(ctx, &ip, cfg, CT_DIR_OUT)?;
                return Ok(TC_ACT_OK);
            }
            _ => return Ok(TC_ACT_OK),
        },
        _ => return Ok(TC_ACT_OK),
    };
    let flags = ip.tcp_flags(ctx);
    if let Some((addr, port)) = ct::lookup(&t, CT_DIR_OUT, flags) {
        packet::rewrite(ctx, &ip, &t, true, addr, port)?;
        count(nat_stat::XLATE_OUT);
        return Ok(TC_ACT_OK);
    }
    if !masq {
        return Ok(TC_ACT_OK);
    }
    let (addr, port) = snat::new_session(cfg, &t, flags)?;
    packet::rewrite(ctx, &ip, &t, true, addr, port)?;
    count(nat_stat::XLATE_OUT);
    Ok(TC_ACT_OK)
}

/// Uplink ingress: rewrite the destination of established sessions (SNAT
/// replies, forwarded flows), open DNAT sessions for forwarded ports,
/// translate ICMP errors about translated packets (RFC 5508).
#[inline(always)]
pub fn try_uplink_ingress(ctx: &TcContext) -> Result<i32, u32> {
    let Some(cfg) = config() else {
        return Ok(TC_ACT_OK);
    };
    let Some(ip) = packet::parse_ipv4(ctx, ETH_HLEN)? else {
        return Ok(TC_ACT_OK);
    };
    if ip.daddr != u32::from_ne_bytes(cfg.uplink_ipv4) || ip.non_first_fragment() {
        // Not for a mapping; a fragment the host reassembles for itself.
        return Ok(TC_ACT_OK);
    }
    let t = match ip.proto {
        IPPROTO_TCP | IPPROTO_UDP => ip.tuple(ctx, false)?,
        IPPROTO_ICMP => match packet::icmp_type(ctx, &ip)? {
            ICMP_ECHO_REPLY => ip.tuple(ctx, true)?,
            ty if packet::is_icmp_error(ty) => {
                icmp::translate_error(ctx, &ip, cfg, CT_DIR_IN)?;
                return Ok(TC_ACT_OK);
            }
            // Echo requests and the rest are for the host itself.
            _ => return Ok(TC_ACT_OK),
        },
        _ => return Ok(TC_ACT_OK),
    };
    let flags = ip.tcp_flags(ctx);
    if let Some((addr, port)) = ct::lookup(&t, CT_DIR_IN, flags) {
        packet::rewrite(ctx, &ip, &t, false, addr, port)?;
        count(nat_stat::XLATE_IN);
        return Ok(TC_ACT_OK);
    }
    if cfg.flags & NAT_FORWARDS == 0 || t.proto == IPPROTO_ICMP {
        return Ok(TC_ACT_OK);
    }
    let Some(fwd) = dnat::find_forward(cfg, t.proto, u16::from_be(t.dport)) else {
        return Ok(TC_ACT_OK);
    };
    let (addr, port) = dnat::new_session(cfg, &t, &fwd, false, flags)?;
    packet::rewrite(ctx, &ip, &t, false, addr, port)?;
    count(nat_stat::XLATE_IN);
    Ok(TC_ACT_OK)
}

/// Bridge-port hook for hairpin: a lab host reaching a forwarded port on the
/// uplink address. The request is DNATed here and the reply un-DNATed here
/// (the kernel would drop a routed packet whose source is its own address),
/// both sent straight to the other host's port. Returns the port redirected
/// to, or None to carry on with bridging.
#[inline(always)]
pub fn port_hook(ctx: &TcContext, l3_off: usize) -> Result<Option<u32>, u32> {
    let Some(cfg) = config() else {
        return Ok(None);
    };
    if cfg.flags & NAT_FORWARDS == 0 {
        return Ok(None);
    }
    let Some(ip) = packet::parse_ipv4(ctx, l3_off)? else {
        return Ok(None);
    };
    if ip.non_first_fragment() || (ip.proto != IPPROTO_TCP && ip.proto != IPPROTO_UDP) {
        return Ok(None);
    }
    let t = ip.tuple(ctx, false)?;
    let flags = ip.tcp_flags(ctx);
    if t.daddr == u32::from_ne_bytes(cfg.uplink_ipv4) {
        let (addr, port) = match ct::lookup(&t, CT_DIR_IN, flags) {
            Some(m) => m,
            None => {
                let Some(fwd) = dnat::find_forward(cfg, t.proto, u16::from_be(t.dport)) else {
                    return Ok(None);
                };
                dnat::new_session(cfg, &t, &fwd, true, flags)?
            }
        };
        packet::rewrite(ctx, &ip, &t, false, addr, port)?;
        count(nat_stat::XLATE_HAIRPIN);
        // To the target's port if known; else the kernel routes it.
        return match dnat::host_port(ctx, addr)? {
            Some(out) => Ok(Some(out)),
            None => Ok(None),
        };
    }
    let Some((addr, port, kind)) = ct::lookup_kind(&t, CT_DIR_OUT, flags) else {
        return Ok(None);
    };
    if kind != CT_HAIRPIN {
        // A reply of an upstream DNAT session: un-DNATed at the uplink.
        return Ok(None);
    }
    packet::rewrite(ctx, &ip, &t, true, addr, port)?;
    count(nat_stat::XLATE_HAIRPIN);
    match dnat::host_port(ctx, t.daddr)? {
        Some(out) => Ok(Some(out)),
        None => Err(drop_reason::NAT_NO_ROUTE),
    }
}
