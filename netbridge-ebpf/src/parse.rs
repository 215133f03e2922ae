//! Bounds-checked header parsing shared by every program.
use aya_ebpf::{macros::map, maps::PerCpuArray};
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

pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;
/// IPv6 fixed header.
pub const IPV6_HLEN: usize = 40;
/// Extension headers followed before the upper-layer header; a longer
/// chain is dropped (IPV6_EXT_CHAIN).
const MAX_IPV6_EXT: usize = 4;

/// Where a frame's IPv6 upper-layer header is.
#[derive(Clone, Copy)]
pub struct Ipv6 {
    /// Upper-layer protocol (the last Next Header).
    pub proto: u8,
    /// Offset of the upper-layer header from the start of the frame.
    pub l4_off: usize,
    /// Part of a fragmented packet (a first fragment: the upper-layer
    /// header is in it, RFC 7112).
    pub fragment: bool,
    /// A non-first fragment: no upper-layer header at `l4_off`.
    pub later_fragment: bool,
}

/// Checks the IPv6 header at `off` of a frame `len` bytes long (the skb's
/// length: the linear data may be shorter) and walks its extension headers
/// (hop-by-hop, first only; routing, fragment, destination options, AH) to
/// the upper-layer header, which a first fragment must hold (RFC 7112).
#[inline(always)]
pub fn check_ipv6(start: usize, end: usize, off: usize, len: usize) -> Result<Ipv6, u32> {
    let h = ptr_at::<[u8; IPV6_HLEN]>(start, end, off).ok_or(drop_reason::TRUNCATED_L3)?;
    // SAFETY: bounds-checked by ptr_at.
    let (vtc, plen, mut nh) = unsafe { ((*h)[0], u16::from_be_bytes([(*h)[4], (*h)[5]]), (*h)[6]) };
    if vtc >> 4 != 6 || off + IPV6_HLEN + plen as usize > len {
        return Err(drop_reason::BAD_IPV6_HEADER);
    }
    let mut l = off + IPV6_HLEN;
    let (mut fragment, mut later_fragment) = (false, false);
    for i in 0..MAX_IPV6_EXT {
        if !matches!(nh, 0 | 43 | 44 | 51 | 60) {
            break;
        }
        // Hop-by-hop comes right after the fixed header or not at all
        // (RFC 8200 sec. 4.1).
        if nh == 0 && i > 0 {
            return Err(drop_reason::IPV6_EXT_CHAIN);
        }
        // Next Header and Hdr Ext Len (or, in a fragment header, reserved);
        // cut short in a first fragment: RFC 7112.
        let p = ptr_at::<[u8; 4]>(start, end, l).ok_or(if fragment {
            drop_reason::IPV6_FRAGMENT
        } else {
            drop_reason::IPV6_EXT_CHAIN
        })?;
        // SAFETY: bounds-checked by ptr_at.
        let e = unsafe { *p };
        let hlen = match nh {
            0 | 43 | 60 => (e[1] as usize + 1) * 8,
            51 => (e[1] as usize + 2) * 4,
            44 => {
                fragment = true;
                // Fragment Offset: the top 13 bits of bytes 2..4.
                later_fragment = u16::from_be_bytes([e[2], e[3]]) & 0xfff8 != 0;
                8
            }
            _ => (e[1] as usize + 1) * 8,
        };
        nh = e[0];
        l += hlen;
        if later_fragment {
            break;
        }
    }
    if !later_fragment {
        if matches!(nh, 0 | 43 | 44 | 51 | 60) {
            return Err(drop_reason::IPV6_EXT_CHAIN);
        }
        // No Next Header (59) has nothing after it; any other upper-layer
        // header starts with at least 4 bytes (ports, ICMPv6 type, code).
        if nh != 59 && ptr_at::<[u8; 4]>(start, end, l).is_none() {
            return Err(if fragment {
                drop_reason::IPV6_FRAGMENT
            } else {
                drop_reason::TRUNCATED_L3
            });
        }
    }
    Ok(launder(Ipv6 {
        proto: nh,
        l4_off: l,
        fragment,
        later_fragment,
    }))
}

/// Scratch for [`launder`]: [proto, l4_off, fragment, later_fragment].
#[map]
static NB_IPV6_SCRATCH: PerCpuArray<[u32; 4]> = PerCpuArray::with_max_entries(1, 0);

/// `v6` stored and loaded back through a per-CPU map. The verifier then
/// knows only ranges, not which of the header chain's paths produced the
/// values, so the rest of the program is verified once rather than once
/// per path (without this the ingress program passes the verifier's
/// 1M-instruction limit).
#[inline(always)]
fn launder(v6: Ipv6) -> Ipv6 {
    let Some(p) = NB_IPV6_SCRATCH.get_ptr_mut(0) else {
        return v6;
    };
    let raw = [
        v6.proto as u32,
        v6.l4_off as u32,
        v6.fragment as u32,
        v6.later_fragment as u32,
    ];
    // SAFETY: this CPU's value of a per-CPU map; programs do not nest on
    // one CPU for these hooks. Volatile: the loads must really happen.
    let r = unsafe {
        core::ptr::write_volatile(p, raw);
        core::ptr::read_volatile(p)
    };
    Ipv6 {
        proto: r[0] as u8,
        // Bounded again for the verifier, low enough that an offset plus a
        // header stays under its packet-offset limit (0xffff); the chain
        // walked is at most 40 + 4 * 2048 bytes past the L3 offset.
        l4_off: (r[1] & 0x3fff) as usize,
        fragment: r[2] != 0,
        later_fragment: r[3] != 0,
    }
}
