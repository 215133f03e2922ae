//! Wire (network, big-endian) byte order as a type, like `__be16`/`__be32`
//! in C headers: a field that holds packet bytes cannot be mixed up with a
//! host-order number without a visible conversion.
//!
//! The stored value is the bytes as they sit in the packet, read as a
//! native integer ([`Be16::raw`]): what a packet load returns and a packet
//! store or a checksum helper takes. [`Be16::get`] gives the number in host
//! order; [`Be16::from_host`] makes one from it.
use core::{fmt, net::Ipv4Addr};

use bytemuck::{Pod, Zeroable};

/// A 16-bit value in network byte order (a port, an ICMP identifier).
#[repr(transparent)]
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct Be16(u16);

/// A 32-bit value in network byte order (an IPv4 address).
#[repr(transparent)]
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct Be32(u32);

impl Be16 {
    pub const ZERO: Be16 = Be16(0);

    /// From a host-order number.
    #[inline(always)]
    pub const fn from_host(v: u16) -> Be16 {
        Be16(v.to_be())
    }

    /// The number in host order.
    #[inline(always)]
    pub const fn get(self) -> u16 {
        u16::from_be(self.0)
    }

    /// From the packet bytes read as a native integer (a packet load).
    #[inline(always)]
    pub const fn from_raw(raw: u16) -> Be16 {
        Be16(raw)
    }

    /// The packet bytes as a native integer (a packet store, csum helpers).
    #[inline(always)]
    pub const fn raw(self) -> u16 {
        self.0
    }

    #[inline(always)]
    pub const fn from_bytes(b: [u8; 2]) -> Be16 {
        Be16(u16::from_ne_bytes(b))
    }

    /// The bytes in wire order.
    #[inline(always)]
    pub const fn to_bytes(self) -> [u8; 2] {
        self.0.to_ne_bytes()
    }
}

impl Be32 {
    pub const ZERO: Be32 = Be32(0);

    /// From a host-order number.
    #[inline(always)]
    pub const fn from_host(v: u32) -> Be32 {
        Be32(v.to_be())
    }

    /// The number in host order.
    #[inline(always)]
    pub const fn get(self) -> u32 {
        u32::from_be(self.0)
    }

    /// From the packet bytes read as a native integer (a packet load).
    #[inline(always)]
    pub const fn from_raw(raw: u32) -> Be32 {
        Be32(raw)
    }

    /// The packet bytes as a native integer (a packet store, csum helpers).
    #[inline(always)]
    pub const fn raw(self) -> u32 {
        self.0
    }

    /// From the bytes in wire order (an address's octets).
    #[inline(always)]
    pub const fn from_bytes(b: [u8; 4]) -> Be32 {
        Be32(u32::from_ne_bytes(b))
    }

    /// The bytes in wire order (an address's octets).
    #[inline(always)]
    pub const fn to_bytes(self) -> [u8; 4] {
        self.0.to_ne_bytes()
    }
}

/// An address's octets, in wire order.
impl From<[u8; 4]> for Be32 {
    fn from(b: [u8; 4]) -> Be32 {
        Be32::from_bytes(b)
    }
}

impl From<Ipv4Addr> for Be32 {
    fn from(a: Ipv4Addr) -> Be32 {
        Be32::from_bytes(a.octets())
    }
}

impl From<Be32> for Ipv4Addr {
    fn from(a: Be32) -> Ipv4Addr {
        Ipv4Addr::from(a.to_bytes())
    }
}

impl fmt::Debug for Be16 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Be16({})", self.get())
    }
}

impl fmt::Debug for Be32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Be32({:#010x})", self.get())
    }
}

const _: () = assert!(core::mem::size_of::<Be16>() == 2);
const _: () = assert!(core::mem::size_of::<Be32>() == 4);
const _: () = assert!(Be16::from_host(0x1234).to_bytes()[0] == 0x12);
const _: () = assert!(Be32::from_bytes([192, 0, 2, 1]).get() == 0xc000_0201);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_order_round_trips() {
        let p = Be16::from_host(8080);
        assert_eq!(p.to_bytes(), [0x1f, 0x90]);
        assert_eq!(p.get(), 8080);
        assert_eq!(Be16::from_bytes([0x1f, 0x90]), p);
        assert_eq!(Be16::from_raw(p.raw()), p);
        let a = Be32::from(Ipv4Addr::new(203, 0, 113, 1));
        assert_eq!(a.to_bytes(), [203, 0, 113, 1]);
        assert_eq!(a.get(), 0xcb00_7101);
        assert_eq!(Ipv4Addr::from(a), Ipv4Addr::new(203, 0, 113, 1));
        assert_eq!(Be32::from_host(a.get()), a);
    }
}
