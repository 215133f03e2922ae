//! Numbered code tables (drop reasons, NAT counters), each written once
//! like Cilium's `drop_reasons.h`: code, enum variant, the `u32` constant
//! the programs index their per-CPU counter arrays with, and the name
//! userspace shows. The codes must count up from 0 with no gap (checked
//! at compile time): they index arrays sized by `COUNT`.

/// Defines `enum $Enum` (`#[repr(u32)]`), `mod $module` with one `u32`
/// constant per code plus `COUNT` and `NAMES`, and `$Enum::{name,
/// from_code, ALL}`.
macro_rules! code_table {
    (
        $(#[$meta:meta])*
        pub enum $Enum:ident in mod $module:ident {
            $( $(#[doc = $doc:literal])* $code:literal $Variant:ident $CONST:ident $name:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $Enum {
            $( $(#[doc = $doc])* $Variant = $code, )*
        }

        $(#[$meta])*
        pub mod $module {
            $( $(#[doc = $doc])* pub const $CONST: u32 = super::$Enum::$Variant as u32; )*
            /// Number of codes (the size of the counter array).
            pub const COUNT: u32 = [$($code),*].len() as u32;
            /// Names, indexed by code.
            pub const NAMES: [&str; COUNT as usize] = [$($name),*];
        }

        const _: () = {
            let codes: [u32; $module::COUNT as usize] = [$($code),*];
            let mut i = 0;
            while i < codes.len() {
                assert!(codes[i] == i as u32, "codes must count up from 0");
                i += 1;
            }
        };

        impl $Enum {
            /// Every code, in order.
            pub const ALL: [$Enum; $module::COUNT as usize] = [$($Enum::$Variant),*];

            /// The name userspace shows (counters, logs, metrics).
            pub const fn name(self) -> &'static str {
                $module::NAMES[self as usize]
            }

            /// The code as the programs count it.
            pub const fn code(self) -> u32 {
                self as u32
            }

            pub const fn from_code(code: u32) -> Option<$Enum> {
                if code < $module::COUNT {
                    Some(Self::ALL[code as usize])
                } else {
                    None
                }
            }
        }
    };
}

code_table! {
    /// Explicit reasons a program drops a frame; index into
    /// [`crate::MAP_DROP_STATS`].
    pub enum DropReason in mod drop_reason {
        /// Frame shorter than its Ethernet (or VLAN) header.
        0 TruncatedEth TRUNCATED_ETH "truncated_eth",
        /// L3 header claimed by the ethertype does not fit in the frame.
        1 TruncatedL3 TRUNCATED_L3 "truncated_l3",
        /// More VLAN tags than the parser follows.
        2 VlanTooDeep VLAN_TOO_DEEP "vlan_too_deep",
        /// IPv4 header with IHL < 5 or version != 4.
        3 BadIpv4Header BAD_IPV4_HEADER "bad_ipv4_header",
        /// Source MAC is multicast/broadcast or all-zero: never valid.
        4 BadSrcMac BAD_SRC_MAC "bad_src_mac",
        /// Source MAC is not the namespace's own (anti-spoofing).
        5 SpoofedMac SPOOFED_MAC "spoofed_mac",
        /// IPv4 source is not one of the namespace's addresses (anti-spoofing).
        6 SpoofedIpv4 SPOOFED_IPV4 "spoofed_ipv4",
        /// ARP sender MAC/IP is not the namespace's own (anti-spoofing).
        7 SpoofedArp SPOOFED_ARP "spoofed_arp",
        /// New SNAT flow, but no free port in the NAT port range (after the
        /// bounded retries).
        8 NatPortExhausted NAT_PORT_EXHAUSTED "nat_port_exhausted",
        /// New NAT flow, but the session table is at `max_sessions`.
        9 NatTableFull NAT_TABLE_FULL "nat_table_full",
        /// Inserting a conntrack entry failed (lost a race or map error).
        10 NatCtInsert NAT_CT_INSERT "nat_ct_insert",
        /// A non-first IPv4 fragment that would need translation but whose
        /// first fragment was not translated before it (out of order, or
        /// lost): it carries no ports, so it cannot be mapped (netbridge
        /// does not reassemble).
        11 NatFragment NAT_FRAGMENT "nat_fragment",
        /// Rewriting the packet (store or checksum helper) failed.
        12 NatRewrite NAT_REWRITE "nat_rewrite",
        /// A hairpin reply whose destination is not a known lab host.
        13 NatNoRoute NAT_NO_ROUTE "nat_no_route",
        /// The isolation policy denies this source/destination pair.
        14 PolicyDenied POLICY_DENIED "policy_denied",
        /// An inbound packet for a SNAT mapping that expired (its session
        /// found past its timeout, or recently removed), and no socket of
        /// the host itself wants it.
        15 NatExpired NAT_EXPIRED "nat_expired",
        /// A TCP or UDP packet the NAT would translate whose L4 header is
        /// malformed: TCP data offset below 5 or past the end of the packet,
        /// UDP header cut short.
        16 BadL4Header BAD_L4_HEADER "bad_l4_header",
        /// IPv6 source is not one of the namespace's addresses, its
        /// link-local address or :: (anti-spoofing).
        17 SpoofedIpv6 SPOOFED_IPV6 "spoofed_ipv6",
        /// A Router Advertisement from a port not marked as a router (RA
        /// guard, RFC 6105).
        18 RaGuard RA_GUARD "ra_guard",
        /// A DHCPv6 server reply (UDP from port 547) from a port not marked
        /// as a router.
        19 Dhcpv6Guard DHCPV6_GUARD "dhcpv6_guard",
        /// A Neighbor Advertisement for an address that is not the
        /// namespace's, or a link-layer address option that is not its MAC.
        20 SpoofedNd SPOOFED_ND "spoofed_nd",
        /// IPv6 header with version != 6 or a payload length past the end
        /// of the frame.
        21 BadIpv6Header BAD_IPV6_HEADER "bad_ipv6_header",
        /// More IPv6 extension headers than the parser follows, one cut
        /// short, or a hop-by-hop header after another one (RFC 8200).
        22 Ipv6ExtChain IPV6_EXT_CHAIN "ipv6_ext_chain",
        /// A first IPv6 fragment that does not hold the whole header chain
        /// (RFC 7112), or an ICMPv6/ND message in a fragment.
        23 Ipv6Fragment IPV6_FRAGMENT "ipv6_fragment",
        /// A lab host's packet to another lab host's SNAT mapping
        /// (hairpin) that the mapping's filtering refuses (as it would
        /// refuse the same packet from outside).
        24 NatFiltered NAT_FILTERED "nat_filtered",
        /// A lab host's ICMP message the NAT cannot translate (neither an
        /// echo request nor an error: timestamp, address mask, router
        /// advertisement...), dropped at the uplink egress rather than
        /// leaking the lab's private source address (RFC 5508 REQ-11).
        25 NatUntranslatable NAT_UNTRANSLATABLE "nat_untranslatable",
        /// A new NAT session refused: its source (the upstream client of a
        /// forward, or the lab host) holds its quota of live sessions
        /// already (`uplink.max_sessions_per_source` / `_per_host`).
        26 NatQuota NAT_QUOTA "nat_quota",
        /// An unsolicited inbound TCP SYN to the uplink address in the NAT
        /// port range (no session, forward, filtering admission or host
        /// socket takes it), dropped silently under `unsolicited_syn =
        /// "drop"` (RFC 5382 REQ-4: a simultaneous open's inside SYN may
        /// still come).
        27 NatUnsolicitedSyn NAT_UNSOLICITED_SYN "nat_unsolicited_syn",
        /// An ICMP error of a NAT session whose ICMP checksum is wrong,
        /// dropped rather than translated: the translation's incremental
        /// checksum update would pass it on as valid (RFC 5508 REQ-3).
        28 NatIcmpBadCsum NAT_ICMP_BAD_CSUM "nat_icmp_bad_checksum",
        /// An IPv6 frame on a bridge port whose IPv6 program is not in the
        /// port program's tail-call array (a lab made by an older netbridge
        /// and upgraded in place: `down`, then `up`). Dropped rather than
        /// bridged without the IPv6 guards.
        29 PortProgramMissing PORT_PROGRAM_MISSING "port_program_missing",
    }
}

code_table! {
    /// Indexes into [`crate::MAP_NAT_STATS`].
    pub enum NatStat in mod nat_stat {
        /// New SNAT sessions.
        0 SnatNew SNAT_NEW "snat_new",
        /// New DNAT sessions (from the uplink).
        1 DnatNew DNAT_NEW "dnat_new",
        /// New hairpin sessions (lab host to the uplink address).
        2 HairpinNew HAIRPIN_NEW "hairpin_new",
        /// Packets rewritten at the uplink egress (source).
        3 XlateOut XLATE_OUT "translated_out",
        /// Packets rewritten at the uplink ingress (destination).
        4 XlateIn XLATE_IN "translated_in",
        /// Packets rewritten on bridge ports (hairpin).
        5 XlateHairpin XLATE_HAIRPIN "translated_hairpin",
        /// ICMP errors translated (RFC 5508).
        6 IcmpErrors ICMP_ERRORS "icmp_errors_translated",
        /// Port allocation attempts that hit a used port.
        7 PortRetries PORT_RETRIES "port_retries",
        /// Mappings that kept the inside source port.
        8 PortKept PORT_KEPT "port_kept",
        /// Mappings reused through endpoint-independent mapping.
        9 EimReused EIM_REUSED "eim_reused",
        /// Packets sent from a bridge port straight out of the uplink.
        10 FastOut FAST_OUT "fast_path_out",
        /// Packets sent from the uplink straight into a lab namespace.
        11 FastIn FAST_IN "fast_path_in",
        /// Sessions removed past their timeout by the sweep.
        12 ExpiredSweep EXPIRED_SWEEP "expired_sweep",
        /// Sessions removed past their timeout when a packet (or a new
        /// session wanting the port) found them first.
        13 ExpiredLookup EXPIRED_LOOKUP "expired_lookup",
        /// Sessions removed because their forward went away or changed.
        14 Purged PURGED "purged",
        /// Unassured sessions evicted to admit a new one, the table being
        /// full (the admission policy: oldest unassured first).
        15 Evicted EVICTED "evicted",
        /// Admission candidates passed over while looking for one to evict:
        /// already gone, or assured (never evicted).
        16 EvictSkipped EVICT_SKIPPED "evict_skipped",
        /// Packets from a lab host to another lab host's SNAT mapping on the
        /// uplink address, translated on the bridge port (RFC 4787 REQ-9).
        17 HairpinSnat HAIRPIN_SNAT "hairpin_snat",
        /// Inbound packets with no session admitted to a mapping's owner by
        /// endpoint-independent or address-dependent filtering.
        18 FilterAdmitted FILTER_ADMITTED "filter_admitted",
        /// Non-first IPv4 fragments translated from their first fragment's
        /// translation (`NB_FRAG`, RFC 4787 REQ-14).
        19 FragTranslated FRAG_TRANSLATED "fragments_translated",
        /// A lab host's ICMP errors about packets hairpinned to it from
        /// another lab host, translated and delivered to that host (RFC
        /// 5508 REQ-7); each also counts twice in `icmp_errors_translated`
        /// (out as from the erring host, back in to the sender).
        20 HairpinIcmpErrors HAIRPIN_ICMP_ERRORS "icmp_errors_hairpinned",
        /// New NAT66 (IPv6 masquerade) sessions.
        21 Snat6New SNAT6_NEW "snat6_new",
        /// IPv6 packets rewritten at the uplink egress (source).
        22 Xlate6Out XLATE6_OUT "translated6_out",
        /// IPv6 packets rewritten at the uplink ingress (destination).
        23 Xlate6In XLATE6_IN "translated6_in",
        /// ICMPv6 errors about NAT66 sessions translated (outer
        /// destination and the quoted packet).
        24 Icmp6Errors ICMP6_ERRORS "icmp6_errors_translated",
        /// NAT66 sessions removed past their timeout when a packet (or a new
        /// session wanting the port) found them.
        25 Expired6 EXPIRED6 "expired6",
        /// New NAT66 port-forward (DNAT66) sessions.
        26 Dnat6New DNAT6_NEW "dnat6_new",
        /// IPv6 packets from a lab host to the uplink's IPv6 address
        /// hairpinned on the bridge port to another lab host (Hairpin66:
        /// both the sender's and the receiver's session applied).
        27 Xlate6Hairpin XLATE6_HAIRPIN "translated6_hairpin",
        /// NAT66 sessions removed past their timeout by the sweep (or a
        /// purge: `forward` marks the sessions of a changed forward idle).
        28 Expired6Sweep EXPIRED6_SWEEP "expired6_sweep",
        /// IPv6 fragments (first or not) and packets with a routing header
        /// still to go, to the uplink's IPv6 address: passed to the host
        /// untranslated (NAT66 does not reassemble).
        29 Untranslated6In UNTRANSLATED6_IN "untranslated6_in",
        /// ICMP Destination Unreachable, code 13 (communication
        /// administratively prohibited), sent to a lab host whose new
        /// session was refused (port pool, table full, quota; RFC 5508
        /// REQ-8).
        30 IcmpProhibitedSent ICMP_PROHIBITED_SENT "icmp_prohibited_sent",
        /// Such errors not sent: over the per-CPU rate limit.
        31 IcmpProhibitedLimited ICMP_PROHIBITED_LIMITED "icmp_prohibited_rate_limited",
        /// Non-atomic outbound IPv4 datagrams (DF clear, or fragments)
        /// given a new IP ID at the uplink (RFC 7857 sec. 10, RFC 6864
        /// sec. 5.3.1); each fragment counts.
        32 IpIdRewritten IP_ID_REWRITTEN "ip_id_rewritten",
        /// ICMPv6 Destination Unreachable, code 1 (communication
        /// administratively prohibited), sent for a refused NAT66 session
        /// (RFC 5508 REQ-8's IPv6 counterpart): to a lab host, or to a
        /// forward's client.
        33 Icmp6ProhibitedSent ICMP6_PROHIBITED_SENT "icmp6_prohibited_sent",
        /// Such errors not sent: over the per-CPU rate limit (shared with
        /// the IPv4 ones).
        34 Icmp6ProhibitedLimited ICMP6_PROHIBITED_LIMITED "icmp6_prohibited_rate_limited",
        /// Inbound non-first IPv4 fragments seen before their first one
        /// (out of order), requeued to the uplink's ingress to come back
        /// after it (RFC 4787 REQ-14); each requeue counts.
        35 FragRequeued FRAG_REQUEUED "fragments_requeued",
        /// Outbound IPv4 datagrams whose later fragment came before the
        /// first one (out of order), masquerading: that fragment wrote the
        /// datagram's `NB_FRAG` entry (the uplink address, a new IP ID the
        /// first fragment takes). One per datagram; each fragment it
        /// translates counts in `fragments_translated`.
        36 FragEarlyOut FRAG_EARLY_OUT "fragments_translated_early",
        /// Fast-path packets (IPv4 and IPv6) handed straight to the
        /// ingress of a veth uplink's peer, with the next hop's MACs from
        /// the FIB (`NAT_UPLINK_PEER`); the others of the fast path (no
        /// neighbour entry yet, another uplink kind) take the kernel's
        /// neighbour output.
        37 UplinkPeer UPLINK_PEER "fast_path_to_uplink_peer",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_names_and_enum_agree() {
        assert_eq!(drop_reason::COUNT as usize, DropReason::ALL.len());
        assert_eq!(drop_reason::NAT_EXPIRED, 15);
        assert_eq!(DropReason::NatExpired.name(), "nat_expired");
        assert_eq!(
            DropReason::from_code(drop_reason::BAD_L4_HEADER),
            Some(DropReason::BadL4Header)
        );
        assert_eq!(DropReason::from_code(drop_reason::COUNT), None);
        for r in DropReason::ALL {
            assert_eq!(drop_reason::NAMES[r.code() as usize], r.name());
        }
        assert_eq!(NatStat::UplinkPeer.code(), nat_stat::COUNT - 1);
        assert_eq!(
            NatStat::from_code(nat_stat::PORT_KEPT),
            Some(NatStat::PortKept)
        );
    }
}
