//! Fragments of translated datagrams (RFC 4787 REQ-14, in order): the
//! first fragment carries the ports and is translated like any packet;
//! its translation is remembered under the fields every fragment shares
//! (addresses, protocol, IP ID, untranslated), and the later fragments get
//! the same new address and a fixed IPv4 header checksum. Their L4
//! checksum lives in the first fragment, already adjusted for the
//! pseudo-header. A later fragment seen before its first one finds no
//! entry: netbridge does not reassemble or hold packets.
use aya_ebpf::{macros::map, maps::LruHashMap, programs::TcContext};
use netbridge_common::{
    Be32, CT_DIR_OUT, FRAG_SIZE, FRAG_TIMEOUT_NS, FragEntry, FragKey, nat_stat,
};

use crate::nat::{
    count, ct,
    packet::{l3_csum, load, store},
};

#[map]
static NB_FRAG: LruHashMap<FragKey, FragEntry> = LruHashMap::pinned(FRAG_SIZE, 0);

/// Offsets in the IPv4 header.
const IP_ID: usize = 4;
const IP_PROTO: usize = 9;
/// The byte with the flags (and the fragment offset's top bits).
const IP_FLAGS: usize = 6;
/// More fragments, in that byte.
const IP_MF_BYTE: u8 = 0x20;
const IP_CSUM: usize = 10;
const IP_SADDR: usize = 12;
const IP_DADDR: usize = 16;

/// The key of the fragments of the datagram whose IPv4 header is at
/// `ip_off`, going `dir` (the header untranslated).
#[inline(always)]
fn key(ctx: &TcContext, ip_off: usize, dir: u8) -> Result<FragKey, u32> {
    Ok(FragKey {
        saddr: load(ctx, ip_off + IP_SADDR)?,
        daddr: load(ctx, ip_off + IP_DADDR)?,
        id: load(ctx, ip_off + IP_ID)?,
        proto: load(ctx, ip_off + IP_PROTO)?,
        dir,
    })
}

/// A first fragment (IPv4 header at `ip_off`, not rewritten yet) is being
/// translated going `dir`: its source (OUT) or destination (IN) becomes
/// `addr`. Its own BPF function, called only for first fragments with
/// plain values: its key and value stay off the programs' frames.
#[inline(never)]
pub fn remember(ctx: &TcContext, ip_off: usize, dir: u8, addr: Be32) {
    let Ok(k) = key(ctx, ip_off, dir) else {
        return;
    };
    let v = FragEntry {
        at_ns: ct::now(),
        addr,
        _pad: 0,
    };
    // A full map drops its least recently used entry; a failed insert
    // leaves the later fragments to be dropped (`nat_fragment`).
    let _ = NB_FRAG.insert(&k, &v, 0);
}

/// Is the packet whose IPv4 header is at `ip_off` a fragment with more to
/// come? Read from the packet again: keeping the parsed flags alive to the
/// end would cost the uplink egress's frame (at its stack limit) a slot.
#[inline(always)]
pub fn more_fragments(ctx: &TcContext, ip_off: usize) -> bool {
    ctx.load::<u8>(ip_off + IP_FLAGS)
        .is_ok_and(|f| f & IP_MF_BYTE != 0)
}

/// A non-first fragment (IPv4 header at `ip_off`) going `dir`: rewritten
/// as its first fragment was, if that one was translated in the last
/// [`FRAG_TIMEOUT_NS`]. 1: translated, 0: no entry, negative: a drop
/// reason. Its own BPF function.
#[inline(never)]
pub fn translate(ctx: &TcContext, ip_off: usize, dir: u8) -> i64 {
    match try_translate(ctx, ip_off, dir) {
        Ok(done) => done as i64,
        Err(reason) => -(reason as i64),
    }
}

#[inline(always)]
fn try_translate(ctx: &TcContext, ip_off: usize, dir: u8) -> Result<bool, u32> {
    let k = key(ctx, ip_off, dir)?;
    // SAFETY: a copy of the value is taken right away.
    let Some(v) = (unsafe { NB_FRAG.get(&k) }).copied() else {
        return Ok(false);
    };
    if ct::now().saturating_sub(v.at_ns) > FRAG_TIMEOUT_NS {
        return Ok(false);
    }
    let (off, old) = if dir == CT_DIR_OUT {
        (ip_off + IP_SADDR, k.saddr)
    } else {
        (ip_off + IP_DADDR, k.daddr)
    };
    if old != v.addr {
        store(ctx, off, &v.addr)?;
        l3_csum(ctx, ip_off + IP_CSUM, old.raw(), v.addr.raw(), 4)?;
    }
    count(nat_stat::FRAG_TRANSLATED);
    Ok(true)
}
