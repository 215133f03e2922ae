//! `netbridge capture`: copies packets at the datapath's decision points into
//! a ring buffer while a capture runs (see `netbridge_common::capture`).
//!
//! Off, a hook costs one array lookup (inlined by the verifier), one load and
//! a branch: [`begin`] at a program's start and one decision hook at its end
//! each test the lease. No state is carried between the two in the program
//! (the port program's stack is nearly full): [`begin`] arms this CPU's
//! scratch slot, the decision hook's [`emit`] consumes it. On, each event
//! costs the filter, a per-CPU rate check, a ring-buffer reservation and one
//! bounded copy; nothing ever waits for the reader (a full ring counts a
//! lost event).
use aya_ebpf::{
    EbpfContext,
    bindings::{TC_ACT_REDIRECT, TC_ACT_UNSPEC},
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_skb_load_bytes, bpf_xdp_load_bytes},
    macros::{classifier, map},
    maps::{Array, PerCpuArray, RingBuf},
    programs::{TcContext, XdpContext},
};
use netbridge_common::capture::{
    CAP_DROPS_ONLY, CaptureConfig, CaptureCpu, CaptureEvent, CaptureTuple, EV_PRE, EV_VLAN,
    RING_BYTES, SNAP_MAX, class, point, verdict,
};

use crate::parse::{L3, parse_eth, ptr_at};

#[map]
static NB_CAPTURE: Array<CaptureConfig> = Array::pinned(1, 0);

#[map]
static NB_CAPTURE_RING: RingBuf = RingBuf::pinned(RING_BYTES, 0);

#[map]
static NB_CAPTURE_CPU: PerCpuArray<CaptureCpu> = PerCpuArray::pinned(1, 0);

/// Per-CPU scratch for the packet a hook is looking at: kept out of the
/// programs' 512-byte stacks. One program runs at a time per CPU (TC and
/// XDP run in softirq, which does not nest), so a slot is never shared.
#[map]
static NB_CAPTURE_PKT: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// This CPU's working state for the packet a hook is looking at. Kept in a
/// map, not on the stack: the hooks' subprograms add their frames to the
/// port program's (the kernel allows 512 bytes for the whole call chain).
#[repr(C)]
struct Scratch {
    /// What [`begin`] noted before the program ran (valid while `armed`).
    now: u64,
    pre: CaptureTuple,
    class: u8,
    flags: u8,
    vlan_tci: u16,
    /// The decision being reported (see [`emit`]).
    ifindex: u32,
    out: u32,
    code: u32,
    /// Copy size, laundered through memory for the verifier (see copy_head).
    snap: u32,
    rate: u32,
    /// 1 from [`start`] until [`emit`] uses the slot.
    armed: u8,
    _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<Scratch>() == 56);

/// An event's point, verdict and reason in one register (BPF functions
/// take at most five arguments).
#[inline(always)]
const fn code(point: u8, verdict: u8, reason: u32) -> u32 {
    (point as u32) | (verdict as u32) << 8 | (reason & 0xffff) << 16
}

/// Packet bytes of a TC or XDP context.
pub trait Pkt: EbpfContext {
    const POINT_IN: u8;
    fn pkt_len(&self) -> u32;
    /// The linear data: (start, end) addresses.
    fn bounds(&self) -> (usize, usize);
    /// Copies `n` bytes at `off` to `dst`; 0 on success.
    fn copy(&self, off: u32, dst: *mut u8, n: u32) -> i64;
    /// The 802.1Q TCI the kernel moved out of the frame, if any.
    fn vlan_tci(&self) -> Option<u16>;
}

impl Pkt for TcContext {
    const POINT_IN: u8 = point::PORT_IN;
    #[inline(always)]
    fn pkt_len(&self) -> u32 {
        self.len()
    }
    #[inline(always)]
    fn bounds(&self) -> (usize, usize) {
        (self.data(), self.data_end())
    }
    #[inline(always)]
    fn copy(&self, off: u32, dst: *mut u8, n: u32) -> i64 {
        // SAFETY: dst points to at least n writable bytes (callers' buffers).
        unsafe { bpf_skb_load_bytes(self.as_ptr(), off, dst.cast(), n) }
    }
    #[inline(always)]
    fn vlan_tci(&self) -> Option<u16> {
        // SAFETY: the context pointer the kernel gave this program.
        let skb = unsafe { &*self.skb.skb };
        (skb.vlan_present != 0).then_some(skb.vlan_tci as u16)
    }
}

impl Pkt for XdpContext {
    const POINT_IN: u8 = point::PORT_XDP;
    #[inline(always)]
    fn pkt_len(&self) -> u32 {
        (self.data_end() - self.data()) as u32
    }
    #[inline(always)]
    fn bounds(&self) -> (usize, usize) {
        (self.data(), self.data_end())
    }
    #[inline(always)]
    fn copy(&self, off: u32, dst: *mut u8, n: u32) -> i64 {
        // SAFETY: dst points to at least n writable bytes (callers' buffers).
        unsafe { bpf_xdp_load_bytes(self.as_ptr().cast(), off, dst.cast(), n) }
    }
    #[inline(always)]
    fn vlan_tci(&self) -> Option<u16> {
        None
    }
}

/// Is a capture's lease set? The one check every hook makes.
#[inline(always)]
fn on() -> bool {
    NB_CAPTURE.get(0).is_some_and(|c| c.until_ns != 0)
}

/// Start of a program: if a capture runs, note the packet's class and
/// IPv4 tuple before any rewrite (the decision hook reports the change).
#[inline(always)]
pub fn begin<P: Pkt>(ctx: &P) {
    if on() {
        start(ctx);
    }
}

/// A capture's lease is set: check it, clear it if it ran out (its process
/// died), and arm this CPU's scratch slot with the packet as it is now.
/// Not inlined (a BPF-to-BPF call): the hooks stay small when off.
#[inline(never)]
fn start<P: Pkt>(ctx: &P) -> bool {
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let (Some(cfg), Some(sc)) = (NB_CAPTURE.get_ptr_mut(0), NB_CAPTURE_PKT.get_ptr_mut(0)) else {
        return false;
    };
    // SAFETY: valid map slots; the scratch one is this CPU's.
    let (cfg, sc) = unsafe { (&mut *cfg, &mut *sc) };
    if now >= cfg.until_ns {
        cfg.until_ns = 0;
        sc.armed = 0;
        return false;
    }
    sc.now = now;
    sc.pre = CaptureTuple::default();
    sc.class = class::OTHER;
    sc.flags = 0;
    sc.vlan_tci = 0;
    if let Some(tci) = ctx.vlan_tci() {
        sc.flags |= EV_VLAN;
        sc.vlan_tci = tci;
    }
    classify(ctx, sc);
    sc.armed = 1;
    true
}

/// Fills `sc.class` and, for IPv4, `sc.pre`, from the linear data (direct
/// packet access: no helper calls). Headers outside it leave the class
/// `OTHER` and no tuple.
#[inline(always)]
fn classify<P: Pkt>(ctx: &P, sc: &mut Scratch) {
    let (start, end) = ctx.bounds();
    let Ok(eth) = parse_eth(start, end) else {
        return;
    };
    sc.class = match eth.l3 {
        L3::Arp => class::ARP,
        L3::Ipv6 => class::IPV6,
        L3::Ipv4 => class::OTHER_IPV4,
        L3::Other => class::OTHER,
    };
    if eth.l3 != L3::Ipv4 {
        return;
    }
    let Some(ip) = ptr_at::<[u8; 20]>(start, end, eth.l3_off) else {
        return;
    };
    // SAFETY: bounds-checked by ptr_at.
    let ip = unsafe { &*ip };
    let t = &mut sc.pre;
    t.saddr.copy_from_slice(&ip[12..16]);
    t.daddr.copy_from_slice(&ip[16..20]);
    t.proto = ip[9];
    sc.flags |= EV_PRE;
    sc.class = match t.proto {
        IPPROTO_TCP => class::TCP,
        IPPROTO_UDP => class::UDP,
        IPPROTO_ICMP => class::ICMP,
        _ => class::OTHER_IPV4,
    };
    let l4 = eth.l3_off + (ip[0] & 0x0f) as usize * 4;
    let Some(l4) = ptr_at::<[u8; 8]>(start, end, l4) else {
        return;
    };
    // SAFETY: bounds-checked by ptr_at.
    let l4 = unsafe { &*l4 };
    match t.proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            t.sport = [l4[0], l4[1]];
            t.dport = [l4[2], l4[3]];
        }
        // ICMP: the echo identifier (what NAT maps like a port).
        IPPROTO_ICMP => t.sport = [l4[4], l4[5]],
        _ => {}
    }
}

/// A bridge port's decision for a frame from its namespace: redirected to
/// port `out`, or handed to the kernel (`out` = 0).
#[inline(always)]
pub fn port<P: Pkt>(ctx: &P, ifindex: u32, out: u32) {
    if on() {
        let v = if out != 0 {
            verdict::REDIRECT
        } else {
            verdict::PASS
        };
        emit(ctx, ifindex, out, code(P::POINT_IN, v, 0));
    }
}

/// A bridge port dropped a frame for `reason`.
#[inline(always)]
pub fn port_drop<P: Pkt>(ctx: &P, ifindex: u32, reason: u32) {
    if on() {
        emit(ctx, ifindex, 0, code(P::POINT_IN, verdict::DROP, reason));
    }
}

/// The uplink program's result for a packet (`egress`: leaving upstream).
#[inline(always)]
pub fn uplink(ctx: &TcContext, egress: bool, r: &Result<i32, u32>) {
    if !on() {
        return;
    }
    let (v, reason) = match r {
        Ok(a) if *a == TC_ACT_REDIRECT => (verdict::REDIRECT, 0),
        Ok(_) => (verdict::PASS, 0),
        Err(reason) => (verdict::DROP, *reason),
    };
    let p = if egress {
        point::UPLINK_OUT
    } else {
        point::UPLINK_IN
    };
    // SAFETY: the context pointer the kernel gave this program.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    emit(ctx, ifindex, 0, code(p, v, reason));
}

/// Observer on a bridge port's TC egress, attached by `netbridge capture`
/// for as long as it runs (its link dies with the process): frames the
/// kernel delivers to the namespace. BPF redirects never pass here.
#[classifier]
pub fn nb_capture_egress(ctx: TcContext) -> i32 {
    if on() {
        // SAFETY: the context pointer the kernel gave this program.
        let ifindex = unsafe { (*ctx.skb.skb).ifindex };
        // emit() notes the packet itself (nothing rewrites it here).
        emit(&ctx, ifindex, 0, code(point::PORT_OUT, verdict::PASS, 0));
    }
    // TCX_NEXT: observe only, whatever else is attached decides.
    TC_ACT_UNSPEC
}

/// Does the in-kernel filter let this event through?
#[inline(always)]
fn wanted(cfg: &CaptureConfig, sc: &Scratch) -> bool {
    let (v, out) = ((sc.code >> 8) as u8, sc.out);
    if cfg.flags & CAP_DROPS_ONLY != 0 && v != verdict::DROP {
        return false;
    }
    if cfg.class != class::ANY && cfg.class != sc.class {
        return false;
    }
    // A redirect to an unknown port (uplink to a lab host) is left to
    // userspace, which knows the hosts' addresses.
    cfg.ifindex == 0
        || cfg.ifindex == sc.ifindex
        || cfg.ifindex == out
        || (v == verdict::REDIRECT && out == 0)
}

/// Sends one event (`code`: point, verdict, reason), within the rate limit
/// and the ring's room. Not inlined, like [`start`]; its state lives in
/// the scratch slot so that its frame stays small. Uses what [`begin`]
/// noted, or notes the packet now if the capture started in between.
#[inline(never)]
fn emit<P: Pkt>(ctx: &P, ifindex: u32, out: u32, code: u32) {
    let Some(sc) = NB_CAPTURE_PKT.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch slot.
    let sc = unsafe { &mut *sc };
    if sc.armed == 0 && !start(ctx) {
        return;
    }
    sc.armed = 0;
    let Some(cfg) = NB_CAPTURE.get(0) else {
        return;
    };
    (sc.ifindex, sc.out, sc.code) = (ifindex, out, code);
    if !wanted(cfg, sc) {
        return;
    }
    (sc.snap, sc.rate) = (cfg.snaplen, cfg.rate);
    let Some(cpu) = NB_CAPTURE_CPU.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot; BPF programs do not nest on one CPU here.
    let cpu = unsafe { &mut *cpu };
    if sc.now.wrapping_sub(cpu.window_ns) >= 1_000_000_000 {
        cpu.window_ns = sc.now;
        cpu.in_window = 0;
    }
    if cpu.in_window >= sc.rate as u64 {
        cpu.lost_rate += 1;
        return;
    }
    cpu.in_window += 1;
    let Some(mut entry) = NB_CAPTURE_RING.reserve::<CaptureEvent>(0) else {
        cpu.lost_ring += 1;
        return;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: the reservation holds a whole CaptureEvent; every header
    // field is written before submit, `data` up to cap_len.
    unsafe {
        (*e).ts_ns = sc.now;
        (*e).ifindex = sc.ifindex;
        (*e).out_ifindex = sc.out;
        (*e).len = ctx.pkt_len();
        (*e).point = sc.code as u8;
        (*e).verdict = (sc.code >> 8) as u8;
        (*e).reason = (sc.code >> 16) as u16;
        (*e).class = sc.class;
        (*e).flags = sc.flags;
        (*e).vlan_tci = sc.vlan_tci;
        (*e).cpu = bpf_get_smp_processor_id() as u16;
        (*e).pre = sc.pre;
        (*e).cap_len = copy_head(ctx, (*e).data.as_mut_ptr(), sc);
    }
    entry.submit(0);
    cpu.sent += 1;
}

/// Copies the first min(len, snaplen, SNAP_MAX) bytes; returns how many.
#[inline(always)]
fn copy_head<P: Pkt>(ctx: &P, dst: *mut u8, sc: &mut Scratch) -> u16 {
    let n = ctx.pkt_len().min(sc.snap).min(SNAP_MAX as u32);
    if n == 0 {
        return 0;
    }
    // The verifier wants the size provably in 1..=SNAP_MAX at the call.
    // LLVM folds range checks it can prove away, so n goes through map
    // memory (opaque to LLVM, an unknown scalar to the verifier) and is
    // bounded by a mask both see.
    // SAFETY: a field of this CPU's scratch slot.
    let n = unsafe {
        core::ptr::write_volatile(&mut sc.snap, n - 1);
        core::ptr::read_volatile(&sc.snap)
    };
    const _: () = assert!(SNAP_MAX.is_power_of_two());
    let n = (n & (SNAP_MAX as u32 - 1)) + 1;
    if ctx.copy(0, dst, n) != 0 {
        return 0;
    }
    n as u16
}
