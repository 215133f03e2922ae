//! `cargo xtask`: build, run and test netbridge on a fresh machine.
//!
//! Every command first checks the toolchain and the tools the tests drive
//! (Debian's BPF-capable rustc, bpf-linker, iproute2, ping, ...) and installs
//! whatever is missing, saying what it does.
mod bench;
mod bench_cni;
mod bench_flood;
mod bench_scale;
mod clippy;
mod crr;
mod dist;
mod ebpf_build;
mod floor;
mod rootns;
mod soak;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "netbridge developer tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install missing toolchain pieces and build the eBPF object.
    BuildEbpf,
    /// Build everything and run the demo lab (arguments go to `netbridge demo`).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build everything and run all tests (arguments go to `cargo test`).
    Test {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Only check/install the toolchain and test tools.
    Setup,
    /// clippy with -D warnings over every crate, the eBPF crate included
    /// (for the BPF target, with Debian's clippy; arguments go to the host
    /// run).
    Clippy {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Datapaths side by side (direct veth, Linux bridge, netbridge TC and
    /// XDP), interleaved rounds; writes target/bench/results.{txt,json,svg}.
    Bench {
        /// Smoke-test size for CI (about a minute and a half): one round of
        /// 1 s streams, every workload and scale run once, no thresholds.
        #[arg(long)]
        quick: bool,
        /// Only `up` at scale: 100 namespaces vs the `ip` script (ROUNDS
        /// interleaved runs), then up/status/stats/down of 1,000; writes
        /// target/bench/scale.{txt,json}.
        #[arg(long, conflicts_with = "quick")]
        scale: bool,
        #[arg(long, default_value_t = 5)]
        rounds: u32,
        /// Seconds per stream measurement.
        #[arg(long, default_value_t = 5)]
        secs: u32,
        /// Only the NAT flood figure (about 20 s): new connections through
        /// a forward under a bounded SYN flood, netbridge vs iptables.
        #[arg(long, conflicts_with = "scale")]
        flood_only: bool,
    },
    /// Build the Debian package (target/dist/netbridge_VERSION-1_ARCH.deb).
    Dist {
        /// Then install it with dpkg, run it with a bare environment, purge
        /// it and check nothing is left (CI; needs root).
        #[arg(long)]
        check: bool,
    },
    /// Opt-in endurance run of the in-kernel NAT expiry: 200,000 sessions
    /// through a 1,000-session table with no gc process (~6 minutes; the
    /// run is capped at N minutes, at most 60). Writes
    /// target/soak/results.{txt,json}.
    Soak {
        #[arg(long, default_value_t = 10)]
        minutes: u32,
    },
}

/// Debian packages: the eBPF toolchain (TOOLCHAIN.md) and what tests drive.
const APT_TOOLCHAIN: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
];
/// (binary that must exist, package providing it)
const APT_TOOLS: &[(&str, &str)] = &[
    ("/usr/sbin/ip", "iproute2"),
    ("/usr/bin/ping", "iputils-ping"),
    ("/usr/sbin/sysctl", "procps"),
    ("/usr/sbin/bpftool", "bpftool"),
    ("/usr/bin/nsenter", "util-linux"),
    ("/usr/bin/tcpdump", "tcpdump"),
    ("/usr/bin/iperf3", "iperf3"),
    ("/usr/bin/curl", "curl"),
    ("/usr/bin/python3", "python3"),
    ("/usr/sbin/ethtool", "ethtool"),
    ("/usr/sbin/traceroute", "traceroute"),
    ("/usr/bin/tshark", "tshark"),
    ("/usr/sbin/nft", "nftables"),
    ("/usr/sbin/iptables", "iptables"),
    (
        "/usr/lib/python3/dist-packages/scapy/__init__.py",
        "python3-scapy",
    ),
    // CNI tests: the reference plugins (positive control, IPAM delegation,
    // chaining), podman with the CNI backend, a static busybox rootfs.
    ("/usr/lib/cni/bridge", "containernetworking-plugins"),
    ("/usr/bin/podman", "podman"),
    ("/bin/busybox", "busybox-static"),
    // NAT conformance tests: a real RFC 5780 client and STUN server.
    ("/usr/bin/turnutils_natdiscovery", "coturn"),
    // graph tests: the SVG rendered by librsvg, the DOT by Graphviz;
    // JSON outputs checked against their schemas; the agent's unit.
    ("/usr/bin/rsvg-convert", "librsvg2-bin"),
    ("/usr/bin/dot", "graphviz"),
    (
        "/usr/lib/python3/dist-packages/jsonschema/__init__.py",
        "python3-jsonschema",
    ),
    ("/usr/bin/systemd-analyze", "systemd"),
    ("/usr/bin/setpriv", "util-linux"),
    ("/usr/bin/man", "man-db"),
    // `cargo xtask dist`: the package's Depends.
    ("/usr/bin/dpkg-shlibdeps", "dpkg-dev"),
];

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.cmd {
        Cmd::Setup => setup(),
        Cmd::Clippy { args } => {
            setup()?;
            clippy::run_all(&root, &args)
        }
        Cmd::BuildEbpf => {
            setup()?;
            build_ebpf(&root)
        }
        Cmd::Run { args } => {
            setup()?;
            cargo(&root, &["build", "--package", "netbridge", "--bins"])?;
            let bin = root.join("target/debug/netbridge");
            // `cargo xtask run -- --duration 5s` means `netbridge demo --duration 5s`.
            let mut full = vec!["demo".to_string()];
            full.extend(args);
            step(&format!("{} {}", bin.display(), full.join(" ")));
            let status = Command::new(&bin)
                .args(&full)
                .status()
                .context("running netbridge")?;
            if !status.success() {
                bail!("netbridge {} exited with {status}", full.join(" "));
            }
            Ok(())
        }
        Cmd::Bench {
            quick,
            scale,
            rounds,
            secs,
            flood_only,
        } => {
            setup()?;
            if !is_root() {
                bail!("the bench builds namespaces and loads eBPF: run it as root");
            }
            // The binaries a user installs (`cargo xtask dist` builds them
            // so): the datapath is the same eBPF object either way, but
            // `up`'s own work (the scale figures) is the optimized code's.
            step("building the release binaries the bench runs");
            cargo(
                &root,
                &["build", "--release", "--package", "netbridge", "--bins"],
            )?;
            let netbridge = root.join("target/release/netbridge");
            if scale {
                return bench_scale::run(&root, &netbridge, rounds.max(1));
            }
            let opts = if quick {
                bench::Options {
                    rounds: 1,
                    secs: 1,
                    rr_count: 200,
                    flood_only,
                }
            } else {
                bench::Options {
                    rounds: rounds.max(1),
                    secs: secs.clamp(1, 60),
                    rr_count: 1000,
                    flood_only,
                }
            };
            bench::run(&root, &netbridge, &opts)
        }
        Cmd::Dist { check } => {
            setup()?;
            if check && !is_root() {
                bail!("--check installs the package with dpkg: run it as root");
            }
            dist::dist(&root, &dist::Options { check }).map(|_| ())
        }
        Cmd::Soak { minutes } => {
            setup()?;
            if !is_root() {
                bail!("the soak builds namespaces and loads eBPF: run it as root");
            }
            cargo(&root, &["build", "--package", "netbridge", "--bins"])?;
            soak::run(
                &root,
                &root.join("target/debug/netbridge"),
                minutes.clamp(1, 60),
            )
        }
        Cmd::Test { args } => {
            setup()?;
            // Integration tests drive the CLI binary: build it first.
            cargo(&root, &["build", "--package", "netbridge", "--bins"])?;
            // Default members only: the eBPF crate builds for bpfel-unknown-none alone
            // (netbridge/build.rs builds it).
            let mut test = vec!["test", "--no-fail-fast"];
            test.extend(args.iter().map(String::as_str));
            test_run(&root, &test)
        }
    }
}

/// Opt-out for non-root local runs (tests needing root then skip, each one
/// named, instead of failing); see `netbridge_tests::ALLOW_SKIP_ENV`.
const ALLOW_SKIP_ENV: &str = "NETBRIDGE_TESTS_ALLOW_SKIP";
/// Where test sandboxes record their name prefixes (`netbridge_tests::LEDGER_ENV`).
const LEDGER_ENV: &str = "NETBRIDGE_TEST_LEDGER";

/// `cargo test` inside the root-namespace guard. Fails when a test failed,
/// when any test skipped (unless skipping was allowed), and when the run
/// changed the root network namespace or left a process behind.
fn test_run(root: &Path, args: &[&str]) -> Result<()> {
    let allow_skip = std::env::var(ALLOW_SKIP_ENV).as_deref() == Ok("1");
    if !is_root() && !allow_skip {
        bail!(
            "the integration tests need root (namespaces, BPF): run as root, or set \
             {ALLOW_SKIP_ENV}=1 to run the rest and skip them (each skip is named)"
        );
    }
    let ledger = root.join("target/netbridge-test-ledger.txt");
    std::fs::create_dir_all(root.join("target"))?;
    std::fs::write(&ledger, "").context("resetting the test ledger")?;
    let mut guard = if is_root() {
        Some(rootns::Guard::begin()?)
    } else {
        step("not root: the root-namespace check is skipped (nothing here may touch it)");
        None
    };
    let tests = run_tests(root, args, &ledger, guard.as_mut());
    let check = match guard {
        Some(g) => {
            let text = std::fs::read_to_string(&ledger).context("reading the test ledger")?;
            let ours: Vec<String> = text.lines().map(String::from).collect();
            g.finish(&ours)
        }
        None => Ok(()),
    };
    let skipped = match &tests {
        Ok(skipped) if !skipped.is_empty() && !allow_skip => Err(anyhow::anyhow!(
            "{} test(s) skipped without {ALLOW_SKIP_ENV}=1: {}",
            skipped.len(),
            skipped.join(", ")
        )),
        _ => Ok(()),
    };
    let errors: Vec<String> = [tests.map(|_| ()), skipped, check]
        .into_iter()
        .filter_map(|r| r.err().map(|e| format!("{e:#}")))
        .collect();
    if !errors.is_empty() {
        bail!("{}", errors.join("\n"));
    }
    Ok(())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn step(msg: &str) {
    use std::io::IsTerminal;
    if std::io::stderr().is_terminal() {
        eprintln!("\x1b[1mxtask:\x1b[0m {msg}");
    } else {
        eprintln!("xtask: {msg}");
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("spawning {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    step(&format!("cargo {}", args.join(" ")));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo).current_dir(root).args(args))
}

/// Runs `cargo test` (sandboxes write their prefixes to `ledger`), echoing
/// its output, and ends with one summary line over all test binaries:
/// `tests: N passed, M failed, K skipped`, then the name of each skipped
/// test. Returns the skipped tests; fails if `cargo test` failed.
fn run_tests(
    root: &Path,
    args: &[&str],
    ledger: &Path,
    guard: Option<&mut rootns::Guard>,
) -> Result<Vec<String>> {
    use std::io::{BufRead, BufReader};
    step(&format!("cargo {}", args.join(" ")));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut child = Command::new(cargo)
        .current_dir(root)
        .args(args)
        .env(LEDGER_ENV, ledger)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("spawning cargo test")?;
    let stderr = child.stderr.take().unwrap();
    let skipped = std::thread::spawn(move || {
        let mut skipped = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(name) = skipped_test(&line) {
                skipped.push(name);
            }
            eprintln!("{line}");
        }
        skipped
    });
    let stdout = child.stdout.take().unwrap();
    let results = std::thread::spawn(move || {
        let (mut passed, mut failed) = (0u64, 0u64);
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("{line}");
            if let Some(rest) = line.strip_prefix("test result: ") {
                passed += result_count(rest, "passed");
                failed += result_count(rest, "failed");
            }
        }
        (passed, failed)
    });
    let status = child.wait()?;
    // Before draining the pipes: a leftover holding them open is caught
    // (and killed) here instead of being waited for.
    if let Some(g) = guard {
        g.reap();
    }
    let (passed, failed) = results.join().unwrap_or_default();
    let skipped = skipped.join().unwrap_or_default();
    println!(
        "tests: {} passed, {failed} failed, {} skipped",
        passed - (skipped.len() as u64).min(passed),
        skipped.len()
    );
    for name in &skipped {
        println!("skipped: {name}");
    }
    if !status.success() {
        bail!("cargo test failed with {status}");
    }
    Ok(skipped)
}

/// `N` of "N passed" in a libtest result line.
fn result_count(rest: &str, word: &str) -> u64 {
    rest.split(';')
        .find_map(|part| {
            part.trim()
                .strip_suffix(word)?
                .trim()
                .rsplit(' ')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// The test named by a `SKIPPED <test>: ...` line of `require_root!`.
fn skipped_test(line: &str) -> Option<String> {
    let rest = line.split_once("SKIPPED ")?.1;
    Some(rest.split_once(": ")?.0.trim().to_string())
}

/// Checks for every toolchain piece and test tool; installs what is missing.
fn setup() -> Result<()> {
    let mut packages: Vec<&str> = Vec::new();
    // bpf-linker itself is built from crates.io and needs llvm-22-dev, so any
    // missing piece means the whole Debian toolchain set.
    if !ebpf_build::missing_pieces().is_empty() {
        packages.extend(APT_TOOLCHAIN);
    }
    for (bin, pkg) in APT_TOOLS {
        if !Path::new(bin).exists() {
            packages.push(pkg);
        }
    }
    packages.sort();
    packages.dedup();
    if !packages.is_empty() {
        if !is_root() {
            bail!(
                "missing Debian packages: {} (run as root, or `apt-get install` them yourself)",
                packages.join(" ")
            );
        }
        step(&format!(
            "installing Debian packages (toolchain or test tools missing): {}",
            packages.join(" ")
        ));
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        run(Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&packages))?;
    }
    if ebpf_build::find_bpf_linker().is_none() {
        step(&format!(
            "installing bpf-linker {} built against LLVM 22 (about a minute)",
            ebpf_build::BPF_LINKER_VERSION
        ));
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        run(Command::new(cargo)
            .env("LLVM_PREFIX", ebpf_build::LLVM_PREFIX)
            .env("LLVM_SYS_221_PREFIX", ebpf_build::LLVM_PREFIX)
            .args(["install", "--locked"])
            .arg(format!("bpf-linker@{}", ebpf_build::BPF_LINKER_VERSION))
            .args(["--no-default-features", "--features", "llvm-22"]))?;
    }
    let missing = ebpf_build::missing_pieces();
    if !missing.is_empty() {
        bail!(
            "toolchain still incomplete after install: {}",
            missing.join(", ")
        );
    }
    Ok(())
}

fn build_ebpf(root: &Path) -> Result<()> {
    let linker = ebpf_build::find_bpf_linker().context("bpf-linker not found")?;
    step(&format!(
        "building the eBPF object with {} and {}",
        ebpf_build::BPF_CARGO,
        linker.display()
    ));
    run(&mut ebpf_build::build_command(root, &linker))?;
    step(&format!(
        "eBPF object: {}",
        ebpf_build::object_path(root).display()
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_lines_name_the_test_function() {
        let line = "!!!!!!!! SKIPPED foundation::tc_program_counts: needs root (CAP_NET_ADMIN, CAP_BPF) !!!!!!!!";
        assert_eq!(
            skipped_test(line).as_deref(),
            Some("foundation::tc_program_counts")
        );
        assert_eq!(skipped_test("test x ... ok"), None);
    }

    #[test]
    fn result_lines_are_counted() {
        let rest = "FAILED. 6 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out";
        assert_eq!(result_count(rest, "passed"), 6);
        assert_eq!(result_count(rest, "failed"), 1);
    }
}
