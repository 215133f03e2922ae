//! `log` and `up --log-level`: the datapath's own log (aya-log ring
//! buffers), printed with times and drop reasons by name.
use std::{
    io::Write,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use netbridge::{netns, state::State, topology};

use super::common::stop_flag;

/// Follows the aya-log ring buffers of the programs attached for `name`
/// until Ctrl-C or `duration`.
pub fn follow(name: &str, level: log::LevelFilter, duration: Option<Duration>) -> Result<()> {
    let mut loggers = loggers(&attached_ids(name)?, level)?;
    if loggers.is_empty() {
        bail!("{name}: no netbridge program with a log buffer is attached");
    }
    eprintln!(
        "netbridge: following the datapath log of {name} ({} buffer(s); at most 10 events of a kind per CPU per second){}",
        loggers.len(),
        if duration.is_none() {
            ", Ctrl-C to stop"
        } else {
            ""
        }
    );
    let stop = stop_flag();
    let start = Instant::now();
    loop {
        for l in &mut loggers {
            l.flush();
        }
        let _ = std::io::stdout().flush();
        if stop.load(Ordering::Relaxed) || duration.is_some_and(|d| start.elapsed() >= d) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Kernel ids of the TC programs on the topology's ports and uplink.
fn attached_ids(name: &str) -> Result<Vec<u32>> {
    let st = State::load(name)?.with_context(|| format!("no topology named {name:?} is up"))?;
    let t = st
        .topology
        .as_ref()
        .with_context(|| format!("state of {name:?} has no topology recorded"))?;
    let mut ifnames: Vec<String> = topology::ports(&st)
        .into_iter()
        .map(|p| p.host_ifname)
        .collect();
    ifnames.extend(t.uplink.as_ref().map(|u| u.ifname.clone()));
    Ok(netns::run_blocking_in(&topology::host_of(t), move || {
        ifnames
            .iter()
            .flat_map(|i| netbridge::bpf::attached_tc_ids(i))
            .collect()
    })?)
}

/// One reader per distinct log buffer of programs `ids` (programs of one
/// load share theirs).
fn loggers(ids: &[u32], level: log::LevelFilter) -> Result<Vec<aya_log::EbpfLogger<DatapathLog>>> {
    let mut seen = std::collections::HashSet::new();
    let mut loggers = Vec::new();
    for info in aya::programs::loaded_programs().flatten() {
        if !ids.contains(&info.id()) {
            continue;
        }
        for m in info.map_ids().ok().flatten().unwrap_or_default() {
            let is_log = aya::maps::MapInfo::from_id(m)
                .ok()
                .is_some_and(|mi| mi.name_as_str() == Some("AYA_LOGS"));
            if is_log && seen.insert(m) {
                let logger =
                    aya_log::EbpfLogger::init_from_id_with_logger(info.id(), DatapathLog { level })
                        .with_context(|| {
                            format!("reading the log buffer of program {}", info.id())
                        })?;
                loggers.push(logger);
            }
        }
    }
    Ok(loggers)
}

/// Prints datapath log records (from aya-log) to stdout with a UTC time,
/// naming drop reasons (the programs send only the code).
struct DatapathLog {
    level: log::LevelFilter,
}

impl log::Log for DatapathLog {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= self.level
    }

    fn log(&self, r: &log::Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let mut msg = r.args().to_string();
        if let Some(rest) = msg.strip_prefix("drop reason ") {
            let code: Option<usize> = rest.split_whitespace().next().and_then(|c| c.parse().ok());
            if let Some(name) = code.and_then(|c| netbridge_common::drop_reason::NAMES.get(c)) {
                msg = format!("drop {name} (reason {rest}");
                msg = msg.replacen(" on ", ") on ", 1);
            }
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let (s, ms) = (now.as_secs() % 86400, now.subsec_millis());
        println!(
            "{:02}:{:02}:{:02}.{ms:03} {:<5} {msg}",
            s / 3600,
            s / 60 % 60,
            s % 60,
            r.level()
        );
    }

    fn flush(&self) {}
}
