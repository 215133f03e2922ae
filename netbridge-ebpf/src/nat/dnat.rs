//! DNAT port forwards: the forward tables, new sessions, and the lab host
//! table used to deliver hairpin traffic straight to a port.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuHashMap},
    programs::TcContext,
};
use netbridge_common::{
    CT_DIR_IN, CT_DIR_OUT, CT_DNAT, CT_F_ORIGINAL, CT_HAIRPIN, CtKey, FwdKey, FwdTarget, HostEntry,
    MAX_FWD_PORTS, MAX_FWD_RANGES, MAX_PORTS, NAT_FORWARDS, NatConfig, drop_reason, nat_stat,
};

use crate::{
    bridge,
    nat::{
        Tuple, count,
        ct::{self, BPF_NOEXIST, NB_CT},
        packet::IPPROTO_ICMP,
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
static NB_HOSTS: HashMap<[u8; 4], HostEntry> = HashMap::pinned(MAX_PORTS * 4, 0);

/// The forward for external `port` (host order): an O(1) hash lookup for
/// single ports, then a scan of the (few) ranges.
#[inline(always)]
pub fn find_forward(cfg: &NatConfig, proto: u8, port: u16) -> Option<FwdTarget> {
    let key = FwdKey {
        port,
        proto,
        _pad: 0,
    };
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

#[inline(always)]
fn count_hit(fwd: &FwdTarget) {
    let key = FwdKey {
        port: fwd.first,
        proto: fwd.proto,
        _pad: 0,
    };
    match NB_FWD_HITS.get_ptr_mut(&key) {
        Some(c) => unsafe { *c += 1 },
        None => {
            let _ = NB_FWD_HITS.insert(&key, &1, 0);
        }
    }
}

/// Where `t`, addressed to the uplink, goes: its session's mapping (SNAT
/// reply or DNAT), else a new DNAT session if a forward matches (`hairpin`:
/// from a lab host). None: not for a mapping.
#[inline(always)]
pub fn mapping(
    cfg: &NatConfig,
    t: &Tuple,
    hairpin: bool,
    tcp_flags: u8,
) -> Result<Option<(u32, u16)>, u32> {
    if let Some(m) = ct::lookup(t, CT_DIR_IN, tcp_flags) {
        return Ok(Some(m));
    }
    if cfg.flags & NAT_FORWARDS == 0 || t.proto == IPPROTO_ICMP {
        return Ok(None);
    }
    let Some(fwd) = find_forward(cfg, t.proto, u16::from_be(t.dport)) else {
        return Ok(None);
    };
    new_session(cfg, t, &fwd, hairpin, tcp_flags).map(Some)
}

/// Opens a DNAT session for `t` (a client reaching the uplink address on a
/// forwarded port: from upstream, or from a lab host when `hairpin`) and
/// returns the new destination (raw network order).
#[inline(always)]
pub fn new_session(
    cfg: &NatConfig,
    t: &Tuple,
    fwd: &FwdTarget,
    hairpin: bool,
    tcp_flags: u8,
) -> Result<(u32, u16), u32> {
    if ct::full(cfg) {
        return Err(drop_reason::NAT_TABLE_FULL);
    }
    let dport = u16::from_be(t.dport);
    let tport = fwd.port.wrapping_add(dport.wrapping_sub(fwd.first)).to_be();
    let kind = if hairpin { CT_HAIRPIN } else { CT_DNAT };
    let now = ct::now();
    let state = ct::initial_state(t.proto, tcp_flags);
    let in_key = ct::key(t, CT_DIR_IN);
    let out_key = CtKey {
        saddr: fwd.addr,
        daddr: t.saddr.to_ne_bytes(),
        sport: tport,
        dport: t.sport,
        proto: t.proto,
        dir: CT_DIR_OUT,
        _pad: [0; 2],
    };
    let out_val = ct::entry(in_key, t.daddr.to_ne_bytes(), t.dport, state, kind, 0, now);
    let in_val = ct::entry(out_key, fwd.addr, tport, state, kind, CT_F_ORIGINAL, now);
    let inserted = NB_CT.insert(&out_key, &out_val, BPF_NOEXIST).is_ok()
        && (NB_CT.insert(&in_key, &in_val, BPF_NOEXIST).is_ok() || {
            let _ = NB_CT.remove(&out_key);
            false
        });
    if !inserted {
        // Lost a race with another CPU opening the same session?
        return match unsafe { NB_CT.get(&in_key) } {
            Some(e) => Ok((u32::from_ne_bytes(e.nat_addr), e.nat_port)),
            None => Err(drop_reason::NAT_CT_INSERT),
        };
    }
    ct::count_session();
    count_hit(fwd);
    if crate::log::allow(crate::log::NEW_SESSION) {
        aya_log_ebpf::info!(
            &(),
            "new {} proto {} from {:i}:{} to {:i}:{} -> {:i}:{}",
            if hairpin { "hairpin" } else { "dnat" },
            t.proto,
            t.saddr.to_ne_bytes(),
            u16::from_be(t.sport),
            t.daddr.to_ne_bytes(),
            dport,
            fwd.addr,
            u16::from_be(tport)
        );
    }
    count(if hairpin {
        nat_stat::HAIRPIN_NEW
    } else {
        nat_stat::DNAT_NEW
    });
    Ok((u32::from_ne_bytes(fwd.addr), tport))
}

/// The lab host with IPv4 `addr` (network order bytes), if any.
#[inline(always)]
pub fn host(addr: [u8; 4]) -> Option<HostEntry> {
    unsafe { NB_HOSTS.get(&addr) }.copied()
}

/// If `addr` (raw) is a lab host, readdresses the frame to it (its MAC,
/// from the gateway MAC) and returns its port for a redirect.
#[inline(always)]
pub fn host_port(ctx: &TcContext, addr: u32) -> Result<Option<u32>, u32> {
    let Some(h) = host(addr.to_ne_bytes()) else {
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
