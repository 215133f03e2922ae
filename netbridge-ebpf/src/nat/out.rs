//! The fast path's way out of the uplink, for a packet translated on a
//! bridge port (IPv4 or IPv6). On a veth uplink (a lab's simulated
//! upstream, a nested setup; `NAT_UPLINK_PEER`), the packet goes straight
//! to the ingress of the veth's peer in the upstream namespace, with the
//! next hop's MACs from the FIB: no neighbour output, transmit queue,
//! backlog queue or uplink egress program on the way (as bridged frames
//! go to a lab host's namespace). Otherwise, or when the FIB has no
//! neighbour entry yet (the first packets), the kernel's neighbour output
//! resolves the next hop.
use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_OUTPUT, bpf_fib_lookup},
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect_neigh, bpf_redirect_peer},
    programs::TcContext,
};
use netbridge_common::{NAT_UPLINK_PEER, NAT6_UPLINK_PEER, nat_stat};

use crate::parse::{ETH_HLEN, ptr_at};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Sends a translated packet out of `uplink`; returns the TC action.
/// Its own BPF function: the FIB parameters (64 bytes) stay off the
/// callers' frames.
#[inline(never)]
pub fn send(ctx: &TcContext, uplink: u32) -> i64 {
    if let Some(macs) = next_hop(ctx, uplink)
        && ctx.store(0, &macs, 0).is_ok()
    {
        super::count(nat_stat::UPLINK_PEER);
        // SAFETY: a helper call with a plain ifindex; the kernel checks it.
        return unsafe { bpf_redirect_peer(uplink, 0) };
    }
    // SAFETY: a helper call with an ifindex and no neighbour params (NULL, 0).
    unsafe { bpf_redirect_neigh(uplink, core::ptr::null_mut(), 0, 0) }
}

/// The next hop's and the uplink's MACs (destination first, as in the
/// frame) when the uplink is a veth and the FIB routes the packet out of
/// it to a resolved neighbour; None otherwise.
#[inline(always)]
fn next_hop(ctx: &TcContext, uplink: u32) -> Option<[u8; 12]> {
    // SAFETY: an all-zero bpf_fib_lookup is its "nothing set" value.
    let mut p: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    let (start, end) = (ctx.data(), ctx.data_end());
    if crate::nat6::packet::is_ipv6(ctx) {
        crate::nat6::config().filter(|c| c.flags & NAT6_UPLINK_PEER != 0)?;
        // Source and destination at +8 and +24 of the IPv6 header.
        let a = ptr_at::<[[u32; 4]; 2]>(start, end, ETH_HLEN + 8)?;
        // SAFETY: bounds-checked by ptr_at.
        let a = unsafe { *a };
        p.family = AF_INET6;
        p.__bindgen_anon_3.ipv6_src = a[0];
        p.__bindgen_anon_4.ipv6_dst = a[1];
    } else {
        super::config().filter(|c| c.flags & NAT_UPLINK_PEER != 0)?;
        // Source and destination at +12 and +16 of the IPv4 header.
        let a = ptr_at::<[u32; 2]>(start, end, ETH_HLEN + 12)?;
        // SAFETY: bounds-checked by ptr_at.
        let a = unsafe { *a };
        p.family = AF_INET;
        p.__bindgen_anon_3.ipv4_src = a[0];
        p.__bindgen_anon_4.ipv4_dst = a[1];
    }
    p.ifindex = uplink;
    // As the host would send it out of the uplink; tot_len 0: the skb's
    // length is checked against the uplink's MTU.
    // SAFETY: valid context and parameters, their size passed.
    let rc = unsafe {
        fib_lookup(
            ctx.skb.skb as *mut _,
            &mut p,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            BPF_FIB_LOOKUP_OUTPUT,
        )
    };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 || p.ifindex != uplink {
        return None;
    }
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&p.dmac);
    macs[6..].copy_from_slice(&p.smac);
    Some(macs)
}
