//! The per-packet work of established sessions by direct packet access:
//! headers in the skb's linear data read and rewritten in place
//! (addresses, ports, TTL, MACs, the IPv4 header checksum by RFC 1624)
//! with no helper call; only the TCP/UDP checksum goes through
//! `bpf_l4_csum_replace`, which alone knows whether the skb carries a
//! partial (offload) or complete checksum. Out at a bridge port
//! ([`port_out`], DNAT hairpin replies too) and in at the uplink once the
//! mapping is known ([`inbound`]). Anything they do not take (IP options,
//! short linear data, fragments, hairpin requests, ICMP...) goes the
//! general way, which decides as before.
use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_OK},
    helpers::bpf_redirect_peer,
    programs::TcContext,
};
use netbridge_common::{Be16, Be32, CT_DIR_OUT, CT_HAIRPIN, NAT_FAST_PATH, nat_stat};

use crate::{
    bridge,
    nat::{
        Tuple, config, count, ct, dnat,
        packet::{
            BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, ETH_P_IP, IPPROTO_TCP, IPPROTO_UDP, Ip4,
            l4_csum, l4_csum_off,
        },
    },
    parse::{ETH_HLEN, ptr_at},
};

/// IPv4 header without options and the first 20 bytes of TCP (UDP: its
/// header and 12 bytes of payload): what the fast path reads.
const HDRS: usize = 40;

/// The headers as bytes, in the linear data after Ethernet.
type Hdrs = [u8; HDRS];

/// An outbound packet of an established SNAT session or a DNAT reply,
/// translated here: returns the uplink's ifindex to send it out of,
/// [`PEER`] | a lab host's port for a DNAT hairpin reply, 0 if the
/// general path is to decide, or a drop reason negated. Its own BPF
/// function, off the port hook's frames.
#[inline(never)]
pub fn port_out(ctx: &TcContext) -> i64 {
    let Some(cfg) = config() else { return 0 };
    // SAFETY: `ctx.skb.skb` is the program's valid __sk_buff context.
    let skb = unsafe { &*ctx.skb.skb };
    if cfg.flags & NAT_FAST_PATH == 0 || skb.protocol != ETH_P_IP.raw() as u32 {
        return 0;
    }
    let Some(p) = ptr_at::<Hdrs>(ctx.data(), ctx.data_end(), ETH_HLEN) else {
        return 0;
    };
    // SAFETY: bounds-checked by ptr_at; TC programs may write packet data
    // (the verifier unclones the skb first). No helper runs while it lives.
    let h = unsafe { &mut *(p as *mut Hdrs) };
    let proto = h[9];
    // No options; an atomic datagram (DF, no fragment: others get a new IP
    // ID in the uplink egress); a TTL to decrement; a sound TCP/UDP header.
    if h[0] != 0x45 || u16::from_be_bytes([h[6], h[7]]) & 0x7fff != 0x4000 || h[8] <= 1 {
        return 0;
    }
    let Some((l4_len, flags)) = l4_header(h, skb.len) else {
        return 0;
    };
    if !fits(skb, l4_len, cfg.uplink_mtu) {
        return 0;
    }
    let t = tuple_of(h);
    if t.daddr == cfg.uplink_ipv4 {
        // Hairpin: the general path.
        return 0;
    }
    let Some((addr, port, kind)) = ct::lookup(cfg, &t, CT_DIR_OUT, flags).hit() else {
        return 0;
    };
    let has_csum = proto == IPPROTO_TCP || h[26] | h[27] != 0;
    if kind == CT_HAIRPIN {
        return hairpin_reply(ctx, h, &t, (addr, port), has_csum);
    }
    rewrite(h, true, (addr, port), true);
    // Packet pointers are invalid from here (the helpers may move data).
    match l4_fix(ctx, proto, has_csum, (t.saddr, t.sport), (addr, port)) {
        Ok(()) => {
            count(nat_stat::XLATE_OUT);
            count(nat_stat::FAST_OUT);
            cfg.uplink_ifindex as i64
        }
        Err(reason) => -(reason as i64),
    }
}

/// [`port_out`]'s result for a frame to hand to a lab host's port:
/// `PEER` | the port's ifindex.
pub const PEER: i64 = 1 << 32;

/// A DNAT hairpin reply (a forward's target answering a lab host that
/// reached it at the uplink's address), as the general path's
/// `port_established`: its source back to the forwarded address and port
/// (`new`), the client's and the gateway's MACs, no TTL change (bridged),
/// for the client's port. `PEER` | that port, 0 for the general path (no
/// lab host entry: it drops the frame), or a drop reason negated.
#[inline(always)]
fn hairpin_reply(
    ctx: &TcContext,
    h: &mut Hdrs,
    t: &Tuple,
    new: (Be32, Be16),
    has_csum: bool,
) -> i64 {
    let (Some(host), Some(macs)) = (
        dnat::host(t.daddr),
        ptr_at::<[u8; 12]>(ctx.data(), ctx.data_end(), 0),
    ) else {
        return 0;
    };
    // SAFETY: bounds-checked by ptr_at; written before any helper call.
    let macs = unsafe { &mut *(macs as *mut [u8; 12]) };
    rewrite(h, true, new, false);
    to_host_macs(macs, &host.mac);
    // Packet pointers are invalid from here (the helpers may move data).
    match l4_fix(ctx, t.proto, has_csum, (t.saddr, t.sport), new) {
        Ok(()) => {
            count(nat_stat::XLATE_HAIRPIN);
            PEER | host.ifindex as i64
        }
        Err(reason) => -(reason as i64),
    }
}

/// The source (`src`) or destination address and port to `addr`:`port`,
/// the TTL decremented if `ttl`, the IPv4 header checksum updated for
/// both (RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m')). One's complement sums
/// do not depend on byte order: words are taken as they sit in memory.
#[inline(always)]
fn rewrite(h: &mut Hdrs, src: bool, (addr, port): (Be32, Be16), ttl: bool) {
    let (a_off, p_off) = if src { (12, 20) } else { (16, 22) };
    let w = |h: &Hdrs, i: usize| u16::from_ne_bytes([h[i], h[i + 1]]) as u32;
    let a = addr.to_bytes();
    let (new_hi, new_lo) = (
        u16::from_ne_bytes([a[0], a[1]]) as u32,
        u16::from_ne_bytes([a[2], a[3]]) as u32,
    );
    let mut sum = (!w(h, 10) & 0xffff) + (!w(h, a_off) & 0xffff) + (!w(h, a_off + 2) & 0xffff);
    sum += new_hi + new_lo;
    if ttl {
        sum += !w(h, 8) & 0xffff;
        h[8] -= 1;
        sum += w(h, 8);
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    let csum = (!sum as u16).to_ne_bytes();
    h[10] = csum[0];
    h[11] = csum[1];
    h[a_off..a_off + 4].copy_from_slice(&a);
    let p = port.to_bytes();
    h[p_off] = p[0];
    h[p_off + 1] = p[1];
}

/// The TCP/UDP checksum after an endpoint moved from `old` to `new`
/// (as `packet::rewrite`: the address through the pseudo-header, the port
/// as data; a UDP checksum of 0, "none", left so).
#[inline(always)]
fn l4_fix(
    ctx: &TcContext,
    proto: u8,
    has_csum: bool,
    old: (Be32, Be16),
    new: (Be32, Be16),
) -> Result<(), u32> {
    if !has_csum {
        return Ok(());
    }
    let csum_off = ETH_HLEN + 20 + l4_csum_off(proto);
    let mangled0 = if proto == IPPROTO_UDP {
        BPF_F_MARK_MANGLED_0
    } else {
        0
    };
    if old.0 != new.0 {
        let flags = BPF_F_PSEUDO_HDR | mangled0 | 4;
        l4_csum(ctx, csum_off, old.0.raw(), new.0.raw(), flags)?;
    }
    if old.1 != new.1 {
        let (from, to) = (old.1.raw() as u32, new.1.raw() as u32);
        l4_csum(ctx, csum_off, from, to, mangled0 | 2)?;
    }
    Ok(())
}

/// The uplink ingress's parse by direct packet access (the helpers'
/// `ingress_parse` otherwise): a TCP/UDP packet to the uplink's address
/// `uplink`, IPv4 without options, not a fragment, with a sound L4 header
/// (as `check_l4`) and 40 header bytes in the linear data. Its header,
/// tuple and TCP flags; None: the general parse decides.
#[inline(always)]
pub fn in_parse(ctx: &TcContext, uplink: Be32) -> Option<(Ip4, Tuple, u8)> {
    // SAFETY: `ctx.skb.skb` is the program's valid __sk_buff context.
    let skb = unsafe { &*ctx.skb.skb };
    if skb.protocol != ETH_P_IP.raw() as u32 {
        return None;
    }
    let p = ptr_at::<Hdrs>(ctx.data(), ctx.data_end(), ETH_HLEN)?;
    // SAFETY: bounds-checked by ptr_at; read only.
    let h = unsafe { &*p };
    let (t, frag) = (tuple_of(h), u16::from_be_bytes([h[6], h[7]]));
    if h[0] != 0x45 || frag & 0x3fff != 0 || t.daddr != uplink {
        return None;
    }
    let (_, flags) = l4_header(h, skb.len)?;
    let ip = Ip4 {
        ip_off: ETH_HLEN,
        l4_off: ETH_HLEN + 20,
        proto: t.proto,
        saddr: t.saddr,
        daddr: t.daddr,
        frag,
    };
    Some((ip, t, flags))
}

/// The L4 header's length and TCP flags when `h` (IPv4 without options)
/// carries TCP or UDP with a sound header (as `check_l4`: TCP's at least
/// 20 bytes) that ends within the skb's `len` bytes; None otherwise.
#[inline(always)]
fn l4_header(h: &Hdrs, len: u32) -> Option<(u32, u8)> {
    let (l4_len, flags) = match h[9] {
        IPPROTO_TCP if h[32] >> 4 >= 5 => (((h[32] >> 4) as u32) * 4, h[33]),
        IPPROTO_UDP => (8, 0),
        _ => return None,
    };
    if (ETH_HLEN + 20) as u32 + l4_len > len {
        return None;
    }
    Some((l4_len, flags))
}

/// Does the packet (IPv4 without options, an L4 header of `l4_len`
/// bytes) fit `mtu` once forwarded? As `packet::fits`: GSO packets per
/// segment.
#[inline(always)]
fn fits(skb: &__sk_buff, l4_len: u32, mtu: u16) -> bool {
    let size = match skb.gso_size {
        0 => skb.len - ETH_HLEN as u32,
        gso => gso + 20 + l4_len,
    };
    size <= mtu as u32
}

/// Readdresses a frame (its 12 MAC bytes, in place) to a lab host's
/// `mac` from the gateway, as `dnat::readdress` does through the helpers.
#[inline(always)]
pub fn to_host_macs(macs: &mut [u8; 12], mac: &[u8; 6]) {
    macs[..6].copy_from_slice(mac);
    macs[6..].copy_from_slice(&bridge::gateway_mac());
}

/// The TCP/UDP tuple of `h` (IPv4 without options).
#[inline(always)]
fn tuple_of(h: &Hdrs) -> Tuple {
    Tuple {
        saddr: Be32::from_bytes([h[12], h[13], h[14], h[15]]),
        daddr: Be32::from_bytes([h[16], h[17], h[18], h[19]]),
        sport: Be16::from_bytes([h[20], h[21]]),
        dport: Be16::from_bytes([h[22], h[23]]),
        proto: h[9],
    }
}

/// [`inbound`]: not taken, the general path rewrites the packet.
pub const IN_GENERAL: i64 = 1 << 40;

/// Inbound, a TCP/UDP packet `t` for mapping `addr`:`port` (found by the
/// uplink ingress): its destination rewritten in place and, on the fast
/// path (`fast_in`'s conditions), its TTL and MACs too, then straight into
/// the lab host's namespace. Returns the TC action, a drop reason negated,
/// or [`IN_GENERAL`] (IP options, short linear data, ICMP). Its own BPF
/// function, off the ingress program's frame.
#[inline(never)]
pub fn inbound(ctx: &TcContext, t: &Tuple, addr: Be32, port: Be16) -> i64 {
    let (start, end) = (ctx.data(), ctx.data_end());
    let (Some(cfg), Some(macs), Some(p)) = (
        config(),
        ptr_at::<[u8; 12]>(start, end, 0),
        ptr_at::<Hdrs>(start, end, ETH_HLEN),
    ) else {
        return IN_GENERAL;
    };
    // SAFETY: bounds-checked by ptr_at; written before any helper call.
    let (macs, h) = unsafe { (&mut *(macs as *mut [u8; 12]), &mut *(p as *mut Hdrs)) };
    // SAFETY: `ctx.skb.skb` is the program's valid __sk_buff context.
    let skb = unsafe { &*ctx.skb.skb };
    if h[0] != 0x45 || h[9] != t.proto {
        return IN_GENERAL;
    }
    let Some((l4_len, _)) = l4_header(h, skb.len) else {
        return IN_GENERAL;
    };
    let host = match dnat::host(addr) {
        Some(host) if cfg.flags & NAT_FAST_PATH != 0 && fits(skb, l4_len, host.mtu) && h[8] > 1 => {
            Some(host)
        }
        _ => None,
    };
    let has_csum = t.proto == IPPROTO_TCP || h[26] | h[27] != 0;
    rewrite(h, false, (addr, port), host.is_some());
    if let Some(host) = host {
        to_host_macs(macs, &host.mac);
    }
    // Packet pointers are invalid from here (the helpers may move data).
    if let Err(reason) = l4_fix(ctx, t.proto, has_csum, (t.daddr, t.dport), (addr, port)) {
        return -(reason as i64);
    }
    count(nat_stat::XLATE_IN);
    let Some(host) = host else {
        return TC_ACT_OK as i64;
    };
    count(nat_stat::FAST_IN);
    crate::stats::count_tx(host.ifindex, ctx.len() as u64);
    // SAFETY: a helper call with a plain ifindex; no memory passed.
    unsafe { bpf_redirect_peer(host.ifindex, 0) }
}
