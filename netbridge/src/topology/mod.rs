//! The engine: turning a [`Topology`] into namespaces, veths, a bridge,
//! addresses, routes and attached programs (`up`), changing one port of a
//! running topology (`add_port`, `remove_port`), and back (`down`).
//!
//! `up` is a reconciler: every step checks what exists and only changes what
//! differs, so a second run reports no changes and a manual change is
//! repaired. It runs in named phases (see [`phases`]), the per-port work of
//! each phase being the same routine `add_port` uses. Every object it
//! creates is journaled in [`State`] before it is created, so a failure
//! rolls back what this run created, and a crash leaves a journal that
//! `down` (or the next `up`) finishes. One topology is changed by one
//! process at a time (a lock under /run/netbridge/locks).
use std::io;

use rtnetlink::Handle;

use crate::{
    bpf::BpfError,
    config::{ConfigError, Port, Topology},
    lock::{self, Lock, LockError},
    netlink::{self, NetlinkError},
    netns::{self, Netns, NetnsError},
    state::{State, StateError},
};

mod dad;
mod nat;
mod phases;
mod port;
mod run;
mod status;
mod teardown;
mod up;

pub use nat::{PortForward, forward_targets, set_forwards};
pub use port::{PortReport, add_port, remove_port};
pub use run::{FAULT_ENV, Step};
pub use status::{LinkStatus, NsStatus, Probe, probe, status};
pub use teardown::{DownReport, Teardown, UndoError, down, teardown};
pub use up::{UpOptions, UpReport, up, up_with};

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("in namespace {ns}: {source}")]
    Netlink {
        ns: String,
        #[source]
        source: NetlinkError,
    },
    #[error(transparent)]
    Bpf(#[from] BpfError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("no topology named {0:?} is up")]
    NotUp(String),
    #[error("sysctl {key} in namespace {ns}: {source}")]
    Sysctl {
        ns: String,
        key: String,
        #[source]
        source: io::Error,
    },
    #[error("TC filter of {ifname} in namespace {ns}: {source}")]
    Filter {
        ns: String,
        ifname: String,
        #[source]
        source: io::Error,
    },
    /// Something on the host is in the way; nothing was changed.
    #[error("{0}")]
    Conflict(String),
    /// `ipv6_dad = "wait"`: an address failed or did not finish DAD.
    #[error("IPv6 address {addr} on {ifname} in namespace {ns}: {problem}")]
    Dad {
        ns: String,
        ifname: String,
        addr: String,
        problem: String,
    },
    #[error("interface {ifname} is missing in namespace {ns} right after it was created")]
    Vanished { ns: String, ifname: String },
    /// NETBRIDGE_FAULT made step `step` fail (tests of the rollback).
    #[error("injected fault at step {step} ({kind:?}: {what}) (NETBRIDGE_FAULT={spec})")]
    Fault {
        step: usize,
        kind: Step,
        what: String,
        spec: String,
    },
    #[error("{source}\n  rolled back: {}{}", if undone.is_empty() { "nothing was created".to_string() } else { undone.join(", ") },
        if rollback_errors.is_empty() { String::new() } else { format!("\n  rollback failed for: {}", list(rollback_errors)) })]
    RolledBack {
        #[source]
        source: Box<TopologyError>,
        undone: Vec<String>,
        rollback_errors: Vec<UndoError>,
    },
    #[error("teardown of {name} incomplete:\n  - {}", errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n  - "))]
    Teardown {
        name: String,
        errors: Vec<UndoError>,
    },
}

fn list(errors: &[UndoError]) -> String {
    errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

type Result<T, E = TopologyError> = std::result::Result<T, E>;

impl From<NetlinkError> for TopologyError {
    fn from(source: NetlinkError) -> Self {
        TopologyError::Netlink {
            ns: String::new(),
            source,
        }
    }
}

/// The namespace a topology calls "host": its own `host_netns`, or the one
/// netbridge runs in.
pub fn host_of(t: &Topology) -> Netns {
    match &t.host_netns {
        Some(n) => Netns::Named(n.clone()),
        None => Netns::Current,
    }
}

/// The namespace of a link endpoint (None: the host).
fn ns_of(t: &Topology, netns: &Option<String>) -> Netns {
    match netns {
        Some(n) => Netns::Named(n.clone()),
        None => host_of(t),
    }
}

/// Every port on the bridge of the journaled topology: its bridged
/// namespaces and the ports attached since.
pub fn ports(st: &State) -> Vec<Port> {
    st.topology
        .as_ref()
        .map(|t| t.ports(&st.attachments))
        .unwrap_or_default()
}

/// Whether port `p`'s namespace is there (a runtime's namespace file
/// disappears with its container).
pub fn port_netns_exists(p: &Port) -> bool {
    port::netns_of(p).exists()
}

/// Whether interface `ifname` exists in the host namespace of `t` (for the
/// config's uplink check). A host namespace netbridge has not made yet has
/// no interfaces.
pub fn host_has_link(host_netns: Option<&str>, ifname: &str) -> bool {
    let ns = match host_netns {
        Some(n) if !netns::exists(n) => return false,
        Some(n) => Netns::named(n),
        None => Netns::Current,
    };
    netns::run_in(&ns, |h| async move {
        netlink::link(&h, ifname).await.ok().flatten().is_some()
    })
    .unwrap_or(false)
}

/// `t` with `prefix` put before its name and every namespace name
/// (references in links and forwards included), re-validated.
pub fn prefixed(t: &Topology, prefix: &str, file: &str) -> Result<Topology, ConfigError> {
    let mut t = t.clone();
    let p = |n: &mut String| *n = format!("{prefix}{n}");
    p(&mut t.name);
    if let Some(h) = &mut t.host_netns {
        p(h);
    }
    for ns in &mut t.namespaces {
        // Keep the host-side name the file implied (the prefixed default
        // would not fit 15 bytes).
        ns.host_ifname = Some(Topology::host_ifname(ns));
        p(&mut ns.name);
    }
    for l in &mut t.links {
        for e in [&mut l.a, &mut l.b] {
            if let Some(n) = &mut e.netns {
                p(n);
            }
        }
    }
    for f in &mut t.forwards {
        p(&mut f.to);
    }
    for pair in &mut t.isolate {
        pair.iter_mut().for_each(p);
    }
    // Re-validate: a prefixed name may now be too long.
    let text = toml::to_string(&t).map_err(|e| ConfigError::Parse {
        file: file.to_string(),
        message: e.to_string(),
    })?;
    Topology::parse(&text, file, &|_| true)
}

/// Topology `name`'s lock, held for as long as this lives: the lock `up`,
/// `down`, `forward` and port changes take, so a caller can make several
/// changes as one (the CNI plugin: the network, a port, its forwards) and
/// no other netbridge process sees them half done.
#[derive(Debug)]
pub struct Held {
    name: String,
    _lock: Lock,
}

/// Takes topology `name`'s lock (waiting while another process holds it).
pub fn hold(name: &str) -> Result<Held> {
    Ok(Held {
        name: name.into(),
        _lock: lock_topology(name)?,
    })
}

impl Held {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The journal of the topology (None: it is not up).
    pub fn state(&self) -> Result<Option<State>> {
        Ok(State::load(&self.name)?)
    }

    /// `up` of `t` (named as the lock) under this lock: creates or
    /// repairs it, keeping its attached ports.
    pub fn up(&self, t: &Topology) -> Result<UpReport> {
        if t.name != self.name {
            return Err(TopologyError::Conflict(format!(
                "topology {} brought up under the lock of {}",
                t.name, self.name
            )));
        }
        up::up_locked(t, UpOptions::default())
    }
}

/// Takes the lock of topology `name` (waiting, with a warning, while
/// another netbridge process holds it).
fn lock_topology(name: &str) -> Result<Lock> {
    Ok(lock::exclusive(name, |pid| {
        let by = pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
        log::warn!("topology {name} is being changed by another netbridge{by}: waiting for it");
    })?)
}

/// Runs `f` in `ns` and flattens both error layers, naming the namespace
/// in bare netlink errors.
fn in_ns<T, E, F, Fut>(ns: &Netns, f: F) -> Result<T>
where
    T: Send,
    E: Into<TopologyError> + Send,
    F: FnOnce(Handle) -> Fut + Send,
    Fut: Future<Output = Result<T, E>>,
{
    match netns::run_in(ns, f)? {
        Ok(v) => Ok(v),
        Err(e) => Err(match e.into() {
            TopologyError::Netlink { ns: n, source } if n.is_empty() => TopologyError::Netlink {
                ns: ns.label().to_string(),
                source,
            },
            other => other,
        }),
    }
}
