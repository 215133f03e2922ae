//! The dispatcher: environment and stdin in, verb checks, one call into a
//! [`Plugin`], result or error JSON out with the exit code. The same rules
//! as the Go skel of the reference plugins, plus VERSION echoing the
//! request's version as SPEC.md says.
use std::{
    ffi::OsString,
    io::{Read, Write},
    os::unix::fs::MetadataExt,
    path::Path,
};

use super::{
    conf::{Attachment, NetConf},
    env::{CniEnv, Command},
    error::{CniError, code},
    ipam::{Delegate, IpamConf},
    result::CniResult,
    version::{CniVersion, version_reply},
};

/// One parsed invocation.
#[derive(Debug, Clone)]
pub struct Request {
    pub env: CniEnv,
    pub conf: NetConf,
    /// stdin as received: what delegated plugins get.
    pub stdin: Vec<u8>,
}

impl Request {
    /// (CNI_CONTAINERID, CNI_IFNAME): the attachment ADD/DEL/CHECK act on.
    pub fn attachment(&self) -> Attachment {
        Attachment {
            container_id: self.env.container_id.clone(),
            ifname: self.env.ifname.clone(),
        }
    }

    /// The delegated IPAM plugin, if `ipam.type` names another binary.
    pub fn ipam_delegate(&self) -> Option<Result<Delegate, CniError>> {
        match &self.conf.ipam {
            Some(IpamConf::Delegated { plugin }) => Some(Delegate::new(
                plugin,
                &self.env.path,
                &self.stdin,
                self.conf.cni_version,
            )),
            _ => None,
        }
    }
}

/// The verbs a plugin implements; the dispatcher has checked env, config,
/// versions, prevResult (CHECK), valid-attachments (GC) and the netns
/// (ADD, CHECK) before calling.
pub trait Plugin {
    fn add(&mut self, req: &Request) -> Result<CniResult, CniError>;
    /// Must succeed when the attachment, its netns or prevResult are gone.
    fn del(&mut self, req: &Request) -> Result<(), CniError>;
    fn check(&mut self, req: &Request) -> Result<(), CniError>;
    /// Remove everything of attachments not in `conf.valid_attachments`.
    fn gc(&mut self, req: &Request) -> Result<(), CniError>;
    /// Ok when ADD can be served; else code 50 or 51.
    fn status(&mut self, req: &Request) -> Result<(), CniError>;
}

/// What to print and how to exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
}

/// Shown on stderr when run without CNI_COMMAND (by hand), exit 0.
pub fn about(name: &str) -> String {
    let v: Vec<&str> = CniVersion::SUPPORTED.iter().map(|v| v.as_str()).collect();
    format!(
        "{name}: netbridge CNI plugin {}\nCNI protocol versions supported: {}\n",
        env!("CARGO_PKG_VERSION"),
        v.join(", ")
    )
}

/// Runs one invocation against `plugin`.
pub fn dispatch(
    name: &str,
    lookup: impl Fn(&str) -> Option<OsString>,
    stdin: &[u8],
    plugin: &mut impl Plugin,
) -> Reply {
    // The version errors are printed in: the request's if we speak it.
    let out_version = serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| CniVersion::from_str_opt(v.get("cniVersion")?.as_str()?))
        .unwrap_or(CniVersion::LATEST);
    let fail = |e: CniError| Reply {
        stdout: pretty(&e.versioned(out_version)),
        stderr: Vec::new(),
        exit_code: 1,
    };
    let env = match CniEnv::from_lookup(&lookup) {
        Ok(env) => env,
        Err(_) if lookup("CNI_COMMAND").is_none_or(|c| c.is_empty()) => {
            return Reply {
                stdout: Vec::new(),
                stderr: about(name).into_bytes(),
                exit_code: 0,
            };
        }
        Err(e) => return fail(e),
    };
    if env.command == Command::Version {
        return Reply {
            stdout: pretty(&version_reply(stdin)),
            stderr: Vec::new(),
            exit_code: 0,
        };
    }
    let req = match NetConf::parse(stdin).and_then(|conf| precheck(&env, &conf).map(|_| conf)) {
        Ok(conf) => Request {
            env,
            conf,
            stdin: stdin.to_vec(),
        },
        Err(e) => return fail(e),
    };
    let v = req.conf.cni_version;
    let done = |r: Result<Vec<u8>, CniError>| match r {
        Ok(stdout) => Reply {
            stdout,
            stderr: Vec::new(),
            exit_code: 0,
        },
        Err(e) => fail(e),
    };
    match req.env.command {
        Command::Add => done(plugin.add(&req).map(|r| pretty(&r.versioned(v)))),
        Command::Del => done(plugin.del(&req).map(|()| Vec::new())),
        Command::Check => done(plugin.check(&req).map(|()| Vec::new())),
        Command::Gc => done(plugin.gc(&req).map(|()| Vec::new())),
        Command::Status => done(plugin.status(&req).map(|()| Vec::new())),
        Command::Version => unreachable!("handled above"),
    }
}

/// Verb rules that need both env and config.
fn precheck(env: &CniEnv, conf: &NetConf) -> Result<(), CniError> {
    let verb = env.command.as_str();
    match env.command {
        Command::Gc | Command::Status if !conf.cni_version.has_gc_and_status() => {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!("config version does not allow {verb}"),
            )
            .with_details(format!(
                "{verb} needs cniVersion 1.1.0, config is {}",
                conf.cni_version
            )));
        }
        Command::Gc if conf.valid_attachments.is_none() => {
            // Without the list, "everything is stale": refuse rather than wipe.
            return Err(CniError::new(
                code::INVALID_CONFIG,
                "GC without cni.dev/valid-attachments",
            ));
        }
        Command::Check if conf.prev_result.is_none() => {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                "CHECK without prevResult",
            ));
        }
        _ => {}
    }
    if matches!(env.command, Command::Add | Command::Check) {
        let netns = env.netns.as_deref().expect("required for ADD and CHECK");
        check_netns(netns)?;
    }
    Ok(())
}

/// CNI_NETNS must be a network namespace, and not the plugin's own (the Go
/// skel's ErrInvalidNetNS).
pub fn check_netns(path: &Path) -> Result<(), CniError> {
    let bad = |why: String| {
        CniError::new(
            code::INVALID_NETNS,
            format!("CNI_NETNS = {:?}: {why}", path.display().to_string()),
        )
    };
    let fs = nix::sys::statfs::statfs(path).map_err(|e| bad(format!("{e}")))?;
    let t = fs.filesystem_type();
    if t != nix::sys::statfs::NSFS_MAGIC && t != nix::sys::statfs::PROC_SUPER_MAGIC {
        return Err(bad("not a network namespace".into()));
    }
    let theirs = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    let ours = std::fs::metadata("/proc/self/ns/net").map_err(|e| bad(e.to_string()))?;
    if (theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino()) {
        return Err(bad(
            "plugin's netns and netns from CNI_NETNS should not be the same".into(),
        ));
    }
    Ok(())
}

fn pretty(v: &impl serde::Serialize) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(v).expect("JSON serializes");
    out.push(b'\n');
    out
}

/// Process entry point for a plugin binary: reads the environment and
/// stdin, writes the reply, exits with its code.
pub fn plugin_main(name: &str, plugin: &mut impl Plugin) -> ! {
    let mut stdin = Vec::new();
    let reply = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => dispatch(name, |k| std::env::var_os(k), &stdin, plugin),
        Err(e) => Reply {
            stdout: pretty(
                &CniError::new(code::IO_FAILURE, format!("error reading from stdin: {e}"))
                    .versioned(CniVersion::LATEST),
            ),
            stderr: Vec::new(),
            exit_code: 1,
        },
    };
    let _ = std::io::stdout().write_all(&reply.stdout);
    let _ = std::io::stderr().write_all(&reply.stderr);
    std::process::exit(reply.exit_code)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde_json::{Value, json};

    use super::*;

    /// Records calls; answers ADD with a fixed result.
    #[derive(Default)]
    struct Fake {
        calls: Vec<(Command, Attachment)>,
        fail: Option<CniError>,
    }

    impl Fake {
        fn answer(&mut self, req: &Request) -> Result<(), CniError> {
            self.calls.push((req.env.command, req.attachment()));
            self.fail.clone().map_or(Ok(()), Err)
        }
    }

    impl Plugin for Fake {
        fn add(&mut self, req: &Request) -> Result<CniResult, CniError> {
            self.answer(req)?;
            CniResult::from_slice(include_bytes!("testdata/ref-bridge-1.0.0-ADD.result.json"))
        }
        fn del(&mut self, req: &Request) -> Result<(), CniError> {
            self.answer(req)
        }
        fn check(&mut self, req: &Request) -> Result<(), CniError> {
            self.answer(req)
        }
        fn gc(&mut self, req: &Request) -> Result<(), CniError> {
            self.answer(req)
        }
        fn status(&mut self, req: &Request) -> Result<(), CniError> {
            self.answer(req)
        }
    }

    /// A network namespace that is not ours: a helper thread unshares one
    /// and parks; its /proc path stays valid while the guard lives.
    struct OtherNetns {
        path: String,
        _stop: std::sync::mpsc::Sender<()>,
    }

    fn other_netns() -> Option<OtherNetns> {
        let (tx_path, rx_path) = std::sync::mpsc::channel();
        let (stop, parked) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            let ok = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).is_ok();
            let tid = nix::unistd::gettid();
            let _ = tx_path.send(ok.then(|| format!("/proc/self/task/{tid}/ns/net")));
            let _ = parked.recv();
        });
        let path = rx_path.recv().ok()??;
        Some(OtherNetns { path, _stop: stop })
    }

    fn run(vars: &[(&str, &str)], stdin: &Value, fake: &mut Fake) -> (Reply, Value) {
        let m: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.into()))
            .collect();
        let r = dispatch(
            "netbridge-cni",
            |k| m.get(k).cloned(),
            stdin.to_string().as_bytes(),
            fake,
        );
        let v = if r.stdout.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&r.stdout).unwrap()
        };
        (r, v)
    }

    fn conf(version: &str) -> Value {
        json!({"cniVersion": version, "name": "nb", "type": "netbridge-cni"})
    }

    fn vars<'a>(cmd: &'a str, netns: &'a str) -> Vec<(&'a str, &'a str)> {
        vec![
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", "ctr1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", netns),
            ("CNI_PATH", "/usr/lib/cni"),
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=p"),
        ]
    }

    #[test]
    fn version_and_about() {
        let mut f = Fake::default();
        let (r, v) = run(
            &[("CNI_COMMAND", "VERSION")],
            &json!({"cniVersion": "0.4.0"}),
            &mut f,
        );
        assert_eq!(r.exit_code, 0);
        assert_eq!(
            v,
            json!({"cniVersion": "0.4.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]})
        );
        let (r, _) = run(&[], &json!({}), &mut f);
        assert_eq!(r.exit_code, 0);
        let about = String::from_utf8(r.stderr).unwrap();
        assert!(
            about.ends_with("CNI protocol versions supported: 0.4.0, 1.0.0, 1.1.0\n"),
            "{about}"
        );
        assert!(f.calls.is_empty());
    }

    #[test]
    fn add_prints_the_result_in_the_requested_version() {
        let Some(other) = other_netns() else {
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED add_prints_the_result_in_the_requested_version: unshare(CLONE_NEWNET) needs root"
            );
            return;
        };
        let ns = other.path.clone();
        for v in ["0.4.0", "1.0.0", "1.1.0"] {
            let mut f = Fake::default();
            let (r, out) = run(&vars("ADD", &ns), &conf(v), &mut f);
            assert_eq!(r.exit_code, 0, "{out}");
            assert_eq!(out["cniVersion"], v);
            assert_eq!(out["ips"][0].get("version").is_some(), v == "0.4.0");
            assert_eq!(
                f.calls,
                [(
                    Command::Add,
                    Attachment {
                        container_id: "ctr1".into(),
                        ifname: "eth0".into()
                    }
                )]
            );
        }
    }

    #[test]
    fn errors_are_spec_json_with_exit_1() {
        let mut f = Fake::default();
        // Our own netns as CNI_NETNS: code 8.
        let (r, e) = run(&vars("ADD", "/proc/self/ns/net"), &conf("1.0.0"), &mut f);
        assert_eq!((r.exit_code, e["code"].as_u64()), (1, Some(8)));
        assert_eq!(e["cniVersion"], "1.0.0");
        // Not a namespace at all.
        let (_, e) = run(&vars("ADD", "/etc/hostname"), &conf("1.0.0"), &mut f);
        assert_eq!(e["code"], 8);
        // Missing env, bad JSON, bad version, GC/STATUS on 1.0.0, CHECK without prevResult.
        let (_, e) = run(&[("CNI_COMMAND", "ADD")], &conf("1.0.0"), &mut f);
        assert_eq!(e["code"], 4);
        let m: HashMap<String, OsString> = vars("DEL", "")
            .iter()
            .map(|(k, v)| (k.to_string(), v.into()))
            .collect();
        let r = dispatch("x", |k| m.get(k).cloned(), b"{", &mut f);
        assert_eq!(
            serde_json::from_slice::<Value>(&r.stdout).unwrap()["code"],
            6
        );
        let (_, e) = run(&vars("DEL", ""), &conf("0.3.1"), &mut f);
        assert_eq!(e["code"], 1);
        assert_eq!(
            e["cniVersion"], "1.1.0",
            "unsupported request version: errors in the latest"
        );
        for verb in ["GC", "STATUS"] {
            let (_, e) = run(
                &[("CNI_COMMAND", verb), ("CNI_PATH", "/x")],
                &conf("1.0.0"),
                &mut f,
            );
            assert_eq!(e["code"], 1, "{verb}");
            assert_eq!(e["msg"], format!("config version does not allow {verb}"));
        }
        let (_, e) = run(
            &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/x")],
            &conf("1.1.0"),
            &mut f,
        );
        assert_eq!(
            (e["code"].as_u64(), e["msg"].as_str()),
            (Some(7), Some("GC without cni.dev/valid-attachments"))
        );
        let (_, e) = run(&vars("CHECK", "/proc/self/ns/net"), &conf("1.0.0"), &mut f);
        assert_eq!(e["code"], 7);
        assert!(
            f.calls.is_empty(),
            "nothing reached the plugin: {:?}",
            f.calls
        );
    }

    #[test]
    fn plugin_errors_pass_through_and_del_gc_status_reach_the_plugin() {
        let mut f = Fake {
            fail: Some(
                CniError::new(code::PLUGIN_NOT_AVAILABLE, "datapath not attached")
                    .with_details("no pins"),
            ),
            ..Fake::default()
        };
        let (r, e) = run(
            &[("CNI_COMMAND", "STATUS"), ("CNI_PATH", "/x")],
            &conf("1.1.0"),
            &mut f,
        );
        assert_eq!(r.exit_code, 1);
        assert_eq!(
            e,
            json!({"cniVersion": "1.1.0", "code": 50, "msg": "datapath not attached", "details": "no pins"})
        );
        let mut f = Fake::default();
        // DEL with an empty netns and no prevResult reaches the plugin.
        let (r, _) = run(&vars("DEL", ""), &conf("1.0.0"), &mut f);
        assert_eq!((r.exit_code, r.stdout.len()), (0, 0));
        let mut gc = conf("1.1.0");
        gc["cni.dev/valid-attachments"] = json!([{"containerID": "a", "ifname": "eth0"}]);
        let (r, _) = run(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/x")], &gc, &mut f);
        assert_eq!(r.exit_code, 0);
        assert_eq!(
            f.calls.iter().map(|c| c.0).collect::<Vec<_>>(),
            [Command::Del, Command::Gc]
        );
    }
}
