//! Names netbridge-cni gives the engine's objects. A CNI network is one
//! netbridge topology and an attachment (container id, ifname) one port;
//! CNI names are longer and allow dots, the engine's do not, so each name
//! is mapped by a fixed rule (no state needed to find it again: DEL and GC
//! without a prevResult compute it).
use super::conf::Attachment;

/// Topology names: 1-32 of `A-Z a-z 0-9 - _` (the engine's rule).
const TOPOLOGY_MAX: usize = 32;

fn engine_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

/// FNV-1a, 64 bits: stable across builds and platforms.
pub fn fnv64(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, p) in parts.iter().enumerate() {
        // A separator byte no name contains: ("ab","c") != ("a","bc").
        let sep: &[u8] = if i == 0 { &[] } else { &[0] };
        for b in sep.iter().chain(p.as_bytes()) {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// `s` with every character the engine refuses replaced by '-', at most
/// `max` characters.
fn clean(s: &str, max: usize) -> String {
    s.chars()
        .map(|c| if engine_char(c) { c } else { '-' })
        .take(max)
        .collect()
}

/// The topology of CNI network `network`: the name itself when the engine
/// accepts it (so `netbridge stats --name NET` just works), else its first
/// 23 characters cleaned, '-' and 8 hex digits of its hash.
pub fn topology_name(network: &str) -> String {
    if network.len() <= TOPOLOGY_MAX && network.chars().all(engine_char) {
        return network.to_string();
    }
    format!("{}-{:08x}", clean(network, 23), fnv64(&[network]) as u32)
}

/// The engine port of an attachment: the first 12 characters of the
/// container id (cleaned), '-' and 8 hex digits of the hash of (id,
/// ifname); 21 characters at most.
pub fn port_name(att: &Attachment) -> String {
    format!(
        "{}-{:08x}",
        clean(&att.container_id, 12),
        fnv64(&[&att.container_id, &att.ifname]) as u32
    )
}

/// The host end of an attachment's veth in the node: `nbc` and 12 hex
/// digits of the hash of (topology, id, ifname): 15 bytes, the kernel's
/// limit, unique per network and attachment.
pub fn host_ifname(topology: &str, att: &Attachment) -> String {
    format!(
        "nbc{:012x}",
        fnv64(&[topology, &att.container_id, &att.ifname]) & 0xffff_ffff_ffff
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn att(id: &str, ifname: &str) -> Attachment {
        Attachment {
            container_id: id.into(),
            ifname: ifname.into(),
        }
    }

    #[test]
    fn topology_names_fit_the_engine_and_keep_valid_ones() {
        assert_eq!(topology_name("podman"), "podman");
        assert_eq!(topology_name("t123-net_1"), "t123-net_1");
        let dotted = topology_name("my.net");
        assert!(dotted.starts_with("my-net-"), "{dotted}");
        assert_ne!(dotted, topology_name("my-net"), "a dot is not a dash");
        let long = "a".repeat(40);
        let t = topology_name(&long);
        assert_eq!(t.len(), 32);
        assert_ne!(t, topology_name(&"a".repeat(41)));
        for n in [dotted, t] {
            assert!(n.len() <= 32 && n.chars().all(engine_char), "{n}");
        }
        // Fixed rule: the same every time (DEL without state computes it).
        assert_eq!(topology_name("my.net"), topology_name("my.net"));
    }

    #[test]
    fn port_and_veth_names_are_unique_per_attachment_and_fit() {
        let id = "0123456789abcdef".repeat(4);
        let (a, b) = (att(&id, "eth0"), att(&id, "eth1"));
        assert_ne!(port_name(&a), port_name(&b));
        assert!(port_name(&a).starts_with("0123456789ab-"));
        assert!(port_name(&att("a.b", "eth0")).starts_with("a-b-"));
        assert!(port_name(&a).len() <= 21);
        assert_ne!(host_ifname("n1", &a), host_ifname("n2", &a));
        assert_ne!(host_ifname("n1", &a), host_ifname("n1", &b));
        assert_eq!(host_ifname("n1", &a).len(), 15);
        assert_ne!(fnv64(&["ab", "c"]), fnv64(&["a", "bc"]));
    }
}
