//! Bridging in BPF: learn source MAC -> port, redirect known unicast straight
//! into the destination namespace; everything else goes to the kernel bridge.
//!
//! Broadcast, multicast and unknown unicast fall back to the Linux bridge
//! rather than being flooded here: the kernel already floods correctly
//! (ARP, IPv6 ND, DHCP), and doing it in BPF would need a clone per port
//! (bpf_clone_redirect) for traffic that is rare after learning.
use aya_ebpf::{
    helpers::{bpf_get_smp_processor_id, bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use netbridge_common::{
    BridgeConfig, FDB_REFRESH_NS, FDB_SIZE, FdbEntry, FdbKey, MAX_PORTS, PORT_ANTI_SPOOF,
    PORT_FAST_PATH, PORT_INDEX_SIZE, PortConfig, PortSlot, drop_reason,
};

use crate::{
    guard,
    parse::{Eth, Mac, is_multicast, mac_at_aligned},
    stats,
};

#[map]
static NB_PORTS: HashMap<u32, PortConfig> = HashMap::pinned(MAX_PORTS, 0);

#[map]
static NB_PORT_INDEX: Array<PortConfig> = Array::pinned(PORT_INDEX_SIZE, 0);

#[map]
static NB_FDB: LruHashMap<FdbKey, FdbEntry> = LruHashMap::pinned(FDB_SIZE, 0);

/// Changed when a MAC is learned anew or moves (see `PortSlot::dst_gen`).
/// Pinned: destination caches live in the pinned slots, across reloads.
#[map]
static NB_FDB_GEN: Array<u64> = Array::pinned(1, 0);

#[map]
static NB_CONFIG: Array<BridgeConfig> = Array::pinned(1, 0);

/// Per CPU: [jiffies, coarse monotonic ns read at that jiffy].
#[map]
static NB_NOW: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

/// CLOCK_MONOTONIC at tick resolution (what bpf_ktime_get_coarse_ns gives),
/// read from the clock at most once per tick and CPU: within a tick the
/// value of the last read is reused. bpf_jiffies64 is a plain load (the
/// verifier inlines it); the clock helper is not cheap here.
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: a helper without arguments.
    let j = unsafe { bpf_jiffies64() };
    let Some(c) = NB_NOW.get_ptr_mut(0) else {
        // SAFETY: a helper without arguments.
        return unsafe { bpf_ktime_get_coarse_ns() };
    };
    // SAFETY: this CPU's value; programs do not nest on one CPU here.
    let c = unsafe { &mut *c };
    if c[0] != j || c[1] == 0 {
        c[0] = j;
        // SAFETY: a helper without arguments.
        c[1] = unsafe { bpf_ktime_get_coarse_ns() };
    }
    c[1]
}

/// The bridge-wide settings a frame needs, read once per frame.
pub struct Bridge {
    /// FDB entries older than this are expired; 0 = never.
    pub aging_ns: u64,
    /// The gateway (bridge) MAC; 0 if unset.
    pub gateway: Mac,
}

#[inline(always)]
pub fn config() -> Bridge {
    match NB_CONFIG.get(0) {
        Some(c) => Bridge {
            aging_ns: c.aging_ns,
            // SAFETY: 6 bytes of a map value, 4-aligned.
            gateway: unsafe { mac_at_aligned(c.gateway_mac.as_ptr()) },
        },
        None => Bridge {
            aging_ns: 0,
            gateway: 0,
        },
    }
}

/// The gateway (bridge) MAC, zero if unset.
#[inline(always)]
pub fn gateway_mac() -> [u8; 6] {
    NB_CONFIG.get(0).map(|c| c.gateway_mac).unwrap_or([0; 6])
}

/// The gateway (bridge) IPv4 address, wire order; zero if none.
#[inline(always)]
pub fn gateway_ipv4() -> [u8; 4] {
    NB_CONFIG.get(0).map(|c| c.gateway_ipv4).unwrap_or([0; 4])
}

/// The bridge port `ifindex`, if configured: its direct-mapped index entry
/// (no hashing), else the hash (another port holds that index, or none).
#[inline(always)]
pub fn port(ifindex: u32) -> Option<&'static PortConfig> {
    match NB_PORT_INDEX.get(ifindex & (PORT_INDEX_SIZE - 1)) {
        Some(p) if p.ifindex == ifindex => Some(p),
        // SAFETY: a map lookup; the value is plain data the verifier bounds.
        _ => unsafe { NB_PORTS.get(&ifindex) },
    }
}

/// What to do with a frame.
#[derive(Clone, Copy)]
pub enum Verdict {
    /// Redirect into the peer of this host-side port (ifindex, its slot).
    Redirect(u32, u32),
    /// Let the kernel (bridge) handle it.
    Fallback,
}

/// The FDB key of `mac` (untagged).
#[inline(always)]
fn fdb_key(mac: Mac) -> FdbKey {
    // SAFETY: FdbKey is 8 bytes of plain data, the MAC then the VLAN: the
    // u64's little-endian bytes are the MAC's, then two zero bytes (VLAN 0).
    unsafe { core::mem::transmute::<u64, FdbKey>(mac) }
}

/// A MAC field of a port slot with its two padding bytes (kept zero): one
/// aligned u64.
#[inline(always)]
fn slot_mac(field: &[u8; 6]) -> Mac {
    // SAFETY: 8 readable, 8-aligned bytes (see the offset asserts of PortSlot).
    unsafe { *(field.as_ptr() as *const u64) }
}

#[inline(always)]
fn set_slot_mac(field: &mut [u8; 6], mac: Mac) {
    // SAFETY: as in `slot_mac`; the top two bytes of `mac` are zero.
    unsafe { *(field.as_mut_ptr() as *mut u64) = mac };
}

#[inline(always)]
fn fdb_gen() -> u64 {
    NB_FDB_GEN.get(0).copied().unwrap_or(0)
}

/// Bridging decision for a frame (`eth`, within `start..end`) that entered
/// interface `in_port`, whose port entry is `port`. `vlan_tagged` frames are
/// left to the kernel bridge (VLAN filtering is its job).
#[inline(always)]
pub fn decide(
    port: Option<&PortConfig>,
    in_port: u32,
    eth: &Eth,
    start: usize,
    end: usize,
    vlan_tagged: bool,
    bridge: &Bridge,
) -> Result<Verdict, u32> {
    let (src, dst) = (eth.src, eth.dst);
    if is_multicast(src) || src == 0 {
        return Err(drop_reason::BAD_SRC_MAC);
    }
    // Only ports netbridge configured take part; anything else is untouched.
    let Some(port) = port else {
        return Ok(Verdict::Fallback);
    };
    if port.flags & PORT_ANTI_SPOOF != 0 {
        // Before learning: a forged MAC must not poison the FDB either.
        guard::check_source(port, eth, start, end)?;
    }
    if vlan_tagged {
        return Ok(Verdict::Fallback);
    }
    let now = now();
    // SAFETY: this CPU's value of a per-CPU map; programs do not nest on
    // one CPU for this hook.
    let mut slot = stats::slot(port.slot as u32).map(|c| unsafe { &mut *c });
    // Read before any FDB lookup: a change after it invalidates what the
    // caches take from that lookup.
    let generation = fdb_gen();
    learn(in_port, slot.as_deref_mut(), src, now, generation);
    if is_multicast(dst) || dst == bridge.gateway {
        return Ok(Verdict::Fallback);
    }
    let Some((out, _)) = destination(slot, dst, now, bridge.aging_ns, generation) else {
        return Ok(Verdict::Fallback);
    };
    if out == in_port {
        return Ok(Verdict::Fallback);
    }
    match self::port(out) {
        Some(p) if p.flags & PORT_FAST_PATH != 0 => Ok(Verdict::Redirect(out, p.slot as u32)),
        _ => Ok(Verdict::Fallback),
    }
}

/// The live FDB entry of `dst` as (port, last seen): from this CPU's
/// destination cache of the ingress port (`slot`) while no MAC was learned
/// anew or moved since, it is younger than FDB_REFRESH_NS and the cached
/// age is within `aging_ns`; else from the FDB (an expired entry is
/// removed: the kernel floods and relearns).
#[inline(always)]
fn destination(
    slot: Option<&mut PortSlot>,
    dst: Mac,
    now: u64,
    aging_ns: u64,
    generation: u64,
) -> Option<(u32, u64)> {
    let expired = |seen: u64| aging_ns != 0 && now.saturating_sub(seen) > aging_ns;
    if let Some(c) = &slot
        && slot_mac(&c.dst_mac) == dst
        && c.dst_gen == generation
        && now.saturating_sub(c.dst_read_ns) < FDB_REFRESH_NS
        && !expired(c.dst_seen_ns)
    {
        return Some((c.dst_ifindex, c.dst_seen_ns));
    }
    let key = fdb_key(dst);
    // SAFETY: a map lookup; the value is plain data the verifier bounds.
    let e = unsafe { NB_FDB.get(&key) }?;
    let (out, seen) = (e.ifindex, e.last_seen_ns);
    if expired(seen) {
        let _ = NB_FDB.remove(&key);
        return None;
    }
    if let Some(c) = slot {
        set_slot_mac(&mut c.dst_mac, dst);
        c.dst_ifindex = out;
        c.dst_seen_ns = seen;
        c.dst_read_ns = now;
        c.dst_gen = generation;
    }
    Some((out, seen))
}

/// Records `src` behind `port`, rewriting the entry only when it moved or
/// is older than FDB_REFRESH_NS. `slot` (this CPU's state of the port)
/// remembers the last MAC so learned and until when that needs no second
/// look (while the FDB generation, read as `generation` before any lookup,
/// is unchanged): a flow's frames skip the FDB lookup of their own source.
#[inline(always)]
fn learn(port: u32, slot: Option<&mut PortSlot>, src: Mac, now: u64, generation: u64) {
    if let Some(c) = &slot
        && slot_mac(&c.learned_mac) == src
        && c.learned_gen == generation
        && now.saturating_sub(c.learned_ns) < FDB_REFRESH_NS
    {
        return;
    }
    let mut generation = generation;
    let key = fdb_key(src);
    // SAFETY: a map lookup; the value is plain data the verifier bounds.
    let (seen, moved) = match unsafe { NB_FDB.get(&key) } {
        Some(e) if e.ifindex == port && now.saturating_sub(e.last_seen_ns) < FDB_REFRESH_NS => {
            (e.last_seen_ns, false)
        }
        old => {
            let moved = old.is_none_or(|e| e.ifindex != port);
            let entry = FdbEntry {
                ifindex: port,
                _pad: 0,
                last_seen_ns: now,
            };
            if NB_FDB.insert(&key, &entry, 0).is_err() {
                return;
            }
            (now, moved)
        }
    };
    if moved && let Some(g) = NB_FDB_GEN.get_ptr_mut(0) {
        // After the insert, a value no cache can hold yet: the time (later
        // than any earlier value's) and this CPU (no other writes it at the
        // same ns). No atomics needed: whichever of two racing writes
        // lands, both differ from what a cache read before them.
        // SAFETY: helpers without arguments.
        generation = unsafe { bpf_ktime_get_ns() } << 8
            | (unsafe { bpf_get_smp_processor_id() } & 0xff) as u64;
        // SAFETY: a valid map value.
        unsafe { *g = generation };
    }
    if let Some(c) = slot {
        set_slot_mac(&mut c.learned_mac, src);
        c.learned_ns = seen;
        c.learned_gen = generation;
    }
}
