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
        })
    }

    /// A change was made: reported, and a fault point.
    pub fn changed(&mut self, kind: Step, what: impl Into<String>) -> Result<()> {
        let what = what.into();
        self.changes.push(what.clone());
        self.point(kind, what)
    }

    /// A write that leaves things as they were when they were right (the
    /// datapath's tables): not reported, but a fault point like a change.
    pub fn point(&mut self, kind: Step, what: impl Into<String>) -> Result<()> {
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
            what: what.into(),
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
        self.st.netns.push(name.to_string());
        self.mine.netns.push(name.to_string());
        Ok(self.st.save()?)
    }

    /// Journals a link before creating it.
    pub fn intend_link(&mut self, ns: &Netns, ifname: &str) -> Result<()> {
        let l = CreatedLink {
            netns: ns.to_record(),
            ifname: ifname.to_string(),
        };
        self.st.links.push(l.clone());
        self.mine.links.push(l);
        Ok(self.st.save()?)
    }

    /// Journals the pin directory before creating it.
    pub fn intend_pins(&mut self, dir: &std::path::Path) -> Result<()> {
        self.st.pin_dir = Some(dir.to_path_buf());
        self.mine.pin_dir = Some(dir.to_path_buf());
        Ok(self.st.save()?)
    }

    /// Journals a host route before adding it.
    pub fn intend_host_route(&mut self, dst: String, via: Option<String>) -> Result<()> {
        let r = (dst, via);
        if !self.st.host_routes.contains(&r) {
            self.st.host_routes.push(r.clone());
            self.mine.host_routes.push(r);
            self.st.save()?;
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
        Ok(self.st.save()?)
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
