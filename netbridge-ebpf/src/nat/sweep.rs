//! Expiry with no process running: a `bpf_timer` walks the conntrack table
//! every `sweep_ms` (`bpf_for_each_map_elem`) and removes the sessions idle
//! past their state's timeout. The timer, a spin lock and the live-session
//! count share the one value of `NB_CT_STATE`, pinned by name: the timer
//! lives as long as the pin, not the loader.
//!
//! `nb_ct_ctl` is never attached: `up` runs it (BPF_PROG_TEST_RUN) to start
//! the timer, whose callback is its own; `gc` to sweep now; `forward` to
//! purge a forward's sessions. Every removal happens in the kernel, so the
//! live count that `max_sessions` bounds is exact.
use core::{ffi::c_void, ptr::null};

use aya_ebpf::{
    bindings::{bpf_map_type::BPF_MAP_TYPE_ARRAY, bpf_spin_lock, bpf_timer},
    helpers::{
        bpf_for_each_map_elem, bpf_map_lookup_elem, bpf_spin_lock as lock,
        bpf_spin_unlock as unlock, bpf_timer_cancel, bpf_timer_init, bpf_timer_set_callback,
        bpf_timer_start,
    },
    programs::TcContext,
};
use netbridge_common::{
    CT_DIR_IN, CT_DNAT, CT_F_EIM, CT_F_ORIGINAL, CT_HAIRPIN, CT_ORPHAN_GRACE_NS,
    CT_SWEEP_DEFAULT_MS, CtCounts, CtEntry, CtKey, CtStateView, CtlCmd, ctl, nat_stat,
};

use crate::{
    nat::{
        config_any, count_n,
        ct::{self, NB_CT},
    },
    parse::ETH_HLEN,
};

/// The value of `NB_CT_STATE`: [`CtStateView`] with the kernel's types.
#[repr(C)]
pub struct CtState {
    timer: bpf_timer,
    lock: bpf_spin_lock,
    /// Sessions evicted since the last sweep (which logs them). Userspace
    /// reads this word as padding.
    evicted: u32,
    counts: CtCounts,
}
const _: () = assert!(core::mem::size_of::<CtState>() == core::mem::size_of::<CtStateView>());

/// LIBBPF_PIN_BY_NAME, as the length of the BTF `pinning` array (also
/// `quota::QuotaMap`'s).
pub(crate) const PIN_BY_NAME: usize = 1;
const CLOCK_MONOTONIC: u64 = 1;
const EBUSY: i64 = 16;
const EINVAL: i64 = 22;
const ENOENT: u32 = 2;

/// The BTF definition of `NB_CT_STATE`, by hand: aya-ebpf's `btf_maps`
/// have no `pinning` field. The loader reads the shape from the types.
#[repr(C)]
pub struct StateMap {
    r#type: *const [i32; BPF_MAP_TYPE_ARRAY as usize],
    key: *const u32,
    value: *const CtState,
    max_entries: *const [i32; 1],
    pinning: *const [i32; PIN_BY_NAME],
}
// SAFETY: placeholder pointers that only describe the map in BTF; never
// dereferenced.
unsafe impl Sync for StateMap {}

#[unsafe(link_section = ".maps")]
#[unsafe(export_name = "NB_CT_STATE")]
static NB_CT_STATE: StateMap = StateMap {
    r#type: null(),
    key: null(),
    value: null(),
    max_entries: null(),
    pinning: null(),
};

#[inline(always)]
fn state_map() -> *mut c_void {
    &NB_CT_STATE as *const StateMap as *mut c_void
}

#[inline(always)]
fn state() -> Option<&'static mut CtState> {
    let k = 0u32;
    // SAFETY: a lookup in an array of one; the value lives in the map.
    let p = unsafe { bpf_map_lookup_elem(state_map(), &k as *const u32 as *const c_void) };
    // SAFETY: non-null map values are valid CtState.
    (!p.is_null()).then(|| unsafe { &mut *(p as *mut CtState) })
}

/// Admits a new session if fewer than `max` are live, counting it and the
/// high-water mark. One spin lock: exact across CPUs.
#[inline(always)]
pub fn reserve(max: u32) -> bool {
    let Some(s) = state() else {
        return false;
    };
    // SAFETY: the lock of a map value whose BTF declares it.
    unsafe { lock(&mut s.lock) };
    let c = &mut s.counts;
    let ok = c.live < max as u64;
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
pub fn release(n: u64) {
    let Some(s) = state() else {
        return;
    };
    // SAFETY: the lock of a map value whose BTF declares it.
    unsafe { lock(&mut s.lock) };
    s.counts.live = s.counts.live.saturating_sub(n);
    // SAFETY: as above.
    unsafe { unlock(&mut s.lock) };
}

/// An unassured session was evicted to admit a new one: it leaves the
/// count, and the next sweep logs it.
#[inline(always)]
pub fn release_evicted() {
    let Some(s) = state() else {
        return;
    };
    // SAFETY: the lock of a map value whose BTF declares it.
    unsafe { lock(&mut s.lock) };
    s.counts.live = s.counts.live.saturating_sub(1);
    s.evicted = s.evicted.wrapping_add(1);
    // SAFETY: as above.
    unsafe { unlock(&mut s.lock) };
}

/// One walk over the table: what to remove, and how many went.
#[repr(C)]
struct Walk {
    now: u64,
    /// Counts up from an arbitrary start (see [`walk`]).
    removed: u64,
    timeouts: [u32; 8],
    op: u32,
    proto: u32,
    first: u16,
    last: u16,
}

/// Sweep: the original half of a session idle past its timeout takes its
/// session with it. A half whose original is missing past a grace period
/// is dropped (its session was counted out already, or evicted).
#[inline(always)]
fn expire_one(k: &CtKey, e: &CtEntry, w: &Walk) -> bool {
    if e.flags & CT_F_ORIGINAL == 0 {
        // SAFETY: only the presence is used, not the value.
        if w.now.saturating_sub(e.created_ns) > CT_ORPHAN_GRACE_NS
            && unsafe { NB_CT.get(&e.reverse) }.is_none()
        {
            let _ = NB_CT.remove(k);
        }
        return false;
    }
    ct::idle_past(&w.timeouts, e, w.now) && ct::remove_session(k, e, w.now) && eim_done(k, e)
}

/// A removed SNAT session counted in its endpoint's mapping releases it
/// (issue 22: the mapping goes with its last session). True.
#[inline(always)]
fn eim_done(k: &CtKey, e: &CtEntry) -> bool {
    if e.flags & CT_F_EIM != 0 {
        // `k` is the original half here: the outbound key, inside endpoint.
        crate::nat::snat::eim_release(k.saddr, k.sport, k.proto);
    }
    true
}

/// Purge: the sessions a forward opened (original inbound key to one of
/// its external ports).
#[inline(always)]
fn purge_one(k: &CtKey, e: &CtEntry, w: &Walk) -> bool {
    let port = k.dport.get();
    e.flags & CT_F_ORIGINAL != 0
        && (e.kind == CT_DNAT || e.kind == CT_HAIRPIN)
        && k.dir == CT_DIR_IN
        && k.proto as u32 == w.proto
        && w.first <= port
        && port <= w.last
        && ct::remove_session(k, e, w.now)
}

/// bpf_for_each_map_elem callback: 0 = go on.
#[inline(never)]
extern "C" fn visit(_map: *mut c_void, key: *const CtKey, e: *const CtEntry, w: *mut Walk) -> i64 {
    // SAFETY: the kernel passes the current key and value; `w` is the
    // caller's Walk. Copies: the entry may be deleted below.
    let (k, e, w) = unsafe { (*key, *e, &mut *w) };
    let gone = if w.op == ctl::OP_PURGE {
        purge_one(&k, &e, w)
    } else {
        expire_one(&k, &e, w)
    };
    if gone {
        w.removed = w.removed.wrapping_add(1);
    }
    0
}

/// Walks the whole table once; the sessions removed leave the live count.
/// `w.removed` starts at a value loaded from a map: the verifier checks
/// the callback as a loop, and a counter it can track exactly (0, 1, 2..)
/// never lets its states converge; only the difference is used.
#[inline(always)]
fn walk(w: &mut Walk) -> u64 {
    let start = w.removed;
    // SAFETY: NB_CT is a map; `visit` matches the callback signature and
    // `w` outlives the call.
    unsafe {
        bpf_for_each_map_elem(
            &NB_CT as *const _ as *mut c_void,
            visit as *const () as *mut c_void,
            w as *mut Walk as *mut c_void,
            0,
        )
    };
    let removed = w.removed.wrapping_sub(start);
    if removed > 0 {
        release(removed);
    }
    removed
}

/// Removes every session idle past its timeout; skips the walk when no
/// session is live (an idle lab costs nothing).
#[inline(always)]
fn sweep(s: &mut CtState) -> u64 {
    let now = ct::now();
    let mut w = Walk {
        now,
        removed: s.counts.last_sweep_ns,
        timeouts: config_any().map(|c| c.timeouts).unwrap_or([0; 8]),
        op: ctl::OP_SWEEP,
        proto: 0,
        first: 0,
        last: 0,
    };
    let removed = if s.counts.live > 0 { walk(&mut w) } else { 0 };
    // SAFETY: the lock of a map value whose BTF declares it.
    unsafe { lock(&mut s.lock) };
    s.counts.sweeps += 1;
    s.counts.last_sweep_ns = now;
    let evicted = core::mem::take(&mut s.evicted);
    // SAFETY: as above.
    unsafe { unlock(&mut s.lock) };
    count_n(nat_stat::EXPIRED_SWEEP, removed);
    if evicted > 0 {
        // Once per sweep period at most: evictions are logged here, where
        // the stack is free, not on the packet's path.
        aya_log_ebpf::warn!(
            &(),
            "table full: {} unassured sessions evicted to admit new ones",
            evicted
        );
    }
    removed
}

/// The sweep timers' period (NAT66's too): `sweep_ms`, or the default.
#[inline(always)]
pub(crate) fn period_ns() -> u64 {
    let ms = config_any().map_or(0, |c| c.sweep_ms);
    let ms = if ms == 0 { CT_SWEEP_DEFAULT_MS } else { ms };
    ms as u64 * 1_000_000
}

/// The timer callback (must return 0): sweep, then come back.
#[inline(never)]
extern "C" fn on_timer(_map: *mut c_void, _key: *mut u32, s: *mut CtState) -> i32 {
    // SAFETY: the kernel passes the timer's map value.
    let s = unsafe { &mut *s };
    sweep(s);
    // SAFETY: the timer of that value, initialised before it could fire.
    unsafe { bpf_timer_start(&mut s.timer, period_ns(), 0) };
    0
}

/// Starts the timer with this program's callback. Already running (a
/// later `up`): restarts its period, or with `takeover` (`up --reload`)
/// moves it to this program's callback. Stopped (OP_STOP drops the
/// callback): starts it again with this program's.
#[inline(always)]
fn arm(s: &mut CtState, takeover: bool) -> u32 {
    // SAFETY: the timer field of NB_CT_STATE's value, with that map.
    let rc = unsafe { bpf_timer_init(&mut s.timer, state_map(), CLOCK_MONOTONIC) };
    let mut status = match rc {
        0 => ctl::ARMED,
        rc if rc == -EBUSY && takeover => ctl::TAKEN_OVER,
        rc if rc == -EBUSY => ctl::RUNNING,
        rc => return ctl::ERROR + (-rc) as u32,
    };
    if status == ctl::RUNNING {
        // SAFETY: an initialised timer; -EINVAL if it has no callback.
        match unsafe { bpf_timer_start(&mut s.timer, period_ns(), 0) } {
            0 => return status,
            rc if rc == -EINVAL => status = ctl::ARMED,
            rc => return ctl::ERROR + (-rc) as u32,
        }
    }
    let cb = on_timer as *const () as *mut c_void;
    // SAFETY: an initialised timer; `on_timer` is a static callback.
    let rc = unsafe { bpf_timer_set_callback(&mut s.timer, cb) };
    if rc != 0 {
        return ctl::ERROR + (-rc) as u32;
    }
    // SAFETY: an initialised timer with a callback.
    match unsafe { bpf_timer_start(&mut s.timer, period_ns(), 0) } {
        0 => status,
        rc => ctl::ERROR + (-rc) as u32,
    }
}

/// `nb_ct_ctl`: runs the [`CtlCmd`] after the Ethernet header.
#[inline(always)]
pub fn control(ctx: &TcContext) -> u32 {
    let Ok(cmd) = ctx.load::<CtlCmd>(ETH_HLEN) else {
        return ctl::ERROR + EINVAL as u32;
    };
    let Some(s) = state() else {
        return ctl::ERROR + ENOENT;
    };
    match cmd.op {
        ctl::OP_ARM => arm(s, cmd.flags & ctl::F_TAKEOVER != 0),
        ctl::OP_SWEEP => sweep(s) as u32,
        ctl::OP_PURGE => {
            let mut w = Walk {
                now: ct::now(),
                removed: s.counts.last_sweep_ns,
                timeouts: [0; 8],
                op: ctl::OP_PURGE,
                proto: cmd.proto as u32,
                first: cmd.first,
                last: cmd.last,
            };
            let n = walk(&mut w);
            count_n(nat_stat::PURGED, n);
            n as u32
        }
        ctl::OP_STOP => {
            // SAFETY: the timer field; cancelling an idle timer is a no-op.
            unsafe { bpf_timer_cancel(&mut s.timer) };
            0
        }
        _ => ctl::ERROR + EINVAL as u32,
    }
}
