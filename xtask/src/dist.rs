//! `cargo xtask dist`: the Debian package, built with dpkg-deb from a
//! release build. It holds `netbridge` (the eBPF object is embedded by its
//! build script, so the package needs no eBPF toolchain), `netbridge-cni`
//! in /usr/lib/cni when the workspace has that binary, man pages
//! (clap_mangen) and shell completions (clap_complete), both made by the
//! built binary itself, the agent's systemd unit, the Grafana dashboard,
//! the JSON schemas and the example topologies. Depends comes from
//! dpkg-shlibdeps (the binaries' real shared libraries).
//!
//! `--check` (what `.ci/run` runs) then installs it with dpkg, runs it with
//! a bare environment (no cargo, no toolchain on PATH): `--version`,
//! `check` of every example, `up`/`down` of one in a scratch network
//! namespace (the embedded object loads), the man pages, the bash
//! completion, `systemd-analyze verify` of the unit; purges it and checks
//! that none of its files is left.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail, ensure};

use crate::{run, step};

const PACKAGE: &str = "netbridge";
const CNI_BIN: &str = "netbridge-cni";
const UNIT: &str = "netbridge-agent.service";

pub struct Options {
    pub check: bool,
}

/// Builds the package; with `check`, installs, exercises and purges it.
pub fn dist(root: &Path, opts: &Options) -> Result<PathBuf> {
    let deb = build(root)?;
    if opts.check {
        check(&deb)?;
    }
    Ok(deb)
}

/// Output of a command, which must succeed.
fn output(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let o = cmd.output().with_context(|| format!("spawning {shown}"))?;
    if !o.status.success() {
        bail!(
            "{shown} failed with {}: {}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// (version of the netbridge crate, whether a `netbridge-cni` binary
/// target exists and in which package).
fn metadata(root: &Path) -> Result<(String, Option<String>)> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let text = output(Command::new(cargo).current_dir(root).args([
        "metadata",
        "--no-deps",
        "--format-version",
        "1",
    ]))?;
    let meta: serde_json::Value = serde_json::from_str(&text).context("cargo metadata")?;
    let packages = meta["packages"].as_array().context("no packages")?;
    let version = packages
        .iter()
        .find(|p| p["name"] == PACKAGE)
        .and_then(|p| p["version"].as_str())
        .context("no netbridge package")?
        .to_string();
    let cni = packages.iter().find_map(|p| {
        p["targets"].as_array()?.iter().find(|t| {
            t["name"] == CNI_BIN
                && t["kind"]
                    .as_array()
                    .is_some_and(|k| k.contains(&"bin".into()))
        })?;
        Some(p["name"].as_str()?.to_string())
    });
    Ok((version, cni))
}

fn build(root: &Path) -> Result<PathBuf> {
    let (version, cni) = metadata(root)?;
    let mut args = vec!["build", "--release", "--package", PACKAGE, "--bin", PACKAGE];
    match &cni {
        Some(pkg) if pkg == PACKAGE => args.extend(["--bin", CNI_BIN]),
        Some(pkg) => args.extend(["--package", pkg, "--bin", CNI_BIN]),
        None => step("no netbridge-cni binary in this workspace: the package leaves it out"),
    }
    step(&format!("cargo {} (symbols stripped)", args.join(" ")));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo)
        .current_dir(root)
        .env("CARGO_PROFILE_RELEASE_STRIP", "symbols")
        .args(&args))?;
    let release = root.join("target/release");
    let arch = output(Command::new("dpkg").arg("--print-architecture"))?
        .trim()
        .to_string();
    let dist = root.join("target/dist");
    let stage = dist.join(format!("{PACKAGE}_{version}-1_{arch}"));
    if stage.exists() {
        std::fs::remove_dir_all(&stage)?;
    }
    let bin = stage.join("usr/bin/netbridge");
    install(&release.join(PACKAGE), &bin, 0o755)?;
    let mut elf = vec![bin.clone()];
    if cni.is_some() {
        let to = stage.join("usr/lib/cni").join(CNI_BIN);
        install(&release.join(CNI_BIN), &to, 0o755)?;
        elf.push(to);
    }
    generated(&bin, &stage)?;
    files(root, &stage)?;
    let depends = depends(&elf)?;
    control(&stage, &version, &arch, &depends)?;
    let deb = dist.join(format!("{PACKAGE}_{version}-1_{arch}.deb"));
    step(&format!("dpkg-deb --build {}", deb.display()));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&stage)
        .arg(&deb))?;
    step(&format!("package: {} (Depends: {depends})", deb.display()));
    Ok(deb)
}

/// Copies `from` to `to` (parents made 0755) with `mode`.
fn install(from: &Path, to: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let parent = to.parent().context("no parent")?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    std::fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn write(to: &Path, text: &str, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(to.parent().context("no parent")?)?;
    std::fs::write(to, text).with_context(|| format!("writing {}", to.display()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Man pages (gzipped) and completions, made by the staged binary.
fn generated(bin: &Path, stage: &Path) -> Result<()> {
    let man = stage.join("usr/share/man/man1");
    run(Command::new(bin).arg("manpages").arg(&man))?;
    for page in std::fs::read_dir(&man)? {
        run(Command::new("gzip").args(["-9n"]).arg(page?.path()))?;
    }
    for (shell, path) in [
        ("bash", "usr/share/bash-completion/completions/netbridge"),
        ("zsh", "usr/share/zsh/vendor-completions/_netbridge"),
        ("fish", "usr/share/fish/vendor_completions.d/netbridge.fish"),
    ] {
        let text = output(Command::new(bin).args(["completions", shell]))?;
        write(&stage.join(path), &text, 0o644)?;
    }
    Ok(())
}

/// The unit, dashboard, schemas, examples and copyright.
fn files(root: &Path, stage: &Path) -> Result<()> {
    install(
        &root.join("contrib/systemd").join(UNIT),
        &stage.join("lib/systemd/system").join(UNIT),
        0o644,
    )?;
    install(
        &root.join("contrib/grafana/netbridge.json"),
        &stage.join("usr/share/netbridge/grafana/netbridge.json"),
        0o644,
    )?;
    for (dir, to) in [
        ("schemas", "usr/share/netbridge/schemas"),
        ("examples", "usr/share/doc/netbridge/examples"),
    ] {
        for e in std::fs::read_dir(root.join(dir))? {
            let p = e?.path();
            let name = p.file_name().context("file name")?;
            install(&p, &stage.join(to).join(name), 0o644)?;
        }
    }
    write(
        &stage.join("usr/share/doc/netbridge/copyright"),
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: netbridge\n\n\
         Files: *\nCopyright: the netbridge authors\nLicense: MIT or Apache-2.0\n \
         On Debian systems the Apache License 2.0 is in /usr/share/common-licenses/Apache-2.0.\n",
        0o644,
    )
}

/// `Depends:` of the binaries, from dpkg-shlibdeps.
fn depends(elf: &[PathBuf]) -> Result<String> {
    let tmp = std::env::temp_dir().join(format!("netbridge-shlibdeps-{}", std::process::id()));
    std::fs::create_dir_all(tmp.join("debian"))?;
    std::fs::write(
        tmp.join("debian/control"),
        "Source: netbridge\n\nPackage: netbridge\nArchitecture: any\n",
    )?;
    let mut cmd = Command::new("dpkg-shlibdeps");
    cmd.current_dir(&tmp).arg("-O");
    for e in elf {
        cmd.arg(format!("-e{}", e.display()));
    }
    let out = output(&mut cmd);
    std::fs::remove_dir_all(&tmp)?;
    let out = out.context("dpkg-shlibdeps (package dpkg-dev; `cargo xtask setup` installs it)")?;
    let deps = out
        .lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .context("no shlibs:Depends from dpkg-shlibdeps")?;
    Ok(deps.trim().to_string())
}

const POSTINST: &str = "#!/bin/sh\nset -e\n\
if [ \"$1\" = configure ] && [ -d /run/systemd/system ]; then\n\
    systemctl daemon-reload >/dev/null || true\nfi\nexit 0\n";

/// The agent is optional and never enabled by the package; one the admin
/// enabled is stopped and disabled before its unit goes.
const PRERM: &str = "#!/bin/sh\nset -e\n\
if [ \"$1\" = remove ] && [ -d /run/systemd/system ]; then\n\
    systemctl stop netbridge-agent.service >/dev/null 2>&1 || true\n\
    systemctl disable netbridge-agent.service >/dev/null 2>&1 || true\nfi\nexit 0\n";

const POSTRM: &str = "#!/bin/sh\nset -e\n\
if [ -d /run/systemd/system ]; then\n    systemctl daemon-reload >/dev/null || true\nfi\nexit 0\n";

fn control(stage: &Path, version: &str, arch: &str, depends: &str) -> Result<()> {
    let size_kb = dir_size(stage)? / 1024 + 1;
    let control = format!(
        "Package: {PACKAGE}\nVersion: {version}-1\nArchitecture: {arch}\n\
         Maintainer: netbridge developers <dev@netbridge.invalid>\n\
         Installed-Size: {size_kb}\nDepends: {depends}\n\
         Suggests: graphviz, python3, curl, iputils-ping\n\
         Section: net\nPriority: optional\n\
         Description: namespaces, veths and a bridge from one file, with an eBPF datapath\n \
         netbridge builds Linux network namespaces, veth pairs and a bridge from one\n \
         TOML file and runs the datapath in the kernel with eBPF: bridging, SNAT\n \
         masquerade, DNAT forwards, hairpin, anti-spoofing, live stats from BPF maps.\n \
         Includes the optional host agent (Prometheus metrics and datapath logs of\n \
         every topology) with a systemd unit, and a Grafana dashboard.\n"
    );
    let debian = stage.join("DEBIAN");
    write(&debian.join("control"), &control, 0o644)?;
    write(&debian.join("postinst"), POSTINST, 0o755)?;
    write(&debian.join("prerm"), PRERM, 0o755)?;
    write(&debian.join("postrm"), POSTRM, 0o755)?;
    let sums = output(Command::new("sh").current_dir(stage).args([
        "-c",
        "find . -path ./DEBIAN -prune -o -type f -printf '%P\\0' | sort -z | xargs -0 md5sum",
    ]))?;
    write(&debian.join("md5sums"), &sums, 0o644)
}

fn dir_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let m = e.metadata()?;
        total += if m.is_dir() {
            dir_size(&e.path())?
        } else {
            m.len()
        };
    }
    Ok(total)
}

/// Runs the installed binary with a bare environment: nothing of the
/// build machine (cargo, rustup, bpf-linker) is on its PATH.
fn bare(args: &[&str]) -> Command {
    let mut c = Command::new("/usr/bin/netbridge");
    c.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .args(args);
    c
}

/// Installs the package, exercises it, purges it, and checks nothing of
/// it is left. Refuses to touch a netbridge package already installed.
fn check(deb: &Path) -> Result<()> {
    let installed = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", PACKAGE])
        .output()?;
    ensure!(
        !String::from_utf8_lossy(&installed.stdout).contains("installed"),
        "a {PACKAGE} package is installed already: not touching it (dpkg -r {PACKAGE} first)"
    );
    // Its dependencies resolve against this Debian (simulated, no change).
    let sim = output(
        Command::new("apt-get")
            .args(["install", "--simulate"])
            .arg(deb),
    )?;
    let inst = sim
        .lines()
        .find(|l| l.starts_with("Inst netbridge"))
        .with_context(|| format!("apt-get --simulate:\n{sim}"))?;
    step(&format!("dependencies resolve: {inst}"));
    step(&format!("dpkg -i {}", deb.display()));
    run(Command::new("dpkg").arg("-i").arg(deb))?;
    let listed = output(Command::new("dpkg").args(["-L", PACKAGE]));
    let files: Vec<String> = listed
        .iter()
        .flat_map(|l| l.lines())
        .filter(|l| Path::new(l).is_file())
        .map(String::from)
        .collect();
    let result = listed.and_then(|_| exercise());
    step("dpkg --purge netbridge");
    run(Command::new("dpkg").args(["--purge", PACKAGE]))?;
    result?;
    ensure!(files.len() > 20, "dpkg -L lists only {files:?}");
    let left: Vec<&String> = files.iter().filter(|f| Path::new(f).exists()).collect();
    ensure!(left.is_empty(), "left after purge: {left:?}");
    for dir in ["/usr/share/netbridge", "/usr/share/doc/netbridge"] {
        ensure!(!Path::new(dir).exists(), "{dir} left after purge");
    }
    let status = Command::new("dpkg-query").args(["-W", PACKAGE]).output()?;
    ensure!(!status.status.success(), "dpkg still knows {PACKAGE}");
    step(&format!(
        "package installed, exercised and purged: {} files, none left",
        files.len()
    ));
    Ok(())
}

/// What the installed package must do.
fn exercise() -> Result<()> {
    let v = output(&mut bare(&["--version"]))?;
    step(&format!("installed: {}", v.trim()));
    let examples = "/usr/share/doc/netbridge/examples";
    for e in std::fs::read_dir(examples)? {
        let p = e?.path();
        output(&mut bare(&["check", "-f", p.to_str().context("path")?]))?;
    }
    for page in ["netbridge", "netbridge-graph", "netbridge-agent"] {
        output(Command::new("man").args(["-w", page]))?;
    }
    output(Command::new("bash").args([
        "-c",
        "source /usr/share/bash-completion/completions/netbridge && complete -p netbridge",
    ]))?;
    if Path::new("/usr/bin/systemd-analyze").exists() {
        output(
            Command::new("systemd-analyze")
                .args(["verify", &format!("/lib/systemd/system/{UNIT}")]),
        )?;
    }
    up_down_in_scratch_namespace()
}

/// `up` and `down` of an example in a scratch network namespace (never
/// the machine's own): the embedded eBPF object loads and attaches.
fn up_down_in_scratch_namespace() -> Result<()> {
    let ns = format!("nbdist{}", std::process::id());
    run(Command::new("ip").args(["netns", "add", &ns]))?;
    let nsenter = format!("--net=/run/netns/{ns}");
    let in_ns = |args: &[&str]| {
        let mut c = Command::new("nsenter");
        c.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .arg(&nsenter)
            .arg("/usr/bin/netbridge")
            .args(args);
        c
    };
    let file = "/usr/share/doc/netbridge/examples/bridge-three.toml";
    let prefix = format!("{ns}-");
    let up = output(&mut in_ns(&["up", "-f", file, "--prefix", &prefix]));
    let status = up.as_ref().ok().map(|_| {
        output(&mut in_ns(&[
            "status",
            "--name",
            &format!("{prefix}bridge-three"),
        ]))
    });
    let down = output(&mut in_ns(&[
        "down",
        "--name",
        &format!("{prefix}bridge-three"),
    ]));
    let del = run(Command::new("ip").args(["netns", "del", &ns]));
    up?;
    let status = status.context("no status")??;
    ensure!(
        status.contains("nb_port_ingress"),
        "no program attached:\n{status}"
    );
    down?;
    del?;
    step("installed binary: up (eBPF programs attached) and down in a scratch namespace");
    Ok(())
}
