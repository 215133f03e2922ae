//! ICMP error translation (RFC 5508): an error about a translated packet
//! quotes that packet; the quoted header and ports are mapped back like the
//! outer header, so traceroute and PMTU discovery work through the NAT.
//! Layers: parse the quote, find its session, rewrite the outer address,
//! the quoted address (and its header checksum), the quoted port, and the
//! quoted L4 checksum; the ICMP checksum follows every change.
use aya_ebpf::programs::TcContext;
use netbridge_common::{Be16, Be32, CT_DIR_IN, NatConfig, drop_reason, nat_stat};

use crate::{
    csum,
    nat::{
        Tuple, count, ct,
        packet::{
            self, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, Ip4, l3_csum, l4_csum, load, store,
        },
    },
};

/// The packet an ICMP error quotes (offsets from the frame start).
struct Quote {
    /// Its IPv4 header.
    ip_off: usize,
    proto: u8,
    saddr: Be32,
    daddr: Be32,
    /// Ports; ICMP query: the identifier in `sport`, its family in `dport`.
    sport: Be16,
    dport: Be16,
    /// The port (identifier) the translation rewrites.
    port_off: usize,
    /// Its L4 checksum (may lie past a short quote).
    csum_off: usize,
}

/// Translates the ICMP error `ip` if it quotes a packet of a NAT session.
/// `dir` IN (uplink ingress): the quoted packet went out translated; its
/// source becomes the inside endpoint again, as does the outer destination.
/// `dir` OUT (uplink egress): the quoted packet came in translated; its
/// destination and the outer source become the external endpoint.
/// Returns whether it was translated (false: no session of ours).
#[inline(always)]
pub fn translate_error(ctx: &TcContext, ip: &Ip4, cfg: &NatConfig, dir: u8) -> Result<bool, u32> {
    let inbound = dir == CT_DIR_IN;
    let Some(q) = parse_quote(ctx, ip, inbound)? else {
        return Ok(false);
    };
    // The session key of a packet answering the quoted one, in `dir`.
    let answer = Tuple {
        saddr: q.daddr,
        daddr: q.saddr,
        sport: q.dport,
        dport: q.sport,
        proto: q.proto,
    };
    // An error neither refreshes nor answers the session (RFC 5508 REQ-6,
    // RFC 7857 sec. 7.1 for outbound ones).
    let Some((addr, port, _)) = ct::peek(cfg, &answer, dir).hit() else {
        return Ok(false);
    };
    // Checked only now: errors of no session are not ours to judge.
    if csum_valid(ctx, ip.ip_off, ip.l4_off) == 0 {
        return Err(drop_reason::NAT_ICMP_BAD_CSUM);
    }
    rewrite_outer(ctx, ip, cfg, inbound, addr)?;
    let old_addr = rewrite_quoted_addr(ctx, ip, &q, inbound, addr)?;
    let old_port = rewrite_quoted_port(ctx, ip, &q, port)?;
    fix_quoted_l4_csum(ctx, ip, &q, (old_addr, addr), (old_port, port))?;
    count(nat_stat::ICMP_ERRORS);
    Ok(true)
}

/// The longest ICMP message [`csum_valid`] checks: an error in a
/// 1500-byte packet (Linux and routers quote at most 576 bytes).
const CSUM_MAX: usize = 1480;

/// Is the ICMP checksum of the message at `l4_off` (to the IPv4 total
/// length) valid? (RFC 5508 REQ-3: the translation adjusts the checksum
/// incrementally, so it would carry a bad one on as good.) 1 valid or
/// longer than [`CSUM_MAX`] (unchecked), 0 bad or cut short. A ones'
/// complement sum does not depend on byte order: native 32-bit words are
/// added and folded. Its own BPF function: the loop stays off the
/// programs' frames and is verified once per call.
#[inline(never)]
fn csum_valid(ctx: &TcContext, ip_off: usize, l4_off: usize) -> u32 {
    let Ok(tot) = ctx.load::<Be16>(ip_off + 2) else {
        return 0;
    };
    let end = ip_off + tot.get() as usize;
    if end > ctx.len() as usize || end < l4_off + 8 {
        return 0;
    }
    if end - l4_off > CSUM_MAX {
        return 1;
    }
    let mut sum: u64 = 0;
    let mut off = l4_off;
    for _ in 0..CSUM_MAX / 8 {
        if off + 8 > end {
            break;
        }
        let Ok(w) = ctx.load::<u64>(off) else {
            return 0;
        };
        sum += (w & 0xffff_ffff) + (w >> 32);
        off += 8;
    }
    sum += csum_tail(ctx, off, end);
    // Fold to 16 bits: at most 2^8 words of 32 bits were added.
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    (sum == 0xffff) as u32
}

/// The last 0-7 bytes from `off` to `end`, as native words (an odd last
/// byte is the first of a word padded with zero).
#[inline(always)]
fn csum_tail(ctx: &TcContext, mut off: usize, end: usize) -> u64 {
    let mut sum = 0u64;
    if off + 4 <= end {
        sum += ctx.load::<u32>(off).unwrap_or(0) as u64;
        off += 4;
    }
    if off + 2 <= end {
        sum += ctx.load::<u16>(off).unwrap_or(0) as u64;
        off += 2;
    }
    if off < end {
        sum += ctx.load::<u8>(off).unwrap_or(0) as u64;
    }
    sum
}

/// The quoted packet, if it is IPv4 TCP, UDP or (inbound: our own) ICMP
/// query request; anything else is not ours to translate.
#[inline(always)]
fn parse_quote(ctx: &TcContext, ip: &Ip4, inbound: bool) -> Result<Option<Quote>, u32> {
    let inner = ip.l4_off + 8;
    let Ok(vihl) = ctx.load::<u8>(inner) else {
        return Ok(None);
    };
    let ihl = (vihl & 0x0f) as usize * 4;
    if vihl >> 4 != 4 || ihl < 20 {
        return Ok(None);
    }
    let proto: u8 = load(ctx, inner + 9)?;
    let l4 = inner + ihl;
    let (sport, dport, port_off) = match proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            let port_off = if inbound { l4 } else { l4 + 2 };
            (load(ctx, l4)?, load(ctx, l4 + 2)?, port_off)
        }
        // Only our own query requests are quoted back to us.
        IPPROTO_ICMP if inbound && packet::is_icmp_query(load(ctx, l4)?) => {
            let family = packet::icmp_family(load(ctx, l4)?);
            (load(ctx, l4 + 4)?, family, l4 + 4)
        }
        _ => return Ok(None),
    };
    Ok(Some(Quote {
        ip_off: inner,
        proto,
        saddr: load(ctx, inner + 12)?,
        daddr: load(ctx, inner + 16)?,
        sport,
        dport,
        port_off,
        csum_off: l4 + packet::l4_csum_off(proto),
    }))
}

/// Adds a 16/32-bit change inside the ICMP message to its checksum.
#[inline(always)]
fn icmp_csum(ctx: &TcContext, ip: &Ip4, from: u32, to: u32, size: u64) -> Result<(), u32> {
    l4_csum(ctx, ip.l4_off + 2, from, to, size)
}

/// Outer header: the destination (inbound), or a private source
/// (outbound; one already the uplink address stays).
#[inline(always)]
fn rewrite_outer(
    ctx: &TcContext,
    ip: &Ip4,
    cfg: &NatConfig,
    inbound: bool,
    addr: Be32,
) -> Result<(), u32> {
    let (off, old) = if inbound {
        (ip.ip_off + 16, ip.daddr)
    } else {
        (ip.ip_off + 12, ip.saddr)
    };
    if (inbound || old != cfg.uplink_ipv4) && old != addr {
        store(ctx, off, &addr)?;
        l3_csum(ctx, ip.ip_off + 10, old.raw(), addr.raw(), 4)?;
    }
    Ok(())
}

/// The quoted source (inbound) or destination (outbound) address, and the
/// quoted IPv4 header checksum. Returns the old address.
#[inline(always)]
fn rewrite_quoted_addr(
    ctx: &TcContext,
    ip: &Ip4,
    q: &Quote,
    inbound: bool,
    addr: Be32,
) -> Result<Be32, u32> {
    let (off, old) = if inbound {
        (q.ip_off + 12, q.saddr)
    } else {
        (q.ip_off + 16, q.daddr)
    };
    if old != addr {
        store(ctx, off, &addr)?;
        icmp_csum(ctx, ip, old.raw(), addr.raw(), 4)?;
        let old_csum: Be16 = load(ctx, q.ip_off + 10)?;
        let new_csum = csum::replace32(old_csum, old, addr);
        store(ctx, q.ip_off + 10, &new_csum)?;
        let (from, to) = (old_csum.raw() as u32, new_csum.raw() as u32);
        icmp_csum(ctx, ip, from, to, 2)?;
    }
    Ok(old)
}

/// The quoted port (or query identifier). Returns the old one.
#[inline(always)]
fn rewrite_quoted_port(ctx: &TcContext, ip: &Ip4, q: &Quote, port: Be16) -> Result<Be16, u32> {
    let old: Be16 = load(ctx, q.port_off)?;
    if old != port {
        store(ctx, q.port_off, &port)?;
        icmp_csum(ctx, ip, old.raw() as u32, port.raw() as u32, 2)?;
    }
    Ok(old)
}

/// The quoted L4 checksum, when the quote is long enough to hold it: it
/// covers the port and (TCP/UDP, pseudo-header) the address changed. A
/// UDP checksum of 0 (none) stays 0.
#[inline(always)]
fn fix_quoted_l4_csum(
    ctx: &TcContext,
    ip: &Ip4,
    q: &Quote,
    (old_addr, addr): (Be32, Be32),
    (old_port, port): (Be16, Be16),
) -> Result<(), u32> {
    let Ok(old) = ctx.load::<Be16>(q.csum_off) else {
        return Ok(());
    };
    if q.proto == IPPROTO_UDP && old == Be16::ZERO {
        return Ok(());
    }
    let mut new = csum::replace16(old, old_port, port);
    if q.proto != IPPROTO_ICMP {
        new = csum::replace32(new, old_addr, addr);
    }
    if q.proto == IPPROTO_UDP && new == Be16::ZERO {
        new = Be16::from_raw(0xffff);
    }
    if new != old {
        store(ctx, q.csum_off, &new)?;
        icmp_csum(ctx, ip, old.raw() as u32, new.raw() as u32, 2)?;
    }
    Ok(())
}
