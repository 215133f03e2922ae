//! Rare events to userspace through aya-log (the AYA_LOGS ring buffer, read
//! by `netbridge log` / `up --log-level`): new NAT sessions and drops. Each
//! kind is rate-limited per CPU, so a flood of new flows or bad frames costs
//! a counter check, not a ring-buffer write per packet. Established flows
//! never log.
use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::map, maps::PerCpuArray};

/// Per CPU and kind: [window start (ns), events logged in the window].
#[map]
static NB_LOG_RATE: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(KINDS, 0);

pub const NEW_SESSION: u32 = 0;
pub const DROP: u32 = 1;
const KINDS: u32 = 2;
/// Events of one kind logged per CPU per second, at most.
pub const PER_SECOND: u64 = 10;

/// May an event of `kind` be logged now?
#[inline(always)]
pub fn allow(kind: u32) -> bool {
    let Some(p) = NB_LOG_RATE.get_ptr_mut(kind) else {
        return false;
    };
    // SAFETY: this CPU's slot of a per-CPU array; programs on one CPU do
    // not preempt each other.
    window_allows(unsafe { &mut *p }, PER_SECOND)
}

/// One-second window `w` ([start ns, events in it]) of a per-CPU rate
/// limit: may one more event go, `per_second` at most? Counts it if so.
/// Also the ICMP errors' limit (`nat::refuse`).
#[inline(always)]
pub fn window_allows(w: &mut [u64; 2], per_second: u64) -> bool {
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if now.wrapping_sub(w[0]) > 1_000_000_000 {
        w[0] = now;
        w[1] = 0;
    }
    if w[1] >= per_second {
        return false;
    }
    w[1] += 1;
    true
}

/// Logs a drop (reason code; `netbridge log` adds the name) on `ifindex`,
/// rate-limited. The name is not sent from here: a `&str` loaded from the
/// names array is a pointer in .rodata, which BPF cannot relocate.
#[inline(always)]
pub fn drop(ifindex: u32, reason: u32) {
    if !allow(DROP) {
        return;
    }
    // aya-log 0.2 does not use the context argument.
    aya_log_ebpf::warn!(&(), "drop reason {} on ifindex {}", reason, ifindex);
}
