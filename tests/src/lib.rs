//! Sandbox harness for netbridge integration tests.
//!
//! A [`Sandbox`] owns a uniquely named "host" namespace (netbridge runs inside
//! it, never in the machine's root namespace) plus any lab namespaces, pin
//! directories and processes a test registers. Everything is removed in
//! `Drop`, which also runs when the test panics.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

pub use netbridge;

pub mod natlab;
pub mod testrun;

/// Skips the calling test, loudly, when not root (CI runs as root).
#[macro_export]
macro_rules! require_root {
    () => {
        if !nix::unistd::Uid::effective().is_root() {
            // Straight to the stderr handle: libtest captures eprintln! of
            // passing tests, and this must be seen.
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "\n!!!!!!!! SKIPPED {}: needs root (CAP_NET_ADMIN, CAP_BPF) !!!!!!!!\n",
                module_path!()
            );
            return;
        }
    };
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
        sb.add_ns_named(&host);
        sb
    }

    /// `t<id>-`: prefix of every namespace, topology, state file and pin
    /// directory of this sandbox (pass it to `netbridge --prefix`).
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
        netbridge::netns::create(name).unwrap_or_else(|e| panic!("create netns {name}: {e}"));
        self.sh(name, "ip link set lo up");
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
    pub fn sh_output(&self, ns: &str, script: &str) -> Output {
        self.cmd(ns, &["sh", "-c", script])
            .stdin(Stdio::null())
            .output()
            .expect("spawn nsenter")
    }

    /// Starts a long-running process in `ns`, killed (by pid) at cleanup.
    pub fn spawn(&mut self, ns: &str, argv: &[&str]) -> u32 {
        let child = self
            .cmd(ns, argv)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {argv:?} in {ns}: {e}"));
        let pid = child.id();
        self.children.push(child);
        pid
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
            let mut v: Vec<String> = std::fs::read_dir(dir)
                .map(|rd| {
                    rd.filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|n| n.starts_with(&prefix))
                        .collect()
                })
                .unwrap_or_default();
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
