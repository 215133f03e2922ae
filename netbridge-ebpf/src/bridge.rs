//! Bridging in BPF: learn source MAC -> port, redirect known unicast straight
//! into the destination namespace; everything else goes to the kernel bridge.
//!
//! Broadcast, multicast and unknown unicast fall back to the Linux bridge
//! rather than being flooded here: the kernel already floods correctly
//! (ARP, IPv6 ND, DHCP), and doing it in BPF would need a clone per port
//! (bpf_clone_redirect) for traffic that is rare after learning.
use aya_ebpf::{
    helpers::bpf_ktime_get_coarse_ns,
    macros::map,
    maps::{Array, HashMap, LruHashMap},
};
use netbridge_common::{
    BridgeConfig, FDB_REFRESH_NS, FDB_SIZE, FdbEntry, FdbKey, MAX_PORTS, PORT_ANTI_SPOOF,
    PORT_FAST_PATH, PortConfig, drop_reason,
};

use crate::{guard, parse::Eth};

#[map]
static NB_PORTS: HashMap<u32, PortConfig> = HashMap::pinned(MAX_PORTS, 0);

#[map]
static NB_FDB: LruHashMap<FdbKey, FdbEntry> = LruHashMap::pinned(FDB_SIZE, 0);

#[map]
static NB_CONFIG: Array<BridgeConfig> = Array::pinned(1, 0);

/// The gateway (bridge) MAC, zero if unset.
#[inline(always)]
pub fn gateway_mac() -> [u8; 6] {
    NB_CONFIG.get(0).map(|c| c.gateway_mac).unwrap_or([0; 6])
}

/// `BRIDGE_*` flags of the bridge config.
#[inline(always)]
pub fn flags() -> u8 {
    NB_CONFIG.get(0).map(|c| c.flags).unwrap_or(0)
}

/// What to do with a frame.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Verdict {
    /// Redirect into the peer of this host-side port.
    Redirect(u32),
    /// Let the kernel (bridge) handle it.
    Fallback,
}

#[inline(always)]
fn is_multicast(mac: &[u8; 6]) -> bool {
    mac[0] & 1 != 0
}

/// Bridging decision for a frame (`eth`, within `start..end`) that entered
/// port `in_port`. `vlan_tagged` frames are left to the kernel bridge (VLAN
/// filtering is its job).
#[inline(always)]
pub fn decide(
    in_port: u32,
    eth: &Eth,
    start: usize,
    end: usize,
    vlan_tagged: bool,
) -> Result<Verdict, u32> {
    let (src, dst) = (&eth.src, &eth.dst);
    if is_multicast(src) || *src == [0u8; 6] {
        return Err(drop_reason::BAD_SRC_MAC);
    }
    // Only ports netbridge configured take part; anything else is untouched.
    let Some(port) = (unsafe { NB_PORTS.get(&in_port) }) else {
        return Ok(Verdict::Fallback);
    };
    if port.flags & PORT_ANTI_SPOOF != 0 {
        // Before learning: a forged MAC must not poison the FDB either.
        guard::check_source(port, eth, start, end)?;
    }
    if vlan_tagged {
        return Ok(Verdict::Fallback);
    }
    // CLOCK_MONOTONIC at tick resolution: no clocksource read, and ages
    // are seconds.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let (aging_ns, gateway_mac) = match NB_CONFIG.get(0) {
        Some(c) => (c.aging_ns, c.gateway_mac),
        None => (0, [0u8; 6]),
    };
    learn(in_port, src, now);
    if is_multicast(dst) || *dst == gateway_mac {
        return Ok(Verdict::Fallback);
    }
    let key = FdbKey { mac: *dst, vlan: 0 };
    let Some(entry) = (unsafe { NB_FDB.get(&key) }) else {
        return Ok(Verdict::Fallback);
    };
    let (out, seen) = (entry.ifindex, entry.last_seen_ns);
    if aging_ns != 0 && now.saturating_sub(seen) > aging_ns {
        // Expired: forget it and let the kernel flood/learn.
        let _ = NB_FDB.remove(&key);
        return Ok(Verdict::Fallback);
    }
    if out == in_port {
        return Ok(Verdict::Fallback);
    }
    match unsafe { NB_PORTS.get(&out) } {
        Some(p) if p.flags & PORT_FAST_PATH != 0 => Ok(Verdict::Redirect(out)),
        _ => Ok(Verdict::Fallback),
    }
}

/// Records `src` behind `port`, rewriting the entry only when it moved or
/// is older than FDB_REFRESH_NS.
#[inline(always)]
fn learn(port: u32, src: &[u8; 6], now: u64) {
    let key = FdbKey { mac: *src, vlan: 0 };
    if let Some(e) = unsafe { NB_FDB.get(&key) }
        && e.ifindex == port
        && now.saturating_sub(e.last_seen_ns) < FDB_REFRESH_NS
    {
        return;
    }
    let entry = FdbEntry {
        ifindex: port,
        _pad: 0,
        last_seen_ns: now,
    };
    let _ = NB_FDB.insert(&key, &entry, 0);
}
