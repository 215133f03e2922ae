//! Sandbox harness for netbridge integration tests.
//!
//! A [`Sandbox`] owns a uniquely named "host" namespace (netbridge runs inside
//! it, never in the machine's root namespace) plus any lab namespaces, pin
//! directories and processes a test registers. Everything is removed in
//! `Drop`, which also runs when the test panics.
use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

pub use netbridge;

pub mod natlab;
pub mod opkit;
pub mod testrun;

/// Environment variable that lets a non-root run skip the tests needing root
/// (each skip is named on stderr). Without it such a test fails: a test
/// that did not run must never read as "ok".
pub const ALLOW_SKIP_ENV: &str = "NETBRIDGE_TESTS_ALLOW_SKIP";

/// Environment variable naming a file where every sandbox appends its name
/// prefix before creating anything (set by `cargo xtask test`, which then
/// knows exactly which namespaces were its own).
pub const LEDGER_ENV: &str = "NETBRIDGE_TEST_LEDGER";

/// Marker `cargo xtask test` looks for on stderr: `SKIPPED <test>: ...`.
pub const SKIP_MARKER: &str = "SKIPPED";

/// Needs root: fails the calling test when not root, unless
/// [`ALLOW_SKIP_ENV`] is `1`; then it skips loudly, naming the test
/// function, and `cargo xtask test` lists it (CI runs as root).
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::is_root() {
            fn here() {}
            let test = $crate::test_name(::std::any::type_name_of_val(&here));
            $crate::skip_or_fail(&test);
            return;
        }
    };
}

pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// `datapath::some_test` from the type name of a function defined inside it.
pub fn test_name(inner_fn: &str) -> String {
    inner_fn
        .strip_suffix("::here")
        .unwrap_or(inner_fn)
        .to_string()
}

/// Panics (the test fails) unless skipping is allowed; then reports the skip.
pub fn skip_or_fail(test: &str) {
    if std::env::var(ALLOW_SKIP_ENV).as_deref() != Ok("1") {
        panic!(
            "{test} needs root (CAP_NET_ADMIN, CAP_BPF); run as root, or set \
             {ALLOW_SKIP_ENV}=1 to skip it"
        );
    }
    // Straight to the stderr handle: libtest captures eprintln! of passing
    // tests, and this must be seen (and parsed by `cargo xtask test`).
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "\n!!!!!!!! {SKIP_MARKER} {test}: needs root (CAP_NET_ADMIN, CAP_BPF) !!!!!!!!\n"
    );
}

/// Path of the netbridge binary built by cargo for these tests.
pub fn netbridge_bin() -> PathBuf {
    // tests/ is a sibling of target/: find the binary next to the test binary.
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().unwrap().parent().unwrap();
    let bin = dir.join("netbridge");
    assert!(
        bin.is_file(),
        "netbridge binary not found at {} (build it first: cargo build -p netbridge)",
        bin.display()
    );
    bin
}

/// Absolute path of a helper script in `tests/scripts/`.
pub fn script(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
        .display()
        .to_string()
}

/// Absolute path of a file in the repository's `examples/`.
pub fn example(name: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name);
    p.canonicalize()
        .unwrap_or_else(|e| panic!("example {name}: {e}"))
        .display()
        .to_string()
}

/// A short id unique per process and call, so names fit 15-byte ifnames and
/// tests can run after a crashed run left older sandboxes behind.
pub fn unique_id() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id() % 100_000;
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        % 1000;
    format!("{pid:05}{t:03}{n}")
}

/// One test's namespaces, pins and processes.
pub struct Sandbox {
    /// Short unique id; every name this sandbox makes starts with `prefix()`.
    pub id: String,
    /// The "host" namespace netbridge runs in.
    pub host: String,
    namespaces: Vec<String>,
    pin_dirs: Vec<PathBuf>,
    children: Vec<Child>,
    cleanups: Vec<Box<dyn FnOnce() + Send>>,
}

impl Sandbox {
    /// Creates the sandbox and its host namespace (loopback up).
    pub fn new() -> Sandbox {
        let id = unique_id();
        let host = format!("t{id}-host");
        let mut sb = Sandbox {
            id,
            host: host.clone(),
            namespaces: Vec::new(),
            pin_dirs: Vec::new(),
            children: Vec::new(),
            cleanups: Vec::new(),
        };
        sb.record_in_ledger();
        sb.add_ns_named(&host);
        sb
    }

    /// Appends this sandbox's prefix to the run's ledger ([`LEDGER_ENV`]),
    /// before anything is created, so a crash still leaves it attributed.
    fn record_in_ledger(&self) {
        let Ok(path) = std::env::var(LEDGER_ENV) else {
            return;
        };
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("ledger {path}: {e}"));
        // One short write with O_APPEND: lines of parallel tests never mix.
        f.write_all(format!("{}\n", self.prefix()).as_bytes())
            .unwrap_or_else(|e| panic!("ledger {path}: {e}"));
    }

    /// `t<id>-`: prefix of every namespace, topology, state file and pin
    /// directory of this sandbox (pass it to `netbridge --prefix`).
    /// `up` of the seed example `name` with this sandbox's prefix: its
    /// path and the prefix.
    pub fn up_example(&self, name: &str) -> (String, String) {
        let (file, prefix) = (example(name), self.prefix());
        self.nb_ok(&["up", "-f", &file, "--prefix", &prefix]);
        (file, prefix)
    }

    pub fn prefix(&self) -> String {
        format!("t{}-", self.id)
    }

    /// A name with this sandbox's prefix, e.g. `t1234560-red`.
    pub fn name(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix())
    }

    /// Creates (and owns) a namespace `t<id>-<suffix>` with loopback up.
    pub fn add_ns(&mut self, suffix: &str) -> String {
        let name = self.name(suffix);
        self.add_ns_named(&name);
        name
    }

    fn add_ns_named(&mut self, name: &str) {
        // Registered before creation so a half-made namespace is still removed.
        self.namespaces.push(name.to_string());
        let new =
            netbridge::netns::create(name).unwrap_or_else(|e| panic!("create netns {name}: {e}"));
        // An existing one is a stale leftover (or another run's) with the
        // same id: never test against it.
        assert!(new, "netns {name} already existed: stale sandbox id reused");
        self.sh(name, "ip link set lo up");
    }

    /// A path under /tmp named for this sandbox, removed at cleanup.
    pub fn tmp_file(&mut self, name: &str) -> PathBuf {
        let p = PathBuf::from(format!("/tmp/{}{name}", self.prefix()));
        let q = p.clone();
        self.on_cleanup(move || {
            let _ = std::fs::remove_file(&q);
        });
        p
    }

    /// MAC address of `ifname` in `ns` (through netlink: nsenter keeps the
    /// caller's /sys).
    pub fn mac_of(&self, ns: &str, ifname: &str) -> String {
        let out = self.sh(ns, &format!("ip -j link show {ifname}"));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v[0]["address"]
            .as_str()
            .unwrap_or_else(|| panic!("no MAC for {ifname} in {ns}: {out}"))
            .to_string()
    }

    /// Deletes one of this sandbox's namespaces now.
    pub fn remove_ns(&mut self, name: &str) {
        netbridge::netns::delete(name).unwrap_or_else(|e| panic!("delete netns {name}: {e}"));
        self.namespaces.retain(|n| n != name);
    }

    /// Registers a namespace made by someone else (e.g. netbridge itself) so
    /// it is removed even if the test fails before `down`.
    pub fn adopt_ns(&mut self, name: &str) {
        if !self.namespaces.iter().any(|n| n == name) {
            self.namespaces.push(name.to_string());
        }
    }

    /// Registers a pin directory to remove at the end.
    pub fn adopt_pins(&mut self, dir: &Path) {
        self.pin_dirs.push(dir.to_path_buf());
    }

    /// Registers a closure to run at cleanup (before namespaces go).
    pub fn on_cleanup(&mut self, f: impl FnOnce() + Send + 'static) {
        self.cleanups.push(Box::new(f));
    }

    /// A command that runs `argv` inside namespace `ns`.
    pub fn cmd(&self, ns: &str, argv: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{ns}")).arg("--").args(argv);
        c
    }

    /// Runs a shell snippet in `ns`; panics with its output if it fails.
    pub fn sh(&self, ns: &str, script: &str) -> String {
        let out = self.sh_output(ns, script);
        assert!(
            out.status.success(),
            "in {ns}: `{script}` failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a shell snippet in `ns` and returns its output, whatever the status.
    /// `netbridge metrics` for topology `topo` in the sandbox host,
    /// listening on `listen`, exiting after `max_requests` scrapes.
    pub fn spawn_metrics(&mut self, topo: &str, listen: &str, max_requests: u32) {
        let (bin, host, max) = (netbridge_bin(), self.host.clone(), max_requests.to_string());
        let args = [
            "metrics",
            "--name",
            topo,
            "--listen",
            listen,
            "--max-requests",
            &max,
        ];
        let mut argv = vec![bin.to_str().unwrap()];
        argv.extend(args);
        self.spawn(&host, &argv);
    }

    /// Polls `curl url` from `ns` (2 s a try) until it answers HTTP 200,
    /// for up to 10 s: whether it did.
    pub fn http_200_within_10s(&self, ns: &str, url: &str) -> bool {
        let curl = format!("curl -s -m 2 -o /dev/null -w '%{{http_code}}' {url}");
        Sandbox::wait_for(Duration::from_secs(10), || {
            (self.sh_output(ns, &curl).stdout == b"200").then_some(())
        })
        .is_some()
    }

    pub fn sh_output(&self, ns: &str, script: &str) -> Output {
        self.cmd(ns, &["sh", "-c", script])
            .stdin(Stdio::null())
            .output()
            .expect("spawn nsenter")
    }

    /// Starts a long-running process in `ns`, killed (by pid) at cleanup.
    pub fn spawn(&mut self, ns: &str, argv: &[&str]) -> u32 {
        self.spawn_with(ns, argv, Stdio::null(), Stdio::null()).id()
    }

    fn spawn_with(&mut self, ns: &str, argv: &[&str], out: Stdio, err: Stdio) -> &mut Child {
        let child = self
            .cmd(ns, argv)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {argv:?} in {ns}: {e}"));
        self.children.push(child);
        self.children.last_mut().unwrap()
    }

    /// Starts a process in `ns` (owned: killed at cleanup) with its stdout
    /// in `stdout` (or discarded), and returns once it printed a line
    /// containing `marker` on stderr. Panics with its stderr if it exits or
    /// stays silent for 20 s instead.
    pub fn spawn_ready(
        &mut self,
        ns: &str,
        argv: &[&str],
        stdout: Option<&Path>,
        marker: &str,
    ) -> Ready {
        let out = match stdout {
            Some(p) => Stdio::from(
                std::fs::File::create(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
            ),
            None => Stdio::null(),
        };
        let child = self.spawn_with(ns, argv, out, Stdio::piped());
        let pid = child.id();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let marker_owned = marker.to_string();
        // Drains stderr for the whole life of the process (it never blocks
        // on a full pipe) and keeps it for `stop`.
        let reader = std::thread::spawn(move || {
            let mut all = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains(&marker_owned) {
                    let _ = tx.send(());
                }
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        let ready = Ready {
            pid,
            reader: Some(reader),
        };
        if rx.recv_timeout(Duration::from_secs(20)).is_err() {
            let (status, text) = self.stop(ready);
            panic!("{argv:?} in {ns} never printed {marker:?} ({status}):\n{text}");
        }
        ready
    }

    /// tcpdump in `ns` (`tcpdump -n --immediate-mode ARGS`), text output
    /// into `stdout` if given; returns once the capture is open ("listening
    /// on"), so no packet sent afterwards is missed.
    pub fn tcpdump(&mut self, ns: &str, args: &[&str], stdout: Option<&Path>) -> Ready {
        let mut argv = vec!["tcpdump", "-n", "--immediate-mode"];
        argv.extend_from_slice(args);
        self.spawn_ready(ns, &argv, stdout, "listening on")
    }

    /// Stops a [`Ready`] process (SIGINT: tcpdump writes out what it holds
    /// and its statistics), waits for it, returns its status and stderr.
    pub fn stop(&mut self, mut ready: Ready) -> (ExitStatus, String) {
        let status = self.interrupt(ready.pid);
        let text = ready.reader.take().unwrap().join().unwrap_or_default();
        (status, text)
    }

    /// Waits (up to `timeout`, then kills it and panics) for a [`Ready`]
    /// process to exit by itself; returns its status and stderr.
    pub fn wait_exit(&mut self, mut ready: Ready, timeout: Duration) -> (ExitStatus, String) {
        let child = self.take_child(ready.pid);
        let status = wait_until(child, timeout);
        let text = ready.reader.take().unwrap().join().unwrap_or_default();
        let status =
            status.unwrap_or_else(|| panic!("pid {} ran past {timeout:?}:\n{text}", ready.pid));
        (status, text)
    }

    /// Interrupts (SIGINT) this sandbox's process `pid` and waits for it.
    pub fn interrupt(&mut self, pid: u32) -> ExitStatus {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let child = self.take_child(pid);
        wait_until(child, Duration::from_secs(20))
            .unwrap_or_else(|| panic!("pid {pid} ignored SIGINT"))
    }

    fn take_child(&mut self, pid: u32) -> Child {
        let i = self
            .children
            .iter()
            .position(|c| c.id() == pid)
            .unwrap_or_else(|| panic!("pid {pid} is not a process of this sandbox"));
        self.children.remove(i)
    }

    /// Stops a tcpdump started with [`Sandbox::tcpdump`] and checks it lost
    /// nothing; returns the number of packets it captured.
    pub fn stop_tcpdump(&mut self, capture: Ready) -> u64 {
        let (status, text) = self.stop(capture);
        assert!(status.success(), "tcpdump failed ({status}):\n{text}");
        tcpdump_stats(&text)
    }

    /// Is this sandbox's process `pid` still running?
    pub fn alive(&mut self, pid: u32) -> bool {
        self.children
            .iter_mut()
            .find(|c| c.id() == pid)
            .is_some_and(|c| c.try_wait().expect("wait").is_none())
    }

    /// Every iptables, ip6tables and nftables rule or table in `ns`;
    /// panics if a tool fails (a failing tool must not read as "none").
    pub fn netfilter_rules(&self, ns: &str) -> Vec<String> {
        let mut found = Vec::new();
        let nft = self.sh(ns, "nft list ruleset");
        found.extend(
            nft.lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| format!("nft: {l}")),
        );
        for tool in ["iptables-save", "ip6tables-save"] {
            let out = self.sh(ns, tool);
            found.extend(
                out.lines()
                    .filter(|l| l.starts_with("-A") || l.starts_with('*'))
                    .map(|l| format!("{tool}: {l}")),
            );
        }
        found
    }

    /// Namespaces of this sandbox that exist now (its own and those
    /// netbridge made under its prefix).
    pub fn live_namespaces(&self) -> Vec<String> {
        let prefix = self.prefix();
        netbridge::netns::list()
            .into_iter()
            .filter(|n| n.starts_with(&prefix))
            .collect()
    }

    /// Runs the netbridge CLI inside the host namespace.
    pub fn netbridge(&self, args: &[&str]) -> Output {
        let bin = netbridge_bin();
        let mut argv = vec![bin.to_str().unwrap()];
        argv.extend_from_slice(args);
        self.cmd(&self.host, &argv)
            .stdin(Stdio::null())
            .output()
            .expect("spawn netbridge")
    }

    /// Runs the netbridge CLI in the host namespace, asserting success;
    /// returns its stdout.
    pub fn nb_ok(&self, args: &[&str]) -> String {
        let out = self.netbridge(args);
        assert!(
            out.status.success(),
            "netbridge {args:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Creates a veth pair `a_if`@`a_ns` <-> `b_if`@`b_ns`, both up, with
    /// optional addresses (test fixture; netbridge itself never shells out).
    pub fn veth(
        &self,
        a_ns: &str,
        a_if: &str,
        a_addr: Option<&str>,
        b_ns: &str,
        b_if: &str,
        b_addr: Option<&str>,
    ) {
        self.sh(
            a_ns,
            &format!("ip link add {a_if} type veth peer name {b_if} netns {b_ns} && ip link set {a_if} up"),
        );
        self.sh(b_ns, &format!("ip link set {b_if} up"));
        if let Some(a) = a_addr {
            self.sh(a_ns, &format!("ip addr add {a} dev {a_if}"));
        }
        if let Some(b) = b_addr {
            self.sh(b_ns, &format!("ip addr add {b} dev {b_if}"));
        }
    }

    /// Polls `f` until it returns `Some`, up to `timeout`.
    pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(v) = f() {
                return Some(v);
            }
            if Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A process of a [`Sandbox`] that announced it was ready (see
/// [`Sandbox::spawn_ready`]); its stderr is kept until it is stopped.
pub struct Ready {
    pub pid: u32,
    reader: Option<JoinHandle<String>>,
}

/// Waits up to `timeout` for `child` to exit; kills it (and returns None)
/// if it does not.
fn wait_until(mut child: Child, timeout: Duration) -> Option<ExitStatus> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return Some(s);
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Packets tcpdump captured, from the statistics it prints on exit;
/// panics if the kernel dropped any (the capture would undercount).
pub fn tcpdump_stats(stderr: &str) -> u64 {
    // tcpdump writes "1 packet captured" but "2 packets captured".
    let count = |what: &str| -> u64 {
        stderr
            .lines()
            .find_map(|l| {
                let (n, rest) = l.trim().split_once(' ')?;
                let rest = rest
                    .strip_prefix("packets ")
                    .or(rest.strip_prefix("packet "))?;
                (rest == what).then(|| n.parse().ok()).flatten()
            })
            .unwrap_or_else(|| panic!("no \"packet(s) {what}\" in tcpdump's output:\n{stderr}"))
    };
    assert_eq!(
        count("dropped by kernel"),
        0,
        "tcpdump lost packets:\n{stderr}"
    );
    count("captured")
}

/// What a sandbox's host looks like: compared before/after to prove a
/// command changed nothing (or removed everything it made).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub netns: Vec<String>,
    pub host_links: Vec<String>,
    pub state_files: Vec<String>,
    pub pin_dirs: Vec<String>,
}

impl Sandbox {
    pub fn snapshot(&self) -> Snapshot {
        let prefix = self.prefix();
        let ls = |dir: &str| -> Vec<String> {
            // A directory that does not exist (yet) holds nothing; any
            // other error must not read as "nothing".
            let rd = match std::fs::read_dir(dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
                Err(e) => panic!("listing {dir}: {e}"),
            };
            let mut v: Vec<String> = rd
                .map(|e| e.unwrap_or_else(|e| panic!("listing {dir}: {e}")))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect();
            v.sort();
            v
        };
        let links = self.sh(
            &self.host,
            "ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | sort",
        );
        Snapshot {
            netns: ls(netbridge::netns::NETNS_RUN_DIR),
            host_links: links.lines().map(String::from).collect(),
            state_files: ls(netbridge::state::STATE_DIR),
            pin_dirs: ls(netbridge::bpf::BPFFS_ROOT),
        }
    }
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        for mut c in self.children.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
        for f in self.cleanups.drain(..) {
            f();
        }
        for d in &self.pin_dirs {
            let _ = std::fs::remove_dir_all(d);
        }
        // Anything netbridge made under this sandbox's prefix, even if the
        // test died before `down`: pins, journals, namespaces.
        let prefix = self.prefix();
        let swept = |dir: &str| -> Vec<PathBuf> {
            std::fs::read_dir(dir)
                .map(|rd| {
                    rd.filter_map(|e| e.ok())
                        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                        .map(|e| e.path())
                        .collect()
                })
                .unwrap_or_default()
        };
        for d in swept(netbridge::bpf::BPFFS_ROOT) {
            let _ = std::fs::remove_dir_all(d);
        }
        for f in swept(netbridge::state::STATE_DIR) {
            let _ = std::fs::remove_file(f);
        }
        for ns in netbridge::netns::list() {
            if ns.starts_with(&prefix) && !self.namespaces.contains(&ns) {
                self.namespaces.push(ns);
            }
        }
        // Lab namespaces first, the host last (veths die with either end).
        for ns in self.namespaces.iter().rev() {
            if let Err(e) = netbridge::netns::delete(ns) {
                eprintln!("sandbox cleanup: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::tcpdump_stats;

    #[test]
    fn tcpdump_stats_reads_singular_and_plural() {
        let one = "1 packet captured\n1 packet received by filter\n0 packets dropped by kernel\n";
        assert_eq!(tcpdump_stats(one), 1);
        let many = "tcpdump: listening\n25 packets captured\n25 packets received by filter\n0 packets dropped by kernel\n";
        assert_eq!(tcpdump_stats(many), 25);
    }

    #[test]
    #[should_panic(expected = "tcpdump lost packets")]
    fn tcpdump_stats_rejects_kernel_drops() {
        tcpdump_stats(
            "9 packets captured\n12 packets received by filter\n3 packets dropped by kernel\n",
        );
    }
}
