//! `cargo xtask clippy`: clippy over the whole workspace, the eBPF crate
//! included (like aya-template's xtask/src/clippy.rs, which runs clippy
//! inside the eBPF crate for the BPF target).
//!
//! The host crates go through rustup's `cargo clippy`. The eBPF crate only
//! builds with Debian's rustc (it ships `core` for bpfel-unknown-none), so
//! it is linted with that toolchain's own clippy: Debian's `rust-web-clippy`
//! (`/usr/bin/cargo-clippy`, `/usr/bin/clippy-driver`, same 1.96 as
//! `rustc-web`), run for `--target bpfel-unknown-none`. Both with
//! `-D warnings`; the eBPF run also lints netbridge-common as compiled for
//! BPF.
use std::{path::Path, process::Command};

use anyhow::{Context, Result, bail};

use crate::{cargo, ebpf_build, is_root, run, step};

/// Debian's clippy for `rustc-web`.
const BPF_CLIPPY: &str = "/usr/bin/cargo-clippy";
const BPF_CLIPPY_PACKAGE: &str = "rust-web-clippy";

/// Lints the host crates, then the eBPF crate for the BPF target.
pub fn run_all(root: &Path, extra: &[String]) -> Result<()> {
    let mut host = vec!["clippy", "--all-targets"];
    host.extend(extra.iter().map(String::as_str));
    host.extend(["--", "-D", "warnings"]);
    cargo(root, &host)?;
    ensure_bpf_clippy()?;
    let linker = ebpf_build::find_bpf_linker().context("bpf-linker not found")?;
    step(&format!(
        "{BPF_CLIPPY} clippy --package netbridge-ebpf --target {}",
        ebpf_build::BPF_TARGET
    ));
    let mut cmd = ebpf_build::bpf_command(BPF_CLIPPY, root, &linker);
    // cargo-clippy runs `$CARGO check` with clippy-driver as the wrapper:
    // Debian's cargo, not rustup's proxy.
    cmd.env("CARGO", ebpf_build::BPF_CARGO)
        .args(["clippy", "--release", "--package", "netbridge-ebpf"])
        .args(["--target", ebpf_build::BPF_TARGET])
        // Its own target dir: a clippy check must not invalidate the
        // object build.rs keeps in target/ebpf.
        .arg("--target-dir")
        .arg(root.join("target").join("ebpf-clippy"))
        .args(["--", "-D", "warnings"]);
    run(&mut cmd)
}

/// Installs Debian's clippy for the eBPF toolchain if it is missing. The
/// package conflicts with Debian's `rustup` package (not with a rustup
/// installed by rustup.rs): with that one present, say so, change nothing.
fn ensure_bpf_clippy() -> Result<()> {
    if Path::new(BPF_CLIPPY).is_file() {
        return Ok(());
    }
    let dpkg = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "rustup"])
        .output()
        .context("running dpkg-query")?;
    if String::from_utf8_lossy(&dpkg.stdout).contains("install ok installed") {
        bail!(
            "{BPF_CLIPPY} is missing and {BPF_CLIPPY_PACKAGE} conflicts with the installed \
             Debian package rustup: lint the eBPF crate after installing {BPF_CLIPPY_PACKAGE} \
             yourself"
        );
    }
    if !is_root() {
        bail!("{BPF_CLIPPY} is missing: run as root, or `apt-get install {BPF_CLIPPY_PACKAGE}`");
    }
    step(&format!(
        "installing {BPF_CLIPPY_PACKAGE} (clippy for Debian's BPF-capable rustc)"
    ));
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .arg(BPF_CLIPPY_PACKAGE))
}
