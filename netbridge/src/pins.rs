//! The ground under the datapath modules: netbridge's own bpffs, the pin
//! layout of one topology, typed maps from a loaded object or from pins, and
//! the error type of everything BPF. `bpf.rs` and `nat.rs` both build on
//! this module and never on each other.
use std::{
    fs, io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    maps::{Map, MapData, MapError},
    programs::{ProgramFd, SchedClassifier},
};

/// Where netbridge mounts its own bpffs: outside /sys, because `ip netns exec`
/// remounts /sys and would hide a bpffs there.
pub const BPFFS_ROOT: &str = "/run/netbridge/bpf";

/// Hook names used in link pins.
pub const HOOK_TC_INGRESS: &str = "tc_ingress";
pub const HOOK_XDP: &str = "xdp";
pub const HOOK_UPLINK_IN: &str = "uplink_in";
pub const HOOK_UPLINK_OUT: &str = "uplink_out";

#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error("loading the eBPF object (pins in {pin_dir}): {source}")]
    Load {
        pin_dir: PathBuf,
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error(
        "eBPF map {name} pinned in {pin_dir} has {entries} entries, this netbridge needs {needed}: \
         the lab was made by an older netbridge; bring it down (`netbridge down`) and up again"
    )]
    OlderMap {
        name: &'static str,
        pin_dir: PathBuf,
        entries: u32,
        needed: u32,
    },
    #[error("eBPF program {name} is missing from the object")]
    MissingProgram { name: &'static str },
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: Box<MapError>,
    },
    #[error("eBPF program {name} on {ifname}: {source}")]
    Program {
        name: &'static str,
        ifname: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("pinning {what} at {path}: {source}")]
    Pin {
        what: String,
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("bpffs at {path}: {source}")]
    Bpffs {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Mounts a bpffs at [`BPFFS_ROOT`] unless one is already there, and returns
/// the directory `sub` below it (root-only). The check and the mount happen
/// under a lock, so concurrent processes mount exactly one bpffs (a second
/// one stacked on top would hide the first one's pins).
pub fn ensure_bpffs(sub: &str) -> Result<PathBuf, BpfError> {
    let dir = Path::new(BPFFS_ROOT).join(sub);
    mount_bpffs()?;
    fs::create_dir_all(&dir).map_err(|source| BpfError::Bpffs {
        path: dir.clone(),
        source,
    })?;
    Ok(dir)
}

/// Mounts the bpffs at [`BPFFS_ROOT`] once (see [`ensure_bpffs`]).
pub fn mount_bpffs() -> Result<(), BpfError> {
    let root = Path::new(BPFFS_ROOT);
    let err = |source| BpfError::Bpffs {
        path: root.to_path_buf(),
        source,
    };
    if is_bpffs(root) {
        return Ok(());
    }
    let _lock = crate::lock::exclusive("mount-bpffs", |_| {}).map_err(|e| err(e.source))?;
    fs::create_dir_all(root).map_err(err)?;
    if is_bpffs(root) {
        return Ok(());
    }
    nix::mount::mount(
        Some("bpffs"),
        root,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        Some("mode=0700"),
    )
    .map_err(|e| err(io::Error::from(e)))
}

pub fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
        .unwrap_or(false)
}

/// Pin layout of one topology: maps by name in `dir`, links (TCX, XDP) in
/// `dir/links`, the programs of the port filters (cls_bpf, see
/// [`crate::tcfilter`]) in `dir/filters`.
#[derive(Debug, Clone)]
pub struct PinDir(pub PathBuf);

impl PinDir {
    pub fn map(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    /// bpffs rejects '.' in names; ifnames may contain it, so encode it ('%'
    /// never occurs in a valid ifname, keeping the mapping one-to-one).
    pub fn link(&self, ifname: &str, hook: &str) -> PathBuf {
        self.0
            .join("links")
            .join(format!("{hook}@{}", ifname.replace('.', "%2e")))
    }
    /// The program of the filter at `hook` of `ifname`, named like a link
    /// pin. Unlike a link pin it does not hold the attachment: removing it
    /// detaches nothing.
    pub fn filter(&self, ifname: &str, hook: &str) -> PathBuf {
        self.0
            .join("filters")
            .join(format!("{hook}@{}", ifname.replace('.', "%2e")))
    }
    /// (hook, ifname, path) of every link pin.
    pub fn links(&self) -> Vec<(String, String, PathBuf)> {
        self.entries("links")
    }
    /// (hook, ifname, path) of every filter's program pin.
    pub fn filters(&self) -> Vec<(String, String, PathBuf)> {
        self.entries("filters")
    }
    fn entries(&self, sub: &str) -> Vec<(String, String, PathBuf)> {
        let Ok(dir) = fs::read_dir(self.0.join(sub)) else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                let (hook, ifname) = name.split_once('@')?;
                Some((hook.to_string(), ifname.replace("%2e", "."), e.path()))
            })
            .collect()
    }
    /// Removes every pin (maps and links) and the directory itself, each
    /// link detached first (see [`unpin_link`]).
    pub fn remove(&self) -> io::Result<()> {
        for (_, _, path) in self.links() {
            unpin_link(&path);
        }
        match fs::remove_dir_all(&self.0) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }
}

/// Removes the link pin at `path`, detaching the link first; returns
/// whether a pin was there. Removing the pin alone detaches only when bpffs
/// frees the inode, after an RCU grace period and from a workqueue: until
/// then the old program still runs beside its replacement, and a query
/// right after the switch still lists it (seen in CI).
pub fn unpin_link(path: &Path) -> bool {
    if let Ok(fd) = obj_get(path) {
        // A link whose interface is gone is defunct already: nothing to do.
        let _ = link_detach(fd.as_fd());
    }
    fs::remove_file(path).is_ok()
}

/// BPF_OBJ_GET: an fd of the object pinned at `path`.
fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    #[repr(C)]
    struct ObjAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    const BPF_OBJ_GET: libc::c_long = 7;
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let attr = ObjAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    // SAFETY: `attr` points at `c`, a NUL-terminated path alive for the
    // call; the kernel only reads `attr` and returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &attr as *const ObjAttr,
            std::mem::size_of::<ObjAttr>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// BPF_LINK_DETACH: detaches `link` now, whoever else holds it (pins,
/// fds); they keep a defunct link.
fn link_detach(link: BorrowedFd<'_>) -> io::Result<()> {
    const BPF_LINK_DETACH: libc::c_long = 34;
    let attr: u32 = link.as_raw_fd() as u32;
    // SAFETY: `attr` is the 4-byte `link_detach` member of union bpf_attr
    // (the link fd); the kernel only reads it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_DETACH,
            &attr as *const u32,
            std::mem::size_of::<u32>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// CLOCK_MONOTONIC in ns: the clock bpf_ktime_get_ns() reads, so the one
/// every timestamp in the maps uses.
pub fn monotonic_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .unwrap_or(nix::sys::time::TimeSpec::new(0, 0));
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

/// Wraps an error of map `name`.
pub fn map_err(name: &'static str) -> impl Fn(MapError) -> BpfError {
    move |e| BpfError::Map {
        name,
        source: Box::new(e),
    }
}

/// Where typed maps come from: a freshly loaded object (each map taken
/// once) or the pins of a running topology. A map set lists its maps once,
/// with their kind, and opens from either.
pub trait MapSource {
    /// Map `name`, typed; `kind` says what a pinned map is (the object
    /// knows it already).
    fn map<T: TryFrom<Map, Error = MapError>>(
        &mut self,
        name: &'static str,
        kind: fn(MapData) -> Map,
    ) -> Result<T, BpfError>;

    /// An fd of program `name` (loaded, or a TC program pinned under that
    /// name), if any.
    fn program_fd(&self, name: &'static str) -> Option<ProgramFd>;
}

impl MapSource for Ebpf {
    fn map<T: TryFrom<Map, Error = MapError>>(
        &mut self,
        name: &'static str,
        _kind: fn(MapData) -> Map,
    ) -> Result<T, BpfError> {
        let map = self.take_map(name).ok_or(BpfError::Map {
            name,
            source: Box::new(MapError::InvalidName { name: name.into() }),
        })?;
        T::try_from(map).map_err(map_err(name))
    }

    fn program_fd(&self, name: &'static str) -> Option<ProgramFd> {
        self.program(name)?.fd().ok()?.try_clone().ok()
    }
}

impl MapSource for PinDir {
    fn map<T: TryFrom<Map, Error = MapError>>(
        &mut self,
        name: &'static str,
        kind: fn(MapData) -> Map,
    ) -> Result<T, BpfError> {
        let data = MapData::from_pin(PinDir::map(self, name)).map_err(map_err(name))?;
        T::try_from(kind(data)).map_err(map_err(name))
    }

    fn program_fd(&self, name: &'static str) -> Option<ProgramFd> {
        SchedClassifier::from_pin(self.0.join(name))
            .ok()?
            .fd()
            .ok()?
            .try_clone()
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_pins_encode_dots_one_to_one() {
        let p = PinDir(PathBuf::from("/x"));
        assert_eq!(
            p.link("eth0.10", HOOK_XDP),
            PathBuf::from("/x/links/xdp@eth0%2e10")
        );
    }
}
