//! `up`: the whole topology, under its lock, validated against what
//! exists, applied phase by phase, rolled back on failure.
use std::collections::HashMap;

use serde::Serialize;

use super::{
    Result, TopologyError, host_of, in_ns, lock_topology, ns_of, phases, port, run::Run,
    teardown::teardown,
};
use crate::{config::Topology, netlink, netns::Netns, state::State};

/// Options of [`up_with`].
#[derive(Debug, Clone, Copy, Default)]
pub struct UpOptions {
    /// Replace attached programs with this binary's, without a gap
    /// (upgrade); maps and sessions are kept.
    pub reload: bool,
}

/// What `up` did.
#[derive(Debug, Default, Serialize)]
pub struct UpReport {
    pub changes: Vec<String>,
    /// Set when NETBRIDGE_FAULT asked for a step this run never reached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault_not_reached: Option<String>,
}

/// Brings the topology up (or repairs it). See the module docs.
pub fn up(t: &Topology) -> Result<UpReport> {
    up_with(t, UpOptions::default())
}

/// [`up`] with options. Ports attached to the running topology (see
/// [`super::add_port`]) are kept and repaired like the file's own.
pub fn up_with(t: &Topology, opts: UpOptions) -> Result<UpReport> {
    let _lock = lock_topology(&t.name)?;
    up_locked(t, opts)
}

/// [`up_with`] for a caller that holds the topology's lock.
pub(super) fn up_locked(t: &Topology, opts: UpOptions) -> Result<UpReport> {
    let st = State::load(&t.name)?.unwrap_or_else(|| State::new(&t.name));
    t.check_ports(&st.attachments, &format!("<{} + attached ports>", t.name))?;
    preflight(t, &st)?;
    let mut run = Run::new(st)?;
    run.st.topology = Some(t.clone());
    let result = phases::apply(t, &mut run, opts);
    let run = conclude(run, result, None)?;
    Ok(UpReport {
        fault_not_reached: run.fault_not_reached(),
        changes: run.changes,
    })
}

/// Ends a run: on success the journal is saved; on failure what the run
/// created is undone and forgotten (with `attached`, the port this run
/// attached), older objects stay journaled, and the error says what was
/// rolled back.
pub(super) fn conclude(mut run: Run, result: Result<()>, attached: Option<&str>) -> Result<Run> {
    let e = match result {
        Ok(()) => {
            run.st.save()?;
            return Ok(run);
        }
        Err(e) => e,
    };
    let undone = teardown(&run.mine);
    run.st.forget(&run.mine);
    if let Some(name) = attached {
        run.st.attachments.retain(|a| a.name != name);
    }
    let _ = if run.st.is_empty() {
        run.st.remove()
    } else {
        run.st.save()
    };
    Err(TopologyError::RolledBack {
        source: Box::new(e),
        undone: undone.done,
        rollback_errors: undone.errors,
    })
}

/// Read-only checks against what already exists: an existing interface of
/// the wrong kind where the topology wants its own is refused up front.
/// Each namespace's links are listed once.
fn preflight(t: &Topology, st: &State) -> Result<()> {
    let mut wanted: HashMap<Netns, Vec<(String, &'static str)>> = HashMap::new();
    let host = host_of(t);
    let mut want = |ns: Netns, ifname: &str, kind| {
        wanted
            .entry(ns)
            .or_default()
            .push((ifname.to_string(), kind));
    };
    if let Some(b) = &t.bridge {
        want(host.clone(), &b.name, "bridge");
    }
    for p in t.ports(&st.attachments) {
        want(host.clone(), &p.host_ifname, "veth");
        want(port::netns_of(&p), &p.ifname, "veth");
    }
    for l in &t.links {
        for e in [&l.a, &l.b] {
            want(ns_of(t, &e.netns), &e.ifname, "veth");
        }
    }
    for (ns, ifaces) in wanted.iter().filter(|(ns, _)| ns.exists()) {
        let links = in_ns(ns, |h| async move { netlink::links(&h).await })?;
        let links = super::phases::by_name(&links);
        for (ifname, kind) in ifaces {
            let Some(l) = links.get(ifname.as_str()) else {
                continue;
            };
            if l.kind.as_deref() != Some(*kind) {
                return Err(TopologyError::Conflict(format!(
                    "interface {ifname} already exists in namespace {} as a {}, but the topology needs a {kind} there; \
                     nothing was changed",
                    ns.label(),
                    l.kind.as_deref().unwrap_or("physical device")
                )));
            }
        }
    }
    Ok(())
}
