//! netbridge datapath: TC/XDP programs for the bridge ports.
#![no_std]
#![no_main]

mod parse;
mod stats;

use aya_ebpf::{
    bindings::TC_ACT_OK, bindings::TC_ACT_SHOT, macros::classifier, programs::TcContext,
};

use crate::parse::{L3, parse_eth};

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
    Ok(TC_ACT_OK)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
