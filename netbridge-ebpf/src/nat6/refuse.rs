//! RFC 5508 REQ-8's IPv6 counterpart: a sender whose new NAT66 session is
//! refused (port pool, `max_sessions`, a quota) gets an ICMPv6 Destination
//! Unreachable, code 1 (communication administratively prohibited,
//! RFC 4443 3.1), quoting its packet; the packet itself is dropped
//! (counted under its reason). As the IPv4 errors (`nat::refuse`, whose
//! rate limit, checksum loop and fold this reuses): built in place from
//! the refused skb, trimmed to the quote (at most the IPv6 minimum MTU in
//! all, RFC 4443 2.4 (c)), room made in front for the new IPv6 and ICMPv6
//! headers. A lab host hears it from the bridge's IPv6 address, through
//! its port; a forward's client from the uplink's, back out of the uplink.
use aya_ebpf::{bindings::TC_ACT_SHOT, helpers::bpf_csum_diff, programs::TcContext};
use netbridge_common::{In6, nat_stat};

use super::packet::store_addr;
use crate::{
    nat::{
        count, packet,
        refuse::{allow, fold, icmp_sum, reshape, send},
    },
    parse::ETH_HLEN,
};

/// The quoted bytes at most: 1280 - 40 - 8.
const QUOTE_MAX: u32 = 1232;
/// New IPv6 header and ICMPv6 header in front of the quote.
const ROOM: u32 = 48;
const IPPROTO_ICMPV6: u8 = 58;
/// ICMPv6 Destination Unreachable, code 1.
const ICMPV6_DEST_UNREACH: u8 = 1;
const CODE_PROHIBITED: u8 = 1;

/// The uplink's IPv6 packet whose new session was refused, turned into the
/// error: at the egress (`inbound` 0, a lab host's) redirected to the
/// host's port, at the ingress (`inbound` 1, a forward's client) back out
/// of the uplink; else dropped (TC_ACT_SHOT: NAT66 off, no lab gateway
/// address, not a known lab host, GSO, over the rate limit, a helper
/// failed). Its own BPF function, called from the program entry once the
/// refusal has returned: its frame never stacks on the session's.
#[inline(never)]
pub fn answer(ctx: &TcContext, inbound: u32) -> i32 {
    try_answer(ctx, inbound != 0).unwrap_or(TC_ACT_SHOT)
}

#[inline(always)]
fn try_answer(ctx: &TcContext, inbound: bool) -> Result<i32, ()> {
    // SAFETY: `ctx.skb.skb` is the program's valid __sk_buff context.
    if unsafe { (*ctx.skb.skb).gso_size } != 0 {
        return Err(());
    }
    let cfg = super::config().ok_or(())?;
    let src: In6 = ctx.load(ETH_HLEN + 8).map_err(|_| ())?;
    // Where the error goes: (its source, the ifindex out, the lab host).
    // `from` stays in map memory: the helpers read it there.
    let (from, out, host) = if inbound {
        (&cfg.uplink_ipv6, cfg.uplink_ifindex, None)
    } else {
        let h = super::port::host(&src).ok_or(())?;
        (&cfg.lab_gateway, h.ifindex, Some(h))
    };
    if from.iter().all(|w| w.raw() == 0) {
        return Err(());
    }
    let quote = quote_len(ctx)?;
    if !allow() {
        count(nat_stat::ICMP6_PROHIBITED_LIMITED);
        return Err(());
    }
    let macs = reshape(ctx, quote, ROOM)?;
    write_headers(ctx, from, &src, quote)?;
    send(ctx, host, macs, out, nat_stat::ICMP6_PROHIBITED_SENT)
}

/// The bytes of the refused IPv6 packet to quote: as much as fits, in
/// whole words (bpf_csum_diff's), at least its header and 8 bytes.
#[inline(always)]
fn quote_len(ctx: &TcContext) -> Result<u32, ()> {
    let plen: [u8; 2] = ctx.load(ETH_HLEN + 4).map_err(|_| ())?;
    let tot = 40 + u16::from_be_bytes(plen) as u32;
    let avail = ctx.len().saturating_sub(ETH_HLEN as u32);
    let quote = tot.min(avail).min(QUOTE_MAX) & !3;
    if quote < 48 {
        return Err(());
    }
    Ok(quote)
}

/// Writes the IPv6 header (`from` to `to`) and the ICMPv6 header in front
/// of `quote` bytes, with the ICMPv6 checksum (over the pseudo-header).
#[inline(always)]
fn write_headers(ctx: &TcContext, from: &In6, to: &In6, quote: u32) -> Result<(), ()> {
    let plen = ((8 + quote) as u16).to_be_bytes();
    // Version 6, traffic class 0, flow label 0; payload length, ICMPv6,
    // hop limit 64 (the IPv4 errors' TTL); then the addresses.
    let head = [
        u32::from_ne_bytes([0x60, 0, 0, 0]),
        u32::from_ne_bytes([plen[0], plen[1], IPPROTO_ICMPV6, 64]),
    ];
    packet::store(ctx, ETH_HLEN, &head).map_err(|_| ())?;
    store_addr(ctx, ETH_HLEN + 8, from).map_err(|_| ())?;
    store_addr(ctx, ETH_HLEN + 24, to).map_err(|_| ())?;
    // Pseudo-header: both addresses, the upper-layer length, next header.
    let tail = [
        (8 + quote).to_be(),
        u32::from_ne_bytes([0, 0, 0, IPPROTO_ICMPV6]),
    ];
    let part = |p: *const u32, len: u32, seed: i64| {
        // SAFETY: `len` bytes at `p` (map memory or a stack buffer the
        // caller owns); no "from" buffer.
        unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, p as *mut u32, len, seed as u32) }
    };
    let seed = part(from.as_ptr() as *const u32, 16, 0);
    let seed = part(to.as_ptr() as *const u32, 16, seed);
    let seed = part(tail.as_ptr(), 8, seed);
    let icmp = [ICMPV6_DEST_UNREACH, CODE_PROHIBITED, 0, 0, 0, 0, 0, 0];
    let icmp_off = ETH_HLEN + 40;
    packet::store(ctx, icmp_off, &icmp).map_err(|_| ())?;
    let sum = icmp_sum::<{ 8 + QUOTE_MAX }>(ctx, icmp_off as u32, 8 + quote, seed as u32)?;
    packet::store(ctx, icmp_off + 2, &fold(sum)).map_err(|_| ())
}
