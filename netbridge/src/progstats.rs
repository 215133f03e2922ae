//! Per-program cost from the kernel's BPF run-time statistics: how often
//! each program of a topology ran and how long it took (`run_cnt`,
//! `run_time_ns`), for `netbridge stats --programs` and the bench.
//!
//! The kernel only measures while statistics are enabled, and measuring
//! costs every BPF program on the machine two clock reads per run, so
//! [`enable`] turns them on only for as long as its guard lives. It uses
//! `BPF_ENABLE_STATS` (kernel >= 5.8) rather than writing
//! `kernel.bpf_stats_enabled`: the kernel counts enablers, so the sysctl
//! (and anyone else relying on it) is never touched, nothing needs
//! restoring, and a killed process cannot leave statistics on (the fd
//! closes with it).
//!
//! Programs are found from the topology's pins, so no namespace has to be
//! entered: each link pin (`HOOK@IFNAME` under `links/`, see
//! [`PinDir::link`]) names the program it holds, each port filter's
//! program is pinned under the same name in `filters/` (see
//! [`PinDir::filter`]), and the port program's tail-call array
//! ([`MAP_PORT_PROGS`]) names the programs it jumps to.
use std::{
    collections::BTreeMap,
    fs,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::programs::links::{FdLink, PinnedLink};
use serde::Serialize;

use netbridge_common::{MAP_PORT_PROGS, PORT_PROGS};

use crate::bpf::PinDir;

#[derive(Debug, thiserror::Error)]
pub enum ProgStatsError {
    #[error("enabling BPF run-time statistics (BPF_ENABLE_STATS): {0}")]
    Enable(#[source] std::io::Error),
    #[error("reading link pins in {path}: {source}")]
    Pins {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pinned link {path}: {source}")]
    Link {
        path: PathBuf,
        #[source]
        source: Box<aya::programs::links::LinkError>,
    },
    #[error("program array {path}: {source}")]
    ProgArray {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("listing loaded BPF programs: {0}")]
    Programs(#[source] Box<aya::programs::ProgramError>),
}

/// Run-time statistics are on while this lives (see the module docs).
pub struct StatsEnabled {
    _fd: OwnedFd,
}

/// Turns BPF run-time statistics on until the guard is dropped.
pub fn enable() -> Result<StatsEnabled, ProgStatsError> {
    let fd = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .map_err(|e| ProgStatsError::Enable(e.io_error))?;
    Ok(StatsEnabled { _fd: fd })
}

/// One program attachment of a topology, from its link pin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attachment {
    /// `tc_ingress`, `xdp`, `uplink_in`, `uplink_out` (see `bpf::HOOK_*`).
    pub hook: String,
    /// Interface, or `namespace@interface` for XDP on a namespace's end.
    pub ifname: String,
    pub prog_id: u32,
}

/// Splits a link pin's file name into (hook, interface): the inverse of
/// [`PinDir::link`]. None for anything else (e.g. a reload's `%new` pin).
pub fn parse_link_pin(file_name: &str) -> Option<(String, String)> {
    if file_name.ends_with("%new") {
        return None;
    }
    let (hook, ifname) = file_name.split_once('@')?;
    if hook.is_empty() || ifname.is_empty() {
        return None;
    }
    Some((hook.to_string(), ifname.replace("%2e", ".")))
}

/// The programs attached by the topology pinned in `pins`.
pub fn attachments(pins: &PinDir) -> Result<Vec<Attachment>, ProgStatsError> {
    let dir = pins.0.join("links");
    let entries: Vec<_> = match fs::read_dir(&dir) {
        Ok(e) => e.collect(),
        // No link pinned: a TC datapath without NAT has filters only.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(source) => return Err(ProgStatsError::Pins { path: dir, source }),
    };
    let mut out = Vec::new();
    for e in entries {
        let e = e.map_err(|source| ProgStatsError::Pins {
            path: dir.clone(),
            source,
        })?;
        let Some((hook, ifname)) = parse_link_pin(&e.file_name().to_string_lossy()) else {
            continue;
        };
        out.push(Attachment {
            hook,
            ifname,
            prog_id: link_program(&e.path())?,
        });
    }
    // Port filters: the pin is the program itself (see `PinDir::filter`).
    for (hook, ifname, path) in pins.filters() {
        if ifname.ends_with("%new") {
            continue;
        }
        let prog_id = crate::bpf::pinned_prog_id(&path).ok_or_else(|| ProgStatsError::Pins {
            path: path.clone(),
            source: std::io::Error::other("not a pinned program"),
        })?;
        out.push(Attachment {
            hook,
            ifname,
            prog_id,
        });
    }
    for (index, prog_id) in prog_array(&pins.map(MAP_PORT_PROGS))? {
        out.push(Attachment {
            hook: TAIL_CALL.into(),
            ifname: format!("{MAP_PORT_PROGS}[{index}]"),
            prog_id,
        });
    }
    out.sort_by(|a, b| (&a.hook, &a.ifname).cmp(&(&b.hook, &b.ifname)));
    Ok(out)
}

/// [`Attachment::hook`] of a program reached by a tail call.
pub const TAIL_CALL: &str = "tail_call";

/// (index, program id) of every filled entry of the pinned program array
/// at `pin` (none if it is not there: an older datapath).
fn prog_array(pin: &Path) -> Result<Vec<(u32, u32)>, ProgStatsError> {
    let err = |source| ProgStatsError::ProgArray {
        path: pin.to_path_buf(),
        source,
    };
    if !pin.exists() {
        return Ok(Vec::new());
    }
    let map =
        aya::maps::MapData::from_pin(pin).map_err(|e| err(std::io::Error::other(e.to_string())))?;
    let mut out = Vec::new();
    for index in 0..PORT_PROGS {
        if let Some(id) = crate::bpf::prog_array_id(&map, index).map_err(err)? {
            out.push((index, id));
        }
    }
    Ok(out)
}

/// The program id a pinned link holds.
fn link_program(path: &Path) -> Result<u32, ProgStatsError> {
    let err = |e| ProgStatsError::Link {
        path: path.to_path_buf(),
        source: Box::new(e),
    };
    let link: FdLink = PinnedLink::from_pin(path).map_err(err)?.into();
    Ok(link.info().map_err(err)?.program_id())
}

/// Cumulative counters of one program (since it was loaded, counting only
/// while statistics were enabled).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    pub run_cnt: u64,
    pub run_time_ns: u64,
}

/// One program of a topology with everything it is attached to.
#[derive(Debug, Clone, Serialize)]
pub struct Program {
    pub id: u32,
    pub name: String,
    /// `hook@interface` of each attachment.
    pub attached: Vec<String>,
    pub counters: Counters,
    /// Instructions the kernel's verifier walked to accept the program
    /// (its limit is 1,000,000): the load's cost, and the room left.
    pub verified_insns: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct Snapshot {
    pub at: Instant,
    /// By program id.
    pub programs: BTreeMap<u32, Program>,
}

/// Counters of every program attached by the topology pinned in `pins`.
pub fn snapshot(pins: &PinDir) -> Result<Snapshot, ProgStatsError> {
    let mut programs: BTreeMap<u32, Program> = BTreeMap::new();
    for a in attachments(pins)? {
        programs
            .entry(a.prog_id)
            .or_insert_with(|| Program {
                id: a.prog_id,
                name: String::new(),
                attached: Vec::new(),
                counters: Counters::default(),
                verified_insns: None,
            })
            .attached
            .push(format!("{}@{}", a.hook, a.ifname));
    }
    let at = Instant::now();
    for info in aya::programs::loaded_programs() {
        let info = info.map_err(|e| ProgStatsError::Programs(Box::new(e)))?;
        if let Some(p) = programs.get_mut(&info.id()) {
            p.name = info.name_as_str().unwrap_or("?").to_string();
            p.counters = Counters {
                run_cnt: info.run_count(),
                run_time_ns: info.run_time().as_nanos() as u64,
            };
            p.verified_insns = info.verified_instruction_count();
        }
    }
    Ok(Snapshot { at, programs })
}

/// What one program did between two snapshots.
#[derive(Debug, Clone, Serialize)]
pub struct ProgramRate {
    pub id: u32,
    pub name: String,
    pub attached: Vec<String>,
    pub runs: u64,
    pub run_time_ns: u64,
    /// Mean run time; None when it did not run.
    pub ns_per_run: Option<f64>,
    pub runs_per_sec: f64,
    /// Only reached by tail calls: the kernel counts its runs and time in
    /// the program that jumped to it, never here.
    pub tail_called: bool,
    /// See [`Program::verified_insns`].
    pub verified_insns: Option<u32>,
}

/// Per-program deltas from `before` to `after`, for programs present in
/// both (a program replaced in between, e.g. by `up --reload`, is left out:
/// its counters started over).
pub fn delta(before: &Snapshot, after: &Snapshot) -> Vec<ProgramRate> {
    let secs = after.at.saturating_duration_since(before.at).as_secs_f64();
    after
        .programs
        .values()
        .filter_map(|p| {
            let b = before.programs.get(&p.id)?;
            let runs = p.counters.run_cnt.saturating_sub(b.counters.run_cnt);
            let time = p
                .counters
                .run_time_ns
                .saturating_sub(b.counters.run_time_ns);
            Some(ProgramRate {
                id: p.id,
                name: p.name.clone(),
                attached: p.attached.clone(),
                runs,
                run_time_ns: time,
                ns_per_run: (runs > 0).then(|| time as f64 / runs as f64),
                runs_per_sec: if secs > 0.0 { runs as f64 / secs } else { 0.0 },
                tail_called: p
                    .attached
                    .iter()
                    .all(|a| a.starts_with(&format!("{TAIL_CALL}@"))),
                verified_insns: p.verified_insns,
            })
        })
        .collect()
}

/// Enables statistics, samples the topology's programs over `interval`,
/// and turns statistics off again (unless someone else also has them on).
pub fn sample(pins: &PinDir, interval: Duration) -> Result<Vec<ProgramRate>, ProgStatsError> {
    let _on = enable()?;
    let before = snapshot(pins)?;
    std::thread::sleep(interval);
    let after = snapshot(pins)?;
    Ok(delta(&before, &after))
}

/// A plain-text table of `rates` (one row per program).
pub fn table(rates: &[ProgramRate], interval: Duration) -> String {
    use std::fmt::Write as _;
    let mut s = format!(
        "BPF programs over {:.1}s (run time measured by the kernel)\n{:>6} {:<16} {:>10} {:>10} {:>9} {:>9}  attached to\n",
        interval.as_secs_f64(),
        "id",
        "program",
        "runs",
        "runs/s",
        "ns/run",
        "verified"
    );
    for r in rates {
        let ns = match r.ns_per_run {
            Some(v) => format!("{v:.0}"),
            None if r.tail_called => "in caller".into(),
            None => "-".into(),
        };
        let _ = writeln!(
            s,
            "{:>6} {:<16} {:>10} {:>10.0} {:>9} {:>9}  {}",
            r.id,
            r.name,
            r.runs,
            r.runs_per_sec,
            ns,
            r.verified_insns.map_or("-".into(), |v| v.to_string()),
            r.attached.join(", ")
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(at: Instant, progs: &[(u32, u64, u64)]) -> Snapshot {
        Snapshot {
            at,
            programs: progs
                .iter()
                .map(|&(id, run_cnt, run_time_ns)| {
                    (
                        id,
                        Program {
                            id,
                            name: format!("p{id}"),
                            attached: vec![format!("tc_ingress@nb-{id}")],
                            counters: Counters {
                                run_cnt,
                                run_time_ns,
                            },
                            verified_insns: Some(1000 + id),
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn link_pin_names_round_trip() {
        let pins = PinDir(PathBuf::from("/x"));
        for (hook, ifname) in [("tc_ingress", "nb-black"), ("xdp", "lab@eth0.5")] {
            let path = pins.link(ifname, hook);
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            assert_eq!(
                parse_link_pin(&name),
                Some((hook.to_string(), ifname.to_string()))
            );
        }
        assert_eq!(parse_link_pin("tc_ingress@nb-black%new"), None);
        assert_eq!(parse_link_pin("stray"), None);
        assert_eq!(parse_link_pin("@eth0"), None);
    }

    #[test]
    fn delta_is_per_program_mean_and_rate() {
        let t0 = Instant::now();
        let before = snap(t0, &[(1, 100, 10_000), (2, 5, 500), (3, 7, 70)]);
        // 3 was replaced by 4 (a reload): left out, not a negative delta.
        let after = snap(
            t0 + Duration::from_secs(2),
            &[(1, 1100, 130_000), (2, 5, 500), (4, 9, 90)],
        );
        let d = delta(&before, &after);
        assert_eq!(d.iter().map(|r| r.id).collect::<Vec<_>>(), [1, 2]);
        assert_eq!((d[0].runs, d[0].run_time_ns), (1000, 120_000));
        assert_eq!(d[0].ns_per_run, Some(120.0));
        assert_eq!(d[0].runs_per_sec, 500.0);
        assert_eq!(d[1].ns_per_run, None, "did not run");
        let t = table(&d, Duration::from_secs(2));
        assert!(t.contains("p1") && t.contains("120") && t.contains("tc_ingress@nb-1"));
        assert_eq!(d[0].verified_insns, Some(1001), "the newer snapshot's");
        assert!(t.contains(" 1001 "), "{t}");
        assert!(!d[0].tail_called);
        // A tail-call target never runs on its own: its time is its caller's.
        let mut tail = snap(t0, &[(5, 0, 0)]);
        tail.programs.get_mut(&5).unwrap().attached = vec!["tail_call@NB_PORT_PROGS[0]".into()];
        let d = delta(&tail, &tail);
        assert!(d[0].tail_called);
        assert!(table(&d, Duration::from_secs(1)).contains("in caller"));
    }
}
