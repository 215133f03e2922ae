//! Anti-spoofing: a port only speaks with its namespace's own MAC and IPv4
//! addresses (configured by userspace in its PortConfig).
use netbridge_common::{MAX_PORT_IPV4, PortConfig, drop_reason};

use crate::parse::{Eth, L3, ptr_at};

#[inline(always)]
fn allowed_ipv4(port: &PortConfig, ip: [u8; 4]) -> bool {
    if ip == [0; 4] {
        // DHCP discovery and ARP probes (RFC 5227) use 0.0.0.0.
        return true;
    }
    let mut i = 0;
    while i < MAX_PORT_IPV4 {
        if port.ipv4[i] == ip {
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
    if eth.src != port.mac {
        return Err(drop_reason::SPOOFED_MAC);
    }
    match eth.l3 {
        L3::Ipv4 => {
            let src =
                ptr_at::<[u8; 4]>(start, end, eth.l3_off + 12).ok_or(drop_reason::TRUNCATED_L3)?;
            if !allowed_ipv4(port, unsafe { *src }) {
                return Err(drop_reason::SPOOFED_IPV4);
            }
        }
        L3::Arp => {
            // Ethernet/IPv4 ARP: sender MAC at +8, sender IP at +14.
            let sha =
                ptr_at::<[u8; 6]>(start, end, eth.l3_off + 8).ok_or(drop_reason::TRUNCATED_L3)?;
            let spa =
                ptr_at::<[u8; 4]>(start, end, eth.l3_off + 14).ok_or(drop_reason::TRUNCATED_L3)?;
            if unsafe { *sha } != port.mac || !allowed_ipv4(port, unsafe { *spa }) {
                return Err(drop_reason::SPOOFED_ARP);
            }
        }
        _ => {}
    }
    Ok(())
}
