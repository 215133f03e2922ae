//! Fragments of translated datagrams (RFC 4787 REQ-14, in order): the
//! first fragment carries the ports and is translated like any packet;
//! its translation is remembered under the fields every fragment shares
//! (addresses, protocol, IP ID, untranslated), and the later fragments get
//! the same new address and a fixed IPv4 header checksum. Their L4
//! checksum lives in the first fragment, already adjusted for the
//! pseudo-header. A later fragment seen before its first one finds no
//! entry: netbridge does not reassemble or hold packets.
//!
//! IP IDs (RFC 7857 sec. 10, RFC 6864 sec. 5.3.1): lab hosts sharing the
//! uplink address pick their IDs independently, so two of them may send
//! non-atomic datagrams (DF clear, or fragments) with the same ID to one
//! destination, and its reassembly would mix their fragments. Outbound
//! non-atomic datagrams get a new ID from a per-destination counter
//! (every fragment the first one's, kept in `NB_FRAG`); atomic ones (DF
//! set, not fragmented) keep theirs: their ID means nothing (RFC 6864).
use aya_ebpf::{
    bindings::{bpf_map_type::BPF_MAP_TYPE_ARRAY, bpf_spin_lock},
    helpers::{
        bpf_get_prandom_u32, bpf_map_lookup_elem, bpf_spin_lock as lock, bpf_spin_unlock as unlock,
    },
    macros::map,
    maps::LruHashMap,
    programs::TcContext,
};
use netbridge_common::{
    Be16, Be32, CT_DIR_OUT, FRAG_NEW_ID, FRAG_SIZE, FRAG_TIMEOUT_NS, FragEntry, FragKey, nat_stat,
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
/// Don't fragment, in that byte.
const IP_DF_BYTE: u8 = 0x40;
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
    insert(&k, addr, Be16::from_host(0), 0);
}

/// A full map drops its least recently used entry; a failed insert
/// leaves the later fragments to be dropped (`nat_fragment`).
#[inline(always)]
fn insert(k: &FragKey, addr: Be32, id: Be16, flags: u8) {
    let v = FragEntry {
        at_ns: ct::now(),
        addr,
        id,
        flags,
        _pad: 0,
    };
    let _ = NB_FRAG.insert(k, &v, 0);
}

/// An outbound packet (IPv4 header at `ip_off`, not rewritten yet, not a
/// later fragment) whose source becomes `addr`: a non-atomic one (DF
/// clear, or a first fragment) gets a new IP ID; a first fragment's
/// translation and new ID are remembered for its later fragments. Its own
/// BPF function: off the uplink egress's frame.
#[inline(never)]
pub fn outbound(ctx: &TcContext, ip_off: usize, addr: Be32) {
    let Ok(flags) = ctx.load::<u8>(ip_off + IP_FLAGS) else {
        return;
    };
    let first = flags & IP_MF_BYTE != 0;
    if flags & IP_DF_BYTE != 0 && !first {
        return;
    }
    let Ok(k) = key(ctx, ip_off, CT_DIR_OUT) else {
        return;
    };
    let id = new_id(k.daddr, k.proto);
    if set_id(ctx, ip_off, k.id, id).is_err() {
        return;
    }
    if first {
        insert(&k, addr, id, FRAG_NEW_ID);
    }
}

/// Rewrites the IP ID from `old` to `id`, fixing the header checksum.
#[inline(always)]
fn set_id(ctx: &TcContext, ip_off: usize, old: Be16, id: Be16) -> Result<(), u32> {
    store(ctx, ip_off + IP_ID, &id)?;
    l3_csum(ctx, ip_off + IP_CSUM, old.raw() as u32, id.raw() as u32, 2)?;
    count(nat_stat::IP_ID_REWRITTEN);
    Ok(())
}

/// Buckets of IP ID counters (a destination's datagrams all count in its
/// bucket: consecutive IDs, none repeated before 65,536 more).
const ID_BUCKETS: u32 = 1024;

/// The value of `NB_IP_ID`: a counter under a spin lock (this target has
/// no atomic read-modify-write). `next`: bit 16 set once seeded, the next
/// ID in the low 16 bits.
#[repr(C)]
pub struct IdBucket {
    lock: bpf_spin_lock,
    next: u32,
}

/// The BTF definition of `NB_IP_ID`, by hand (a spin lock in the value
/// needs BTF). Not pinned: a reload starts each bucket at a random ID.
#[repr(C)]
pub struct IdMap {
    r#type: *const [i32; BPF_MAP_TYPE_ARRAY as usize],
    key: *const u32,
    value: *const IdBucket,
    max_entries: *const [i32; ID_BUCKETS as usize],
}
// SAFETY: placeholder pointers that only describe the map in BTF; never
// dereferenced.
unsafe impl Sync for IdMap {}

#[unsafe(link_section = ".maps")]
#[unsafe(export_name = "NB_IP_ID")]
static NB_IP_ID: IdMap = IdMap {
    r#type: core::ptr::null(),
    key: core::ptr::null(),
    value: core::ptr::null(),
    max_entries: core::ptr::null(),
};

/// The next IP ID toward `daddr` (`proto`) from the uplink address.
#[inline(always)]
fn new_id(daddr: Be32, proto: u8) -> Be16 {
    // SAFETY: a helper without arguments.
    let seed = unsafe { bpf_get_prandom_u32() };
    let idx = (daddr.raw() ^ proto as u32).wrapping_mul(0x9e37_79b1) >> 22;
    let map = &NB_IP_ID as *const IdMap as *mut core::ffi::c_void;
    // SAFETY: a lookup in an array keyed by u32.
    let p = unsafe { bpf_map_lookup_elem(map, &idx as *const u32 as *const _) };
    if p.is_null() {
        return Be16::from_host(seed as u16);
    }
    // SAFETY: a non-null value of the map, a valid IdBucket; its lock is
    // declared in BTF. No helper runs while it is held.
    let id = unsafe {
        let b = &mut *(p as *mut IdBucket);
        lock(&mut b.lock);
        if b.next == 0 {
            b.next = seed | 0x1_0000;
        }
        let id = b.next as u16;
        b.next = (b.next.wrapping_add(1) & 0xffff) | 0x1_0000;
        unlock(&mut b.lock);
        id
    };
    Be16::from_host(id)
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
    if dir == CT_DIR_OUT && v.flags & FRAG_NEW_ID != 0 {
        set_id(ctx, ip_off, k.id, v.id)?;
    }
    count(nat_stat::FRAG_TRANSLATED);
    Ok(true)
}
