//! Hairpin66 on the bridge ports: a lab host's TCP/UDP packet to the
//! uplink's IPv6 address is translated as if it left through the uplink
//! (the sender's SNAT66 session toward uplink:port, opened here if new)
//! and came back in (the receiver's session toward the sender's mapping,
//! or a forward opening a DNAT66 session), then delivered straight to the
//! receiver's port. The receiver sees the sender's external address and
//! port (RFC 4787 REQ-9 a, RFC 5382 REQ-8), forwards included; its
//! replies, routed to the uplink address as well, take the same way
//! back. The kernel could not do it: the address is its own.
use aya_ebpf::programs::TcContext;
use netbridge_common::{CT_DIR_IN, CT_DIR_OUT, Nat6Config, drop_reason, nat_stat};

use super::{
    ct, decode, fwd,
    packet::{self, IPPROTO_TCP, IPPROTO_UDP, Ip6, Pkt6},
    port,
};
use crate::nat::{count, dnat};

/// The hairpin of `ip` (parsed into `p`, from a lab host to the uplink's
/// address, its hop limit above 1): the receiver's port, or None for the
/// host (ICMPv6: an echo request to the uplink address is the host's).
#[inline(always)]
pub(super) fn hairpin(
    ctx: &TcContext,
    ip: &Ip6,
    p: &mut Pkt6,
    cfg: &Nat6Config,
) -> Result<Option<u32>, u32> {
    if ip.proto != IPPROTO_TCP && ip.proto != IPPROTO_UDP {
        return Ok(None);
    }
    ip.check_l4(ctx)?;
    ip.ports(ctx, p, false, CT_DIR_OUT)?;
    let flags = ip.tcp_flags(ctx);
    // Out: the sender's session toward uplink:port, as at the egress.
    match ct::lookup(cfg, p, flags) {
        ct::Found::Hit => {}
        _ => super::open_snat(cfg, p, flags)?,
    }
    packet::rewrite(ctx, ip, p, true)?;
    // In: from the sender's mapping, as at the ingress.
    p.key.saddr = p.nat_addr;
    p.key.sport = p.nat_port;
    p.key.dir = CT_DIR_IN;
    let hit = match ct::lookup(cfg, p, flags) {
        ct::Found::Hit => true,
        _ => decode(fwd::open(cfg, p, flags))? == 1,
    };
    if !hit {
        // From outside it would reach no lab host either.
        return Err(drop_reason::NAT_FILTERED);
    }
    packet::rewrite(ctx, ip, p, false)?;
    let h = port::host(&p.nat_addr).ok_or(drop_reason::NAT_NO_ROUTE)?;
    port::decrement_hops(ctx)?;
    dnat::readdress(ctx, &h)?;
    count(nat_stat::XLATE6_HAIRPIN);
    Ok(Some(h.ifindex))
}
