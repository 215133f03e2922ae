//! Named network namespaces (compatible with `ip netns`) and running code
//! inside one.
//!
//! Never `setns` on a tokio worker: [`run_in`] gives each namespace a
//! dedicated OS thread that enters it, builds a current-thread runtime and its
//! own rtnetlink connection, so no other task can ever observe the switched
//! namespace.
use std::{
    fs::{self, File},
    future::Future,
    io,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use nix::{
    mount::{MntFlags, MsFlags, mount, umount2},
    sched::{CloneFlags, setns, unshare},
};

/// Directory `ip netns` uses for named namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {name:?}: {op}: {source}")]
    Io {
        name: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("network namespace {name:?}: {op}: {source}")]
    Sys {
        name: String,
        op: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("network namespace {name:?}: worker thread panicked")]
    Panicked { name: String },
    #[error("network namespace {name:?}: netlink: {source}")]
    Netlink {
        name: String,
        #[source]
        source: io::Error,
    },
}

/// Which network namespace to run in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Netns {
    /// The namespace netbridge itself was started in.
    Current,
    /// A named namespace under /run/netns.
    Named(String),
    /// A namespace file elsewhere (`/proc/PID/ns/net`, a CNI runtime's
    /// bind mount), never created or deleted by netbridge.
    Path(PathBuf),
}

impl Netns {
    pub fn named(name: impl Into<String>) -> Self {
        Netns::Named(name.into())
    }

    pub fn label(&self) -> &str {
        match self {
            Netns::Current => "(host)",
            Netns::Named(n) => n,
            Netns::Path(p) => p.to_str().unwrap_or("(non-UTF-8 path)"),
        }
    }

    /// How the journal records it: None for the current namespace, the name
    /// of a named one, the path (starting with '/') of another.
    pub fn to_record(&self) -> Option<String> {
        match self {
            Netns::Current => None,
            Netns::Named(n) => Some(n.clone()),
            Netns::Path(p) => Some(p.display().to_string()),
        }
    }

    /// The inverse of [`Netns::to_record`] (names never start with '/').
    pub fn from_record(r: &Option<String>) -> Netns {
        match r {
            None => Netns::Current,
            Some(p) if p.starts_with('/') => Netns::Path(PathBuf::from(p)),
            Some(n) => Netns::Named(n.clone()),
        }
    }

    /// Whether the namespace is there (the current one always is).
    pub fn exists(&self) -> bool {
        match self {
            Netns::Current => true,
            Netns::Named(n) => exists(n),
            Netns::Path(p) => is_netns_file(p),
        }
    }
}

pub fn path_of(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

pub fn exists(name: &str) -> bool {
    // A leftover empty file without a namespace mounted on it does not count.
    is_netns_file(&path_of(name))
}

fn is_netns_file(path: &Path) -> bool {
    // nsfs files report the nsfs magic; a plain leftover file does not.
    match nix::sys::statfs::statfs(path) {
        Ok(s) => s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC,
        Err(_) => false,
    }
}

/// Names under /run/netns, sorted.
pub fn list() -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(NETNS_RUN_DIR)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Makes /run/netns a shared mount point, as iproute2 does, so namespace
/// mounts propagate to other mount namespaces. Under a lock: two processes
/// that both found no mount point would bind it twice, and namespaces
/// mounted under the lower copy would vanish from view.
fn prepare_run_dir() -> Result<(), NetnsError> {
    let err = |op, source| NetnsError::Sys {
        name: NETNS_RUN_DIR.into(),
        op,
        source,
    };
    let io_err = |op, source| NetnsError::Io {
        name: NETNS_RUN_DIR.into(),
        op,
        source,
    };
    let _lock = crate::lock::exclusive("mount-netns", |_| {})
        .map_err(|e| io_err("lock /run/netns mount", e.source))?;
    fs::create_dir_all(NETNS_RUN_DIR).map_err(|source| io_err("create /run/netns", source))?;
    let shared = || {
        mount(
            None::<&str>,
            NETNS_RUN_DIR,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    if shared().is_ok() {
        return Ok(());
    }
    // Not a mount point yet: bind it onto itself first (iproute2 does the same).
    mount(
        Some(NETNS_RUN_DIR),
        NETNS_RUN_DIR,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| err("bind /run/netns", e))?;
    shared().map_err(|e| err("make /run/netns shared", e))
}

/// Creates the named namespace. Returns `false` if it already existed.
pub fn create(name: &str) -> Result<bool, NetnsError> {
    if exists(name) {
        return Ok(false);
    }
    prepare_run_dir()?;
    let path = path_of(name);
    let name_owned = name.to_string();
    // unshare() only affects the calling thread: do it on a throwaway thread.
    std::thread::spawn(move || -> Result<(), NetnsError> {
        let name = name_owned;
        let io = |op, source| NetnsError::Io {
            name: name.clone(),
            op,
            source,
        };
        let sys = |op, source| NetnsError::Sys {
            name: name.clone(),
            op,
            source,
        };
        File::create(&path).map_err(|e| io("create mount point", e))?;
        let result = unshare(CloneFlags::CLONE_NEWNET)
            .map_err(|e| sys("unshare", e))
            .and_then(|_| {
                mount(
                    Some("/proc/thread-self/ns/net"),
                    &path,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(|e| sys("bind mount", e))
            });
        if result.is_err() {
            let _ = fs::remove_file(&path);
        }
        result
    })
    .join()
    .map_err(|_| NetnsError::Panicked { name: name.into() })??;
    Ok(true)
}

/// Deletes the named namespace (unmount + unlink). Missing is not an error.
pub fn delete(name: &str) -> Result<(), NetnsError> {
    let path = path_of(name);
    if !path.exists() {
        return Ok(());
    }
    match umount2(&path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
        Err(source) => {
            return Err(NetnsError::Sys {
                name: name.into(),
                op: "unmount",
                source,
            });
        }
    }
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(NetnsError::Io {
            name: name.into(),
            op: "remove",
            source,
        }),
    }
}

/// Opens a namespace for `setns` or `setns_by_fd` on a link.
pub fn open(ns: &Netns) -> Result<File, NetnsError> {
    let path = match ns {
        Netns::Current => PathBuf::from("/proc/self/ns/net"),
        Netns::Named(n) => path_of(n),
        Netns::Path(p) => p.clone(),
    };
    File::open(&path).map_err(|source| NetnsError::Io {
        name: ns.label().into(),
        op: "open",
        source,
    })
}

/// Runs blocking `f` on a fresh OS thread inside `ns` and waits for it.
/// The thread is scoped: `f` may borrow from the caller.
pub fn run_blocking_in<T, F>(ns: &Netns, f: F) -> Result<T, NetnsError>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let file = open(ns)?;
    let label = ns.label();
    std::thread::scope(|s| {
        s.spawn(move || -> Result<T, NetnsError> {
            setns(file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Sys {
                name: label.into(),
                op: "setns",
                source,
            })?;
            Ok(f())
        })
        .join()
        .map_err(|_| NetnsError::Panicked { name: label.into() })?
    })
}

/// Runs async `f` with an rtnetlink handle bound to `ns`, on a dedicated OS
/// thread with its own current-thread runtime (scoped, like
/// [`run_blocking_in`]).
pub fn run_in<T, F, Fut>(ns: &Netns, f: F) -> Result<T, NetnsError>
where
    T: Send,
    F: FnOnce(rtnetlink::Handle) -> Fut + Send,
    Fut: Future<Output = T>,
{
    let label = ns.label();
    run_blocking_in(ns, move || -> Result<T, NetnsError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| NetnsError::Io {
                name: label.into(),
                op: "tokio runtime",
                source,
            })?;
        rt.block_on(async move {
            let (conn, handle, _) =
                rtnetlink::new_connection().map_err(|source| NetnsError::Netlink {
                    name: label.into(),
                    source,
                })?;
            let conn = tokio::spawn(conn);
            let out = f(handle).await;
            conn.abort();
            Ok(out)
        })
    })?
}
