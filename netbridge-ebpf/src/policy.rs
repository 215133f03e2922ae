//! Isolation policy: denied pairs of bridge ports exchange nothing, on the
//! fast path (redirect) and the kernel path (routed via the gateway, or ARP)
//! alike. Broadcast and multicast other than ARP are not filtered.
use aya_ebpf::{macros::map, maps::HashMap};
use netbridge_common::{MAX_PORTS, PORT_ISOLATED, PolicyKey, drop_reason};

use crate::{
    bridge::Verdict,
    nat::dnat,
    parse::{Eth, L3, ptr_at},
};

#[map]
static NB_POLICY: HashMap<PolicyKey, u32> = HashMap::pinned(MAX_PORTS * 4, 0);

/// Drops (POLICY_DENIED) a frame from `in_port` (`PORT_*` flags `flags`) whose
/// destination port, known from the bridging verdict or the destination/ARP
/// target IPv4 address, is isolated from it. Only ports in an isolated pair
/// (flagged PORT_ISOLATED by userspace) pay for the lookup.
#[inline(always)]
pub fn check(
    flags: u32,
    in_port: u32,
    eth: &Eth,
    start: usize,
    end: usize,
    verdict: &Verdict,
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
            match off.and_then(|o| ptr_at::<[u8; 4]>(start, end, eth.l3_off + o)) {
                // SAFETY: bounds-checked by ptr_at.
                Some(p) => dnat::host(unsafe { *p }).map(|h| h.ifindex),
                None => None,
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
