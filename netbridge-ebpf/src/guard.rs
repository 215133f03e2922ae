//! Anti-spoofing: a port only speaks with its namespace's own MAC and IPv4
//! addresses (configured by userspace in its PortConfig).
use netbridge_common::{MAX_PORT_IPV4, PortConfig, drop_reason};

use crate::parse::{Eth, L3, mac_at, mac_at_aligned, ptr_at};

/// The 4 bytes at `p` as one load (raw network order).
///
/// # Safety
/// `p..p + 4` must be readable.
#[inline(always)]
unsafe fn u32_at(p: *const u8) -> u32 {
    // SAFETY: per the contract; BPF loads need no alignment here.
    unsafe { core::ptr::read_unaligned(p as *const u32) }
}

#[inline(always)]
fn allowed_ipv4(port: &PortConfig, ip: u32) -> bool {
    if ip == 0 {
        // DHCP discovery and ARP probes (RFC 5227) use 0.0.0.0.
        return true;
    }
    let mut i = 0;
    while i < MAX_PORT_IPV4 {
        // SAFETY: 4 bytes of a map value, 4-aligned.
        if unsafe { *(port.ipv4[i].as_ptr() as *const u32) } == ip {
            return true;
        }
        i += 1;
    }
    false
}

/// Checks the frame's source MAC, IPv4 source and ARP sender against the
/// port's identity. IPv6 sources are not checked (link-local addresses are
/// picked by the kernel); see the README.
#[inline(always)]
pub fn check_source(port: &PortConfig, eth: &Eth, start: usize, end: usize) -> Result<(), u32> {
    // SAFETY: 6 bytes of a map value, 4-aligned.
    let mac = unsafe { mac_at_aligned(port.mac.as_ptr()) };
    if eth.src != mac {
        return Err(drop_reason::SPOOFED_MAC);
    }
    match eth.l3 {
        L3::Ipv4 => {
            let src =
                ptr_at::<[u8; 4]>(start, end, eth.l3_off + 12).ok_or(drop_reason::TRUNCATED_L3)?;
            // SAFETY: bounds-checked by ptr_at.
            if !allowed_ipv4(port, unsafe { u32_at(src as *const u8) }) {
                return Err(drop_reason::SPOOFED_IPV4);
            }
        }
        L3::Arp => {
            // Ethernet/IPv4 ARP: sender MAC at +8, sender IP at +14.
            let sender =
                ptr_at::<[u8; 10]>(start, end, eth.l3_off + 8).ok_or(drop_reason::TRUNCATED_L3)?;
            let p = sender as *const u8;
            // SAFETY: the 10 bytes were bounds-checked by ptr_at.
            let (sha, spa) = unsafe { (mac_at(p), u32_at(p.add(6))) };
            if sha != mac || !allowed_ipv4(port, spa) {
                return Err(drop_reason::SPOOFED_ARP);
            }
        }
        _ => {}
    }
    Ok(())
}
