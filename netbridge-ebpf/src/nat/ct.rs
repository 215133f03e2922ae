//! Conntrack entries: lookup with expiry and state tracking, and session
//! removal (counted once, on the delete of the original half).
use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{LruHashMap, PerCpuArray},
};
use netbridge_common::{
    Be16, Be32, CT_DIR_OUT, CT_F_EIM, CT_F_ORIGINAL, CT_GRAVES_SIZE, CT_REFRESH_NS, CT_SIZE,
    CT_SNAT, CT_TCP_CLOSED, CT_TCP_CLOSING, CT_TCP_ESTABLISHED, CT_TCP_SYN, CT_UDP, CT_UDP_REPLIED,
    CtEntry, CtKey, NAT_INBOUND_REFRESH, NatConfig, nat_stat,
};

use crate::nat::{
    Tuple, count,
    packet::{IPPROTO_TCP, IPPROTO_UDP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    sweep,
};

/// Sized by `up` from `max_sessions` (EbpfLoader::map_max_entries).
#[map]
pub static NB_CT: LruHashMap<CtKey, CtEntry> = LruHashMap::pinned(CT_SIZE, 0);

/// Inbound keys of expired SNAT sessions -> when they expired.
#[map]
static NB_CT_GRAVES: LruHashMap<CtKey, u64> = LruHashMap::pinned(CT_GRAVES_SIZE, 0);

pub const BPF_NOEXIST: u64 = 1;

#[inline(always)]
pub fn key(t: &Tuple, dir: u8) -> CtKey {
    CtKey {
        saddr: t.saddr,
        daddr: t.daddr,
        sport: t.sport,
        dport: t.dport,
        proto: t.proto,
        dir,
        _pad: [0; 2],
    }
}

/// Where new entries are built: per CPU, off the BPF stack (the programs'
/// frames nearly fill its 512 bytes).
#[map]
static NB_CT_SCRATCH: PerCpuArray<CtEntry> = PerCpuArray::with_max_entries(1, 0);

/// A new session half (rewrite to `nat_addr`:`nat_port`, created `now`),
/// built in this CPU's scratch for `NB_CT.insert`; valid until the next
/// `stage` on this CPU.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn stage(
    reverse: CtKey,
    nat_addr: Be32,
    nat_port: Be16,
    state: u8,
    kind: u8,
    flags: u8,
    now: u64,
) -> Option<&'static CtEntry> {
    let p = NB_CT_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot of a per-CPU map; programs are not preempted.
    let e = unsafe { &mut *p };
    e.reverse = reverse;
    e.nat_addr = nat_addr;
    e.nat_port = nat_port;
    e.state = state;
    e.kind = kind;
    e.flags = flags;
    e.created_ns = now;
    e.last_seen_ns = now;
    Some(e)
}

#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// State of a new session opened by a packet with `tcp_flags`.
#[inline(always)]
pub fn initial_state(proto: u8, tcp_flags: u8) -> u8 {
    match proto {
        // Picked up mid-stream (e.g. after expiry): treat as established.
        IPPROTO_TCP if tcp_flags & TCP_SYN != 0 && tcp_flags & TCP_ACK == 0 => CT_TCP_SYN,
        IPPROTO_TCP => CT_TCP_ESTABLISHED,
        IPPROTO_UDP => CT_UDP,
        _ => netbridge_common::CT_ICMP,
    }
}

/// The state after a packet with `tcp_flags` in a session in `state`,
/// seen on the half that opened it (`original`) or the answering one.
#[inline(always)]
fn next_state(proto: u8, tcp_flags: u8, state: u8, original: bool) -> u8 {
    match proto {
        IPPROTO_TCP if tcp_flags & TCP_RST != 0 => CT_TCP_CLOSED,
        IPPROTO_TCP if tcp_flags & TCP_FIN != 0 && state < CT_TCP_CLOSING => CT_TCP_CLOSING,
        // The answering side spoke (SYN-ACK): the handshake went through.
        IPPROTO_TCP if state == CT_TCP_SYN && !original => CT_TCP_ESTABLISHED,
        IPPROTO_UDP if state == CT_UDP && !original => CT_UDP_REPLIED,
        _ => state,
    }
}

/// Idle timeout of a session in `state`, from the NAT config.
#[inline(always)]
pub fn timeout_ns(timeouts: &[u32; 8], state: u8) -> u64 {
    timeouts[(state & 7) as usize] as u64 * 1_000_000_000
}

/// A lookup's outcome.
pub enum Found {
    /// The mapping and the session kind.
    Hit(Be32, Be16, u8),
    Miss,
    /// The session was past its timeout: it is gone now (kind given).
    Expired(u8),
}

/// The mapping for `t` seen in `dir`. An entry past its timeout is never
/// used: its session is removed (its port free again) and `Expired`
/// returned. Otherwise the entry is refreshed and the state advanced.
#[inline(always)]
pub fn lookup(cfg: &NatConfig, t: &Tuple, dir: u8, tcp_flags: u8) -> Found {
    let k = key(t, dir);
    let Some(e) = NB_CT.get_ptr_mut(&k) else {
        return Found::Miss;
    };
    // SAFETY: a value of the map; an LRU map value stays valid memory for
    // the program's run (RCU), even if evicted meanwhile.
    let e = unsafe { &mut *e };
    let now = now();
    let (state, kind) = (e.state, e.kind);
    let tmo = timeout_ns(&cfg.timeouts, state);
    let idle = now.saturating_sub(e.last_seen_ns);
    // Rare: this half is idle past the timeout; the session may still be
    // alive through its other half.
    if idle > tmo && expire_if_idle(cfg, &k, now) {
        return Found::Expired(kind);
    }
    let next = next_state(t.proto, tcp_flags, state, e.flags & CT_F_ORIGINAL != 0);
    if next != state {
        e.state = next;
        e.last_seen_ns = now;
        // Keep both halves in the same state (rare: only on transitions).
        if let Some(r) = NB_CT.get_ptr_mut(&e.reverse) {
            // SAFETY: a value of the map, as above.
            unsafe { (*r).state = next };
        }
    } else if idle > (tmo >> 4).min(CT_REFRESH_NS) && (dir == CT_DIR_OUT || refreshes(cfg, e.kind))
    {
        e.last_seen_ns = now;
    }
    Found::Hit(e.nat_addr, e.nat_port, e.kind)
}

/// Does an inbound packet keep a `kind` session alive? A SNAT
/// mapping only by outbound packets unless `inbound_refresh` (RFC 4787
/// REQ-6, RFC 7857 sec. 7: an outsider must not hold a mapping open).
// Its own BPF function: off the hot (outbound) path's frame.
#[inline(never)]
fn refreshes(cfg: &NatConfig, kind: u8) -> bool {
    kind != CT_SNAT || cfg.flags & NAT_INBOUND_REFRESH != 0
}

/// Is the session of entry `e` (and its other half, if any) idle past
/// its state's timeout at `now`? A session's state and last activity are
/// the furthest and latest of its two halves.
#[inline(always)]
pub fn idle_past(timeouts: &[u32; 8], e: &CtEntry, now: u64) -> bool {
    // SAFETY: a copy is taken right away; the value may be deleted after.
    let (last, state) = match unsafe { NB_CT.get(&e.reverse) } {
        Some(r) => (e.last_seen_ns.max(r.last_seen_ns), e.state.max(r.state)),
        None => (e.last_seen_ns, e.state),
    };
    now.saturating_sub(last) > timeout_ns(timeouts, state)
}

/// Removes the session of the entry at `k` if it is idle past its timeout
/// (a packet found it, or a new session wants its port, before the sweep
/// came by), counting it. True if `k` is gone (by us or meanwhile). Its
/// own BPF function, on a small stack: the programs' frames are large.
#[inline(never)]
pub fn expire_if_idle(cfg: &NatConfig, k: &CtKey, now: u64) -> bool {
    let Some(e) = NB_CT.get_ptr(k) else {
        return true;
    };
    // SAFETY: a map value; read before the removal below frees it.
    let e = unsafe { &*e };
    // A session counted in an endpoint-independent mapping is left to the
    // sweep, which releases the mapping too (that call would not fit on
    // the stack of the programs calling this).
    if e.flags & CT_F_EIM != 0 || !idle_past(&cfg.timeouts, e, now) {
        return false;
    }
    if remove_session(k, e, now) {
        sweep::release(1);
        count(nat_stat::EXPIRED_LOOKUP);
    }
    true
}

/// Removes the session entry `e` (at `k`) belongs to: the original half
/// first, whose successful delete is the one that counts (true: the
/// caller releases the session); then the other half. An expired SNAT
/// mapping leaves a grave for its inbound key.
#[inline(always)]
pub fn remove_session(k: &CtKey, e: &CtEntry, now: u64) -> bool {
    let snat = e.kind == CT_SNAT;
    let (orig, other) = if e.flags & CT_F_ORIGINAL != 0 {
        (*k, e.reverse)
    } else {
        (e.reverse, *k)
    };
    if NB_CT.remove(&orig).is_err() {
        return false;
    }
    let _ = NB_CT.remove(&other);
    if snat {
        // The SNAT original is the outbound half: `other` is inbound.
        let _ = NB_CT_GRAVES.insert(&other, &now, 0);
    }
    true
}

/// Did an SNAT mapping with inbound key `k` expire recently?
#[inline(always)]
pub fn grave(k: &CtKey) -> bool {
    // SAFETY: only the presence is used, not the value.
    unsafe { NB_CT_GRAVES.get(k) }.is_some()
}
