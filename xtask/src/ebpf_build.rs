//! The one recipe for building the eBPF object (see ../shared/TOOLCHAIN.md).
//!
//! Shared by `cargo xtask build-ebpf` and `netbridge/build.rs` (included there
//! with `#[path]`), so the two can never drift apart. std only.
#![allow(dead_code)]

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

/// Debian's rustc: ships a prebuilt `core` for bpfel-unknown-none.
pub const BPF_RUSTC: &str = "/usr/bin/rustc";
pub const BPF_CARGO: &str = "/usr/bin/cargo";
pub const BPF_TARGET: &str = "bpfel-unknown-none";
pub const BPF_CORE_DIR: &str = "/usr/lib/rustlib/bpfel-unknown-none/lib";
pub const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
pub const BPF_LINKER_VERSION: &str = "0.13.0";

/// Separate target dir: the host build and the BPF build use different rustc
/// versions, and a nested cargo must not wait on the outer one's lock.
pub fn target_dir(workspace_root: &Path) -> PathBuf {
    workspace_root.join("target").join("ebpf")
}

/// Where the linked object ends up.
pub fn object_path(workspace_root: &Path) -> PathBuf {
    target_dir(workspace_root)
        .join(BPF_TARGET)
        .join("release")
        .join("netbridge")
}

/// `$CARGO_HOME/bin`, where `cargo install` puts bpf-linker by default.
pub fn cargo_home_bin() -> Option<PathBuf> {
    if let Some(h) = env::var_os("CARGO_HOME") {
        return Some(PathBuf::from(h).join("bin"));
    }
    env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo").join("bin"))
}

/// Finds bpf-linker: `$BPF_LINKER`, then `$PATH`, then `$CARGO_HOME/bin`.
pub fn find_bpf_linker() -> Option<PathBuf> {
    if let Some(p) = env::var_os("BPF_LINKER") {
        return Some(PathBuf::from(p));
    }
    let mut dirs: Vec<PathBuf> = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(cargo_home_bin());
    dirs.into_iter()
        .map(|d| d.join("bpf-linker"))
        .find(|p| p.is_file())
}

/// Missing toolchain pieces, each with the reason it is needed.
pub fn missing_pieces() -> Vec<String> {
    let mut missing = Vec::new();
    if !Path::new(BPF_RUSTC).is_file() || !Path::new(BPF_CARGO).is_file() {
        missing.push(format!(
            "{BPF_RUSTC} and {BPF_CARGO} (Debian rustc-web, cargo-web)"
        ));
    }
    if !Path::new(BPF_CORE_DIR).is_dir() {
        missing.push(format!("{BPF_CORE_DIR} (Debian libstd-rust-web-dev-bpf)"));
    }
    if find_bpf_linker().is_none() {
        missing.push(format!(
            "bpf-linker {BPF_LINKER_VERSION} built against LLVM 22"
        ));
    }
    missing
}

/// The cargo invocation that builds the eBPF object, with a scrubbed
/// environment so nothing from an outer cargo (RUSTC, wrappers such as
/// clippy-driver, rustflags, jobserver) leaks in.
pub fn build_command(workspace_root: &Path, linker: &Path) -> Command {
    let mut cmd = bpf_command(BPF_CARGO, workspace_root, linker);
    cmd.env(
        "CARGO_TARGET_BPFEL_UNKNOWN_NONE_RUSTFLAGS",
        "-C debuginfo=2 -C link-arg=--btf -D warnings",
    )
    .args([
        "build",
        "--release",
        "--package",
        "netbridge-ebpf",
        "--target",
        BPF_TARGET,
    ])
    .arg("--target-dir")
    .arg(target_dir(workspace_root));
    cmd
}

/// `program` (Debian's cargo, or a cargo subcommand of that toolchain)
/// run at the workspace root with the outer cargo's environment scrubbed
/// and the eBPF toolchain's set: Debian's rustc, aya-ebpf's unstable
/// features, bpf-linker.
pub fn bpf_command(program: &str, workspace_root: &Path, linker: &Path) -> Command {
    let mut cmd = Command::new(program);
    for (k, _) in env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        let leaks = (k.starts_with("CARGO_") && k != "CARGO_HOME")
            || k.starts_with("RUSTC")
            || k.starts_with("RUSTDOC")
            || k == "RUSTFLAGS"
            || k == "RUSTUP_TOOLCHAIN"
            || k == "CARGO"
            || k == "MAKEFLAGS"
            || k == "MFLAGS";
        if leaks {
            cmd.env_remove(&k);
        }
    }
    cmd.current_dir(workspace_root)
        .env("RUSTC", BPF_RUSTC)
        // Lets aya-ebpf (only) use its unstable features on a stable rustc.
        .env("RUSTC_BOOTSTRAP", "aya_ebpf")
        .env("CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER", linker);
    cmd
}
