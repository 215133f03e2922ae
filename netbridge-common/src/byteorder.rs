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

/// `$name`: a `$int` in network byte order, with its conversions.
macro_rules! wire_int {
    ($(#[$doc:meta])* $name:ident, $int:ty, $bytes:literal) => {
        $(#[$doc])*
        #[repr(transparent)]
        #[derive(Clone, Copy, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
        pub struct $name($int);

        impl $name {
            pub const ZERO: $name = $name(0);

            /// From a host-order number.
            #[inline(always)]
            pub const fn from_host(v: $int) -> $name {
                $name(v.to_be())
            }

            /// The number in host order.
            #[inline(always)]
            pub const fn get(self) -> $int {
                <$int>::from_be(self.0)
            }

            /// From the packet bytes read as a native integer (a packet load).
            #[inline(always)]
            pub const fn from_raw(raw: $int) -> $name {
                $name(raw)
            }

            /// The packet bytes as a native integer (a packet store, csum
            /// helpers).
            #[inline(always)]
            pub const fn raw(self) -> $int {
                self.0
            }

            /// From the bytes in wire order.
            #[inline(always)]
            pub const fn from_bytes(b: [u8; $bytes]) -> $name {
                $name(<$int>::from_ne_bytes(b))
            }

            /// The bytes in wire order.
            #[inline(always)]
            pub const fn to_bytes(self) -> [u8; $bytes] {
                self.0.to_ne_bytes()
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:#x})", stringify!($name), self.get())
            }
        }
    };
}

wire_int!(
    /// A 16-bit value in network byte order (a port, an ICMP identifier).
    Be16, u16, 2
);
wire_int!(
    /// A 32-bit value in network byte order (an IPv4 address).
    Be32, u32, 4
);

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
