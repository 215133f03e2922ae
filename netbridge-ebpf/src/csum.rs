//! Incremental Internet checksum updates (RFC 1624) for fields the kernel's
//! csum helpers cannot reach: headers quoted inside ICMP errors.
//!
//! The one's complement sum is byte-order independent: the words are
//! summed as they sit in memory ([`Be16::raw`]), no swapping needed.
use netbridge_common::{Be16, Be32};

#[inline(always)]
fn fold(mut s: u32) -> u16 {
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// Checksum `hc` after one 16-bit word changed from `old` to `new`:
/// HC' = ~(~HC + ~m + m').
#[inline(always)]
pub fn replace16(hc: Be16, old: Be16, new: Be16) -> Be16 {
    let (hc, old, new) = (hc.raw(), old.raw(), new.raw());
    Be16::from_raw(!fold(!hc as u32 + !old as u32 + new as u32))
}

/// Checksum `hc` after a 32-bit field (two words) changed.
#[inline(always)]
pub fn replace32(hc: Be16, old: Be32, new: Be32) -> Be16 {
    let (old, new) = (old.raw(), new.raw());
    let word = |v: u32| Be16::from_raw(v as u16);
    let hc = replace16(hc, word(old), word(new));
    replace16(hc, word(old >> 16), word(new >> 16))
}
