//! Fragments of translated datagrams (RFC 4787 REQ-14, in order): the
//! first fragment carries the ports and is translated like any packet;
//! its translation is remembered under the fields every fragment shares
//! (addresses, protocol, IP ID, untranslated), and the later fragments get
//! the same new address and a fixed IPv4 header checksum. Their L4
//! checksum lives in the first fragment, already adjusted for the
//! pseudo-header.
//!
//! Out of order (a later fragment before its first one; netbridge does not
//! reassemble or hold packets): outbound, masquerading, the translation is
//! known without the ports (the source becomes the uplink address), so the
//! early fragment writes the entry itself, with the datagram's new IP ID,
//! and the first fragment takes that ID (`early`). Inbound, the new
//! destination is in the first fragment's ports: the early fragment marks
//! the datagram pending and is requeued to the uplink's ingress
//! (`requeue`), behind the packets already queued there, until the first
//! one has written the entry, at most `FRAG_REQUEUE_MAX` times per
//! datagram; then it goes to the host as before. A first fragment the NAT
//! does not translate (the host's own datagram) leaves an identity entry,
//! so its later fragments pass at once.
//!
//! IP IDs (RFC 7857 sec. 10, RFC 6864 sec. 5.3.1): lab hosts sharing the
//! uplink address pick their IDs independently, so two of them may send
//! non-atomic datagrams (DF clear, or fragments) with the same ID to one
//! destination, and its reassembly would mix their fragments. Outbound
//! non-atomic datagrams get a new ID from a per-destination counter
//! (every fragment the first one's, kept in `NB_FRAG`); atomic ones (DF
//! set, not fragmented) keep theirs: their ID means nothing (RFC 6864).
use aya_ebpf::{
    bindings::{
        BPF_F_INGRESS, BPF_NOEXIST, TC_ACT_OK, bpf_map_type::BPF_MAP_TYPE_ARRAY, bpf_spin_lock,
    },
    helpers::{
        bpf_get_prandom_u32, bpf_map_lookup_elem, bpf_redirect, bpf_spin_lock as lock,
        bpf_spin_unlock as unlock,
    },
    macros::map,
    maps::LruHashMap,
    programs::TcContext,
};
use netbridge_common::{
    Be16, Be32, CT_DIR_IN, CT_DIR_OUT, FRAG_NEW_ID, FRAG_PENDING, FRAG_REQUEUE_MAX, FRAG_SIZE,
    FRAG_TIMEOUT_NS, FragEntry, FragKey, nat_stat,
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
    insert(&k, addr, Be16::from_host(0), 0, 0);
}

/// A full map drops its least recently used entry; a failed insert
/// leaves the later fragments to be dropped (`nat_fragment`).
#[inline(always)]
fn insert(k: &FragKey, addr: Be32, id: Be16, flags: u8, map_flags: u64) {
    let v = FragEntry {
        at_ns: ct::now(),
        addr,
        id,
        flags,
        tries: 0,
    };
    let _ = NB_FRAG.insert(k, &v, map_flags);
}

/// The live (not pending, not stale) entry of `k`.
#[inline(always)]
fn entry(k: &FragKey) -> Option<FragEntry> {
    // SAFETY: a copy of the value is taken right away.
    let v = (unsafe { NB_FRAG.get(k) }).copied()?;
    let fresh = ct::now().saturating_sub(v.at_ns) <= FRAG_TIMEOUT_NS;
    (fresh && v.flags & FRAG_PENDING == 0).then_some(v)
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
    let id = if first {
        first_id(&k, addr)
    } else {
        new_id(k.daddr, k.proto)
    };
    let _ = set_id(ctx, ip_off, k.id, id);
}

/// The new IP ID of a first fragment (key `k`, new source `addr`), kept in
/// its entry: the one a later fragment that came first chose, else a new
/// one. BPF_NOEXIST: such a fragment on another CPU may be choosing one
/// right now; whichever entry got in is the datagram's.
#[inline(always)]
fn first_id(k: &FragKey, addr: Be32) -> Be16 {
    if let Some(v) = entry(k).filter(|v| v.flags & FRAG_NEW_ID != 0) {
        return v.id;
    }
    let id = new_id(k.daddr, k.proto);
    insert(k, addr, id, FRAG_NEW_ID, BPF_NOEXIST as u64);
    match entry(k) {
        Some(v) if v.flags & FRAG_NEW_ID != 0 => v.id,
        // A stale or older entry was in the way: replaced.
        _ => {
            insert(k, addr, id, FRAG_NEW_ID, 0);
            id
        }
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
/// [`FRAG_TIMEOUT_NS`]. Going out with no entry and `early` not 0 (the
/// masquerade address): out of order, the entry is written here with a
/// new IP ID for the datagram (`fragments_translated_early`). 1:
/// translated (or the host's, untouched), 0: no entry, negative: a drop
/// reason. Its own BPF function.
#[inline(never)]
pub fn translate(ctx: &TcContext, ip_off: usize, dir: u8, early: Be32) -> i64 {
    match try_translate(ctx, ip_off, dir, early) {
        Ok(done) => done as i64,
        Err(reason) => -(reason as i64),
    }
}

#[inline(always)]
fn try_translate(ctx: &TcContext, ip_off: usize, dir: u8, early: Be32) -> Result<bool, u32> {
    let k = key(ctx, ip_off, dir)?;
    let v = match entry(&k) {
        Some(v) => v,
        None if dir == CT_DIR_OUT && early.raw() != 0 => {
            // BPF_NOEXIST: a fragment of the datagram on another CPU may
            // have chosen its ID just now; then that entry is used.
            insert(
                &k,
                early,
                new_id(k.daddr, k.proto),
                FRAG_NEW_ID,
                BPF_NOEXIST as u64,
            );
            let Some(v) = entry(&k) else {
                return Ok(false);
            };
            count(nat_stat::FRAG_EARLY_OUT);
            v
        }
        None => return Ok(false),
    };
    let (off, old) = if dir == CT_DIR_OUT {
        (ip_off + IP_SADDR, k.saddr)
    } else {
        (ip_off + IP_DADDR, k.daddr)
    };
    let new_id = dir == CT_DIR_OUT && v.flags & FRAG_NEW_ID != 0;
    if old == v.addr && !new_id {
        // The host's own datagram (see `remember`): untouched.
        return Ok(true);
    }
    if old != v.addr {
        store(ctx, off, &v.addr)?;
        l3_csum(ctx, ip_off + IP_CSUM, old.raw(), v.addr.raw(), 4)?;
    }
    if new_id {
        set_id(ctx, ip_off, k.id, v.id)?;
    }
    count(nat_stat::FRAG_TRANSLATED);
    Ok(true)
}

/// An inbound non-first fragment (IPv4 header at `ip_off`) with no entry:
/// its first fragment is late (out of order) or was never translated.
/// Requeued to the ingress of the device it came in on (the uplink),
/// behind the packets queued there, while its datagram has requeues left
/// (`fragments_requeued`); then passed to the host as before. Returns the
/// TC action. Its own BPF function, off the translation's frames.
#[inline(never)]
pub fn requeue(ctx: &TcContext, ip_off: usize) -> i32 {
    let Ok(k) = key(ctx, ip_off, CT_DIR_IN) else {
        return TC_ACT_OK;
    };
    let now = ct::now();
    match NB_FRAG.get_ptr_mut(&k) {
        // SAFETY: a valid value of the map. Fragments of one datagram on
        // two CPUs at once may lose an increment (a requeue more), and a
        // write to an entry replaced meanwhile goes to the old element.
        Some(p) => unsafe {
            let stale = now.saturating_sub((*p).at_ns) > FRAG_TIMEOUT_NS;
            if stale {
                (*p).at_ns = now;
                (*p).flags = FRAG_PENDING;
                (*p).tries = 0;
            } else if (*p).flags & FRAG_PENDING != 0 {
                // `tries` counts the requeues after the one that wrote it.
                if (*p).tries + 1 >= FRAG_REQUEUE_MAX {
                    return TC_ACT_OK;
                }
                (*p).tries += 1;
            }
            // Else its first fragment was translated just now (another
            // CPU): the next round translates it.
        },
        // BPF_NOEXIST: never over the entry its first fragment may have
        // written just now.
        None => insert(
            &k,
            Be32::from_raw(0),
            Be16::from_host(0),
            FRAG_PENDING,
            BPF_NOEXIST as u64,
        ),
    }
    count(nat_stat::FRAG_REQUEUED);
    // SAFETY: `ctx.skb.skb` is the program's valid __sk_buff context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: a helper call with a plain ifindex and flags.
    unsafe { bpf_redirect(ifindex, BPF_F_INGRESS as u64) as i32 }
}
