//! netbridge datapath: TC/XDP programs for the bridge ports.
#![no_std]
#![no_main]

mod bridge;
mod parse;
mod stats;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_redirect_peer,
    macros::classifier,
    programs::TcContext,
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
            stats::count_drop(unsafe { (*ctx.skb.skb).ifindex }, reason);
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
    match bridge::decide(ifindex, &eth.src, &eth.dst, tagged)? {
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
