//! The kernel side of one capture: the pinned capture maps of a running
//! topology, the lease that turns the hooks on, the egress observer, the
//! lock that keeps captures of one topology from competing for the ring.
use std::{
    fs::File,
    os::fd::{AsFd, AsRawFd},
    time::{Duration, Instant},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, Map, MapData, PerCpuArray, RingBuf},
    programs::{SchedClassifier, TcAttachType},
};
use netbridge_common::capture::{
    CaptureConfig, CaptureCpu, CaptureEvent, LEASE_NS, MAP_CAPTURE, MAP_CAPTURE_CPU,
    MAP_CAPTURE_RING, PROG_CAPTURE_EGRESS,
};
use nix::fcntl::{Flock, FlockArg};

use super::CaptureError;
use crate::{
    bpf::{self, EBPF_OBJECT},
    netns::{self, Netns},
    pins::{MapSource, PinDir, map_err, monotonic_ns},
};

/// A running capture: while it lives the lease is renewed; dropping it
/// turns the hooks off and detaches the observer.
pub struct Session {
    config: Array<MapData, CaptureConfig>,
    ring: RingBuf<MapData>,
    cpu: PerCpuArray<MapData, CaptureCpu>,
    cfg: CaptureConfig,
    baseline: CaptureCpu,
    renewed: Instant,
    _lock: Flock<File>,
    /// Holds the observer's TCX links (not pinned: they die with us).
    _observer: Option<Ebpf>,
}

/// Takes the capture lock of topology `name`: an flock on its pin
/// directory (released when the process exits, whatever the cause; gone
/// with the topology).
fn lock(name: &str, pins: &PinDir) -> Result<Flock<File>, CaptureError> {
    let io = |source| CaptureError::Io {
        what: pins.0.display().to_string(),
        source,
    };
    let dir = File::open(&pins.0).map_err(io)?;
    Flock::lock(dir, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| match e {
        nix::errno::Errno::EWOULDBLOCK => CaptureError::Busy { name: name.into() },
        e => io(e.into()),
    })
}

impl Session {
    /// Opens the capture maps pinned in `pins` (by `up`), checks that the
    /// programs attached (`prog_ids`) use them, takes the lock.
    pub fn open(name: &str, pins: &PinDir, prog_ids: &[u32]) -> Result<Self, CaptureError> {
        if !pins.map(MAP_CAPTURE).exists() {
            return Err(CaptureError::Predates { name: name.into() });
        }
        let mut src = pins.clone();
        let config: Array<MapData, CaptureConfig> =
            MapSource::map(&mut src, MAP_CAPTURE, Map::Array)?;
        let ring: RingBuf<MapData> = MapSource::map(&mut src, MAP_CAPTURE_RING, Map::RingBuf)?;
        let cpu: PerCpuArray<MapData, CaptureCpu> =
            MapSource::map(&mut src, MAP_CAPTURE_CPU, Map::PerCpuArray)?;
        let id = MapData::from_pin(pins.map(MAP_CAPTURE))
            .and_then(|m| m.info())
            .map_err(map_err(MAP_CAPTURE))?
            .id();
        if !programs_use(prog_ids, id) {
            return Err(CaptureError::Predates { name: name.into() });
        }
        let lock = lock(name, pins)?;
        let mut s = Session {
            config,
            ring,
            cpu,
            cfg: CaptureConfig::default(),
            baseline: CaptureCpu::default(),
            renewed: Instant::now(),
            _lock: lock,
            _observer: None,
        };
        // Events a crashed capture left in the ring are not ours.
        while s.ring.next().is_some() {}
        s.baseline = s.counts()?;
        Ok(s)
    }

    /// Loads the egress observer from the embedded object (reusing the
    /// pinned maps) and attaches it to `ports` in namespace `host`.
    pub fn observe(
        &mut self,
        pins: &PinDir,
        host: &Netns,
        ports: Vec<String>,
    ) -> Result<(), CaptureError> {
        if ports.is_empty() {
            return Ok(());
        }
        let dir = pins.0.clone();
        let ebpf = netns::run_blocking_in(host, move || load_observer(&dir, &ports))??;
        self._observer = Some(ebpf);
        Ok(())
    }

    /// Turns the hooks on with `cfg`'s filter (its lease is set here).
    pub fn start(&mut self, cfg: CaptureConfig) -> Result<(), CaptureError> {
        self.cfg = cfg;
        self.renew()
    }

    /// Extends the lease; the hooks turn themselves off [`LEASE_NS`] after
    /// the last renewal.
    pub fn renew(&mut self) -> Result<(), CaptureError> {
        self.cfg.until_ns = monotonic_ns() + LEASE_NS;
        self.config
            .set(0, self.cfg, 0)
            .map_err(map_err(MAP_CAPTURE))?;
        self.renewed = Instant::now();
        Ok(())
    }

    /// Renews the lease if a quarter of it has passed.
    pub fn keep_alive(&mut self) -> Result<(), CaptureError> {
        if self.renewed.elapsed() >= Duration::from_nanos(LEASE_NS / 4) {
            self.renew()?;
        }
        Ok(())
    }

    /// Turns the hooks off now.
    pub fn stop(&mut self) -> Result<(), CaptureError> {
        self.cfg.until_ns = 0;
        Ok(self
            .config
            .set(0, CaptureConfig::default(), 0)
            .map_err(map_err(MAP_CAPTURE))?)
    }

    /// Waits up to `timeout` for events.
    pub fn wait(&self, timeout: Duration) {
        let mut fds = [libc::pollfd {
            fd: self.ring.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: one valid pollfd for the duration of the call; EINTR (a
        // signal) just returns early.
        unsafe { libc::poll(fds.as_mut_ptr(), 1, timeout.as_millis() as i32) };
    }

    /// The next event in the ring, if any.
    pub fn next_event(&mut self) -> Option<CaptureEvent> {
        let item = self.ring.next()?;
        let n = std::mem::size_of::<CaptureEvent>();
        (item.len() >= n).then(|| bytemuck::pod_read_unaligned(&item[..n]))
    }

    /// Counts summed over CPUs.
    fn counts(&self) -> Result<CaptureCpu, CaptureError> {
        let per_cpu = self.cpu.get(&0, 0).map_err(map_err(MAP_CAPTURE_CPU))?;
        let mut sum = CaptureCpu::default();
        per_cpu.iter().for_each(|c| sum.accumulate(c));
        Ok(sum)
    }

    /// Events sent and lost since this session opened.
    pub fn totals(&self) -> Result<CaptureCpu, CaptureError> {
        let now = self.counts()?;
        Ok(CaptureCpu {
            sent: now.sent - self.baseline.sent,
            lost_ring: now.lost_ring - self.baseline.lost_ring,
            lost_rate: now.lost_rate - self.baseline.lost_rate,
            ..CaptureCpu::default()
        })
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Loads the observer from the embedded object, its maps the pinned ones in
/// `dir`, and attaches it at TC egress of `ports` (calling thread's netns).
fn load_observer(dir: &std::path::Path, ports: &[String]) -> Result<Ebpf, CaptureError> {
    let err = |what: &str| {
        let what = what.to_string();
        move |e: aya::programs::ProgramError| CaptureError::Observer {
            what,
            source: Box::new(e),
        }
    };
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(dir)
        .load(EBPF_OBJECT)
        .map_err(|e| CaptureError::Observer {
            what: "loading the object".into(),
            source: Box::new(e),
        })?;
    let prog: &mut SchedClassifier = ebpf
        .program_mut(PROG_CAPTURE_EGRESS)
        .ok_or(bpf::BpfError::MissingProgram {
            name: PROG_CAPTURE_EGRESS,
        })?
        .try_into()
        .map_err(err("type"))?;
    prog.load().map_err(err("loading"))?;
    for p in ports {
        prog.attach(p, TcAttachType::Egress)
            .map_err(err(&format!("attaching to {p}")))?;
    }
    Ok(ebpf)
}

/// Does any of the programs `ids` use map `map_id`?
fn programs_use(ids: &[u32], map_id: u32) -> bool {
    aya::programs::loaded_programs().flatten().any(|p| {
        ids.contains(&p.id())
            && p.map_ids()
                .ok()
                .flatten()
                .is_some_and(|m| m.contains(&map_id))
    })
}
