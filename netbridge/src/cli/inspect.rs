//! `status`-like views over a running topology: `stats`, `fdb`, `metrics`,
//! and `exec` into one of its namespaces.
use std::{ffi::CString, os::fd::AsFd, time::Duration};

use anyhow::{Context, Result, bail};
use netbridge::{
    netns::{self, Netns},
    stats,
};

use super::common::{Which, name_of};

pub fn metrics(
    which: &Which,
    listen: std::net::SocketAddr,
    max_requests: Option<u64>,
) -> Result<()> {
    let source = stats::Source::open(&name_of(which)?)?;
    netbridge::metrics::serve(source, listen, max_requests)
        .with_context(|| format!("metrics server on {listen}"))
}

pub fn fdb(which: &Which, json: bool) -> Result<()> {
    let source = stats::Source::open(&name_of(which)?)?;
    let rows = source.fdb()?;
    if json {
        let v: Vec<_> = rows
            .iter()
            .map(|(r, port)| {
                serde_json::json!({"mac": r.mac, "vlan": r.vlan, "port": port, "ifindex": r.ifindex,
                                   "age_secs": r.age_secs, "expired": r.expired})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("{:<17} {:>4} {:<15} {:>8}", "mac", "vlan", "port", "age");
    for (r, port) in rows {
        println!(
            "{:<17} {:>4} {:<15} {:>7.1}s{}",
            r.mac,
            r.vlan,
            port,
            r.age_secs,
            if r.expired { " (expired)" } else { "" }
        );
    }
    Ok(())
}

pub fn stats(
    which: &Which,
    json: bool,
    watch: bool,
    interval: Duration,
    count: Option<u64>,
) -> Result<()> {
    let source = stats::Source::open(&name_of(which)?)?;
    if !watch {
        let snap = source.snapshot()?;
        if json {
            println!("{}", serde_json::to_string_pretty(&snap.json(None))?);
        } else {
            print!("{}", snap.table(None));
        }
        return Ok(());
    }
    // Refresh in place like `top`: counters, and rates since the last frame.
    let mut prev: Option<stats::Snapshot> = None;
    let mut n = 0u64;
    loop {
        let snap = source.snapshot()?;
        if json {
            println!("{}", serde_json::to_string(&snap.json(prev.as_ref()))?);
        } else {
            print!("\x1b[2J\x1b[H");
            println!(
                "netbridge stats: {} (every {:.1}s, Ctrl-C to quit)\n",
                snap.topology,
                interval.as_secs_f64()
            );
            print!("{}", snap.table(prev.as_ref()));
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
        prev = Some(snap);
        n += 1;
        if count.is_some_and(|c| n >= c) {
            return Ok(());
        }
        std::thread::sleep(interval);
    }
}

/// `stats --programs`: the topology's programs sampled over `interval`.
pub fn programs(which: &Which, json: bool, interval: Duration) -> Result<()> {
    let name = name_of(which)?;
    let dir = netbridge::state::State::load(&name)?
        .with_context(|| format!("no topology named {name:?} is up"))?
        .pin_dir
        .with_context(|| format!("topology {name} has no datapath loaded"))?;
    let pins = netbridge::bpf::PinDir(dir);
    let rates = {
        use netbridge::progstats as ps;
        let _on = ps::enable()?;
        let before = ps::snapshot(&pins)?;
        // On stderr, so a script can start its traffic once measuring runs.
        eprintln!(
            "sampling {} programs for {:.1}s",
            before.programs.len(),
            interval.as_secs_f64()
        );
        std::thread::sleep(interval);
        ps::delta(&before, &ps::snapshot(&pins)?)
    };
    if json {
        let v = serde_json::json!({"topology": name, "interval_secs": interval.as_secs_f64(), "programs": rates});
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", netbridge::progstats::table(&rates, interval));
    }
    Ok(())
}

pub fn exec(ns: &str, cmd: &[String]) -> Result<()> {
    if !netns::exists(ns) {
        bail!("network namespace {ns:?} does not exist (see `ip netns list`)");
    }
    let f = netns::open(&Netns::named(ns))?;
    // Single-threaded here, so switching this process is safe. Like
    // `ip netns exec`, give the command its own /sys for the new namespace.
    nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
    remount_sys();
    let argv: Vec<CString> = cmd
        .iter()
        .map(|a| CString::new(a.as_str()))
        .collect::<Result<_, _>>()
        .context("argument contains a NUL byte")?;
    let err = nix::unistd::execvp(&argv[0], &argv).unwrap_err();
    bail!("exec {}: {err}", cmd[0])
}

fn remount_sys() {
    use nix::mount::{MsFlags, mount, umount2};
    if nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).is_err() {
        return;
    }
    let _ = mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    );
    let _ = umount2("/sys", nix::mount::MntFlags::MNT_DETACH);
    let _ = mount(
        Some("sysfs"),
        "/sys",
        Some("sysfs"),
        MsFlags::empty(),
        None::<&str>,
    );
}
