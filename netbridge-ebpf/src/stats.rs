//! Per-CPU counters read by userspace (`netbridge stats`).
//!
//! Maps are pinned by name so a reloaded or restarted loader keeps counting.
use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, PerCpuHashMap},
};
use netbridge_common::{MAX_PORTS, PortStats, drop_reason};

use crate::parse::{Eth, L3};

#[map]
static NB_PORT_STATS: PerCpuHashMap<u32, PortStats> = PerCpuHashMap::pinned(MAX_PORTS, 0);

#[map]
static NB_DROP_STATS: PerCpuArray<u64> = PerCpuArray::pinned(drop_reason::COUNT, 0);

#[inline(always)]
fn port_stats(ifindex: u32) -> Option<*mut PortStats> {
    if let Some(p) = NB_PORT_STATS.get_ptr_mut(&ifindex) {
        return Some(p);
    }
    // First packet of this port on this CPU: create the (per-CPU zeroed) slot.
    // BPF_NOEXIST: another CPU may have created it meanwhile, which is fine.
    let _ = NB_PORT_STATS.insert(&ifindex, &PortStats::default(), 1);
    NB_PORT_STATS.get_ptr_mut(&ifindex)
}

#[inline(always)]
pub fn count_rx(ifindex: u32, len: u64, eth: &Eth) {
    let Some(s) = port_stats(ifindex) else { return };
    let s = unsafe { &mut *s };
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
}

/// A frame from `in_port` redirected somewhere other than a port.
#[inline(always)]
pub fn count_redirect_only(in_port: u32) {
    if let Some(s) = port_stats(in_port) {
        unsafe { (*s).rx_redirected += 1 };
    }
}

/// A frame delivered to port `out` by a redirect from outside the bridge.
#[inline(always)]
pub fn count_tx(out: u32, len: u64) {
    if let Some(s) = port_stats(out) {
        let s = unsafe { &mut *s };
        s.tx_packets += 1;
        s.tx_bytes += len;
    }
}

#[inline(always)]
pub fn count_verdict(in_port: u32, len: u64, redirected_to: Option<u32>) {
    if let Some(s) = port_stats(in_port) {
        let s = unsafe { &mut *s };
        if redirected_to.is_some() {
            s.rx_redirected += 1;
        } else {
            s.rx_fallback += 1;
        }
    }
    if let Some(out) = redirected_to
        && let Some(s) = port_stats(out)
    {
        let s = unsafe { &mut *s };
        s.tx_packets += 1;
        s.tx_bytes += len;
    }
}

/// Counts a drop by reason only (the uplink is not a bridge port).
#[inline(always)]
pub fn count_drop_reason(reason: u32) {
    if let Some(c) = NB_DROP_STATS.get_ptr_mut(reason) {
        unsafe { *c += 1 };
    }
}

#[inline(always)]
pub fn count_drop(ifindex: u32, reason: u32) {
    count_drop_reason(reason);
    if let Some(s) = port_stats(ifindex) {
        unsafe { (*s).rx_dropped += 1 };
    }
}
