//! What netbridge created, journaled to disk as it goes, so `down` removes
//! exactly that (and nothing else) and a crashed `up` can be finished or
//! undone by the next `up`/`down`.
use std::{
    fs, io,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::config::{Port, Topology};

pub const STATE_DIR: &str = "/run/netbridge/state";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The journal exists but cannot be read as one: nothing is changed,
    /// and the message says how to get out.
    #[error(
        "state file {path} is corrupt ({source}); nothing was changed. It lists what netbridge \
         created for this topology: check it, remove those objects by hand if needed \
         (`ip netns list`, `ip link`), then delete it (`rm {path}`) and run the command again"
    )]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
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
    /// Ports attached to the running topology beyond its file's namespaces
    /// (`topology::add_port`); `up` keeps them, `down` removes them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Port>,
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
    /// A new, empty journal for topology `name`.
    pub fn new(name: &str) -> State {
        State {
            name: name.into(),
            ..State::default()
        }
    }

    pub fn path(name: &str) -> PathBuf {
        Self::path_in(Path::new(STATE_DIR), name)
    }

    fn path_in(dir: &Path, name: &str) -> PathBuf {
        dir.join(format!("{name}.json"))
    }

    pub fn load(name: &str) -> Result<Option<State>, StateError> {
        Self::load_from(Path::new(STATE_DIR), name)
    }

    /// [`State::load`] from directory `dir`.
    pub fn load_from(dir: &Path, name: &str) -> Result<Option<State>, StateError> {
        let path = Self::path_in(dir, name);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| StateError::Corrupt { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Io { path, source }),
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
        self.save_in(Path::new(STATE_DIR))
    }

    /// [`State::save`] into directory `dir` (created 0700).
    pub fn save_in(&self, dir: &Path) -> Result<(), StateError> {
        let path = Self::path_in(dir, &self.name);
        let err = |source| StateError::Io {
            path: path.clone(),
            source,
        };
        crate::lock::private_dir(dir).map_err(err)?;
        let json = serde_json::to_vec_pretty(self).map_err(|e| err(io::Error::other(e)))?;
        crate::lock::write_private(&path, &json).map_err(err)
    }

    pub fn remove(&self) -> Result<(), StateError> {
        let path = Self::path(&self.name);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(StateError::Io { path, source: e })
            }
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

    /// Forgets every object `other` lists (after they were undone).
    pub fn forget(&mut self, other: &State) {
        self.netns.retain(|n| !other.netns.contains(n));
        self.links.retain(|l| !other.links.contains(l));
        self.host_routes.retain(|r| !other.host_routes.contains(r));
        self.sysctls.retain(|s| !other.sysctls.contains(s));
        if other.pin_dir.is_some() {
            self.pin_dir = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("nb-state-{tag}-{}", std::process::id()))
    }

    fn sample() -> State {
        let mut st = State::new("lab");
        st.topology = Some(Topology::default_lab());
        st.netns = vec!["a".into(), "b".into()];
        st.links.push(CreatedLink {
            netns: None,
            ifname: "br0".into(),
        });
        st.host_routes
            .push(("0.0.0.0/0".into(), Some("203.0.113.254".into())));
        st.sysctls.push(ChangedSysctl {
            netns: Some("a".into()),
            key: "net.ipv4.ip_forward".into(),
            previous: "0".into(),
        });
        st.pin_dir = Some("/run/netbridge/bpf/lab".into());
        st
    }

    /// The journal round-trips through its file, written 0600 in a 0700
    /// directory, and a missing file is "not up", not an error.
    #[test]
    fn journal_round_trips_root_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tmpdir("rt");
        let st = sample();
        st.save_in(&dir).unwrap();
        let back = State::load_from(&dir, "lab").unwrap().unwrap();
        assert_eq!(
            serde_json::to_value(&back).unwrap(),
            serde_json::to_value(&st).unwrap()
        );
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&State::path_in(&dir, "lab")), 0o600);
        assert!(State::load_from(&dir, "other").unwrap().is_none());
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("lab.json")]);
        fs::remove_dir_all(dir).unwrap();
    }

    /// A corrupt journal is an error naming the file and the way out.
    #[test]
    fn corrupt_journal_names_the_file_and_the_way_out() {
        let dir = tmpdir("bad");
        fs::create_dir_all(&dir).unwrap();
        let path = State::path_in(&dir, "lab");
        fs::write(&path, b"{\"name\": \"lab\", \"netns\": [").unwrap();
        let e = State::load_from(&dir, "lab").unwrap_err().to_string();
        let p = path.display().to_string();
        assert!(e.contains(&format!("state file {p} is corrupt")), "{e}");
        assert!(
            e.contains(&format!("rm {p}")) && e.contains("nothing was changed"),
            "{e}"
        );
        fs::remove_dir_all(dir).unwrap();
    }

    /// Journals written before attachments existed still load.
    #[test]
    fn older_journal_without_attachments_loads() {
        let mut v = serde_json::to_value(sample()).unwrap();
        v.as_object_mut().unwrap().remove("attachments");
        let st: State = serde_json::from_value(v).unwrap();
        assert!(st.attachments.is_empty());
    }

    #[test]
    fn forget_and_is_empty() {
        let mut st = sample();
        assert!(!st.is_empty());
        let mut part = State::new("lab");
        part.netns = vec!["b".into()];
        part.sysctls = st.sysctls.clone();
        st.forget(&part);
        assert_eq!(st.netns, vec!["a".to_string()]);
        assert!(st.sysctls.is_empty() && st.pin_dir.is_some());
        let all = st.clone();
        st.forget(&all);
        assert!(st.is_empty(), "{st:?}");
    }
}
