//! `up`, `down`, `status`, `check`: the topology's life cycle.
use std::time::Duration;

use anyhow::{Context, Result};
use netbridge::topology;

use super::common::{Which, load, name_of};

pub struct UpArgs {
    pub json: bool,
    pub reload: bool,
    pub log_level: Option<log::LevelFilter>,
    pub log_duration: Option<Duration>,
}

pub fn up(which: &Which, a: UpArgs) -> Result<()> {
    let t = load(which)?;
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

pub fn down(which: &Which) -> Result<()> {
    let name = name_of(which)?;
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
    let t = load(&Which::file(file))?;
    println!(
        "{}: ok ({} namespaces, {} links, {} forwards)",
        t.name,
        t.namespaces.len(),
        t.links.len(),
        t.forwards.len()
    );
    Ok(())
}
