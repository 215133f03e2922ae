//! Conntrack entries: lookup with state tracking, session accounting.
use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_map_lookup_percpu_elem},
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray},
};
use netbridge_common::{
    CT_F_ORIGINAL, CT_REFRESH_NS, CT_SIZE, CT_TCP_CLOSED, CT_TCP_CLOSING, CT_TCP_ESTABLISHED,
    CT_TCP_SYN, CT_UDP, CT_UDP_REPLIED, CtEntry, CtKey, MAX_CPUS, NatConfig,
};

use crate::nat::{
    Tuple,
    packet::{IPPROTO_TCP, IPPROTO_UDP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

#[map]
pub static NB_CT: LruHashMap<CtKey, CtEntry> = LruHashMap::pinned(CT_SIZE, 0);

/// Sessions created, per CPU (summed only when a session is opened).
#[map]
static NB_CT_CREATED: PerCpuArray<u64> = PerCpuArray::pinned(1, 0);

/// Sessions removed by userspace (its only writer).
#[map]
static NB_CT_REMOVED: Array<u64> = Array::pinned(1, 0);

pub const BPF_NOEXIST: u64 = 1;

#[inline(always)]
pub fn key(t: &Tuple, dir: u8) -> CtKey {
    CtKey {
        saddr: t.saddr.to_ne_bytes(),
        daddr: t.daddr.to_ne_bytes(),
        sport: t.sport,
        dport: t.dport,
        proto: t.proto,
        dir,
        _pad: [0; 2],
    }
}

/// A new session half: rewrite to `nat_addr`:`nat_port`, created `now`.
#[inline(always)]
pub fn entry(
    reverse: CtKey,
    nat_addr: [u8; 4],
    nat_port: u16,
    state: u8,
    kind: u8,
    flags: u8,
    now: u64,
) -> CtEntry {
    CtEntry {
        reverse,
        nat_addr,
        nat_port,
        state,
        kind,
        flags,
        _pad: [0; 7],
        created_ns: now,
        last_seen_ns: now,
    }
}

#[inline(always)]
pub fn now() -> u64 {
    unsafe { bpf_ktime_get_ns() }
}

/// State of a new session opened by a packet with `tcp_flags`.
#[inline(always)]
pub fn initial_state(proto: u8, tcp_flags: u8) -> u8 {
    match proto {
        // Picked up mid-stream (e.g. after a GC): treat as established.
        IPPROTO_TCP if tcp_flags & TCP_SYN != 0 && tcp_flags & TCP_ACK == 0 => CT_TCP_SYN,
        IPPROTO_TCP => CT_TCP_ESTABLISHED,
        IPPROTO_UDP => CT_UDP,
        _ => netbridge_common::CT_ICMP,
    }
}

/// Session table at its limit? Sums the per-CPU creation counters.
#[inline(always)]
pub fn full(cfg: &NatConfig) -> bool {
    let map = &NB_CT_CREATED as *const PerCpuArray<u64> as *mut core::ffi::c_void;
    let key = 0u32;
    let mut created = 0u64;
    let mut cpu = 0u32;
    while cpu < MAX_CPUS {
        let p = unsafe {
            bpf_map_lookup_percpu_elem(map, &key as *const u32 as *const core::ffi::c_void, cpu)
        };
        if p.is_null() {
            break;
        }
        created += unsafe { *(p as *const u64) };
        cpu += 1;
    }
    let removed = NB_CT_REMOVED.get(0).copied().unwrap_or(0);
    created.wrapping_sub(removed) >= cfg.max_sessions as u64
}

#[inline(always)]
pub fn count_session() {
    if let Some(p) = NB_CT_CREATED.get_ptr_mut(0) {
        unsafe { *p += 1 };
    }
}

/// The mapping for `t` seen in `dir`, refreshing the entry and advancing
/// the session state.
#[inline(always)]
pub fn lookup(t: &Tuple, dir: u8, tcp_flags: u8) -> Option<(u32, u16)> {
    lookup_kind(t, dir, tcp_flags).map(|(a, p, _)| (a, p))
}

#[inline(always)]
pub fn lookup_kind(t: &Tuple, dir: u8, tcp_flags: u8) -> Option<(u32, u16, u8)> {
    let e = NB_CT.get_ptr_mut(&key(t, dir))?;
    let e = unsafe { &mut *e };
    let state = e.state;
    let next = match t.proto {
        IPPROTO_TCP if tcp_flags & TCP_RST != 0 => CT_TCP_CLOSED,
        IPPROTO_TCP if tcp_flags & TCP_FIN != 0 && state < CT_TCP_CLOSING => CT_TCP_CLOSING,
        // The answering side spoke (SYN-ACK): the handshake went through.
        IPPROTO_TCP if state == CT_TCP_SYN && e.flags & CT_F_ORIGINAL == 0 => CT_TCP_ESTABLISHED,
        IPPROTO_UDP if state == CT_UDP && e.flags & CT_F_ORIGINAL == 0 => CT_UDP_REPLIED,
        _ => state,
    };
    let now = now();
    if next != state {
        e.state = next;
        e.last_seen_ns = now;
        // Keep both halves in the same state (rare: only on transitions).
        if let Some(r) = NB_CT.get_ptr_mut(&e.reverse) {
            unsafe { (*r).state = next };
        }
    } else if now.wrapping_sub(e.last_seen_ns) > CT_REFRESH_NS {
        e.last_seen_ns = now;
    }
    Some((u32::from_ne_bytes(e.nat_addr), e.nat_port, e.kind))
}
