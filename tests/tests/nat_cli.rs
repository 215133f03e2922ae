//! The NAT commands as a shell pipeline uses them.
use std::{os::fd::OwnedFd, process::Stdio};

use netbridge_tests::{natlab::NatLab, netbridge_bin, require_root};

/// `netbridge conntrack | head`: a reader that went away ends the listing
/// quietly (exit 0, no panic), in table and JSON form. Control: into an
/// open pipe the same command lists the session.
#[test]
fn conntrack_into_a_closed_pipe_exits_quietly() {
    require_root!();
    let lab = NatLab::new("", "");
    let r = lab.udp_probe("black", netbridge_tests::natlab::SERVER, &["6100:7".into()]);
    assert!(r["6100:7"].is_null(), "{r}");
    let name = lab.topology();
    let listing = lab.nb_named(&["conntrack"]);
    assert!(listing.contains("192.168.1.10:6100"), "{listing}");
    for json in [false, true] {
        let (read, write) = nix::unistd::pipe().unwrap();
        // The reader is gone before netbridge writes a byte: EPIPE for sure.
        drop::<OwnedFd>(read);
        let mut argv = vec!["conntrack", "--name", &name];
        if json {
            argv.push("--json");
        }
        let out = lab
            .sb
            .cmd(&lab.sb.host, &[netbridge_bin().to_str().unwrap()])
            .args(&argv)
            .stdin(Stdio::null())
            .stdout(Stdio::from(write))
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "json {json}: {}: {stderr}",
            out.status
        );
        assert!(!stderr.contains("panicked"), "json {json}: {stderr}");
    }
    lab.nb(&["down"]);
}

/// A lab brought up by an older build has shorter counter arrays pinned
/// (fewer NAT counters and drop reasons); `stats` of a newer binary reads
/// what is there and shows the rest as 0 instead of failing. Simulated by
/// re-pinning both arrays one entry short with bpftool; control: the same
/// `stats` before the swap shows the last counter and reason too.
#[test]
fn stats_reads_counter_arrays_pinned_by_an_older_build() {
    require_root!();
    let lab = NatLab::new("", "");
    let last_stat =
        netbridge_common::nat_stat::NAMES[netbridge_common::nat_stat::COUNT as usize - 1];
    let last_drop =
        netbridge_common::drop_reason::NAMES[netbridge_common::drop_reason::COUNT as usize - 1];
    let stats =
        || -> serde_json::Value { serde_json::from_str(&lab.nb(&["stats", "--json"])).unwrap() };
    let before = stats();
    assert!(before["nat"]["counters"][last_stat].is_u64(), "{before}");
    let pins = format!("/run/netbridge/bpf/{}", lab.topology());
    for (map, entries) in [
        ("NB_NAT_STATS", netbridge_common::nat_stat::COUNT - 1),
        ("NB_DROP_STATS", netbridge_common::drop_reason::COUNT - 1),
    ] {
        lab.sb.sh(
            &lab.sb.host,
            &format!("rm {pins}/{map} && bpftool map create {pins}/{map} type percpu_array key 4 value 8 entries {entries} name {map}"),
        );
    }
    let after = stats();
    assert_eq!(after["nat"]["counters"][last_stat], 0, "{after}");
    assert_eq!(after["drops"][last_drop], 0, "{after}");
    lab.nb(&["down"]);
}
