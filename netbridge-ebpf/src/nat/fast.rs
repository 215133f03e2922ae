//! The outbound fast path by direct packet access: an established
//! session's packet at a bridge port, its headers in the skb's linear
//! data, read and rewritten in place (addresses, port, TTL, the IPv4
//! header checksum by RFC 1624) with no helper call; only the TCP/UDP
//! checksum goes through `bpf_l4_csum_replace`, which alone knows whether
//! the skb carries a partial (offload) or complete checksum. Anything it
//! does not take (IP options, short linear data, fragments, hairpin...)
//! goes the general way (`port_hook`), which decides as before.
use aya_ebpf::programs::TcContext;
use netbridge_common::{Be16, Be32, CT_DIR_OUT, CT_HAIRPIN, NAT_FAST_PATH, nat_stat};

use crate::{
    nat::{
        Tuple, config, count, ct,
        packet::{ETH_P_IP, IPPROTO_TCP, IPPROTO_UDP, l4_csum, l4_csum_off},
    },
    parse::{ETH_HLEN, ptr_at},
};

const BPF_F_PSEUDO_HDR: u64 = 0x10;
const BPF_F_MARK_MANGLED_0: u64 = 0x20;
/// IPv4 header without options and the first 20 bytes of TCP (UDP: its
/// header and 12 bytes of payload): what the fast path reads.
const HDRS: usize = 40;

/// The headers as bytes, in the linear data after Ethernet.
type Hdrs = [u8; HDRS];

/// An outbound packet of an established SNAT session or a DNAT reply,
/// translated here: returns the uplink's ifindex to send it out of, 0 if
/// the general path is to decide, or a drop reason negated. Its own BPF
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
    // ID in the uplink egress); a TTL to decrement; TCP or UDP.
    if h[0] != 0x45
        || u16::from_be_bytes([h[6], h[7]]) & 0x7fff != 0x4000
        || h[8] <= 1
        || (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
    {
        return 0;
    }
    let (l4_len, flags) = if proto == IPPROTO_TCP {
        (((h[32] >> 4) as u32) * 4, h[33])
    } else {
        (8, 0)
    };
    // A sound L4 header (as `check_l4`) that fits the uplink (as `fits`).
    let size = match skb.gso_size {
        0 => skb.len - ETH_HLEN as u32,
        gso => gso + 20 + l4_len,
    };
    if l4_len < 20 && proto == IPPROTO_TCP
        || (ETH_HLEN + 20) as u32 + l4_len > skb.len
        || size > cfg.uplink_mtu as u32
    {
        return 0;
    }
    let t = Tuple {
        saddr: Be32::from_bytes([h[12], h[13], h[14], h[15]]),
        daddr: Be32::from_bytes([h[16], h[17], h[18], h[19]]),
        sport: Be16::from_bytes([h[20], h[21]]),
        dport: Be16::from_bytes([h[22], h[23]]),
        proto,
    };
    if t.daddr == cfg.uplink_ipv4 {
        // Hairpin: the general path.
        return 0;
    }
    let (addr, port) = match ct::lookup(cfg, &t, CT_DIR_OUT, flags) {
        // A hairpin session: the general path looks it up again (its
        // state and refresh are the same for the same packet).
        ct::Found::Hit(_, _, CT_HAIRPIN) => return 0,
        ct::Found::Hit(addr, port, _) => (addr, port),
        _ => return 0,
    };
    let csum_off = ETH_HLEN + 20 + l4_csum_off(proto);
    let has_csum = proto == IPPROTO_TCP || h[26] | h[27] != 0;
    rewrite_src(h, addr, port);
    // Packet pointers are invalid from here (the helpers may move data).
    match l4_fix(ctx, csum_off, proto, has_csum, &t, (addr, port)) {
        Ok(()) => {
            count(nat_stat::XLATE_OUT);
            count(nat_stat::FAST_OUT);
            cfg.uplink_ifindex as i64
        }
        Err(reason) => -(reason as i64),
    }
}

/// Source address and port to `addr`:`port`, TTL decremented, IPv4 header
/// checksum updated for both (RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m')).
/// One's complement sums do not depend on byte order: words are taken
/// as they sit in memory.
#[inline(always)]
fn rewrite_src(h: &mut Hdrs, addr: Be32, port: Be16) {
    let w = |h: &Hdrs, i: usize| u16::from_ne_bytes([h[i], h[i + 1]]) as u32;
    let a = addr.to_bytes();
    let (new_hi, new_lo) = (
        u16::from_ne_bytes([a[0], a[1]]) as u32,
        u16::from_ne_bytes([a[2], a[3]]) as u32,
    );
    let mut sum = (!w(h, 10) & 0xffff) + (!w(h, 12) & 0xffff) + (!w(h, 14) & 0xffff);
    sum += (!w(h, 8) & 0xffff) + new_hi + new_lo;
    h[8] -= 1;
    sum += w(h, 8);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    let csum = (!sum as u16).to_ne_bytes();
    h[10] = csum[0];
    h[11] = csum[1];
    h[12..16].copy_from_slice(&a);
    let p = port.to_bytes();
    h[20] = p[0];
    h[21] = p[1];
}

/// The TCP/UDP checksum after the source moved from `t`'s to `addr`:`port`
/// (as `packet::rewrite`: the address through the pseudo-header, the port
/// as data; a UDP checksum of 0, "none", left so).
#[inline(always)]
fn l4_fix(
    ctx: &TcContext,
    csum_off: usize,
    proto: u8,
    has_csum: bool,
    t: &Tuple,
    (addr, port): (Be32, Be16),
) -> Result<(), u32> {
    if !has_csum {
        return Ok(());
    }
    let mangled0 = if proto == IPPROTO_UDP {
        BPF_F_MARK_MANGLED_0
    } else {
        0
    };
    if t.saddr != addr {
        let flags = BPF_F_PSEUDO_HDR | mangled0 | 4;
        l4_csum(ctx, csum_off, t.saddr.raw(), addr.raw(), flags)?;
    }
    if t.sport != port {
        let (from, to) = (t.sport.raw() as u32, port.raw() as u32);
        l4_csum(ctx, csum_off, from, to, mangled0 | 2)?;
    }
    Ok(())
}
