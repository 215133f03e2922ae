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
use netbridge_common::{
    Be16, Be32, CT_DIR_IN, CT_DIR_OUT, In6, NAT6_FAST_PATH, Nat6Config, nat_stat,
};

use super::{
    ct, encode, is_lab,
    packet::{
        self, ICMPV6_ECHO_REQUEST, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, Ip6, Pkt6, pseudo_csum,
    },
    port,
};
use crate::{
    nat::{
        Hook, count, dnat,
        packet::{BPF_F_MARK_MANGLED_0, l4_csum},
    },
    parse::{ETH_HLEN, ptr_at},
};

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

/// The IPv6 header and the first 20 bytes of TCP (UDP: its header and 12
/// bytes of payload): what [`port_out`] reads.
type Hdrs6 = [u8; 60];

/// [`out`] by direct packet access, for the common case: TCP or UDP right
/// after the fixed header, in the skb's linear data. The source address,
/// port and hop limit are written in place and the address's checksum
/// difference computed here (no bpf_skb_load/store_bytes or bpf_csum_diff);
/// the L4 checksum goes through `bpf_l4_csum_replace`, which knows the
/// skb's checksum state (partial or complete). The uplink's ifindex to
/// send it out of, 0 for the general path (which decides as before), or
/// a drop reason negated. Its own BPF function.
#[inline(never)]
pub fn port_out(ctx: &TcContext) -> i64 {
    let Some(cfg) = super::config() else {
        return 0;
    };
    if cfg.flags & NAT6_FAST_PATH == 0 || !packet::is_ipv6(ctx) {
        return 0;
    }
    let Ok(p) = packet::pkt() else {
        return 0;
    };
    let Some(flags) = out_key(ctx, cfg, p) else {
        return 0;
    };
    if !fits(ctx, cfg.uplink_ifindex) {
        return 0;
    }
    let ct::Found::Hit = ct::lookup(cfg, p, flags) else {
        return 0;
    };
    // A helper ran: packet pointers are taken anew.
    let Some(h) = ptr_at::<Hdrs6>(ctx.data(), ctx.data_end(), ETH_HLEN) else {
        return 0;
    };
    // SAFETY: bounds-checked by ptr_at; written before any helper call.
    let h = unsafe { &mut *(h as *mut Hdrs6) };
    let has_csum = p.key.proto == IPPROTO_TCP || h[46] | h[47] != 0;
    let diff = rewrite_addr(h, 8, &p.key.saddr, &p.nat_addr);
    let port = p.nat_port.to_bytes();
    h[40] = port[0];
    h[41] = port[1];
    h[7] -= 1;
    match l4_fix(ctx, p, has_csum, (&p.key.saddr, p.key.sport), diff) {
        Ok(()) => {
            count(nat_stat::XLATE6_OUT);
            count(nat_stat::FAST_OUT);
            cfg.uplink_ifindex as i64
        }
        Err(reason) => -(reason as i64),
    }
}

/// A lab host's TCP/UDP packet leaving (`out`'s conditions: not to the
/// uplink's address, hop limit above 1, a sound L4 header) in `p.key`;
/// its TCP flags. None: the general path's.
#[inline(always)]
fn out_key(ctx: &TcContext, cfg: &Nat6Config, p: &mut Pkt6) -> Option<u8> {
    let h = ptr_at::<Hdrs6>(ctx.data(), ctx.data_end(), ETH_HLEN)?;
    // SAFETY: bounds-checked by ptr_at.
    let h = unsafe { &*h };
    if h[7] <= 1 {
        return None;
    }
    let flags = key_of(ctx, h, p, CT_DIR_OUT)?;
    if !is_lab(cfg, &p.key.saddr) || p.key.daddr == cfg.uplink_ipv6 {
        return None;
    }
    Some(flags)
}

/// The uplink ingress's parse by direct packet access (the helpers'
/// otherwise): a TCP/UDP packet right after the fixed header, to the
/// uplink's address, with a sound L4 header in the linear data; its tuple
/// in `p.key`. Its header and TCP flags; None: the general parse decides.
#[inline(always)]
pub(super) fn in_key(ctx: &TcContext, cfg: &Nat6Config, p: &mut Pkt6) -> Option<(Ip6, u8)> {
    if !packet::is_ipv6(ctx) {
        return None;
    }
    let h = ptr_at::<Hdrs6>(ctx.data(), ctx.data_end(), ETH_HLEN)?;
    // SAFETY: bounds-checked by ptr_at; read only.
    let h = unsafe { &*h };
    let flags = key_of(ctx, h, p, CT_DIR_IN)?;
    if p.key.daddr != cfg.uplink_ipv6 {
        return None;
    }
    let ip = Ip6 {
        l4_off: ETH_HLEN + packet::IP6_HLEN,
        proto: p.key.proto,
    };
    Some((ip, flags))
}

/// An IPv6 packet `h` carrying TCP or UDP right after the fixed header,
/// whole in the skb, with a sound L4 header (as `check_l4`): its tuple in
/// `p.key` for direction `dir`, and its TCP flags (as `tcp_flags`). None
/// for anything else (a payload length of 0, BIG TCP, included).
#[inline(always)]
fn key_of(ctx: &TcContext, h: &Hdrs6, p: &mut Pkt6, dir: u8) -> Option<u8> {
    let (proto, plen) = (h[6], u16::from_be_bytes([h[4], h[5]]) as u32);
    let (l4_len, flags) = match proto {
        IPPROTO_TCP if h[52] >> 4 >= 5 => (((h[52] >> 4) as u32) * 4, h[53] & 0x17),
        IPPROTO_UDP => (8, 0),
        _ => return None,
    };
    // SAFETY: `ctx.skb.skb` is the program's valid __sk_buff context.
    let len = unsafe { (*ctx.skb.skb).len };
    let l4_off = (ETH_HLEN + packet::IP6_HLEN) as u32;
    if h[0] >> 4 != 6 || plen == 0 || l4_off + plen > len || l4_off + l4_len > len {
        return None;
    }
    let word = |i: usize| Be32::from_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    p.key.saddr = [word(8), word(12), word(16), word(20)];
    p.key.daddr = [word(24), word(28), word(32), word(36)];
    p.key.sport = Be16::from_bytes([h[40], h[41]]);
    p.key.dport = Be16::from_bytes([h[42], h[43]]);
    p.key.proto = proto;
    p.key.dir = dir;
    p.key._pad = [0; 2];
    Some(flags)
}

/// The address at `off` (8: source, 24: destination) from `old` to
/// `new`; returns their one's complement difference (the pseudo-header's
/// change, as bpf_csum_diff gives it, folded). Sums do not depend on byte
/// order: words are taken as they sit in memory.
/// Its own BPF function: its eight words stay off the callers' frames.
#[inline(never)]
fn rewrite_addr(h: &mut Hdrs6, off: usize, old: &In6, new: &In6) -> u32 {
    let mut sum = 0u32;
    let mut i = 0;
    while i < 4 {
        let (o, n) = (old[i].raw(), new[i].raw());
        sum += (!o & 0xffff) + (!o >> 16) + (n & 0xffff) + (n >> 16);
        h[off + i * 4..off + 4 + i * 4].copy_from_slice(&new[i].to_bytes());
        i += 1;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    (sum & 0xffff) + (sum >> 16)
}

/// The TCP/UDP checksum after an endpoint moved from `old` to the
/// mapping in `p` (address difference `diff`), as `packet::rewrite`.
#[inline(always)]
fn l4_fix(
    ctx: &TcContext,
    p: &Pkt6,
    has_csum: bool,
    (old_addr, old_port): (&In6, Be16),
    diff: u32,
) -> Result<(), u32> {
    if !has_csum {
        return Ok(());
    }
    let proto = p.key.proto;
    let csum_off = ETH_HLEN + 40 + packet::l4_csum_off(proto);
    let mangled0 = if proto == IPPROTO_UDP {
        BPF_F_MARK_MANGLED_0
    } else {
        0
    };
    if *old_addr != p.nat_addr {
        pseudo_csum(ctx, csum_off, diff, mangled0)?;
    }
    if old_port != p.nat_port {
        let (from, to) = (old_port.raw() as u32, p.nat_port.raw() as u32);
        l4_csum(ctx, csum_off, from, to, mangled0 | 2)?;
    }
    Ok(())
}

/// [`inbound`]: the headers are not in the linear data; [`rewrite_in`]'s.
pub(super) const IN_GENERAL: i64 = 1 << 40;

/// [`inbound`]'s way with the headers out of the linear data: the
/// helpers' rewrite, then `TRANSLATED` (for [`into_lab`]). Its own BPF
/// function: off [`inbound`]'s frame.
#[inline(never)]
pub(super) fn rewrite_in(ctx: &TcContext) -> i64 {
    let Ok(p) = packet::pkt() else {
        return encode(Err(netbridge_common::drop_reason::NAT_REWRITE));
    };
    let ip = Ip6 {
        l4_off: ETH_HLEN + packet::IP6_HLEN,
        proto: p.key.proto,
    };
    if let Err(reason) = packet::rewrite(ctx, &ip, p, false) {
        return -(reason as i64);
    }
    count(nat_stat::XLATE6_IN);
    super::TRANSLATED as i64
}

/// Inbound, a TCP/UDP packet right after the fixed header whose session
/// `try_ingress` found (the mapping in `Pkt6`): the destination address
/// and port rewritten in place and, on the fast path (as [`into_lab`]),
/// the hop limit and MACs too, then into the lab host's namespace; the
/// address's checksum difference summed here, the L4 checksum through
/// `bpf_l4_csum_replace`. The TC action, a drop reason negated, or
/// [`IN_GENERAL`] (short linear data). Its own BPF function, off the
/// ingress's frame.
#[inline(never)]
pub(super) fn inbound(ctx: &TcContext) -> i64 {
    let Ok(p) = packet::pkt() else {
        return encode(Err(netbridge_common::drop_reason::NAT_REWRITE));
    };
    let host = if enabled() {
        port::host(&p.nat_addr).filter(|h| fits(ctx, h.ifindex))
    } else {
        None
    };
    let (start, end) = (ctx.data(), ctx.data_end());
    let (Some(macs), Some(h)) = (
        ptr_at::<[u8; 12]>(start, end, 0),
        ptr_at::<Hdrs6>(start, end, ETH_HLEN),
    ) else {
        return IN_GENERAL;
    };
    // SAFETY: bounds-checked by ptr_at; written before any helper call.
    let (macs, h) = unsafe { (&mut *(macs as *mut [u8; 12]), &mut *(h as *mut Hdrs6)) };
    let host = host.filter(|_| h[7] > 1);
    let has_csum = p.key.proto == IPPROTO_TCP || h[46] | h[47] != 0;
    let diff = rewrite_addr(h, 24, &p.key.daddr, &p.nat_addr);
    let port = p.nat_port.to_bytes();
    h[42] = port[0];
    h[43] = port[1];
    if let Some(host) = &host {
        h[7] -= 1;
        crate::nat::fast::to_host_macs(macs, &host.mac);
    }
    let old = (&p.key.daddr, p.key.dport);
    if let Err(reason) = l4_fix(ctx, p, has_csum, old, diff) {
        return -(reason as i64);
    }
    count(nat_stat::XLATE6_IN);
    let Some(host) = host else {
        return TC_ACT_OK as i64;
    };
    count(nat_stat::FAST_IN);
    crate::stats::count_tx(host.ifindex, ctx.len() as u64);
    // SAFETY: a helper call with a plain ifindex; no memory passed.
    unsafe { bpf_redirect_peer(host.ifindex, 0) }
}
