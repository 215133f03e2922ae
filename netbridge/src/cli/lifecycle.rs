//! `up`, `down`, `status`, `check`: the topology's life cycle.
use std::time::Duration;

use anyhow::{Context, Result, bail};
use netbridge::{state::State, topology};

use super::common::{Which, load, name_of};

pub struct UpArgs {
    pub json: bool,
    pub reload: bool,
    pub log_level: Option<log::LevelFilter>,
    pub log_duration: Option<Duration>,
}

/// Prints the topology's warnings (with its attached ports, if up).
fn warn(t: &netbridge::config::Topology, which: &Which) {
    let file = match &which.file {
        Some(f) => f.display().to_string(),
        None if which.name.is_some() => format!("<{}>", t.name),
        None => "<default lab>".to_string(),
    };
    let attached = State::load(&t.name)
        .ok()
        .flatten()
        .map(|s| s.attachments)
        .unwrap_or_default();
    for w in t
        .mtu_warnings(&attached, &file)
        .into_iter()
        .chain(t.nat_warnings(&file))
    {
        eprintln!("netbridge: warning: {w}");
    }
}

pub fn up(which: &Which, a: UpArgs) -> Result<()> {
    let t = load(which)?;
    warn(&t, which);
    let report = topology::up_with(&t, topology::UpOptions { reload: a.reload })
        .with_context(|| format!("up {}", t.name))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if report.changes.is_empty() {
        println!("{}: up to date, no changes", t.name);
    } else {
        for c in &report.changes {
            println!("  {c}");
        }
        println!("{}: up ({} changes)", t.name, report.changes.len());
    }
    if let Some(msg) = &report.fault_not_reached {
        eprintln!("netbridge: {msg}");
    }
    if let Some(level) = a.log_level {
        super::logs::follow(&t.name, level, a.log_duration)?;
    }
    Ok(())
}

/// `down`: a name that is not up is an error (a typo must not pass for
/// success); a file whose topology is not up has nothing to remove.
pub fn down(which: &Which) -> Result<()> {
    let name = name_of(which)?;
    if State::load(&name)?.is_none() {
        if which.name.is_some() {
            let up = State::list();
            let running = match up.len() {
                0 => "none is".to_string(),
                n if n <= 10 => format!("running: {}", up.join(", ")),
                n => format!("running: {}, and {} more", up[..10].join(", "), n - 10),
            };
            bail!("no topology named {name:?} is up ({running}); nothing was changed");
        }
        println!("{name}: not up, nothing to remove");
        return Ok(());
    }
    let report = topology::down(&name)?;
    for d in &report.done {
        println!("  {d}");
    }
    println!("{name}: down");
    Ok(())
}

pub fn status(which: &Which, json: bool) -> Result<()> {
    let t = load(which)?;
    let st = topology::status(&t)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&st)?);
        return Ok(());
    }
    println!("topology {}", t.name);
    for ns in st {
        if !ns.exists {
            println!("namespace {}: missing", ns.name);
            continue;
        }
        println!("namespace {}", ns.name);
        for l in ns.links {
            println!(
                "  {:<15} {:<7} {:<4} mtu {:<5} {}{}{}",
                l.name,
                l.kind.as_deref().unwrap_or("-"),
                if l.up { "UP" } else { "DOWN" },
                l.mtu,
                l.master.map(|m| format!("master {m} ")).unwrap_or_default(),
                l.addresses.join(" "),
                if l.programs.is_empty() {
                    String::new()
                } else {
                    format!("  bpf: {}", l.programs.join(","))
                }
            );
        }
    }
    Ok(())
}

pub fn check(file: Option<std::path::PathBuf>) -> Result<()> {
    let which = Which::file(file);
    let t = load(&which)?;
    warn(&t, &which);
    println!(
        "{}: ok ({} namespaces, {} links, {} forwards)",
        t.name,
        t.namespaces.len(),
        t.links.len(),
        t.forwards.len()
    );
    Ok(())
}
