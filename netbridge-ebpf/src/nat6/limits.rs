//! NAT66 limits and expiry, as the IPv4 NAT's (`nat::quota`, `nat::sweep`)
//! with their settings (`max_sessions`, `max_sessions_per_host`,
//! `max_sessions_per_source`, `sweep_ms`, read from the IPv4 NAT config)
//! but counted apart: NB_CT6 has its own live count (`NB_CT6_STATE`, with
//! the sweep's `bpf_timer`) and its own quotas (`NB_CT6_QUOTA`, keyed by a
//! lab host's address or an upstream client's /64: one subscriber picks
//! any address of its prefix). At the limit a new session is refused
//! (`nat_table_full`); nothing is evicted. Every removal is the kernel's
//! (lookup, sweep, `gc`, a forward's purge), so the counts stay exact.
//! An expired SNAT66 session leaves a grave (`NB_CT6_GRAVES`), so a late
//! reply is dropped (`nat_expired`) after the sweep removed it too.
use core::{ffi::c_void, ptr::null};

use aya_ebpf::{
    bindings::{
        BPF_F_CURRENT_NETNS, bpf_map_type::BPF_MAP_TYPE_ARRAY, bpf_map_type::BPF_MAP_TYPE_HASH,
        bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2,
        bpf_spin_lock, bpf_timer,
    },
    helpers::{
        bpf_for_each_map_elem, bpf_map_delete_elem, bpf_map_lookup_elem, bpf_map_update_elem,
        bpf_sk_lookup_udp, bpf_sk_release, bpf_skc_lookup_tcp, bpf_spin_lock as lock,
        bpf_spin_unlock as unlock, bpf_timer_cancel, bpf_timer_init, bpf_timer_set_callback,
        bpf_timer_start,
    },
    macros::map,
    maps::{LruHashMap, PerCpuArray},
    programs::TcContext,
};
use netbridge_common::{
    CT_DIR_IN, CT_DIR_OUT, CT_F_ORIGINAL, CT_GRAVES_SIZE, CT_ORPHAN_GRACE_NS, CT6_QUOTA_SIZE,
    Ct6Entry, Ct6Key, CtCounts, CtStateView, CtlCmd, In6, ctl, drop_reason, nat_stat,
};

use super::ct::{self, BPF_NOEXIST, NB_CT6};
use crate::{
    nat::{config_any, count_n},
    parse::ETH_HLEN,
};

/// LIBBPF_PIN_BY_NAME, as the length of the BTF `pinning` array.
const PIN_BY_NAME: usize = 1;
/// BPF_F_NO_PREALLOC: a quota entry per source with sessions.
const NO_PREALLOC: usize = 1;
const CLOCK_MONOTONIC: u64 = 1;
const EBUSY: i64 = 16;
const EINVAL: i64 = 22;
const ENOENT: u32 = 2;

/// The value of `NB_CT6_STATE`: [`CtStateView`] with the kernel's types.
#[repr(C)]
pub struct State6 {
    timer: bpf_timer,
    lock: bpf_spin_lock,
    _pad: u32,
    counts: CtCounts,
}
const _: () = assert!(core::mem::size_of::<State6>() == core::mem::size_of::<CtStateView>());

/// A value of `NB_CT6_QUOTA` (`QuotaView` with the kernel's lock type).
#[repr(C)]
pub struct Quota6 {
    lock: bpf_spin_lock,
    sessions: u32,
}

/// BTF definitions by hand: a timer and spin locks need BTF, and
/// aya-ebpf's `btf_maps` have no `pinning` field.
#[repr(C)]
pub struct StateMap {
    r#type: *const [i32; BPF_MAP_TYPE_ARRAY as usize],
    key: *const u32,
    value: *const State6,
    max_entries: *const [i32; 1],
    pinning: *const [i32; PIN_BY_NAME],
}

#[repr(C)]
pub struct QuotaMap {
    r#type: *const [i32; BPF_MAP_TYPE_HASH as usize],
    key: *const In6,
    value: *const Quota6,
    max_entries: *const [i32; CT6_QUOTA_SIZE as usize],
    map_flags: *const [i32; NO_PREALLOC],
    pinning: *const [i32; PIN_BY_NAME],
}
// SAFETY: placeholder pointers that only describe the maps in BTF; never
// dereferenced.
unsafe impl Sync for StateMap {}
// SAFETY: as above.
unsafe impl Sync for QuotaMap {}

#[unsafe(link_section = ".maps")]
#[unsafe(export_name = "NB_CT6_STATE")]
static NB_CT6_STATE: StateMap = StateMap {
    r#type: null(),
    key: null(),
    value: null(),
    max_entries: null(),
    pinning: null(),
};

#[unsafe(link_section = ".maps")]
#[unsafe(export_name = "NB_CT6_QUOTA")]
static NB_CT6_QUOTA: QuotaMap = QuotaMap {
    r#type: null(),
    key: null(),
    value: null(),
    max_entries: null(),
    map_flags: null(),
    pinning: null(),
};

/// Per CPU: a quota key and a first quota value, off the BPF stack (the
/// callers' chains are near the 512-byte limit).
#[repr(C)]
pub struct Scratch {
    key: In6,
    first: [u32; 2],
}

#[map]
static NB_CT6_LIMITS: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Inbound keys of expired SNAT66 sessions -> when they expired (as the
/// IPv4 NAT's `NB_CT_GRAVES`).
#[map]
static NB_CT6_GRAVES: LruHashMap<Ct6Key, u64> = LruHashMap::pinned(CT_GRAVES_SIZE, 0);

#[inline(always)]
fn state_map() -> *mut c_void {
    &NB_CT6_STATE as *const StateMap as *mut c_void
}

#[inline(always)]
fn quota_map() -> *mut c_void {
    &NB_CT6_QUOTA as *const QuotaMap as *mut c_void
}

#[inline(always)]
fn state() -> Option<&'static mut State6> {
    let k = 0u32;
    // SAFETY: a lookup in an array of one; the value lives in the map.
    let p = unsafe { bpf_map_lookup_elem(state_map(), &k as *const u32 as *const c_void) };
    // SAFETY: non-null map values are valid State6.
    (!p.is_null()).then(|| unsafe { &mut *(p as *mut State6) })
}

/// This CPU's scratch with the quota key of the session whose original
/// half is `orig`: its source, an upstream one (inbound original: a
/// forward's client) cut to its /64.
#[inline(always)]
fn scratch_for(orig: &Ct6Key) -> Option<&'static mut Scratch> {
    let s = NB_CT6_LIMITS.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot of a per-CPU array; programs are not preempted.
    let s = unsafe { &mut *s };
    s.key = orig.saddr;
    if orig.dir == CT_DIR_IN {
        s.key[2] = Default::default();
        s.key[3] = Default::default();
    }
    Some(s)
}

#[inline(always)]
fn quota(k: &In6) -> Option<&'static mut Quota6> {
    // SAFETY: a lookup keyed by an In6 in map memory.
    let p = unsafe { bpf_map_lookup_elem(quota_map(), k as *const In6 as *const c_void) };
    // SAFETY: non-null map values are valid Quota6.
    (!p.is_null()).then(|| unsafe { &mut *(p as *mut Quota6) })
}

/// Counts a session of `s.key` unless it holds `max` already (0: no
/// quota, counted anyway). A full map admits (never locks a source out).
#[inline(always)]
fn take(s: &mut Scratch, max: u32) -> bool {
    let q = match quota(&s.key) {
        Some(q) => q,
        None => {
            s.first = [0, 1];
            // SAFETY: key and value of the map's types, in map memory; the
            // lock word is zero (unlocked).
            let r = unsafe {
                bpf_map_update_elem(
                    quota_map(),
                    &s.key as *const In6 as *const c_void,
                    &s.first as *const [u32; 2] as *const c_void,
                    BPF_NOEXIST,
                )
            };
            if r == 0 {
                return true;
            }
            match quota(&s.key) {
                Some(q) => q,
                None => return true,
            }
        }
    };
    // SAFETY: the lock of a map value whose BTF declares it.
    unsafe { lock(&mut q.lock) };
    let ok = max == 0 || q.sessions < max;
    if ok {
        q.sessions += 1;
    }
    // SAFETY: as above.
    unsafe { unlock(&mut q.lock) };
    ok
}

/// One session of `k` less; the entry goes at 0.
#[inline(always)]
fn give(k: &In6) {
    let Some(q) = quota(k) else {
        return;
    };
    // SAFETY: the lock of a map value whose BTF declares it.
    unsafe { lock(&mut q.lock) };
    q.sessions = q.sessions.saturating_sub(1);
    let empty = q.sessions == 0;
    // SAFETY: as above.
    unsafe { unlock(&mut q.lock) };
    if empty {
        // SAFETY: a key of the map's type.
        unsafe { bpf_map_delete_elem(quota_map(), k as *const In6 as *const c_void) };
    }
}

/// Admits one more live session if fewer than `max` are (0: no config
/// written, no bound but the table's), counting the high-water mark.
#[inline(always)]
fn reserve(max: u32) -> bool {
    let Some(s) = state() else {
        return false;
    };
    // SAFETY: the lock of a map value whose BTF declares it.
    unsafe { lock(&mut s.lock) };
    let c = &mut s.counts;
    let ok = max == 0 || c.live < max as u64;
    if ok {
        c.live += 1;
        if c.live > c.high_water {
            c.high_water = c.live;
        }
    }
    // SAFETY: as above.
    unsafe { unlock(&mut s.lock) };
    ok
}

/// `n` sessions are gone (or an admitted one was never inserted).
#[inline(always)]
fn release(n: u64) {
    let Some(s) = state() else {
        return;
    };
    // SAFETY: the lock of a map value whose BTF declares it.
    unsafe { lock(&mut s.lock) };
    s.counts.live = s.counts.live.saturating_sub(n);
    // SAFETY: as above.
    unsafe { unlock(&mut s.lock) };
}

/// Admission of a new session whose original half is `orig` (SNAT66: the
/// lab host's outbound key; DNAT66: the client's inbound one): 0, or the
/// drop reason: the source's quota held (`nat_quota`), or `max_sessions`
/// NAT66 sessions live (`nat_table_full`). Its own small BPF function,
/// beside the session's (not under it): the chains are near the limit.
#[inline(never)]
pub fn admit(orig: &Ct6Key) -> u32 {
    let (max, per_host, per_source) = config_any().map_or((0, 0, 0), |c| {
        (c.max_sessions, c.host_quota, c.source_quota)
    });
    let Some(s) = scratch_for(orig) else {
        return drop_reason::NAT_CT_INSERT;
    };
    let max_src = if orig.dir == CT_DIR_IN {
        per_source
    } else {
        per_host
    };
    if !take(s, max_src) {
        return drop_reason::NAT_QUOTA;
    }
    if !reserve(max) {
        give(&s.key);
        return drop_reason::NAT_TABLE_FULL;
    }
    0
}

/// An admitted session (original half `orig`) was not opened after all.
#[inline(never)]
pub fn unadmit(orig: &Ct6Key) {
    release(1);
    if let Some(s) = scratch_for(orig) {
        give(&s.key);
    }
}

/// The session with original half `orig` and other half `other` expired
/// (removed now): out of the live count and its source's quota; a SNAT66
/// session leaves a grave for its inbound key.
#[inline(always)]
pub fn expired(orig: &Ct6Key, other: &Ct6Key, now: u64) {
    release(1);
    buried(orig, other, now);
}

/// An expired session's quota given back, its grave dug (SNAT66).
#[inline(always)]
fn buried(orig: &Ct6Key, other: &Ct6Key, now: u64) {
    if let Some(s) = scratch_for(orig) {
        give(&s.key);
    }
    if orig.dir == CT_DIR_OUT {
        let _ = NB_CT6_GRAVES.insert(other, &now, 0);
    }
}

/// Is the inbound packet `k`, with no session, a late reply to an
/// expired SNAT66 mapping that no socket of the host itself takes? Its
/// own BPF function (the socket tuple's frame).
#[inline(never)]
pub fn late_reply(ctx: &TcContext, k: &Ct6Key) -> bool {
    // SAFETY: only the presence is used.
    if unsafe { NB_CT6_GRAVES.get(k) }.is_none() {
        return false;
    }
    let raw = |a: &In6| [a[0].raw(), a[1].raw(), a[2].raw(), a[3].raw()];
    let mut tuple = bpf_sock_tuple {
        __bindgen_anon_1: bpf_sock_tuple__bindgen_ty_1 {
            ipv6: bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 {
                saddr: raw(&k.saddr),
                daddr: raw(&k.daddr),
                sport: k.sport.raw(),
                dport: k.dport.raw(),
            },
        },
    };
    let size = core::mem::size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2>() as u32;
    let (skb, netns) = (ctx.skb.skb as *mut c_void, BPF_F_CURRENT_NETNS as u64);
    // SAFETY: a valid skb and tuple; a socket found is released below.
    let sk = unsafe {
        match k.proto {
            6 => bpf_skc_lookup_tcp(skb, &mut tuple, size, netns, 0),
            17 => bpf_sk_lookup_udp(skb, &mut tuple, size, netns, 0),
            _ => return true,
        }
    };
    if sk.is_null() {
        return true;
    }
    // SAFETY: a reference the lookup took.
    unsafe { bpf_sk_release(sk as *mut c_void) };
    false
}

/// One walk: its time, the timeouts, and how many sessions went.
#[repr(C)]
struct Walk {
    now: u64,
    /// Counts up from an arbitrary start (see `nat::sweep::walk`).
    removed: u64,
}

/// bpf_for_each_map_elem callback: an original half idle past its
/// session's timeout takes the session with it; a half whose original is
/// missing past a grace period goes alone. 0 = go on.
#[inline(never)]
extern "C" fn visit(
    _map: *mut c_void,
    key: *const Ct6Key,
    e: *const Ct6Entry,
    w: *mut Walk,
) -> i64 {
    // SAFETY: the kernel passes the current key and value; `w` is the
    // caller's Walk. Copies: the entry may be deleted below.
    let (k, e, w) = unsafe { (*key, *e, &mut *w) };
    if e.flags & CT_F_ORIGINAL == 0 {
        // SAFETY: only the presence is used.
        if w.now.saturating_sub(e.created_ns) > CT_ORPHAN_GRACE_NS
            && unsafe { NB_CT6.get(&e.reverse) }.is_none()
        {
            let _ = NB_CT6.remove(&k);
        }
        return 0;
    }
    let Some(cfg) = super::config_any() else {
        return 1;
    };
    if ct::idle_past(cfg, &e, w.now) && NB_CT6.remove(&k).is_ok() {
        let _ = NB_CT6.remove(&e.reverse);
        buried(&k, &e.reverse, w.now);
        w.removed = w.removed.wrapping_add(1);
    }
    0
}

/// Removes every NAT66 session idle past its timeout (all of them with
/// NAT66 off: its timeouts are 0); skipped with none live.
#[inline(always)]
fn sweep(s: &mut State6) -> u64 {
    let now = ct::now();
    let mut w = Walk {
        now,
        removed: s.counts.last_sweep_ns,
    };
    let start = w.removed;
    if s.counts.live > 0 {
        // SAFETY: NB_CT6 is a map; `visit` matches the callback signature
        // and `w` outlives the call.
        unsafe {
            bpf_for_each_map_elem(
                &NB_CT6 as *const _ as *mut c_void,
                visit as *const () as *mut c_void,
                &mut w as *mut Walk as *mut c_void,
                0,
            )
        };
    }
    let removed = w.removed.wrapping_sub(start);
    // SAFETY: the lock of a map value whose BTF declares it.
    unsafe { lock(&mut s.lock) };
    s.counts.live = s.counts.live.saturating_sub(removed);
    s.counts.sweeps += 1;
    s.counts.last_sweep_ns = now;
    // SAFETY: as above.
    unsafe { unlock(&mut s.lock) };
    count_n(nat_stat::EXPIRED6_SWEEP, removed);
    removed
}

/// The timer callback (must return 0): sweep, then come back.
#[inline(never)]
extern "C" fn on_timer(_map: *mut c_void, _key: *mut u32, s: *mut State6) -> i32 {
    // SAFETY: the kernel passes the timer's map value.
    let s = unsafe { &mut *s };
    sweep(s);
    // SAFETY: the timer of that value, initialised before it could fire.
    unsafe { bpf_timer_start(&mut s.timer, crate::nat::sweep::period_ns(), 0) };
    0
}

/// Starts the timer with this program's callback, as `nat::sweep::arm`:
/// running, its period restarts (or with `takeover` it moves to this
/// program's callback); stopped, it starts again.
#[inline(always)]
fn arm(s: &mut State6, takeover: bool) -> u32 {
    // SAFETY: the timer field of NB_CT6_STATE's value, with that map.
    let rc = unsafe { bpf_timer_init(&mut s.timer, state_map(), CLOCK_MONOTONIC) };
    match rc {
        0 => {}
        rc if rc == -EBUSY && !takeover => {
            // SAFETY: an initialised timer; -EINVAL if it has no callback.
            match unsafe { bpf_timer_start(&mut s.timer, crate::nat::sweep::period_ns(), 0) } {
                0 => return ctl::RUNNING,
                rc if rc == -EINVAL => {}
                rc => return ctl::ERROR + (-rc) as u32,
            }
        }
        rc if rc == -EBUSY => {}
        rc => return ctl::ERROR + (-rc) as u32,
    }
    let cb = on_timer as *const () as *mut c_void;
    // SAFETY: an initialised timer; `on_timer` is a static callback.
    let rc = unsafe { bpf_timer_set_callback(&mut s.timer, cb) };
    if rc != 0 {
        return ctl::ERROR + (-rc) as u32;
    }
    // SAFETY: an initialised timer with a callback.
    match unsafe { bpf_timer_start(&mut s.timer, crate::nat::sweep::period_ns(), 0) } {
        0 => ctl::ARMED,
        rc => ctl::ERROR + (-rc) as u32,
    }
}

/// `nb_ct_ctl`'s NAT66 part, after the IPv4 part returned `r4`: arm and
/// stop start and stop this timer too, a sweep sweeps NB_CT6 too (the
/// sum returned); a purge is the IPv4 table's alone (`forward` purges
/// NAT66 sessions by marking them idle, then sweeping). An error of
/// either part is the result.
#[inline(always)]
pub fn control(ctx: &TcContext, r4: u32) -> u32 {
    if r4 >= ctl::ERROR {
        return r4;
    }
    let Ok(cmd) = ctx.load::<CtlCmd>(ETH_HLEN) else {
        return ctl::ERROR + EINVAL as u32;
    };
    let Some(s) = state() else {
        return ctl::ERROR + ENOENT;
    };
    match cmd.op {
        ctl::OP_ARM => match arm(s, cmd.flags & ctl::F_TAKEOVER != 0) {
            e if e >= ctl::ERROR => e,
            _ => r4,
        },
        ctl::OP_SWEEP => r4.saturating_add(sweep(s) as u32),
        ctl::OP_STOP => {
            // SAFETY: the timer field; cancelling an idle timer is a no-op.
            unsafe { bpf_timer_cancel(&mut s.timer) };
            r4
        }
        _ => r4,
    }
}
