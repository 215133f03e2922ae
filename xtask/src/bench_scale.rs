//! `up` at scale: netbridge against the equivalent `ip` script for 100
//! bridged namespaces (interleaved rounds), and `up`, `up` again (nothing
//! to change), `status`, `stats` and `down` of 1,000 namespaces timed.
//! Part of `cargo xtask bench`; alone with `cargo xtask bench --scale`.
//! Everything runs in sandbox namespaces (the topology brings its own host
//! namespace); nothing touches the root namespace.
use std::{
    fmt::Write as _,
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result, bail};

use crate::bench::median;

/// Namespaces of the `up` comparison with the `ip` script.
pub const UP_NAMESPACES: usize = 100;
/// Namespaces of the large run.
pub const BIG_NAMESPACES: usize = 1000;

/// Address of lab host `i` (1,000 fit in 192.168.0.0/16 beside the
/// bridge's 192.168.255.254).
fn host_addr(i: usize) -> String {
    format!("192.168.{}.{}/16", i / 250, i % 250 + 1)
}

/// A bridged topology of `n` namespaces with its own host namespace.
fn topology(n: usize) -> String {
    let mut toml = format!(
        "name = \"up{n}\"\nhost_netns = \"h\"\n[bridge]\nname = \"br0\"\naddresses = [\"192.168.255.254/16\"]\n"
    );
    for i in 0..n {
        let _ = write!(
            toml,
            "[[namespace]]\nname = \"n{i}\"\nhost_ifname = \"p{i}\"\naddresses = [\"{}\"]\n",
            host_addr(i)
        );
    }
    toml
}

/// The `ip` commands that build the same namespaces, bridge and veths
/// (without programs).
fn ip_script(n: usize, prefix: &str) -> String {
    let h = format!("{prefix}ip-h");
    let mut script = format!(
        "set -e\nip netns add {h}\nip -n {h} link set lo up\nip -n {h} link add br0 type bridge\n\
         ip -n {h} addr add 192.168.255.254/16 dev br0\nip -n {h} link set br0 up\n"
    );
    for i in 0..n {
        let ns = format!("{prefix}ip-n{i}");
        let _ = write!(
            script,
            "ip netns add {ns}\nip -n {ns} link set lo up\n\
             ip -n {h} link add p{i} type veth peer name eth0 netns {ns}\n\
             ip -n {h} link set p{i} master br0 up\n\
             ip -n {ns} addr add {} dev eth0\nip -n {ns} link set eth0 up\n",
            host_addr(i)
        );
    }
    script
}

/// The topology file of `n` namespaces under `dir`, removed on drop (and
/// the topology brought down, whatever happened).
struct Topo<'a> {
    netbridge: &'a Path,
    file: std::path::PathBuf,
    prefix: String,
}

impl<'a> Topo<'a> {
    fn new(netbridge: &'a Path, id: &str, n: usize, dir: &Path) -> Result<Self> {
        let prefix = format!("nbu{id}-");
        let file = dir.join(format!("{prefix}up{n}.toml"));
        std::fs::write(&file, topology(n))?;
        Ok(Topo {
            netbridge,
            file,
            prefix,
        })
    }

    /// Seconds `netbridge CMD` took; fails unless it succeeded.
    fn timed(&self, args: &[&str], by_file: bool) -> Result<f64> {
        let mut cmd = Command::new(self.netbridge);
        cmd.args(args);
        if by_file {
            cmd.arg("-f")
                .arg(&self.file)
                .args(["--prefix", &self.prefix]);
        }
        let t0 = Instant::now();
        let out = cmd.stdin(Stdio::null()).output()?;
        let secs = t0.elapsed().as_secs_f64();
        if !out.status.success() {
            bail!(
                "netbridge {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(secs)
    }
}

impl Drop for Topo<'_> {
    fn drop(&mut self) {
        let _ = self.timed(&["down"], true);
        let _ = std::fs::remove_file(&self.file);
    }
}

/// Seconds for `netbridge up` of a bridge with `n` namespaces vs a shell
/// script of the equivalent `ip` commands (netbridge also attaches and pins
/// its programs, the script does not). Both are torn down afterwards.
pub fn up_vs_script(netbridge: &Path, id: &str, n: usize, dir: &Path) -> Result<(f64, f64)> {
    let nb = {
        let topo = Topo::new(netbridge, id, n, dir)?;
        topo.timed(&["up"], true)?
    };
    let prefix = format!("nbu{id}-");
    let t0 = Instant::now();
    let result = Command::new("sh")
        .args(["-c", &ip_script(n, &prefix)])
        .stdin(Stdio::null())
        .output()
        .context("running the ip script");
    let ip = t0.elapsed().as_secs_f64();
    for i in 0..n {
        let ns = format!("{prefix}ip-n{i}");
        if Path::new("/run/netns").join(&ns).exists() {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
    }
    let _ = Command::new("ip")
        .args(["netns", "del", &format!("{prefix}ip-h")])
        .status();
    let out = result?;
    if !out.status.success() {
        bail!("ip script: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok((nb, ip))
}

/// Seconds of each command on a topology of `n` namespaces.
#[derive(Debug, Clone)]
pub struct Big {
    pub namespaces: usize,
    pub up: f64,
    pub up_again: f64,
    pub status: f64,
    pub stats: f64,
    pub down: f64,
}

/// `up`, `up` again, `status --json`, `stats --json` and `down` of `n`
/// namespaces, timed.
pub fn big(netbridge: &Path, id: &str, n: usize, dir: &Path) -> Result<Big> {
    let topo = Topo::new(netbridge, id, n, dir)?;
    let name = format!("{}up{n}", topo.prefix);
    let up = topo.timed(&["up"], true)?;
    let up_again = topo.timed(&["up"], true)?;
    let status = topo.timed(&["status", "--json"], true)?;
    let stats = topo.timed(&["stats", "--json", "--name", &name], false)?;
    let down = topo.timed(&["down"], true)?;
    Ok(Big {
        namespaces: n,
        up,
        up_again,
        status,
        stats,
        down,
    })
}

/// The table lines and JSON of the comparison's samples and the large run.
pub fn report(up_nb: &[f64], up_ip: &[f64], big: Option<&Big>) -> (String, serde_json::Value) {
    let (nb, ip) = (median(up_nb), median(up_ip));
    let mut table = format!(
        "\nup of {UP_NAMESPACES} namespaces on a bridge (median of {}): netbridge {nb:.2} s (with programs attached), \
         ip-command script {ip:.2} s, ratio {:.2} (target <= 0.50)\n",
        up_nb.len(),
        nb / ip
    );
    if let Some(b) = big {
        let _ = writeln!(
            table,
            "{} namespaces: up {:.2} s, up again (no changes) {:.2} s, status {:.2} s, stats {:.2} s, down {:.2} s",
            b.namespaces, b.up, b.up_again, b.status, b.stats, b.down
        );
    }
    let json = serde_json::json!({
        "up_namespaces": {"count": UP_NAMESPACES, "netbridge_secs": up_nb,
                          "ip_script_secs": up_ip, "ratio": nb / ip},
        "big": big.map(|b| serde_json::json!({
            "namespaces": b.namespaces, "up_secs": b.up, "up_again_secs": b.up_again,
            "status_secs": b.status, "stats_secs": b.stats, "down_secs": b.down,
        })),
    });
    (table, json)
}

/// `cargo xtask bench --scale`: `rounds` interleaved comparisons and one
/// large run; writes target/bench/scale.{txt,json}.
pub fn run(root: &Path, netbridge: &Path, rounds: u32) -> Result<()> {
    let id = format!("{:05}", std::process::id() % 100_000);
    let guard = crate::rootns::Guard::begin()?;
    let result = measure(root, netbridge, rounds, &id);
    let check = guard.finish(&[format!("nbu{id}")]);
    match (result, check) {
        (Err(e), Err(c)) => Err(e.context(format!("and after it: {c:#}"))),
        (r, c) => r.and(c),
    }
}

fn measure(root: &Path, netbridge: &Path, rounds: u32, id: &str) -> Result<()> {
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let (mut up_nb, mut up_ip) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        eprintln!(
            "bench --scale: round {round}/{rounds}: up of {UP_NAMESPACES} namespaces, netbridge vs ip script"
        );
        let (nb, ip) = up_vs_script(netbridge, id, UP_NAMESPACES, &dir)?;
        eprintln!("  netbridge {nb:.2} s, ip script {ip:.2} s");
        up_nb.push(nb);
        up_ip.push(ip);
    }
    eprintln!("bench --scale: {BIG_NAMESPACES} namespaces: up, up again, status, stats, down");
    let b = big(netbridge, id, BIG_NAMESPACES, &dir)?;
    let (table, json) = report(&up_nb, &up_ip, Some(&b));
    print!("{table}");
    std::fs::write(dir.join("scale.txt"), &table)?;
    std::fs::write(dir.join("scale.json"), serde_json::to_string_pretty(&json)?)?;
    Ok(())
}
