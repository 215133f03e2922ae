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
    run_out(prog_fd, frame).map(|r| r.retval)
}

/// Runs `prog_fd` once on `frame` and returns its verdict and the frame as
/// the program left it (rewritten addresses, ports, checksums).
pub fn run_out(prog_fd: i32, frame: &[u8]) -> std::io::Result<netbridge::nat::TestRunOut> {
    // SAFETY: the caller's program fd stays open for the call.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(prog_fd) };
    netbridge::nat::prog_test_run_out(fd, frame)
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
/// Every NAT counter and drop reason of `dp`, by name.
pub fn counters(dp: &netbridge::bpf::Datapath) -> std::collections::BTreeMap<String, u64> {
    let nat = dp.maps.nat.counters().unwrap();
    let drops = dp.maps.drop_stats().unwrap();
    nat.into_iter()
        .chain(drops)
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

/// Runs `f`; returns its result and the counters of `dp` that moved, by
/// how much.
pub fn moved<T>(
    dp: &netbridge::bpf::Datapath,
    f: impl FnOnce() -> T,
) -> (T, std::collections::BTreeMap<String, u64>) {
    let before = counters(dp);
    let r = f();
    let d = counters(dp)
        .into_iter()
        .filter_map(|(k, v)| {
            let d = v - before[&k];
            (d > 0).then_some((k, d))
        })
        .collect();
    (r, d)
}

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

/// Hand-built IPv4 packets with their checksums computed here, independently
/// of the datapath, and a reader that checks every checksum of a packet the
/// datapath rewrote (ICMP errors: the quoted packet's too).
pub mod pkt {
    use std::net::{Ipv4Addr, SocketAddrV4};

    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMP_ECHO_REPLY: u8 = 0;
    pub const ICMP_DEST_UNREACH: u8 = 3;
    pub const ICMP_ECHO: u8 = 8;
    pub const ICMP_TIME_EXCEEDED: u8 = 11;
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;

    /// One's complement sum of `data` (big-endian 16-bit words) onto `acc`.
    fn sum(data: &[u8], mut acc: u32) -> u32 {
        for c in data.chunks(2) {
            acc += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
        acc
    }

    fn fold(mut acc: u32) -> u16 {
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        acc as u16
    }

    /// The Internet checksum (RFC 1071) of `data`, host order.
    pub fn csum(data: &[u8]) -> u16 {
        !fold(sum(data, 0))
    }

    /// The TCP/UDP checksum of `l4` between `src` and `dst`.
    pub fn l4_csum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> u16 {
        let mut pseudo = Vec::with_capacity(12);
        pseudo.extend_from_slice(&src.octets());
        pseudo.extend_from_slice(&dst.octets());
        pseudo.extend_from_slice(&[0, proto]);
        pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        !fold(sum(l4, sum(&pseudo, 0)))
    }

    /// An IPv4 header (no options, TTL 64, DF set: an atomic datagram,
    /// as Linux sends them, whose IP ID the NAT keeps) before `payload`.
    pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: &[u8]) -> Vec<u8> {
        let len = (20 + payload.len()) as u16;
        let mut h = vec![0x45, 0];
        h.extend_from_slice(&len.to_be_bytes());
        h.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, proto, 0, 0]);
        h.extend_from_slice(&src.octets());
        h.extend_from_slice(&dst.octets());
        let c = csum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h.extend_from_slice(payload);
        h
    }

    /// IPv4/UDP from `src` to `dst`, checksum computed (`csum`: else 0,
    /// "no checksum").
    pub fn udp(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8], with_csum: bool) -> Vec<u8> {
        let mut u = Vec::new();
        u.extend_from_slice(&src.port().to_be_bytes());
        u.extend_from_slice(&dst.port().to_be_bytes());
        u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        u.extend_from_slice(&[0, 0]);
        u.extend_from_slice(payload);
        if with_csum {
            let c = match l4_csum(*src.ip(), *dst.ip(), UDP, &u) {
                0 => 0xffff,
                c => c,
            };
            u[6..8].copy_from_slice(&c.to_be_bytes());
        }
        ipv4(*src.ip(), *dst.ip(), UDP, &u)
    }

    /// IPv4/TCP with `flags`, a header of `doff` words (only 20 bytes of it
    /// present when `doff` > 5: a lying data offset), checksum computed.
    pub fn tcp(src: SocketAddrV4, dst: SocketAddrV4, flags: u8, doff: u8) -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(&src.port().to_be_bytes());
        t.extend_from_slice(&dst.port().to_be_bytes());
        t.extend_from_slice(&[0, 0, 0x10, 0, 0, 0, 0, 0]);
        t.extend_from_slice(&[doff << 4, flags, 0xff, 0xff, 0, 0, 0, 0]);
        let c = l4_csum(*src.ip(), *dst.ip(), TCP, &t);
        t[16..18].copy_from_slice(&c.to_be_bytes());
        ipv4(*src.ip(), *dst.ip(), TCP, &t)
    }

    /// IPv4/ICMP echo request or reply (`ty`) with identifier `id`.
    pub fn icmp_echo(src: Ipv4Addr, dst: Ipv4Addr, ty: u8, id: u16) -> Vec<u8> {
        let mut m = vec![ty, 0, 0, 0];
        m.extend_from_slice(&id.to_be_bytes());
        m.extend_from_slice(&[0, 1, b'p', b'i', b'n', b'g']);
        let c = csum(&m);
        m[2..4].copy_from_slice(&c.to_be_bytes());
        ipv4(src, dst, ICMP, &m)
    }

    /// IPv4/ICMP error `ty`/`code` quoting `quoted` (a whole IPv4 packet).
    pub fn icmp_error(src: Ipv4Addr, dst: Ipv4Addr, ty: u8, code: u8, quoted: &[u8]) -> Vec<u8> {
        let mut m = vec![ty, code, 0, 0, 0, 0, 0, 0];
        m.extend_from_slice(quoted);
        let c = csum(&m);
        m[2..4].copy_from_slice(&c.to_be_bytes());
        ipv4(src, dst, ICMP, &m)
    }

    /// `ip` in an Ethernet frame from `src` to `dst`.
    pub fn frame(dst: [u8; 6], src: [u8; 6], ip: &[u8]) -> Vec<u8> {
        let mut f = super::frame::eth(dst, src, &[], 0x0800);
        f.extend_from_slice(ip);
        f
    }

    /// A view of an IPv4 packet.
    #[derive(Clone, Copy)]
    pub struct Ip<'a>(pub &'a [u8]);

    impl<'a> Ip<'a> {
        /// The IPv4 packet of an Ethernet frame.
        pub fn of_frame(f: &'a [u8]) -> Ip<'a> {
            Ip(&f[14..])
        }
        fn be16(&self, off: usize) -> u16 {
            u16::from_be_bytes([self.0[off], self.0[off + 1]])
        }
        fn ihl(&self) -> usize {
            (self.0[0] & 0xf) as usize * 4
        }
        pub fn ttl(&self) -> u8 {
            self.0[8]
        }
        pub fn proto(&self) -> u8 {
            self.0[9]
        }
        pub fn src(&self) -> Ipv4Addr {
            Ipv4Addr::new(self.0[12], self.0[13], self.0[14], self.0[15])
        }
        pub fn dst(&self) -> Ipv4Addr {
            Ipv4Addr::new(self.0[16], self.0[17], self.0[18], self.0[19])
        }
        /// The L4 part (to the IPv4 total length).
        pub fn l4(&self) -> &'a [u8] {
            &self.0[self.ihl()..(self.be16(2) as usize).min(self.0.len())]
        }
        /// TCP/UDP source port; ICMP echo: the identifier.
        pub fn sport(&self) -> u16 {
            let l4 = self.l4();
            match self.proto() {
                ICMP => u16::from_be_bytes([l4[4], l4[5]]),
                _ => u16::from_be_bytes([l4[0], l4[1]]),
            }
        }
        pub fn dport(&self) -> u16 {
            let l4 = self.l4();
            u16::from_be_bytes([l4[2], l4[3]])
        }
        pub fn src_ep(&self) -> SocketAddrV4 {
            SocketAddrV4::new(self.src(), self.sport())
        }
        pub fn dst_ep(&self) -> SocketAddrV4 {
            SocketAddrV4::new(self.dst(), self.dport())
        }
        /// The L4 checksum field as carried.
        pub fn l4_csum_field(&self) -> u16 {
            let off = match self.proto() {
                TCP => 16,
                UDP => 6,
                _ => 2,
            };
            let l4 = self.l4();
            u16::from_be_bytes([l4[off], l4[off + 1]])
        }
        /// The packet an ICMP error quotes.
        pub fn quoted(&self) -> Ip<'a> {
            Ip(&self.l4()[8..])
        }

        /// Checks the IPv4 header checksum and the L4 checksum (TCP, UDP
        /// unless 0, ICMP over the message); for an ICMP error, the quoted
        /// packet's too (its header, and its L4 checksum when quoted whole).
        pub fn verify(&self) -> Result<(), String> {
            if csum(&self.0[..self.ihl()]) != 0 {
                return Err(format!("bad IPv4 header checksum: {:02x?}", self.0));
            }
            let l4 = self.l4();
            let ok = match self.proto() {
                UDP if self.l4_csum_field() == 0 => true,
                TCP | UDP => l4_csum(self.src(), self.dst(), self.proto(), l4) == 0,
                ICMP => csum(l4) == 0,
                _ => true,
            };
            if !ok {
                return Err(format!("bad L4 checksum: {:02x?}", self.0));
            }
            if self.proto() == ICMP && [ICMP_DEST_UNREACH, ICMP_TIME_EXCEEDED].contains(&l4[0]) {
                let q = self.quoted();
                q.verify().map_err(|e| format!("quoted packet: {e}"))?;
            }
            Ok(())
        }
    }
}
