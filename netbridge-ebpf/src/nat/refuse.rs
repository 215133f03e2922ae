//! RFC 5508 REQ-8: a sender whose new IPv4 session the NAT refuses for
//! resources or policy (port pool exhausted, session table full, its
//! quota) gets an ICMP Destination Unreachable, code 13 (communication
//! administratively prohibited), quoting its packet; the packet itself is
//! dropped (counted under its reason as before). A lab host refused at the
//! uplink egress hears it from the lab-side gateway address, through its
//! bridge port; a forward's client refused at the uplink ingress from the
//! uplink address, back out of the uplink. The error is built in place
//! from the refused skb, as Cilium's `__icmp_send`: trimmed to the quote
//! (at most 576 bytes in all, RFC 1812 4.3.2.3), room made in front for
//! the new IPv4 and ICMP headers, checksummed with `bpf_csum_diff`.
//! Rate-limited per CPU, so a flood of refused packets is not answered by
//! a flood of errors.
use aya_ebpf::{
    bindings::TC_ACT_SHOT,
    helpers::{
        bpf_csum_diff, bpf_redirect, bpf_skb_adjust_room, bpf_skb_change_tail, bpf_skb_load_bytes,
    },
    macros::map,
    maps::PerCpuArray,
    programs::TcContext,
};
use netbridge_common::{Be16, Be32, HostEntry, drop_reason, nat_stat};

use crate::{
    bridge,
    nat::{self, count, dnat, packet},
    parse::ETH_HLEN,
};

/// Errors sent per CPU per second, at most.
pub const PER_SECOND: u64 = 20;
/// The quoted bytes of the refused packet, at most: 576 - 20 - 8.
const QUOTE_MAX: u32 = 548;
/// New IPv4 header and ICMP header in front of the quote.
const ROOM: u32 = 28;
const BPF_ADJ_ROOM_MAC: u32 = 1;
/// The checksum is summed in chunks of this many bytes (a stack buffer).
const CHUNK: u32 = 64;

/// Per CPU: [window start (ns), errors sent in the window].
#[map]
static NB_REFUSE_RATE: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

/// Is `reason` the refusal of a new session for resources or policy?
/// (`nat_ct_insert`, a lost race, is not: the next packet succeeds.)
#[inline(always)]
pub fn is_refusal(reason: u32) -> bool {
    reason == drop_reason::NAT_PORT_EXHAUSTED
        || reason == drop_reason::NAT_TABLE_FULL
        || reason == drop_reason::NAT_QUOTA
}

/// The uplink's IPv4 packet whose new session was refused, turned into the
/// error: at the egress (`inbound` 0, a lab host's) redirected to the
/// host's port, at the ingress (`inbound` 1, a forward's client) back out
/// of the uplink (TC_ACT_REDIRECT); else dropped (TC_ACT_SHOT: not a known
/// lab host, no gateway address, GSO, over the rate limit, a helper
/// failed). Its own BPF function, called from the program entry once the
/// refusal has returned: its frame never stacks on the session
/// allocator's.
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
    let src: Be32 = ctx.load(ETH_HLEN + 12).map_err(|_| ())?;
    // Where the error goes: (its source, the ifindex out, the lab host).
    let (from, out, host) = if inbound {
        let cfg = nat::config().ok_or(())?;
        (cfg.uplink_ipv4, cfg.uplink_ifindex, None)
    } else {
        let h = dnat::host(src).ok_or(())?;
        (Be32::from_bytes(bridge::gateway_ipv4()), h.ifindex, Some(h))
    };
    if from == Be32::from_host(0) {
        return Err(());
    }
    let quote = quote_len(ctx)?;
    if !allow() {
        count(nat_stat::ICMP_PROHIBITED_LIMITED);
        return Err(());
    }
    let macs = reshape(ctx, quote, ROOM)?;
    write_headers(ctx, from, src, quote)?;
    send(ctx, host, macs, out, nat_stat::ICMP_PROHIBITED_SENT)
}

/// Cuts the refused frame to `quote` bytes past Ethernet and makes `room`
/// bytes for the error's headers in front of them. Returns the frame's
/// (destination, source) MACs, read before: the error goes back the way
/// the frame came. Shared with NAT66 (`nat6::refuse`).
#[inline(always)]
pub(crate) fn reshape(ctx: &TcContext, quote: u32, room: u32) -> Result<([u8; 6], [u8; 6]), ()> {
    let mac_dst: [u8; 6] = ctx.load(0).map_err(|_| ())?;
    let mac_src: [u8; 6] = ctx.load(6).map_err(|_| ())?;
    let skb = ctx.skb.skb;
    // SAFETY: helpers on the program's own skb; lengths checked by callers.
    let ok = unsafe {
        bpf_skb_change_tail(skb, ETH_HLEN as u32 + quote, 0) == 0
            && bpf_skb_adjust_room(skb, room as i32, BPF_ADJ_ROOM_MAC, 0) == 0
    };
    if ok { Ok((mac_dst, mac_src)) } else { Err(()) }
}

/// Sends the error built in the frame out of `out`: to lab host `host`
/// (MACs of its port), or, with none, back to where the frame came from
/// (`macs` as [`reshape`] read them, swapped). Counted in `sent`.
#[inline(always)]
pub(crate) fn send(
    ctx: &TcContext,
    host: Option<HostEntry>,
    (mac_dst, mac_src): ([u8; 6], [u8; 6]),
    out: u32,
    sent: u32,
) -> Result<i32, ()> {
    match host {
        Some(h) => dnat::readdress(ctx, &h).map_err(|_| ())?,
        None => {
            packet::store(ctx, 0, &mac_src).map_err(|_| ())?;
            packet::store(ctx, 6, &mac_dst).map_err(|_| ())?;
        }
    }
    count(sent);
    if host.is_some() {
        crate::stats::count_tx(out, ctx.len() as u64);
    }
    // SAFETY: a helper call with a plain ifindex; no memory passed.
    Ok(unsafe { bpf_redirect(out, 0) } as i32)
}

/// The bytes of the refused IPv4 packet to quote: as much as fits, in
/// whole words (bpf_csum_diff's), at least its header and 8 bytes.
#[inline(always)]
fn quote_len(ctx: &TcContext) -> Result<u32, ()> {
    let vihl: u8 = ctx.load(ETH_HLEN).map_err(|_| ())?;
    let ihl = (vihl & 0x0f) as u32 * 4;
    let tot: Be16 = ctx.load(ETH_HLEN + 2).map_err(|_| ())?;
    let avail = ctx.len().saturating_sub(ETH_HLEN as u32);
    let quote = (tot.get() as u32).min(avail).min(QUOTE_MAX) & !3;
    if quote < ihl + 8 {
        return Err(());
    }
    Ok(quote)
}

/// Writes the IPv4 header (gateway `gw` to `dst`) and the ICMP header in
/// front of `quote` bytes, with their checksums.
#[inline(always)]
fn write_headers(ctx: &TcContext, gw: Be32, dst: Be32, quote: u32) -> Result<(), ()> {
    let total = Be16::from_host((ROOM + quote) as u16);
    let mut ip = [0u32; 5];
    // Version/IHL, TOS 0xc0 (internetwork control, as Linux's ICMP), total
    // length; ID 0 with DF: an atomic datagram (RFC 6864); TTL 64, ICMP.
    ip[0] = u32::from_ne_bytes([0x45, 0xc0, total.to_bytes()[0], total.to_bytes()[1]]);
    ip[1] = u32::from_ne_bytes([0, 0, 0x40, 0]);
    ip[2] = u32::from_ne_bytes([64, packet::IPPROTO_ICMP, 0, 0]);
    ip[3] = gw.raw();
    ip[4] = dst.raw();
    // SAFETY: a 20-byte stack buffer, no "from" buffer.
    let sum = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, ip.as_mut_ptr(), 20, 0) };
    ip[2] |= (fold(sum) as u32) << 16;
    packet::store(ctx, ETH_HLEN, &ip).map_err(|_| ())?;
    let icmp = [3u8, 13, 0, 0, 0, 0, 0, 0];
    let icmp_off = ETH_HLEN + 20;
    packet::store(ctx, icmp_off, &icmp).map_err(|_| ())?;
    let sum = icmp_sum::<{ 8 + QUOTE_MAX }>(ctx, icmp_off as u32, 8 + quote, 0)?;
    packet::store(ctx, icmp_off + 2, &fold(sum)).map_err(|_| ())
}

/// The one's complement sum (bpf_csum_diff's, unfolded), from `seed`, of
/// `len` bytes at `off`, `len` a multiple of 4 and at most `MAX`: whole
/// chunks, then words. (NAT66's errors seed it with their pseudo-header.)
#[inline(always)]
pub(crate) fn icmp_sum<const MAX: u32>(
    ctx: &TcContext,
    off: u32,
    len: u32,
    seed: u32,
) -> Result<i64, ()> {
    let skb = ctx.skb.skb as *const core::ffi::c_void;
    let mut buf = [0u32; (CHUNK / 4) as usize];
    let mut sum: i64 = seed as i64;
    let mut at = 0u32;
    // Bounded: MAX / CHUNK chunks, then < CHUNK / 4 words.
    for _ in 0..MAX / CHUNK {
        if at + CHUNK > len {
            break;
        }
        let p = buf.as_mut_ptr();
        // SAFETY: CHUNK bytes into a CHUNK-byte stack buffer, then summed.
        sum = unsafe {
            if bpf_skb_load_bytes(skb, off + at, p as *mut _, CHUNK) != 0 {
                return Err(());
            }
            bpf_csum_diff(core::ptr::null_mut(), 0, p, CHUNK, sum as u32)
        };
        at += CHUNK;
    }
    for _ in 0..CHUNK / 4 {
        if at + 4 > len {
            break;
        }
        let p = buf.as_mut_ptr();
        // SAFETY: 4 bytes into the buffer's first word, then summed.
        sum = unsafe {
            if bpf_skb_load_bytes(skb, off + at, p as *mut _, 4) != 0 {
                return Err(());
            }
            bpf_csum_diff(core::ptr::null_mut(), 0, p, 4, sum as u32)
        };
        at += 4;
    }
    if sum < 0 { Err(()) } else { Ok(sum) }
}

/// The Internet checksum of a bpf_csum_diff sum, in memory order.
#[inline(always)]
pub(crate) fn fold(sum: i64) -> u16 {
    let mut s = sum as u32;
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

/// May an error be sent now (this CPU's window not full)? One budget for
/// the IPv4 and the NAT66 errors.
#[inline(always)]
pub(crate) fn allow() -> bool {
    let Some(p) = NB_REFUSE_RATE.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's slot of a per-CPU array; programs on one CPU do
    // not preempt each other.
    crate::log::window_allows(unsafe { &mut *p }, PER_SECOND)
}
