//! BPF_PROG_TEST_RUN on a loaded program with a hand-built frame: the kernel
//! runs the program once on a real skb and returns its verdict, without
//! sending anything anywhere.

/// Runs `prog_fd` once on `frame`. The frame arrives on the calling
/// thread's loopback device (ifindex 1): this kernel rejects any ifindex in
/// the test context, so tests configure `lo` as the ingress bridge port.
/// Returns the program's return value (TC_ACT_*) or the syscall error.
pub fn run_tc(prog_fd: i32, frame: &[u8]) -> std::io::Result<u32> {
    run(prog_fd, frame)
}

/// Same for an XDP program (frames arrive on the thread's loopback device).
pub fn run_xdp(prog_fd: i32, frame: &[u8]) -> std::io::Result<u32> {
    run(prog_fd, frame)
}

fn run(prog_fd: i32, frame: &[u8]) -> std::io::Result<u32> {
    // SAFETY: the caller's program fd stays open for the call.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(prog_fd) };
    netbridge::nat::prog_test_run(fd, frame)
}

/// Runs the conntrack control program pinned for topology `name` on
/// `cmd`, as `up`, `gc` and `forward` do (tests stop the sweep with it).
pub fn ct_control(name: &str, cmd: netbridge_common::CtlCmd) -> std::io::Result<u32> {
    use std::os::fd::AsFd;
    let pin = std::path::Path::new(netbridge::bpf::BPFFS_ROOT)
        .join(name)
        .join(netbridge_common::PROG_CT_CTL);
    let prog = aya::programs::SchedClassifier::from_pin(pin).map_err(std::io::Error::other)?;
    let fd = prog.fd().map_err(std::io::Error::other)?;
    netbridge::nat::prog_test_run(fd.as_fd(), &netbridge::nat::ctl_frame(&cmd))
}

/// Hand-built frames.
pub mod frame {
    pub const BROADCAST: [u8; 6] = [0xff; 6];

    /// Ethernet header with optional VLAN tags (TPID 0x8100 each).
    pub fn eth(dst: [u8; 6], src: [u8; 6], vlans: &[u16], ethertype: u16) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        for v in vlans {
            f.extend_from_slice(&0x8100u16.to_be_bytes());
            f.extend_from_slice(&v.to_be_bytes());
        }
        f.extend_from_slice(&ethertype.to_be_bytes());
        f
    }

    /// A minimal IPv4/UDP packet (IHL given, checksum not validated here).
    pub fn ipv4_udp(dst: [u8; 6], src: [u8; 6], ihl: u8) -> Vec<u8> {
        let mut f = eth(dst, src, &[], 0x0800);
        let mut ip = vec![
            0x40 | ihl,
            0,
            0,
            28,
            0,
            0,
            0,
            0,
            64,
            17,
            0,
            0,
            192,
            168,
            1,
            1,
            192,
            168,
            2,
            1,
        ];
        ip.resize((ihl as usize * 4).max(20), 0);
        f.extend_from_slice(&ip);
        f.extend_from_slice(&[0x13, 0x88, 0x13, 0x88, 0, 8, 0, 0]);
        f
    }

    /// An ARP request (broadcast).
    pub fn arp(src: [u8; 6]) -> Vec<u8> {
        let mut f = eth(BROADCAST, src, &[], 0x0806);
        f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&src);
        f.extend_from_slice(&[192, 168, 1, 1, 0, 0, 0, 0, 0, 0, 192, 168, 2, 1]);
        f
    }
}
