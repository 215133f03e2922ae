//! Anti-spoofing: a port only speaks with its namespace's own MAC, IPv4
//! and IPv6 addresses (configured by userspace in its PortConfig); RA
//! guard: only router ports send Router Advertisements (RFC 6105).
use netbridge_common::{
    MAX_PORT_IPV4, MAX_PORT_IPV6, PORT_ANTI_SPOOF, PORT_ROUTER, PortConfig, drop_reason,
};

use crate::parse::{
    Eth, IPPROTO_ICMPV6, IPPROTO_UDP, Ipv6, L3, Mac, mac_at, mac_at_aligned, ptr_at,
};

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
/// port's identity (IPv6: [`check_ipv6`]).
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

/// ICMPv6 types: Router Solicitation/Advertisement, Neighbor
/// Solicitation/Advertisement, Redirect.
const ND_RA: u8 = 134;
const ND_NS: u8 = 135;
const ND_NA: u8 = 136;
const ND_REDIRECT: u8 = 137;
/// ND options carrying a link-layer address: source (in NS) and target
/// (in NA).
const OPT_SLLA: u8 = 1;
const OPT_TLLA: u8 = 2;
/// DHCPv6 server port.
const DHCPV6_SERVER: u16 = 547;

/// The 16 bytes at `p` as two loads (raw network order).
///
/// # Safety
/// `p..p + 16` must be readable.
#[inline(always)]
unsafe fn u128_at(p: *const u8) -> [u64; 2] {
    // SAFETY: per the contract; BPF loads need no alignment here.
    unsafe {
        [
            core::ptr::read_unaligned(p as *const u64),
            core::ptr::read_unaligned(p.add(8) as *const u64),
        ]
    }
}

/// Is `ip` one of the port's IPv6 addresses (link-local included)?
#[inline(always)]
fn own_ipv6(port: &PortConfig, ip: [u64; 2]) -> bool {
    let mut i = 0;
    while i < MAX_PORT_IPV6 {
        // SAFETY: 16 bytes of a map value, 8-aligned (see the asserts).
        let a = unsafe { *(port.ipv6[i].as_ptr() as *const [u64; 2]) };
        if a == ip && a != [0, 0] {
            return true;
        }
        i += 1;
    }
    false
}

/// IPv6 checks of a frame from `port` (`v6`: its parsed header chain):
/// with anti-spoofing, the source must be the namespace's (or :: for DAD)
/// and ND may only claim its own addresses and MAC; on every port not
/// marked as a router, RAs, Redirects and DHCPv6 server replies are
/// dropped. ND messages are never fragmented (RFC 6980).
#[inline(always)]
pub fn check_ipv6(
    port: &PortConfig,
    eth: &Eth,
    start: usize,
    end: usize,
    v6: &Ipv6,
) -> Result<(), u32> {
    let spoof = port.flags & PORT_ANTI_SPOOF != 0;
    // SAFETY: 6 bytes of a map value, 4-aligned.
    let mac = unsafe { mac_at_aligned(port.mac.as_ptr()) };
    if spoof {
        // As `check_source` (which runs later): a forged MAC counts first.
        if eth.src != mac {
            return Err(drop_reason::SPOOFED_MAC);
        }
        let src =
            ptr_at::<[u8; 16]>(start, end, eth.l3_off + 8).ok_or(drop_reason::TRUNCATED_L3)?;
        // SAFETY: bounds-checked by ptr_at.
        let src = unsafe { u128_at(src as *const u8) };
        if src != [0, 0] && !own_ipv6(port, src) {
            return Err(drop_reason::SPOOFED_IPV6);
        }
    }
    if v6.later_fragment {
        return Ok(());
    }
    let router = port.flags & PORT_ROUTER != 0;
    match v6.proto {
        IPPROTO_ICMPV6 => {
            let t = ptr_at::<u8>(start, end, v6.l4_off).ok_or(drop_reason::TRUNCATED_L3)?;
            // SAFETY: bounds-checked by ptr_at.
            let t = unsafe { *t };
            if (t == ND_RA || t == ND_REDIRECT) && !router {
                return Err(drop_reason::RA_GUARD);
            }
            if (133..=137).contains(&t) && v6.fragment {
                return Err(drop_reason::IPV6_FRAGMENT);
            }
            if spoof && (t == ND_NS || t == ND_NA) {
                check_nd(port, mac, t, start, end, v6.l4_off)?;
            }
        }
        IPPROTO_UDP if !router => {
            let p = ptr_at::<[u8; 2]>(start, end, v6.l4_off).ok_or(drop_reason::TRUNCATED_L3)?;
            // SAFETY: bounds-checked by ptr_at.
            if u16::from_be_bytes(unsafe { *p }) == DHCPV6_SERVER {
                return Err(drop_reason::DHCPV6_GUARD);
            }
        }
        _ => {}
    }
    Ok(())
}

/// A Neighbor Solicitation (`t`) or Advertisement at `off` from a port
/// with MAC `mac`: an NA's target must be the port's address, and the
/// link-layer address option right after the target (the kernel sends it
/// first), if any, must be `mac`.
#[inline(always)]
fn check_nd(
    port: &PortConfig,
    mac: Mac,
    t: u8,
    start: usize,
    end: usize,
    off: usize,
) -> Result<(), u32> {
    // Type, code, checksum, flags/reserved, then the 16-byte target.
    let target = ptr_at::<[u8; 16]>(start, end, off + 8).ok_or(drop_reason::TRUNCATED_L3)?;
    // SAFETY: bounds-checked by ptr_at.
    if t == ND_NA && !own_ipv6(port, unsafe { u128_at(target as *const u8) }) {
        return Err(drop_reason::SPOOFED_ND);
    }
    // Option: type, length (in 8 bytes), then the MAC.
    let Some(opt) = ptr_at::<[u8; 8]>(start, end, off + 24) else {
        return Ok(());
    };
    let opt = opt as *const u8;
    // SAFETY: bounds-checked by ptr_at.
    let (kind, lladdr) = unsafe { (*opt, mac_at(opt.add(2))) };
    let want = if t == ND_NA { OPT_TLLA } else { OPT_SLLA };
    if kind == want && lladdr != mac {
        return Err(drop_reason::SPOOFED_ND);
    }
    Ok(())
}
