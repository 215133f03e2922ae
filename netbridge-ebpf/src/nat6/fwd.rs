//! DNAT66: IPv6 port forwards. A client reaching the uplink's IPv6
//! address on a forwarded port opens a session in `NB_CT6` (the reply
//! half first, BPF_NOEXIST, rolled back if the original half fails);
//! the uplink egress then rewrites the target's replies as SNAT66 replies.
use aya_ebpf::{macros::map, maps::Array};
use netbridge_common::{
    Be16, CT_DIR_OUT, CT_F_ORIGINAL, Fwd6Target, MAX_FWD6, Nat6Config, drop_reason, nat_stat,
};

use super::{
    ct::{self, BPF_NOEXIST, NB_CT6},
    limits,
    packet::Pkt6,
};
use crate::nat::count;

#[map]
static NB_FWD6: Array<Fwd6Target> = Array::pinned(MAX_FWD6, 0);

/// The forward of `p.key` (proto, external port), if any: a scan of the
/// (few) forwards, up to the first unused slot.
#[inline(always)]
fn find(p: &Pkt6) -> Option<&'static Fwd6Target> {
    let (proto, port) = (p.key.proto, p.key.dport.get());
    let mut i = 0;
    while i < MAX_FWD6 {
        let f = NB_FWD6.get(i)?;
        if f.proto == 0 {
            return None;
        }
        if f.proto == proto && f.first <= port && port <= f.last {
            return Some(f);
        }
        i += 1;
    }
    None
}

/// Does an IPv6 forward cover `proto` port `port` (host order)? SNAT66
/// never maps a lab source to such a port. Its own BPF function: the scan
/// stays out of the port allocator's loop body.
#[inline(never)]
pub fn forwarded(proto: u8, port: u16) -> bool {
    let mut i = 0;
    while i < MAX_FWD6 {
        let Some(f) = NB_FWD6.get(i) else {
            return false;
        };
        if f.proto == 0 {
            return false;
        }
        if f.proto == proto && f.first <= port && port <= f.last {
            return true;
        }
        i += 1;
    }
    false
}

/// Opens a DNAT66 session for the inbound packet `p.key` (dir IN, to the
/// uplink's address) if a forward covers its port: 1 and the new
/// destination in `p.nat_addr`/`p.nat_port`, 0 without a forward, else a
/// drop reason negated. Its own BPF function, off the SNAT chain.
#[inline(never)]
pub fn open(cfg: &Nat6Config, p: &mut Pkt6, tcp_flags: u8) -> i64 {
    let Some(f) = find(p) else {
        return 0;
    };
    let tport = f.port.wrapping_add(p.key.dport.get().wrapping_sub(f.first));
    let refused = limits::admit(&p.key);
    if refused != 0 {
        return -(refused as i64);
    }
    let now = ct::now();
    // The reply half (target -> client), built in map memory.
    p.in_key.saddr = f.addr;
    p.in_key.daddr = p.key.saddr;
    p.in_key.sport = Be16::from_host(tport);
    p.in_key.dport = p.key.sport;
    p.in_key.proto = p.key.proto;
    p.in_key.dir = CT_DIR_OUT;
    p.in_key._pad = [0; 2];
    p.val.reverse = p.key;
    p.val.nat_addr = p.key.daddr;
    p.val.nat_port = p.key.dport;
    p.val.state = ct::initial_state(p.key.proto, tcp_flags);
    p.val.flags = 0;
    p.val._pad = [0; 4];
    p.val.created_ns = now;
    p.val.last_seen_ns = now;
    if NB_CT6.insert(&p.in_key, &p.val, BPF_NOEXIST).is_err()
        && !(ct::expire_if_idle(cfg, &p.in_key, &mut p.gone, now)
            && NB_CT6.insert(&p.in_key, &p.val, BPF_NOEXIST).is_ok())
    {
        // The target's endpoint is live in another session.
        limits::unadmit(&p.key);
        return -(drop_reason::NAT_CT_INSERT as i64);
    }
    p.val.reverse = p.in_key;
    p.val.nat_addr = f.addr;
    p.val.nat_port = p.in_key.sport;
    p.val.flags = CT_F_ORIGINAL;
    if NB_CT6.insert(&p.key, &p.val, BPF_NOEXIST).is_err() {
        let _ = NB_CT6.remove(&p.in_key);
        limits::unadmit(&p.key);
        return -(drop_reason::NAT_CT_INSERT as i64);
    }
    count(nat_stat::DNAT6_NEW);
    p.nat_addr = f.addr;
    p.nat_port = p.in_key.sport;
    1
}
