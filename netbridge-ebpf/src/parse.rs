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

/// A MAC address as loaded from a frame or a map: its 6 wire-order bytes
/// in the low 48 bits of a little-endian u64 (byte 0, with the group bit,
/// lowest; the top 16 bits zero). One register: compared in one instruction.
pub type Mac = u64;

/// The MAC at `p`, assembled once into one register.
///
/// The bytes are loaded one by one (packet data has no alignment the
/// compiler may assume, and this LLVM has BPF split unaligned loads), and
/// the result goes through a volatile stack slot so that LLVM keeps one
/// 64-bit value instead of carrying (and spilling) six bytes to every use.
///
/// # Safety
/// `p..p + 6` must be readable (bounds-checked packet data or a map value).
#[inline(always)]
pub unsafe fn mac_at(p: *const u8) -> Mac {
    let mut b = [0u8; 8];
    // SAFETY: in bounds per the contract.
    unsafe { core::ptr::copy_nonoverlapping(p, b.as_mut_ptr(), 6) };
    let mac = u64::from_le_bytes(b);
    // SAFETY: a local, read back as written.
    unsafe { core::ptr::read_volatile(&mac) }
}

/// The MAC in a map value field at `p`, 4-byte aligned (see the offset
/// asserts in netbridge-common): two loads.
///
/// # Safety
/// `p..p + 6` must be readable and `p` 4-byte aligned.
#[inline(always)]
pub unsafe fn mac_at_aligned(p: *const u8) -> Mac {
    // SAFETY: per the contract.
    let (lo, hi) = unsafe { (*(p as *const u32), *(p.add(4) as *const u16)) };
    lo as u64 | (hi as u64) << 32
}

/// Group (multicast/broadcast) address?
#[inline(always)]
pub fn is_multicast(mac: Mac) -> bool {
    mac & 1 != 0
}

/// Result of parsing the L2 header.
pub struct Eth {
    pub dst: Mac,
    pub src: Mac,
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
    // SAFETY: bounds-checked by ptr_at.
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
    // The ethertype load above proved 14 bytes.
    let p = start as *const u8;
    // SAFETY: bytes 0..12 are within the frame (checked above).
    let (dst, src) = unsafe { (mac_at(p), mac_at(p.add(6))) };
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
    // SAFETY: bounds-checked by ptr_at.
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
