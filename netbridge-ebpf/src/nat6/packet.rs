//! IPv6 access for NAT66 through the skb load/store helpers, and the
//! in-place rewrite. IPv6 has no header checksum; TCP, UDP and ICMPv6
//! checksums cover a pseudo-header with both 128-bit addresses, fixed with
//! the address's csum diff (BPF_F_PSEUDO_HDR) and the port's.
use core::ffi::c_void;

use aya_ebpf::{
    helpers::{bpf_csum_diff, bpf_skb_load_bytes, bpf_skb_store_bytes},
    macros::map,
    maps::PerCpuArray,
    programs::TcContext,
};
use netbridge_common::{Be16, Ct6Entry, Ct6Key, In6, drop_reason};

use crate::{
    nat::packet::{
        BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, l4_csum, load,
        store,
    },
    parse::ETH_HLEN,
};

pub use crate::nat::packet::{IPPROTO_TCP, IPPROTO_UDP};
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_ECHO_REPLY: u8 = 129;
const ETH_P_IPV6: Be16 = Be16::from_host(0x86dd);

/// The pseudo-header is IPv6's (kernel 6.16+): a CHECKSUM_COMPLETE skb's
/// csum is then left alone, as an IPv6 address change does not alter it.
const BPF_F_IPV6: u64 = 0x80;

/// Offsets in the IPv6 header.
const IP6_PLEN: usize = 4;
const IP6_NEXT: usize = 6;
pub const IP6_SADDR: usize = 8;
pub const IP6_DADDR: usize = 24;
pub const IP6_HLEN: usize = 40;
const TCP_DOFF: usize = 12;
const TCP_FLAGS: usize = 13;
pub const ICMP_CSUM: usize = 2;
pub const ICMP_ID: usize = 4;

/// An IPv6 packet right after the Ethernet header; its addresses and
/// ports are in [`Pkt6::key`].
pub struct Ip6 {
    /// The upper-layer header, once [`Ip6::walk`] followed the extension
    /// headers (before: right after the fixed header).
    pub l4_off: usize,
    /// Its protocol (before the walk: the first Next Header).
    pub proto: u8,
}

/// [`Ip6::walk`]: a fragment (first or not): no whole upper-layer packet
/// to translate.
pub const FRAGMENT: u32 = 1;
/// [`Ip6::walk`]: a routing header with segments left: not at its final
/// destination.
pub const ROUTED: u32 = 2;

/// Extension headers followed (hop-by-hop first only, routing,
/// destination options, fragment); a longer chain is dropped
/// (`ipv6_ext_chain`), as by the port program. AH ends the walk: NAT
/// would break it, so it is untranslatable.
const MAX_EXT: u32 = 4;
const NH_HOP: u8 = 0;
const NH_ROUTING: u8 = 43;
const NH_DSTOPTS: u8 = 60;

/// This CPU's packet state, off the BPF stack (the uplink programs' own
/// frames leave the NAT66 chain little of its 512 bytes): the packet's
/// tuple as a conntrack key, its mapping, and a new session's other half.
#[repr(C)]
pub struct Pkt6 {
    /// The packet's addressing (`dir` as looked up).
    pub key: Ct6Key,
    /// The mapping found or made.
    pub nat_addr: In6,
    pub nat_port: Be16,
    pub _pad: [u8; 2],
    /// A new session: its inbound key and the entry being inserted.
    pub in_key: Ct6Key,
    pub val: Ct6Entry,
    /// A session's other half, being removed.
    pub gone: Ct6Key,
    /// An address read from a quote (ICMPv6 errors).
    pub quoted: In6,
    /// The extension-header walk's result (see [`Ip6::walk`]), passed
    /// through map memory: the verifier then checks the rest once, not
    /// once per path through the chain.
    pub walk: [u32; 4],
}

#[map]
static NB_PKT6: PerCpuArray<Pkt6> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's [`Pkt6`].
#[inline(always)]
pub fn pkt() -> Result<&'static mut Pkt6, u32> {
    let p = NB_PKT6.get_ptr_mut(0).ok_or(drop_reason::NAT_REWRITE)?;
    // SAFETY: this CPU's slot of a per-CPU array; programs are not preempted.
    Ok(unsafe { &mut *p })
}

/// Loads an address at `off` into `dst` (map memory, not the stack).
#[inline(always)]
pub fn load_addr(ctx: &TcContext, off: usize, dst: &mut In6) -> Result<(), u32> {
    // SAFETY: the skb and a 16-byte destination the helper writes.
    let r = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const c_void,
            off as u32,
            dst.as_mut_ptr() as *mut c_void,
            16,
        )
    };
    if r != 0 {
        return Err(drop_reason::TRUNCATED_L3);
    }
    Ok(())
}

/// Is the skb IPv6 (by its protocol, as the kernel set it)?
#[inline(always)]
pub fn is_ipv6(ctx: &TcContext) -> bool {
    // SAFETY: `ctx.skb.skb` is the program's valid __sk_buff context.
    unsafe { (*ctx.skb.skb).protocol == ETH_P_IPV6.raw() as u32 }
}

/// The IPv6 header, or None if the frame is not IPv6; its addresses go
/// to `p.key`. Dropped: a header cut short (`truncated_l3`), a version
/// other than 6 or a payload length past the frame (`bad_ipv6_header`).
#[inline(always)]
pub fn parse(ctx: &TcContext, p: &mut Pkt6) -> Result<Option<Ip6>, u32> {
    if !is_ipv6(ctx) {
        return Ok(None);
    }
    let off = ETH_HLEN;
    let v: u8 = load(ctx, off)?;
    if v >> 4 != 6 {
        return Err(drop_reason::BAD_IPV6_HEADER);
    }
    load_addr(ctx, off + IP6_SADDR, &mut p.key.saddr)?;
    load_addr(ctx, off + IP6_DADDR, &mut p.key.daddr)?;
    let plen: Be16 = load(ctx, off + IP6_PLEN)?;
    // (0 with more data: a BIG TCP packet, whose length is the skb's.)
    if off + IP6_HLEN + plen.get() as usize > ctx.len() as usize {
        return Err(drop_reason::BAD_IPV6_HEADER);
    }
    Ok(Some(Ip6 {
        l4_off: off + IP6_HLEN,
        proto: load(ctx, off + IP6_NEXT)?,
    }))
}

/// Follows the extension headers from next header `nh` at `l` to the
/// upper-layer header: its protocol, offset << 8 and ([`FRAGMENT`] |
/// [`ROUTED`]) << 32, or the drop reason negated: a chain longer than
/// [`MAX_EXT`], a hop-by-hop header not first, or a header cut short
/// (`ipv6_ext_chain`; in a fragment `ipv6_fragment`, RFC 7112). Its own BPF
/// function, the result passed through map memory (`w`): the verifier
/// then checks the callers once, not once per path through the chain.
#[inline(never)]
fn walk_chain(ctx: &TcContext, w: &mut [u32; 4], mut nh: u8, mut l: usize) -> i64 {
    let (mut fragment, mut later, mut routed) = (false, false, false);
    let mut i = 0;
    while i < MAX_EXT && !later {
        if !matches!(nh, NH_HOP | NH_ROUTING | IPPROTO_FRAGMENT | NH_DSTOPTS) {
            break;
        }
        let Ok(e) = ctx.load::<[u8; 4]>(l) else {
            return -(cut_short(fragment) as i64);
        };
        if nh == NH_HOP && i > 0 {
            return -(drop_reason::IPV6_EXT_CHAIN as i64);
        }
        let hlen = if nh == IPPROTO_FRAGMENT {
            fragment = true;
            // Fragment Offset: the top 13 bits of bytes 2..4.
            later = u16::from_be_bytes([e[2], e[3]]) & 0xfff8 != 0;
            8
        } else {
            routed |= nh == NH_ROUTING && e[3] != 0;
            (e[1] as usize + 1) * 8
        };
        nh = e[0];
        l += hlen;
        i += 1;
    }
    if !later {
        if matches!(nh, NH_HOP | NH_ROUTING | IPPROTO_FRAGMENT | NH_DSTOPTS) {
            return -(drop_reason::IPV6_EXT_CHAIN as i64);
        }
        // An upper-layer header starts with 4 bytes at least (ports,
        // ICMPv6 type and code); No Next Header (59) has none.
        if nh != 59 && l + 4 > ctx.len() as usize {
            return -(cut_short(fragment) as i64);
        }
    }
    w[0] = nh as u32;
    w[1] = l as u32;
    w[2] = if fragment { FRAGMENT } else { 0 } | if routed { ROUTED } else { 0 };
    // SAFETY: map memory just written; volatile: the values come back as
    // unknowns, whichever path wrote them.
    let (nh, l, kind) = unsafe {
        (
            core::ptr::read_volatile(&w[0]),
            core::ptr::read_volatile(&w[1]),
            core::ptr::read_volatile(&w[2]),
        )
    };
    // Bounded for the verifier (a packet offset plus a header stays under
    // its limit); the chain walked ends well below.
    (nh & 0xff) as i64 | ((l & 0x3fff) as i64) << 8 | ((kind & 3) as i64) << 32
}

#[inline(always)]
fn cut_short(fragment: bool) -> u32 {
    if fragment {
        drop_reason::IPV6_FRAGMENT
    } else {
        drop_reason::IPV6_EXT_CHAIN
    }
}

/// ICMPv6 errors: Destination Unreachable, Packet Too Big, Time Exceeded,
/// Parameter Problem.
#[inline(always)]
pub fn is_icmp_error(ty: u8) -> bool {
    (1..=4).contains(&ty)
}

/// Offset of the checksum within a `proto` header.
#[inline(always)]
pub fn l4_csum_off(proto: u8) -> usize {
    match proto {
        IPPROTO_TCP => 16,
        IPPROTO_UDP => 6,
        _ => ICMP_CSUM,
    }
}

impl Ip6 {
    /// Follows the extension headers to the upper-layer header (see
    /// [`walk_chain`]; `p.walk` its scratch): [`FRAGMENT`], [`ROUTED`].
    #[inline(always)]
    pub fn walk(&mut self, ctx: &TcContext, p: &mut Pkt6) -> Result<u32, u32> {
        let r = walk_chain(ctx, &mut p.walk, self.proto, self.l4_off);
        if r < 0 {
            return Err((-r) as u32);
        }
        self.proto = r as u8;
        self.l4_off = ((r >> 8) & 0x3fff) as usize;
        Ok((r >> 32) as u32)
    }

    #[inline(always)]
    pub fn icmp_type(&self, ctx: &TcContext) -> Result<u8, u32> {
        load(ctx, self.l4_off)
    }

    /// The ports into `p.key` (with the protocol and `dir`); ICMPv6 echo
    /// (`icmp`): the identifier is the inside "port", sport of requests,
    /// dport of replies.
    #[inline(always)]
    pub fn ports(&self, ctx: &TcContext, p: &mut Pkt6, icmp: bool, dir: u8) -> Result<(), u32> {
        let (sport, dport) = if icmp {
            let id: Be16 = load(ctx, self.l4_off + ICMP_ID)?;
            if self.icmp_type(ctx)? == ICMPV6_ECHO_REQUEST {
                (id, Be16::ZERO)
            } else {
                (Be16::ZERO, id)
            }
        } else {
            (load(ctx, self.l4_off)?, load(ctx, self.l4_off + 2)?)
        };
        p.key.sport = sport;
        p.key.dport = dport;
        p.key.proto = self.proto;
        p.key.dir = dir;
        p.key._pad = [0; 2];
        Ok(())
    }

    /// The whole UDP header, or a TCP header of 5+ words inside the packet.
    #[inline(always)]
    pub fn check_l4(&self, ctx: &TcContext) -> Result<(), u32> {
        let need = if self.proto == IPPROTO_TCP {
            let doff: u8 =
                load(ctx, self.l4_off + TCP_DOFF).map_err(|_| drop_reason::BAD_L4_HEADER)?;
            let words = (doff >> 4) as usize;
            if words < 5 {
                return Err(drop_reason::BAD_L4_HEADER);
            }
            words * 4
        } else {
            8
        };
        if self.l4_off + need > ctx.len() as usize {
            return Err(drop_reason::BAD_L4_HEADER);
        }
        Ok(())
    }

    /// TCP flags (SYN, ACK, FIN, RST), 0 for anything else.
    #[inline(always)]
    pub fn tcp_flags(&self, ctx: &TcContext) -> u8 {
        if self.proto != IPPROTO_TCP {
            return 0;
        }
        let f = ctx.load::<u8>(self.l4_off + TCP_FLAGS).unwrap_or(0);
        f & (TCP_SYN | TCP_ACK | TCP_FIN | TCP_RST)
    }
}

/// The one's complement difference of two addresses (bpf_csum_diff).
#[inline(always)]
pub fn addr_diff(old: &In6, new: &In6) -> Result<u32, u32> {
    // SAFETY: two 16-byte buffers, read only by the helper.
    let d = unsafe {
        bpf_csum_diff(
            old.as_ptr() as *mut u32,
            16,
            new.as_ptr() as *mut u32,
            16,
            0,
        )
    };
    if d < 0 {
        return Err(drop_reason::NAT_REWRITE);
    }
    Ok(d as u32)
}

/// Adds an address change `diff` through the pseudo-header to the L4
/// checksum at `off`. BPF_F_IPV6 is new (6.16): refused, retried without.
#[inline(always)]
pub fn pseudo_csum(ctx: &TcContext, off: usize, diff: u32, flags: u64) -> Result<(), u32> {
    let f = BPF_F_PSEUDO_HDR | flags;
    if ctx
        .l4_csum_replace(off, 0, diff as u64, f | BPF_F_IPV6)
        .is_ok()
    {
        return Ok(());
    }
    ctx.l4_csum_replace(off, 0, diff as u64, f)
        .map_err(|_| drop_reason::NAT_REWRITE)
}

/// Rewrites the source (`src`) or destination address and port of the
/// packet (`p.key`) to the mapping (`p.nat_addr`, `p.nat_port`) with the
/// L4 checksum. UDP checksum 0 (invalid over IPv6) is left; a result of 0
/// is written 0xffff (BPF_F_MARK_MANGLED_0).
#[inline(always)]
pub fn rewrite(ctx: &TcContext, ip: &Ip6, p: &Pkt6, src: bool) -> Result<(), u32> {
    let (addr_off, old_addr, old_port) = if src {
        (ETH_HLEN + IP6_SADDR, &p.key.saddr, p.key.sport)
    } else {
        (ETH_HLEN + IP6_DADDR, &p.key.daddr, p.key.dport)
    };
    let proto = p.key.proto;
    let csum_off = ip.l4_off + l4_csum_off(proto);
    let udp = proto == IPPROTO_UDP;
    let mangled0 = if udp { BPF_F_MARK_MANGLED_0 } else { 0 };
    let has_csum = !udp || load::<u16>(ctx, csum_off)? != 0;
    if *old_addr != p.nat_addr {
        let diff = addr_diff(old_addr, &p.nat_addr)?;
        store_addr(ctx, addr_off, &p.nat_addr)?;
        if has_csum {
            pseudo_csum(ctx, csum_off, diff, mangled0)?;
        }
    }
    if old_port != p.nat_port {
        let port_off = match proto {
            IPPROTO_TCP | IPPROTO_UDP if src => ip.l4_off,
            IPPROTO_TCP | IPPROTO_UDP => ip.l4_off + 2,
            _ => ip.l4_off + ICMP_ID,
        };
        store(ctx, port_off, &p.nat_port)?;
        if has_csum {
            let (from, to) = (old_port.raw() as u32, p.nat_port.raw() as u32);
            l4_csum(ctx, csum_off, from, to, mangled0 | 2)?;
        }
    }
    Ok(())
}

/// Stores an address from map memory at `off`.
#[inline(always)]
pub fn store_addr(ctx: &TcContext, off: usize, a: &In6) -> Result<(), u32> {
    // SAFETY: the skb and a 16-byte source the helper reads.
    let r =
        unsafe { bpf_skb_store_bytes(ctx.skb.skb, off as u32, a.as_ptr() as *const c_void, 16, 0) };
    if r != 0 {
        return Err(drop_reason::NAT_REWRITE);
    }
    Ok(())
}
