//! Undoing what a journal lists: `down`, a failed run's rollback, a removed
//! port. Teardown never stops at the first error: every object is tried,
//! and the errors come back as one typed list.
use std::{fs, io, net::IpAddr, path::PathBuf, str::FromStr};

use ipnet::IpNet;
use serde::Serialize;

use super::{Result, TopologyError, host_of, in_ns, lock_topology, phases::sysctl_path};
use crate::{
    bpf::PinDir,
    netlink,
    netns::{self, Netns, NetnsError},
    state::{ChangedSysctl, State},
};

/// One object teardown could not undo.
#[derive(Debug, thiserror::Error)]
pub enum UndoError {
    #[error("remove pins {path}: {source}")]
    Pins {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("delete the TC filter of {ifname} in {ns}: {source}")]
    Filter {
        ns: String,
        ifname: String,
        #[source]
        source: io::Error,
    },
    #[error("restore {key} in {ns}: {source}")]
    Sysctl {
        ns: String,
        key: String,
        #[source]
        source: io::Error,
    },
    #[error("remove host route {dst}: {source}")]
    Route {
        dst: String,
        #[source]
        source: Box<TopologyError>,
    },
    #[error("delete {ifname} in {ns}: {source}")]
    Link {
        ns: String,
        ifname: String,
        #[source]
        source: Box<TopologyError>,
    },
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

/// What a teardown did and what it could not do.
#[derive(Debug, Default)]
pub struct Teardown {
    pub done: Vec<String>,
    pub errors: Vec<UndoError>,
}

/// Removes everything `st` lists, in reverse order of creation: pins (which
/// detaches the programs held by links), the port filters on interfaces
/// that stay, sysctls, host routes, links, namespaces.
/// Objects inside a namespace that goes anyway are not touched one by one.
pub fn teardown(st: &State) -> Teardown {
    let mut td = Teardown::default();
    let dying = |n: &Option<String>| {
        n.as_ref()
            .is_some_and(|n| st.netns.contains(n) || !Netns::from_record(&Some(n.clone())).exists())
    };
    if let Some(dir) = &st.pin_dir {
        for undo in detach_filters(st, &PinDir(dir.clone())) {
            td.record(undo);
        }
        match PinDir(dir.clone()).remove() {
            Ok(()) => td.done.push(format!("removed pins {}", dir.display())),
            Err(source) => td.errors.push(UndoError::Pins {
                path: dir.clone(),
                source,
            }),
        }
    }
    for s in st.sysctls.iter().rev().filter(|s| !dying(&s.netns)) {
        td.record(restore_sysctl(s));
    }
    let host = st.topology.as_ref().map(host_of).unwrap_or(Netns::Current);
    if !dying(&host.to_record()) {
        for (dst, via) in &st.host_routes {
            td.record(remove_host_route(&host, dst, via.as_deref()));
        }
    }
    for l in st.links.iter().rev().filter(|l| !dying(&l.netns)) {
        td.record(delete_link(&Netns::from_record(&l.netns), &l.ifname));
    }
    // Lab namespaces before the host namespace they hang off.
    for n in st.netns.iter().rev() {
        let undo = netns::delete(n).map(|()| Some(format!("deleted namespace {n}")));
        td.record(undo.map_err(UndoError::from));
    }
    td
}

/// Deletes the port filters (see [`crate::tcfilter`]) whose interface
/// outlives the teardown: a filter holds its program without a pin, so
/// removing the pins does not detach it. Interfaces deleted below (or in a
/// namespace deleted below) take theirs with them.
fn detach_filters(
    st: &State,
    pins: &PinDir,
) -> Vec<std::result::Result<Option<String>, UndoError>> {
    let host = st.topology.as_ref().map(host_of).unwrap_or(Netns::Current);
    let record = host.to_record();
    if record.as_ref().is_some_and(|n| st.netns.contains(n)) {
        return Vec::new();
    }
    let staying: Vec<String> = pins
        .filters()
        .into_iter()
        .map(|(_, ifname, _)| ifname)
        .filter(|i| !st.links.iter().any(|l| l.netns == record && &l.ifname == i))
        .collect();
    if staying.is_empty() {
        return Vec::new();
    }
    let ns = host.label().to_string();
    let run = netns::run_blocking_in(&host, move || {
        staying
            .into_iter()
            .filter_map(|ifname| {
                let index = nix::net::if_::if_nametoindex(ifname.as_str()).ok()?;
                Some(match crate::tcfilter::detach(index) {
                    Ok(true) => Ok(Some(format!("detached the TC filter of {ifname}"))),
                    Ok(false) => Ok(None),
                    Err(source) => Err(UndoError::Filter {
                        ns: ns.clone(),
                        ifname,
                        source,
                    }),
                })
            })
            .collect()
    });
    run.unwrap_or_else(|e| vec![Err(e.into())])
}

impl Teardown {
    fn record(&mut self, r: std::result::Result<Option<String>, UndoError>) {
        match r {
            Ok(Some(done)) => self.done.push(done),
            Ok(None) => {}
            Err(e) => self.errors.push(e),
        }
    }
}

fn restore_sysctl(s: &ChangedSysctl) -> std::result::Result<Option<String>, UndoError> {
    let ns = Netns::from_record(&s.netns);
    netns::run_blocking_in(&ns, || fs::write(sysctl_path(&s.key), &s.previous))?.map_err(
        |source| UndoError::Sysctl {
            ns: ns.label().into(),
            key: s.key.clone(),
            source,
        },
    )?;
    Ok(Some(format!("restored {}={}", s.key, s.previous)))
}

fn remove_host_route(
    host: &Netns,
    dst: &str,
    via: Option<&str>,
) -> std::result::Result<Option<String>, UndoError> {
    in_ns(host, |h| async move { del_route(&h, dst, via).await }).map_err(|e| {
        UndoError::Route {
            dst: dst.into(),
            source: Box::new(e),
        }
    })?;
    Ok(Some("removed host route".into()))
}

/// Deletes `ifname` in `ns` (nothing to report if it was not there).
fn delete_link(ns: &Netns, ifname: &str) -> std::result::Result<Option<String>, UndoError> {
    let deleted = in_ns(ns, |h| async move {
        match netlink::link(&h, ifname).await? {
            Some(link) => netlink::del_link(&h, link.index).await.map(|_| true),
            None => Ok(false),
        }
    });
    match deleted {
        Ok(true) => Ok(Some(format!("deleted {ifname} in {}", ns.label()))),
        Ok(false) => Ok(None),
        Err(e) => Err(UndoError::Link {
            ns: ns.label().into(),
            ifname: ifname.into(),
            source: Box::new(e),
        }),
    }
}

async fn del_route(h: &rtnetlink::Handle, dst: &str, via: Option<&str>) -> Result<()> {
    let dst = IpNet::from_str(dst).ok();
    let via = via.and_then(|v| IpAddr::from_str(v).ok());
    for v6 in [false, true] {
        for r in netlink::routes(h, v6).await? {
            if Some(r.dst) == dst && r.via == via {
                netlink::del_route(h, &r).await?;
            }
        }
    }
    Ok(())
}

/// What `down` did.
#[derive(Debug, Default, Serialize)]
pub struct DownReport {
    pub done: Vec<String>,
}

/// Tears down topology `name` as journaled (attached ports included);
/// unknown names are a no-op. Pre-existing namespaces stay, changed
/// sysctls get their old values back.
pub fn down(name: &str) -> Result<DownReport> {
    let _lock = lock_topology(name)?;
    let Some(st) = State::load(name)? else {
        return Ok(DownReport::default());
    };
    let td = teardown(&st);
    if !td.errors.is_empty() {
        return Err(TopologyError::Teardown {
            name: name.into(),
            errors: td.errors,
        });
    }
    st.remove()?;
    Ok(DownReport { done: td.done })
}
