//! Types and names shared by the eBPF programs and the userspace loader.
//!
//! Every type that crosses a BPF map is `#[repr(C)]` and derives
//! `bytemuck::{Pod, Zeroable}`, so implicit padding is a compile error rather
//! than uninitialised bytes leaking into the kernel. Sizes are asserted below:
//! both halves must agree byte for byte.
#![no_std]

use bytemuck::{Pod, Zeroable};

/// TC program attached to the ingress of every bridge port (host-side veth).
pub const PROG_PORT_INGRESS: &str = "nb_port_ingress";
/// XDP variant of the same lookups (`datapath = "xdp"`), on the same ports.
pub const PROG_PORT_XDP: &str = "nb_port_xdp";
/// XDP_PASS program for each namespace's veth in XDP mode: a veth only
/// accepts XDP_REDIRECTed frames when its peer end runs XDP.
pub const PROG_PEER_XDP: &str = "nb_peer_xdp";

/// Per-CPU hash: port ifindex (u32, host byte order) -> [`PortStats`].
pub const MAP_PORT_STATS: &str = "NB_PORT_STATS";
/// Per-CPU array: [`drop_reason`] code -> packets dropped for that reason (u64).
pub const MAP_DROP_STATS: &str = "NB_DROP_STATS";

/// Hash: port ifindex (u32, host byte order) -> [`PortConfig`]. Written by
/// userspace at `up`; a frame may only be redirected to a listed port.
pub const MAP_PORTS: &str = "NB_PORTS";
/// LRU hash: [`FdbKey`] -> [`FdbEntry`], learned from source MACs.
pub const MAP_FDB: &str = "NB_FDB";
/// Array of one [`BridgeConfig`], written by userspace.
pub const MAP_CONFIG: &str = "NB_CONFIG";

/// Capacity of the port maps: ports a single loaded object can serve.
pub const MAX_PORTS: u32 = 1024;
/// Capacity of [`MAP_FDB`]; the least recently used entry is evicted first.
pub const FDB_SIZE: u32 = 16384;
/// Default FDB aging, as the Linux bridge.
pub const DEFAULT_AGING_SECS: u32 = 300;
/// An FDB entry seen again within this long is not rewritten (saves map
/// writes on every packet of a flow).
pub const FDB_REFRESH_NS: u64 = 1_000_000_000;

/// [`PortConfig::flags`]: frames to this port may take the redirect fast path.
pub const PORT_FAST_PATH: u32 = 1;
/// [`PortConfig::flags`]: frames from this port must carry the namespace's
/// own MAC and one of its IPv4 addresses (anti-spoofing).
pub const PORT_ANTI_SPOOF: u32 = 2;
/// IPv4 source addresses a port may use.
pub const MAX_PORT_IPV4: usize = 4;

/// One bridge port as the datapath knows it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct PortConfig {
    /// Host-side veth ifindex (host byte order).
    pub ifindex: u32,
    /// `PORT_*` bits.
    pub flags: u32,
    /// MAC of the namespace end of the port, wire order.
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
    /// IPv4 sources the namespace may use, network byte order; unused
    /// slots are 0.0.0.0 (which is always allowed: DHCP).
    pub ipv4: [[u8; 4]; MAX_PORT_IPV4],
}
const _: () = assert!(core::mem::size_of::<PortConfig>() == 32);

/// FDB key: a MAC address in a VLAN.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct FdbKey {
    /// MAC address, wire order.
    pub mac: [u8; 6],
    /// VLAN ID (host byte order); 0 = untagged.
    pub vlan: u16,
}
const _: () = assert!(core::mem::size_of::<FdbKey>() == 8);

/// FDB value: where a MAC was last seen.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct FdbEntry {
    /// Port (host-side veth ifindex, host byte order) the MAC sits behind.
    pub ifindex: u32,
    pub _pad: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) of the last refresh.
    pub last_seen_ns: u64,
}
const _: () = assert!(core::mem::size_of::<FdbEntry>() == 16);

/// Bridge-wide settings (index 0 of [`MAP_CONFIG`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct BridgeConfig {
    /// FDB entries older than this are ignored and removed; 0 = never age.
    pub aging_ns: u64,
    /// Kernel bridge ifindex (host byte order), the fallback for floods.
    pub bridge_ifindex: u32,
    /// Gateway (bridge) IPv4 address, network byte order; 0 if none.
    pub gateway_ipv4: [u8; 4],
    /// Gateway (bridge) MAC, wire order: frames to it always go to the
    /// kernel (routing, the host's own services), never to a port.
    pub gateway_mac: [u8; 6],
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<BridgeConfig>() == 24);

/// Packet counters of one bridge port, as seen at its host-side ingress
/// (`rx_*`: frames coming out of the namespace towards the bridge).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct PortStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// IPv4 frames (after any VLAN tags).
    pub rx_ipv4: u64,
    /// IPv6 frames (after any VLAN tags).
    pub rx_ipv6: u64,
    /// ARP frames.
    pub rx_arp: u64,
    /// Any other ethertype.
    pub rx_other: u64,
    /// Frames carrying at least one 802.1Q/802.1ad tag.
    pub rx_vlan: u64,
    /// Frames this port dropped (see [`MAP_DROP_STATS`] for reasons).
    pub rx_dropped: u64,
    /// Frames from this port sent straight into another port's namespace
    /// (`bpf_redirect_peer`), bypassing the kernel bridge.
    pub rx_redirected: u64,
    /// Frames from this port handed to the kernel bridge (broadcast,
    /// multicast, unknown unicast, the gateway, VLAN-tagged).
    pub rx_fallback: u64,
    /// Frames redirected *to* this port by the fast path.
    pub tx_packets: u64,
    pub tx_bytes: u64,
}
const _: () = assert!(core::mem::size_of::<PortStats>() == 96);

impl PortStats {
    /// Adds another CPU's counters into this one.
    pub fn accumulate(&mut self, o: &PortStats) {
        self.rx_packets += o.rx_packets;
        self.rx_bytes += o.rx_bytes;
        self.rx_ipv4 += o.rx_ipv4;
        self.rx_ipv6 += o.rx_ipv6;
        self.rx_arp += o.rx_arp;
        self.rx_other += o.rx_other;
        self.rx_vlan += o.rx_vlan;
        self.rx_dropped += o.rx_dropped;
        self.rx_redirected += o.rx_redirected;
        self.rx_fallback += o.rx_fallback;
        self.tx_packets += o.tx_packets;
        self.tx_bytes += o.tx_bytes;
    }
}

/// Explicit reasons a program drops a frame; index into [`MAP_DROP_STATS`].
pub mod drop_reason {
    /// Frame shorter than its Ethernet (or VLAN) header.
    pub const TRUNCATED_ETH: u32 = 0;
    /// L3 header claimed by the ethertype does not fit in the frame.
    pub const TRUNCATED_L3: u32 = 1;
    /// More VLAN tags than the parser follows.
    pub const VLAN_TOO_DEEP: u32 = 2;
    /// IPv4 header with IHL < 5 or version != 4.
    pub const BAD_IPV4_HEADER: u32 = 3;
    /// Source MAC is multicast/broadcast or all-zero: never valid.
    pub const BAD_SRC_MAC: u32 = 4;
    /// Source MAC is not the namespace's own (anti-spoofing).
    pub const SPOOFED_MAC: u32 = 5;
    /// IPv4 source is not one of the namespace's addresses (anti-spoofing).
    pub const SPOOFED_IPV4: u32 = 6;
    /// ARP sender MAC/IP is not the namespace's own (anti-spoofing).
    pub const SPOOFED_ARP: u32 = 7;
    /// Number of reason codes (size of the drop map).
    pub const COUNT: u32 = 8;

    /// Human names, indexed by code.
    pub const NAMES: [&str; COUNT as usize] = [
        "truncated_eth",
        "truncated_l3",
        "vlan_too_deep",
        "bad_ipv4_header",
        "bad_src_mac",
        "spoofed_mac",
        "spoofed_ipv4",
        "spoofed_arp",
    ];
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: all are repr(C) and bytemuck::Pod: no padding, any bit
    // pattern valid.
    unsafe impl aya::Pod for super::PortStats {}
    unsafe impl aya::Pod for super::PortConfig {}
    unsafe impl aya::Pod for super::FdbKey {}
    unsafe impl aya::Pod for super::FdbEntry {}
    unsafe impl aya::Pod for super::BridgeConfig {}
}
