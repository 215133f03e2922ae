//! In-kernel NAT: SNAT masquerade and DNAT port forwards on the uplink
//! (TC ingress and egress), hairpin on the bridge ports.
//!
//! Every session has two conntrack entries in an LRU hash: the key of the
//! packets going out (rewrite the source) and of those coming in (rewrite
//! the destination); each names the other. New sessions insert the reverse
//! entry first with BPF_NOEXIST (that claims the mapping), then the forward
//! one, and roll back on failure. Sessions expire in the kernel: a packet
//! never uses an entry past its timeout, and a timer sweeps the table
//! (`sweep`). `max_sessions` bounds the live count kept there.
pub mod ct;
pub mod dnat;
pub mod fast;
pub mod frag;
pub mod icmp;
pub mod out;
pub mod packet;
pub mod quota;
pub mod refuse;
pub mod snat;
pub mod sweep;

use aya_ebpf::{
    bindings::TC_ACT_OK,
    helpers::{bpf_redirect, bpf_redirect_peer},
    macros::map,
    maps::{Array, PerCpuArray},
    programs::TcContext,
};
use netbridge_common::{
    Be16, Be32, CT_DIR_IN, CT_DIR_OUT, CT_HAIRPIN, CT_TCP_ESTABLISHED, CT_UDP_REPLIED, FILTER_ADF,
    FILTER_APDF, NAT_FAST_PATH, NAT_FORWARDS, NAT_MASQUERADE, NAT_SYN_DROP, NatConfig, drop_reason,
    nat_stat,
};

use crate::{
    nat::packet::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, Ip4, TCP_ACK, TCP_SYN},
    parse::{ETH_HLEN, ptr_at},
};

#[map]
static NB_NAT_CONFIG: Array<NatConfig> = Array::pinned(1, 0);

#[map]
static NB_NAT_STATS: PerCpuArray<u64> = PerCpuArray::pinned(nat_stat::COUNT, 0);

#[inline(always)]
pub fn count(stat: u32) {
    count_n(stat, 1);
}

#[inline(always)]
pub fn count_n(stat: u32, n: u64) {
    if n > 0
        && let Some(c) = NB_NAT_STATS.get_ptr_mut(stat)
    {
        // SAFETY: this CPU's slot of a per-CPU array; programs on one CPU
        // do not preempt each other.
        unsafe { *c += n };
    }
}

#[inline(always)]
pub fn config() -> Option<&'static NatConfig> {
    config_any().filter(|c| c.flags != 0)
}

/// The NAT config even with NAT off (all timeouts 0 then: the sweep
/// empties the table).
#[inline(always)]
pub fn config_any() -> Option<&'static NatConfig> {
    NB_NAT_CONFIG.get(0)
}

/// A packet's addressing, in wire order as loaded.
#[derive(Clone, Copy)]
pub struct Tuple {
    pub saddr: Be32,
    pub daddr: Be32,
    pub sport: Be16,
    pub dport: Be16,
    pub proto: u8,
}

/// A lab host's packet leaving through a masquerading uplink untranslated
/// would carry its private source address upstream.
#[inline(always)]
fn leaks_private(ip: &Ip4, cfg: &NatConfig, dir: u8) -> bool {
    dir == CT_DIR_OUT && cfg.flags & NAT_MASQUERADE != 0 && ip.saddr != cfg.uplink_ipv4
}

/// The session tuple of `ip` at the uplink: TCP, UDP, or an ICMP query
/// (RFC 5508 REQ-1: echo, timestamp, information, address mask; requests
/// going out, replies coming in). ICMP errors are translated in place
/// (RFC 5508) going `dir`; they and everything else give None.
#[inline(always)]
fn uplink_tuple(ctx: &TcContext, ip: &Ip4, cfg: &NatConfig, dir: u8) -> Result<Option<Tuple>, u32> {
    let out = dir == CT_DIR_OUT;
    let t = match ip.proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            ip.check_l4(ctx)?;
            ip.tuple(ctx, false)?
        }
        IPPROTO_ICMP => match packet::icmp_type(ctx, ip)? {
            ty if out && packet::is_icmp_query(ty) => ip.tuple(ctx, true)?,
            ty if !out && packet::is_icmp_query_reply(ty) => ip.tuple(ctx, true)?,
            ty if packet::is_icmp_error(ty) => {
                let translated = icmp::translate_error(ctx, ip, cfg, dir)?;
                if !translated && leaks_private(ip, cfg, dir) {
                    return Err(drop_reason::NAT_UNTRANSLATABLE);
                }
                return Ok(None);
            }
            // Neither query nor error (a router advertisement, a query
            // reply...): a lab host's would leave with its private source
            // address (RFC 5508 REQ-11 allows dropping it).
            _ if leaks_private(ip, cfg, dir) => return Err(drop_reason::NAT_UNTRANSLATABLE),
            _ => return Ok(None),
        },
        // No ports to map (GRE, SCTP...): the same leak.
        _ if leaks_private(ip, cfg, dir) => return Err(drop_reason::NAT_UNTRANSLATABLE),
        _ => return Ok(None),
    };
    Ok(Some(t))
}

/// Did the packet enter the host through the uplink? Such a packet, routed
/// back out, is upstream's traffic, never the lab's: neither masqueraded
/// nor matched to a session (the NAT is no relay for upstream hosts).
#[inline(always)]
fn from_uplink(ctx: &TcContext, cfg: &NatConfig) -> bool {
    // SAFETY: `ctx.skb.skb` is the program's valid __sk_buff context.
    let iif = unsafe { (*ctx.skb.skb).ingress_ifindex };
    iif != 0 && iif == cfg.uplink_ifindex
}

/// 1 if NAT is on and the frame is TCP or UDP, unfragmented or a first
/// fragment, from the uplink address: translated at a bridge port (the fast
/// path) or the host's own. No session's outbound key has that source
/// (SNAT and hairpin sessions key lab sources, DNAT ones their lab
/// target), so the egress's parse and lookup could only miss. ICMP is not
/// skipped: the host's errors may quote a translated packet (RFC 5508);
/// nor is a later fragment (`frag`). The L4 header is not read (a
/// malformed one is the host's own business). Read from the linear head,
/// no helper calls (0 if the header is not there: the full path
/// decides). Its own BPF function: the egress program's frame is at its
/// limit.
#[inline(never)]
fn uplink_sourced(ctx: &TcContext) -> u32 {
    let Some(cfg) = config() else {
        return 0;
    };
    // SAFETY: `ctx.skb.skb` is the program's valid __sk_buff context.
    if unsafe { (*ctx.skb.skb).protocol } != packet::ETH_P_IP.raw() as u32 {
        return 0;
    }
    let Some(h) = ptr_at::<[u8; 20]>(ctx.data(), ctx.data_end(), ETH_HLEN) else {
        return 0;
    };
    // SAFETY: bounds-checked by ptr_at.
    let h = unsafe { &*h };
    let ok = h[0] >> 4 == 4
        && h[0] & 0x0f >= 5
        && u16::from_be_bytes([h[6], h[7]]) & 0x1fff == 0
        && (h[9] == IPPROTO_TCP || h[9] == IPPROTO_UDP)
        && Be32::from_bytes([h[12], h[13], h[14], h[15]]) == cfg.uplink_ipv4;
    ok as u32
}

/// Uplink egress: rewrite the source of established sessions (SNAT and
/// DNAT replies), open SNAT sessions for lab traffic, translate ICMP errors.
#[inline(always)]
pub fn try_uplink_egress(ctx: &TcContext) -> Result<i32, u32> {
    if uplink_sourced(ctx) != 0 {
        return Ok(TC_ACT_OK);
    }
    let Some(cfg) = config() else {
        return Ok(TC_ACT_OK);
    };
    let Some(ip) = packet::parse_ipv4(ctx, ETH_HLEN)? else {
        return Ok(TC_ACT_OK);
    };
    if from_uplink(ctx, cfg) {
        return Ok(TC_ACT_OK);
    }
    let masq = cfg.flags & NAT_MASQUERADE != 0 && ip.saddr != cfg.uplink_ipv4;
    if ip.non_first_fragment() {
        // Out of order, masquerading: translated ahead of its first
        // fragment (not toward the uplink address: hairpin needs ports).
        let nat = masq && ip.is_nat_proto();
        let early = if nat && ip.daddr != cfg.uplink_ipv4 {
            cfg.uplink_ipv4
        } else {
            Be32::from_raw(0)
        };
        return match frag::translate(ctx, ip.ip_off, CT_DIR_OUT, early) {
            r if r < 0 => Err((-r) as u32),
            1 => Ok(TC_ACT_OK),
            // Its first fragment was not translated (yet): out of order.
            _ if nat => Err(drop_reason::NAT_FRAGMENT),
            _ => Ok(TC_ACT_OK),
        };
    }
    let Some(t) = uplink_tuple(ctx, &ip, cfg, CT_DIR_OUT)? else {
        return Ok(TC_ACT_OK);
    };
    let flags = ip.tcp_flags(ctx);
    // Expired: a late packet opens a new session, never reuses the old one.
    let (addr, port) = match ct::lookup(cfg, &t, CT_DIR_OUT, flags).hit() {
        Some((addr, port, _)) => (addr, port),
        _ if masq => snat::new_session_logged(cfg, &t, flags)?,
        _ => return Ok(TC_ACT_OK),
    };
    // A new IP ID for a non-atomic datagram (RFC 7857 sec. 10); a first
    // fragment's translation remembered for the later ones.
    frag::outbound(ctx, ip.ip_off, addr);
    packet::rewrite(ctx, &ip, &t, true, addr, port)?;
    if t.daddr == cfg.uplink_ipv4 {
        let r = egress_hairpin(ctx, &ip, &t, addr, port);
        return if r < 0 {
            Err((-r) as u32)
        } else {
            Ok(r as i32)
        };
    }
    count(nat_stat::XLATE_OUT);
    Ok(TC_ACT_OK)
}

/// Uplink ingress: rewrite the destination of established sessions (SNAT
/// replies, forwarded flows), open DNAT sessions for forwarded ports,
/// translate ICMP errors about translated packets (RFC 5508).
#[inline(always)]
pub fn try_uplink_ingress(ctx: &TcContext) -> Result<i32, u32> {
    let Some(cfg) = config() else {
        return Ok(TC_ACT_OK);
    };
    // The common case by direct packet access, else the helpers' parse.
    let (ip, t, flags) = match fast::in_parse(ctx, cfg.uplink_ipv4) {
        Some(parsed) => parsed,
        None => match ingress_parse(ctx, cfg)? {
            Ok(parsed) => parsed,
            Err(action) => return Ok(action),
        },
    };
    let inbound = match dnat::mapping(cfg, &t, false, flags)? {
        dnat::Inbound::Mapped(addr, port) => dnat::Inbound::Mapped(addr, port),
        other => match filter_admit(cfg, &t) {
            Some((addr, port)) => dnat::Inbound::Mapped(addr, port),
            None => other,
        },
    };
    let (addr, port) = match inbound {
        dnat::Inbound::Mapped(addr, port) => (addr, port),
        dnat::Inbound::Unknown if unsolicited_syn(ctx, &t, flags) => {
            return Err(drop_reason::NAT_UNSOLICITED_SYN);
        }
        dnat::Inbound::Unknown => return Ok(TC_ACT_OK),
        // For a SNAT mapping that expired: dropped, unless the host itself
        // has a socket for it (its own traffic shares the port range).
        dnat::Inbound::Dead if dnat::host_socket(ctx, &t) => return Ok(TC_ACT_OK),
        dnat::Inbound::Dead => return Err(drop_reason::NAT_EXPIRED),
    };
    if ip.more_fragments() {
        frag::remember(ctx, ip.ip_off, CT_DIR_IN, addr);
    }
    match fast::inbound(ctx, &t, addr, port) {
        fast::IN_GENERAL => {}
        r if r < 0 => return Err((-r) as u32),
        action => return Ok(action as i32),
    }
    packet::rewrite(ctx, &ip, &t, false, addr, port)?;
    count(nat_stat::XLATE_IN);
    fast_in(ctx, &ip, cfg, addr)
}

/// The uplink ingress's parse through the helpers: the IPv4 header, the
/// tuple and TCP flags of a packet for a mapping, or the TC action if it
/// is not one (fragments: as their first fragment went).
#[inline(always)]
fn ingress_parse(ctx: &TcContext, cfg: &NatConfig) -> Result<Result<(Ip4, Tuple, u8), i32>, u32> {
    let Some(ip) = packet::parse_ipv4(ctx, ETH_HLEN)? else {
        return Ok(Err(TC_ACT_OK));
    };
    if ip.daddr != cfg.uplink_ipv4 {
        // Not for a mapping.
        return Ok(Err(TC_ACT_OK));
    }
    if ip.non_first_fragment() {
        // Of a datagram whose first fragment was translated, or the
        // host's; else its first fragment is late (out of order):
        // requeued to come back after it, or finally the host's.
        return match frag::translate(ctx, ip.ip_off, CT_DIR_IN, Be32::from_raw(0)) {
            r if r < 0 => Err((-r) as u32),
            0 if ip.is_nat_proto() => Ok(Err(frag::requeue(ctx, ip.ip_off))),
            _ => Ok(Err(TC_ACT_OK)),
        };
    }
    if ip.more_fragments() && ip.is_nat_proto() {
        // A first fragment: its later ones are the host's unless the
        // translation below replaces this identity entry.
        frag::remember(ctx, ip.ip_off, CT_DIR_IN, ip.daddr);
    }
    // Inbound ICMP queries (and other ICMP) are for the host itself.
    let Some(t) = uplink_tuple(ctx, &ip, cfg, CT_DIR_IN)? else {
        return Ok(Err(TC_ACT_OK));
    };
    let flags = ip.tcp_flags(ctx);
    Ok(Ok((ip, t, flags)))
}

/// Filtering of an inbound TCP/UDP packet `t` to the uplink address with
/// no session (RFC 4787 REQ-8, RFC 5382 REQ-3): endpoint-independent
/// filtering admits it to the inside endpoint owning the external port,
/// address-dependent filtering if that port sent to the packet's source
/// address lately. Nothing is created: the inside host's answer opens its
/// session (on the same port, endpoint-independent mapping), so an
/// outsider can neither fill the table nor keep a mapping alive (RFC 7857
/// secs. 7 and 13). Address-and-port-dependent filtering: None.
#[inline(always)]
fn filter_admit(cfg: &NatConfig, t: &Tuple) -> Option<(Be32, Be16)> {
    if cfg.filtering == FILTER_APDF || t.proto == IPPROTO_ICMP {
        return None;
    }
    let port = t.dport.get();
    let owner = snat::eim_owner(port, t.proto)?;
    if cfg.filtering == FILTER_ADF {
        let state = if t.proto == IPPROTO_TCP {
            CT_TCP_ESTABLISHED
        } else {
            CT_UDP_REPLIED
        };
        // The permission lasts as an answered, assured session would.
        let tmo = ct::timeout_ns(&cfg.timeouts, state, netbridge_common::CT_F_ASSURED);
        if !snat::permitted(t.saddr, port, t.proto, tmo) {
            return None;
        }
    }
    count(nat_stat::FILTER_ADMITTED);
    Some((owner.addr, owner.port))
}

/// Is `t` (TCP flags `flags`), which nothing of the NAT takes, a SYN to
/// drop under `unsolicited_syn = "drop"` (RFC 5382 REQ-4)? A SYN without
/// ACK to a port of the NAT range that no socket of the host takes: the
/// host's stack would answer it with a RST at once, which kills a TCP
/// simultaneous open whose outside SYN comes first; dropped, the inside
/// host's own SYN opens the mapping and the outside's retransmission gets
/// through. Its own BPF function: off the ingress program's frame.
#[inline(never)]
fn unsolicited_syn(ctx: &TcContext, t: &Tuple, flags: u8) -> bool {
    let Some(cfg) = config() else {
        return false;
    };
    let port = t.dport.get();
    cfg.flags & NAT_SYN_DROP != 0
        && t.proto == IPPROTO_TCP
        && flags & (TCP_SYN | TCP_ACK) == TCP_SYN
        && (cfg.port_min..=cfg.port_max).contains(&port)
        && !dnat::host_socket(ctx, t)
}

/// Fast path of the uplink ingress: a translated packet goes straight into
/// the lab host's namespace, as the gateway would deliver it (TTL
/// decremented, MACs set), skipping the host's routing and the bridge.
#[inline(always)]
fn fast_in(ctx: &TcContext, ip: &Ip4, cfg: &NatConfig, addr: Be32) -> Result<i32, u32> {
    if cfg.flags & NAT_FAST_PATH != 0
        && let Some(h) = dnat::host(addr)
        && packet::fits(ctx, ip, h.mtu)
        && packet::decrement_ttl(ctx, ip)?
    {
        dnat::readdress(ctx, &h)?;
        count(nat_stat::FAST_IN);
        crate::stats::count_tx(h.ifindex, ctx.len() as u64);
        // SAFETY: a helper call with a plain ifindex; no memory passed.
        return Ok(unsafe { bpf_redirect_peer(h.ifindex, 0) } as i32);
    }
    Ok(TC_ACT_OK)
}

/// Where the bridge-port hook sends a packet.
pub enum Hook {
    /// Into this port's namespace (bpf_redirect_peer).
    Peer(u32),
    /// Out of this interface, L2 from the neighbour table (bpf_redirect_neigh).
    Neigh(u32),
    /// To this interface's egress (bpf_redirect): the uplink's, whose
    /// program opens a hairpinned packet's session.
    Egress(u32),
}

/// Bridge-port hook. Hairpin: a lab host reaching a forwarded port on the
/// uplink address is DNATed here and the reply un-DNATed here (the kernel
/// would drop a routed packet whose source is its own address), both sent
/// straight to the other host's port. Fast path: packets of established
/// SNAT/DNAT sessions are translated here and sent straight out of the
/// uplink. None: carry on with bridging (and the kernel).
#[inline(always)]
pub fn port_hook(ctx: &TcContext, l3_off: usize) -> Result<Option<Hook>, u32> {
    // The common case first: an established session's packet, out.
    match fast::port_out(ctx) {
        0 => {}
        r if r < 0 => return Err((-r) as u32),
        r if r & fast::PEER != 0 => return Ok(Some(Hook::Peer(r as u32))),
        uplink => return Ok(Some(Hook::Neigh(uplink as u32))),
    }
    let main = port_hook_main(ctx, l3_off);
    if main.kind != HOOK_SNAT_HAIRPIN {
        return main.into_result();
    }
    let snat = port_hairpin_snat_entry(ctx, l3_off);
    if snat.kind != HOOK_ICMP_HAIRPIN {
        return snat.into_result();
    }
    // Each in turn, not nested: their frames would not fit together.
    hairpin_error(ctx, l3_off).into_result()
}

/// A [`Hook`] decision as BPF functions return it: no enum crosses a call
/// (BTF rejects Rust's niche unions). `kind` is a `HOOK_*` code.
#[repr(C)]
struct HookOut {
    kind: u32,
    /// ifindex (PEER, NEIGH) or drop reason (DROP).
    val: u32,
}
const HOOK_NONE: u32 = 0;
const HOOK_PEER: u32 = 1;
const HOOK_NEIGH: u32 = 2;
const HOOK_DROP: u32 = 3;
/// Not decided: for a SNAT mapping of another lab host, maybe.
const HOOK_SNAT_HAIRPIN: u32 = 4;
const HOOK_EGRESS: u32 = 5;
/// Not decided: a lab host's ICMP error to the uplink address, maybe
/// about a packet hairpinned to it.
const HOOK_ICMP_HAIRPIN: u32 = 6;

impl HookOut {
    #[inline(always)]
    fn of(r: Result<Option<Hook>, u32>) -> HookOut {
        let (kind, val) = match r {
            Ok(None) => (HOOK_NONE, 0),
            Ok(Some(Hook::Peer(i))) => (HOOK_PEER, i),
            Ok(Some(Hook::Neigh(i))) => (HOOK_NEIGH, i),
            Ok(Some(Hook::Egress(i))) => (HOOK_EGRESS, i),
            Err(reason) => (HOOK_DROP, reason),
        };
        HookOut { kind, val }
    }

    #[inline(always)]
    fn into_result(self) -> Result<Option<Hook>, u32> {
        match self.kind {
            HOOK_PEER => Ok(Some(Hook::Peer(self.val))),
            HOOK_NEIGH => Ok(Some(Hook::Neigh(self.val))),
            HOOK_EGRESS => Ok(Some(Hook::Egress(self.val))),
            HOOK_DROP => Err(self.val),
            _ => Ok(None),
        }
    }
}

/// The hook but SNAT hairpin; its own BPF function so that the SNAT
/// hairpin's session allocation (a deep call) does not stack on its frame.
#[inline(never)]
fn port_hook_main(ctx: &TcContext, l3_off: usize) -> HookOut {
    match port_hook_inner(ctx, l3_off) {
        Ok(Some(h)) => HookOut::of(Ok(h)),
        Ok(None) => HookOut {
            kind: HOOK_SNAT_HAIRPIN,
            val: 0,
        },
        Err(e) => HookOut::of(Err(e)),
    }
}

/// Ok(None): to the uplink address and no forward, try SNAT hairpin.
#[inline(always)]
fn port_hook_inner(ctx: &TcContext, l3_off: usize) -> Result<Option<Option<Hook>>, u32> {
    let Some(cfg) = config() else {
        return Ok(Some(None));
    };
    if cfg.flags & (NAT_FORWARDS | NAT_FAST_PATH | NAT_MASQUERADE) == 0 {
        return Ok(Some(None));
    }
    let Some(ip) = packet::parse_ipv4(ctx, l3_off)? else {
        return Ok(Some(None));
    };
    if ip.non_first_fragment() {
        return Ok(Some(None));
    }
    let t = match ip.proto {
        IPPROTO_TCP | IPPROTO_UDP => ip.tuple(ctx, false)?,
        IPPROTO_ICMP => match packet::icmp_type(ctx, &ip)? {
            ty if packet::is_icmp_query(ty) => ip.tuple(ctx, true)?,
            // Maybe about a packet hairpinned to this host: see below.
            ty if packet::is_icmp_error(ty)
                && ip.daddr == cfg.uplink_ipv4
                && cfg.flags & NAT_MASQUERADE != 0 =>
            {
                return Ok(None);
            }
            _ => return Ok(Some(None)),
        },
        _ => return Ok(Some(None)),
    };
    if t.daddr == cfg.uplink_ipv4 {
        return match port_hairpin_request(ctx, &ip, &t, cfg)? {
            Some(hook) => Ok(Some(Some(hook))),
            None if cfg.flags & NAT_MASQUERADE != 0 && t.proto != IPPROTO_ICMP => Ok(None),
            None => Ok(Some(None)),
        };
    }
    port_established(ctx, &ip, &t, cfg).map(Some)
}

/// SNAT hairpin (see [`port_hairpin_snat`]) from the frame; an ICMP
/// error is handed on (HOOK_ICMP_HAIRPIN) to [`hairpin_error`].
#[inline(never)]
fn port_hairpin_snat_entry(ctx: &TcContext, l3_off: usize) -> HookOut {
    if ctx.load::<u8>(l3_off + 9) == Ok(IPPROTO_ICMP) {
        return HookOut {
            kind: HOOK_ICMP_HAIRPIN,
            val: 0,
        };
    }
    HookOut::of(port_hairpin_snat_frame(ctx, l3_off))
}

#[inline(always)]
fn port_hairpin_snat_frame(ctx: &TcContext, l3_off: usize) -> Result<Option<Hook>, u32> {
    let (Some(cfg), Some(ip)) = (config(), packet::parse_ipv4(ctx, l3_off)?) else {
        return Ok(None);
    };
    if ip.proto != IPPROTO_TCP && ip.proto != IPPROTO_UDP {
        return Ok(None);
    }
    let t = ip.tuple(ctx, false)?;
    port_hairpin_snat(ctx, &ip, &t, cfg)
}

/// Packets of established sessions at a bridge port: DNAT hairpin replies
/// to the client's port, others (fast path) out of the uplink.
#[inline(always)]
fn port_established(
    ctx: &TcContext,
    ip: &Ip4,
    t: &Tuple,
    cfg: &NatConfig,
) -> Result<Option<Hook>, u32> {
    if cfg.flags & (NAT_FORWARDS | NAT_FAST_PATH) == 0 {
        return Ok(None);
    }
    let flags = ip.tcp_flags(ctx);
    let Some((addr, port, kind)) = ct::lookup(cfg, t, CT_DIR_OUT, flags).hit() else {
        return Ok(None);
    };
    ip.check_l4(ctx)?;
    if kind == CT_HAIRPIN {
        packet::rewrite(ctx, ip, t, true, addr, port)?;
        count(nat_stat::XLATE_HAIRPIN);
        return match dnat::host_port(ctx, t.daddr)? {
            Some(out) => Ok(Some(Hook::Peer(out))),
            None => Err(drop_reason::NAT_NO_ROUTE),
        };
    }
    port_fast_out(ctx, ip, t, cfg, (addr, port))
}

/// A lab host to the uplink address: a forwarded port is DNATed here
/// (hairpin) and sent to the target's port if known, else routed by the
/// kernel. Anything else is the host's own business.
#[inline(always)]
fn port_hairpin_request(
    ctx: &TcContext,
    ip: &Ip4,
    t: &Tuple,
    cfg: &NatConfig,
) -> Result<Option<Hook>, u32> {
    if cfg.flags & NAT_FORWARDS == 0 || t.proto == IPPROTO_ICMP {
        return Ok(None);
    }
    ip.check_l4(ctx)?;
    let flags = ip.tcp_flags(ctx);
    let dnat::Inbound::Mapped(addr, port) = dnat::mapping(cfg, t, true, flags)? else {
        return Ok(None);
    };
    packet::rewrite(ctx, ip, t, false, addr, port)?;
    count(nat_stat::XLATE_HAIRPIN);
    Ok(dnat::host_port(ctx, addr)?.map(Hook::Peer))
}

/// A lab host to another lab host's SNAT mapping on the uplink address
/// (hairpinning, RFC 4787 REQ-9, RFC 5382 REQ-8), done here as the
/// kernel would drop a routed packet with its own address as source. The
/// packet leaves as it would through the uplink (the sender's session
/// toward uplink:port, opened under the sender's mapping rules) and comes
/// back in as from outside (the receiver's session toward the sender's
/// external address:port, or filtering): the receiver sees the sender's
/// external address and port (REQ-9 a). Refused by filtering: dropped
/// (`nat_filtered`; from outside it would go to the host's own stack).
#[inline(always)]
fn port_hairpin_snat(
    ctx: &TcContext,
    ip: &Ip4,
    t: &Tuple,
    cfg: &NatConfig,
) -> Result<Option<Hook>, u32> {
    if cfg.flags & NAT_MASQUERADE == 0 || t.proto == IPPROTO_ICMP || packet::ttl(ctx, ip) <= 1 {
        return Ok(None);
    }
    ip.check_l4(ctx)?;
    let flags = ip.tcp_flags(ctx);
    let (src_addr, src_port) = match ct::lookup(cfg, t, CT_DIR_OUT, flags).hit() {
        Some((addr, port, _)) => (addr, port),
        // The sender's first packet there: the uplink egress opens its
        // session (this program's stack cannot hold the allocator) and
        // hairpins it (`egress_hairpin`).
        _ => return Ok(Some(Hook::Egress(cfg.uplink_ifindex))),
    };
    let (addr, port) = match hairpin_receiver(cfg, src_addr, src_port, t, flags) {
        Some(to) => to,
        None => return Err(drop_reason::NAT_FILTERED),
    };
    let Some(h) = dnat::host(addr) else {
        return Err(drop_reason::NAT_NO_ROUTE);
    };
    packet::rewrite(ctx, ip, t, true, src_addr, src_port)?;
    packet::rewrite(ctx, ip, t, false, addr, port)?;
    packet::decrement_ttl(ctx, ip)?;
    dnat::readdress(ctx, &h)?;
    count(nat_stat::HAIRPIN_SNAT);
    count(nat_stat::XLATE_HAIRPIN);
    Ok(Some(Hook::Peer(h.ifindex)))
}

/// A lab host's ICMP error to the uplink address about a packet hairpinned
/// to it (RFC 5508 REQ-7, RFC 7857 sec. 12): that packet's source was the
/// sender's external mapping. Translated as if it left through the uplink
/// (outer source and quoted destination: the erring host's external
/// mapping) and came back in (outer destination and quoted source: the
/// sender's inside endpoint, as it sent the packet), then delivered to the
/// sender's port. An error quoting no session is the host's own. Its own
/// BPF function: off the frames of the ports' session allocation.
#[inline(never)]
fn hairpin_error(ctx: &TcContext, l3_off: usize) -> HookOut {
    HookOut::of(hairpin_error_inner(ctx, l3_off))
}

#[inline(always)]
fn hairpin_error_inner(ctx: &TcContext, l3_off: usize) -> Result<Option<Hook>, u32> {
    let (Some(cfg), Some(ip)) = (config(), packet::parse_ipv4(ctx, l3_off)?) else {
        return Ok(None);
    };
    let ip = &ip;
    if !icmp::translate_error(ctx, ip, cfg, CT_DIR_OUT)? {
        return Ok(None);
    }
    // Half translated: without the sender's session it is no one's.
    if !icmp::translate_error(ctx, ip, cfg, CT_DIR_IN)? {
        return Err(drop_reason::NAT_NO_ROUTE);
    }
    let dst: Be32 = packet::load(ctx, ip.ip_off + 16)?;
    let h = dnat::host(dst).ok_or(drop_reason::NAT_NO_ROUTE)?;
    packet::decrement_ttl(ctx, ip)?;
    dnat::readdress(ctx, &h)?;
    count(nat_stat::HAIRPIN_ICMP_ERRORS);
    count(nat_stat::XLATE_HAIRPIN);
    Ok(Some(Hook::Peer(h.ifindex)))
}

/// Where a hairpinned packet from `t` with the new source `src`:`sport`
/// goes, as if it came in through the uplink: the receiver's session
/// toward that source, or its mapping by filtering.
#[inline(always)]
fn hairpin_receiver(
    cfg: &NatConfig,
    src: Be32,
    sport: Be16,
    t: &Tuple,
    flags: u8,
) -> Option<(Be32, Be16)> {
    let back = Tuple {
        saddr: src,
        daddr: t.daddr,
        sport,
        dport: t.dport,
        proto: t.proto,
    };
    match ct::lookup(cfg, &back, CT_DIR_IN, flags).hit() {
        Some((addr, port, _)) => Some((addr, port)),
        _ => filter_admit(cfg, &back),
    }
}

/// Uplink egress, a lab host's packet to another's mapping handed over
/// by the bridge port (`Hook::Egress`), its source translated already
/// (to `src`:`sport`): delivered to the receiver's port, or dropped
/// as filtering says (it was for no one else). Its own BPF function, off
/// the frame that calls the SNAT allocator; returns the TC action, or a
/// drop reason negated.
#[inline(never)]
fn egress_hairpin(ctx: &TcContext, ip: &Ip4, t: &Tuple, src: Be32, sport: Be16) -> i64 {
    let moved = Tuple {
        saddr: src,
        sport,
        ..*t
    };
    match egress_hairpin_inner(ctx, ip, &moved) {
        Ok(action) => action as i64,
        Err(reason) => -(reason as i64),
    }
}

#[inline(always)]
fn egress_hairpin_inner(ctx: &TcContext, ip: &Ip4, t: &Tuple) -> Result<i32, u32> {
    let cfg = config().ok_or(drop_reason::NAT_FILTERED)?;
    let flags = ip.tcp_flags(ctx);
    let (addr, port) =
        hairpin_receiver(cfg, t.saddr, t.sport, t, flags).ok_or(drop_reason::NAT_FILTERED)?;
    let h = dnat::host(addr).ok_or(drop_reason::NAT_NO_ROUTE)?;
    packet::rewrite(ctx, ip, t, false, addr, port)?;
    packet::decrement_ttl(ctx, ip)?;
    dnat::readdress(ctx, &h)?;
    count(nat_stat::HAIRPIN_SNAT);
    count(nat_stat::XLATE_HAIRPIN);
    crate::stats::count_tx(h.ifindex, ctx.len() as u64);
    // SAFETY: a helper call with a plain ifindex; no memory passed.
    Ok(unsafe { bpf_redirect(h.ifindex, 0) } as i32)
}

/// An established SNAT session or a DNAT reply, bound for the uplink:
/// translated here and sent straight out of it. Too big or TTL expiring:
/// the kernel path (fragmentation needed, time exceeded); the uplink
/// egress program translates it there. So is a non-atomic datagram (DF
/// clear, or a first fragment): the uplink egress gives it a new IP ID
/// and remembers a first fragment's translation for the later ones
/// (`frag`).
#[inline(always)]
fn port_fast_out(
    ctx: &TcContext,
    ip: &Ip4,
    t: &Tuple,
    cfg: &NatConfig,
    (addr, port): (Be32, Be16),
) -> Result<Option<Hook>, u32> {
    if cfg.flags & NAT_FAST_PATH == 0
        || !ip.atomic()
        || !packet::fits(ctx, ip, cfg.uplink_mtu)
        || packet::ttl(ctx, ip) <= 1
    {
        return Ok(None);
    }
    packet::rewrite(ctx, ip, t, true, addr, port)?;
    packet::decrement_ttl(ctx, ip)?;
    count(nat_stat::XLATE_OUT);
    count(nat_stat::FAST_OUT);
    Ok(Some(Hook::Neigh(cfg.uplink_ifindex)))
}
