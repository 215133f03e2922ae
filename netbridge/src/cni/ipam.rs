//! IPAM: either delegated to the plugin named by `ipam.type` (found on
//! CNI_PATH, run with the same environment and stdin, SPEC.md section 4), or
//! built in (`ipam.type` = the plugin's own type), with host-local's range
//! syntax and leases kept in netbridge's state (see `store`).
use std::{
    ffi::OsString,
    io::Write,
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Command as Proc, Stdio},
};

use ipnet::IpNet;
use serde_json::Value;

use super::{
    conf::{Attachment, Fields},
    env::Command,
    error::{CniError, code},
    result::{CniResult, Route},
    version::{CniVersion, negotiate, parse_version_reply},
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpamConf {
    /// Run this plugin binary from CNI_PATH.
    Delegated { plugin: String },
    /// netbridge allocates from its own leases.
    Builtin(BuiltinIpam),
}

/// host-local's configuration, minus its file-system knobs (`dataDir`,
/// `resolvConf`): `ranges` (a list of range sets, one address from each) or
/// the single-range shorthand `subnet`/`rangeStart`/`rangeEnd`/`gateway`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltinIpam {
    pub range_sets: Vec<Vec<IpRange>>,
    pub routes: Vec<Route>,
}

/// One allocation pool, canonical: network address, first and last usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    pub subnet: IpNet,
    pub start: IpAddr,
    pub end: IpAddr,
    /// Excluded from allocation; the bridge's address with `isGateway`.
    pub gateway: Option<IpAddr>,
}

impl IpamConf {
    /// `plugin_type` is the configuration's own `type`: naming it in
    /// `ipam.type` selects the built-in IPAM.
    pub fn parse(v: Value, plugin_type: &str) -> Result<Self, CniError> {
        let mut f = Fields::new("ipam", v)?;
        let ty = f
            .string("type")?
            .filter(|t| !t.is_empty() && !t.contains('/'));
        let Some(ty) = ty else {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                "ipam.type: missing or not a plugin binary name",
            ));
        };
        if ty != plugin_type {
            // Not ours: the delegate validates the rest.
            return Ok(IpamConf::Delegated { plugin: ty });
        }
        BuiltinIpam::parse(f).map(IpamConf::Builtin)
    }
}

impl BuiltinIpam {
    fn parse(mut f: Fields) -> Result<Self, CniError> {
        let mut range_sets = Vec::new();
        for (i, set) in f.list("ranges")?.into_iter().enumerate() {
            let at = format!("ipam.ranges[{i}]");
            let Value::Array(set) = set else {
                return Err(CniError::invalid(&at, &set, "expected a list of ranges"));
            };
            let set = set
                .into_iter()
                .enumerate()
                .map(|(j, r)| IpRange::parse(Fields::new(&format!("{at}[{j}]"), r)?))
                .collect::<Result<Vec<_>, _>>()?;
            check_set(&at, &set)?;
            range_sets.push(set);
        }
        if f.m.contains_key("subnet") {
            if !range_sets.is_empty() {
                return Err(CniError::new(
                    code::INVALID_CONFIG,
                    "ipam: use either ranges or subnet, not both",
                ));
            }
            let mut single = Fields::new("ipam", Value::Object(Default::default()))?;
            for k in ["subnet", "rangeStart", "rangeEnd", "gateway"] {
                if let Some(v) = f.take(k) {
                    single.m.insert(k.into(), v);
                }
            }
            range_sets.push(vec![IpRange::parse(single)?]);
        }
        if range_sets.is_empty() {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                "ipam: the built-in IPAM needs ranges or subnet",
            ));
        }
        let mut routes = Vec::new();
        for (i, r) in f.list("routes")?.into_iter().enumerate() {
            let mut rf = Fields::new(&format!("ipam.routes[{i}]"), r)?;
            let dst = net_field(&mut rf, "dst")?.ok_or_else(|| {
                CniError::new(code::INVALID_CONFIG, format!("{}: dst is required", rf.at))
            })?;
            let gw = ip_field(&mut rf, "gw")?;
            rf.deny_unknown("a route")?;
            routes.push(Route::new(dst, gw));
        }
        f.deny_unknown("the built-in IPAM")?;
        Ok(BuiltinIpam { range_sets, routes })
    }
}

fn ip_field(f: &mut Fields, k: &str) -> Result<Option<IpAddr>, CniError> {
    f.parsed(k, "expected an IP address")
}

fn net_field(f: &mut Fields, k: &str) -> Result<Option<IpNet>, CniError> {
    f.parsed(k, "expected a CIDR")
}

/// Address arithmetic over both families.
pub(crate) fn to_u128(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(v) => u32::from(v) as u128,
        IpAddr::V6(v) => u128::from(v),
    }
}

pub(crate) fn from_u128(like: IpAddr, n: u128) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4((n as u32).into()),
        IpAddr::V6(_) => IpAddr::V6(n.into()),
    }
}

impl IpRange {
    fn parse(mut f: Fields) -> Result<Self, CniError> {
        let at = f.at.clone();
        let subnet = net_field(&mut f, "subnet")?.ok_or_else(|| {
            CniError::new(code::INVALID_CONFIG, format!("{at}: subnet is required"))
        })?;
        let bad = |k: &str, v: String, why: String| {
            CniError::invalid(&format!("{at}.{k}"), &Value::String(v), why)
        };
        if subnet.addr() != subnet.network() {
            return Err(bad(
                "subnet",
                subnet.to_string(),
                format!("host bits set; the network is {}", subnet.trunc()),
            ));
        }
        if subnet.max_prefix_len() - subnet.prefix_len() < 2 {
            return Err(bad(
                "subnet",
                subnet.to_string(),
                "too small to allocate from".into(),
            ));
        }
        // First and last usable: skip the network address, and for IPv4 the
        // broadcast address (host-local's defaults).
        let first = from_u128(subnet.addr(), to_u128(subnet.network()) + 1);
        let mut last = to_u128(subnet.broadcast());
        if subnet.addr().is_ipv4() {
            last -= 1;
        }
        let last = from_u128(subnet.addr(), last);
        let start = ip_field(&mut f, "rangeStart")?.unwrap_or(first);
        let end = ip_field(&mut f, "rangeEnd")?.unwrap_or(last);
        for (k, a) in [("rangeStart", start), ("rangeEnd", end)] {
            if to_u128(a) < to_u128(first)
                || to_u128(a) > to_u128(last)
                || a.is_ipv4() != subnet.addr().is_ipv4()
            {
                return Err(bad(
                    k,
                    a.to_string(),
                    format!("not a usable address of {subnet}"),
                ));
            }
        }
        if to_u128(start) > to_u128(end) {
            return Err(bad(
                "rangeEnd",
                end.to_string(),
                format!("before rangeStart {start}"),
            ));
        }
        let gateway = Some(ip_field(&mut f, "gateway")?.unwrap_or(first));
        if let Some(g) = gateway
            && (!subnet.contains(&g) || g.is_ipv4() != subnet.addr().is_ipv4())
        {
            return Err(bad("gateway", g.to_string(), format!("outside {subnet}")));
        }
        f.deny_unknown("a range")?;
        Ok(IpRange {
            subnet,
            start,
            end,
            gateway,
        })
    }

    pub fn contains(&self, a: IpAddr) -> bool {
        a.is_ipv4() == self.start.is_ipv4()
            && (to_u128(self.start)..=to_u128(self.end)).contains(&to_u128(a))
    }

    /// Usable addresses, in order, without the gateway.
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        (to_u128(self.start)..=to_u128(self.end))
            .map(|n| from_u128(self.start, n))
            .filter(|a| Some(*a) != self.gateway)
    }
}

/// Ranges of a set: one family, no overlaps (host-local's rule).
fn check_set(at: &str, set: &[IpRange]) -> Result<(), CniError> {
    if set.is_empty() {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!("{at}: empty range set"),
        ));
    }
    for (i, a) in set.iter().enumerate() {
        for b in &set[i + 1..] {
            if a.start.is_ipv4() != b.start.is_ipv4() {
                return Err(CniError::new(
                    code::INVALID_CONFIG,
                    format!("{at}: mixes IPv4 and IPv6"),
                ));
            }
            if a.contains(b.start) || a.contains(b.end) || b.contains(a.start) {
                return Err(CniError::new(
                    code::INVALID_CONFIG,
                    format!(
                        "{at}: ranges {}-{} and {}-{} overlap",
                        a.start, a.end, b.start, b.end
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Finds `name` on CNI_PATH: the first directory holding an executable file.
pub fn find_plugin(name: &str, cni_path: &[PathBuf]) -> Result<PathBuf, CniError> {
    cni_path
        .iter()
        .map(|d| d.join(name))
        .find(|p| is_plugin(p))
        .ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                format!("failed to find plugin {name:?} in path {cni_path:?}"),
            )
        })
}

/// A delegated plugin call: same environment (CNI_COMMAND set per call) and
/// the same stdin, the delegate's stderr passed through.
#[derive(Debug, Clone)]
pub struct Delegate {
    pub plugin: String,
    pub path: PathBuf,
    /// The full environment to run it with (normally the plugin's own).
    pub env: Vec<(OsString, OsString)>,
    pub stdin: Vec<u8>,
    /// The request's version, as parsed from stdin.
    pub version: CniVersion,
}

impl Delegate {
    /// Locates `plugin` on CNI_PATH; env is the process environment.
    pub fn new(
        plugin: &str,
        cni_path: &[PathBuf],
        stdin: &[u8],
        version: CniVersion,
    ) -> Result<Self, CniError> {
        Ok(Delegate {
            plugin: plugin.into(),
            path: find_plugin(plugin, cni_path)?,
            env: std::env::vars_os().collect(),
            stdin: stdin.to_vec(),
            version,
        })
    }

    /// The same delegate acting for another attachment (GC releasing a
    /// stale one's addresses through DEL, which host-local keys on
    /// CNI_CONTAINERID and CNI_IFNAME); no netns (DEL allows none).
    pub fn for_attachment(mut self, att: &Attachment) -> Self {
        let set: [(&str, &str); 3] = [
            ("CNI_CONTAINERID", &att.container_id),
            ("CNI_IFNAME", &att.ifname),
            ("CNI_NETNS", ""),
        ];
        self.env.retain(|(k, _)| !set.iter().any(|(s, _)| k == s));
        self.env.extend(
            set.iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v))),
        );
        self
    }

    /// Runs the delegate with `command`; Ok(stdout) on exit 0, else its
    /// error object (or code 999 with its output when it printed none).
    pub fn exec(&self, command: Command, stdin: &[u8]) -> Result<Vec<u8>, CniError> {
        let ctx = || format!("ipam plugin {} {}", self.plugin, command.as_str());
        let mut child = Proc::new(&self.path)
            .env_clear()
            .envs(self.env.iter().filter(|(k, _)| k != "CNI_COMMAND").cloned())
            .env("CNI_COMMAND", command.as_str())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                CniError::new(
                    code::IO_FAILURE,
                    format!("{}: {}: {e}", ctx(), self.path.display()),
                )
            })?;
        let mut pipe = child.stdin.take().expect("piped stdin");
        // A delegate that exits without reading stdin gives EPIPE: not ours to report.
        let _ = pipe.write_all(stdin);
        drop(pipe);
        let out = child
            .wait_with_output()
            .map_err(|e| CniError::new(code::IO_FAILURE, format!("{}: {e}", ctx())))?;
        if out.status.success() {
            return Ok(out.stdout);
        }
        Err(CniError::from_json(&out.stdout)
            .unwrap_or_else(|| {
                CniError::new(code::INTERNAL, format!("exited with {}", out.status))
                    .with_details(String::from_utf8_lossy(&out.stdout).into_owned())
            })
            .context(ctx()))
    }

    /// The version to talk to the delegate in: the request's, or the highest
    /// older one it lists (Debian 12's host-local stops at 1.0.0). None:
    /// nothing in common.
    pub fn negotiate(&self) -> Result<Option<CniVersion>, CniError> {
        let ask = serde_json::json!({ "cniVersion": self.version.as_str() }).to_string();
        let supported = parse_version_reply(&self.exec(Command::Version, ask.as_bytes())?)?;
        Ok(negotiate(self.version, &supported))
    }

    /// stdin with `cniVersion` replaced, when it must be.
    fn stdin_for(&self, v: CniVersion) -> Vec<u8> {
        if v == self.version {
            return self.stdin.clone();
        }
        let mut conf: Value = serde_json::from_slice(&self.stdin).expect("stdin parsed before");
        conf["cniVersion"] = v.as_str().into();
        // prevResult is a result of the request's version; drop it rather
        // than hand an old plugin a newer format (IPAM does not read it).
        if let Some(o) = conf.as_object_mut() {
            o.remove("prevResult");
        }
        serde_json::to_vec(&conf).expect("JSON value serializes")
    }

    fn common_version(&self, command: Command) -> Result<CniVersion, CniError> {
        self.negotiate()?.ok_or_else(|| {
            CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "ipam plugin {} {}: no CNI version in common with {}",
                    self.plugin,
                    command.as_str(),
                    self.version
                ),
            )
        })
    }

    /// ADD: the delegate's (abbreviated) result. On failure the delegate
    /// gets a DEL before the error is returned (SPEC.md section 4).
    pub fn add(&self) -> Result<CniResult, CniError> {
        let v = self.common_version(Command::Add)?;
        let stdin = self.stdin_for(v);
        let res = self.exec(Command::Add, &stdin).and_then(|out| {
            CniResult::from_slice(&out)
                .map_err(|e| e.context(format!("ipam plugin {} ADD", self.plugin)))
        });
        if res.is_err() {
            let _ = self.exec(Command::Del, &stdin);
        }
        res
    }

    /// DEL/CHECK: Ok on success.
    pub fn run(&self, command: Command) -> Result<(), CniError> {
        let v = self.common_version(command)?;
        self.exec(command, &self.stdin_for(v)).map(drop)
    }

    /// GC/STATUS: forwarded when the delegate speaks 1.1.0. An older one
    /// has neither verb: Ok(false), nothing to forward to.
    pub fn run_if_supported(&self, command: Command) -> Result<bool, CniError> {
        match self.negotiate()? {
            Some(v) if v.has_gc_and_status() => {
                self.exec(command, &self.stdin_for(v)).map(|_| true)
            }
            _ => Ok(false),
        }
    }
}

/// Whether `path` is an executable file.
pub fn is_plugin(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn builtin(ipam: Value) -> Result<BuiltinIpam, CniError> {
        match IpamConf::parse(ipam, "netbridge-cni")? {
            IpamConf::Builtin(b) => Ok(b),
            other => panic!("not built-in: {other:?}"),
        }
    }

    #[test]
    fn other_types_are_delegated_unvalidated() {
        let c = IpamConf::parse(
            json!({"type": "host-local", "whatever": [1]}),
            "netbridge-cni",
        )
        .unwrap();
        assert_eq!(
            c,
            IpamConf::Delegated {
                plugin: "host-local".into()
            }
        );
        for bad in [
            json!({}),
            json!({"type": ""}),
            json!({"type": "a/b"}),
            json!({"type": 1}),
        ] {
            assert_eq!(
                IpamConf::parse(bad.clone(), "netbridge-cni")
                    .unwrap_err()
                    .code,
                code::INVALID_CONFIG,
                "{bad}"
            );
        }
    }

    #[test]
    fn builtin_ranges_with_host_local_defaults() {
        let b = builtin(json!({"type": "netbridge-cni",
            "ranges": [[{"subnet": "192.168.88.0/24"}], [{"subnet": "fd00:88::/120", "rangeStart": "fd00:88::10"}]],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.0.0.0/8", "gw": "192.168.88.254"}]}))
        .unwrap();
        let r4 = b.range_sets[0][0];
        assert_eq!(r4.start.to_string(), "192.168.88.1");
        assert_eq!(r4.end.to_string(), "192.168.88.254");
        assert_eq!(r4.gateway.unwrap().to_string(), "192.168.88.1");
        assert_eq!(
            r4.addresses().next().unwrap().to_string(),
            "192.168.88.2",
            "gateway skipped"
        );
        assert_eq!(r4.addresses().count(), 253);
        let r6 = b.range_sets[1][0];
        assert_eq!(r6.end.to_string(), "fd00:88::ff", "no broadcast in IPv6");
        assert_eq!(r6.gateway.unwrap().to_string(), "fd00:88::1");
        assert_eq!(b.routes[1].gw.unwrap().to_string(), "192.168.88.254");
        // The single-range shorthand.
        let s = builtin(json!({"type": "netbridge-cni", "subnet": "192.168.5.0/29",
            "rangeStart": "192.168.5.3", "rangeEnd": "192.168.5.4", "gateway": "192.168.5.6"}))
        .unwrap();
        let got: Vec<String> = s.range_sets[0][0]
            .addresses()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(got, ["192.168.5.3", "192.168.5.4"]);
    }

    #[test]
    fn builtin_errors_name_the_key() {
        for (ipam, key) in [
            (
                json!({"subnet": "192.168.1.1/24"}),
                "ipam.subnet = \"192.168.1.1/24\": host bits set; the network is 192.168.1.0/24",
            ),
            (
                json!({"subnet": "192.168.1.0/31"}),
                "ipam.subnet = \"192.168.1.0/31\": too small",
            ),
            (json!({"subnet": "nope"}), "ipam.subnet = \"nope\""),
            (
                json!({"subnet": "192.168.1.0/24", "rangeStart": "192.168.2.1"}),
                "ipam.rangeStart = \"192.168.2.1\"",
            ),
            (
                json!({"subnet": "192.168.1.0/24", "rangeEnd": "192.168.1.255"}),
                "ipam.rangeEnd = \"192.168.1.255\"",
            ),
            (
                json!({"subnet": "192.168.1.0/24", "rangeStart": "192.168.1.9", "rangeEnd": "192.168.1.8"}),
                "ipam.rangeEnd",
            ),
            (
                json!({"subnet": "192.168.1.0/24", "gateway": "10.0.0.1"}),
                "ipam.gateway = \"10.0.0.1\"",
            ),
            (
                json!({"ranges": [[{"subnet": "192.168.1.0/24", "gw": "x"}]]}),
                "ipam.ranges[0][0].gw",
            ),
            (
                json!({"ranges": [[{"subnet": "192.168.1.0/24"}, {"subnet": "192.168.1.0/25"}]]}),
                "ipam.ranges[0]: ranges",
            ),
            (
                json!({"ranges": [[{"subnet": "192.168.1.0/24"}, {"subnet": "fd00::/64"}]]}),
                "ipam.ranges[0]: mixes",
            ),
            (json!({"ranges": [[]]}), "ipam.ranges[0]: empty"),
            (json!({}), "ipam: the built-in IPAM needs"),
            (
                json!({"subnet": "192.168.1.0/24", "ranges": [[{"subnet": "192.168.2.0/24"}]]}),
                "ipam: use either",
            ),
            (
                json!({"subnet": "192.168.1.0/24", "dataDir": "/tmp"}),
                "ipam.dataDir = \"/tmp\": unknown key",
            ),
            (
                json!({"subnet": "192.168.1.0/24", "routes": [{"gw": "192.168.1.1"}]}),
                "ipam.routes[0]: dst is required",
            ),
        ] {
            let mut ipam = ipam;
            ipam["type"] = "netbridge-cni".into();
            let e = builtin(ipam.clone()).unwrap_err();
            assert!(e.msg.starts_with(key), "{ipam}: {}", e.msg);
            assert!(
                matches!(e.code, code::INVALID_CONFIG | code::UNSUPPORTED_FIELD),
                "{e}"
            );
        }
    }

    #[test]
    fn find_plugin_searches_cni_path_in_order() {
        let dir = std::env::temp_dir().join(format!("nb-cni-find-{}", std::process::id()));
        let (a, b) = (dir.join("a"), dir.join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(a.join("ipam1"), "not executable").unwrap();
        std::fs::write(b.join("ipam1"), "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(b.join("ipam1"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let found = find_plugin("ipam1", &[a.clone(), b.clone()]);
        let missing = find_plugin("nope", &[a.clone(), b.clone()]);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(found.unwrap(), b.join("ipam1"));
        let e = missing.unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
        assert!(e.msg.contains("\"nope\""), "{}", e.msg);
    }

    /// A shell delegate: logs each call's CNI_COMMAND, CNI_CONTAINERID and
    /// stdin; speaks up to `max`; ADD fails when stdin contains "FAIL".
    fn fake_delegate(dir: &Path, max: &str) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let p = dir.join("fake-ipam");
        let versions = if max == "1.1.0" {
            r#""0.4.0","1.0.0","1.1.0""#
        } else {
            r#""0.4.0","1.0.0""#
        };
        let src = dir.join("fake-ipam.sh");
        std::fs::write(
            &src,
            format!(
                r#"#!/bin/sh
in=$(cat)
echo "$CNI_COMMAND $CNI_CONTAINERID $in" >> {log}
case "$CNI_COMMAND" in
VERSION) echo '{{"cniVersion":"1.0.0","supportedVersions":[{versions}]}}' ;;
ADD) case "$in" in *FAIL*) echo '{{"code":11,"msg":"pool busy","details":"d"}}'; exit 1;; esac
     echo '{{"cniVersion":"1.0.0","ips":[{{"address":"192.168.99.5/24","gateway":"192.168.99.1"}}],"dns":{{}}}}' ;;
CHECK) echo garbage; exit 2 ;;
esac
"#,
                log = dir.join("log").display()
            ),
        )
        .unwrap();
        // The executable is written by a child (`install`), never through
        // an fd of this process: a concurrent test's fork would inherit
        // that fd and the exec would fail with ETXTBSY ("Text file busy").
        let st = std::process::Command::new("install")
            .args(["-m", "0755"])
            .arg(&src)
            .arg(&p)
            .status()
            .unwrap();
        assert!(st.success(), "install {}: {st}", p.display());
        p
    }

    fn delegate(dir: &Path, max: &str, stdin: &str, version: CniVersion) -> Delegate {
        Delegate {
            plugin: "fake-ipam".into(),
            path: fake_delegate(dir, max),
            env: vec![
                ("CNI_COMMAND".into(), "ADD".into()),
                ("CNI_CONTAINERID".into(), "ctr9".into()),
                ("PATH".into(), "/usr/bin:/bin".into()),
            ],
            stdin: stdin.as_bytes().to_vec(),
            version,
        }
    }

    fn log(dir: &Path) -> Vec<String> {
        std::fs::read_to_string(dir.join("log"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    #[test]
    fn delegation_runs_the_real_executable_with_env_and_stdin() {
        let dir = std::env::temp_dir().join(format!("nb-cni-deleg-{}", std::process::id()));
        let conf = r#"{"cniVersion":"1.0.0","name":"n","type":"netbridge-cni","ipam":{"type":"fake-ipam"}}"#;
        let d = delegate(&dir, "1.0.0", conf, CniVersion::V1_0_0);
        let r = d.add().unwrap();
        assert_eq!(r.ips[0].address.to_string(), "192.168.99.5/24");
        d.run(Command::Del).unwrap();
        let check = d.run(Command::Check).unwrap_err();
        // GC: the delegate does not speak 1.1.0, nothing to forward.
        let gc = d.run_if_supported(Command::Gc).unwrap();
        let calls = log(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(check.code, code::INTERNAL);
        assert!(
            check
                .msg
                .starts_with("ipam plugin fake-ipam CHECK: exited with"),
            "{}",
            check.msg
        );
        assert_eq!(check.details.trim(), "garbage");
        assert!(!gc);
        // Same stdin byte for byte, CNI_COMMAND per call, the rest of the env kept.
        assert_eq!(calls[1], format!("ADD ctr9 {conf}"));
        assert_eq!(calls[3], format!("DEL ctr9 {conf}"));
        assert!(
            calls[0].starts_with("VERSION ctr9 {\"cniVersion\":\"1.0.0\"}"),
            "{calls:?}"
        );
        assert_eq!(calls.iter().filter(|c| c.starts_with("GC")).count(), 0);
    }

    #[test]
    fn delegation_downgrades_for_an_old_delegate_and_dels_after_a_failed_add() {
        let dir = std::env::temp_dir().join(format!("nb-cni-deleg2-{}", std::process::id()));
        let conf = r#"{"cniVersion":"1.1.0","name":"n","type":"netbridge-cni","ipam":{"type":"fake-ipam"},"prevResult":{"cniVersion":"1.1.0"}}"#;
        let d = delegate(&dir, "1.0.0", conf, CniVersion::V1_1_0);
        d.add().unwrap();
        let failing = delegate(
            &dir,
            "1.1.0",
            &conf.replace("\"n\"", "\"FAIL\""),
            CniVersion::V1_1_0,
        );
        let e = failing.add().unwrap_err();
        let gc = failing.run_if_supported(Command::Gc).unwrap();
        let calls = log(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        // 1.1.0 request, 1.0.0 delegate: it got cniVersion 1.0.0 and no prevResult.
        let add: Value = serde_json::from_str(calls[1].strip_prefix("ADD ctr9 ").unwrap()).unwrap();
        assert_eq!(add["cniVersion"], "1.0.0");
        assert!(add.get("prevResult").is_none());
        assert_eq!(add["ipam"]["type"], "fake-ipam");
        // The failed ADD kept the delegate's code and got a DEL right after.
        assert_eq!((e.code, e.details.as_str()), (code::TRY_AGAIN_LATER, "d"));
        assert_eq!(e.msg, "ipam plugin fake-ipam ADD: pool busy");
        assert!(
            calls[3].starts_with("ADD ctr9 ") && calls[4].starts_with("DEL ctr9 "),
            "{calls:?}"
        );
        // A 1.1.0 delegate gets GC, unchanged stdin.
        assert!(gc);
        assert!(
            calls
                .last()
                .unwrap()
                .starts_with("GC ctr9 {\"cniVersion\":\"1.1.0\""),
            "{calls:?}"
        );
    }
}
