//! netbridge datapath: TC/XDP programs for the bridge ports.
#![no_std]
#![no_main]

mod bridge;
mod capture;
mod csum;
mod guard;
mod log;
mod nat;
mod nat6;
mod parse;
mod policy;
mod stats;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    helpers::{bpf_redirect, bpf_redirect_peer},
    macros::{classifier, map, xdp},
    maps::ProgramArray,
    programs::{TcContext, XdpContext},
};
use netbridge_common::{
    NAT_FAST_PATH, NAT_FORWARDS, NAT_MASQUERADE, PORT_PROG_IPV6, PORT_PROG_NAT, PORT_PROGS,
    PortConfig, drop_reason,
};

use crate::{
    bridge::Verdict,
    parse::{ETH_HLEN, Eth, Ipv6, L3, Mac, parse_eth},
};

/// Programs the port program tail-calls (index `PORT_PROG_NAT`:
/// nb_port_nat, `PORT_PROG_IPV6`: nb_port_ipv6).
#[map]
static NB_PORT_PROGS: ProgramArray = ProgramArray::pinned(PORT_PROGS, 0);

/// Ingress of a bridge port (host-side veth): classify and count the
/// frame; IPv6 frames go on to nb_port_ipv6.
#[classifier]
pub fn nb_port_ingress(mut ctx: TcContext) -> i32 {
    let r = try_port_ingress::<false>(&mut ctx);
    port_action(&ctx, r)
}

/// The port program for IPv6 frames, tail-called by nb_port_ingress: the
/// same code with the IPv6 checks, verified apart from the IPv4 path (each
/// path's checks multiply the states the verifier walks through the rest).
#[classifier]
pub fn nb_port_ipv6(mut ctx: TcContext) -> i32 {
    let r = try_port_ingress::<true>(&mut ctx);
    port_action(&ctx, r)
}

/// A port program's result as a TC action; drops counted and logged.
#[inline(always)]
fn port_action(ctx: &TcContext, r: Result<i32, u32>) -> i32 {
    match r {
        Ok(action) => action,
        Err(reason) => {
            let reason = stats::opaque(reason);
            // SAFETY: `ctx.skb.skb` is the program's valid __sk_buff context.
            let ifindex = unsafe { (*ctx.skb.skb).ifindex };
            stats::count_drop(ifindex, reason);
            log::drop(ifindex, reason);
            capture::port_drop(ctx, ifindex, reason);
            TC_ACT_SHOT
        }
    }
}

/// The port program; `IPV6`: nb_port_ipv6's part (IPv6 frames only).
#[inline(always)]
fn try_port_ingress<const IPV6: bool>(ctx: &mut TcContext) -> Result<i32, u32> {
    // SAFETY: `ctx.skb.skb` is the program's valid __sk_buff context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if !IPV6 {
        capture::begin(ctx);
    }
    let len = ctx.len() as u64;
    let (start, end) = (ctx.data(), ctx.data_end());
    let eth = parse_eth(start, end)?;
    if (eth.l3 == L3::Ipv6) != IPV6 {
        if !IPV6 {
            // SAFETY: a valid context and program array; returns only if
            // the slot is empty (a lab whose array predates the program).
            unsafe { NB_PORT_PROGS.tail_call(ctx, PORT_PROG_IPV6) };
        }
        return Err(drop_reason::PORT_PROGRAM_MISSING);
    }
    let port = bridge::port(ifindex);
    let (slot, flags) = (stats::slot_of(port), port.map_or(0, |p| p.flags));
    stats::count_rx(stats::counters(ifindex, slot), len, &eth);
    let v6 = l3_checks(port, &eth, start, end, len as usize)?;
    // The kernel moves the outer VLAN tag out of the frame before TC runs.
    // SAFETY: `ctx.skb.skb` is the program's valid __sk_buff context.
    let tagged = eth.vlan_tags > 0 || unsafe { (*ctx.skb.skb).vlan_present } != 0;
    let bridge = bridge::config();
    let verdict = bridge::decide(port, ifindex, &eth, start, end, tagged, &bridge)?;
    policy::check(flags, ifindex, &eth, start, end, &verdict, v6.as_ref())?;
    if !tagged && wants_nat(&eth.l3, eth.dst, bridge.gateway) {
        // The NAT part runs as its own program: bridged frames never pay
        // for it, and neither program's stack or verification has to hold
        // both. It finishes with `verdict` if the frame is not for NAT.
        Pass::write(ctx, slot, verdict);
        // SAFETY: a valid context and program array; returns only if the
        // slot is empty (e.g. while an upgrade is being loaded).
        unsafe { NB_PORT_PROGS.tail_call(ctx, PORT_PROG_NAT) };
    }
    Ok(finish(ctx, ifindex, slot, verdict, len))
}

/// Header checks of the L3 part of a frame `len` bytes long from `port`:
/// IPv4 header; IPv6 header chain and, on a configured port, the IPv6
/// guards. Returns the IPv6 chain for the policy.
#[inline(always)]
fn l3_checks(
    port: Option<&PortConfig>,
    eth: &Eth,
    start: usize,
    end: usize,
    len: usize,
) -> Result<Option<Ipv6>, u32> {
    match eth.l3 {
        L3::Ipv4 => parse::check_ipv4(start, end, eth.l3_off).map(|_| None),
        L3::Ipv6 => {
            let v6 = parse::check_ipv6(start, end, eth.l3_off, len)?;
            if let Some(port) = port {
                guard::check_ipv6(port, eth, start, end, &v6)?;
            }
            Ok(Some(v6))
        }
        _ => Ok(None),
    }
}

/// May the NAT port hook want this frame (`l3`, to `dst`)? Only routed
/// frames, to the gateway, can need translating, except IPv4 hairpin
/// replies, which a forward's target sends on-link to the client's MAC.
/// IPv6 (NAT66 hairpin): routed frames only, the target seeing the
/// uplink's address.
#[inline(always)]
fn wants_nat(l3: &L3, dst: Mac, gateway: Mac) -> bool {
    match l3 {
        L3::Ipv4 => {}
        L3::Ipv6 => return dst == gateway && nat6::enabled(),
        _ => return false,
    }
    match nat::config() {
        // Masquerade: SNAT hairpin (a lab host to another's mapping).
        Some(c) => {
            c.flags & NAT_FORWARDS != 0
                || (dst == gateway && c.flags & (NAT_FAST_PATH | NAT_MASQUERADE) != 0)
        }
        None => false,
    }
}

/// Counts, reports (capture) and carries out the bridging verdict for a
/// frame of `len` bytes from `ifindex` (counter slot `slot`).
#[inline(always)]
fn finish(ctx: &TcContext, ifindex: u32, slot: u32, verdict: Verdict, len: u64) -> i32 {
    let counters = stats::counters(ifindex, slot);
    match verdict {
        Verdict::Redirect(out, out_slot) => {
            capture::port(ctx, ifindex, out);
            stats::count_redirected(counters);
            stats::tx(stats::counters(out, out_slot), len);
            // Straight into the destination namespace's ingress: no bridge,
            // no second veth hop, no backlog queue.
            // SAFETY: a helper call with a plain ifindex; the kernel checks it.
            unsafe { bpf_redirect_peer(out, 0) as i32 }
        }
        Verdict::Fallback => {
            capture::port(ctx, ifindex, 0);
            stats::count_fallback(counters);
            TC_ACT_OK
        }
    }
}

/// What nb_port_ingress hands to nb_port_nat, in the skb's control buffer
/// (kept across a tail call): the port's counter slot and the bridging
/// verdict (destination ifindex, 0 for the kernel, and its slot).
struct Pass;

impl Pass {
    #[inline(always)]
    fn write(ctx: &mut TcContext, slot: u32, verdict: Verdict) {
        let (out, out_slot) = match verdict {
            Verdict::Redirect(out, out_slot) => (out, out_slot),
            Verdict::Fallback => (0, 0),
        };
        let cb = ctx.cb_mut();
        cb[0] = slot;
        cb[1] = out;
        cb[2] = out_slot;
    }

    /// (slot, verdict)
    #[inline(always)]
    fn read(ctx: &TcContext) -> (u32, Verdict) {
        let cb = ctx.cb();
        let verdict = match cb[1] {
            0 => Verdict::Fallback,
            out => Verdict::Redirect(out, cb[2]),
        };
        (cb[0], verdict)
    }
}

/// NAT on a bridge port, tail-called by nb_port_ingress for frames that
/// may need it (see `wants_nat`): hairpin (IPv4 and IPv6), and the fast
/// path of established IPv4 sessions; anything else finishes with the
/// bridging verdict.
#[classifier]
pub fn nb_port_nat(ctx: TcContext) -> i32 {
    let r = try_port_nat(&ctx);
    port_action(&ctx, r)
}

#[inline(always)]
fn try_port_nat(ctx: &TcContext) -> Result<i32, u32> {
    // SAFETY: `ctx.skb.skb` is the program's valid __sk_buff context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let len = ctx.len() as u64;
    let (slot, verdict) = Pass::read(ctx);
    // Tail-called for untagged frames only: IP right after Ethernet.
    let hook = if nat6::packet::is_ipv6(ctx) {
        nat6::port_hook(ctx)?
    } else {
        nat::port_hook(ctx, ETH_HLEN)?
    };
    let Some(hook) = hook else {
        return Ok(finish(ctx, ifindex, slot, verdict, len));
    };
    stats::count_redirected(stats::counters(ifindex, slot));
    Ok(match hook {
        // Hairpin NAT readdressed the frame to another port's host.
        nat::Hook::Peer(out) => {
            capture::port(ctx, ifindex, out);
            stats::count_tx(out, len);
            // SAFETY: a helper call with a plain ifindex; the kernel checks it.
            unsafe { bpf_redirect_peer(out, 0) as i32 }
        }
        // Translated and routed here: out of the uplink.
        nat::Hook::Neigh(uplink) => {
            capture::port(ctx, ifindex, uplink);
            nat::out::send(ctx, uplink) as i32
        }
        // SNAT hairpin's first packet: the uplink's egress program opens
        // the session and delivers it.
        nat::Hook::Egress(uplink) => {
            // SAFETY: a helper call with an ifindex and flags, no pointers.
            unsafe { aya_ebpf::helpers::bpf_redirect(uplink, 0) as i32 }
        }
    })
}

/// TC egress of the uplink: SNAT (masquerade) and reverse DNAT; IPv6:
/// NAT66 masquerade (`nat6`, its own BPF functions and stack chain).
#[classifier]
pub fn nb_uplink_egress(ctx: TcContext) -> i32 {
    capture::begin(&ctx);
    let r = if nat6::packet::is_ipv6(&ctx) {
        nat6::uplink_egress(&ctx)
    } else {
        nat::try_uplink_egress(&ctx)
    };
    capture::uplink(&ctx, true, &r);
    match r {
        // A lab host's new session refused (RFC 5508 REQ-8): dropped, and
        // the host told why (ICMP Destination Unreachable, code 13;
        // ICMPv6's code 1).
        Err(reason) if nat::refuse::is_refusal(reason) && nat6::packet::is_ipv6(&ctx) => {
            uplink_action(&ctx, r);
            nat6::refuse::answer(&ctx, 0)
        }
        Err(reason) if nat::refuse::is_refusal(reason) => {
            uplink_action(&ctx, r);
            nat::refuse::answer(&ctx, 0)
        }
        r => uplink_action(&ctx, r),
    }
}

/// TC ingress of the uplink: reverse SNAT and DNAT of forwarded ports.
#[classifier]
pub fn nb_uplink_ingress(ctx: TcContext) -> i32 {
    capture::begin(&ctx);
    let r = if nat6::packet::is_ipv6(&ctx) {
        nat6::uplink_ingress(&ctx)
    } else {
        nat::try_uplink_ingress(&ctx)
    };
    capture::uplink(&ctx, false, &r);
    match r {
        // A forward's client refused a new session (RFC 5508 REQ-8):
        // dropped, and told why, back out of the uplink.
        Err(reason) if nat::refuse::is_refusal(reason) && nat6::packet::is_ipv6(&ctx) => {
            uplink_action(&ctx, r);
            nat6::refuse::answer(&ctx, 1)
        }
        Err(reason) if nat::refuse::is_refusal(reason) => {
            uplink_action(&ctx, r);
            nat::refuse::answer(&ctx, 1)
        }
        r => uplink_action(&ctx, r),
    }
}

/// Never attached: `up`, `gc` and `forward` run it through
/// BPF_PROG_TEST_RUN to start the conntrack sweep timers, sweep now, or
/// purge a forward's sessions (see `nat::sweep`; NAT66's part:
/// `nat6::limits`).
#[classifier]
pub fn nb_ct_ctl(ctx: TcContext) -> i32 {
    let r4 = nat::sweep::control(&ctx);
    nat6::limits::control(&ctx, r4) as i32
}

/// The uplink is not a bridge port: drops are counted by reason only.
#[inline(always)]
fn uplink_action(ctx: &TcContext, r: Result<i32, u32>) -> i32 {
    match r {
        Ok(action) => action,
        Err(reason) => {
            let reason = stats::opaque(reason);
            stats::count_drop_reason(reason);
            // SAFETY: `ctx.skb.skb` is the program's valid __sk_buff context.
            log::drop(unsafe { (*ctx.skb.skb).ifindex }, reason);
            TC_ACT_SHOT
        }
    }
}

/// XDP on a bridge port: the same parse, learn and lookup as the TC program,
/// redirecting known unicast with XDP_REDIRECT out of the destination port.
#[xdp]
pub fn nb_port_xdp(ctx: XdpContext) -> u32 {
    // SAFETY: `ctx.ctx` is the program's valid xdp_md context.
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    match try_port_xdp(&ctx, ifindex) {
        Ok(action) => action,
        Err(reason) => {
            stats::count_drop(ifindex, reason);
            capture::port_drop(&ctx, ifindex, reason);
            xdp_action::XDP_DROP
        }
    }
}

#[inline(always)]
fn try_port_xdp(ctx: &XdpContext, ifindex: u32) -> Result<u32, u32> {
    capture::begin(ctx);
    let (start, end) = (ctx.data(), ctx.data_end());
    let len = (end - start) as u64;
    let eth = parse_eth(start, end)?;
    let port = bridge::port(ifindex);
    let (slot, flags) = (stats::slot_of(port), port.map_or(0, |p| p.flags));
    stats::count_rx(stats::counters(ifindex, slot), len, &eth);
    let v6 = l3_checks(port, &eth, start, end, len as usize)?;
    let tagged = eth.vlan_tags > 0;
    let verdict = bridge::decide(port, ifindex, &eth, start, end, tagged, &bridge::config())?;
    policy::check(flags, ifindex, &eth, start, end, &verdict, v6.as_ref())?;
    let counters = stats::counters(ifindex, slot);
    match verdict {
        Verdict::Redirect(out, out_slot) => {
            capture::port(ctx, ifindex, out);
            stats::count_redirected(counters);
            stats::tx(stats::counters(out, out_slot), len);
            // Transmit out of the destination port: its peer (the namespace
            // end, running nb_peer_xdp) receives the frame.
            // SAFETY: a helper call with a plain ifindex; the kernel checks it.
            Ok(unsafe { bpf_redirect(out, 0) } as u32)
        }
        Verdict::Fallback => {
            capture::port(ctx, ifindex, 0);
            stats::count_fallback(counters);
            Ok(xdp_action::XDP_PASS)
        }
    }
}

/// On the namespace end of each port in XDP mode: passes everything. A veth
/// only accepts XDP_REDIRECTed frames when its peer runs an XDP program.
#[xdp]
pub fn nb_peer_xdp(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
