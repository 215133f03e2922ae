//! netbridge datapath: TC/XDP programs for the bridge ports.
#![no_std]
#![no_main]

mod bridge;
mod csum;
mod guard;
mod log;
mod nat;
mod parse;
mod policy;
mod stats;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    helpers::{bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

use crate::{
    bridge::Verdict,
    parse::{L3, parse_eth},
};

/// Ingress of a bridge port (host-side veth): classify and count the frame.
#[classifier]
pub fn nb_port_ingress(ctx: TcContext) -> i32 {
    match try_port_ingress(&ctx) {
        Ok(action) => action,
        Err(reason) => {
            let ifindex = unsafe { (*ctx.skb.skb).ifindex };
            stats::count_drop(ifindex, reason);
            log::drop(ifindex, reason);
            TC_ACT_SHOT
        }
    }
}

#[inline(always)]
fn try_port_ingress(ctx: &TcContext) -> Result<i32, u32> {
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let len = ctx.len() as u64;
    let eth = parse_eth(ctx.data(), ctx.data_end())?;
    stats::count_rx(ifindex, len, &eth);
    if let L3::Ipv4 = eth.l3 {
        parse::check_ipv4(ctx.data(), ctx.data_end(), eth.l3_off)?;
    }
    // The kernel moves the outer VLAN tag out of the frame before TC runs.
    let tagged = eth.vlan_tags > 0 || unsafe { (*ctx.skb.skb).vlan_present } != 0;
    let verdict = bridge::decide(ifindex, &eth, ctx.data(), ctx.data_end(), tagged)?;
    policy::check(ifindex, &eth, ctx.data(), ctx.data_end(), verdict)?;
    if let L3::Ipv4 = eth.l3
        && !tagged
        && let Some(hook) = nat::port_hook(ctx, eth.l3_off)?
    {
        return Ok(match hook {
            // Hairpin NAT readdressed the frame to another port's host.
            nat::Hook::Peer(out) => {
                stats::count_verdict(ifindex, len, Some(out));
                unsafe { bpf_redirect_peer(out, 0) as i32 }
            }
            // Translated and routed here: out of the uplink.
            nat::Hook::Neigh(uplink) => {
                stats::count_redirect_only(ifindex);
                unsafe { bpf_redirect_neigh(uplink, core::ptr::null_mut(), 0, 0) as i32 }
            }
        });
    }
    match verdict {
        Verdict::Redirect(out) => {
            stats::count_verdict(ifindex, len, Some(out));
            // Straight into the destination namespace's ingress: no bridge,
            // no second veth hop, no backlog queue.
            Ok(unsafe { bpf_redirect_peer(out, 0) } as i32)
        }
        Verdict::Fallback => {
            stats::count_verdict(ifindex, len, None);
            Ok(TC_ACT_OK)
        }
    }
}

/// TC egress of the uplink: SNAT (masquerade) and reverse DNAT.
#[classifier]
pub fn nb_uplink_egress(ctx: TcContext) -> i32 {
    uplink_action(&ctx, nat::try_uplink_egress(&ctx))
}

/// TC ingress of the uplink: reverse SNAT and DNAT of forwarded ports.
#[classifier]
pub fn nb_uplink_ingress(ctx: TcContext) -> i32 {
    uplink_action(&ctx, nat::try_uplink_ingress(&ctx))
}

/// Never attached: `up`, `gc` and `forward` run it through
/// BPF_PROG_TEST_RUN to start the conntrack sweep timer, sweep now, or
/// purge a forward's sessions (see `nat::sweep`).
#[classifier]
pub fn nb_ct_ctl(ctx: TcContext) -> i32 {
    nat::sweep::control(&ctx) as i32
}

/// The uplink is not a bridge port: drops are counted by reason only.
#[inline(always)]
fn uplink_action(ctx: &TcContext, r: Result<i32, u32>) -> i32 {
    match r {
        Ok(action) => action,
        Err(reason) => {
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
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    match try_port_xdp(&ctx, ifindex) {
        Ok(action) => action,
        Err(reason) => {
            stats::count_drop(ifindex, reason);
            xdp_action::XDP_DROP
        }
    }
}

#[inline(always)]
fn try_port_xdp(ctx: &XdpContext, ifindex: u32) -> Result<u32, u32> {
    let (start, end) = (ctx.data(), ctx.data_end());
    let len = (end - start) as u64;
    let eth = parse_eth(start, end)?;
    stats::count_rx(ifindex, len, &eth);
    if let L3::Ipv4 = eth.l3 {
        parse::check_ipv4(start, end, eth.l3_off)?;
    }
    let verdict = bridge::decide(ifindex, &eth, start, end, eth.vlan_tags > 0)?;
    policy::check(ifindex, &eth, start, end, verdict)?;
    match verdict {
        Verdict::Redirect(out) => {
            stats::count_verdict(ifindex, len, Some(out));
            // Transmit out of the destination port: its peer (the namespace
            // end, running nb_peer_xdp) receives the frame.
            Ok(unsafe { bpf_redirect(out, 0) } as u32)
        }
        Verdict::Fallback => {
            stats::count_verdict(ifindex, len, None);
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
