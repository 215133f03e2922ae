//! SNAT (masquerade): new sessions for lab traffic leaving the uplink, in
//! layers: admission, the port to try first, port allocation (claiming the
//! inbound half), then the outbound half.
use aya_ebpf::{helpers::bpf_get_prandom_u32, macros::map, maps::LruHashMap};
use netbridge_common::{
    Be16, Be32, CT_DIR_IN, CT_DIR_OUT, CT_F_ORIGINAL, CT_SNAT, CtEntry, CtKey, EimKey, EimPort,
    NAT_EIM, NAT_PORT_RETRIES, NatConfig, drop_reason, nat_stat,
};

use crate::nat::{
    Tuple, count,
    ct::{self, BPF_NOEXIST, NB_CT},
    sweep,
};

/// Inside endpoint -> external port, for endpoint-independent mapping.
#[map]
static NB_EIM: LruHashMap<EimKey, EimPort> = LruHashMap::pinned(65_536, 0);

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
// programs' (large) frames.
#[inline(never)]
pub fn new_session(cfg: &NatConfig, t: &Tuple, tcp_flags: u8) -> Result<(Be32, Be16), u32> {
    ct::admit(cfg.max_sessions, &ct::key(t, CT_DIR_OUT))?;
    let r = open(cfg, t, tcp_flags);
    if !matches!(r, Ok(Opened::New(_))) {
        // Refused, or another CPU's session is used: not ours to count.
        sweep::release(1);
    }
    match r? {
        Opened::New(port) => {
            log_new(cfg, t, port);
            Ok((cfg.uplink_ipv4, Be16::from_host(port as u16)))
        }
        Opened::Raced(addr, port) => Ok((addr, port)),
    }
}

/// What [`open`] did.
enum Opened {
    /// A new session on this external port (host order).
    New(u32),
    /// Another CPU opened the same session meanwhile: its mapping.
    Raced(Be32, Be16),
}

/// Claims a port and inserts both halves of a session admitted already.
#[inline(always)]
fn open(cfg: &NatConfig, t: &Tuple, tcp_flags: u8) -> Result<Opened, u32> {
    let out_key = ct::key(t, CT_DIR_OUT);
    let now = ct::now();
    let state = ct::initial_state(t.proto, tcp_flags);
    // The inbound half: the same for every port tried.
    let in_val = ct::stage(out_key, t.saddr, t.sport, state, CT_SNAT, 0, now)
        .ok_or(drop_reason::NAT_CT_INSERT)?;
    let eim_key = EimKey {
        addr: t.saddr,
        port: t.sport,
        proto: t.proto,
        _pad: 0,
    };
    let claim = claim_port(cfg, t, &eim_key, in_val, now)?;
    let Some(out_val) = ct::stage(
        claim.in_key,
        cfg.uplink_ipv4,
        Be16::from_host(claim.port as u16),
        state,
        CT_SNAT,
        CT_F_ORIGINAL,
        now,
    ) else {
        let _ = NB_CT.remove(&claim.in_key);
        return Err(drop_reason::NAT_CT_INSERT);
    };
    if NB_CT.insert(&out_key, out_val, BPF_NOEXIST).is_err() {
        let _ = NB_CT.remove(&claim.in_key);
        // SAFETY: a copy of the value is taken right away.
        return match unsafe { NB_CT.get(&out_key) } {
            Some(e) => Ok(Opened::Raced(e.nat_addr, e.nat_port)),
            None => Err(drop_reason::NAT_CT_INSERT),
        };
    }
    if cfg.flags & NAT_EIM != 0 {
        let _ = NB_EIM.insert(&eim_key, &(claim.port as EimPort), 0);
    }
    count(nat_stat::SNAT_NEW);
    Ok(Opened::New(claim.port))
}

/// The port to try first (host order): the endpoint's earlier mapping with
/// endpoint-independent mapping, else its own source port if in range.
#[inline(always)]
fn first_port(cfg: &NatConfig, t: &Tuple, eim_key: &EimKey) -> Option<u32> {
    if cfg.flags & NAT_EIM != 0 {
        // SAFETY: a copy of the value is taken right away.
        if let Some(p) = unsafe { NB_EIM.get(eim_key) } {
            return Some(*p as u32);
        }
    }
    let sport = t.sport.get() as u32;
    (cfg.port_min as u32 <= sport && sport <= cfg.port_max as u32).then_some(sport)
}

/// Port allocation: the first port (if any), then NAT_PORT_RETRIES ports
/// from a random start, until the inbound half `in_val` goes in with
/// BPF_NOEXIST (a port held by an expired session is freed first).
#[inline(always)]
fn claim_port(
    cfg: &NatConfig,
    t: &Tuple,
    eim_key: &EimKey,
    in_val: &CtEntry,
    now: u64,
) -> Result<Claim, u32> {
    let (min, max) = (cfg.port_min as u32, cfg.port_max as u32);
    // Checked here, next to the division: a range the verifier-bound code
    // cannot prove non-empty would keep a panic path in the program.
    if max < min {
        return Err(drop_reason::NAT_PORT_EXHAUSTED);
    }
    let size = max - min + 1;
    let first = first_port(cfg, t, eim_key);
    // SAFETY: a helper without arguments.
    let start = unsafe { bpf_get_prandom_u32() } % size;
    let mut i = 0u32;
    while i <= NAT_PORT_RETRIES {
        let port = match (i, first) {
            (0, Some(p)) => p,
            (0, None) => {
                i += 1;
                continue;
            }
            _ => min + (start + i) % size,
        };
        let in_key = CtKey {
            saddr: t.daddr,
            daddr: cfg.uplink_ipv4,
            sport: t.dport,
            dport: Be16::from_host(port as u16),
            proto: t.proto,
            dir: CT_DIR_IN,
            _pad: [0; 2],
        };
        if NB_CT.insert(&in_key, in_val, BPF_NOEXIST).is_ok()
            || (ct::expire_if_idle(cfg, &in_key, now)
                && NB_CT.insert(&in_key, in_val, BPF_NOEXIST).is_ok())
        {
            if i == 0 {
                count_first(cfg, t, port);
            }
            return Ok(Claim { in_key, port });
        }
        count(nat_stat::PORT_RETRIES);
        i += 1;
    }
    Err(drop_reason::NAT_PORT_EXHAUSTED)
}

/// The first port tried was free: the source port kept, or an
/// endpoint-independent mapping reused.
#[inline(always)]
fn count_first(cfg: &NatConfig, t: &Tuple, port: u32) {
    let reused = cfg.flags & NAT_EIM != 0 && port != t.sport.get() as u32;
    count(if reused {
        nat_stat::EIM_REUSED
    } else {
        nat_stat::PORT_KEPT
    });
}

/// Logs a new SNAT session (rate-limited).
#[inline(always)]
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
