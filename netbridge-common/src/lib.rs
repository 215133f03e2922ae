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

/// Per-CPU hash: port ifindex (u32, host byte order) -> [`PortStats`].
pub const MAP_PORT_STATS: &str = "NB_PORT_STATS";
/// Per-CPU array: [`drop_reason`] code -> packets dropped for that reason (u64).
pub const MAP_DROP_STATS: &str = "NB_DROP_STATS";

/// Capacity of [`MAP_PORT_STATS`]: ports a single loaded object can serve.
pub const MAX_PORTS: u32 = 1024;

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
}
const _: () = assert!(core::mem::size_of::<PortStats>() == 64);

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
    /// Number of reason codes (size of the drop map).
    pub const COUNT: u32 = 4;

    /// Human names, indexed by code.
    pub const NAMES: [&str; COUNT as usize] = [
        "truncated_eth",
        "truncated_l3",
        "vlan_too_deep",
        "bad_ipv4_header",
    ];
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: PortStats is repr(C), Pod (no padding, any bit pattern valid).
    unsafe impl aya::Pod for super::PortStats {}
}
