//! DNAT port forwards: the forward tables, new sessions, and the lab host
//! table used to deliver hairpin traffic straight to a port.
use core::ffi::c_void;

use aya_ebpf::{
    bindings::{
        BPF_F_CURRENT_NETNS, bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1,
    },
    helpers::{bpf_sk_lookup_udp, bpf_sk_release, bpf_skc_lookup_tcp},
    macros::map,
    maps::{Array, HashMap, PerCpuHashMap},
    programs::TcContext,
};
use netbridge_common::{
    Be16, Be32, CT_DIR_IN, CT_DIR_OUT, CT_DNAT, CT_F_ORIGINAL, CT_HAIRPIN, CT_SNAT, CtKey, FwdKey,
    FwdTarget, HostEntry, MAX_FWD_PORTS, MAX_FWD_RANGES, MAX_PORTS, NAT_FORWARDS, NatConfig,
    drop_reason, nat_stat,
};

use crate::{
    bridge,
    nat::{
        Tuple, count,
        ct::{self, BPF_NOEXIST, NB_CT},
        packet::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
    },
};

#[map]
static NB_FORWARDS: HashMap<FwdKey, FwdTarget> = HashMap::pinned(MAX_FWD_PORTS, 0);

#[map]
static NB_FWD_RANGES: Array<FwdTarget> = Array::pinned(MAX_FWD_RANGES, 0);

#[map]
static NB_FWD_HITS: PerCpuHashMap<FwdKey, u64> =
    PerCpuHashMap::pinned(MAX_FWD_PORTS + MAX_FWD_RANGES, 0);

#[map]
static NB_HOSTS: HashMap<Be32, HostEntry> = HashMap::pinned(MAX_PORTS * 4, 0);

/// The forward for external `port` (host order): an O(1) hash lookup for
/// single ports, then a scan of the (few) ranges.
#[inline(always)]
pub fn find_forward(cfg: &NatConfig, proto: u8, port: u16) -> Option<FwdTarget> {
    let key = FwdKey {
        port,
        proto,
        _pad: 0,
    };
    // SAFETY: a copy of the value is taken right away.
    if let Some(t) = unsafe { NB_FORWARDS.get(&key) } {
        return Some(*t);
    }
    let n = (cfg.range_count as u32).min(MAX_FWD_RANGES);
    let mut i = 0;
    while i < MAX_FWD_RANGES {
        if i >= n {
            break;
        }
        if let Some(r) = NB_FWD_RANGES.get(i)
            && r.proto == proto
            && r.first <= port
            && port <= r.last
        {
            return Some(*r);
        }
        i += 1;
    }
    None
}

/// Is external `port` (host order) a single-port forward? (The port
/// allocator's check: the range scan of [`find_forward`] inside its retry
/// loop would exceed the verifier's budget.)
#[inline(always)]
pub fn is_single_forward(proto: u8, port: u16) -> bool {
    let key = FwdKey {
        port,
        proto,
        _pad: 0,
    };
    // SAFETY: only the presence is used.
    unsafe { NB_FORWARDS.get(&key) }.is_some()
}

#[inline(always)]
fn count_hit(fwd: &FwdTarget) {
    let key = FwdKey {
        port: fwd.first,
        proto: fwd.proto,
        _pad: 0,
    };
    match NB_FWD_HITS.get_ptr_mut(&key) {
        // SAFETY: this CPU's slot of a per-CPU hash.
        Some(c) => unsafe { *c += 1 },
        None => {
            let _ = NB_FWD_HITS.insert(&key, &1, 0);
        }
    }
}

/// Where a packet addressed to the uplink goes.
pub enum Inbound {
    /// Its session's new destination.
    Mapped(Be32, Be16),
    /// Not for a mapping (the host's own traffic, or nothing).
    Unknown,
    /// For a SNAT mapping that expired (found so, or recently removed).
    Dead,
}

/// Where `t`, addressed to the uplink, goes: its session's mapping (SNAT
/// reply or DNAT), else a new DNAT session if a forward matches (`hairpin`:
/// from a lab host, which never meets a SNAT mapping).
#[inline(always)]
pub fn mapping(cfg: &NatConfig, t: &Tuple, hairpin: bool, tcp_flags: u8) -> Result<Inbound, u32> {
    let found = ct::lookup(cfg, t, CT_DIR_IN, tcp_flags);
    if let Some((addr, port, _)) = found.hit() {
        return Ok(Inbound::Mapped(addr, port));
    }
    let dead = found.expired() == Some(CT_SNAT);
    if cfg.flags & NAT_FORWARDS != 0
        && t.proto != IPPROTO_ICMP
        && let Some(fwd) = find_forward(cfg, t.proto, t.dport.get())
    {
        // Admission, and an expired session holding the reply key, here,
        // not in `new_session`: their frames must not stack on its own
        // (the port program's 512-byte limit).
        let quota = if hairpin {
            cfg.host_quota
        } else {
            cfg.source_quota
        };
        ct::admit(cfg.max_sessions, quota, &ct::key(t, CT_DIR_IN))?;
        ct::expire_if_idle(cfg, &out_key(t, &fwd), ct::now());
        let o = new_session(t, &fwd, hairpin, tcp_flags)?;
        if o.opened != 0 {
            log_new(t, hairpin, o.addr, o.port);
        }
        return Ok(Inbound::Mapped(o.addr, o.port));
    }
    if !hairpin && (dead || ct::grave(&ct::key(t, CT_DIR_IN))) {
        return Ok(Inbound::Dead);
    }
    Ok(Inbound::Unknown)
}

/// Does a socket of the host itself (the uplink's namespace) take `t`?
/// TCP counts listeners, request and TIME_WAIT sockets too.
#[inline(never)]
pub fn host_socket(ctx: &TcContext, t: &Tuple) -> bool {
    let mut tuple = bpf_sock_tuple {
        __bindgen_anon_1: bpf_sock_tuple__bindgen_ty_1 {
            ipv4: bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 {
                saddr: t.saddr.raw(),
                daddr: t.daddr.raw(),
                sport: t.sport.raw(),
                dport: t.dport.raw(),
            },
        },
    };
    let size = core::mem::size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>() as u32;
    let (skb, netns) = (ctx.skb.skb as *mut c_void, BPF_F_CURRENT_NETNS as u64);
    // SAFETY: a valid skb and tuple; a socket found is released below.
    let sk = unsafe {
        match t.proto {
            IPPROTO_TCP => bpf_skc_lookup_tcp(skb, &mut tuple, size, netns, 0),
            IPPROTO_UDP => bpf_sk_lookup_udp(skb, &mut tuple, size, netns, 0),
            _ => return false,
        }
    };
    if sk.is_null() {
        return false;
    }
    // SAFETY: a reference the lookup took.
    unsafe { bpf_sk_release(sk as *mut c_void) };
    true
}

/// A DNAT session's new destination; `opened` 0: another CPU opened it
/// first. No bool or tuple: BTF (and the kernel) rejects the unions Rust
/// makes of niche-optimised enums.
#[repr(C)]
pub struct Opened {
    pub addr: Be32,
    pub port: Be16,
    pub opened: u16,
}

/// The reply-direction key of the DNAT session of `t` through `fwd`.
#[inline(always)]
fn out_key(t: &Tuple, fwd: &FwdTarget) -> CtKey {
    let tport = fwd.port.wrapping_add(t.dport.get().wrapping_sub(fwd.first));
    CtKey {
        saddr: fwd.addr,
        daddr: t.saddr,
        sport: Be16::from_host(tport),
        dport: t.sport,
        proto: t.proto,
        dir: CT_DIR_OUT,
        _pad: [0; 2],
    }
}

/// Opens a DNAT session for `t` (a client reaching the uplink address on a
/// forwarded port: from upstream, or from a lab host when `hairpin`) and
/// returns the new destination. The caller admitted it (`ct::admit`): a
/// session not inserted here gives its place back.
// Its own BPF function: the slow path keeps its keys and values off the
// programs' frames.
#[inline(never)]
pub fn new_session(
    t: &Tuple,
    fwd: &FwdTarget,
    hairpin: bool,
    tcp_flags: u8,
) -> Result<Opened, u32> {
    let kind = if hairpin { CT_HAIRPIN } else { CT_DNAT };
    let s = Session {
        in_key: ct::key(t, CT_DIR_IN),
        out_key: out_key(t, fwd),
        kind,
        state: ct::initial_state(t.proto, tcp_flags),
    };
    let inserted = insert_pair(&s, t);
    if inserted != Ok(true) {
        ct::unadmit(s.in_key.saddr);
    }
    if !inserted? {
        // Lost a race with another CPU opening the same session?
        // SAFETY: a copy of the value is taken right away.
        return match unsafe { NB_CT.get(&s.in_key) } {
            Some(e) => Ok(Opened {
                addr: e.nat_addr,
                port: e.nat_port,
                opened: 0,
            }),
            None => Err(drop_reason::NAT_CT_INSERT),
        };
    }
    count_hit(fwd);
    count(if hairpin {
        nat_stat::HAIRPIN_NEW
    } else {
        nat_stat::DNAT_NEW
    });
    Ok(Opened {
        addr: fwd.addr,
        port: s.out_key.sport,
        opened: 1,
    })
}

/// The two keys of a new DNAT session and what both halves record.
struct Session {
    /// Client -> uplink address: the original half, rewrites the destination.
    in_key: CtKey,
    /// Target -> client: the reply half, rewrites the source.
    out_key: CtKey,
    kind: u8,
    state: u8,
}

/// Inserts the reply half first (BPF_NOEXIST; a key held by an expired
/// session is freed first), then the original half, rolling the first back
/// if the second fails. False: not inserted (a race, or the reply key is
/// live in another session).
#[inline(always)]
fn insert_pair(s: &Session, t: &Tuple) -> Result<bool, u32> {
    let now = ct::now();
    let out_val = ct::stage(s.in_key, t.daddr, t.dport, s.state, s.kind, 0, now)
        .ok_or(drop_reason::NAT_CT_INSERT)?;
    // (An expired session on the reply key was removed by the caller.)
    if NB_CT.insert(&s.out_key, out_val, BPF_NOEXIST).is_err() {
        return Ok(false);
    }
    let (addr, port) = (s.out_key.saddr, s.out_key.sport);
    let inserted = ct::stage(s.out_key, addr, port, s.state, s.kind, CT_F_ORIGINAL, now)
        .is_some_and(|v| NB_CT.insert(&s.in_key, v, BPF_NOEXIST).is_ok());
    if !inserted {
        let _ = NB_CT.remove(&s.out_key);
    }
    Ok(inserted)
}

/// Logs a new DNAT or hairpin session (rate-limited). Called by the
/// program, not `new_session`: the logger's frame must not stack on it.
#[inline(always)]
fn log_new(t: &Tuple, hairpin: bool, addr: Be32, port: Be16) {
    if crate::log::allow(crate::log::NEW_SESSION) {
        aya_log_ebpf::info!(
            &(),
            "new {} proto {} from {:i}:{} to {:i}:{} -> {:i}:{}",
            if hairpin { "hairpin" } else { "dnat" },
            t.proto,
            t.saddr.to_bytes(),
            t.sport.get(),
            t.daddr.to_bytes(),
            t.dport.get(),
            addr.to_bytes(),
            port.get()
        );
    }
}

/// The lab host with IPv4 `addr` (a [`Be32`] or its octets), if any.
#[inline(always)]
pub fn host(addr: impl Into<Be32>) -> Option<HostEntry> {
    // SAFETY: a copy of the value is taken right away.
    unsafe { NB_HOSTS.get(&addr.into()) }.copied()
}

/// If `addr` is a lab host, readdresses the frame to it (its MAC, from the
/// gateway MAC) and returns its port for a redirect.
#[inline(always)]
pub fn host_port(ctx: &TcContext, addr: Be32) -> Result<Option<u32>, u32> {
    let Some(h) = host(addr) else {
        return Ok(None);
    };
    readdress(ctx, &h)?;
    Ok(Some(h.ifindex))
}

/// Sets the frame's MACs for delivery to lab host `h` from the gateway.
#[inline(always)]
pub fn readdress(ctx: &TcContext, h: &HostEntry) -> Result<(), u32> {
    let gw = bridge::gateway_mac();
    let err = |_| drop_reason::NAT_REWRITE;
    ctx.store(0, &h.mac, 0).map_err(err)?;
    ctx.store(6, &gw, 0).map_err(err)?;
    Ok(())
}
