//! `agent`: one optional long-running process for a host. It serves
//! `/metrics` for every running topology (each family once, samples
//! labelled by topology; the topologies are looked up again at every
//! scrape, so ones that come and go need no restart) and follows the
//! datapath log of each to stdout (the journal, under systemd), picking up
//! topologies, reloaded programs and removed topologies every `--rescan`.
//! SIGTERM or SIGINT stops it cleanly (exit 0).
use std::{
    collections::BTreeMap,
    io::Write,
    net::SocketAddr,
    rc::Rc,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use netbridge::{
    metrics,
    state::State,
    stats::{Source, StatsError},
};

use super::{
    common::stop_flag,
    logs::{self, DatapathLog},
};

pub struct AgentArgs {
    pub listen: SocketAddr,
    /// Only topologies whose name starts with this.
    pub prefix: Option<String>,
    pub rescan: Duration,
    /// None: do not follow logs.
    pub log_level: Option<log::LevelFilter>,
    /// Stop after this long (tests, bounded runs).
    pub duration: Option<Duration>,
}

/// Names of the running topologies the agent serves.
fn topologies(prefix: Option<&str>) -> Vec<String> {
    State::list()
        .into_iter()
        .filter(|n| prefix.is_none_or(|p| n.starts_with(p)))
        .collect()
}

/// One scrape: every topology's snapshot in one exposition, plus whether
/// each could be read. A topology without a datapath (no bridge ports)
/// has no samples but counts as read.
fn scrape(prefix: Option<&str>) -> String {
    let mut snaps = Vec::new();
    let mut read = Vec::new();
    for name in topologies(prefix) {
        let snap = Source::open(&name).and_then(|s| s.snapshot());
        let ok = match snap {
            Ok(s) => {
                snaps.push(s);
                true
            }
            Err(StatsError::NoDatapath(_)) => true,
            // Removed between listing and reading: not there any more.
            Err(StatsError::NotUp(_)) => continue,
            Err(e) => {
                eprintln!("netbridge agent: reading {name}: {e}");
                false
            }
        };
        read.push((name, ok));
    }
    metrics::agent_families(&read) + &metrics::exposition(&snaps)
}

/// The log readers of one topology and the programs they were made for.
struct Followed {
    ids: Vec<u32>,
    loggers: Vec<aya_log::EbpfLogger<DatapathLog>>,
}

pub fn run(a: AgentArgs) -> Result<()> {
    let stop = stop_flag();
    let (listen, prefix) = (a.listen, a.prefix.clone());
    let server_stop = stop.clone();
    // Bound here, so a taken port fails the start.
    let listener = std::net::TcpListener::bind(listen)
        .with_context(|| format!("metrics server on {listen}"))?;
    let server = std::thread::spawn(move || {
        let what = match &prefix {
            Some(p) => format!("metrics of every topology named {p}*"),
            None => "metrics of every running topology".to_string(),
        };
        let render = move || -> metrics::Render { Rc::new(move || Ok(scrape(prefix.as_deref()))) };
        metrics::serve_on(listener, None, &what, render, Some(server_stop))
    });
    let mut followed: BTreeMap<String, Followed> = BTreeMap::new();
    let start = Instant::now();
    let mut last_scan: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) && a.duration.is_none_or(|d| start.elapsed() < d) {
        if server.is_finished() {
            break;
        }
        if let Some(level) = a.log_level
            && last_scan.is_none_or(|t| t.elapsed() >= a.rescan)
        {
            rescan(&mut followed, a.prefix.as_deref(), level);
            last_scan = Some(Instant::now());
        }
        for f in followed.values_mut() {
            for l in &mut f.loggers {
                l.flush();
            }
        }
        let _ = std::io::stdout().flush();
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let served = server
        .join()
        .map_err(|_| anyhow::anyhow!("the metrics server panicked"))?;
    served.with_context(|| format!("metrics server on {listen}"))?;
    eprintln!("netbridge agent: stopped");
    Ok(())
}

/// Follows topologies that appeared, again those whose programs changed
/// (`up --reload`, `down` + `up`), and drops those that went.
fn rescan(
    followed: &mut BTreeMap<String, Followed>,
    prefix: Option<&str>,
    level: log::LevelFilter,
) {
    let names = topologies(prefix);
    followed.retain(|name, _| {
        let keep = names.contains(name);
        if !keep {
            eprintln!("netbridge agent: {name} is gone");
        }
        keep
    });
    for name in names {
        let Ok(mut ids) = logs::attached_ids(&name) else {
            continue;
        };
        ids.sort_unstable();
        if followed.get(&name).is_some_and(|f| f.ids == ids) {
            continue;
        }
        match logs::loggers(&ids, level, Some(&name)) {
            // No datapath (no bridge ports) or not attached yet.
            Ok(loggers) if loggers.is_empty() => {
                followed.insert(name, Followed { ids, loggers });
            }
            Ok(loggers) => {
                eprintln!(
                    "netbridge agent: following the datapath log of {name} ({} buffer(s))",
                    loggers.len()
                );
                followed.insert(name, Followed { ids, loggers });
            }
            Err(e) => eprintln!("netbridge agent: {name}: {e:#}"),
        }
    }
}
