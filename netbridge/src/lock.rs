//! Advisory locks (`flock`) under [`LOCK_DIR`]: one per topology, so two
//! processes never reconcile, tear down or change the ports of one topology
//! at the same time, and one per shared mount point (netbridge's bpffs,
//! /run/netns), so concurrent processes mount it once.
//!
//! A lock belongs to the open file: it is released when the [`Lock`] is
//! dropped, and by the kernel when the process dies (no stale lock after a
//! crash).
use std::{
    fs::{self, File},
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use nix::fcntl::{Flock, FlockArg};

pub const LOCK_DIR: &str = "/run/netbridge/locks";

/// Creates `dir` and its parents, mode 0700: netbridge's run-time files
/// (locks, journal, CNI state) are root's alone.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Opens `path` for reading and writing, created mode 0600 if missing,
/// emptied if `truncate`.
pub fn private_file(path: &Path, truncate: bool) -> io::Result<File> {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(truncate)
        .mode(0o600)
        .open(path)
}

/// Replaces `path` with `bytes` atomically (a 0600 `*.tmp` beside it,
/// synced, then renamed): a reader sees the old file or the new, whole.
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let mut f = private_file(Path::new(&tmp), true)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}

#[derive(Debug, thiserror::Error)]
#[error("lock {path}: {source}")]
pub struct LockError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// A held exclusive lock; released on drop.
#[derive(Debug)]
pub struct Lock {
    _file: Flock<File>,
    pub path: PathBuf,
}

/// Takes the exclusive lock `name` (a topology name or `mount-*`) in
/// [`LOCK_DIR`], waiting for it if another process holds it. `on_wait` is
/// called once, with the holder's pid if known, before waiting (so a caller
/// can say why it pauses).
pub fn exclusive(name: &str, on_wait: impl FnOnce(Option<u32>)) -> Result<Lock, LockError> {
    exclusive_in(Path::new(LOCK_DIR), name, on_wait)
}

/// [`exclusive`] in directory `dir`.
pub fn exclusive_in(
    dir: &Path,
    name: &str,
    on_wait: impl FnOnce(Option<u32>),
) -> Result<Lock, LockError> {
    let path = dir.join(format!("{name}.lock"));
    let err = |source| LockError {
        path: path.clone(),
        source,
    };
    private_dir(dir).map_err(err)?;
    let file = private_file(&path, false).map_err(err)?;
    let mut held = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        Err((file, nix::Error::EWOULDBLOCK)) => {
            on_wait(holder(&path));
            Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| err(io::Error::from(e)))?
        }
        Err((_, e)) => return Err(err(io::Error::from(e))),
    };
    // Tell a waiting process who holds the lock (informational only).
    held.set_len(0).map_err(err)?;
    write!(held, "{}", std::process::id()).map_err(err)?;
    Ok(Lock {
        _file: held,
        path: path.clone(),
    })
}

/// The pid the current holder wrote into the lock file, if readable.
fn holder(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lock is exclusive across open files (as across processes) and
    /// released on drop; a waiter is told who holds it.
    #[test]
    fn exclusive_waits_for_the_holder() {
        let dir = std::env::temp_dir().join(format!("nb-lock-test-{}", std::process::id()));
        let first = exclusive_in(&dir, "t", |_| panic!("nobody holds it yet")).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let dir2 = dir.clone();
        let waiter = std::thread::spawn(move || {
            let l = exclusive_in(&dir2, "t", |pid| tx.send(pid).unwrap()).unwrap();
            done_tx.send(()).unwrap();
            drop(l);
        });
        // The waiter reports the holder (this process) before blocking, and
        // does not get the lock while it is held.
        assert_eq!(rx.recv().unwrap(), Some(std::process::id()));
        assert!(done_rx.try_recv().is_err(), "lock taken twice");
        drop(first);
        done_rx.recv().unwrap();
        waiter.join().unwrap();
        let _ = fs::remove_dir_all(dir);
    }
}
