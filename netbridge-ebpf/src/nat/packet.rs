//! IPv4/L4 access for NAT through the skb load/store helpers (headers may
//! sit in paged data on GSO skbs) and the in-place rewrite with checksum
//! fixes that works for full and partial (veth offload) checksums.
use aya_ebpf::programs::TcContext;
use netbridge_common::{Be16, Be32, drop_reason};

use crate::nat::Tuple;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_ECHO: u8 = 8;
/// Query requests other than echo that carry an identifier (RFC 5508
/// REQ-1); each reply type is its request's + 1.
const ICMP_TIMESTAMP: u8 = 13;
const ICMP_INFO_REQUEST: u8 = 15;
const ICMP_ADDRESS: u8 = 17;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETERPROB: u8 = 12;
/// The IPv4 ethertype, as `__sk_buff.protocol` holds it (network order).
pub const ETH_P_IP: Be16 = Be16::from_host(0x0800);

pub const BPF_F_PSEUDO_HDR: u64 = 0x10;
pub const BPF_F_MARK_MANGLED_0: u64 = 0x20;
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Offsets in the IPv4 header.
const IP_CSUM: usize = 10;
const IP_SADDR: usize = 12;
const IP_DADDR: usize = 16;
/// Offsets in the L4 header.
const TCP_DOFF: usize = 12;
const TCP_FLAGS: usize = 13;
const TCP_CSUM: usize = 16;
const UDP_CSUM: usize = 6;
const ICMP_CSUM: usize = 2;
const ICMP_ID: usize = 4;

pub struct Ip4 {
    pub ip_off: usize,
    pub l4_off: usize,
    pub proto: u8,
    pub saddr: Be32,
    pub daddr: Be32,
    /// Flags and fragment offset, host order.
    pub frag: u16,
}

#[inline(always)]
pub fn load<T>(ctx: &TcContext, off: usize) -> Result<T, u32> {
    ctx.load::<T>(off).map_err(|_| drop_reason::TRUNCATED_L3)
}

#[inline(always)]
pub fn store<T>(ctx: &TcContext, off: usize, v: &T) -> Result<(), u32> {
    ctx.store(off, v, 0).map_err(|_| drop_reason::NAT_REWRITE)
}

/// `bpf_l3_csum_replace` of a 2- or 4-byte field (`size`), raw values.
#[inline(always)]
pub fn l3_csum(ctx: &TcContext, off: usize, from: u32, to: u32, size: u64) -> Result<(), u32> {
    ctx.l3_csum_replace(off, from as u64, to as u64, size)
        .map_err(|_| drop_reason::NAT_REWRITE)
}

/// `bpf_l4_csum_replace` of a field (`flags`: size and BPF_F_* bits).
#[inline(always)]
pub fn l4_csum(ctx: &TcContext, off: usize, from: u32, to: u32, flags: u64) -> Result<(), u32> {
    ctx.l4_csum_replace(off, from as u64, to as u64, flags)
        .map_err(|_| drop_reason::NAT_REWRITE)
}

/// The IPv4 header at `off`, or None if the frame is not IPv4.
#[inline(always)]
pub fn parse_ipv4(ctx: &TcContext, off: usize) -> Result<Option<Ip4>, u32> {
    // SAFETY: `ctx.skb.skb` is the program's valid __sk_buff context.
    let proto = unsafe { (*ctx.skb.skb).protocol };
    if proto != ETH_P_IP.raw() as u32 {
        return Ok(None);
    }
    let vihl: u8 = load(ctx, off)?;
    let ihl = (vihl & 0x0f) as usize * 4;
    if vihl >> 4 != 4 || ihl < 20 {
        return Err(drop_reason::BAD_IPV4_HEADER);
    }
    let frag: Be16 = load(ctx, off + 6)?;
    Ok(Some(Ip4 {
        ip_off: off,
        l4_off: off + ihl,
        proto: load(ctx, off + 9)?,
        saddr: load(ctx, off + IP_SADDR)?,
        daddr: load(ctx, off + IP_DADDR)?,
        frag: frag.get(),
    }))
}

#[inline(always)]
pub fn is_icmp_error(ty: u8) -> bool {
    ty == ICMP_DEST_UNREACH || ty == ICMP_TIME_EXCEEDED || ty == ICMP_PARAMETERPROB
}

/// An ICMP query request with an identifier: echo, timestamp,
/// information, address mask.
#[inline(always)]
pub fn is_icmp_query(ty: u8) -> bool {
    ty == ICMP_ECHO || ty == ICMP_TIMESTAMP || ty == ICMP_INFO_REQUEST || ty == ICMP_ADDRESS
}

/// The reply to an [`is_icmp_query`] request.
#[inline(always)]
pub fn is_icmp_query_reply(ty: u8) -> bool {
    ty == ICMP_ECHO_REPLY
        || ty == ICMP_TIMESTAMP + 1
        || ty == ICMP_INFO_REQUEST + 1
        || ty == ICMP_ADDRESS + 1
}

/// The query family of a request or reply type: the session key's other
/// "port", so a reply only answers a session of its own request type.
/// Echo: 0 (as before the other queries were mapped); else the request type.
#[inline(always)]
pub fn icmp_family(ty: u8) -> Be16 {
    let fam = if ty == ICMP_ECHO || ty == ICMP_ECHO_REPLY {
        0
    } else {
        (ty - 1) | 1
    };
    Be16::from_host(fam as u16)
}

#[inline(always)]
pub fn icmp_type(ctx: &TcContext, ip: &Ip4) -> Result<u8, u32> {
    load(ctx, ip.l4_off)
}

/// Offset of the L4 checksum within a `proto` header.
#[inline(always)]
pub fn l4_csum_off(proto: u8) -> usize {
    match proto {
        IPPROTO_TCP => TCP_CSUM,
        IPPROTO_UDP => UDP_CSUM,
        _ => ICMP_CSUM,
    }
}

impl Ip4 {
    #[inline(always)]
    pub fn non_first_fragment(&self) -> bool {
        self.frag & 0x1fff != 0
    }

    /// A fragment with more to come (a first one, at offset 0, unless
    /// [`Self::non_first_fragment`]).
    #[inline(always)]
    pub fn more_fragments(&self) -> bool {
        self.frag & 0x2000 != 0
    }

    /// An atomic datagram (RFC 6864): DF set, not a fragment. Its IP ID
    /// means nothing; a non-atomic one's the NAT rewrites.
    #[inline(always)]
    pub fn atomic(&self) -> bool {
        self.frag & 0x7fff == 0x4000
    }

    #[inline(always)]
    pub fn is_nat_proto(&self) -> bool {
        self.proto == IPPROTO_TCP || self.proto == IPPROTO_UDP || self.proto == IPPROTO_ICMP
    }

    /// The 5-tuple. ICMP query (`icmp`): the identifier is the inside
    /// "port": sport for requests, dport for replies; the other is the
    /// query family ([`icmp_family`]).
    #[inline(always)]
    pub fn tuple(&self, ctx: &TcContext, icmp: bool) -> Result<Tuple, u32> {
        let (sport, dport) = if icmp {
            let ty: u8 = load(ctx, self.l4_off)?;
            let id: Be16 = load(ctx, self.l4_off + ICMP_ID)?;
            if is_icmp_query(ty) {
                (id, icmp_family(ty))
            } else {
                (icmp_family(ty), id)
            }
        } else {
            (load(ctx, self.l4_off)?, load(ctx, self.l4_off + 2)?)
        };
        Ok(Tuple {
            saddr: self.saddr,
            daddr: self.daddr,
            sport,
            dport,
            proto: self.proto,
        })
    }

    /// A TCP or UDP header the NAT may translate: the whole UDP header, or
    /// a TCP header whose data offset is at least 5 words and ends inside
    /// the packet. A segment claiming more header than it carries would
    /// otherwise open a session for a packet no stack accepts.
    #[inline(always)]
    pub fn check_l4(&self, ctx: &TcContext) -> Result<(), u32> {
        let len = ctx.len() as usize;
        if self.l4_off > len {
            // The IPv4 header (IHL) itself runs past the packet.
            return Err(drop_reason::TRUNCATED_L3);
        }
        let need = match self.proto {
            IPPROTO_TCP => {
                let doff = ctx.load::<u8>(self.l4_off + TCP_DOFF);
                let doff = doff.map_err(|_| drop_reason::BAD_L4_HEADER)?;
                let words = (doff >> 4) as usize;
                if words < 5 {
                    return Err(drop_reason::BAD_L4_HEADER);
                }
                words * 4
            }
            IPPROTO_UDP => 8,
            _ => return Ok(()),
        };
        if self.l4_off + need > len {
            return Err(drop_reason::BAD_L4_HEADER);
        }
        Ok(())
    }

    /// TCP flags, 0 for anything else.
    #[inline(always)]
    pub fn tcp_flags(&self, ctx: &TcContext) -> u8 {
        if self.proto != IPPROTO_TCP {
            return 0;
        }
        ctx.load::<u8>(self.l4_off + TCP_FLAGS).unwrap_or(0)
    }
}

/// Rewrites the source (`src`) or destination address and port of `t` to
/// `addr`/`port`, fixing the IPv4 and L4 checksums. ICMP query: the
/// identifier (at sport for requests, dport for replies) is the port.
#[inline(always)]
pub fn rewrite(
    ctx: &TcContext,
    ip: &Ip4,
    t: &Tuple,
    src: bool,
    addr: Be32,
    port: Be16,
) -> Result<(), u32> {
    let (addr_off, old_addr, old_port) = if src {
        (ip.ip_off + IP_SADDR, t.saddr, t.sport)
    } else {
        (ip.ip_off + IP_DADDR, t.daddr, t.dport)
    };
    if old_addr != addr {
        store(ctx, addr_off, &addr)?;
        l3_csum(ctx, ip.ip_off + IP_CSUM, old_addr.raw(), addr.raw(), 4)?;
    }
    match t.proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            let port_off = if src { ip.l4_off } else { ip.l4_off + 2 };
            let moved = Moved {
                old_addr,
                addr,
                old_port,
                port,
            };
            rewrite_l4(ctx, ip, t.proto, port_off, &moved)
        }
        IPPROTO_ICMP if old_port != port => {
            // The query identifier; ICMP has no pseudo-header.
            store(ctx, ip.l4_off + ICMP_ID, &port)?;
            let csum = ip.l4_off + ICMP_CSUM;
            l4_csum(ctx, csum, old_port.raw() as u32, port.raw() as u32, 2)
        }
        _ => Ok(()),
    }
}

/// An endpoint's old and new address and port.
struct Moved {
    old_addr: Be32,
    addr: Be32,
    old_port: Be16,
    port: Be16,
}

/// The TCP/UDP half of [`rewrite`]: the port at `port_off`, and the L4
/// checksum for it and for the address (pseudo-header).
#[inline(always)]
fn rewrite_l4(ctx: &TcContext, ip: &Ip4, proto: u8, port_off: usize, m: &Moved) -> Result<(), u32> {
    let csum_off = ip.l4_off + l4_csum_off(proto);
    let mangled0 = if proto == IPPROTO_UDP {
        BPF_F_MARK_MANGLED_0
    } else {
        0
    };
    // UDP checksum 0 means "none": leave it so.
    let has_csum = proto == IPPROTO_TCP || load::<u16>(ctx, csum_off)? != 0;
    if m.old_addr != m.addr && has_csum {
        let flags = BPF_F_PSEUDO_HDR | mangled0 | 4;
        l4_csum(ctx, csum_off, m.old_addr.raw(), m.addr.raw(), flags)?;
    }
    if m.old_port != m.port {
        store(ctx, port_off, &m.port)?;
        if has_csum {
            let (from, to) = (m.old_port.raw() as u32, m.port.raw() as u32);
            l4_csum(ctx, csum_off, from, to, mangled0 | 2)?;
        }
    }
    Ok(())
}

/// Does the packet fit `mtu` once forwarded? GSO packets are checked per
/// segment (payload size plus headers).
#[inline(always)]
pub fn fits(ctx: &TcContext, ip: &Ip4, mtu: u16) -> bool {
    // SAFETY: `ctx.skb.skb` is the program's valid __sk_buff context.
    let skb = unsafe { &*ctx.skb.skb };
    let gso = skb.gso_size;
    let hdrs = (ip.l4_off - ip.ip_off) as u32
        + match ip.proto {
            IPPROTO_TCP => match ctx.load::<u8>(ip.l4_off + TCP_DOFF) {
                Ok(doff) => ((doff >> 4) as u32) * 4,
                Err(_) => return false,
            },
            _ => 8,
        };
    let size = if gso != 0 {
        gso + hdrs
    } else {
        skb.len - ip.ip_off as u32
    };
    size <= mtu as u32
}

/// Decrements the TTL as a router does (fixing the header checksum);
/// false, untouched, if it would reach zero (the kernel then sends Time
/// Exceeded).
#[inline(always)]
pub fn decrement_ttl(ctx: &TcContext, ip: &Ip4) -> Result<bool, u32> {
    // TTL and protocol share one 16-bit word: [ttl, proto] in memory.
    let old: [u8; 2] = load(ctx, ip.ip_off + 8)?;
    if old[0] <= 1 {
        return Ok(false);
    }
    let new = [old[0] - 1, old[1]];
    store(ctx, ip.ip_off + 8, &new)?;
    let (from, to) = (Be16::from_bytes(old).raw(), Be16::from_bytes(new).raw());
    l3_csum(ctx, ip.ip_off + IP_CSUM, from as u32, to as u32, 2)?;
    Ok(true)
}

/// TTL of the packet.
#[inline(always)]
pub fn ttl(ctx: &TcContext, ip: &Ip4) -> u8 {
    ctx.load::<u8>(ip.ip_off + 8).unwrap_or(0)
}
