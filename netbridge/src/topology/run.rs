//! One run of the engine: the journal it writes as it goes, what it created
//! (undone if the run fails), the changes it reports, and its fault points.
//!
//! Every change to the host is a step. Tests set `NETBRIDGE_FAULT=fail:N`
//! to make step N fail (after it happened: the rollback must undo it) or
//! `crash:N` to abort the process right after it (like kill -9): the
//! journal is written before each object is made, so the next `up` or
//! `down` finishes the job. A run that ends before step N says so in its
//! report, which is how a test knows it has tried every step.
use std::collections::BTreeMap;

use serde::Serialize;

use super::{Result, TopologyError};
use crate::{
    config::Ipv6Dad,
    netns::Netns,
    state::{ChangedSysctl, CreatedLink, State},
};

/// The environment variable of fault injection.
pub const FAULT_ENV: &str = "NETBRIDGE_FAULT";

/// What kind of change a step makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Namespace,
    Link,
    Address,
    Route,
    Sysctl,
    Pins,
    Program,
    Maps,
    Nat,
}

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Step::Namespace => "namespace",
            Step::Link => "link",
            Step::Address => "address",
            Step::Route => "route",
            Step::Sysctl => "sysctl",
            Step::Pins => "pins",
            Step::Program => "program",
            Step::Maps => "maps",
            Step::Nat => "nat",
        }
    }
}

#[derive(Debug, Clone)]
struct Fault {
    crash: bool,
    at: usize,
    spec: String,
}

impl Fault {
    fn from_env() -> Result<Option<Fault>> {
        match std::env::var(FAULT_ENV) {
            Ok(spec) => Fault::parse(&spec).map(Some),
            Err(_) => Ok(None),
        }
    }

    /// `fail:N` or `crash:N`, N >= 1.
    fn parse(spec: &str) -> Result<Fault> {
        let parsed = spec.split_once(':').and_then(|(kind, n)| {
            let at = n.parse::<usize>().ok().filter(|n| *n > 0)?;
            let crash = match kind {
                "fail" => false,
                "crash" => true,
                _ => return None,
            };
            Some(Fault {
                crash,
                at,
                spec: spec.into(),
            })
        });
        parsed.ok_or_else(|| {
            TopologyError::Conflict(format!(
                "{FAULT_ENV}={spec:?}: expected fail:N or crash:N with N >= 1"
            ))
        })
    }
}

pub(super) struct Run {
    /// The journal, saved whenever it changes.
    pub st: State,
    /// Objects created by this run only: what a failure undoes.
    pub mine: State,
    pub changes: Vec<String>,
    /// Steps taken so far (the fault points passed).
    pub steps: usize,
    /// Of which, by kind.
    kinds: BTreeMap<Step, usize>,
    fault: Option<Fault>,
    /// A worker of a parallel phase (see [`Run::worker`]): what it would
    /// report or count, kept for [`Run::merge`].
    worker: Option<Vec<Logged>>,
    /// How IPv6 addresses go on (the topology's `ipv6_dad`).
    pub dad: Ipv6Dad,
}

/// A change or fault point a worker met.
struct Logged {
    kind: Step,
    what: String,
    reported: bool,
}

impl Run {
    pub fn new(st: State) -> Result<Run> {
        Ok(Run {
            mine: State::new(&st.name),
            st,
            changes: Vec::new(),
            steps: 0,
            kinds: BTreeMap::new(),
            fault: Fault::from_env()?,
            worker: None,
            dad: Ipv6Dad::default(),
        })
    }

    /// A run for one worker of a parallel phase: it sees the journal as
    /// it is now (whatever the phase creates must be journaled already: a
    /// worker never writes the journal) and keeps its changes and fault
    /// points for [`Run::merge`].
    pub fn worker(&self) -> Run {
        Run {
            st: self.st.clone(),
            mine: State::new(&self.st.name),
            changes: Vec::new(),
            steps: 0,
            kinds: BTreeMap::new(),
            fault: None,
            worker: Some(Vec::new()),
            dad: self.dad,
        }
    }

    /// Takes a worker's changes and fault points as if made here, in its
    /// order (a fault fires once the whole phase is done; its rollback
    /// undoes all of it: everything it made was journaled first).
    pub fn merge(&mut self, w: Run) -> Result<()> {
        for l in w.worker.unwrap_or_default() {
            if l.reported {
                self.changed(l.kind, l.what)?;
            } else {
                self.point(l.kind, l.what)?;
            }
        }
        Ok(())
    }

    fn log(&mut self, kind: Step, what: String, reported: bool) {
        if let Some(log) = &mut self.worker {
            log.push(Logged {
                kind,
                what,
                reported,
            });
        }
    }

    /// Writes the journal (never from a worker: see [`Run::worker`]).
    fn save(&self) -> Result<()> {
        if self.worker.is_some() {
            return Err(TopologyError::Conflict(format!(
                "internal error: a parallel step of {} has something to journal",
                self.st.name
            )));
        }
        Ok(self.st.save()?)
    }

    /// A change was made: reported, and a fault point.
    pub fn changed(&mut self, kind: Step, what: impl Into<String>) -> Result<()> {
        let what = what.into();
        if self.worker.is_some() {
            self.log(kind, what, true);
            return Ok(());
        }
        self.changes.push(what.clone());
        self.point(kind, what)
    }

    /// A write that leaves things as they were when they were right (the
    /// datapath's tables): not reported, but a fault point like a change.
    pub fn point(&mut self, kind: Step, what: impl Into<String>) -> Result<()> {
        let what = what.into();
        if self.worker.is_some() {
            self.log(kind, what, false);
            return Ok(());
        }
        self.steps += 1;
        *self.kinds.entry(kind).or_default() += 1;
        let Some(f) = &self.fault else {
            return Ok(());
        };
        if f.at != self.steps {
            return Ok(());
        }
        if f.crash {
            std::process::abort();
        }
        Err(TopologyError::Fault {
            step: self.steps,
            kind,
            what,
            spec: f.spec.clone(),
        })
    }

    /// A sentence for the report when a fault was asked for but the run
    /// ended before reaching it.
    pub fn fault_not_reached(&self) -> Option<String> {
        self.fault.as_ref().filter(|f| f.at > self.steps).map(|f| {
            let kinds: Vec<String> = self
                .kinds
                .iter()
                .map(|(k, n)| format!("{} {n}", k.name()))
                .collect();
            format!(
                "{FAULT_ENV}={} not reached: this run had {} fault points ({})",
                f.spec,
                self.steps,
                kinds.join(", ")
            )
        })
    }

    /// Journals a namespace *before* creating it, so a crash in between
    /// cannot leave something `down` does not know about.
    pub fn intend_netns(&mut self, name: &str) -> Result<()> {
        self.intend_netns_all(&[name])
    }

    /// Journals namespaces before creating them, in one write (see
    /// [`Run::intend_links`]).
    pub fn intend_netns_all(&mut self, names: &[&str]) -> Result<()> {
        let mut new = false;
        for name in names {
            if !self.st.netns.iter().any(|n| n == name) {
                self.st.netns.push(name.to_string());
                self.mine.netns.push(name.to_string());
                new = true;
            }
        }
        if new {
            self.save()?;
        }
        Ok(())
    }

    /// Journals a link before creating it.
    pub fn intend_link(&mut self, ns: &Netns, ifname: &str) -> Result<()> {
        self.intend_links(ns, &[ifname])
    }

    /// Journals links of `ns` before creating them, in one write (the
    /// journal of a large topology is large: one write per link would be
    /// quadratic). Already journaled ones are skipped; one journaled but
    /// never created is harmless (teardown skips what is not there).
    pub fn intend_links(&mut self, ns: &Netns, ifnames: &[&str]) -> Result<()> {
        let netns = ns.to_record();
        let mut new = false;
        for ifname in ifnames {
            let l = CreatedLink {
                netns: netns.clone(),
                ifname: ifname.to_string(),
            };
            if !self.st.links.contains(&l) {
                self.st.links.push(l.clone());
                self.mine.links.push(l);
                new = true;
            }
        }
        if new {
            self.save()?;
        }
        Ok(())
    }

    /// Journals the pin directory before creating it.
    pub fn intend_pins(&mut self, dir: &std::path::Path) -> Result<()> {
        self.st.pin_dir = Some(dir.to_path_buf());
        self.mine.pin_dir = Some(dir.to_path_buf());
        self.save()
    }

    /// Journals a host route before adding it.
    pub fn intend_host_route(&mut self, dst: String, via: Option<String>) -> Result<()> {
        let r = (dst, via);
        if !self.st.host_routes.contains(&r) {
            self.st.host_routes.push(r.clone());
            self.mine.host_routes.push(r);
            self.save()?;
        }
        Ok(())
    }

    /// Journals the value a sysctl had before netbridge first changes it,
    /// before changing it.
    pub fn intend_sysctl(&mut self, ns: &Netns, key: &str, previous: &str) -> Result<()> {
        let netns = ns.to_record();
        if self
            .st
            .sysctls
            .iter()
            .any(|s| s.netns == netns && s.key == key)
        {
            return Ok(());
        }
        let c = ChangedSysctl {
            netns,
            key: key.into(),
            previous: previous.into(),
        };
        self.st.sysctls.push(c.clone());
        self.mine.sysctls.push(c);
        self.save()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_with(spec: &str) -> Result<Run> {
        Ok(Run {
            mine: State::new("t"),
            st: State::new("t"),
            changes: Vec::new(),
            steps: 0,
            kinds: BTreeMap::new(),
            fault: Some(Fault::parse(spec)?),
            worker: None,
            dad: Ipv6Dad::default(),
        })
    }

    #[test]
    fn fail_fires_at_its_step_and_reports_unreached() {
        let mut r = run_with("fail:2").unwrap();
        r.changed(Step::Namespace, "a").unwrap();
        let e = r.point(Step::Maps, "b").unwrap_err().to_string();
        assert!(e.contains("injected fault at step 2 (Maps: b)"), "{e}");
        let mut r = run_with("fail:5").unwrap();
        r.changed(Step::Link, "x").unwrap();
        assert_eq!(
            r.fault_not_reached().unwrap(),
            "NETBRIDGE_FAULT=fail:5 not reached: this run had 1 fault points (link 1)"
        );
        assert_eq!(r.changes, vec!["x".to_string()]);
        assert!(run_with("boom:1").is_err() && run_with("fail:0").is_err());
    }
}
