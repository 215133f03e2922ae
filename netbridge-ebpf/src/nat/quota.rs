//! Per-source session quotas (`uplink.max_sessions_per_source` for the
//! upstream clients of the forwards, `max_sessions_per_host` for the lab
//! hosts): every session is counted under its original key's source, so
//! a quota set later applies at once. One spin lock per source: exact
//! across CPUs (this target has no atomic read-modify-write).
use core::{ffi::c_void, ptr::null};

use aya_ebpf::{
    bindings::{bpf_map_type::BPF_MAP_TYPE_HASH, bpf_spin_lock},
    helpers::{
        bpf_map_delete_elem, bpf_map_lookup_elem, bpf_map_update_elem, bpf_spin_lock as lock,
        bpf_spin_unlock as unlock,
    },
};
use netbridge_common::{Be32, CT_QUOTA_SIZE, QuotaView};

use crate::nat::{ct::BPF_NOEXIST, sweep::PIN_BY_NAME};

/// The value of `NB_CT_QUOTA`: [`QuotaView`] with the kernel's lock type.
#[repr(C)]
pub struct Quota {
    lock: bpf_spin_lock,
    /// Live sessions of the source (host order).
    sessions: u32,
}
const _: () = assert!(core::mem::size_of::<Quota>() == core::mem::size_of::<QuotaView>());

/// BPF_F_NO_PREALLOC: an entry per source with sessions, allocated then.
const NO_PREALLOC: usize = 1;

/// The BTF definition of `NB_CT_QUOTA`, by hand (a spin lock in the value
/// needs BTF; aya-ebpf's `btf_maps` have no `pinning` field).
#[repr(C)]
pub struct QuotaMap {
    r#type: *const [i32; BPF_MAP_TYPE_HASH as usize],
    key: *const Be32,
    value: *const Quota,
    max_entries: *const [i32; CT_QUOTA_SIZE as usize],
    map_flags: *const [i32; NO_PREALLOC],
    pinning: *const [i32; PIN_BY_NAME],
}
// SAFETY: placeholder pointers that only describe the map in BTF; never
// dereferenced.
unsafe impl Sync for QuotaMap {}

#[unsafe(link_section = ".maps")]
#[unsafe(export_name = "NB_CT_QUOTA")]
static NB_CT_QUOTA: QuotaMap = QuotaMap {
    r#type: null(),
    key: null(),
    value: null(),
    max_entries: null(),
    map_flags: null(),
    pinning: null(),
};

#[inline(always)]
fn map() -> *mut c_void {
    &NB_CT_QUOTA as *const QuotaMap as *mut c_void
}

#[inline(always)]
fn get(src: &Be32) -> Option<&'static mut Quota> {
    // SAFETY: a lookup in a hash keyed by Be32; the value lives in the map.
    let p = unsafe { bpf_map_lookup_elem(map(), src as *const Be32 as *const c_void) };
    // SAFETY: non-null map values are valid Quota.
    (!p.is_null()).then(|| unsafe { &mut *(p as *mut Quota) })
}

/// Counts a new session of `src` unless it holds `quota` already (0: no
/// quota, counted anyway). 1: admitted. A full map counts nothing and
/// admits: accounting never locks a source out. Its own BPF function: it
/// runs on top of the programs' large frames.
#[inline(never)]
pub fn take(src: Be32, quota: u32) -> u32 {
    let k = src;
    let q = match get(&k) {
        Some(q) => q,
        None => {
            let first = Quota {
                // SAFETY: an unlocked spin lock is all zeroes.
                lock: unsafe { core::mem::zeroed() },
                sessions: 1,
            };
            // SAFETY: key and value of the map's types, on the stack.
            let r = unsafe {
                bpf_map_update_elem(
                    map(),
                    &k as *const Be32 as *const c_void,
                    &first as *const Quota as *const c_void,
                    BPF_NOEXIST,
                )
            };
            if r == 0 {
                return 1;
            }
            // Another CPU inserted it meanwhile (or the map is full).
            match get(&k) {
                Some(q) => q,
                None => return 1,
            }
        }
    };
    // SAFETY: the lock of a map value whose BTF declares it.
    unsafe { lock(&mut q.lock) };
    let ok = quota == 0 || q.sessions < quota;
    if ok {
        q.sessions += 1;
    }
    // SAFETY: as above.
    unsafe { unlock(&mut q.lock) };
    ok as u32
}

/// A session of `*src` is gone: one less; the entry goes at 0 (a take
/// racing on another CPU may be lost with it: an undercount, the safe
/// way). Inline, `src` pointing into the caller's key: no frame of its
/// own on the deep removal paths.
#[inline(always)]
pub fn give(src: &Be32) {
    let Some(q) = get(src) else {
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
        unsafe { bpf_map_delete_elem(map(), src as *const Be32 as *const c_void) };
    }
}

/// [`give`] as a BPF function of its own, for the admission paths (an
/// admitted session not inserted): fewer registers spilled on the
/// callers' large frames.
#[inline(never)]
pub fn give_back(src: Be32) {
    let k = src;
    give(&k);
}
