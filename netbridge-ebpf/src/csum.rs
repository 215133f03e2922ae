//! Incremental Internet checksum updates (RFC 1624) for fields the kernel's
//! csum helpers cannot reach: headers quoted inside ICMP errors.
//!
//! Values are raw 16-bit words as loaded from the packet (memory order); the
//! one's complement sum is byte-order independent, so no swapping is needed.

#[inline(always)]
fn fold(mut s: u32) -> u16 {
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// Checksum `hc` after one 16-bit word changed from `old` to `new`:
/// HC' = ~(~HC + ~m + m').
#[inline(always)]
pub fn replace16(hc: u16, old: u16, new: u16) -> u16 {
    !fold(!hc as u32 + !old as u32 + new as u32)
}

/// Checksum `hc` after a 32-bit field (two words) changed.
#[inline(always)]
pub fn replace32(hc: u16, old: u32, new: u32) -> u16 {
    let hc = replace16(hc, old as u16, new as u16);
    replace16(hc, (old >> 16) as u16, (new >> 16) as u16)
}
