//! NAT66: IPv6 masquerade on the uplink. Lab sources (the bridge's IPv6
//! prefixes) leaving the uplink get its IPv6 address and a mapped port
//! (TCP, UDP) or echo identifier (ICMPv6); replies get the lab endpoint
//! back; ICMPv6 errors about translated packets are translated with their
//! quote. Sessions: two entries in an LRU hash as the IPv4 NAT's (reverse
//! inserted first with BPF_NOEXIST), expired on lookup and by a timer's
//! sweep, admitted under the IPv4 NAT's limits (`limits`). A lab-sourced
//! packet that cannot be translated is dropped: never leaked upstream.
//!
//! Each entry point is its own BPF function, called from the uplink
//! programs before their IPv4 parse: its stack is a chain of its own.
//! The bridge ports' part ([`port`], from `nb_port_nat`): hairpin
//! ([`hairpin`]) and the fast path out; the fast path in runs after the
//! uplink ingress ([`fast`]).
pub mod ct;
pub mod fast;
pub mod fwd;
pub mod hairpin;
pub mod icmp;
pub mod limits;
pub mod packet;
pub mod port;
pub mod refuse;

use aya_ebpf::{bindings::TC_ACT_OK, macros::map, maps::Array, programs::TcContext};
use netbridge_common::{
    Be32, CT_DIR_IN, CT_DIR_OUT, In6, NAT6_MASQUERADE, Nat6Config, drop_reason, nat_stat,
};

use crate::{nat::count, parse::ETH_HLEN};
use packet::{
    ICMPV6_ECHO_REPLY, ICMPV6_ECHO_REQUEST, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, Ip6, Pkt6,
};

#[map]
static NB_NAT6_CONFIG: Array<Nat6Config> = Array::pinned(1, 0);

#[inline(always)]
pub fn config() -> Option<&'static Nat6Config> {
    config_any().filter(|c| c.flags & NAT6_MASQUERADE != 0)
}

/// The config even with NAT66 off (its timeouts 0 then: the sweep
/// empties NB_CT6).
#[inline(always)]
fn config_any() -> Option<&'static Nat6Config> {
    NB_NAT6_CONFIG.get(0)
}

/// Is NAT66 on (the port program's hook wants IPv6 frames)?
#[inline(always)]
pub fn enabled() -> bool {
    config().is_some()
}

/// A result as a BPF function returns it: the TC action, or a drop reason
/// negated (no enum crosses a call).
#[inline(always)]
fn encode(r: Result<i32, u32>) -> i64 {
    match r {
        Ok(action) => action as i64,
        Err(reason) => -(reason as i64),
    }
}

#[inline(always)]
fn decode(r: i64) -> Result<i32, u32> {
    if r < 0 {
        Err((-r) as u32)
    } else {
        Ok(r as i32)
    }
}

/// The bridge-port hook of an IPv6 frame to the gateway (hairpin, fast
/// path out): where to send it, if anywhere but on (see [`port`]).
#[inline(always)]
pub fn port_hook(ctx: &TcContext) -> Result<Option<crate::nat::Hook>, u32> {
    // The common case first: an established session's packet, out.
    match fast::port_out(ctx) {
        0 => {}
        r if r < 0 => return Err((-r) as u32),
        uplink => return Ok(Some(crate::nat::Hook::Neigh(uplink as u32))),
    }
    port::decode(port::port_hook(ctx))
}

/// Uplink egress of an IPv6 packet (the caller checked the ethertype).
#[inline(always)]
pub fn uplink_egress(ctx: &TcContext) -> Result<i32, u32> {
    if uplink_sourced(ctx) != 0 {
        return Ok(TC_ACT_OK);
    }
    decode(egress_entry(ctx))
}

/// 1 if NAT66 is on and the frame is TCP or UDP (no extension header)
/// from the uplink address: translated at a bridge port (the fast path)
/// or the host's own, not a lab source, so [`try_egress`] would pass it
/// after its parse (the IPv4 NAT's shortcut, `nat::uplink_sourced`).
/// Read from the linear head without helper calls; the header checks of
/// [`packet::parse`] are kept (0 if they fail: the full path drops it).
#[inline(never)]
fn uplink_sourced(ctx: &TcContext) -> u32 {
    let Some(cfg) = config() else {
        return 0;
    };
    let Some(h) = crate::parse::ptr_at::<[u8; 40]>(ctx.data(), ctx.data_end(), ETH_HLEN) else {
        return 0;
    };
    // SAFETY: bounds-checked by ptr_at.
    let h = unsafe { &*h };
    let plen = u16::from_be_bytes([h[4], h[5]]) as usize;
    let word = |i: usize| Be32::from_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let up = &cfg.uplink_ipv6;
    let ok = h[0] >> 4 == 6
        && ETH_HLEN + packet::IP6_HLEN + plen <= ctx.len() as usize
        && (h[6] == IPPROTO_TCP || h[6] == IPPROTO_UDP)
        && word(8) == up[0]
        && word(12) == up[1]
        && word(16) == up[2]
        && word(20) == up[3]
        && !is_lab(cfg, up);
    ok as u32
}

/// [`try_ingress`]'s result for a packet translated to a lab endpoint
/// (`Pkt6::nat_addr`), which the fast path may deliver: no TC action.
const TRANSLATED: i32 = i32::MAX;
/// [`try_ingress`]'s result for a TCP/UDP packet right after the fixed
/// header, found in a session (its mapping in `Pkt6`) but not rewritten
/// yet: [`fast::inbound`] rewrites it in place and delivers it.
const FOUND_DIRECT: i32 = i32::MAX - 1;

/// Uplink ingress of an IPv6 packet.
#[inline(always)]
pub fn uplink_ingress(ctx: &TcContext) -> Result<i32, u32> {
    // In turn, not nested: the fast path's frame stays off the chain of
    // the ingress's (DNAT66 sessions).
    match decode(ingress_entry(ctx))? {
        TRANSLATED => decode(fast::into_lab(ctx)),
        FOUND_DIRECT => match fast::inbound(ctx) {
            fast::IN_GENERAL => match decode(fast::rewrite_in(ctx))? {
                TRANSLATED => decode(fast::into_lab(ctx)),
                action => Ok(action),
            },
            r => decode(r),
        },
        action => Ok(action),
    }
}

#[inline(never)]
fn egress_entry(ctx: &TcContext) -> i64 {
    encode(try_egress(ctx))
}

#[inline(never)]
fn ingress_entry(ctx: &TcContext) -> i64 {
    encode(try_ingress(ctx))
}

/// Is `a` in one of the lab's prefixes?
#[inline(always)]
fn is_lab(cfg: &Nat6Config, a: &In6) -> bool {
    let mut i = 0;
    while i < cfg.prefixes.len() {
        if i as u32 >= cfg.prefix_count {
            return false;
        }
        let p = &cfg.prefixes[i];
        let m = |w: usize| a[w].raw() & p.mask[w].raw() == p.addr[w].raw();
        if m(0) && m(1) && m(2) && m(3) {
            return true;
        }
        i += 1;
    }
    false
}

/// Did the packet enter the host through the uplink? Routed back out, it
/// is upstream's own (a forged lab source), never masqueraded: the NAT is
/// no relay for upstream hosts (as the IPv4 NAT).
#[inline(always)]
fn from_uplink(ctx: &TcContext, cfg: &Nat6Config) -> bool {
    // SAFETY: `ctx.skb.skb` is the program's valid __sk_buff context.
    let iif = unsafe { (*ctx.skb.skb).ingress_ifindex };
    iif != 0 && iif == cfg.uplink_ifindex
}

/// Egress: a lab source is translated (a new session if none), or the
/// packet dropped; anything else (the host's own, link-local) passes.
#[inline(always)]
fn try_egress(ctx: &TcContext) -> Result<i32, u32> {
    let Some(cfg) = config() else {
        return Ok(TC_ACT_OK);
    };
    let p = packet::pkt()?;
    let Some(mut ip) = packet::parse(ctx, p)? else {
        return Ok(TC_ACT_OK);
    };
    if !is_lab(cfg, &p.key.saddr) || from_uplink(ctx, cfg) {
        return Ok(TC_ACT_OK);
    }
    // Through hop-by-hop, destination options and a routing header done
    // with to TCP, UDP or ICMPv6.
    let kind = ip.walk(ctx, p)?;
    if kind & packet::FRAGMENT != 0 {
        // A first fragment's ports cannot map the later ones (netbridge
        // does not reassemble); a later one has none.
        return Err(drop_reason::NAT_FRAGMENT);
    }
    if kind & packet::ROUTED != 0 {
        // Segments left: its source would go on to other hops as is.
        return Err(drop_reason::NAT_UNTRANSLATABLE);
    }
    match ip.proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            ip.check_l4(ctx)?;
            ip.ports(ctx, p, false, CT_DIR_OUT)?;
        }
        IPPROTO_ICMPV6 => match ip.icmp_type(ctx)? {
            ICMPV6_ECHO_REQUEST => ip.ports(ctx, p, true, CT_DIR_OUT)?,
            ty if packet::is_icmp_error(ty) && icmp::translate_error(ctx, &ip, cfg, p, false)? => {
                return Ok(TC_ACT_OK);
            }
            // Errors about no session, other ICMPv6: the lab's source
            // would leak.
            _ => return Err(drop_reason::NAT_UNTRANSLATABLE),
        },
        // AH, ESP, other protocols: the lab's source would leak.
        _ => return Err(drop_reason::NAT_UNTRANSLATABLE),
    }
    let flags = ip.tcp_flags(ctx);
    match ct::lookup(cfg, p, flags) {
        ct::Found::Hit => {}
        // Expired: a late packet opens a new session.
        _ => open_snat(cfg, p, flags)?,
    }
    packet::rewrite(ctx, &ip, p, true)?;
    count(nat_stat::XLATE6_OUT);
    Ok(TC_ACT_OK)
}

/// A new SNAT66 session for `p.key`, admitted first (quota of the lab
/// host, `max_sessions`; beside the session's function, not under it),
/// logged once open.
#[inline(always)]
pub(super) fn open_snat(cfg: &Nat6Config, p: &mut Pkt6, flags: u8) -> Result<(), u32> {
    let refused = limits::admit(&p.key);
    if refused != 0 {
        return Err(refused);
    }
    if let Err(reason) = ct::new_session(cfg, p, flags) {
        limits::unadmit(&p.key);
        return Err(reason);
    }
    log_new(p, false);
    Ok(())
}

/// Logs a new NAT66 session (rate-limited, as the IPv4 NAT's): SNAT66
/// the inside endpoint, its port on the uplink address and the remote;
/// DNAT66 the client, the forwarded port and the target. Its own BPF
/// function: the logger's frame stays off the session's (two addresses
/// only: its frame tops the uplink ingress chain).
#[inline(never)]
fn log_new(p: &Pkt6, dnat: bool) {
    if !crate::log::allow(crate::log::NEW_SESSION) {
        return;
    }
    let k = &p.key;
    let (proto, sport, dport, port) = (k.proto, k.sport.get(), k.dport.get(), p.nat_port.get());
    if dnat {
        aya_log_ebpf::info!(
            &(),
            "new dnat6 proto {} from [{:i}]:{} to port {} -> [{:i}]:{}",
            proto,
            bytes(&k.saddr),
            sport,
            dport,
            bytes(&p.nat_addr),
            port
        );
    } else {
        aya_log_ebpf::info!(
            &(),
            "new snat6 proto {} [{:i}]:{} -> port {} to [{:i}]:{}",
            proto,
            bytes(&k.saddr),
            sport,
            port,
            bytes(&k.daddr),
            dport
        );
    }
}

/// An address as the logger's IPv6 argument.
#[inline(always)]
fn bytes(a: &In6) -> [u8; 16] {
    let mut o = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let w = a[i].to_bytes();
        o[4 * i..4 * i + 4].copy_from_slice(&w);
        i += 1;
    }
    o
}

/// Ingress: packets to the uplink address of a session get the lab
/// endpoint back, and to a forwarded port open a DNAT66 session; ICMPv6
/// errors about a session are translated; anything else is the host's.
/// A translated TCP/UDP/echo reply: [`TRANSLATED`].
#[inline(always)]
fn try_ingress(ctx: &TcContext) -> Result<i32, u32> {
    let Some(cfg) = config() else {
        return Ok(TC_ACT_OK);
    };
    let p = packet::pkt()?;
    // The common case by direct packet access, else the helpers' parse.
    let (ip, flags) = match fast::in_key(ctx, cfg, p) {
        Some(parsed) => parsed,
        None => match ingress_parse(ctx, cfg, p)? {
            Ok(parsed) => parsed,
            Err(action) => return Ok(action),
        },
    };
    let found = ct::lookup(cfg, p, flags);
    let hit = match found {
        ct::Found::Hit => true,
        // A port forward opens a session (ICMPv6 echo has none).
        _ if ip.proto != IPPROTO_ICMPV6 => {
            let opened = decode(fwd::open(cfg, p, flags))? == 1;
            if opened {
                log_new(p, true);
            }
            opened
        }
        _ => false,
    };
    if hit && ip.proto != IPPROTO_ICMPV6 && ip.l4_off == ETH_HLEN + packet::IP6_HLEN {
        return Ok(FOUND_DIRECT);
    }
    if hit {
        packet::rewrite(ctx, &ip, p, false)?;
        count(nat_stat::XLATE6_IN);
        return Ok(TRANSLATED);
    }
    match found {
        // A late reply to a mapping past its timeout (found now, or
        // removed earlier: its grave): not delivered, unless the host's.
        ct::Found::Expired => Err(drop_reason::NAT_EXPIRED),
        _ if limits::late_reply(ctx, &p.key) => Err(drop_reason::NAT_EXPIRED),
        _ => Ok(TC_ACT_OK),
    }
}

/// The uplink ingress's parse through the helpers: the header (past its
/// extension headers) and TCP flags of a TCP/UDP packet or echo reply to
/// the uplink's address, its tuple in `p.key`; else the TC action (ICMPv6
/// errors translated here).
#[inline(always)]
fn ingress_parse(
    ctx: &TcContext,
    cfg: &Nat6Config,
    p: &mut Pkt6,
) -> Result<Result<(Ip6, u8), i32>, u32> {
    let Some(mut ip) = packet::parse(ctx, p)? else {
        return Ok(Err(TC_ACT_OK));
    };
    if p.key.daddr != cfg.uplink_ipv6 {
        return Ok(Err(TC_ACT_OK));
    }
    if ip.walk(ctx, p)? != 0 {
        // The host's to reassemble (or route on): never translated.
        count(nat_stat::UNTRANSLATED6_IN);
        return Ok(Err(TC_ACT_OK));
    }
    match ip.proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            ip.check_l4(ctx)?;
            ip.ports(ctx, p, false, CT_DIR_IN)?;
        }
        IPPROTO_ICMPV6 => match ip.icmp_type(ctx)? {
            ICMPV6_ECHO_REPLY => ip.ports(ctx, p, true, CT_DIR_IN)?,
            ty if packet::is_icmp_error(ty) => {
                icmp::translate_error(ctx, &ip, cfg, p, true)?;
                return Ok(Err(TC_ACT_OK));
            }
            _ => return Ok(Err(TC_ACT_OK)),
        },
        _ => return Ok(Err(TC_ACT_OK)),
    }
    let flags = ip.tcp_flags(ctx);
    Ok(Ok((ip, flags)))
}
