//! IPv4/L4 access for NAT through the skb load/store helpers (headers may
//! sit in paged data on GSO skbs) and the in-place rewrite with checksum
//! fixes that works for full and partial (veth offload) checksums.
use aya_ebpf::programs::TcContext;
use netbridge_common::drop_reason;

use crate::nat::Tuple;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_ECHO: u8 = 8;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETERPROB: u8 = 12;

const BPF_F_PSEUDO_HDR: u64 = 0x10;
const BPF_F_MARK_MANGLED_0: u64 = 0x20;
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

pub struct Ip4 {
    pub ip_off: usize,
    pub l4_off: usize,
    pub proto: u8,
    pub saddr: u32,
    pub daddr: u32,
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

/// The IPv4 header at `off`, or None if the frame is not IPv4.
#[inline(always)]
pub fn parse_ipv4(ctx: &TcContext, off: usize) -> Result<Option<Ip4>, u32> {
    let proto = unsafe { (*ctx.skb.skb).protocol };
    if proto != (0x0800u16).to_be() as u32 {
        return Ok(None);
    }
    let vihl: u8 = load(ctx, off)?;
    let ihl = (vihl & 0x0f) as usize * 4;
    if vihl >> 4 != 4 || ihl < 20 {
        return Err(drop_reason::BAD_IPV4_HEADER);
    }
    let frag: u16 = load(ctx, off + 6)?;
    Ok(Some(Ip4 {
        ip_off: off,
        l4_off: off + ihl,
        proto: load(ctx, off + 9)?,
        saddr: load(ctx, off + 12)?,
        daddr: load(ctx, off + 16)?,
        frag: u16::from_be(frag),
    }))
}

#[inline(always)]
pub fn is_icmp_error(ty: u8) -> bool {
    ty == ICMP_DEST_UNREACH || ty == ICMP_TIME_EXCEEDED || ty == ICMP_PARAMETERPROB
}

#[inline(always)]
pub fn icmp_type(ctx: &TcContext, ip: &Ip4) -> Result<u8, u32> {
    load(ctx, ip.l4_off)
}

impl Ip4 {
    #[inline(always)]
    pub fn non_first_fragment(&self) -> bool {
        self.frag & 0x1fff != 0
    }

    #[inline(always)]
    pub fn is_nat_proto(&self) -> bool {
        self.proto == IPPROTO_TCP || self.proto == IPPROTO_UDP || self.proto == IPPROTO_ICMP
    }

    /// The 5-tuple. ICMP echo (`icmp`): the identifier is the inside
    /// "port": sport for requests, dport for replies (the other is 0).
    #[inline(always)]
    pub fn tuple(&self, ctx: &TcContext, icmp: bool) -> Result<Tuple, u32> {
        let (sport, dport) = if icmp {
            let ty: u8 = load(ctx, self.l4_off)?;
            let id: u16 = load(ctx, self.l4_off + 4)?;
            if ty == ICMP_ECHO { (id, 0) } else { (0, id) }
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

    /// TCP flags, 0 for anything else.
    #[inline(always)]
    pub fn tcp_flags(&self, ctx: &TcContext) -> u8 {
        if self.proto != IPPROTO_TCP {
            return 0;
        }
        ctx.load::<u8>(self.l4_off + 13).unwrap_or(0)
    }
}

/// Rewrites the source (`src`) or destination address and port of `t` to
/// `addr`/`port` (raw network order), fixing the IPv4 and L4 checksums.
/// ICMP echo: the identifier (at sport for requests, dport for replies) is
/// the port.
#[inline(always)]
pub fn rewrite(
    ctx: &TcContext,
    ip: &Ip4,
    t: &Tuple,
    src: bool,
    addr: u32,
    port: u16,
) -> Result<(), u32> {
    let (addr_off, old_addr, old_port) = if src {
        (ip.ip_off + 12, t.saddr, t.sport)
    } else {
        (ip.ip_off + 16, t.daddr, t.dport)
    };
    let err = |_| drop_reason::NAT_REWRITE;
    if old_addr != addr {
        store(ctx, addr_off, &addr)?;
        ctx.l3_csum_replace(ip.ip_off + 10, old_addr as u64, addr as u64, 4)
            .map_err(err)?;
    }
    match t.proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            let (csum_off, mangled0) = if t.proto == IPPROTO_TCP {
                (ip.l4_off + 16, 0)
            } else {
                (ip.l4_off + 6, BPF_F_MARK_MANGLED_0)
            };
            // UDP checksum 0 means "none": leave it so.
            let has_csum = t.proto == IPPROTO_TCP || load::<u16>(ctx, csum_off)? != 0;
            if old_addr != addr && has_csum {
                ctx.l4_csum_replace(
                    csum_off,
                    old_addr as u64,
                    addr as u64,
                    BPF_F_PSEUDO_HDR | mangled0 | 4,
                )
                .map_err(err)?;
            }
            if old_port != port {
                let port_off = if src { ip.l4_off } else { ip.l4_off + 2 };
                store(ctx, port_off, &port)?;
                if has_csum {
                    ctx.l4_csum_replace(csum_off, old_port as u64, port as u64, mangled0 | 2)
                        .map_err(err)?;
                }
            }
        }
        IPPROTO_ICMP => {
            if old_port != port {
                // The echo identifier; ICMP has no pseudo-header.
                store(ctx, ip.l4_off + 4, &port)?;
                ctx.l4_csum_replace(ip.l4_off + 2, old_port as u64, port as u64, 2)
                    .map_err(err)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Does the packet fit `mtu` once forwarded? GSO packets are checked per
/// segment (payload size plus headers).
#[inline(always)]
pub fn fits(ctx: &TcContext, ip: &Ip4, mtu: u16) -> bool {
    let skb = unsafe { &*ctx.skb.skb };
    let gso = skb.gso_size;
    let hdrs = (ip.l4_off - ip.ip_off) as u32
        + match ip.proto {
            IPPROTO_TCP => match ctx.load::<u8>(ip.l4_off + 12) {
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
    // TTL and protocol share one 16-bit word.
    let old: u16 = load(ctx, ip.ip_off + 8)?;
    let bytes = old.to_ne_bytes();
    if bytes[0] <= 1 {
        return Ok(false);
    }
    let new = u16::from_ne_bytes([bytes[0] - 1, bytes[1]]);
    store(ctx, ip.ip_off + 8, &new)?;
    ctx.l3_csum_replace(ip.ip_off + 10, old as u64, new as u64, 2)
        .map_err(|_| drop_reason::NAT_REWRITE)?;
    Ok(true)
}

/// TTL of the packet.
#[inline(always)]
pub fn ttl(ctx: &TcContext, ip: &Ip4) -> u8 {
    ctx.load::<u8>(ip.ip_off + 8).unwrap_or(0)
}
