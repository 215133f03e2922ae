//! Types and names shared by the eBPF programs and the userspace loader.
//!
//! Every type that crosses a BPF map is `#[repr(C)]` and derives
//! `bytemuck::{Pod, Zeroable}`, so implicit padding is a compile error rather
//! than uninitialised bytes leaking into the kernel. Sizes are asserted below:
//! both halves must agree byte for byte.
//!
//! Byte order: a field in network (wire) order is typed [`Be16`] / [`Be32`];
//! MACs are `[u8; 6]` in wire order; every other integer is in host order
//! (said so where it is a port or address).
#![cfg_attr(not(test), no_std)]

mod byteorder;
mod codes;

use bytemuck::{Pod, Zeroable};

pub mod capture;
pub mod nat6;
pub use crate::{
    byteorder::{Be16, Be32},
    codes::{DropReason, NatStat, drop_reason, nat_stat},
    nat6::{
        CT6_QUOTA_SIZE, CT6_SIZE, Ct6Entry, Ct6Key, Fwd6Target, In6, MAP_CT6, MAP_CT6_QUOTA,
        MAP_CT6_STATE, MAP_FWD6, MAP_NAT6_CONFIG, MAX_FWD6, NAT6_FAST_PATH, NAT6_MASQUERADE,
        NAT6_PREFIXES, NAT6_UPLINK_PEER, Nat6Config, Prefix6,
    },
};

/// TC program attached to the ingress of every bridge port (host-side veth).
pub const PROG_PORT_INGRESS: &str = "nb_port_ingress";
/// XDP variant of the same lookups (`datapath = "xdp"`), on the same ports.
pub const PROG_PORT_XDP: &str = "nb_port_xdp";
/// NAT part of the port program (hairpin, fast path of established
/// sessions), in its own program: `PROG_PORT_INGRESS` tail-calls it through
/// [`MAP_PORT_PROGS`] only for frames that may need NAT. Loaded, never
/// attached.
pub const PROG_PORT_NAT: &str = "nb_port_nat";
/// The port program for IPv6 frames (IPv6 header chain, guards, policy,
/// bridging): `PROG_PORT_INGRESS` tail-calls it through [`MAP_PORT_PROGS`]
/// for every IPv6 frame. Its own program so that the verifier checks the
/// IPv4 and IPv6 paths apart (and on two cores at once): together they
/// were most of an `up`'s time. Loaded, never attached. (The kernel keeps
/// 15 characters of a name: `nb_port_ingress6` would read as the port
/// program.)
pub const PROG_PORT_IPV6: &str = "nb_port_ipv6";
/// Program array of the port program's tail calls, written by userspace.
pub const MAP_PORT_PROGS: &str = "NB_PORT_PROGS";
/// Entries of [`MAP_PORT_PROGS`].
pub const PORT_PROGS: u32 = 2;
/// [`MAP_PORT_PROGS`] index of [`PROG_PORT_NAT`].
pub const PORT_PROG_NAT: u32 = 0;
/// [`MAP_PORT_PROGS`] index of [`PROG_PORT_IPV6`].
pub const PORT_PROG_IPV6: u32 = 1;
/// XDP_PASS program for each namespace's veth in XDP mode: a veth only
/// accepts XDP_REDIRECTed frames when its peer end runs XDP.
pub const PROG_PEER_XDP: &str = "nb_peer_xdp";

/// Per-CPU array: [`PortConfig::slot`] -> [`PortSlot`] (the counters of
/// every configured port; slot 0 unused).
pub const MAP_PORT_SLOTS: &str = "NB_PORT_SLOTS";
/// Per-CPU hash: ifindex (u32, host byte order) -> [`PortStats`], for
/// interfaces running a port program without a slot (not, or not yet,
/// configured). `netbridge stats` adds both maps up per ifindex.
pub const MAP_PORT_STATS: &str = "NB_PORT_STATS";
/// Per-CPU array: [`drop_reason`] code -> packets dropped for that reason (u64).
pub const MAP_DROP_STATS: &str = "NB_DROP_STATS";

/// Hash: port ifindex (u32, host byte order) -> [`PortConfig`]. Written by
/// userspace at `up`; a frame may only be redirected to a listed port.
pub const MAP_PORTS: &str = "NB_PORTS";
/// Array of [`PORT_INDEX_SIZE`] [`PortConfig`]s: a direct-mapped copy of
/// [`MAP_PORTS`] at index `ifindex % PORT_INDEX_SIZE`, so the datapath finds
/// a port without hashing. An entry counts only if its `ifindex` matches;
/// ports whose index is taken by another port are found in the hash.
pub const MAP_PORT_INDEX: &str = "NB_PORT_INDEX";
/// Entries of [`MAP_PORT_INDEX`] (a power of two).
pub const PORT_INDEX_SIZE: u32 = 8192;
const _: () = assert!(PORT_INDEX_SIZE.is_power_of_two());
/// LRU hash: [`FdbKey`] -> [`FdbEntry`], learned from source MACs.
pub const MAP_FDB: &str = "NB_FDB";
/// Array of one [`BridgeConfig`], written by userspace.
pub const MAP_CONFIG: &str = "NB_CONFIG";
/// Array of one u64, changed whenever the FDB changes other than by a
/// refresh: by the datapath when it learns a MAC anew or sees it move, by
/// userspace when it changes the ports or removes entries. Per-CPU FDB
/// caches ([`PortSlot`]) filled before that are not used.
pub const MAP_FDB_GEN: &str = "NB_FDB_GEN";

/// Capacity of the port maps: ports a single loaded object can serve.
pub const MAX_PORTS: u32 = 1024;
/// Capacity of [`MAP_FDB`]; the least recently used entry is evicted first.
pub const FDB_SIZE: u32 = 16384;
/// Default FDB aging, as the Linux bridge.
pub const DEFAULT_AGING_SECS: u32 = 300;
/// An FDB entry seen again within this long is not rewritten (saves map
/// writes on every packet of a flow).
pub const FDB_REFRESH_NS: u64 = 1_000_000_000;

/// [`PortConfig::flags`]: frames to this port may take the redirect fast path.
pub const PORT_FAST_PATH: u32 = 1;
/// [`PortConfig::flags`]: frames from this port must carry the namespace's
/// own MAC and one of its IPv4 addresses (anti-spoofing).
pub const PORT_ANTI_SPOOF: u32 = 2;
/// [`PortConfig::flags`]: the port is in an isolated pair ([`MAP_POLICY`]
/// has entries with it as the source): its frames are checked.
pub const PORT_ISOLATED: u32 = 4;
/// IPv4 source addresses a port may use.
pub const MAX_PORT_IPV4: usize = 4;
/// [`PortConfig::flags`]: the namespace is a router: it may send Router
/// Advertisements and DHCPv6 server replies (RA guard, RFC 6105, off).
pub const PORT_ROUTER: u32 = 8;
/// IPv6 sources a port may use: its link-local address first, then up to
/// this many minus one configured addresses.
pub const MAX_PORT_IPV6: usize = 5;

/// One bridge port as the datapath knows it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct PortConfig {
    /// Host-side veth ifindex (host byte order).
    pub ifindex: u32,
    /// `PORT_*` bits.
    pub flags: u32,
    /// MAC of the namespace end of the port, wire order.
    pub mac: [u8; 6],
    /// Index of the port's counters in [`MAP_PORT_SLOTS`] (host byte order,
    /// 1..=[`MAX_PORTS`]); 0: none yet (counted in [`MAP_PORT_STATS`]).
    pub slot: u16,
    /// IPv4 sources the namespace may use, network byte order; unused
    /// slots are 0.0.0.0 (which is always allowed: DHCP).
    pub ipv4: [[u8; 4]; MAX_PORT_IPV4],
    /// IPv6 sources the namespace may use, network byte order: slot 0 its
    /// link-local address (EUI-64 of `mac`), then its configured ones;
    /// unused slots are :: (which is always allowed: DAD).
    pub ipv6: [[u8; 16]; MAX_PORT_IPV6],
}
const _: () = assert!(core::mem::size_of::<PortConfig>() == 112);
// The datapath loads `mac` and each address in words (map values are
// 8-byte aligned).
const _: () = assert!(core::mem::offset_of!(PortConfig, mac) % 4 == 0);
const _: () = assert!(core::mem::offset_of!(PortConfig, ipv4) % 4 == 0);
const _: () = assert!(core::mem::offset_of!(PortConfig, ipv6) % 8 == 0);

/// FDB key: a MAC address in a VLAN.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct FdbKey {
    /// MAC address, wire order.
    pub mac: [u8; 6],
    /// VLAN ID (host byte order); 0 = untagged.
    pub vlan: u16,
}
const _: () = assert!(core::mem::size_of::<FdbKey>() == 8);

/// FDB value: where a MAC was last seen.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct FdbEntry {
    /// Port (host-side veth ifindex, host byte order) the MAC sits behind.
    pub ifindex: u32,
    pub _pad: u32,
    /// CLOCK_MONOTONIC (ns) of the last refresh, read with
    /// `bpf_ktime_get_coarse_ns()` (tick resolution, no clocksource read).
    pub last_seen_ns: u64,
}
const _: () = assert!(core::mem::size_of::<FdbEntry>() == 16);

/// Bridge-wide settings (index 0 of [`MAP_CONFIG`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct BridgeConfig {
    /// FDB entries older than this are ignored and removed; 0 = never age.
    pub aging_ns: u64,
    /// Kernel bridge ifindex (host byte order), the fallback for floods.
    pub bridge_ifindex: u32,
    /// Gateway (bridge) IPv4 address, network byte order; 0 if none.
    pub gateway_ipv4: [u8; 4],
    /// Gateway (bridge) MAC, wire order: frames to it always go to the
    /// kernel (routing, the host's own services), never to a port.
    pub gateway_mac: [u8; 6],
    /// `BRIDGE_*` bits.
    pub flags: u8,
    pub _pad: u8,
}

/// [`BridgeConfig::flags`]: an isolation policy is set ([`MAP_POLICY`]).
pub const BRIDGE_ISOLATION: u8 = 1;

/// Hash: [`PolicyKey`] -> 1 for each denied (source port, destination port).
pub const MAP_POLICY: &str = "NB_POLICY";

/// Hash: IPv6 address (16 bytes, network byte order) -> port ifindex (u32,
/// host byte order), for every IPv6 source a port may use (its
/// [`PortConfig::ipv6`]): the isolation policy finds the destination port
/// of an IPv6 frame the kernel would route or flood, and of ND for it.
pub const MAP_HOSTS6: &str = "NB_HOSTS6";

/// An isolated pair of bridge ports, one direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct PolicyKey {
    /// Source port ifindex (host byte order).
    pub src: u32,
    /// Destination port ifindex (host byte order).
    pub dst: u32,
}
const _: () = assert!(core::mem::size_of::<PolicyKey>() == 8);
const _: () = assert!(core::mem::size_of::<BridgeConfig>() == 24);
const _: () = assert!(core::mem::offset_of!(BridgeConfig, gateway_mac) % 4 == 0);

/// Packet counters of one bridge port, as seen at its host-side ingress
/// (`rx_*`: frames coming out of the namespace towards the bridge).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct PortStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// IPv4 frames (after any VLAN tags).
    pub rx_ipv4: u64,
    /// IPv6 frames (after any VLAN tags).
    pub rx_ipv6: u64,
    /// ARP frames.
    pub rx_arp: u64,
    /// Any other ethertype.
    pub rx_other: u64,
    /// Frames carrying at least one 802.1Q/802.1ad tag.
    pub rx_vlan: u64,
    /// Frames this port dropped (see [`MAP_DROP_STATS`] for reasons).
    pub rx_dropped: u64,
    /// Frames from this port sent straight into another port's namespace
    /// (`bpf_redirect_peer`), bypassing the kernel bridge.
    pub rx_redirected: u64,
    /// Frames from this port handed to the kernel bridge (broadcast,
    /// multicast, unknown unicast, the gateway, VLAN-tagged).
    pub rx_fallback: u64,
    /// Frames redirected *to* this port by the fast path.
    pub tx_packets: u64,
    pub tx_bytes: u64,
}
const _: () = assert!(core::mem::size_of::<PortStats>() == 96);

/// One CPU's state of one port ([`MAP_PORT_SLOTS`]): its counters, and
/// two caches that spare a flow's frames the FDB lookups: the source MAC
/// this CPU last learned from the port, and the FDB entry of the
/// destination it last sent a frame from the port to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct PortSlot {
    pub stats: PortStats,
    /// Source MAC last written to (or found fresh in) the FDB from this
    /// port on this CPU, wire order; zero: none.
    pub learned_mac: [u8; 6],
    pub _pad: [u8; 2],
    /// `last_seen_ns` of that FDB entry: the cache is good for
    /// [`FDB_REFRESH_NS`] after it.
    pub learned_ns: u64,
    /// [`MAP_FDB_GEN`] when it was written or found: the cache is good
    /// while that is unchanged.
    pub learned_gen: u64,
    /// Destination MAC of the cached FDB entry, wire order; zero: none.
    pub dst_mac: [u8; 6],
    pub _pad2: [u8; 2],
    /// The entry's port (ifindex, host byte order).
    pub dst_ifindex: u32,
    pub _pad3: u32,
    /// The entry's `last_seen_ns` when it was read (aging is checked on it).
    pub dst_seen_ns: u64,
    /// When it was read: the cache is good for [`FDB_REFRESH_NS`].
    pub dst_read_ns: u64,
    /// [`MAP_FDB_GEN`] when it was read: the cache is good while no entry
    /// has been learned anew or moved since.
    pub dst_gen: u64,
}
const _: () = assert!(core::mem::size_of::<PortSlot>() == 160);
// The datapath reads each MAC and its padding as one aligned u64.
const _: () = assert!(core::mem::offset_of!(PortSlot, dst_mac) % 8 == 0);
const _: () = assert!(core::mem::offset_of!(PortSlot, learned_mac) % 8 == 0);

impl PortStats {
    /// Adds another CPU's counters into this one.
    pub fn accumulate(&mut self, o: &PortStats) {
        self.rx_packets += o.rx_packets;
        self.rx_bytes += o.rx_bytes;
        self.rx_ipv4 += o.rx_ipv4;
        self.rx_ipv6 += o.rx_ipv6;
        self.rx_arp += o.rx_arp;
        self.rx_other += o.rx_other;
        self.rx_vlan += o.rx_vlan;
        self.rx_dropped += o.rx_dropped;
        self.rx_redirected += o.rx_redirected;
        self.rx_fallback += o.rx_fallback;
        self.tx_packets += o.tx_packets;
        self.tx_bytes += o.tx_bytes;
    }
}

// ---------------------------------------------------------------------------
// NAT: SNAT masquerade and DNAT port forwards on the uplink, hairpin on the
// bridge ports.

/// TC ingress of the uplink: reverse SNAT, DNAT of forwarded ports, ICMP
/// errors about translated flows (RFC 5508).
pub const PROG_UPLINK_INGRESS: &str = "nb_uplink_ingress";
/// TC egress of the uplink: SNAT (masquerade), reverse DNAT, ICMP errors.
pub const PROG_UPLINK_EGRESS: &str = "nb_uplink_egress";

/// Array of one [`NatConfig`], written by userspace.
pub const MAP_NAT_CONFIG: &str = "NB_NAT_CONFIG";
/// LRU hash: [`CtKey`] -> [`CtEntry`]; two entries per session.
pub const MAP_CT: &str = "NB_CT";
/// Hash: [`FwdKey`] (single external port) -> [`FwdTarget`].
pub const MAP_FORWARDS: &str = "NB_FORWARDS";
/// Array of [`FwdTarget`] port ranges (first `NatConfig::range_count` used).
pub const MAP_FWD_RANGES: &str = "NB_FWD_RANGES";
/// Per-CPU hash: [`FwdKey`] (proto, first external port) -> new DNAT sessions.
pub const MAP_FWD_HITS: &str = "NB_FWD_HITS";
/// Per-CPU array: [`nat_stat`] index -> count.
pub const MAP_NAT_STATS: &str = "NB_NAT_STATS";
/// Array of one conntrack state value (a BTF map, pinned by name): the sweep
/// timer, a spin lock and [`CtCounts`]; userspace reads it as [`CtStateView`].
pub const MAP_CT_STATE: &str = "NB_CT_STATE";
/// LRU hash: [`CtKey`] (the inbound key of an expired SNAT session) -> when
/// it expired (ns). Tells a late packet to a dead mapping from host traffic.
pub const MAP_CT_GRAVES: &str = "NB_CT_GRAVES";
/// Capacity of [`MAP_CT_GRAVES`] (the oldest are forgotten first).
pub const CT_GRAVES_SIZE: u32 = 16_384;
/// Hash (a BTF map, pinned by name, no prealloc): source address
/// ([`Be32`], the original key's source: the upstream client of a
/// forward, the lab host of SNAT and hairpin) -> [`QuotaView`] (a spin
/// lock and its live sessions). Counted for every session, so a quota set
/// later applies at once; the entry goes at 0.
pub const MAP_CT_QUOTA: &str = "NB_CT_QUOTA";
/// Capacity of [`MAP_CT_QUOTA`]: a source per live session at most; a
/// source that finds it full goes uncounted.
pub const CT_QUOTA_SIZE: u32 = CT_SIZE / 2;
/// TC program never attached: run through BPF_PROG_TEST_RUN with a
/// [`CtlCmd`], it starts the sweep timer, sweeps now, or purges sessions.
/// The timer's callback belongs to it; it is pinned for `gc` and `forward`.
pub const PROG_CT_CTL: &str = "nb_ct_ctl";
/// Hash: [`EimKey`] (inside endpoint) -> [`EimEntry`], for
/// endpoint-independent mapping (RFC 4787). Not an LRU: an evicted mapping
/// would give its endpoint a second external port.
pub const MAP_EIM: &str = "NB_EIM";
/// Hash: [`ExtKey`] (external port and protocol) -> [`EimKey`] (the inside
/// endpoint owning it under endpoint-independent mapping: no other
/// endpoint shares the port, toward any remote).
pub const MAP_EIM_OWNER: &str = "NB_EIM_OWNER";
/// LRU hash: [`PermKey`] (remote address, external port, protocol) -> when
/// a session toward that address last opened (ns): the permissions of
/// address-dependent filtering.
pub const MAP_PERM: &str = "NB_PERM";
/// Capacity of [`MAP_EIM`] and [`MAP_EIM_OWNER`]: every port of the three
/// protocols.
pub const EIM_SIZE: u32 = 3 * 65_536;
/// Capacity of [`MAP_PERM`].
pub const PERM_SIZE: u32 = 65_536;
/// Hash: lab IPv4 ([`Be32`]) -> [`HostEntry`], for hairpin replies.
pub const MAP_HOSTS: &str = "NB_HOSTS";
/// Queue of [`CtKey`]: the original keys of the last `max_sessions`
/// sessions admitted, oldest first: the candidates that may give way when
/// the table is full (see [`ADMIT_SCAN`]). `up` sizes it to `max_sessions`,
/// so keys of sessions long gone do not pile up in front.
pub const MAP_CT_ADMITTED: &str = "NB_CT_ADMITTED";
/// Candidates a new session looks at, at most, when the table is full: the
/// first unassured one still in the table is evicted to admit it.
pub const ADMIT_SCAN: u32 = 16;

/// The value of [`MAP_EIM`]: the inside endpoint's external port and how
/// many sessions use it (the mapping goes with the last one, RFC 7857
/// sec. 11).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct EimEntry {
    /// HOST byte order (the port allocator counts in host order).
    pub port: u16,
    pub _pad: [u16; 3],
    /// Live sessions of the endpoint (host order), updated atomically (64
    /// bits: the BPF target has no 32-bit atomics).
    pub sessions: u64,
}
const _: () = assert!(core::mem::size_of::<EimEntry>() == 16);

/// Key of [`MAP_EIM_OWNER`]: an external port of one protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct ExtKey {
    /// HOST byte order.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<ExtKey>() == 4);

/// Key of [`MAP_PERM`]: an external port's permission toward one address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct PermKey {
    /// Remote IPv4 address, wire order.
    pub remote: Be32,
    /// External port, HOST byte order.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<PermKey>() == 8);

/// LRU hash: [`FragKey`] (a translated first IPv4 fragment's addresses,
/// protocol and IP ID as seen before translation) -> [`FragEntry`] (the
/// address that replaced one of them): the later fragments of the datagram,
/// which carry no ports, are translated from it (RFC 4787 REQ-14).
pub const MAP_FRAG: &str = "NB_FRAG";
/// Capacity of [`MAP_FRAG`]: datagrams in flight in fragments at once.
pub const FRAG_SIZE: u32 = 8_192;
/// How long a [`MAP_FRAG`] entry translates fragments after its first one:
/// Linux's reassembly timeout (`ipfrag_time`), so a stale entry never
/// rewrites another datagram that reuses the IP ID much later.
pub const FRAG_TIMEOUT_NS: u64 = 30_000_000_000;

/// Key of [`MAP_FRAG`]: wire-order fields of the IPv4 header, untranslated.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct FragKey {
    pub saddr: Be32,
    pub daddr: Be32,
    pub id: Be16,
    pub proto: u8,
    /// [`CT_DIR_OUT`] (uplink egress: the source is rewritten) or
    /// [`CT_DIR_IN`] (uplink ingress: the destination).
    pub dir: u8,
}
const _: () = assert!(core::mem::size_of::<FragKey>() == 12);

/// Value of [`MAP_FRAG`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct FragEntry {
    /// When the first fragment was translated (ns, CLOCK_MONOTONIC, coarse).
    pub at_ns: u64,
    /// The new source (OUT) or destination (IN) address, wire order.
    pub addr: Be32,
    /// OUT, [`FRAG_NEW_ID`] set: the datagram's new IP ID, wire order
    /// (every fragment gets the first one's, RFC 7857 sec. 10).
    pub id: Be16,
    /// `FRAG_*` bits.
    pub flags: u8,
    /// [`FRAG_PENDING`]: how many times the datagram's later fragments
    /// were requeued waiting for its first one.
    pub tries: u8,
}
const _: () = assert!(core::mem::size_of::<FragEntry>() == 16);
/// [`FragEntry::flags`]: `id` holds the datagram's new IP ID (an entry
/// written by an older build has it clear: the later fragments keep theirs).
pub const FRAG_NEW_ID: u8 = 1;
/// [`FragEntry::flags`]: written by an inbound later fragment that came
/// before its first one (out of order): no translation yet (`addr` unset);
/// the fragments are requeued to the uplink's ingress until the first one
/// replaces the entry, at most [`FRAG_REQUEUE_MAX`] times per datagram.
pub const FRAG_PENDING: u8 = 2;
/// Requeues per datagram of its inbound out-of-order fragments: each
/// round lets the packets queued behind them (its first fragment, in a
/// burst) go first. Past it they go to the host untranslated, as before.
pub const FRAG_REQUEUE_MAX: u8 = 16;

/// [`NatConfig::filtering`]: inbound packets need a session (RFC 4787
/// "address and port-dependent filtering"; Linux MASQUERADE's).
pub const FILTER_APDF: u8 = 0;
/// [`NatConfig::filtering`]: any port of an address the mapping's owner
/// sent to may answer.
pub const FILTER_ADF: u8 = 1;
/// [`NatConfig::filtering`]: anyone may send to a mapping (full cone).
pub const FILTER_EIF: u8 = 2;

/// Largest capacity of [`MAP_CT`] (two entries per session); `up` sizes the
/// table from `max_sessions` (see [`ct_entries`]).
pub const CT_SIZE: u32 = 262_144;
/// Highest `max_sessions` allowed: with [`ct_slack`] for up to 28 CPUs the
/// LRU map never evicts a live session.
pub const MAX_SESSIONS_LIMIT: u32 = CT_SIZE / 2 - 4096;

/// Free entries a conntrack table keeps beyond two per live session. The
/// kernel's LRU evicts when a CPU refills its local free list (up to 128
/// entries) and the global free list holds fewer: the other CPUs may each
/// hold 128 free entries of their own meanwhile.
pub const fn ct_slack(possible_cpus: u32) -> u32 {
    256 * (possible_cpus + 1) + 512
}

/// Conntrack entries for `max_sessions`: two per session plus
/// [`ct_slack`], rounded up to a power of two (the hash's bucket count
/// anyway), at most [`CT_SIZE`].
pub const fn ct_entries(max_sessions: u32, possible_cpus: u32) -> u32 {
    let want = 2 * max_sessions as u64 + ct_slack(possible_cpus) as u64;
    if want >= CT_SIZE as u64 {
        CT_SIZE
    } else {
        (want as u32).next_power_of_two()
    }
}

/// Sessions a conntrack table of `entries` holds without eviction.
pub const fn ct_capacity(entries: u32, possible_cpus: u32) -> u32 {
    entries.saturating_sub(ct_slack(possible_cpus)) / 2
}
/// Default session limit.
pub const DEFAULT_MAX_SESSIONS: u32 = 65_536;
/// Port ranges ([`MAP_FWD_RANGES`]) a topology may forward.
pub const MAX_FWD_RANGES: u32 = 64;
/// Single-port forwards ([`MAP_FORWARDS`]).
pub const MAX_FWD_PORTS: u32 = 4096;
/// Random ports tried after the source port when allocating a mapping.
pub const NAT_PORT_RETRIES: u32 = 32;
/// A conntrack entry seen again within this long (or a 16th of its
/// timeout, if shorter) is not rewritten.
pub const CT_REFRESH_NS: u64 = 1_000_000_000;
/// A half-session whose original half is missing is removed by the sweep
/// once older than this (a new session is inserted in two steps).
pub const CT_ORPHAN_GRACE_NS: u64 = 1_000_000_000;
/// Sweep period when the NAT config gives none.
pub const CT_SWEEP_DEFAULT_MS: u32 = 1000;

/// [`NatConfig::flags`]: SNAT lab traffic leaving the uplink.
pub const NAT_MASQUERADE: u32 = 1;
/// [`NatConfig::flags`]: endpoint-independent mapping (RFC 4787 REQ-1).
pub const NAT_EIM: u32 = 2;
/// [`NatConfig::flags`]: port forwards exist (ports check for hairpin).
pub const NAT_FORWARDS: u32 = 4;
/// [`NatConfig::flags`]: packets of established sessions skip the kernel's
/// bridge and routing (redirect straight to the uplink or the lab host).
pub const NAT_FAST_PATH: u32 = 8;
/// [`NatConfig::flags`]: inbound packets refresh SNAT sessions too (RFC
/// 4787 REQ-6 MAY); off, only outbound ones do.
pub const NAT_INBOUND_REFRESH: u32 = 16;
/// [`NatConfig::flags`]: an unsolicited inbound SYN to the uplink address
/// (no session, forward, filtering admission or host socket), in the NAT
/// port range, is dropped (`nat_unsolicited_syn`) rather than answered
/// with a RST by the host's stack (RFC 5382 REQ-4; `unsolicited_syn`).
pub const NAT_SYN_DROP: u32 = 32;
/// [`NatConfig::flags`]: the uplink is a veth: the fast path hands a
/// translated packet straight to the ingress of its peer (in the upstream
/// namespace) with the next hop's MACs from the FIB, instead of the
/// kernel's neighbour output and the veth's transmit queue.
pub const NAT_UPLINK_PEER: u32 = 64;

/// [`CtKey::dir`]: seen leaving through the uplink (or, for hairpin
/// replies, entering a bridge port): the source is rewritten.
pub const CT_DIR_OUT: u8 = 0;
/// [`CtKey::dir`]: seen entering through the uplink (or a hairpin request
/// at a bridge port): the destination is rewritten.
pub const CT_DIR_IN: u8 = 1;

/// [`CtEntry::kind`] values.
pub const CT_SNAT: u8 = 1;
pub const CT_DNAT: u8 = 2;
pub const CT_HAIRPIN: u8 = 3;

/// [`CtEntry::state`] values. TCP states are ordered: a session's state is
/// the highest of its two entries.
pub const CT_TCP_SYN: u8 = 1;
pub const CT_TCP_ESTABLISHED: u8 = 2;
pub const CT_TCP_CLOSING: u8 = 3;
pub const CT_TCP_CLOSED: u8 = 4;
pub const CT_UDP: u8 = 5;
pub const CT_UDP_REPLIED: u8 = 6;
pub const CT_ICMP: u8 = 7;

/// [`CtEntry::flags`]: this entry is the direction that opened the session.
pub const CT_F_ORIGINAL: u8 = 1;
/// [`CtEntry::flags`] (both halves): the answering side has spoken.
pub const CT_F_REPLIED: u8 = 2;
/// [`CtEntry::flags`] (both halves): assured, as netfilter says: the
/// opening side spoke again after a reply (TCP: an ACK without SYN or RST,
/// the handshake done). An assured session never gives way to a new one.
pub const CT_F_ASSURED: u8 = 4;
/// [`CtEntry::flags`]: a SNAT session counted in its endpoint's
/// endpoint-independent mapping ([`EimEntry::sessions`]).
pub const CT_F_EIM: u8 = 8;

/// NAT settings (index 0 of [`MAP_NAT_CONFIG`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct NatConfig {
    /// Uplink IPv4 address (the masquerade address).
    pub uplink_ipv4: Be32,
    /// Uplink ifindex in the host namespace (host byte order).
    pub uplink_ifindex: u32,
    /// `NAT_*` bits; 0 disables NAT everywhere.
    pub flags: u32,
    /// SNAT port range, inclusive, HOST byte order.
    pub port_min: u16,
    /// HOST byte order.
    pub port_max: u16,
    /// New sessions are dropped (`nat_table_full`) at this many live ones.
    pub max_sessions: u32,
    /// Entries used in [`MAP_FWD_RANGES`].
    pub range_count: u16,
    /// Uplink MTU: larger packets take the kernel path (which fragments or
    /// answers "fragmentation needed").
    pub uplink_mtu: u16,
    /// Period of the in-kernel sweep in ms (host order); 0 =
    /// [`CT_SWEEP_DEFAULT_MS`].
    pub sweep_ms: u32,
    /// `FILTER_*`: which inbound packets without a session reach a mapping.
    pub filtering: u8,
    pub _pad: [u8; 3],
    /// Idle timeout in seconds (host order) per session state, indexed by
    /// the `CT_*` state code (index 0 unused). A session idle longer than
    /// the timeout of its state is expired: on lookup and by the sweep.
    pub timeouts: [u32; 8],
    /// Live sessions one upstream source address may hold through the
    /// forwards (host order); 0: no quota. See [`MAP_CT_QUOTA`].
    pub source_quota: u32,
    /// Live sessions one lab host may hold (SNAT and hairpin, host order);
    /// 0: no quota.
    pub host_quota: u32,
}
const _: () = assert!(core::mem::size_of::<NatConfig>() == 72);

/// Conntrack key: a packet's 5-tuple as seen at one hook.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct CtKey {
    pub saddr: Be32,
    pub daddr: Be32,
    /// ICMP echo: the identifier for packets from the inside (requests), 0
    /// for packets from outside.
    pub sport: Be16,
    /// ICMP echo: 0 from the inside, the identifier from outside (replies).
    pub dport: Be16,
    /// IP protocol number.
    pub proto: u8,
    /// `CT_DIR_*`.
    pub dir: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<CtKey>() == 16);

/// Conntrack value: how to rewrite packets matching the key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct CtEntry {
    /// The key of the opposite direction (deleted together).
    pub reverse: CtKey,
    /// New source (dir OUT) or destination (dir IN) address.
    pub nat_addr: Be32,
    /// New source/destination port (ICMP: identifier).
    pub nat_port: Be16,
    /// `CT_TCP_*`, `CT_UDP*`, `CT_ICMP`.
    pub state: u8,
    /// `CT_SNAT`, `CT_DNAT`, `CT_HAIRPIN`.
    pub kind: u8,
    /// `CT_F_*`.
    pub flags: u8,
    pub _pad: [u8; 7],
    /// `bpf_ktime_get_coarse_ns()` (NAT clock, `nat::ct::now`) at creation.
    pub created_ns: u64,
    /// `bpf_ktime_get_coarse_ns()` of the last packet (refreshed at most every
    /// [`CT_REFRESH_NS`]).
    pub last_seen_ns: u64,
}
const _: () = assert!(core::mem::size_of::<CtEntry>() == 48);

/// Forward key: protocol and external port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct FwdKey {
    /// External port, HOST byte order (first port for a range).
    pub port: u16,
    /// IP protocol number (6 or 17).
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<FwdKey>() == 4);

/// Where a forward (single port or range) goes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct FwdTarget {
    /// Target namespace address.
    pub addr: Be32,
    /// Target port for `first`, HOST byte order; port p maps to
    /// `port + (p - first)`.
    pub port: u16,
    /// External ports covered, inclusive, HOST byte order.
    pub first: u16,
    /// HOST byte order.
    pub last: u16,
    /// IP protocol number.
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<FwdTarget>() == 12);

/// Endpoint-independent mapping key: an inside endpoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct EimKey {
    pub addr: Be32,
    pub port: Be16,
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<EimKey>() == 8);

/// A lab host for hairpin replies: its bridge port and MAC.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct HostEntry {
    /// Host-side veth ifindex (host byte order).
    pub ifindex: u32,
    /// The namespace end's MAC, wire order.
    pub mac: [u8; 6],
    /// The port's MTU (host byte order).
    pub mtu: u16,
}
const _: () = assert!(core::mem::size_of::<HostEntry>() == 12);

/// Session accounting, kept by the datapath under a spin lock in
/// [`MAP_CT_STATE`]. A session counts from its admission to the successful
/// delete of its original half (by the sweep, on lookup, or a purge).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct CtCounts {
    /// Sessions now in the table, counted against `max_sessions`.
    pub live: u64,
    /// Highest `live` ever reached (since the table was created).
    pub high_water: u64,
    /// Sweeps run (by the timer, or forced by `netbridge gc`).
    pub sweeps: u64,
    /// `bpf_ktime_get_coarse_ns()` at the end of the last sweep.
    pub last_sweep_ns: u64,
}
const _: () = assert!(core::mem::size_of::<CtCounts>() == 32);

/// The value of [`MAP_CT_STATE`] as userspace reads it. In the programs
/// the first 16 bytes are a `struct bpf_timer` and the next 4 a `struct
/// bpf_spin_lock` (the kernel reads them as zero).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct CtStateView {
    pub timer: [u64; 2],
    pub lock: u32,
    pub _pad: u32,
    pub counts: CtCounts,
}
const _: () = assert!(core::mem::size_of::<CtStateView>() == 56);

/// A value of [`MAP_CT_QUOTA`] as userspace reads it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct QuotaView {
    /// The kernel's spin lock (reads as 0).
    pub lock: u32,
    /// Live sessions of the source (host order).
    pub sessions: u32,
}
const _: () = assert!(core::mem::size_of::<QuotaView>() == 8);

/// A command for [`PROG_CT_CTL`]: the test-run frame is a 14-byte Ethernet
/// header (any addresses, [`CTL_ETHERTYPE`]) followed by this.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct CtlCmd {
    /// A [`ctl`] `OP_*` code (host order).
    pub op: u32,
    /// [`ctl`] `F_*` bits (host order).
    pub flags: u32,
    /// PURGE: external ports of the forward, inclusive, host order.
    pub first: u16,
    pub last: u16,
    /// PURGE: IP protocol number.
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<CtlCmd>() == 16);

/// Ethertype of [`CtlCmd`] frames (IEEE local experimental).
pub const CTL_ETHERTYPE: u16 = 0x88b5;

/// [`CtlCmd`] operations and the control program's return values.
pub mod ctl {
    /// Start the sweep timer (or, already running, restart its period).
    pub const OP_ARM: u32 = 1;
    /// Sweep now; returns the sessions removed.
    pub const OP_SWEEP: u32 = 2;
    /// Remove the DNAT/hairpin sessions of a forward; returns how many.
    pub const OP_PURGE: u32 = 3;
    /// Stop the sweep timer (tests use it to show expiry on lookup alone).
    pub const OP_STOP: u32 = 4;
    /// OP_ARM: a timer started by an earlier program calls this program's
    /// callback from now on (`up --reload`).
    pub const F_TAKEOVER: u32 = 1;
    /// OP_ARM results.
    pub const ARMED: u32 = 0;
    pub const RUNNING: u32 = 1;
    pub const TAKEN_OVER: u32 = 2;
    /// Return values from here up are errors: `ERROR + errno`.
    pub const ERROR: u32 = 1 << 30;
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: all are repr(C) and bytemuck::Pod: no padding, any bit
    // pattern valid.
    unsafe impl aya::Pod for super::PortStats {}
    unsafe impl aya::Pod for super::PortSlot {}
    unsafe impl aya::Pod for super::PortConfig {}
    unsafe impl aya::Pod for super::FdbKey {}
    unsafe impl aya::Pod for super::FdbEntry {}
    unsafe impl aya::Pod for super::BridgeConfig {}
    unsafe impl aya::Pod for super::NatConfig {}
    unsafe impl aya::Pod for super::CtKey {}
    unsafe impl aya::Pod for super::CtEntry {}
    unsafe impl aya::Pod for super::FwdKey {}
    unsafe impl aya::Pod for super::FwdTarget {}
    unsafe impl aya::Pod for super::EimKey {}
    unsafe impl aya::Pod for super::EimEntry {}
    unsafe impl aya::Pod for super::ExtKey {}
    unsafe impl aya::Pod for super::PermKey {}
    unsafe impl aya::Pod for super::HostEntry {}
    unsafe impl aya::Pod for super::PolicyKey {}
    unsafe impl aya::Pod for super::CtStateView {}
    unsafe impl aya::Pod for super::QuotaView {}
    // SAFETY: repr(transparent) over u16/u32.
    unsafe impl aya::Pod for super::Be16 {}
    unsafe impl aya::Pod for super::Be32 {}
}
