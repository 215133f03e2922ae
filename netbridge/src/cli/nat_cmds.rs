//! `conntrack`, `gc`, `forward`: the NAT of a running topology, through its
//! pinned maps.
use std::{fmt::Write as _, io::Write as _, time::Duration};

use anyhow::{Context, Result, bail};
use netbridge::{
    config::{Forward, PortSpec, Proto},
    stats, topology,
};

use super::common::{Which, journaled, name_of};

/// Writes `text` to stdout. False when the reader went away (`| head`):
/// the output ends quietly instead of panicking like `println!`.
fn emit(text: &str) -> Result<bool> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        r => r.map(|()| true).context("writing to stdout"),
    }
}

pub fn conntrack(which: &Which, json: bool) -> Result<()> {
    let source = stats::Source::open(&name_of(which)?)?;
    let ct = source.maps.nat.conntrack()?;
    let now = netbridge::bpf::monotonic_ns();
    let ct6 = source
        .maps
        .nat6
        .as_ref()
        .map_or(vec![], |m| m.sessions(now));
    let counts6 = source
        .maps
        .nat6
        .as_ref()
        .map(|m| m.counts())
        .unwrap_or_default();
    if json {
        let mut v = serde_json::to_value(&ct)?;
        v["sessions6"] = serde_json::to_value(&ct6)?;
        v["live_sessions6"] = counts6.live.into();
        v["high_water_sessions6"] = counts6.high_water.into();
        emit(&format!("{}\n", serde_json::to_string_pretty(&v)?))?;
        return Ok(());
    }
    let mut t = String::new();
    writeln!(
        t,
        "{:<5} {:<8} {:<12} {:<21} {:<21} {:<21} {:>7} {:>8}",
        "proto", "kind", "state", "inside", "external", "remote", "idle", "expires"
    )?;
    for s in &ct.sessions {
        writeln!(
            t,
            "{:<5} {:<8} {:<12} {:<21} {:<21} {:<21} {:>6.0}s {:>7.0}s",
            s.proto,
            s.kind,
            s.state,
            s.inside,
            s.external,
            s.remote,
            s.idle_secs,
            s.expires_in_secs
        )?;
    }
    for s in &ct6 {
        writeln!(
            t,
            "{:<6} {:<11} {} -> {} -> {}  idle {:.0}s, expires {:.0}s",
            s.proto, s.state, s.inside, s.external, s.remote, s.idle_secs, s.expires_in_secs
        )?;
    }
    writeln!(
        t,
        "\nsessions: {} listed, {} live (kernel count; highest {}), limit {}; \
         NAT66: {} listed, {} live (highest {}), limit {}",
        ct.sessions.len(),
        ct.live_sessions,
        ct.high_water_sessions,
        ct.max_sessions,
        ct6.len(),
        counts6.live,
        counts6.high_water,
        ct.max_sessions
    )?;
    writeln!(
        t,
        "in-kernel sweep every {} ms: {} sweeps, last {}",
        ct.sweep_interval_ms,
        ct.sweeps,
        ct.last_sweep_secs_ago
            .map_or("never".into(), |s| format!("{s:.1}s ago"))
    )?;
    for p in &ct.pools {
        writeln!(
            t,
            "port pool {}: {} of {} in use ({:.1}%)",
            p.proto,
            p.ports_in_use,
            p.pool_size,
            100.0 * p.ports_in_use as f64 / p.pool_size.max(1) as f64
        )?;
    }
    emit(&t)?;
    Ok(())
}

pub fn gc(which: &Which, every: Option<Duration>, count: Option<u64>) -> Result<()> {
    let mut source = stats::Source::open(&name_of(which)?)?;
    let mut rounds = 0u64;
    loop {
        let n = source.maps.nat.gc()?;
        let live = source.maps.nat.live_sessions();
        if !emit(&format!("gc: removed {n} expired sessions, {live} live\n"))? {
            return Ok(());
        }
        rounds += 1;
        match every {
            Some(d) if count.is_none_or(|c| rounds < c) => std::thread::sleep(d),
            _ => return Ok(()),
        }
    }
}

/// `forward add`: one more forward, validated with the rest.
pub fn forward_add(which: &Which, proto: &str, port: &str, to: &str) -> Result<()> {
    let name = name_of(which)?;
    let mut forwards = journaled(&name)?.forwards;
    forwards.push(Forward {
        proto: parse_proto(proto)?,
        port: PortSpec { raw: port.into() },
        to: to.into(),
    });
    apply_forwards(&name, forwards, "add")
}

/// `forward del`: removes the forward of `proto` on `port` (as written).
pub fn forward_del(which: &Which, proto: &str, port: &str) -> Result<()> {
    let name = name_of(which)?;
    let p = parse_proto(proto)?;
    let mut forwards = journaled(&name)?.forwards;
    let before = forwards.len();
    forwards.retain(|f| !(f.proto == p && f.port.raw == port));
    if forwards.len() == before {
        bail!("{name}: no {proto} forward on port {port:?}");
    }
    apply_forwards(&name, forwards, "del")
}

fn apply_forwards(name: &str, forwards: Vec<Forward>, op: &str) -> Result<()> {
    let changes = topology::set_forwards(name, forwards, &format!("<{name} + forward {op}>"))
        .with_context(|| format!("forward {op} on {name}"))?;
    for c in &changes {
        println!("  {c}");
    }
    Ok(())
}

fn parse_proto(proto: &str) -> Result<Proto> {
    Ok(match proto {
        "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        other => bail!("protocol {other:?}: must be tcp or udp"),
    })
}

pub fn forward_list(which: &Which, json: bool) -> Result<()> {
    let source = stats::Source::open(&name_of(which)?)?;
    let rows = source.maps.nat.forward_uses()?;
    if json {
        emit(&format!("{}\n", serde_json::to_string_pretty(&rows)?))?;
        return Ok(());
    }
    let mut t = format!("{:<5} {:<12} {:<21} {:>8}\n", "proto", "port", "to", "hits");
    for r in rows {
        writeln!(
            t,
            "{:<5} {:<12} {:<21} {:>8}",
            r.proto, r.port, r.to, r.hits
        )?;
    }
    emit(&t)?;
    Ok(())
}
