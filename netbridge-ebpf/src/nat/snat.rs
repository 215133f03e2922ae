//! SNAT (masquerade): new sessions for lab traffic leaving the uplink.
use aya_ebpf::{helpers::bpf_get_prandom_u32, macros::map, maps::LruHashMap};
use netbridge_common::{
    CT_DIR_IN, CT_DIR_OUT, CT_F_ORIGINAL, CT_SNAT, CtKey, EimKey, NAT_EIM, NAT_PORT_RETRIES,
    NatConfig, drop_reason, nat_stat,
};

use crate::nat::{
    Tuple, count,
    ct::{self, BPF_NOEXIST, NB_CT},
    sweep,
};

/// Inside endpoint -> external port (host order), for endpoint-independent
/// mapping.
#[map]
static NB_EIM: LruHashMap<EimKey, u16> = LruHashMap::pinned(65_536, 0);

/// Opens a session for `t` (seen at the uplink egress) and returns the new
/// source (uplink address, external port; raw network order).
///
/// The inside source port is kept when it is in the range and free (or,
/// with endpoint-independent mapping, the endpoint's earlier port is
/// reused); otherwise NAT_PORT_RETRIES ports from a random start are probed.
/// A port is taken by inserting the reverse (IN) entry with BPF_NOEXIST;
/// one held by an expired session is freed first, a live one never.
// Its own BPF function: the slow path keeps its keys and values off the
// programs' (large) frames.
#[inline(never)]
pub fn new_session(cfg: &NatConfig, t: &Tuple, tcp_flags: u8) -> Result<(u32, u16), u32> {
    if !sweep::reserve(cfg.max_sessions) {
        return Err(drop_reason::NAT_TABLE_FULL);
    }
    let uplink = u32::from_ne_bytes(cfg.uplink_ipv4);
    let (min, max) = (cfg.port_min as u32, cfg.port_max as u32);
    if max < min {
        sweep::release(1);
        return Err(drop_reason::NAT_PORT_EXHAUSTED);
    }
    let size = max - min + 1;
    let out_key = ct::key(t, CT_DIR_OUT);
    let now = ct::now();
    let state = ct::initial_state(t.proto, tcp_flags);
    let eim_key = EimKey {
        addr: t.saddr.to_ne_bytes(),
        port: t.sport,
        proto: t.proto,
        _pad: 0,
    };
    let eim = cfg.flags & NAT_EIM != 0;
    let first = if eim {
        unsafe { NB_EIM.get(&eim_key) }.copied()
    } else {
        None
    };
    let sport = u16::from_be(t.sport) as u32;
    let first = match first {
        Some(p) => Some(p as u32),
        None if sport >= min && sport <= max => Some(sport),
        None => None,
    };
    let start = unsafe { bpf_get_prandom_u32() } % size;
    // The inbound half: the same for every port tried.
    let Some(in_val) = ct::stage(
        out_key,
        t.saddr.to_ne_bytes(),
        t.sport,
        state,
        CT_SNAT,
        0,
        now,
    ) else {
        sweep::release(1);
        return Err(drop_reason::NAT_CT_INSERT);
    };
    let mut in_key = CtKey::default();
    let mut chosen = 0u32;
    let mut found = false;
    let mut i = 0u32;
    while i <= NAT_PORT_RETRIES {
        let port = if i == 0 {
            match first {
                Some(p) => p,
                None => {
                    i += 1;
                    continue;
                }
            }
        } else {
            min + (start + i) % size
        };
        in_key = CtKey {
            saddr: t.daddr.to_ne_bytes(),
            daddr: cfg.uplink_ipv4,
            sport: t.dport,
            dport: (port as u16).to_be(),
            proto: t.proto,
            dir: CT_DIR_IN,
            _pad: [0; 2],
        };
        if NB_CT.insert(&in_key, in_val, BPF_NOEXIST).is_ok()
            || (ct::expire_if_idle(cfg, &in_key, now)
                && NB_CT.insert(&in_key, in_val, BPF_NOEXIST).is_ok())
        {
            chosen = port;
            found = true;
            if i == 0 {
                count(if eim && port != sport {
                    nat_stat::EIM_REUSED
                } else {
                    nat_stat::PORT_KEPT
                });
            }
            break;
        }
        count(nat_stat::PORT_RETRIES);
        i += 1;
    }
    if !found {
        sweep::release(1);
        return Err(drop_reason::NAT_PORT_EXHAUSTED);
    }
    let nat_port = (chosen as u16).to_be();
    let inserted = ct::stage(
        in_key,
        cfg.uplink_ipv4,
        nat_port,
        state,
        CT_SNAT,
        CT_F_ORIGINAL,
        now,
    )
    .is_some_and(|v| NB_CT.insert(&out_key, v, BPF_NOEXIST).is_ok());
    if !inserted {
        // Another CPU opened this session meanwhile: use its mapping.
        let _ = NB_CT.remove(&in_key);
        sweep::release(1);
        return match unsafe { NB_CT.get(&out_key) } {
            Some(e) => Ok((u32::from_ne_bytes(e.nat_addr), e.nat_port)),
            None => Err(drop_reason::NAT_CT_INSERT),
        };
    }
    if eim {
        let _ = NB_EIM.insert(&eim_key, &(chosen as u16), 0);
    }
    count(nat_stat::SNAT_NEW);
    if crate::log::allow(crate::log::NEW_SESSION) {
        aya_log_ebpf::info!(
            &(),
            "new snat proto {} {:i}:{} -> {:i}:{} to {:i}:{}",
            t.proto,
            t.saddr.to_ne_bytes(),
            u16::from_be(t.sport),
            cfg.uplink_ipv4,
            chosen,
            t.daddr.to_ne_bytes(),
            u16::from_be(t.dport)
        );
    }
    Ok((uplink, nat_port))
}
