//! Isolation policy: denied pairs of bridge ports exchange nothing, on the
//! fast path (redirect) and the kernel path (routed via the gateway, or ARP)
//! alike. Broadcast and multicast other than ARP are not filtered.
use aya_ebpf::{macros::map, maps::HashMap};
use netbridge_common::{In6, MAX_PORT_IPV6, MAX_PORTS, PORT_ISOLATED, PolicyKey, drop_reason};

use crate::{
    bridge::Verdict,
    nat::dnat,
    parse::{Eth, IPPROTO_ICMPV6, Ipv6, L3, ptr_at},
};

#[map]
static NB_POLICY: HashMap<PolicyKey, u32> = HashMap::pinned(MAX_PORTS * 4, 0);

#[map]
static NB_HOSTS6: HashMap<[u8; 16], u32> = HashMap::pinned(MAX_PORTS * MAX_PORT_IPV6 as u32, 0);

/// The port of the lab host with IPv6 address `a` (NAT66 hairpin).
#[inline(always)]
pub fn host6(a: &In6) -> Option<u32> {
    // SAFETY: `In6` is 16 bytes of plain words: viewed as its bytes, the
    // map's key (wire order both).
    let k = unsafe { &*(a as *const In6 as *const [u8; 16]) };
    // SAFETY: a copy of the value is taken right away.
    unsafe { NB_HOSTS6.get(k) }.copied()
}

/// The port of the lab host an IPv6 frame is for: the target of Neighbor
/// Solicitations and Advertisements, else the destination address.
#[inline(always)]
fn ipv6_port(eth: &Eth, start: usize, end: usize, v6: &Ipv6) -> Option<u32> {
    let mut off = eth.l3_off + 24;
    if v6.proto == IPPROTO_ICMPV6 && !v6.later_fragment {
        let t = ptr_at::<u8>(start, end, v6.l4_off)?;
        // SAFETY: bounds-checked by ptr_at.
        if matches!(unsafe { *t }, 135 | 136) {
            off = v6.l4_off + 8;
        }
    }
    let a = ptr_at::<[u8; 16]>(start, end, off)?;
    // SAFETY: bounds-checked by ptr_at; a map lookup of plain data.
    unsafe { NB_HOSTS6.get(&*a) }.copied()
}

/// Drops (POLICY_DENIED) a frame from `in_port` (`PORT_*` flags `flags`) whose
/// destination port, known from the bridging verdict or the destination/ARP
/// target IPv4 address, or the IPv6 destination or ND target, is isolated
/// from it. Only ports in an isolated pair
/// (flagged PORT_ISOLATED by userspace) pay for the lookup.
#[inline(always)]
pub fn check(
    flags: u32,
    in_port: u32,
    eth: &Eth,
    start: usize,
    end: usize,
    verdict: &Verdict,
    v6: Option<&Ipv6>,
) -> Result<(), u32> {
    if flags & PORT_ISOLATED == 0 {
        return Ok(());
    }
    let dst = match verdict {
        Verdict::Redirect(out, _) => Some(*out),
        Verdict::Fallback => {
            // IPv4 destination at +16; ARP target protocol address at +24.
            let off = match eth.l3 {
                L3::Ipv4 => Some(16),
                L3::Arp => Some(24),
                _ => None,
            };
            if let Some(v6) = v6 {
                ipv6_port(eth, start, end, v6)
            } else {
                match off.and_then(|o| ptr_at::<[u8; 4]>(start, end, eth.l3_off + o)) {
                    // SAFETY: bounds-checked by ptr_at.
                    Some(p) => dnat::host(unsafe { *p }).map(|h| h.ifindex),
                    None => None,
                }
            }
        }
    };
    if let Some(dst) = dst
        // SAFETY: a map lookup; only its presence is used.
        && unsafe { NB_POLICY.get(&PolicyKey { src: in_port, dst }) }.is_some()
    {
        return Err(drop_reason::POLICY_DENIED);
    }
    Ok(())
}
