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
