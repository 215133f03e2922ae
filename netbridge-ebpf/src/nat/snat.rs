//! SNAT (masquerade): new sessions for lab traffic leaving the uplink, in
//! layers: admission, the port to try first, port allocation (claiming the
//! inbound half), then the outbound half.
use aya_ebpf::{
    helpers::bpf_get_prandom_u32,
    macros::map,
    maps::{HashMap, LruHashMap},
};
use netbridge_common::{
    Be16, Be32, CT_DIR_IN, CT_DIR_OUT, CT_F_EIM, CT_F_ORIGINAL, CT_SNAT, CtEntry, CtKey, EIM_SIZE,
    EimEntry, EimKey, ExtKey, FILTER_ADF, NAT_EIM, NAT_PORT_RETRIES, NatConfig, PERM_SIZE, PermKey,
    drop_reason, nat_stat,
};

use crate::nat::{
    Tuple, count,
    ct::{self, BPF_NOEXIST, NB_CT},
    dnat,
};

/// Inside endpoint -> its external port, for endpoint-independent mapping.
#[map]
static NB_EIM: HashMap<EimKey, EimEntry> = HashMap::pinned(EIM_SIZE, 0);

/// External port -> the one inside endpoint owning it under EIM.
#[map]
static NB_EIM_OWNER: HashMap<ExtKey, EimKey> = HashMap::pinned(EIM_SIZE, 0);

/// Address-dependent filtering: (remote address, external port) -> last
/// outbound packet (ns).
#[map]
static NB_PERM: LruHashMap<PermKey, u64> = LruHashMap::pinned(PERM_SIZE, 0);

/// A port claimed for a new session.
struct Claim {
    /// The inbound key now held in the table.
    in_key: CtKey,
    /// External port, host order.
    port: u32,
}

/// Opens a session for `t` (seen at the uplink egress) and returns the new
/// source (uplink address, external port).
///
/// The inside source port is kept when it is in the range and free (or,
/// with endpoint-independent mapping, the endpoint's earlier port is
/// reused); otherwise NAT_PORT_RETRIES ports from a random start are probed.
/// A port is taken by inserting the reverse (IN) entry with BPF_NOEXIST;
/// one held by an expired session is freed first, a live one never.
// Its own BPF function: the slow path keeps its keys and values off the
// programs' (large) frames. It does not log: the logger's frame must not
// stack on it (see [`new_session_logged`]).
#[inline(never)]
pub fn new_session(cfg: &NatConfig, t: &Tuple, tcp_flags: u8) -> Result<dnat::Opened, u32> {
    ct::admit(cfg.max_sessions, cfg.host_quota, &ct::key(t, CT_DIR_OUT))?;
    let r = open(cfg, t, tcp_flags);
    if !matches!(r, Ok(Opened::New(_))) {
        // Refused, or another CPU's session is used: not ours to count.
        ct::unadmit(t.saddr);
    }
    Ok(match r? {
        Opened::New(port) => dnat::Opened {
            addr: cfg.uplink_ipv4,
            port: Be16::from_host(port as u16),
            opened: 1,
        },
        Opened::Raced(addr, port) => dnat::Opened {
            addr,
            port,
            opened: 0,
        },
    })
}

/// [`new_session`], logging a new session: the new source.
#[inline(always)]
pub fn new_session_logged(cfg: &NatConfig, t: &Tuple, tcp_flags: u8) -> Result<(Be32, Be16), u32> {
    let o = new_session(cfg, t, tcp_flags)?;
    if o.opened != 0 {
        log_new(cfg, t, o.port.get() as u32);
    }
    Ok((o.addr, o.port))
}

/// What [`open`] did.
enum Opened {
    /// A new session on this external port (host order).
    New(u32),
    /// Another CPU opened the same session meanwhile: its mapping.
    Raced(Be32, Be16),
}

/// Claims a port and inserts both halves of a session admitted already.
/// With endpoint-independent mapping the session counts in its endpoint's
/// mapping (`CT_F_EIM`), released by [`eim_release`] when it goes.
#[inline(always)]
fn open(cfg: &NatConfig, t: &Tuple, tcp_flags: u8) -> Result<Opened, u32> {
    let eim = cfg.flags & NAT_EIM != 0;
    let flags = if eim { CT_F_EIM } else { 0 };
    let state = ct::initial_state(t.proto, tcp_flags);
    // The inbound half: the same for every port tried. Keys and values are
    // rebuilt rather than kept: fewer values live across the allocator
    // keep the frame small (the programs call this from large frames).
    let in_val = ct::stage(
        ct::key(t, CT_DIR_OUT),
        t.saddr,
        t.sport,
        state,
        CT_SNAT,
        flags,
        ct::now(),
    )
    .ok_or(drop_reason::NAT_CT_INSERT)?;
    let claim = claim(cfg, t, eim, in_val)?;
    let port = Be16::from_host(claim.port as u16);
    let (state, flags, now) = (in_val.state, in_val.flags, in_val.created_ns);
    let out_val = ct::stage(
        claim.in_key,
        cfg.uplink_ipv4,
        port,
        state,
        CT_SNAT,
        CT_F_ORIGINAL | flags,
        now,
    );
    let out_key = ct::key(t, CT_DIR_OUT);
    if out_val.is_none_or(|v| NB_CT.insert(&out_key, v, BPF_NOEXIST).is_err()) {
        let _ = NB_CT.remove(&claim.in_key);
        if eim {
            eim_release(t.saddr, t.sport, t.proto);
        }
        // SAFETY: a copy of the value is taken right away.
        return match unsafe { NB_CT.get(&out_key) } {
            Some(e) => Ok(Opened::Raced(e.nat_addr, e.nat_port)),
            None => Err(drop_reason::NAT_CT_INSERT),
        };
    }
    perm_touch(cfg, t.daddr, claim.port as u16, t.proto);
    count(nat_stat::SNAT_NEW);
    Ok(Opened::New(claim.port))
}

/// Inside endpoint of `t` (its source).
#[inline(always)]
fn eim_key(t: &Tuple) -> EimKey {
    EimKey {
        addr: t.saddr,
        port: t.sport,
        proto: t.proto,
        _pad: 0,
    }
}

/// The session's external port. Endpoint-independent mapping (`eim`):
/// the endpoint's one port (never changed while it has sessions: if that
/// port is taken toward this remote the session is refused), or a new
/// port it then owns alone. Else any free port (see [`claim_port`]).
#[inline(always)]
fn claim(cfg: &NatConfig, t: &Tuple, eim: bool, in_val: &CtEntry) -> Result<Claim, u32> {
    if eim && let Some(e) = NB_EIM.get_ptr_mut(&eim_key(t)) {
        // SAFETY: a value of the map (RCU-protected for this run).
        let port = unsafe { (*e).port } as u32;
        let in_key = in_key(cfg, t, port);
        if !insert_in(cfg, &in_key, in_val) {
            count(nat_stat::PORT_RETRIES);
            return Err(drop_reason::NAT_PORT_EXHAUSTED);
        }
        // SAFETY: as above. Not atomic (the BPF target has no atomic add in
        // Rust): two CPUs changing one endpoint's count at once may lose one
        // change, see `eim_release`.
        unsafe { (*e).sessions += 1 };
        count(nat_stat::EIM_REUSED);
        return Ok(Claim { in_key, port });
    }
    let claim = claim_port(cfg, t, eim, in_val)?;
    if eim {
        let entry = EimEntry {
            port: claim.port as u16,
            _pad: [0; 3],
            sessions: 1,
        };
        if NB_EIM.insert(&eim_key(t), &entry, BPF_NOEXIST).is_err() {
            // Another CPU mapped this endpoint meanwhile: its port wins;
            // this packet is dropped, the next one uses it.
            let _ = NB_CT.remove(&claim.in_key);
            let _ = NB_EIM_OWNER.remove(&ext_key(claim.port, t.proto));
            return Err(drop_reason::NAT_CT_INSERT);
        }
    }
    Ok(claim)
}

/// A session of endpoint `addr`:`port` counted in its endpoint-independent
/// mapping is gone (`CT_F_EIM`): the mapping, and its external port's
/// ownership, go with the last one (RFC 7857 sec. 11).
// Its own BPF function: its keys stay off the callers' frames.
#[inline(never)]
pub fn eim_release(addr: Be32, port: Be16, proto: u8) {
    let k = EimKey {
        addr,
        port,
        proto,
        _pad: 0,
    };
    let Some(e) = NB_EIM.get_ptr_mut(&k) else {
        return;
    };
    // SAFETY: a map value (RCU-protected for this run). A lost update
    // (see `claim_eim`) frees a mapping early (its sessions keep their
    // port, the endpoint's next new session may get another) or late.
    let (left, ext) = unsafe {
        (*e).sessions = (*e).sessions.saturating_sub(1);
        ((*e).sessions, (*e).port)
    };
    if left == 0 {
        let _ = NB_EIM.remove(&k);
        let _ = NB_EIM_OWNER.remove(&ext_key(ext as u32, proto));
    }
}

/// The inside endpoint owning external `port` (host order) under
/// endpoint-independent mapping.
#[inline(always)]
pub fn eim_owner(port: u16, proto: u8) -> Option<EimKey> {
    // SAFETY: a copy of the value is taken right away.
    unsafe { NB_EIM_OWNER.get(&ext_key(port as u32, proto)) }.copied()
}

/// Address-dependent filtering: `remote` may reach external `port` if a
/// packet went there from it within `tmo_ns`.
#[inline(always)]
pub fn permitted(remote: Be32, port: u16, proto: u8, tmo_ns: u64) -> bool {
    let k = PermKey {
        remote,
        port,
        proto,
        _pad: 0,
    };
    // SAFETY: a copy of the value is taken right away.
    unsafe { NB_PERM.get(&k) }.is_some_and(|ts| ct::now().saturating_sub(*ts) <= tmo_ns)
}

/// Records (at most once a second) that external `port` sent to `remote`,
/// under address-dependent filtering only. Its own BPF function: off the
/// callers' frames.
#[inline(never)]
pub fn perm_touch(cfg: &NatConfig, remote: Be32, port: u16, proto: u8) {
    if cfg.filtering != FILTER_ADF {
        return;
    }
    let now = ct::now();
    let k = PermKey {
        remote,
        port,
        proto,
        _pad: 0,
    };
    match NB_PERM.get_ptr_mut(&k) {
        // SAFETY: a map value; a racing write of another "now" is as good.
        Some(ts) if now.saturating_sub(unsafe { *ts }) > 1_000_000_000 => unsafe { *ts = now },
        Some(_) => {}
        None => {
            let _ = NB_PERM.insert(&k, &now, 0);
        }
    }
}

#[inline(always)]
fn ext_key(port: u32, proto: u8) -> ExtKey {
    ExtKey {
        port: port as u16,
        proto,
        _pad: 0,
    }
}

/// The inbound key of `t`'s session on external `port` (host order).
#[inline(always)]
fn in_key(cfg: &NatConfig, t: &Tuple, port: u32) -> CtKey {
    CtKey {
        saddr: t.daddr,
        daddr: cfg.uplink_ipv4,
        sport: t.dport,
        dport: Be16::from_host(port as u16),
        proto: t.proto,
        dir: CT_DIR_IN,
        _pad: [0; 2],
    }
}

/// Takes `k` for `v` with BPF_NOEXIST; a key held by an expired session is
/// freed first, a live one never.
#[inline(always)]
fn insert_in(cfg: &NatConfig, k: &CtKey, v: &CtEntry) -> bool {
    NB_CT.insert(k, v, BPF_NOEXIST).is_ok()
        || (ct::expire_if_idle(cfg, k, ct::now()) && NB_CT.insert(k, v, BPF_NOEXIST).is_ok())
}

/// Port allocation, within the source port's class ([`class_range`]):
/// the source port if in range, then NAT_PORT_RETRIES ports from a random
/// start, [`PROBE_STRIDE`] apart (no parity: the verifier's budget of the
/// uplink egress does not allow the branch), skipping single-port
/// forwards, until the inbound half `in_val` goes
/// in. With `eim` (a new endpoint-independent mapping) a port must also be
/// free of any other endpoint: its ownership is claimed first.
#[inline(always)]
fn claim_port(cfg: &NatConfig, t: &Tuple, eim: bool, in_val: &CtEntry) -> Result<Claim, u32> {
    let (min, max) = class_range(cfg, t.sport.get() as u32);
    // Checked here, next to the division: a range the verifier-bound code
    // cannot prove non-empty would keep a panic path in the program.
    if max < min {
        return Err(drop_reason::NAT_PORT_EXHAUSTED);
    }
    let size = (max - min + 1).max(1);
    let sport = t.sport.get() as u32;
    // The source port to keep, 0 if not in the range (pool ports are >= 1):
    // `max` need not stay live through the loop (the frame is at its limit).
    let kept = if (min..=max).contains(&sport) {
        sport
    } else {
        0
    };
    // SAFETY: a helper without arguments.
    let start = unsafe { bpf_get_prandom_u32() } % size;
    let mut i = 0u32;
    while i <= NAT_PORT_RETRIES {
        let port = if i == 0 {
            kept
        } else {
            min + (start + i * PROBE_STRIDE) % size
        };
        i += 1;
        if port == 0 {
            continue;
        }
        if let Some(in_key) = try_port(cfg, t, eim, port, in_val) {
            if i == 1 {
                count(nat_stat::PORT_KEPT);
            }
            return Ok(Claim { in_key, port });
        }
        count(nat_stat::PORT_RETRIES);
    }
    Err(drop_reason::NAT_PORT_EXHAUSTED)
}

/// The step between probed ports: a prime above any pool size, so its
/// remainder is prime to the size and the probes visit distinct ports,
/// spread over the pool rather than sequential (a block of ports held by
/// one busy host, e.g. 1,000 connections from consecutive source ports,
/// would otherwise swallow every probe that starts in it: a refused
/// session, now answered with ICMP, where a retransmitted SYN used to get
/// another random start).
const PROBE_STRIDE: u32 = 65_537;

/// The part of `nat_ports` for source port `sport` (RFC 4787 REQ-3 a,
/// RECOMMENDED): 0-1023 are mapped within the pool's ports below 1024,
/// 1024-65535 within its ports from 1024. A pool with none of the port's
/// class (the default 1024-65535 for a low port): the whole pool.
#[inline(always)]
fn class_range(cfg: &NatConfig, sport: u32) -> (u32, u32) {
    let (min, max) = (cfg.port_min as u32, cfg.port_max as u32);
    if sport < 1024 && min < 1024 {
        (min, max.min(1023))
    } else if sport >= 1024 && max >= 1024 {
        (min.max(1024), max)
    } else {
        (min, max)
    }
}

/// One candidate port: not forwarded, owned (`eim`), and its inbound half in.
#[inline(always)]
fn try_port(cfg: &NatConfig, t: &Tuple, eim: bool, port: u32, in_val: &CtEntry) -> Option<CtKey> {
    if cfg.flags & netbridge_common::NAT_FORWARDS != 0
        && dnat::is_single_forward(t.proto, port as u16)
    {
        return None;
    }
    let ext = ext_key(port, t.proto);
    if eim && NB_EIM_OWNER.insert(&ext, &eim_key(t), BPF_NOEXIST).is_err() {
        return None;
    }
    let k = in_key(cfg, t, port);
    if insert_in(cfg, &k, in_val) {
        return Some(k);
    }
    if eim {
        let _ = NB_EIM_OWNER.remove(&ext);
    }
    None
}

/// Logs a new SNAT session (rate-limited). Its own BPF function: the
/// logger's frame stays off the caller's.
#[inline(never)]
fn log_new(cfg: &NatConfig, t: &Tuple, port: u32) {
    if crate::log::allow(crate::log::NEW_SESSION) {
        aya_log_ebpf::info!(
            &(),
            "new snat proto {} {:i}:{} -> {:i}:{} to {:i}:{}",
            t.proto,
            t.saddr.to_bytes(),
            t.sport.get(),
            cfg.uplink_ipv4.to_bytes(),
            port,
            t.daddr.to_bytes(),
            t.dport.get()
        );
    }
}
