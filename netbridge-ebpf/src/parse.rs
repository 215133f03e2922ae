//! Bounds-checked header parsing shared by every program.
use netbridge_common::drop_reason;

pub const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
/// 802.1Q and 802.1ad (QinQ) tags followed; deeper stacks are dropped.
const MAX_VLAN_DEPTH: usize = 2;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_ARP: u16 = 0x0806;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum L3 {
    Ipv4,
    Ipv6,
    Arp,
    Other,
}

/// Result of parsing the L2 header.
pub struct Eth {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub l3: L3,
    /// Offset of the L3 header from the start of the frame.
    pub l3_off: usize,
    pub vlan_tags: u8,
}

/// Pointer to a `T` at `off`, or `None` if it would cross `end`.
#[inline(always)]
pub fn ptr_at<T>(start: usize, end: usize, off: usize) -> Option<*const T> {
    if start + off + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *const T)
}

#[inline(always)]
fn be16_at(start: usize, end: usize, off: usize) -> Result<u16, ()> {
    let p = ptr_at::<[u8; 2]>(start, end, off).ok_or(())?;
    Ok(u16::from_be_bytes(unsafe { *p }))
}

/// Parses Ethernet and up to [`MAX_VLAN_DEPTH`] VLAN tags.
#[inline(always)]
pub fn parse_eth(start: usize, end: usize) -> Result<Eth, u32> {
    let mut proto = be16_at(start, end, 12).map_err(|_| drop_reason::TRUNCATED_ETH)?;
    let mut off = ETH_HLEN;
    let mut tags = 0u8;
    for _ in 0..MAX_VLAN_DEPTH {
        if proto != ETH_P_8021Q && proto != ETH_P_8021AD {
            break;
        }
        proto = be16_at(start, end, off + 2).map_err(|_| drop_reason::TRUNCATED_ETH)?;
        off += VLAN_HLEN;
        tags += 1;
    }
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        return Err(drop_reason::VLAN_TOO_DEEP);
    }
    let l3 = match proto {
        ETH_P_IP => L3::Ipv4,
        ETH_P_IPV6 => L3::Ipv6,
        ETH_P_ARP => L3::Arp,
        _ => L3::Other,
    };
    let macs = ptr_at::<[u8; 12]>(start, end, 0).ok_or(drop_reason::TRUNCATED_ETH)?;
    let macs = unsafe { *macs };
    let mut dst = [0u8; 6];
    let mut src = [0u8; 6];
    dst.copy_from_slice(&macs[..6]);
    src.copy_from_slice(&macs[6..]);
    Ok(Eth {
        dst,
        src,
        l3,
        l3_off: off,
        vlan_tags: tags,
    })
}

/// Checks that a whole, well-formed IPv4 header sits at `off`.
#[inline(always)]
pub fn check_ipv4(start: usize, end: usize, off: usize) -> Result<(), u32> {
    let vihl = ptr_at::<u8>(start, end, off).ok_or(drop_reason::TRUNCATED_L3)?;
    let vihl = unsafe { *vihl };
    let ihl = (vihl & 0x0f) as usize;
    if vihl >> 4 != 4 || ihl < 5 {
        return Err(drop_reason::BAD_IPV4_HEADER);
    }
    // 20-byte fixed header must be present; options are bounds-checked by users.
    ptr_at::<[u8; 20]>(start, end, off).ok_or(drop_reason::TRUNCATED_L3)?;
    if start + off + ihl * 4 > end {
        return Err(drop_reason::TRUNCATED_L3);
    }
    Ok(())
}
