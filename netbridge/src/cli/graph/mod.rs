//! `graph`: a picture of a topology (namespaces, bridge, ports, links,
//! uplink, forwards, addresses) as SVG, Graphviz DOT or JSON. For a running
//! topology, port and uplink edges carry live counters and rates read from
//! the BPF maps (two snapshots `--interval` apart) and forwards their
//! sessions. The SVG is laid out here (no Graphviz needed at run time); the
//! DOT form is for those who want Graphviz's layout.
use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use clap::ValueEnum;
use netbridge::{
    config::{Port, Topology},
    state::State,
    stats,
};

use super::common::{Which, journaled, load};

mod dot;
mod layout;
mod model;
mod svg;

pub use model::Graph;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    Svg,
    Dot,
    Json,
}

/// `netbridge graph`.
pub fn run(
    which: &Which,
    format: Format,
    interval: Duration,
    output: Option<PathBuf>,
) -> Result<()> {
    let g = build(which, interval)?;
    let text = match format {
        Format::Json => serde_json::to_string_pretty(&g)? + "\n",
        Format::Dot => dot::render(&g),
        Format::Svg => svg::render(&g),
    };
    match output {
        Some(path) => {
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
        }
        None => {
            print!("{text}");
            Ok(())
        }
    }
}

/// The graph of the topology `which` names, live if it is running.
pub fn build(which: &Which, interval: Duration) -> Result<Graph> {
    let t = match &which.name {
        Some(name) => journaled(name)?,
        None => load(which)?,
    };
    let st = State::load(&t.name)?;
    let attached: Vec<Port> = st
        .as_ref()
        .map(|s| s.attachments.clone())
        .unwrap_or_default();
    let live = match st.as_ref().and_then(|s| s.pin_dir.as_ref()) {
        Some(_) => Some(sample(&t, interval)?),
        None => None,
    };
    Ok(model::build(&t, &attached, st.is_some(), live.as_ref()))
}

/// Two snapshots of the running topology's maps, `interval` apart (one
/// when the interval is zero: counters without rates).
fn sample(t: &Topology, interval: Duration) -> Result<model::Sample> {
    let source = stats::Source::open(&t.name)
        .with_context(|| format!("reading the maps of running topology {}", t.name))?;
    let first = source.snapshot()?;
    if interval.is_zero() {
        return Ok(model::Sample {
            now: first,
            prev: None,
        });
    }
    std::thread::sleep(interval);
    Ok(model::Sample {
        now: source.snapshot()?,
        prev: Some(first),
    })
}
