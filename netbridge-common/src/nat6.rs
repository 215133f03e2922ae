//! NAT66: IPv6 masquerade on the uplink (SNAT of lab sources to the
//! uplink's IPv6 address, with port mapping) and IPv6 port forwards
//! (DNAT66). Its own maps, apart from the IPv4 NAT's: a config, the
//! forwards and a conntrack table with 16-byte addresses.
use bytemuck::{Pod, Zeroable};

use crate::{Be16, Be32};

/// An IPv6 address as four words in wire order (loaded and compared a
/// word at a time).
pub type In6 = [Be32; 4];

/// Array of one [`Nat6Config`], written by userspace (`up`); flags 0: off.
pub const MAP_NAT6_CONFIG: &str = "NB_NAT6_CONFIG";
/// LRU hash: [`Ct6Key`] -> [`Ct6Entry`]; two entries per session, as
/// [`crate::MAP_CT`].
pub const MAP_CT6: &str = "NB_CT6";
/// Capacity of [`MAP_CT6`] (entries: two per session) in the object;
/// `up` sizes a new table for `max_sessions` as [`crate::MAP_CT`].
pub const CT6_SIZE: u32 = 65_536;
/// Array of one (a BTF map, pinned by name): the NAT66 sweep's
/// `bpf_timer`, a spin lock and [`crate::CtCounts`] (live NAT66 sessions,
/// counted against `max_sessions` apart from the IPv4 ones); userspace
/// reads it as [`crate::CtStateView`].
pub const MAP_CT6_STATE: &str = "NB_CT6_STATE";
/// Hash (a BTF map, pinned by name, no prealloc): [`In6`] -> a spin lock
/// and the live NAT66 sessions ([`crate::QuotaView`]) of a lab host (its
/// address: `max_sessions_per_host`) or of an upstream client (its /64,
/// the rest zero: `max_sessions_per_source`).
pub const MAP_CT6_QUOTA: &str = "NB_CT6_QUOTA";
/// Capacity of [`MAP_CT6_QUOTA`].
pub const CT6_QUOTA_SIZE: u32 = CT6_SIZE / 2;
/// Array of [`MAX_FWD6`] [`Fwd6Target`]: the IPv6 port forwards (single
/// ports and ranges alike); the first entry with `proto` 0 ends the list.
pub const MAP_FWD6: &str = "NB_FWD6";
/// IPv6 forwards the datapath holds (each a single port or a range).
pub const MAX_FWD6: u32 = 64;
/// Lab prefixes [`Nat6Config`] holds.
pub const NAT6_PREFIXES: usize = 4;

/// [`Nat6Config::flags`]: masquerade lab sources leaving the uplink.
pub const NAT6_MASQUERADE: u32 = 1;
/// [`Nat6Config::flags`]: the NAT66 fast path (the uplink's `fast_path`;
/// its own bit, so it needs no IPv4 NAT beside it).
pub const NAT6_FAST_PATH: u32 = 2;
/// [`Nat6Config::flags`]: the uplink is a veth (see
/// [`crate::NAT_UPLINK_PEER`]).
pub const NAT6_UPLINK_PEER: u32 = 4;

/// A lab prefix: `addr & mask == addr`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Prefix6 {
    pub addr: In6,
    pub mask: In6,
}
const _: () = assert!(core::mem::size_of::<Prefix6>() == 32);

/// NAT66 settings (index 0 of [`MAP_NAT6_CONFIG`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Nat6Config {
    /// The uplink's IPv6 address: the masquerade address.
    pub uplink_ipv6: In6,
    /// Sources translated (and never let out untranslated): the bridge's
    /// IPv6 prefixes; the first `prefix_count` are used.
    pub prefixes: [Prefix6; NAT6_PREFIXES],
    /// Host order.
    pub prefix_count: u32,
    /// Uplink ifindex in the host namespace (host order).
    pub uplink_ifindex: u32,
    /// `NAT6_*` bits; 0 disables NAT66.
    pub flags: u32,
    /// SNAT port range, inclusive, HOST byte order.
    pub port_min: u16,
    /// HOST byte order.
    pub port_max: u16,
    /// Idle timeouts in seconds per `CT_*` state, as
    /// [`crate::NatConfig::timeouts`].
    pub timeouts: [u32; 8],
    /// The bridge's (lab gateway's) IPv6 address: the source of the
    /// ICMPv6 errors a refused lab host gets (RFC 5508 REQ-8's
    /// counterpart); all zeros: none sent.
    pub lab_gateway: In6,
}
const _: () = assert!(core::mem::size_of::<Nat6Config>() == 208);

/// An IPv6 port forward: external ports `first..=last` on the uplink's
/// IPv6 address go to `addr`, port `port + (p - first)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Fwd6Target {
    /// The target namespace's IPv6 address.
    pub addr: In6,
    /// Target port for `first`, HOST byte order.
    pub port: u16,
    /// External ports covered, inclusive, HOST byte order.
    pub first: u16,
    /// HOST byte order.
    pub last: u16,
    /// IP protocol number (6, 17); 0: an unused slot, ends the list.
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<Fwd6Target>() == 24);

/// NAT66 conntrack key: a packet's 5-tuple at the uplink.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct Ct6Key {
    pub saddr: In6,
    pub daddr: In6,
    /// ICMPv6 echo: the identifier from the inside (requests), 0 from
    /// outside.
    pub sport: Be16,
    /// ICMPv6 echo: 0 from the inside, the identifier from outside.
    pub dport: Be16,
    /// Next header (6, 17, 58).
    pub proto: u8,
    /// `CT_DIR_*`.
    pub dir: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<Ct6Key>() == 40);

/// NAT66 conntrack value: how to rewrite packets matching the key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Ct6Entry {
    /// The key of the other direction (removed together).
    pub reverse: Ct6Key,
    /// New source (dir OUT) or destination (dir IN) address.
    pub nat_addr: In6,
    /// New source/destination port (ICMPv6 echo: identifier).
    pub nat_port: Be16,
    /// `CT_TCP_*`, `CT_UDP*`, `CT_ICMP`.
    pub state: u8,
    /// `CT_F_*` (ORIGINAL, REPLIED, ASSURED).
    pub flags: u8,
    pub _pad: [u8; 4],
    /// `bpf_ktime_get_coarse_ns()` (NAT clock, `nat::ct::now`) at creation.
    pub created_ns: u64,
    /// `bpf_ktime_get_coarse_ns()` of the last packet (refreshed at most every
    /// [`crate::CT_REFRESH_NS`]).
    pub last_seen_ns: u64,
}
const _: () = assert!(core::mem::size_of::<Ct6Entry>() == 80);
const _: () = assert!(core::mem::offset_of!(Ct6Entry, nat_addr) % 4 == 0);

#[cfg(feature = "user")]
mod user {
    // SAFETY: repr(C) and bytemuck::Pod: no padding, any bit pattern valid.
    unsafe impl aya::Pod for super::Nat6Config {}
    unsafe impl aya::Pod for super::Ct6Key {}
    unsafe impl aya::Pod for super::Ct6Entry {}
    unsafe impl aya::Pod for super::Fwd6Target {}
}
