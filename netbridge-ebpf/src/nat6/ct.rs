//! NAT66 conntrack: lookup with expiry and state tracking, and new SNAT
//! sessions (port allocation claims the inbound half with BPF_NOEXIST,
//! then the outbound half goes in). The TCP/UDP states, flags and
//! timeouts are the IPv4 NAT's (`nat::ct`).
use aya_ebpf::{helpers::bpf_get_prandom_u32, macros::map, maps::LruHashMap};
use netbridge_common::{
    Be16, CT_DIR_IN, CT_DIR_OUT, CT_F_ORIGINAL, CT_REFRESH_NS, CT6_SIZE, Ct6Entry, Ct6Key,
    NAT_PORT_RETRIES, Nat6Config, drop_reason, nat_stat,
};

use super::{fwd, limits, packet::Pkt6};
use crate::nat::count;

#[map]
pub(super) static NB_CT6: LruHashMap<Ct6Key, Ct6Entry> = LruHashMap::pinned(CT6_SIZE, 0);

pub(super) const BPF_NOEXIST: u64 = 1;

// The states, flags and timeouts are the IPv4 NAT's (the protocol
// numbers of TCP and UDP are the same in both families).
pub(super) use crate::nat::ct::{initial_state, now};
use crate::nat::ct::{next_flags, next_state, timeout_ns};

pub enum Found {
    /// The mapping is in `Pkt6::nat_addr` and `nat_port`.
    Hit,
    Miss,
    /// The session was past its timeout: removed now.
    Expired,
}

/// The mapping for the packet `p.key` (its `dir` set). An entry past its
/// timeout is never used: its session is removed and `Expired` returned.
/// Otherwise the state advances; outbound packets refresh it (RFC 7857
/// sec. 7: an outsider must not hold a mapping open). Its own BPF
/// function: inlined, its registers spilled onto the uplink programs'
/// frames, which top chains near the stack limit.
#[inline(never)]
pub fn lookup(cfg: &Nat6Config, p: &mut Pkt6, tcp_flags: u8) -> Found {
    let Some(e) = NB_CT6.get_ptr_mut(&p.key) else {
        return Found::Miss;
    };
    // SAFETY: a map value; it stays valid memory for the program's run
    // (RCU), even if evicted meanwhile.
    let e = unsafe { &mut *e };
    let now = now();
    let (state, flags, proto) = (e.state, e.flags, p.key.proto);
    let tmo = timeout_ns(&cfg.timeouts, state, flags);
    let idle = now.saturating_sub(e.last_seen_ns);
    if idle > tmo && expire_if_idle(cfg, &p.key, &mut p.gone, now) {
        return Found::Expired;
    }
    let original = flags & CT_F_ORIGINAL != 0;
    let next = next_state(proto, tcp_flags, state, original);
    let next_fl = next_flags(flags, proto, tcp_flags, original);
    if next != state || next_fl != flags {
        e.state = next;
        e.flags = next_fl;
        e.last_seen_ns = now;
        if let Some(r) = NB_CT6.get_ptr_mut(&e.reverse) {
            // SAFETY: a map value, as above.
            let r = unsafe { &mut *r };
            r.state = next;
            r.flags = (r.flags & CT_F_ORIGINAL) | (next_fl & !CT_F_ORIGINAL);
        }
    } else if p.key.dir == CT_DIR_OUT && idle > (tmo >> 4).min(CT_REFRESH_NS) {
        e.last_seen_ns = now;
    }
    // SAFETY: a map value and this CPU's scratch: distinct memory. (An
    // assignment is a byte-by-byte memmove call here, unsure they are.)
    unsafe { core::ptr::copy_nonoverlapping(&e.nat_addr, &mut p.nat_addr, 1) };
    p.nat_port = e.nat_port;
    Found::Hit
}

/// Is the session of entry `e` (and its other half, if any) idle past
/// its state's timeout at `now`? The later, further of both halves.
#[inline(always)]
pub(super) fn idle_past(cfg: &Nat6Config, e: &Ct6Entry, now: u64) -> bool {
    // SAFETY: a copy is taken right away; the value may be deleted after.
    let (last, state, flags) = match unsafe { NB_CT6.get(&e.reverse) } {
        Some(r) => (
            e.last_seen_ns.max(r.last_seen_ns),
            e.state.max(r.state),
            e.flags | r.flags,
        ),
        None => (e.last_seen_ns, e.state, e.flags),
    };
    now.saturating_sub(last) > timeout_ns(&cfg.timeouts, state, flags)
}

/// Removes the session of the entry at `k` if both its halves are idle
/// past the timeout of the session's state at `now`. True if `k` is gone.
/// `gone` holds the other half's key meanwhile. The original half goes
/// first: the CPU whose delete of it succeeds counts the session out
/// (live count, quota), once. Its own BPF function.
#[inline(never)]
pub(super) fn expire_if_idle(cfg: &Nat6Config, k: &Ct6Key, gone: &mut Ct6Key, now: u64) -> bool {
    let Some(e) = NB_CT6.get_ptr(k) else {
        return true;
    };
    // SAFETY: a map value; read before the removals below free it.
    let e = unsafe { &*e };
    if !idle_past(cfg, e, now) {
        return false;
    }
    *gone = e.reverse;
    let (orig, other) = if e.flags & CT_F_ORIGINAL != 0 {
        (k, &*gone)
    } else {
        (&*gone, k)
    };
    if NB_CT6.remove(orig).is_ok() {
        let _ = NB_CT6.remove(other);
        count(nat_stat::EXPIRED6);
        limits::expired(orig, other, now);
    }
    true
}

/// Opens a SNAT session for the lab packet `p.key` (dir OUT): the source
/// port if free and in range, else NAT_PORT_RETRIES ports from a random
/// start (each miss counted in `port_retries`). The mapping goes to
/// `p.nat_addr`, `p.nat_port`. Its own BPF function: the allocator's
/// frame is off the program's.
#[inline(never)]
pub fn new_session(cfg: &Nat6Config, p: &mut Pkt6, tcp_flags: u8) -> Result<(), u32> {
    let now = now();
    let k = &p.key;
    // Field by field: a whole value built first would sit on the stack.
    p.val.reverse = *k;
    p.val.nat_addr = k.saddr;
    p.val.nat_port = k.sport;
    p.val.state = initial_state(k.proto, tcp_flags);
    p.val.flags = 0;
    p.val.created_ns = now;
    p.val.last_seen_ns = now;
    p.in_key.saddr = k.daddr;
    p.in_key.daddr = cfg.uplink_ipv6;
    p.in_key.sport = k.dport;
    p.in_key.proto = k.proto;
    p.in_key.dir = CT_DIR_IN;
    p.in_key._pad = [0; 2];
    let port = claim_port(cfg, p.key.sport.get() as u32, p)?;
    p.val.reverse = p.in_key;
    p.val.nat_addr = cfg.uplink_ipv6;
    p.val.nat_port = port;
    p.val.flags = CT_F_ORIGINAL;
    if NB_CT6.insert(&p.key, &p.val, BPF_NOEXIST).is_err() {
        // Another CPU opened it meanwhile (or the map failed): ours goes.
        let _ = NB_CT6.remove(&p.in_key);
        return Err(drop_reason::NAT_CT_INSERT);
    }
    count(nat_stat::SNAT6_NEW);
    p.nat_addr = cfg.uplink_ipv6;
    p.nat_port = port;
    Ok(())
}

/// Claims an external port: the inbound half (`p.in_key` with the port,
/// `p.val`) inserted with BPF_NOEXIST; a key held by an expired session is
/// freed first, a live one never.
#[inline(always)]
fn claim_port(cfg: &Nat6Config, sport: u32, p: &mut Pkt6) -> Result<Be16, u32> {
    let (min, max) = (cfg.port_min as u32, cfg.port_max as u32);
    if max < min {
        return Err(drop_reason::NAT_PORT_EXHAUSTED);
    }
    let size = (max - min + 1).max(1);
    // A hairpin session (to the uplink's own address) never maps to its
    // destination port: its inbound half would be the key of a packet from
    // that port to itself, which a forward of that port needs.
    let avoid = if p.key.daddr == cfg.uplink_ipv6 {
        p.key.dport.get() as u32
    } else {
        u32::MAX
    };
    // SAFETY: a helper without arguments.
    let start = unsafe { bpf_get_prandom_u32() } % size;
    let mut i = 0u32;
    while i <= NAT_PORT_RETRIES {
        let port = if i == 0 {
            sport
        } else {
            min + (start + i) % size
        };
        i += 1;
        // Never a port an IPv6 forward owns: its clients would reach
        // this session instead (as the IPv4 NAT's single-port check).
        if port < min || port > max || port == avoid || fwd::forwarded(p.key.proto, port as u16) {
            continue;
        }
        p.in_key.dport = Be16::from_host(port as u16);
        if NB_CT6.insert(&p.in_key, &p.val, BPF_NOEXIST).is_ok()
            || (expire_if_idle(cfg, &p.in_key, &mut p.gone, now())
                && NB_CT6.insert(&p.in_key, &p.val, BPF_NOEXIST).is_ok())
        {
            if port == sport {
                count(nat_stat::PORT_KEPT);
            }
            return Ok(p.in_key.dport);
        }
        count(nat_stat::PORT_RETRIES);
    }
    Err(drop_reason::NAT_PORT_EXHAUSTED)
}
