//! ICMPv6 errors about NAT66 sessions (Destination Unreachable, Packet Too
//! Big, Time Exceeded, Parameter Problem) coming in to the uplink address:
//! the outer destination and the quoted packet's source address and port
//! become the lab endpoint's again, so PMTU discovery and traceroute work
//! from the lab. The ICMPv6 checksum covers the pseudo-header (the outer
//! destination) and the whole quote; the quoted L4 checksum covers the
//! quoted addresses: each change is added to the sums it is in.
use aya_ebpf::programs::TcContext;
use netbridge_common::{Be16, CT_DIR_IN, Nat6Config, nat_stat};

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

/// Translates the error `ip` (to the uplink address, in `p.key`) if it
/// quotes a packet of a session; true if it did.
#[inline(always)]
pub fn translate_error(
    ctx: &TcContext,
    ip: &Ip6,
    cfg: &Nat6Config,
    p: &mut Pkt6,
) -> Result<bool, u32> {
    let q = ip.l4_off + 8;
    let Ok(v) = ctx.load::<u8>(q) else {
        return Ok(false);
    };
    load_addr(ctx, q + IP6_SADDR, &mut p.quoted)?;
    if v >> 4 != 6 || p.quoted != cfg.uplink_ipv6 {
        return Ok(false);
    }
    let proto: u8 = load(ctx, q + 6)?;
    let ql4 = q + IP6_HLEN;
    let (sport, dport, port_off): (Be16, Be16, usize) = match proto {
        IPPROTO_TCP | IPPROTO_UDP => (load(ctx, ql4)?, load(ctx, ql4 + 2)?, ql4),
        IPPROTO_ICMPV6 if load::<u8>(ctx, ql4)? == ICMPV6_ECHO_REQUEST => {
            (load(ctx, ql4 + ICMP_ID)?, Be16::ZERO, ql4 + ICMP_ID)
        }
        _ => return Ok(false),
    };
    // The key of an answer to the quoted packet.
    load_addr(ctx, q + IP6_DADDR, &mut p.key.saddr)?;
    p.key.daddr = p.quoted;
    p.key.sport = dport;
    p.key.dport = sport;
    p.key.proto = proto;
    p.key.dir = CT_DIR_IN;
    p.key._pad = [0; 2];
    let ct::Found::Hit = ct::lookup(cfg, p, 0) else {
        return Ok(false);
    };
    let (icmp_csum, port) = (ip.l4_off + ICMP_CSUM, p.nat_port);
    let diff = addr_diff(&p.quoted, &p.nat_addr)?;
    // Outer destination: through the pseudo-header.
    store_addr(ctx, ETH_HLEN + IP6_DADDR, &p.nat_addr)?;
    pseudo_csum(ctx, icmp_csum, diff, 0)?;
    // Quoted source and port: ICMPv6 payload.
    store_addr(ctx, q + IP6_SADDR, &p.nat_addr)?;
    l4_csum(ctx, icmp_csum, 0, diff, 0)?;
    if sport != port {
        store(ctx, port_off, &port)?;
        l4_csum(ctx, icmp_csum, sport.raw() as u32, port.raw() as u32, 2)?;
    }
    let csum = ql4 + l4_csum_off(proto);
    fix_quoted_csum(ctx, icmp_csum, csum, proto, diff, (sport, port))?;
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
