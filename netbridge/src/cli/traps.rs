//! Traps turned into clear errors before anything changes.
//!
//! `ip netns exec` (and systemd units with a private /run, `unshare -m`)
//! run a command in a mount namespace of its own whose mounts do not
//! propagate back: a namespace netbridge creates there (a bind mount under
//! /run/netns) or a bpffs it mounts would exist only inside it, invisible
//! to every other process, and vanish with it. So before a command that
//! creates or removes such mounts, netbridge checks that its /run/netns
//! (and its bpffs) are the ones PID 1 sees, and otherwise refuses, showing
//! the `nsenter --net=...` way, which enters only the network namespace.
use std::path::Path;

use anyhow::{Result, bail};
use netbridge::{netns::NETNS_RUN_DIR, pins::BPFFS_ROOT};

/// One line of /proc/PID/mountinfo, the fields that matter here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub id: u64,
    /// major:minor of the filesystem.
    pub dev: String,
    pub point: String,
    /// Peer group this mount shares events with (`shared:N`).
    pub shared: Option<u64>,
    /// Peer group it receives events from (`master:N`).
    pub master: Option<u64>,
}

pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-")?;
            let tag = |t: &str| {
                f.get(6..sep)?
                    .iter()
                    .find_map(|o| o.strip_prefix(t)?.parse().ok())
            };
            Some(Mount {
                id: f.first()?.parse().ok()?,
                dev: f.get(2)?.to_string(),
                point: f.get(4)?.replace("\\040", " "),
                shared: tag("shared:"),
                master: tag("master:"),
            })
        })
        .collect()
}

/// The mount `path` is on: the deepest mount point containing it, the
/// last mounted of a stack.
fn covering<'a>(mounts: &'a [Mount], path: &str) -> Option<&'a Mount> {
    let deepest = mounts
        .iter()
        .filter(|m| Path::new(path).starts_with(&m.point))
        .map(|m| m.point.len())
        .max()?;
    mounts
        .iter()
        .rfind(|m| m.point.len() == deepest && Path::new(path).starts_with(&m.point))
}

/// Whether a mount made under `path` in our namespace shows in init's:
/// the mount it lands on is init's own, or shares a peer group that init
/// has a member (or slave) of.
pub fn propagates(ours: &[Mount], init: &[Mount], path: &str) -> bool {
    let Some(m) = covering(ours, path) else {
        return false;
    };
    if init.iter().any(|i| i.id == m.id) {
        return true;
    }
    m.shared.is_some_and(|g| {
        init.iter()
            .any(|i| i.shared == Some(g) || i.master == Some(g))
    })
}

/// Whether pins made under netbridge's bpffs show in init's namespace: it
/// is mounted here as there (the same filesystem), or mounting it here
/// would propagate there.
pub fn pins_visible(ours: &[Mount], init: &[Mount]) -> bool {
    let same_fs = |m: &Mount| {
        m.point == BPFFS_ROOT && init.iter().any(|i| i.point == BPFFS_ROOT && i.dev == m.dev)
    };
    match covering(ours, BPFFS_ROOT) {
        Some(m) if m.point == BPFFS_ROOT => same_fs(m),
        _ => propagates(ours, init, BPFFS_ROOT),
    }
}

/// Set to 1 by whoever means netbridge to live in a private mount
/// namespace (a container or a test's own node whose every process shares
/// that namespace): the check below is skipped.
pub const PRIVATE_MOUNTS_ENV: &str = "NETBRIDGE_PRIVATE_MOUNTS";

/// Refuses to go on in a mount namespace whose namespace and pin mounts
/// would not be seen outside, unless [`PRIVATE_MOUNTS_ENV`] says it is
/// meant. Where init's mount table cannot be read, nothing can be judged
/// and nothing is refused.
pub fn refuse_private_mounts() -> Result<()> {
    if std::env::var(PRIVATE_MOUNTS_ENV).as_deref() == Ok("1") {
        return Ok(());
    }
    let (Ok(ours), Ok(init)) = (
        std::fs::read_to_string("/proc/self/mountinfo"),
        std::fs::read_to_string("/proc/1/mountinfo"),
    ) else {
        return Ok(());
    };
    let (ours, init) = (parse_mountinfo(&ours), parse_mountinfo(&init));
    let netns_ok = propagates(&ours, &init, &format!("{NETNS_RUN_DIR}/x"));
    let pins_ok = pins_visible(&ours, &init);
    let what = match (netns_ok, pins_ok) {
        (true, true) => return Ok(()),
        (false, true) => "the namespaces",
        (true, false) => "the BPF pins",
        (false, false) => "the namespaces and BPF pins",
    };
    bail!(
        "netbridge runs in a private mount namespace (as under `ip netns exec`, `unshare -m` \
         or a systemd unit with a private /run): {what} it creates would exist only inside \
         it, invisible to every other process. Nothing was changed. Enter only the network \
         namespace instead, with nsenter:\n    {}\n(If every process that needs them runs in this mount namespace, \
         set {PRIVATE_MOUNTS_ENV}=1.)",
        nsenter_line(),
    )
}

/// This command line, run through `nsenter --net=` of the network
/// namespace we are in (found under /run/netns by inode).
fn nsenter_line() -> String {
    use std::os::unix::fs::MetadataExt;
    let ours = std::fs::metadata("/proc/self/ns/net").ok();
    let named = netbridge::netns::list().into_iter().find(|n| {
        let m = std::fs::metadata(netbridge::netns::path_of(n)).ok();
        matches!((&ours, m), (Some(a), Some(b)) if a.ino() == b.ino() && a.dev() == b.dev())
    });
    let ns = named.map_or("/run/netns/NAME".to_string(), |n| {
        netbridge::netns::path_of(&n).display().to_string()
    });
    let args: Vec<String> = std::env::args().skip(1).map(|a| shell_quote(&a)).collect();
    format!("nsenter --net={ns} netbridge {}", args.join(" "))
}

fn shell_quote(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./:=@,+".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine's shape: / private, /run/netns shared (peer group 1,
    /// stacked), netbridge's bpffs private.
    const INIT: &str = "\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
42 27 254:0 /run/netns /run/netns rw,relatime shared:1 - ext4 /dev/vda rw
44 42 254:0 /run/netns /run/netns rw,relatime shared:1 - ext4 /dev/vda rw
61 27 0:39 / /run/netbridge/bpf rw,relatime - bpf bpffs rw,mode=700
";

    /// What `ip netns exec` makes of it: new ids, every mount a slave.
    const NETNS_EXEC: &str = "\
327 326 254:0 / / rw,relatime master:7 - ext4 /dev/vda rw
342 327 254:0 /run/netns /run/netns rw,relatime master:1 - ext4 /dev/vda rw
344 342 254:0 /run/netns /run/netns rw,relatime master:1 - ext4 /dev/vda rw
361 327 0:39 / /run/netbridge/bpf rw,relatime - bpf bpffs rw,mode=700
";

    /// `unshare -m --propagation shared`: new ids, same peer groups.
    const UNSHARE_SHARED: &str = "\
427 426 254:0 / / rw,relatime shared:90 - ext4 /dev/vda rw
442 427 254:0 /run/netns /run/netns rw,relatime shared:1 - ext4 /dev/vda rw
444 442 254:0 /run/netns /run/netns rw,relatime shared:1 - ext4 /dev/vda rw
461 427 0:39 / /run/netbridge/bpf rw,relatime shared:91 - bpf bpffs rw,mode=700
";

    #[test]
    fn mountinfo_lines_are_parsed() {
        let m = parse_mountinfo(INIT);
        assert_eq!(m.len(), 4);
        assert_eq!(m[1].point, "/run/netns");
        assert_eq!(m[1].shared, Some(1));
        assert_eq!(m[3].dev, "0:39");
        assert_eq!(parse_mountinfo(NETNS_EXEC)[1].master, Some(1));
        assert!(parse_mountinfo("garbage\n").is_empty());
    }

    #[test]
    fn init_namespace_itself_passes() {
        let init = parse_mountinfo(INIT);
        assert!(propagates(&init, &init, "/run/netns/x"));
        assert!(pins_visible(&init, &init));
        // Even a private / works when it is init's own.
        assert!(propagates(&init, &init, "/srv/x"));
    }

    #[test]
    fn ip_netns_exec_is_caught() {
        let (ours, init) = (parse_mountinfo(NETNS_EXEC), parse_mountinfo(INIT));
        assert!(!propagates(&ours, &init, "/run/netns/x"));
        // The bpffs is the same filesystem: its pins would be seen.
        assert!(pins_visible(&ours, &init));
    }

    #[test]
    fn shared_propagation_passes() {
        let (ours, init) = (parse_mountinfo(UNSHARE_SHARED), parse_mountinfo(INIT));
        assert!(propagates(&ours, &init, "/run/netns/x"));
        assert!(pins_visible(&ours, &init));
    }

    /// A fresh machine: neither /run/netns nor the bpffs mounted yet. In
    /// a private copy the mounts netbridge would make stay inside.
    #[test]
    fn nothing_mounted_yet_in_a_private_copy() {
        let init = parse_mountinfo("27 1 254:0 / / rw - ext4 /dev/vda rw\n");
        let ours = parse_mountinfo("327 326 254:0 / / rw master:7 - ext4 /dev/vda rw\n");
        assert!(!propagates(&ours, &init, "/run/netns/x"));
        assert!(!pins_visible(&ours, &init));
        let shared_init = parse_mountinfo("27 1 254:0 / / rw shared:7 - ext4 /dev/vda rw\n");
        let shared_ours = parse_mountinfo("327 326 254:0 / / rw shared:7 - ext4 /dev/vda rw\n");
        assert!(propagates(&shared_ours, &shared_init, "/run/netns/x"));
        assert!(pins_visible(&shared_ours, &shared_init));
    }

    #[test]
    fn arguments_are_quoted_for_the_shell() {
        assert_eq!(shell_quote("up"), "up");
        assert_eq!(shell_quote("/tmp/lab.toml"), "/tmp/lab.toml");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
