//! The bench's setup F, "floor": two host-side veths whose TC ingress runs
//! the least any eBPF bridge port can do, `bpf_redirect_peer` to the other
//! port, with no parse, lookup, counter or check. It is the fastest a
//! datapath of host-side ports with TC programs can be on this machine, so
//! netbridge's distance from it is the cost of its own work, and the floor's
//! distance from the baselines is what the design can reach at best.
//!
//! Eight BPF instructions with both ifindexes as immediates, loaded and
//! attached (TCX ingress, kernel >= 6.6) with the bpf(2) syscall: no
//! compiler, no object file, nothing pinned. The attachment goes with the
//! veth when the lab's namespace is deleted.
use std::{ffi::CString, os::fd::FromRawFd};

use anyhow::{Context, Result, bail};

/// `bpf(2)` commands, program type, attach type and helper used here
/// (include/uapi/linux/bpf.h).
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_ENABLE_STATS: libc::c_long = 32;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_TCX_INGRESS: u32 = 46;
const FN_REDIRECT_PEER: i32 = 155;
/// offsetof(struct __sk_buff, ifindex)
const SKB_IFINDEX: i16 = 40;

/// Attaches the floor program to the TC ingress of `a` and `b`, two
/// interfaces of namespace `ns`: a frame arriving on one leaves through
/// the other's peer. Returns the program's id.
pub(crate) fn attach(ns: &str, a: &str, b: &str) -> Result<u32> {
    let (ns, a, b) = (ns.to_string(), a.to_string(), b.to_string());
    // setns on a thread of its own: the bench's thread stays where it is.
    std::thread::spawn(move || -> Result<u32> {
        crate::crr::enter(&ns, None)?;
        let (ia, ib) = (ifindex(&a)?, ifindex(&b)?);
        let prog = load(&program(ia, ib)).context("loading the floor program")?;
        for (name, index) in [(&a, ia), (&b, ib)] {
            attach_tcx(&prog, index).with_context(|| format!("attaching to {name} in {ns}"))?;
        }
        prog_id(&prog)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the floor program's thread panicked"))?
}

fn ifindex(name: &str) -> Result<u32> {
    let c = CString::new(name)?;
    // SAFETY: `c` is a valid NUL-terminated string for the call's duration.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => bail!("no interface {name}: {}", std::io::Error::last_os_error()),
        i => Ok(i),
    }
}

/// One `struct bpf_insn`.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> [u8; 8] {
    let mut i = [0u8; 8];
    i[0] = code;
    i[1] = (src << 4) | dst;
    i[2..4].copy_from_slice(&off.to_le_bytes());
    i[4..8].copy_from_slice(&imm.to_le_bytes());
    i
}

/// `return bpf_redirect_peer(skb->ifindex == a ? b : a, 0);`
fn program(a: u32, b: u32) -> Vec<u8> {
    let (a, b) = (a as i32, b as i32);
    [
        insn(0x61, 2, 1, SKB_IFINDEX, 0), // r2 = *(u32 *)(r1 + ifindex)
        insn(0x15, 2, 0, 2, a),           // if r2 == a goto +2
        insn(0xb7, 1, 0, 0, a),           // r1 = a
        insn(0x05, 0, 0, 1, 0),           // goto +1
        insn(0xb7, 1, 0, 0, b),           // r1 = b
        insn(0xb7, 2, 0, 0, 0),           // r2 = 0
        insn(0x85, 0, 0, 0, FN_REDIRECT_PEER),
        insn(0x95, 0, 0, 0, 0), // exit
    ]
    .concat()
}

/// `bpf(cmd, attr)` with `attr` zero-padded to the kernel's size.
fn bpf(cmd: libc::c_long, attr: &[u8]) -> std::io::Result<i32> {
    let mut buf = [0u8; 128];
    buf[..attr.len()].copy_from_slice(attr);
    // SAFETY: `buf` outlives the call and is as large as the size passed;
    // every pointer inside it points to memory alive for the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, buf.as_mut_ptr(), buf.len()) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r as i32)
}

fn load(insns: &[u8]) -> Result<std::os::fd::OwnedFd> {
    let license = c"GPL";
    let mut log = vec![0u8; 4096];
    // union bpf_attr, BPF_PROG_LOAD: prog_type, insn_cnt, insns, license,
    // log_level, log_size, log_buf, kern_version, prog_flags, prog_name.
    let mut attr = Vec::with_capacity(64);
    attr.extend(BPF_PROG_TYPE_SCHED_CLS.to_ne_bytes());
    attr.extend((insns.len() as u32 / 8).to_ne_bytes());
    attr.extend((insns.as_ptr() as u64).to_ne_bytes());
    attr.extend((license.as_ptr() as u64).to_ne_bytes());
    attr.extend(1u32.to_ne_bytes());
    attr.extend((log.len() as u32).to_ne_bytes());
    attr.extend((log.as_mut_ptr() as u64).to_ne_bytes());
    attr.extend([0u8; 8]);
    attr.extend(*b"nb_floor\0\0\0\0\0\0\0\0");
    match bpf(BPF_PROG_LOAD, &attr) {
        // SAFETY: a new file descriptor the kernel just returned, owned here.
        Ok(fd) => Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }),
        Err(e) => {
            let end = log.iter().position(|&c| c == 0).unwrap_or(log.len());
            bail!("{e}: {}", String::from_utf8_lossy(&log[..end]))
        }
    }
}

fn attach_tcx(prog: &std::os::fd::OwnedFd, ifindex: u32) -> Result<()> {
    use std::os::fd::AsRawFd;
    // BPF_PROG_ATTACH: target_ifindex, attach_bpf_fd, attach_type, flags.
    let mut attr = Vec::with_capacity(16);
    attr.extend(ifindex.to_ne_bytes());
    attr.extend((prog.as_raw_fd() as u32).to_ne_bytes());
    attr.extend(BPF_TCX_INGRESS.to_ne_bytes());
    attr.extend(0u32.to_ne_bytes());
    bpf(BPF_PROG_ATTACH, &attr)?;
    Ok(())
}

/// The kernel's id of program `prog` (struct bpf_prog_info's second field).
fn prog_id(prog: &std::os::fd::OwnedFd) -> Result<u32> {
    use std::os::fd::AsRawFd;
    let mut info = [0u8; 256];
    let mut attr = Vec::with_capacity(16);
    attr.extend((prog.as_raw_fd() as u32).to_ne_bytes());
    attr.extend((info.len() as u32).to_ne_bytes());
    attr.extend((info.as_mut_ptr() as u64).to_ne_bytes());
    bpf(BPF_OBJ_GET_INFO_BY_FD, &attr).context("the floor program's info")?;
    Ok(u32::from_ne_bytes([info[4], info[5], info[6], info[7]]))
}

/// (run_time_ns, run_cnt) of program `id`, from bpftool (0 before any run).
fn run_stats(id: u32) -> Result<(f64, f64)> {
    let out = std::process::Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string(), "-j"])
        .output()
        .context("bpftool")?;
    if !out.status.success() {
        bail!(
            "bpftool prog show id {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("bpftool JSON")?;
    let get = |k: &str| v[k].as_f64().unwrap_or(0.0);
    Ok((get("run_time_ns"), get("run_cnt")))
}

/// Mean ns per run of the floor program `id` during `blast`, with the
/// kernel's BPF statistics on for that time only (BPF_ENABLE_STATS: they
/// go off when its descriptor closes, even if this process dies).
pub(crate) fn ns_per_run(id: u32, blast: &crate::crr::Blast) -> Result<f64> {
    let stats = bpf(BPF_ENABLE_STATS, &0u32.to_ne_bytes()).context("BPF_ENABLE_STATS")?;
    // SAFETY: a new file descriptor the kernel just returned, owned here.
    let _stats = unsafe { std::os::fd::OwnedFd::from_raw_fd(stats) };
    let (t0, n0) = run_stats(id)?;
    crate::crr::udp_blast(blast).context("UDP-64 through the floor")?;
    let (t1, n1) = run_stats(id)?;
    if n1 - n0 < 1000.0 {
        bail!("the floor program ran {} times during the blast", n1 - n0);
    }
    Ok((t1 - t0) / (n1 - n0))
}
