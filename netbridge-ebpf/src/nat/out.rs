//! The fast path's way out of the uplink, for a packet translated on a
//! bridge port (IPv4 or IPv6). On a veth uplink (a lab's simulated
//! upstream, a nested setup; `NAT_UPLINK_PEER`), the packet goes straight
//! to the ingress of the veth's peer in the upstream namespace, with the
//! next hop's MACs from the FIB: no neighbour output, transmit queue,
//! backlog queue or uplink egress program on the way (as bridged frames
//! go to a lab host's namespace). Otherwise, or when the FIB has no
//! neighbour entry yet (the first packets), the kernel's neighbour output
//! resolves the next hop. The FIB's answer is kept a moment per CPU
//! ([`NB_NEXT_HOP`]): an IPv6 FIB lookup was about half of a NAT66
//! packet's cost here.
use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_OUTPUT, bpf_fib_lookup},
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect_neigh, bpf_redirect_peer},
    macros::map,
    maps::PerCpuArray,
    programs::TcContext,
};
use netbridge_common::{NAT_UPLINK_PEER, NAT6_UPLINK_PEER, nat_stat};

use crate::parse::{ETH_HLEN, ptr_at};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// How long a FIB answer is reused: a route or neighbour change (a new
/// next hop, a router's new MAC) reaches the fast path within this. The
/// MTU is not part of it (the callers check the uplink's).
const NEXT_HOP_TTL_NS: u64 = 100_000_000;
/// Cache slots per CPU, picked by the destination's last word.
const NEXT_HOP_SLOTS: u32 = 16;

/// A FIB answer: the packet's addresses (IPv4: the first word of each)
/// routed out of `uplink` to a resolved neighbour, whose MACs (destination
/// first, as in the frame) the frame gets. Addresses as they sit in the
/// packet (network byte order, compared only).
#[repr(C)]
struct NextHop {
    addrs: [[u32; 4]; 2],
    uplink: u32,
    family: u32,
    /// `bridge::now()` at the lookup; 0: empty.
    stamp_ns: u64,
    macs: [u8; 12],
    _pad: u32,
}

/// Per CPU: recent FIB answers (direct-mapped), so that a flow's packets
/// need one lookup per [`NEXT_HOP_TTL_NS`], not one each.
#[map]
static NB_NEXT_HOP: PerCpuArray<NextHop> = PerCpuArray::with_max_entries(NEXT_HOP_SLOTS, 0);

/// Sends a translated packet out of `uplink`; returns the TC action.
/// Its own BPF function: the FIB parameters (64 bytes) stay off the
/// callers' frames.
#[inline(never)]
pub fn send(ctx: &TcContext, uplink: u32) -> i64 {
    if let Some(macs) = next_hop(ctx, uplink)
        && let Some(eth) = ptr_at::<[u8; 12]>(ctx.data(), ctx.data_end(), 0)
    {
        // SAFETY: bounds-checked by ptr_at; TC programs may write packet
        // data (the verifier unclones the skb first).
        unsafe { *(eth as *mut [u8; 12]) = macs };
        super::count(nat_stat::UPLINK_PEER);
        // SAFETY: a helper call with a plain ifindex; the kernel checks it.
        return unsafe { bpf_redirect_peer(uplink, 0) };
    }
    // SAFETY: a helper call with an ifindex and no neighbour params (NULL, 0).
    unsafe { bpf_redirect_neigh(uplink, core::ptr::null_mut(), 0, 0) }
}

/// The next hop's and the uplink's MACs (destination first, as in the
/// frame) when the uplink is a veth and the FIB routes the packet out of
/// it to a resolved neighbour; None otherwise. From the cache if a lookup
/// of the same addresses is recent.
#[inline(always)]
fn next_hop(ctx: &TcContext, uplink: u32) -> Option<[u8; 12]> {
    let (start, end) = (ctx.data(), ctx.data_end());
    let (family, addrs) = if crate::nat6::packet::is_ipv6(ctx) {
        crate::nat6::config().filter(|c| c.flags & NAT6_UPLINK_PEER != 0)?;
        // Source and destination at +8 and +24 of the IPv6 header.
        let a = ptr_at::<[[u32; 4]; 2]>(start, end, ETH_HLEN + 8)?;
        // SAFETY: bounds-checked by ptr_at.
        (AF_INET6, unsafe { *a })
    } else {
        super::config().filter(|c| c.flags & NAT_UPLINK_PEER != 0)?;
        // Source and destination at +12 and +16 of the IPv4 header.
        let a = ptr_at::<[u32; 2]>(start, end, ETH_HLEN + 12)?;
        // SAFETY: bounds-checked by ptr_at.
        let a = unsafe { *a };
        (AF_INET, [[a[0], 0, 0, 0], [a[1], 0, 0, 0]])
    };
    let slot = u32::from_be(addrs[1][if family == AF_INET { 0 } else { 3 }]);
    let e = NB_NEXT_HOP.get_ptr_mut(slot % NEXT_HOP_SLOTS)?;
    // SAFETY: this CPU's slot of a per-CPU array; programs are not preempted.
    let e = unsafe { &mut *e };
    let now = crate::bridge::now();
    if e.stamp_ns != 0
        && now.wrapping_sub(e.stamp_ns) < NEXT_HOP_TTL_NS
        && same(&e.addrs, &addrs)
        && e.uplink == uplink
        && e.family == family as u32
    {
        return Some(e.macs);
    }
    e.stamp_ns = 0;
    let macs = fib(ctx, uplink, family, &addrs)?;
    *e = NextHop {
        addrs,
        uplink,
        family: family as u32,
        stamp_ns: now,
        macs,
        _pad: 0,
    };
    Some(macs)
}

/// `a == b` word by word (`==` on arrays is a byte-wise memcmp call here).
#[inline(always)]
fn same(a: &[[u32; 4]; 2], b: &[[u32; 4]; 2]) -> bool {
    let mut d = 0;
    let mut i = 0;
    while i < 4 {
        d |= (a[0][i] ^ b[0][i]) | (a[1][i] ^ b[1][i]);
        i += 1;
    }
    d == 0
}

/// The FIB's next hop for a packet from `addrs[0]` to `addrs[1]` out of
/// `uplink`, as the host would send it; None unless routed out of the
/// uplink to a resolved neighbour.
#[inline(always)]
fn fib(ctx: &TcContext, uplink: u32, family: u8, addrs: &[[u32; 4]; 2]) -> Option<[u8; 12]> {
    // SAFETY: an all-zero bpf_fib_lookup is its "nothing set" value.
    let mut p: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    p.family = family;
    if family == AF_INET6 {
        p.__bindgen_anon_3.ipv6_src = addrs[0];
        p.__bindgen_anon_4.ipv6_dst = addrs[1];
    } else {
        p.__bindgen_anon_3.ipv4_src = addrs[0][0];
        p.__bindgen_anon_4.ipv4_dst = addrs[1][0];
    }
    p.ifindex = uplink;
    // tot_len 0: the skb's length is checked against the uplink's MTU.
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
