//! Proof that a run (`cargo xtask test`, `cargo xtask bench`) left the
//! machine's root network namespace as it found it, and no process of its
//! own behind.
//!
//! [`Guard::begin`] makes xtask a child subreaper (every process the run
//! orphans is re-parented to xtask, so none can escape the count) and
//! snapshots the root namespace: links, addresses, routes, `nft list
//! ruleset`, `iptables-save`/`ip6tables-save`, `bpftool net`, /run/netns
//! entries and mounts. [`Guard::finish`] snapshots again and fails on any
//! difference and on any live descendant.
//!
//! What may legitimately differ, and how it is handled:
//! - Counters and lifetimes (rule packet/byte counters, address lifetimes,
//!   route expiry) tick on their own: they are blanked before comparing.
//! - The shared `/run/netns` mount and netbridge's bpffs at
//!   `/run/netbridge/bpf` are set up once, by the first run on a fresh
//!   machine, and stay: they may appear (not change, not stack twice).
//! - On a shared development machine other people's sandboxes come and go
//!   in /run/netns while this run goes. A namespace (and its nsfs mount) is
//!   ignored only if it provably is not this run's: its name carries none of
//!   the prefixes this run used (every test sandbox writes its prefix to a
//!   ledger before creating anything; the bench knows its own). Ignored
//!   entries are listed. With `CI` or `NETBRIDGE_ROOTNS_EXACT=1` set (CI,
//!   where nothing else runs) nothing is ignored at all.
use std::{
    collections::BTreeMap,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

const NETNS_DIR: &str = "/run/netns";
/// Mount points set up once and kept (see the module docs).
const INFRA_MOUNTS: &[&str] = &[NETNS_DIR, "/run/netbridge/bpf"];

/// Root-namespace state, by section, one normalised line per item.
type Snapshot = BTreeMap<&'static str, Vec<String>>;

pub struct Guard {
    before: Snapshot,
    exact: bool,
    leftovers: Vec<String>,
}

impl Guard {
    /// Becomes the subreaper of everything started from now on and takes
    /// the "before" snapshot.
    pub fn begin() -> Result<Guard> {
        // SAFETY: prctl with an integer argument; no pointers involved.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
            return Err(std::io::Error::last_os_error()).context("PR_SET_CHILD_SUBREAPER");
        }
        let exact = std::env::var_os("CI").is_some()
            || std::env::var("NETBRIDGE_ROOTNS_EXACT").as_deref() == Ok("1");
        Ok(Guard {
            before: snapshot()?,
            exact,
            leftovers: Vec::new(),
        })
    }

    /// Records (and kills, by pid) the descendants still running now. Call
    /// it as soon as the run's main process exited: a leftover holding the
    /// run's output pipe open would otherwise be waited for, not caught.
    pub fn reap(&mut self) {
        self.leftovers.extend(leftover_processes());
    }

    /// Fails if a descendant of xtask is still running (it is killed, by
    /// pid) or if the root namespace differs from the "before" snapshot,
    /// `ours` being the name prefixes this run used.
    pub fn finish(mut self, ours: &[String]) -> Result<()> {
        self.reap();
        let after = snapshot()?;
        let mut problems = Vec::new();
        let mut ignored = Vec::new();
        for (section, before) in &self.before {
            let (gone, new) = multiset_diff(before, &after[section]);
            for (what, lines) in [("gone", gone), ("new", new)] {
                for line in lines {
                    if !self.exact && foreign(section, &line, ours) {
                        ignored.push(format!("{section} {what}: {line}"));
                    } else if !(what == "new" && *section == "mounts" && infra(&line, before)) {
                        problems.push(format!("{section} {what}: {line}"));
                    }
                }
            }
        }
        if !ignored.is_empty() {
            eprintln!(
                "xtask: root namespace: ignored {} change(s) of namespaces that are not this \
                 run's (other sandboxes on this machine):\n  {}",
                ignored.len(),
                ignored.join("\n  ")
            );
        }
        problems.extend(
            self.leftovers
                .iter()
                .map(|p| format!("leftover process: {p}")),
        );
        if !problems.is_empty() {
            bail!(
                "the run changed the root network namespace or left processes behind:\n  {}",
                problems.join("\n  ")
            );
        }
        eprintln!(
            "xtask: root namespace unchanged ({} sections compared{}), no leftover process",
            after.len(),
            if self.exact { ", exactly" } else { "" }
        );
        Ok(())
    }
}

/// A /run/netns entry or nsfs mount whose namespace name carries none of
/// `ours`.
fn foreign(section: &str, line: &str, ours: &[String]) -> bool {
    let name = match section {
        "netns" => Some(line),
        "mounts" => line
            .split_whitespace()
            .next()
            .and_then(|m| m.strip_prefix(NETNS_DIR)?.strip_prefix('/')),
        _ => None,
    };
    name.is_some_and(|n| !ours.iter().any(|p| n.starts_with(p.as_str())))
}

/// An infrastructure mount that did not exist before (see module docs).
fn infra(line: &str, before: &[String]) -> bool {
    let point = line.split_whitespace().next().unwrap_or("");
    INFRA_MOUNTS.contains(&point)
        && !before
            .iter()
            .any(|b| b.split_whitespace().next() == Some(point))
}

/// Lines only in `a` (gone) and only in `b` (new), counting duplicates.
fn multiset_diff(a: &[String], b: &[String]) -> (Vec<String>, Vec<String>) {
    let mut count: BTreeMap<&str, i64> = BTreeMap::new();
    for l in a {
        *count.entry(l).or_default() -= 1;
    }
    for l in b {
        *count.entry(l).or_default() += 1;
    }
    let (mut gone, mut new) = (Vec::new(), Vec::new());
    for (l, c) in count {
        let side = if c < 0 { &mut gone } else { &mut new };
        side.extend(std::iter::repeat_n(
            l.to_string(),
            c.unsigned_abs() as usize,
        ));
    }
    (gone, new)
}

fn snapshot() -> Result<Snapshot> {
    let mut s = Snapshot::new();
    s.insert("links", lines(&["ip", "-o", "link", "show"])?);
    s.insert(
        "addresses",
        blank_lifetimes(lines(&["ip", "-o", "addr", "show"])?),
    );
    let mut routes = lines(&["ip", "-4", "route", "show", "table", "all"])?;
    routes.extend(lines(&["ip", "-6", "route", "show", "table", "all"])?);
    s.insert("routes", blank_after(routes, &["expires"]));
    s.insert(
        "nft",
        blank_after(lines(&["nft", "list", "ruleset"])?, &["packets", "bytes"]),
    );
    let mut ipt = lines(&["iptables-save"])?;
    ipt.extend(lines(&["ip6tables-save"])?);
    s.insert("iptables", blank_chain_counters(ipt));
    s.insert("bpftool net", lines(&["bpftool", "net", "show"])?);
    s.insert("netns", netns_entries()?);
    s.insert("mounts", mounts()?);
    Ok(s)
}

/// Non-empty stdout lines of a command that must succeed, whitespace
/// normalised.
fn lines(argv: &[&str]) -> Result<Vec<String>> {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {argv:?}"))?;
    if !out.status.success() {
        bail!(
            "{argv:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect())
}

/// `ip -o addr`: the lifetimes count down on their own.
fn blank_lifetimes(v: Vec<String>) -> Vec<String> {
    blank_after(v, &["valid_lft", "preferred_lft"])
}

/// Replaces the token after each of `words` with `*`.
fn blank_after(v: Vec<String>, words: &[&str]) -> Vec<String> {
    v.into_iter()
        .map(|l| {
            let mut prev = "";
            l.split(' ')
                .map(|t| {
                    let out = if words.contains(&prev) { "*" } else { t };
                    prev = t;
                    out
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// `iptables-save`: chain lines carry `[packets:bytes]`.
fn blank_chain_counters(v: Vec<String>) -> Vec<String> {
    v.into_iter()
        .map(|l| match (l.starts_with(':'), l.rfind(" [")) {
            (true, Some(i)) => format!("{} [*]", &l[..i]),
            _ => l,
        })
        .collect()
}

fn netns_entries() -> Result<Vec<String>> {
    if !Path::new(NETNS_DIR).exists() {
        return Ok(Vec::new());
    }
    let mut v = Vec::new();
    for e in std::fs::read_dir(NETNS_DIR).context(NETNS_DIR)? {
        v.push(e?.file_name().to_string_lossy().into_owned());
    }
    v.sort();
    Ok(v)
}

/// `MOUNT_POINT FSTYPE SOURCE` of every mount of xtask's (the root) mount
/// namespace.
fn mounts() -> Result<Vec<String>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").context("mountinfo")?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let point = left.split(' ').nth(4)?;
            let mut r = right.split(' ');
            Some(format!("{point} {} {}", r.next()?, r.next()?))
        })
        .collect())
}

/// Live descendants of xtask (zombies are reaped, not counted), each
/// killed by pid after being listed.
fn leftover_processes() -> Vec<String> {
    let me = std::process::id() as i32;
    let procs = processes();
    let mut found = Vec::new();
    let mut frontier = vec![me];
    while let Some(parent) = frontier.pop() {
        for p in procs.iter().filter(|p| p.ppid == parent) {
            frontier.push(p.pid);
            if p.state != 'Z' {
                found.push(format!("pid {} ({})", p.pid, p.cmdline));
                // SAFETY: kill(2) on a descendant of this process.
                unsafe { libc::kill(p.pid, libc::SIGKILL) };
            }
        }
    }
    reap_children(me);
    found
}

/// Reaps every child of `me` (the killed leftovers and whatever they
/// orphaned, re-parented here), for at most about 5 s.
fn reap_children(me: i32) {
    for _ in 0..100 {
        let children: Vec<i32> = processes()
            .iter()
            .filter(|p| p.ppid == me)
            .map(|p| p.pid)
            .collect();
        if children.is_empty() {
            return;
        }
        for pid in children {
            // SAFETY: waitpid on our own child, without blocking.
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

struct Proc {
    pid: i32,
    ppid: i32,
    state: char,
    cmdline: String,
}

fn processes() -> Vec<Proc> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| {
        let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // "pid (comm) state ppid ...": comm may hold spaces and parens.
        let rest = &stat[stat.rfind(')')? + 2..];
        let mut f = rest.split(' ');
        let state = f.next()?.chars().next()?;
        let ppid = f.next()?.parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| {
                String::from_utf8_lossy(&b)
                    .replace('\0', " ")
                    .trim()
                    .to_string()
            })
            .unwrap_or_default();
        Some(Proc {
            pid,
            ppid,
            state,
            cmdline,
        })
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn counters_and_lifetimes_are_blanked() {
        assert_eq!(
            blank_after(
                v(&["counter packets 12 bytes 3400 accept"]),
                &["packets", "bytes"]
            ),
            v(&["counter packets * bytes * accept"])
        );
        assert_eq!(
            blank_lifetimes(v(&[
                "4: eth0 inet 10.0.0.2/24 valid_lft 86000sec preferred_lft 86000sec"
            ])),
            v(&["4: eth0 inet 10.0.0.2/24 valid_lft * preferred_lft *"])
        );
        assert_eq!(
            blank_chain_counters(v(&[":INPUT ACCEPT [5:300]", "-A INPUT -j DROP"])),
            v(&[":INPUT ACCEPT [*]", "-A INPUT -j DROP"])
        );
    }

    #[test]
    fn diff_counts_duplicates() {
        let (gone, new) = multiset_diff(&v(&["a", "a", "b"]), &v(&["a", "b", "b", "c"]));
        assert_eq!((gone, new), (v(&["a"]), v(&["b", "c"])));
    }

    #[test]
    fn only_namespaces_without_our_prefix_are_foreign() {
        let ours = v(&["t123-", "nbb42"]);
        assert!(foreign("netns", "cnirec-node", &ours));
        assert!(!foreign("netns", "t123-host", &ours));
        assert!(foreign("mounts", "/run/netns/other nsfs nsfs", &ours));
        assert!(!foreign(
            "mounts",
            "/run/netns/nbb42c-client nsfs nsfs",
            &ours
        ));
        // Never links, rules, or mounts elsewhere.
        assert!(!foreign("links", "cnirec-node", &ours));
        assert!(!foreign("mounts", "/mnt/x ext4 /dev/vda", &ours));
    }

    #[test]
    fn infrastructure_mounts_may_only_appear() {
        let bpffs = "/run/netbridge/bpf bpf bpffs";
        assert!(infra(bpffs, &[]));
        assert!(
            !infra(bpffs, &v(&[bpffs])),
            "a second, stacked one is a change"
        );
        assert!(!infra("/mnt/x ext4 /dev/vda", &[]));
    }
}
