//! The CNI parameters a runtime passes in the environment (SPEC.md section 2),
//! validated with the same rules as the Go skel of the reference plugins.
use std::{ffi::OsString, net::IpAddr, path::PathBuf};

use ipnet::IpNet;

use super::error::{CniError, code};

/// `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Gc,
    Status,
    Version,
}

impl Command {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Gc => "GC",
            Command::Status => "STATUS",
            Command::Version => "VERSION",
        }
    }

    /// Verbs that act on one attachment (container id, ifname).
    pub fn is_attachment(self) -> bool {
        matches!(self, Command::Add | Command::Del | Command::Check)
    }
}

/// The validated parameters of one invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniEnv {
    pub command: Command,
    /// `CNI_CONTAINERID`; empty for GC, STATUS and VERSION.
    pub container_id: String,
    /// `CNI_NETNS`; None when unset or empty (allowed for DEL).
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME`; empty for GC, STATUS and VERSION.
    pub ifname: String,
    pub args: CniArgs,
    /// `CNI_PATH`, split on ':' (empty entries dropped).
    pub path: Vec<PathBuf>,
}

/// Which variables each verb requires (the Go skel's table).
fn required(cmd: Command, var: &str) -> bool {
    use Command::*;
    match var {
        "CNI_CONTAINERID" | "CNI_IFNAME" => matches!(cmd, Add | Check | Del),
        "CNI_NETNS" => matches!(cmd, Add | Check),
        "CNI_PATH" => !matches!(cmd, Version),
        _ => false,
    }
}

impl CniEnv {
    /// From the process environment.
    pub fn from_process() -> Result<Self, CniError> {
        Self::from_lookup(|k| std::env::var_os(k))
    }

    /// From any lookup (tests pass a map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<OsString>) -> Result<Self, CniError> {
        let var = |k: &str| -> Result<String, CniError> {
            match get(k) {
                None => Ok(String::new()),
                Some(v) => v.into_string().map_err(|v| {
                    CniError::new(code::INVALID_ENV, format!("{k} is not UTF-8: {v:?}"))
                }),
            }
        };
        let cmd_s = var("CNI_COMMAND")?;
        let mut missing: Vec<&str> = Vec::new();
        if cmd_s.is_empty() {
            missing.push("CNI_COMMAND");
        }
        let command = Command::parse(&cmd_s);
        let vars = ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"];
        let mut vals = Vec::new();
        for k in vars {
            let v = var(k)?;
            if v.is_empty() && command.is_some_and(|c| required(c, k)) {
                missing.push(k);
            }
            vals.push(v);
        }
        if !missing.is_empty() {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!("required env variables [{}] missing", missing.join(",")),
            ));
        }
        let command = command.ok_or_else(|| {
            CniError::new(code::INVALID_ENV, format!("unknown CNI_COMMAND: {cmd_s}"))
        })?;
        let [container_id, netns, ifname, path] = <[String; 4]>::try_from(vals).unwrap();
        if command.is_attachment() {
            validate_container_id(&container_id)?;
            validate_ifname(&ifname)?;
        }
        let args = CniArgs::parse(&var("CNI_ARGS")?)?;
        Ok(CniEnv {
            command,
            container_id: if command.is_attachment() {
                container_id
            } else {
                String::new()
            },
            netns: (!netns.is_empty()).then(|| PathBuf::from(netns)),
            ifname: if command.is_attachment() {
                ifname
            } else {
                String::new()
            },
            args,
            path: std::env::split_paths(&path)
                .filter(|p| !p.as_os_str().is_empty())
                .collect(),
        })
    }
}

/// `[A-Za-z0-9][A-Za-z0-9_.-]*`: the spec's rule for container ids and
/// network names.
pub fn is_cni_name(s: &str) -> bool {
    let mut b = s.bytes();
    b.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && b.all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(&c))
}

pub fn validate_container_id(id: &str) -> Result<(), CniError> {
    if id.is_empty() {
        return Err(CniError::new(
            code::UNKNOWN_CONTAINER,
            "missing containerID",
        ));
    }
    if !is_cni_name(id) {
        return Err(
            CniError::new(code::INVALID_ENV, "invalid characters in containerID").with_details(id),
        );
    }
    Ok(())
}

/// The kernel's rule (dev_valid_name), as the Go utils check it: the
/// problem, if any.
pub fn ifname_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("interface name is empty")
    } else if name.len() > 15 {
        Some("interface name is too long (at most 15 bytes)")
    } else if name == "." || name == ".." {
        Some("interface name is . or ..")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        Some("interface name contains / or : or whitespace characters")
    } else {
        None
    }
}

pub fn validate_ifname(name: &str) -> Result<(), CniError> {
    match ifname_problem(name) {
        Some(why) => Err(CniError::new(
            code::INVALID_ENV,
            format!("CNI_IFNAME = {name:?}: {why}"),
        )),
        None => Ok(()),
    }
}

/// `CNI_ARGS`: `K=V;K=V`. Unknown keys are an error unless `IgnoreUnknown`
/// is 1/true (libcni's `LoadArgs` rule); the keys runtimes commonly send
/// are known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    /// Every pair, in order, as given.
    pub pairs: Vec<(String, String)>,
    pub ignore_unknown: bool,
    pub k8s_pod_name: Option<String>,
    pub k8s_pod_namespace: Option<String>,
    pub k8s_pod_infra_container_id: Option<String>,
    pub k8s_pod_uid: Option<String>,
    /// `IP=` (CONVENTIONS.md): requested addresses, comma separated.
    pub ips: Vec<IpAddr>,
    /// `MAC=`: requested container MAC (reference bridge).
    pub mac: Option<String>,
}

impl CniArgs {
    pub fn parse(s: &str) -> Result<Self, CniError> {
        let mut a = CniArgs::default();
        if s.is_empty() {
            return Ok(a);
        }
        let err = |msg: String| CniError::new(code::INVALID_ENV, format!("CNI_ARGS: {msg}"));
        let mut unknown = Vec::new();
        for pair in s.split(';') {
            let mut kv = pair.split('=');
            let (Some(k), Some(v), None) = (kv.next(), kv.next(), kv.next()) else {
                return Err(err(format!("invalid pair {pair:?}")));
            };
            a.pairs.push((k.to_string(), v.to_string()));
            match k {
                "IgnoreUnknown" => {
                    a.ignore_unknown = match v.to_ascii_lowercase().as_str() {
                        "1" | "true" => true,
                        "0" | "false" => false,
                        _ => return Err(err(format!("IgnoreUnknown = {v:?}: not a boolean"))),
                    }
                }
                "K8S_POD_NAME" => a.k8s_pod_name = Some(v.into()),
                "K8S_POD_NAMESPACE" => a.k8s_pod_namespace = Some(v.into()),
                "K8S_POD_INFRA_CONTAINER_ID" => a.k8s_pod_infra_container_id = Some(v.into()),
                "K8S_POD_UID" => a.k8s_pod_uid = Some(v.into()),
                "IP" => {
                    for ip in v.split(',') {
                        a.ips.push(
                            parse_ip_maybe_cidr(ip)
                                .ok_or_else(|| err(format!("IP = {ip:?}: not an IP address")))?,
                        );
                    }
                }
                "MAC" => a.mac = Some(v.into()),
                _ => unknown.push(pair.to_string()),
            }
        }
        if !unknown.is_empty() && !a.ignore_unknown {
            return Err(err(format!(
                "unknown args {unknown:?} (set IgnoreUnknown=1 to ignore them)"
            )));
        }
        Ok(a)
    }
}

/// `10.1.2.3` or `10.1.2.3/24` (the prefix is ignored): the `ips`
/// convention allows both.
pub fn parse_ip_maybe_cidr(s: &str) -> Option<IpAddr> {
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<IpNet>().ok().map(|n| n.addr()))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<CniEnv, CniError> {
        let m: HashMap<String, OsString> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        CniEnv::from_lookup(|k| m.get(k).cloned())
    }

    fn podman_add() -> Vec<(String, String)> {
        include_str!("testdata/podman-bridge-ADD.env")
            .lines()
            .map(|l| {
                let (k, v) = l.split_once('=').unwrap();
                (k.to_string(), v.to_string())
            })
            .collect()
    }

    #[test]
    fn parses_what_podman_passed() {
        let pairs = podman_add();
        let refs: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let e = env(&refs).unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.container_id.len(), 64);
        assert_eq!(e.ifname, "eth0");
        assert!(
            e.netns
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("/run/netns/netns-")
        );
        assert!(e.args.ignore_unknown);
        assert_eq!(e.args.k8s_pod_name.as_deref(), Some("c1"));
        assert_eq!(e.path.len(), 1);
    }

    #[test]
    fn version_needs_only_the_command_even_with_podmans_dummies() {
        let e = env(&[("CNI_COMMAND", "VERSION")]).unwrap();
        assert_eq!(e.command, Command::Version);
        // podman 4.3 sends CNI_IFNAME/NETNS/PATH=dummy and an empty id.
        let e = env(&[
            ("CNI_COMMAND", "VERSION"),
            ("CNI_CONTAINERID", ""),
            ("CNI_IFNAME", "dummy"),
            ("CNI_NETNS", "dummy"),
            ("CNI_PATH", "dummy"),
        ])
        .unwrap();
        assert_eq!(e.ifname, "");
    }

    #[test]
    fn missing_variables_are_named_per_verb() {
        let e = env(&[("CNI_COMMAND", "ADD")]).unwrap_err();
        assert_eq!(e.code, code::INVALID_ENV);
        assert_eq!(
            e.msg,
            "required env variables [CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME,CNI_PATH] missing"
        );
        // DEL may lack CNI_NETNS; GC and STATUS need only CNI_PATH.
        let del = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", ""),
            ("CNI_PATH", "/a::/b"),
        ])
        .unwrap();
        assert_eq!(del.netns, None);
        assert_eq!(del.path, vec![PathBuf::from("/a"), PathBuf::from("/b")]);
        assert!(env(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/x")]).is_ok());
        assert_eq!(
            env(&[("CNI_COMMAND", "STATUS")]).unwrap_err().msg,
            "required env variables [CNI_PATH] missing"
        );
        assert_eq!(
            env(&[]).unwrap_err().msg,
            "required env variables [CNI_COMMAND] missing"
        );
        let e = env(&[("CNI_COMMAND", "FOO"), ("CNI_PATH", "/x")]).unwrap_err();
        assert_eq!((e.code, e.msg.as_str()), (4, "unknown CNI_COMMAND: FOO"));
    }

    #[test]
    fn container_id_and_ifname_rules() {
        let base = |id: &'static str, ifname: &'static str| {
            env(&[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", id),
                ("CNI_IFNAME", ifname),
                ("CNI_PATH", "/x"),
            ])
        };
        assert!(base("abc-1.2_3", "eth0").is_ok());
        assert_eq!(base("-abc", "eth0").unwrap_err().code, code::INVALID_ENV);
        assert_eq!(base("a/b", "eth0").unwrap_err().details, "a/b");
        for bad in ["0123456789abcdef", ".", "..", "a/b", "a:b", "a b"] {
            let e = base("c1", bad).unwrap_err();
            assert_eq!(e.code, code::INVALID_ENV, "{bad}");
            assert!(e.msg.starts_with("CNI_IFNAME = "), "{}", e.msg);
        }
        assert!(base("c1", "0123456789abcde").is_ok());
        assert_eq!(
            validate_container_id("").unwrap_err().code,
            code::UNKNOWN_CONTAINER
        );
    }

    #[test]
    fn cni_args_rules() {
        let a =
            CniArgs::parse("IgnoreUnknown=1;K8S_POD_NAME=web;K8S_POD_NAMESPACE=default;FOO=bar")
                .unwrap();
        assert_eq!(a.k8s_pod_namespace.as_deref(), Some("default"));
        assert_eq!(a.pairs.len(), 4);
        let e = CniArgs::parse("K8S_POD_NAME=web;FOO=bar").unwrap_err();
        assert_eq!(e.code, code::INVALID_ENV);
        assert!(e.msg.contains("FOO=bar"), "{}", e.msg);
        assert!(CniArgs::parse("IgnoreUnknown=TRUE;FOO=bar").is_ok());
        assert!(CniArgs::parse("IgnoreUnknown=0;FOO=bar").is_err());
        assert!(CniArgs::parse("IgnoreUnknown=maybe").is_err());
        assert!(
            CniArgs::parse("A=b=c")
                .unwrap_err()
                .msg
                .contains("invalid pair")
        );
        assert!(CniArgs::parse("novalue").is_err());
        let ip = CniArgs::parse("IP=192.168.10.4/24,fd00::5;MAC=c2:11:22:33:44:55").unwrap();
        assert_eq!(
            ip.ips,
            vec![
                "192.168.10.4".parse::<IpAddr>().unwrap(),
                "fd00::5".parse().unwrap()
            ]
        );
        assert!(CniArgs::parse("IP=nope").is_err());
        assert_eq!(CniArgs::parse("").unwrap(), CniArgs::default());
    }
}
