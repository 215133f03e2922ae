//! Builds the eBPF object so every `cargo build/test/clippy` embeds a fresh one.
#[path = "../xtask/src/ebpf_build.rs"]
mod ebpf_build;

use std::path::Path;

fn main() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    let root = Path::new(&manifest).parent().unwrap().to_path_buf();
    for dir in [
        "netbridge-ebpf/src",
        "netbridge-ebpf/Cargo.toml",
        "netbridge-common/src",
        "xtask/src/ebpf_build.rs",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!("cargo:rerun-if-env-changed=BPF_LINKER");

    let missing = ebpf_build::missing_pieces();
    if !missing.is_empty() {
        panic!(
            "\n\nnetbridge: the eBPF toolchain is incomplete; missing:\n  - {}\n\
             Run `cargo xtask build-ebpf` (it installs what is missing), see README.md.\n\n",
            missing.join("\n  - ")
        );
    }
    let linker = ebpf_build::find_bpf_linker().unwrap();
    let status = ebpf_build::build_command(&root, &linker)
        .status()
        .expect("failed to run /usr/bin/cargo for the eBPF build");
    if !status.success() {
        panic!(
            "netbridge: building the eBPF crate failed ({status}); run `cargo xtask build-ebpf` for details"
        );
    }
    let obj = ebpf_build::object_path(&root);
    println!("cargo:rustc-env=NETBRIDGE_EBPF_OBJ={}", obj.display());
}
