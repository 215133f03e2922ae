//! `cargo xtask`: build, run and test netbridge on a fresh machine.
//!
//! Every command first checks the toolchain and the tools the tests drive
//! (Debian's BPF-capable rustc, bpf-linker, iproute2, ping, ...) and installs
//! whatever is missing, saying what it does.
mod bench;
mod crr;
mod ebpf_build;
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
    /// Datapaths side by side (direct veth, Linux bridge, netbridge TC and
    /// XDP), interleaved rounds; writes target/bench/results.{txt,json,svg}.
    Bench {
        /// Smoke-test size for CI (about a minute and a half): one round of
        /// 1 s streams, every workload and scale run once, no thresholds.
        #[arg(long)]
        quick: bool,
        #[arg(long, default_value_t = 5)]
        rounds: u32,
        /// Seconds per stream measurement.
        #[arg(long, default_value_t = 5)]
        secs: u32,
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
];

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.cmd {
        Cmd::Setup => setup(),
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
            rounds,
            secs,
        } => {
            setup()?;
            if !is_root() {
                bail!("the bench builds namespaces and loads eBPF: run it as root");
            }
            cargo(&root, &["build", "--package", "netbridge", "--bins"])?;
            let opts = if quick {
                bench::Options {
                    rounds: 1,
                    secs: 1,
                    rr_count: 200,
                }
            } else {
                bench::Options {
                    rounds: rounds.max(1),
                    secs: secs.clamp(1, 60),
                    rr_count: 1000,
                }
            };
            bench::run(&root, &root.join("target/debug/netbridge"), &opts)
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
            run_tests(&root, &test)
        }
    }
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

/// Runs `cargo test`, echoing its output, and ends with one summary line
/// over all test binaries: `tests: N passed, M failed, K skipped`, where
/// skipped counts the tests that skipped themselves for lack of root.
fn run_tests(root: &Path, args: &[&str]) -> Result<()> {
    use std::io::{BufRead, BufReader};
    step(&format!("cargo {}", args.join(" ")));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut child = Command::new(cargo)
        .current_dir(root)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("spawning cargo test")?;
    let stderr = child.stderr.take().unwrap();
    let skipped = std::thread::spawn(move || {
        let mut skipped = 0u64;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("SKIPPED") {
                skipped += 1;
            }
            eprintln!("{line}");
        }
        skipped
    });
    let (mut passed, mut failed) = (0u64, 0u64);
    for line in BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
    {
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |word: &str| -> u64 {
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
            };
            passed += count("passed");
            failed += count("failed");
        }
    }
    let status = child.wait()?;
    let skipped = skipped.join().unwrap_or(0);
    println!(
        "tests: {} passed, {failed} failed, {skipped} skipped",
        passed - skipped.min(passed)
    );
    if !status.success() {
        bail!("cargo test failed with {status}");
    }
    Ok(())
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
