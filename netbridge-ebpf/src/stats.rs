//! Per-CPU counters read by userspace (`netbridge stats`).
//!
//! A configured port counts into its slot of NB_PORT_SLOTS, a per-CPU
//! array (an index, no hashing); an interface without a slot (not, or not
//! yet, configured) into NB_PORT_STATS by ifindex. Maps are pinned by name
//! so a reloaded or restarted loader keeps counting.
use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, PerCpuHashMap},
};
use netbridge_common::{MAX_PORTS, PortConfig, PortSlot, PortStats, drop_reason};

use crate::{
    bridge,
    parse::{Eth, L3},
};

#[map]
static NB_PORT_SLOTS: PerCpuArray<PortSlot> = PerCpuArray::pinned(MAX_PORTS + 1, 0);

#[map]
static NB_PORT_STATS: PerCpuHashMap<u32, PortStats> = PerCpuHashMap::pinned(MAX_PORTS, 0);

#[map]
static NB_DROP_STATS: PerCpuArray<u64> = PerCpuArray::pinned(drop_reason::COUNT, 0);

/// This CPU's counters of one interface; None if they cannot be had.
pub type Counters = Option<*mut PortStats>;

/// This CPU's state of port slot `slot` (0: none).
#[inline(always)]
pub fn slot(slot: u32) -> Option<*mut PortSlot> {
    if slot == 0 {
        return None;
    }
    NB_PORT_SLOTS.get_ptr_mut(slot)
}

/// The slot of a port entry (0 for none).
#[inline(always)]
pub fn slot_of(port: Option<&PortConfig>) -> u32 {
    port.map_or(0, |p| p.slot as u32)
}

/// This CPU's counters of interface `ifindex`, whose port slot is `slot`.
/// Looked up where used, not carried along: a map pointer kept live across
/// the program multiplies the verifier's work (per map it may point to).
#[inline(always)]
pub fn counters(ifindex: u32, slot: u32) -> Counters {
    match self::slot(slot) {
        // SAFETY: a valid per-CPU map value; only this CPU writes it.
        Some(s) => Some(unsafe { &raw mut (*s).stats }),
        None => by_ifindex(ifindex),
    }
}

#[inline(always)]
fn by_ifindex(ifindex: u32) -> Counters {
    if let Some(p) = NB_PORT_STATS.get_ptr_mut(&ifindex) {
        return Some(p);
    }
    // First packet of this interface on this CPU: create the (per-CPU zeroed) slot.
    // BPF_NOEXIST: another CPU may have created it meanwhile, which is fine.
    let _ = NB_PORT_STATS.insert(&ifindex, &PortStats::default(), 1);
    NB_PORT_STATS.get_ptr_mut(&ifindex)
}

/// Applies `f` to the counters, if any.
#[inline(always)]
fn with(c: Counters, f: impl FnOnce(&mut PortStats)) {
    if let Some(s) = c {
        // SAFETY: a valid per-CPU map value; BPF programs do not nest on
        // one CPU for the same hook, and only programs write it.
        f(unsafe { &mut *s });
    }
}

#[inline(always)]
pub fn count_rx(c: Counters, len: u64, eth: &Eth) {
    with(c, |s| {
        s.rx_packets += 1;
        s.rx_bytes += len;
        match eth.l3 {
            L3::Ipv4 => s.rx_ipv4 += 1,
            L3::Ipv6 => s.rx_ipv6 += 1,
            L3::Arp => s.rx_arp += 1,
            L3::Other => s.rx_other += 1,
        }
        if eth.vlan_tags > 0 {
            s.rx_vlan += 1;
        }
    });
}

/// A frame sent on by a redirect (to a port, or out of the uplink).
#[inline(always)]
pub fn count_redirected(c: Counters) {
    with(c, |s| s.rx_redirected += 1);
}

/// A frame handed to the kernel (bridge).
#[inline(always)]
pub fn count_fallback(c: Counters) {
    with(c, |s| s.rx_fallback += 1);
}

/// A frame of `len` bytes redirected into the port with counters `c`.
#[inline(always)]
pub fn tx(c: Counters, len: u64) {
    with(c, |s| {
        s.tx_packets += 1;
        s.tx_bytes += len;
    });
}

/// A frame delivered to port `out` by a redirect from outside the bridge.
#[inline(always)]
pub fn count_tx(out: u32, len: u64) {
    tx(counters(out, slot_of(bridge::port(out))), len);
}

/// Counts a drop by reason only (the uplink is not a bridge port).
#[inline(always)]
pub fn count_drop_reason(reason: u32) {
    if let Some(c) = NB_DROP_STATS.get_ptr_mut(reason) {
        // SAFETY: a valid per-CPU map value pointer; programs do not nest on one CPU.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
pub fn count_drop(ifindex: u32, reason: u32) {
    count_drop_reason(reason);
    with(counters(ifindex, slot_of(bridge::port(ifindex))), |s| {
        s.rx_dropped += 1
    });
}

/// Scratch for [`opaque`].
#[map]
static NB_REASON_SCRATCH: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// `v` stored and loaded back through a per-CPU map: the verifier no
/// longer knows which constant it is, so the drop path after it (counters,
/// log record, capture) is verified once, not once per drop reason that
/// leads there (each a path of its own through every program).
#[inline(always)]
pub fn opaque(v: u32) -> u32 {
    let Some(p) = NB_REASON_SCRATCH.get_ptr_mut(0) else {
        return v;
    };
    // SAFETY: this CPU's value of a per-CPU map; programs do not nest on
    // one CPU for these hooks. Volatile: the load must really happen.
    unsafe {
        core::ptr::write_volatile(p, v);
        core::ptr::read_volatile(p)
    }
}
