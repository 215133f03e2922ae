//! ICMPv6 errors about NAT66 sessions (Destination Unreachable, Packet Too
//! Big, Time Exceeded, Parameter Problem): coming in to the uplink address,
//! the outer destination and the quoted packet's source address and port
//! become the lab endpoint's again, so PMTU discovery and traceroute work
//! from the lab; a lab host's error about a reply it got goes out with the
//! mapping in place of its own address and port. The ICMPv6 checksum covers the pseudo-header (the outer
//! destination) and the whole quote; the quoted L4 checksum covers the
//! quoted addresses: each change is added to the sums it is in.
use aya_ebpf::programs::TcContext;
use netbridge_common::{Be16, CT_DIR_IN, CT_DIR_OUT, Nat6Config, nat_stat};

use super::{
    ct,
    packet::{
        ICMP_CSUM, ICMP_ID, ICMPV6_ECHO_REQUEST, IP6_DADDR, IP6_HLEN, IP6_SADDR, IPPROTO_ICMPV6,
        IPPROTO_TCP, IPPROTO_UDP, Ip6, Pkt6, addr_diff, l4_csum_off, load_addr, pseudo_csum,
        store_addr,
    },
};
use crate::{
    nat::{
        count,
        packet::{l4_csum, load, store},
    },
    parse::ETH_HLEN,
};

/// Translates the error `ip` if it quotes a packet of a session; true if
/// it did. `inbound` (uplink ingress, to the uplink address): the quoted
/// packet went out translated; the outer destination and the quoted source
/// and port become the lab endpoint again. Outbound (egress, from lab host
/// `p.key.saddr`): the quoted packet came in translated; the outer source
/// and the quoted destination and port become the mapping. Quoted ICMPv6:
/// inbound echo requests only (ours; a lab host has no error for a reply).
#[inline(always)]
pub fn translate_error(
    ctx: &TcContext,
    ip: &Ip6,
    cfg: &Nat6Config,
    p: &mut Pkt6,
    inbound: bool,
) -> Result<bool, u32> {
    let q = ip.l4_off + 8;
    let Ok(v) = ctx.load::<u8>(q) else {
        return Ok(false);
    };
    // The translated side: the uplink's address in, the lab host's out.
    let (outer_off, quoted_off, mine, other_off) = if inbound {
        (IP6_DADDR, IP6_SADDR, cfg.uplink_ipv6, IP6_DADDR)
    } else {
        (IP6_SADDR, IP6_DADDR, p.key.saddr, IP6_SADDR)
    };
    load_addr(ctx, q + quoted_off, &mut p.quoted)?;
    if v >> 4 != 6 || p.quoted != mine {
        return Ok(false);
    }
    let proto: u8 = load(ctx, q + 6)?;
    let ql4 = q + IP6_HLEN;
    let (sport, dport): (Be16, Be16) = match proto {
        IPPROTO_TCP | IPPROTO_UDP => (load(ctx, ql4)?, load(ctx, ql4 + 2)?),
        IPPROTO_ICMPV6 if inbound && load::<u8>(ctx, ql4)? == ICMPV6_ECHO_REQUEST => {
            (load(ctx, ql4 + ICMP_ID)?, Be16::ZERO)
        }
        _ => return Ok(false),
    };
    // The key of an answer to the quoted packet.
    let (old_port, port_off, dir) = match () {
        _ if !inbound => (dport, ql4 + 2, CT_DIR_OUT),
        _ if proto == IPPROTO_ICMPV6 => (sport, ql4 + ICMP_ID, CT_DIR_IN),
        _ => (sport, ql4, CT_DIR_IN),
    };
    let (quoted, other) = if inbound {
        (&mut p.key.daddr, &mut p.key.saddr)
    } else {
        (&mut p.key.saddr, &mut p.key.daddr)
    };
    *quoted = p.quoted;
    load_addr(ctx, q + other_off, other)?;
    p.key.sport = dport;
    p.key.dport = sport;
    p.key.proto = proto;
    p.key.dir = dir;
    p.key._pad = [0; 2];
    let ct::Found::Hit = ct::lookup(cfg, p, 0) else {
        return Ok(false);
    };
    let (icmp_csum, port) = (ip.l4_off + ICMP_CSUM, p.nat_port);
    let diff = addr_diff(&p.quoted, &p.nat_addr)?;
    // Outer address: through the pseudo-header.
    store_addr(ctx, ETH_HLEN + outer_off, &p.nat_addr)?;
    pseudo_csum(ctx, icmp_csum, diff, 0)?;
    // Quoted address and port: ICMPv6 payload.
    store_addr(ctx, q + quoted_off, &p.nat_addr)?;
    l4_csum(ctx, icmp_csum, 0, diff, 0)?;
    if old_port != port {
        store(ctx, port_off, &port)?;
        l4_csum(ctx, icmp_csum, old_port.raw() as u32, port.raw() as u32, 2)?;
    }
    let csum = ql4 + l4_csum_off(proto);
    fix_quoted_csum(ctx, icmp_csum, csum, proto, diff, (old_port, port))?;
    count(nat_stat::ICMP6_ERRORS);
    Ok(true)
}

/// The quoted L4 checksum at `off`, if quoted (a short quote may end
/// first; a UDP 0 stays): the address `diff` and the port change added,
/// and its own change added to the ICMPv6 checksum.
#[inline(always)]
fn fix_quoted_csum(
    ctx: &TcContext,
    icmp_csum: usize,
    off: usize,
    proto: u8,
    diff: u32,
    (old_port, port): (Be16, Be16),
) -> Result<(), u32> {
    let Ok(old) = ctx.load::<u16>(off) else {
        return Ok(());
    };
    if proto == IPPROTO_UDP && old == 0 {
        return Ok(());
    }
    // HC' = ~(~HC + diff + ~m + m') (RFC 1624), summed in memory order.
    let sum = (!old) as u64 + diff as u64 + (!old_port.raw()) as u64 + port.raw() as u64;
    let new = !fold(sum);
    store(ctx, off, &new)?;
    l4_csum(ctx, icmp_csum, old as u32, new as u32, 2)
}

#[inline(always)]
fn fold(mut s: u64) -> u16 {
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}
