//! ICMP error translation (RFC 5508): an error about a translated packet
//! quotes that packet; the quoted header and ports are mapped back like the
//! outer header, so traceroute and PMTU discovery work through the NAT.
use aya_ebpf::programs::TcContext;
use netbridge_common::{CT_DIR_IN, NatConfig, drop_reason, nat_stat};

use crate::{
    csum,
    nat::{
        Tuple, count, ct,
        packet::{ICMP_ECHO, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, Ip4, load, store},
    },
};

/// Adds a 16/32-bit change inside the ICMP message to its checksum.
#[inline(always)]
fn icmp_csum(ctx: &TcContext, off: usize, from: u32, to: u32, size: u64) -> Result<(), u32> {
    ctx.l4_csum_replace(off, from as u64, to as u64, size)
        .map_err(|_| drop_reason::NAT_REWRITE)
}

/// Translates the ICMP error `ip` if it quotes a packet of a NAT session.
/// `dir` IN (uplink ingress): the quoted packet went out translated; its
/// source becomes the inside endpoint again, as does the outer destination.
/// `dir` OUT (uplink egress): the quoted packet came in translated; its
/// destination and the outer source become the external endpoint.
#[inline(always)]
pub fn translate_error(ctx: &TcContext, ip: &Ip4, cfg: &NatConfig, dir: u8) -> Result<(), u32> {
    let icmp_csum_off = ip.l4_off + 2;
    let inner = ip.l4_off + 8;
    let vihl: u8 = match ctx.load(inner) {
        Ok(v) => v,
        Err(_) => return Ok(()),
    };
    let ihl = (vihl & 0x0f) as usize * 4;
    if vihl >> 4 != 4 || ihl < 20 {
        return Ok(());
    }
    let proto: u8 = load(ctx, inner + 9)?;
    let isaddr: u32 = load(ctx, inner + 12)?;
    let idaddr: u32 = load(ctx, inner + 16)?;
    let l4 = inner + ihl;
    let inbound = dir == CT_DIR_IN;
    // Quoted ports (ICMP echo: identifier in the "inside port" slot), the
    // offset of the port we rewrite, and of the quoted L4 checksum.
    let (isport, idport, port_off, l4_csum_off) = match proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            let sp: u16 = load(ctx, l4)?;
            let dp: u16 = load(ctx, l4 + 2)?;
            let po = if inbound { l4 } else { l4 + 2 };
            (
                sp,
                dp,
                po,
                if proto == IPPROTO_TCP {
                    l4 + 16
                } else {
                    l4 + 6
                },
            )
        }
        IPPROTO_ICMP if inbound => {
            // Only our own echo requests are quoted back to us.
            let ty: u8 = load(ctx, l4)?;
            if ty != ICMP_ECHO {
                return Ok(());
            }
            let id: u16 = load(ctx, l4 + 4)?;
            (id, 0, l4 + 4, l4 + 2)
        }
        _ => return Ok(()),
    };
    // The session key of a packet answering the quoted one, in `dir`.
    let answer = Tuple {
        saddr: idaddr,
        daddr: isaddr,
        sport: idport,
        dport: isport,
        proto,
    };
    let ct::Found::Hit(addr, port, _) = ct::lookup(cfg, &answer, dir, 0) else {
        return Ok(());
    };
    let uplink = u32::from_ne_bytes(cfg.uplink_ipv4);
    // Outer header: destination (inbound) or a private source (outbound).
    let (outer_off, outer_old) = if inbound {
        (ip.ip_off + 16, ip.daddr)
    } else {
        (ip.ip_off + 12, ip.saddr)
    };
    if (inbound || outer_old != uplink) && outer_old != addr {
        store(ctx, outer_off, &addr)?;
        ctx.l3_csum_replace(ip.ip_off + 10, outer_old as u64, addr as u64, 4)
            .map_err(|_| drop_reason::NAT_REWRITE)?;
    }
    // Quoted address, and the quoted IPv4 header checksum.
    let (iaddr_off, iaddr_old) = if inbound {
        (inner + 12, isaddr)
    } else {
        (inner + 16, idaddr)
    };
    if iaddr_old != addr {
        store(ctx, iaddr_off, &addr)?;
        icmp_csum(ctx, icmp_csum_off, iaddr_old, addr, 4)?;
        let old: u16 = load(ctx, inner + 10)?;
        let new = csum::replace32(old, iaddr_old, addr);
        store(ctx, inner + 10, &new)?;
        icmp_csum(ctx, icmp_csum_off, old as u32, new as u32, 2)?;
    }
    // Quoted port / identifier.
    let port_old: u16 = load(ctx, port_off)?;
    if port_old != port {
        store(ctx, port_off, &port)?;
        icmp_csum(ctx, icmp_csum_off, port_old as u32, port as u32, 2)?;
    }
    // Quoted L4 checksum, when the quote is long enough to hold it.
    if let Ok(old) = ctx.load::<u16>(l4_csum_off)
        && !(proto == IPPROTO_UDP && old == 0)
    {
        let mut new = csum::replace16(old, port_old, port);
        if proto != IPPROTO_ICMP {
            new = csum::replace32(new, iaddr_old, addr);
        }
        if proto == IPPROTO_UDP && new == 0 {
            new = 0xffff;
        }
        if new != old {
            store(ctx, l4_csum_off, &new)?;
            icmp_csum(ctx, icmp_csum_off, old as u32, new as u32, 2)?;
        }
    }
    count(nat_stat::ICMP_ERRORS);
    Ok(())
}
