//! `netbridge capture`: packets as the datapath sees them at its decision
//! points, sent to userspace through a ring buffer while a capture runs.
//!
//! Off by default: every hook reads [`CaptureConfig::until_ns`] and stops
//! when it is 0. A capture sets it to a lease (CLOCK_MONOTONIC deadline)
//! that it renews while it runs and clears on exit; a program that finds the
//! lease expired (the capture died) clears it, so a crashed capture costs
//! nothing after [`LEASE_NS`].

use bytemuck::{Pod, Zeroable};

/// Array of one [`CaptureConfig`]: the on/off lease and the in-kernel filter.
pub const MAP_CAPTURE: &str = "NB_CAPTURE";
/// Ring buffer of [`CaptureEvent`] records.
pub const MAP_CAPTURE_RING: &str = "NB_CAPTURE_RING";
/// Per-CPU array of one [`CaptureCpu`]: rate-limit window and event counts.
pub const MAP_CAPTURE_CPU: &str = "NB_CAPTURE_CPU";
/// TC egress observer attached to the bridge ports only while a capture
/// runs (link held by the capture process, never pinned): frames the kernel
/// bridge delivers to a port (floods, routed, from the host).
pub const PROG_CAPTURE_EGRESS: &str = "nb_capture_egress";

/// Bytes of each packet copied at most (the snap length's upper bound).
pub const SNAP_MAX: usize = 256;
/// Size of [`MAP_CAPTURE_RING`] (a power-of-2 multiple of the page size).
pub const RING_BYTES: u32 = 1 << 21;
/// How long a lease lasts without renewal; a capture renews it every
/// [`LEASE_NS`] / 4.
pub const LEASE_NS: u64 = 2_000_000_000;
/// Default rate limit: events per CPU per second.
pub const DEFAULT_RATE: u32 = 20_000;

/// [`CaptureConfig::flags`]: only dropped packets.
pub const CAP_DROPS_ONLY: u32 = 1;

/// Packet classes ([`CaptureConfig::class`], [`CaptureEvent::class`]).
pub mod class {
    pub const ANY: u8 = 0;
    pub const TCP: u8 = 1;
    pub const UDP: u8 = 2;
    pub const ICMP: u8 = 3;
    pub const ARP: u8 = 4;
    pub const OTHER_IPV4: u8 = 5;
    pub const IPV6: u8 = 6;
    pub const OTHER: u8 = 7;
}

/// Where a packet was seen ([`CaptureEvent::point`]).
pub mod point {
    /// TC ingress of a bridge port: a frame from the port's namespace.
    pub const PORT_IN: u8 = 1;
    /// XDP on a bridge port (`datapath = "xdp"`): same as PORT_IN.
    pub const PORT_XDP: u8 = 2;
    /// TC egress of a bridge port: the kernel (bridge) delivers a frame to
    /// the namespace (observer attached only while capturing).
    pub const PORT_OUT: u8 = 3;
    /// TC ingress of the uplink (arriving from upstream).
    pub const UPLINK_IN: u8 = 4;
    /// TC egress of the uplink (leaving to upstream).
    pub const UPLINK_OUT: u8 = 5;
}

/// What the datapath did ([`CaptureEvent::verdict`]).
pub mod verdict {
    /// Handed on to the kernel (bridge, routing, the wire for uplink out).
    pub const PASS: u8 = 1;
    /// Redirected by BPF to `out_ifindex` (0: a lab host, see the address).
    pub const REDIRECT: u8 = 2;
    /// Dropped; [`super::CaptureEvent::reason`] is a `drop_reason` code.
    pub const DROP: u8 = 3;
}

/// [`CaptureEvent::flags`]: `pre` holds the IPv4 tuple before the program
/// ran (compare with the packet to see a NAT translation).
pub const EV_PRE: u8 = 1;
/// [`CaptureEvent::flags`]: the frame carried an 802.1Q tag the kernel had
/// moved out of it (`vlan_tci`).
pub const EV_VLAN: u8 = 2;

/// The capture switch and in-kernel filter (index 0 of [`MAP_CAPTURE`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct CaptureConfig {
    /// 0: off. Else capture while `bpf_ktime_get_ns()` (CLOCK_MONOTONIC)
    /// is below it.
    pub until_ns: u64,
    /// Only events seen on or delivered to this ifindex (host byte order);
    /// 0 = every port and the uplink.
    pub ifindex: u32,
    /// `CAP_*` bits.
    pub flags: u32,
    /// Only this [`class`]; 0 = any.
    pub class: u8,
    pub _pad: [u8; 3],
    /// Bytes copied per packet, 1..=[`SNAP_MAX`].
    pub snaplen: u32,
    /// Events per CPU per second; more are counted as lost.
    pub rate: u32,
    pub _pad2: u32,
}
const _: () = assert!(core::mem::size_of::<CaptureConfig>() == 32);

/// An IPv4 5-tuple as loaded from the packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct CaptureTuple {
    /// network byte order
    pub saddr: [u8; 4],
    /// network byte order
    pub daddr: [u8; 4],
    /// Network byte order: TCP/UDP source port; ICMP: the echo identifier.
    pub sport: [u8; 2],
    /// Network byte order: TCP/UDP destination port; ICMP: 0.
    pub dport: [u8; 2],
    /// IP protocol number.
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<CaptureTuple>() == 16);

/// One captured packet: the header, then `cap_len` bytes of the frame as
/// the program left it (after any NAT rewrite).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct CaptureEvent {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    /// Where it was seen: port or uplink ifindex (host byte order).
    pub ifindex: u32,
    /// Redirect target (host byte order); 0 if none or unknown.
    pub out_ifindex: u32,
    /// Length of the whole packet.
    pub len: u32,
    /// Bytes of `data` that are valid.
    pub cap_len: u16,
    /// [`point`].
    pub point: u8,
    /// [`verdict`].
    pub verdict: u8,
    /// `drop_reason` code when dropped.
    pub reason: u16,
    /// [`class`] of the packet before the program ran.
    pub class: u8,
    /// `EV_*` bits.
    pub flags: u8,
    /// 802.1Q TCI (host byte order) when `EV_VLAN`.
    pub vlan_tci: u16,
    /// CPU the program ran on.
    pub cpu: u16,
    /// The IPv4 tuple before the program ran, when `EV_PRE`.
    pub pre: CaptureTuple,
    pub data: [u8; SNAP_MAX],
}
const _: () = assert!(core::mem::size_of::<CaptureEvent>() == 48 + SNAP_MAX);
const _: () = assert!(core::mem::size_of::<CaptureEvent>().is_multiple_of(8));

/// Per-CPU capture state (index 0 of [`MAP_CAPTURE_CPU`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct CaptureCpu {
    /// Start of the current one-second rate window (CLOCK_MONOTONIC ns).
    pub window_ns: u64,
    /// Events sent in the current window.
    pub in_window: u64,
    /// Events written to the ring buffer.
    pub sent: u64,
    /// Events lost: the ring buffer was full (the reader fell behind).
    pub lost_ring: u64,
    /// Events lost: over the per-CPU rate limit.
    pub lost_rate: u64,
}
const _: () = assert!(core::mem::size_of::<CaptureCpu>() == 40);

impl CaptureCpu {
    /// Adds another CPU's counts (the window fields are not summed).
    pub fn accumulate(&mut self, o: &CaptureCpu) {
        self.sent += o.sent;
        self.lost_ring += o.lost_ring;
        self.lost_rate += o.lost_rate;
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: repr(C) and bytemuck::Pod: no padding, any bit pattern valid.
    unsafe impl aya::Pod for super::CaptureConfig {}
    unsafe impl aya::Pod for super::CaptureCpu {}
}
