//! What the commands share: which topology they act on, durations, Ctrl-C.
use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result};
use clap::Args;
use netbridge::{
    config::{ConfigError, DEFAULT_LAB, Topology},
    state::State,
    topology::{self, host_has_link},
};

#[derive(Args, Clone)]
pub struct Which {
    /// Topology file (TOML). Without it: the embedded default lab.
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// A topology brought up earlier, by name (its journaled copy is used).
    #[arg(long, conflicts_with = "file")]
    pub name: Option<String>,
    /// Prefix the topology's name and every namespace name (run several
    /// copies of one file side by side).
    #[arg(long, conflicts_with = "name")]
    pub prefix: Option<String>,
}

impl Which {
    pub fn file(file: Option<PathBuf>) -> Which {
        Which {
            file,
            name: None,
            prefix: None,
        }
    }
}

/// "5s", "500ms", "1m" or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (try 5s, 1m)"))?;
    if !(0.0..=86400.0).contains(&v) {
        return Err(format!("duration {s:?} out of range"));
    }
    Ok(Duration::from_secs_f64(v * mult))
}

/// Parses and validates the topology named by `which`.
pub fn load(which: &Which) -> Result<Topology> {
    if let Some(name) = &which.name {
        return journaled(name);
    }
    let (text, file) = match &which.file {
        Some(path) => (
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                file: path.display().to_string(),
                source,
            })?,
            path.display().to_string(),
        ),
        None => (DEFAULT_LAB.to_string(), "<default lab>".to_string()),
    };
    // The uplink check needs the host namespace, which the file names:
    // parse once without it, then validate for real.
    let mut t = Topology::parse(&text, &file, &|_| true)?;
    if let Some(p) = &which.prefix {
        t = topology::prefixed(&t, p, &file)?;
    }
    revalidate(&t, &file)
}

/// Validates `t` again as file `file` would be, with the real uplink check.
pub fn revalidate(t: &Topology, file: &str) -> Result<Topology> {
    let host_ns = t.host_netns.clone();
    let text = toml::to_string(t).context("re-serializing the topology")?;
    Ok(Topology::parse(&text, file, &|ifname| {
        host_has_link(host_ns.as_deref(), ifname)
    })?)
}

/// The topology `name` as its journal recorded it.
pub fn journaled(name: &str) -> Result<Topology> {
    State::load(name)?
        .with_context(|| format!("no topology named {name:?} is up"))?
        .topology
        .with_context(|| format!("state of {name:?} has no topology recorded"))
}

pub fn name_of(which: &Which) -> Result<String> {
    Ok(match (&which.name, &which.file) {
        (Some(n), _) => n.clone(),
        (None, Some(_)) => load(which)?.name,
        (None, None) => format!(
            "{}{}",
            which.prefix.as_deref().unwrap_or(""),
            Topology::default_lab().name
        ),
    })
}

/// A flag set on SIGINT/SIGTERM instead of dying, so what runs can stop
/// cleanly (the demo tears its lab down).
pub fn stop_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let set = flag.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        if let Ok(rt) = rt {
            rt.block_on(async {
                use tokio::signal::unix::{SignalKind, signal};
                let mut term = signal(SignalKind::terminate()).ok();
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
                }
            });
            set.store(true, Ordering::Relaxed);
        }
    });
    flag
}
