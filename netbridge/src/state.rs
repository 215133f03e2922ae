//! What netbridge created, journaled to disk as it goes, so `down` removes
//! exactly that (and nothing else) and a crashed `up` can be finished or
//! undone by the next `up`/`down`.
use std::{
    fs,
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::PathBuf,
};

use serde::{Deserialize, Serialize};

use crate::config::Topology;

pub const STATE_DIR: &str = "/run/netbridge/state";

#[derive(Debug, thiserror::Error)]
#[error("state file {path}: {source}")]
pub struct StateError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// A link netbridge created, by namespace (None = host) and name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedLink {
    pub netns: Option<String>,
    pub ifname: String,
}

/// A sysctl netbridge changed, with the value to restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangedSysctl {
    pub netns: Option<String>,
    pub key: String,
    pub previous: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    pub name: String,
    /// The topology as last applied, so `down NAME` works without the file.
    pub topology: Option<Topology>,
    /// Namespaces netbridge created (pre-existing ones are never deleted).
    pub netns: Vec<String>,
    /// Links netbridge created, in creation order.
    pub links: Vec<CreatedLink>,
    /// Routes netbridge added in the host namespace: (dst, via).
    pub host_routes: Vec<(String, Option<String>)>,
    pub sysctls: Vec<ChangedSysctl>,
    /// bpffs directory holding this topology's map and link pins.
    pub pin_dir: Option<PathBuf>,
}

impl State {
    pub fn path(name: &str) -> PathBuf {
        PathBuf::from(STATE_DIR).join(format!("{name}.json"))
    }

    pub fn load(name: &str) -> Result<Option<State>, StateError> {
        let path = Self::path(name);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StateError {
                    path,
                    source: io::Error::new(io::ErrorKind::InvalidData, e),
                }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError { path, source }),
        }
    }

    /// Names of every topology with a state file.
    pub fn list() -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(STATE_DIR)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()
                            .and_then(|n| n.strip_suffix(".json"))
                            .map(String::from)
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Writes the journal atomically (tmp + rename), root-only.
    pub fn save(&self) -> Result<(), StateError> {
        let path = Self::path(&self.name);
        let err = |source| StateError {
            path: path.clone(),
            source,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(STATE_DIR)
            .map_err(err)?;
        let tmp = path.with_extension("json.tmp");
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        let json = serde_json::to_vec_pretty(self).map_err(|e| err(io::Error::other(e)))?;
        f.write_all(&json).map_err(err)?;
        fs::rename(&tmp, &path).map_err(err)
    }

    pub fn remove(&self) -> Result<(), StateError> {
        let path = Self::path(&self.name);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StateError { path, source: e }),
            _ => Ok(()),
        }
    }

    /// True when nothing created is left to undo.
    pub fn is_empty(&self) -> bool {
        self.netns.is_empty()
            && self.links.is_empty()
            && self.host_routes.is_empty()
            && self.sysctls.is_empty()
            && self.pin_dir.is_none()
    }
}
