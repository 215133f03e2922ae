//! Conntrack entries: lookup with expiry and state tracking, session
//! removal (counted once, on the delete of the original half), and the
//! admission policy of new sessions (a full table evicts the oldest
//! unassured session, never an assured one).
use core::ffi::c_void;

use aya_ebpf::{
    helpers::{bpf_ktime_get_coarse_ns, bpf_map_pop_elem},
    macros::map,
    maps::{LruHashMap, PerCpuArray, Queue},
};
use netbridge_common::{
    ADMIT_SCAN, Be16, Be32, CT_DIR_OUT, CT_F_ASSURED, CT_F_EIM, CT_F_ORIGINAL, CT_F_REPLIED,
    CT_GRAVES_SIZE, CT_REFRESH_NS, CT_SIZE, CT_SNAT, CT_TCP_CLOSED, CT_TCP_CLOSING,
    CT_TCP_ESTABLISHED, CT_TCP_SYN, CT_UDP, CT_UDP_REPLIED, CtEntry, CtKey, NAT_INBOUND_REFRESH,
    NatConfig, drop_reason, nat_stat,
};

use crate::nat::{
    Tuple, count,
    packet::{IPPROTO_TCP, IPPROTO_UDP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    quota, sweep,
};

/// Sized by `up` from `max_sessions` (EbpfLoader::map_max_entries).
#[map]
pub static NB_CT: LruHashMap<CtKey, CtEntry> = LruHashMap::pinned(CT_SIZE, 0);

/// Inbound keys of expired SNAT sessions -> when they expired.
#[map]
static NB_CT_GRAVES: LruHashMap<CtKey, u64> = LruHashMap::pinned(CT_GRAVES_SIZE, 0);

/// The original keys of the last `max_sessions` sessions admitted, oldest
/// at the head: the candidates to give way when the table is full. Sized
/// by `up` to `max_sessions`; a push to a full queue drops its oldest.
#[map]
static NB_CT_ADMITTED: Queue<CtKey> = Queue::pinned(CT_SIZE / 2, 0);

/// [`evict_for`]'s keys, off the BPF stack.
#[map]
static NB_EVICT_SCRATCH: PerCpuArray<[CtKey; 2]> = PerCpuArray::with_max_entries(1, 0);

pub const BPF_NOEXIST: u64 = 1;
/// Queue push: a full queue drops its head to make room.
const BPF_EXIST: u64 = 2;

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

/// The NAT's clock, for every timestamp it compares (sessions, sweeps,
/// limits, filtering permissions, fragments): CLOCK_MONOTONIC at tick
/// resolution (4 ms here), no clocksource read; bpf_ktime_get_ns cost
/// about 25 ns a packet on this VM. Timeouts are seconds. Userspace reads
/// ages against CLOCK_MONOTONIC: at most a tick high.
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
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
pub fn next_state(proto: u8, tcp_flags: u8, state: u8, original: bool) -> u8 {
    match proto {
        IPPROTO_TCP if tcp_flags & TCP_RST != 0 => CT_TCP_CLOSED,
        IPPROTO_TCP if tcp_flags & TCP_FIN != 0 && state < CT_TCP_CLOSING => CT_TCP_CLOSING,
        // The answering side spoke (SYN-ACK): the handshake went through.
        IPPROTO_TCP if state == CT_TCP_SYN && !original => CT_TCP_ESTABLISHED,
        IPPROTO_UDP if state == CT_UDP && !original => CT_UDP_REPLIED,
        _ => state,
    }
}

/// Session flags after a packet seen on the opening half (`original`) or
/// the answering one: replied once the answer came, assured once the
/// opening side spoke again after it (TCP: an ACK without SYN or RST, the
/// three-way handshake done; a SYN-ACK alone assures nothing).
#[inline(always)]
pub fn next_flags(flags: u8, proto: u8, tcp_flags: u8, original: bool) -> u8 {
    if !original {
        return flags | CT_F_REPLIED;
    }
    let plain =
        proto != IPPROTO_TCP || (tcp_flags & (TCP_SYN | TCP_RST) == 0 && tcp_flags & TCP_ACK != 0);
    if flags & CT_F_REPLIED != 0 && plain {
        flags | CT_F_ASSURED
    } else {
        flags
    }
}

/// Idle timeout of a session in `state` with `flags`, from the NAT
/// config, plus [`TICK_SLACK_NS`]. A TCP session answered (SYN-ACK) but
/// never assured keeps the SYN timeout: a half-open handshake is no
/// established connection.
#[inline(always)]
pub fn timeout_ns(timeouts: &[u32; 8], state: u8, flags: u8) -> u64 {
    let state = if state == CT_TCP_ESTABLISHED && flags & CT_F_ASSURED == 0 {
        CT_TCP_SYN
    } else {
        state
    };
    timeouts[(state & 7) as usize] as u64 * 1_000_000_000 + TICK_SLACK_NS
}

/// [`now`] lags real time by up to one tick (10 ms at HZ=100), by a
/// different amount at each reading: two readings a timeout apart can
/// differ by a tick less. Waiting a tick longer keeps every mapping for
/// at least its configured timeout (RFC 4787 REQ-5: never less).
pub const TICK_SLACK_NS: u64 = 10_000_000;

/// A lookup's outcome: a hit (the mapping and the session kind), a miss,
/// or a session past its timeout, gone now (its kind given). A struct with
/// every field set, not an enum: LLVM packed an enum's miss with its
/// undefined payload into a register never written, which the verifier
/// refuses (`R3 !read_ok` in `nat::fast::port_out`).
#[derive(Clone, Copy)]
pub struct Found {
    what: u8,
    kind: u8,
    port: Be16,
    addr: Be32,
}

const HIT: u8 = 0;
const MISS: u8 = 1;
const EXPIRED: u8 = 2;

impl Found {
    const MISS: Found = Found::new(MISS, Be32::ZERO, Be16::ZERO, 0);

    #[inline(always)]
    const fn new(what: u8, addr: Be32, port: Be16, kind: u8) -> Self {
        Found {
            what,
            kind,
            port,
            addr,
        }
    }

    /// A session of `kind` found past its timeout (gone now).
    #[inline(always)]
    const fn gone(kind: u8) -> Self {
        Found::new(EXPIRED, Be32::ZERO, Be16::ZERO, kind)
    }

    /// A hit's mapping and session kind.
    #[inline(always)]
    pub fn hit(self) -> Option<(Be32, Be16, u8)> {
        (self.what == HIT).then_some((self.addr, self.port, self.kind))
    }

    /// The kind of a session found past its timeout.
    #[inline(always)]
    pub fn expired(self) -> Option<u8> {
        (self.what == EXPIRED).then_some(self.kind)
    }
}

/// The mapping for `t` seen in `dir`. An entry past its timeout is never
/// used: its session is removed (its port free again) and `Expired`
/// returned. Otherwise the state is advanced and the entry refreshed,
/// except by an outbound RST (RFC 7857 sec. 7.1: the inside host's "not
/// interested" must not keep the mapping alive).
#[inline(always)]
pub fn lookup(cfg: &NatConfig, t: &Tuple, dir: u8, tcp_flags: u8) -> Found {
    let refresh = dir != CT_DIR_OUT || tcp_flags & TCP_RST == 0;
    lookup_as(cfg, t, dir, tcp_flags, refresh)
}

/// [`lookup`], refreshing the entry only if `refresh`; the state
/// advances either way. (ICMP errors use [`peek`]: they neither refresh
/// nor advance a session, RFC 5508 REQ-6, RFC 7857 sec. 7.1.)
#[inline(always)]
fn lookup_as(cfg: &NatConfig, t: &Tuple, dir: u8, tcp_flags: u8, refresh: bool) -> Found {
    let k = key(t, dir);
    let Some(e) = NB_CT.get_ptr_mut(&k) else {
        return Found::MISS;
    };
    // SAFETY: a value of the map; an LRU map value stays valid memory for
    // the program's run (RCU), even if evicted meanwhile.
    let e = unsafe { &mut *e };
    let now = now();
    let (state, kind, flags) = (e.state, e.kind, e.flags);
    let tmo = timeout_ns(&cfg.timeouts, state, flags);
    let idle = now.saturating_sub(e.last_seen_ns);
    // Rare: this half is idle past the timeout; the session may still be
    // alive through its other half.
    if idle > tmo && expire_if_idle(cfg, &k, now) {
        return Found::gone(kind);
    }
    let original = flags & CT_F_ORIGINAL != 0;
    let next = next_state(t.proto, tcp_flags, state, original);
    let next_fl = next_flags(flags, t.proto, tcp_flags, original);
    if next != state || next_fl != flags {
        e.state = next;
        e.flags = next_fl;
        if refresh {
            e.last_seen_ns = now;
        }
        // Keep both halves in the same state and flags (rare: only on
        // transitions).
        if let Some(r) = NB_CT.get_ptr_mut(&e.reverse) {
            // SAFETY: a value of the map, as above.
            let r = unsafe { &mut *r };
            r.state = next;
            r.flags = (r.flags & CT_F_ORIGINAL) | (next_fl & !CT_F_ORIGINAL);
        }
    } else if refresh
        && idle > (tmo >> 4).min(CT_REFRESH_NS)
        && (dir == CT_DIR_OUT || refreshes(cfg, e.kind))
    {
        e.last_seen_ns = now;
    }
    Found::new(HIT, e.nat_addr, e.nat_port, e.kind)
}

/// The mapping for `t` seen in `dir` for a packet that must neither keep
/// its session alive nor advance its state: an ICMP error (RFC 5508
/// REQ-6, RFC 7857 sec. 7.1). As [`lookup`], but nothing is written.
#[inline(always)]
pub fn peek(cfg: &NatConfig, t: &Tuple, dir: u8) -> Found {
    let k = key(t, dir);
    // SAFETY: a copy of the value is taken right away.
    let Some(e) = (unsafe { NB_CT.get(&k) }).copied() else {
        return Found::MISS;
    };
    let now = now();
    let tmo = timeout_ns(&cfg.timeouts, e.state, e.flags);
    if now.saturating_sub(e.last_seen_ns) > tmo && expire_if_idle(cfg, &k, now) {
        return Found::gone(e.kind);
    }
    Found::new(HIT, e.nat_addr, e.nat_port, e.kind)
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
    let (last, state, flags) = match unsafe { NB_CT.get(&e.reverse) } {
        Some(r) => (
            e.last_seen_ns.max(r.last_seen_ns),
            e.state.max(r.state),
            e.flags | r.flags,
        ),
        None => (e.last_seen_ns, e.state, e.flags),
    };
    now.saturating_sub(last) > timeout_ns(timeouts, state, flags)
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
    quota::give(&orig.saddr);
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

/// Admission of a new session whose original key is `orig` (the policy,
/// README "Admission under pressure"): a source holding `quota` live
/// sessions already (0: no quota) is refused (`nat_quota`); below
/// `max_sessions` it is admitted; at the limit an unassured session gives
/// way (evicted, counted `evicted`): the oldest of the new session's own
/// source among the next [`ADMIT_SCAN`] candidates, else the oldest of
/// them. If none can, the new one is refused (`nat_table_full`). An
/// assured session is never evicted. The admitted session becomes a
/// candidate itself; one not inserted after all is given back
/// ([`unadmit`]).
#[inline(always)]
pub fn admit(max_sessions: u32, quota: u32, orig: &CtKey) -> Result<(), u32> {
    if quota::take(orig.saddr, quota) == 0 {
        return Err(drop_reason::NAT_QUOTA);
    }
    let admitted = sweep::reserve(max_sessions)
        || (evict_for(orig.saddr) != 0 && sweep::reserve(max_sessions));
    if !admitted {
        quota::give_back(orig.saddr);
        return Err(drop_reason::NAT_TABLE_FULL);
    }
    let _ = NB_CT_ADMITTED.push(orig, BPF_EXIST);
    Ok(())
}

/// An admitted session of source `src` (its original key's) was not
/// inserted: refused, or another CPU's equal session is used. Its place
/// goes back.
#[inline(always)]
pub fn unadmit(src: Be32) {
    sweep::release(1);
    quota::give_back(src);
}

/// Pops up to [`ADMIT_SCAN`] admission candidates, oldest first, and
/// evicts the first unassured one opened by `src`; unassured ones of other
/// sources go back to the tail (still candidates), but the oldest of them
/// is held out and evicted if `src` has none. A flood thus churns its own sessions, and a
/// new flow of someone else is not pushed out before its answer came.
/// Gone or assured candidates leave the queue for good. 1: a slot was
/// freed (by us or, racing, another CPU). Its own BPF function: the loop
/// stays off the callers' frames.
#[inline(never)]
fn evict_for(src: Be32) -> u32 {
    // Keys in a per-CPU slot, not on the stack: this frame stacks on the
    // program's and new_session's. [0]: the candidate, [1]: the oldest of
    // another source.
    let Some(slot) = NB_EVICT_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot of a per-CPU array; programs are not preempted.
    let slot = unsafe { &mut *slot };
    let queue = &NB_CT_ADMITTED as *const Queue<CtKey> as *mut c_void;
    let now = now();
    let mut other = false;
    let mut i = 0;
    while i < ADMIT_SCAN {
        // SAFETY: the queue map and a key-sized buffer in a map value.
        if unsafe { bpf_map_pop_elem(queue, &mut slot[0] as *mut CtKey as *mut c_void) } != 0 {
            break;
        }
        i += 1;
        // SAFETY: only the flags are read, right away.
        match unsafe { NB_CT.get(&slot[0]) } {
            Some(e) if e.flags & CT_F_ASSURED == 0 => {}
            _ => {
                count(nat_stat::EVICT_SKIPPED);
                continue;
            }
        }
        if slot[0].saddr == src {
            if other {
                // Not evicted after all: a candidate again.
                let _ = NB_CT_ADMITTED.push(&slot[1], BPF_EXIST);
            }
            return evict(&slot[0], now);
        }
        if other {
            let _ = NB_CT_ADMITTED.push(&slot[0], BPF_EXIST);
        } else {
            // Held out of the queue: evicted below if `src` has none.
            slot[1] = slot[0];
            other = true;
        }
    }
    if other { evict(&slot[1], now) } else { 0 }
}

/// Evicts the session of candidate `k` if it is still there and
/// unassured (logged by the sweep: a log call here would not fit the
/// stack). 1: the slot is free (gone already counts).
#[inline(always)]
fn evict(k: &CtKey, now: u64) -> u32 {
    let Some(e) = NB_CT.get_ptr(k) else {
        return 1;
    };
    // SAFETY: a map value; it stays valid memory for the program's run
    // (RCU) even once removed below.
    let e = unsafe { &*e };
    if e.flags & CT_F_ASSURED != 0 {
        return 0;
    }
    if remove_session(k, e, now) {
        sweep::release_evicted();
        count(nat_stat::EVICTED);
    }
    1
}
