//! Rust traffic tools for the bench: connection rate (TCP connect, 1-byte
//! request, 1-byte reply, close; like netperf TCP_CRR), UDP request/response
//! (transactions/s and latency; like netperf UDP_RR) and a UDP-64 packet
//! blaster counted at the receiver. Clients and servers are threads that enter their namespaces with setns
//! (plain OS threads, not async workers) and pin themselves to a CPU.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// Moves the calling thread into network namespace `ns` and onto `cpu`
/// (None: wherever the scheduler puts it).
pub(crate) fn enter(ns: &str, cpu: Option<usize>) -> Result<()> {
    let f = std::fs::File::open(format!("/run/netns/{ns}"))
        .with_context(|| format!("opening namespace {ns}"))?;
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns {ns}: {}", std::io::Error::last_os_error());
    }
    if let Some(cpu) = cpu {
        // SAFETY: a zeroed cpu_set_t with one bit set, for this thread.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
    }
    Ok(())
}

/// Runs `f` on a new thread inside namespace `ns`, on `cpu` (see
/// [`enter`]), and waits for it (a client).
fn run_in<R: Send + 'static>(
    ns: &str,
    cpu: Option<usize>,
    what: &'static str,
    f: impl FnOnce(&str) -> Result<R> + Send + 'static,
) -> Result<R> {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter(&ns, cpu)?;
        f(&ns)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("{what} thread panicked"))?
}

/// Starts a thread inside namespace `ns`, on `cpu` (see [`enter`]; a
/// server): `setup` (bind) has succeeded or failed by the time this
/// returns; then the thread runs `serve` with what it made (it must watch
/// a stop flag).
fn spawn_in<S: 'static, R: Default + Send + 'static>(
    ns: &str,
    cpu: Option<usize>,
    what: &'static str,
    setup: impl FnOnce(&str) -> Result<S> + Send + 'static,
    serve: impl FnOnce(S) -> R + Send + 'static,
) -> Result<JoinHandle<R>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let ns = ns.to_string();
    let handle = std::thread::spawn(move || match enter(&ns, cpu).and_then(|_| setup(&ns)) {
        Ok(s) => {
            let _ = tx.send(Ok(()));
            serve(s)
        }
        Err(e) => {
            let _ = tx.send(Err(e));
            R::default()
        }
    });
    rx.recv().with_context(|| format!("{what} thread"))??;
    Ok(handle)
}

/// Close with RST (SO_LINGER 0): no TIME_WAIT, so the client's ports do
/// not run out during a run.
fn linger0(s: &TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// A transaction server in a namespace; stopped (and joined) on drop.
pub struct Server {
    stop: Arc<AtomicBool>,
    addr: SocketAddr,
    ns: String,
    handle: Option<JoinHandle<()>>,
}

impl Server {
    pub fn start(ns: &str, addr: SocketAddr, cpu: Option<usize>) -> Result<Server> {
        let stop = Arc::new(AtomicBool::new(false));
        let stop_t = stop.clone();
        let serve = move |listener: TcpListener| {
            for conn in listener.incoming() {
                if stop_t.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(mut c) = conn else { continue };
                let mut b = [0u8; 1];
                if c.read_exact(&mut b).is_ok() {
                    let _ = c.write_all(&b);
                }
            }
        };
        let handle = spawn_in(
            ns,
            cpu,
            "crr server",
            move |ns| TcpListener::bind(addr).with_context(|| format!("bind {addr} in {ns}")),
            serve,
        )?;
        Ok(Server {
            stop,
            addr,
            ns: ns.to_string(),
            handle: Some(handle),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the blocking accept from inside its namespace.
        let addr = self.addr;
        let _ = run_in(&self.ns, None, "crr server wake-up", move |_| {
            let _ = TcpStream::connect_timeout(&addr, Duration::from_millis(500));
            Ok(())
        });
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Connections (transactions) per second from namespace `ns` to `target`
/// for `secs` seconds.
pub fn client(ns: &str, target: SocketAddr, secs: f64, cpu: Option<usize>) -> Result<f64> {
    run_in(ns, cpu, "crr client", move |ns| {
        let start = Instant::now();
        let (mut ok, mut failed) = (0u64, 0u64);
        while start.elapsed().as_secs_f64() < secs {
            let r = (|| -> std::io::Result<()> {
                let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(1))?;
                s.set_read_timeout(Some(Duration::from_secs(1)))?;
                linger0(&s);
                s.write_all(b"x")?;
                let mut b = [0u8; 1];
                s.read_exact(&mut b)
            })();
            match r {
                Ok(()) => ok += 1,
                Err(_) => failed += 1,
            }
            if failed > 50 && failed * 10 > ok {
                bail!(
                    "crr to {target} from {ns}: {failed} of {} connections failed",
                    ok + failed
                );
            }
        }
        Ok(ok as f64 / start.elapsed().as_secs_f64())
    })
}

/// A UDP echo server in a namespace (for the request/response test);
/// stopped on drop.
pub struct UdpEcho {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl UdpEcho {
    pub fn start(ns: &str, addr: SocketAddr, cpu: Option<usize>, wait: Wait) -> Result<UdpEcho> {
        let stop = Arc::new(AtomicBool::new(false));
        let stop_t = stop.clone();
        let handle = spawn_in(
            ns,
            cpu,
            "udp echo",
            move |ns| {
                let s = udp_bind(ns, addr)?;
                s.set_nonblocking(wait == Wait::Spin)?;
                Ok(s)
            },
            move |sock: std::net::UdpSocket| {
                let mut buf = [0u8; 2048];
                while !stop_t.load(Ordering::Relaxed) {
                    match sock.recv_from(&mut buf) {
                        Ok((n, from)) => {
                            let _ = sock.send_to(&buf[..n], from);
                        }
                        Err(_) if wait == Wait::Spin => std::hint::spin_loop(),
                        Err(_) => {}
                    }
                }
            },
        )?;
        Ok(UdpEcho {
            stop,
            handle: Some(handle),
        })
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A UDP socket bound to `addr` in the current thread's namespace `ns`,
/// with a short read timeout so its loop sees the stop flag.
fn udp_bind(ns: &str, addr: SocketAddr) -> Result<std::net::UdpSocket> {
    let s = std::net::UdpSocket::bind(addr).with_context(|| format!("bind udp {addr} in {ns}"))?;
    s.set_read_timeout(Some(Duration::from_millis(100)))?;
    Ok(s)
}

/// How the request/response tools wait for a datagram.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Wait {
    /// Blocked in recv (as most applications): each exchange also pays an
    /// idle CPU's wake-up, on this VM tens of microseconds on every path.
    Block,
    /// Polling a non-blocking socket: the thread never sleeps, so the
    /// time is the path's (stack, programs, veths), as busy-polling
    /// servers see it. Both ends keep a CPU busy for the run.
    Spin,
}

/// UDP request/response from `ns` to `target` (an echo server waiting the
/// same `wait` way) for `secs`: one 64-byte request outstanding. Returns
/// (transactions/s, p50 us, p99 us).
pub fn udp_rr(
    ns: &str,
    target: SocketAddr,
    secs: f64,
    cpu: Option<usize>,
    wait: Wait,
) -> Result<(f64, f64, f64)> {
    run_in(ns, cpu, "udp rr", move |ns| {
        let any = if target.is_ipv6() {
            "[::]:0"
        } else {
            "0.0.0.0:0"
        };
        let s = std::net::UdpSocket::bind(any)?;
        s.connect(target)?;
        s.set_read_timeout(Some(Duration::from_millis(500)))?;
        s.set_nonblocking(wait == Wait::Spin)?;
        let (req, mut buf) = ([7u8; 64], [0u8; 2048]);
        let mut lat = Vec::with_capacity(1 << 16);
        let mut lost = 0u64;
        let start = Instant::now();
        while start.elapsed().as_secs_f64() < secs {
            let t = Instant::now();
            s.send(&req)?;
            match recv_within(&s, &mut buf, wait, t) {
                Some(_) => lat.push(t.elapsed().as_secs_f64() * 1e6),
                None => lost += 1,
            }
            if lost > 20 && lost * 10 > lat.len() as u64 {
                bail!(
                    "udp rr to {target} from {ns}: {lost} of {} lost",
                    lost + lat.len() as u64
                );
            }
        }
        let tps = lat.len() as f64 / start.elapsed().as_secs_f64();
        lat.sort_by(f64::total_cmp);
        if lat.is_empty() {
            bail!("udp rr to {target}: no answers");
        }
        let pct = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize];
        Ok((tps, pct(0.5), pct(0.99)))
    })
}

/// A datagram on `s` within 500 ms of `sent`, waiting `wait`'s way (the
/// blocking socket has that read timeout); None: lost.
fn recv_within(
    s: &std::net::UdpSocket,
    buf: &mut [u8],
    wait: Wait,
    sent: Instant,
) -> Option<usize> {
    loop {
        match s.recv(buf) {
            Ok(n) => return Some(n),
            Err(e) if wait == Wait::Spin && e.kind() == std::io::ErrorKind::WouldBlock => {
                if sent.elapsed() > Duration::from_millis(500) {
                    return None;
                }
                std::hint::spin_loop();
            }
            Err(_) => return None,
        }
    }
}

/// One UDP-64 blast: a sender in `tx_ns` (bound to `tx_bind`) sends
/// 64-byte datagrams as fast as it can for `secs`; a receiver in `rx_ns`
/// bound to `rx_bind` counts what arrives.
pub struct Blast<'a> {
    pub tx_ns: &'a str,
    pub rx_ns: &'a str,
    pub tx_bind: SocketAddr,
    pub rx_bind: SocketAddr,
    pub target: Target,
    pub secs: f64,
    pub tx_cpu: Option<usize>,
    pub rx_cpu: Option<usize>,
}

/// Where a blast goes.
#[derive(Clone, Copy)]
pub enum Target {
    /// This address.
    To(SocketAddr),
    /// The receiver first sends one datagram from its socket to this
    /// address (reaching the sender): that opens the NAT session of a
    /// reply direction. The sender then blasts back to wherever the
    /// datagram came from (the address the NAT mapped the receiver to).
    ReplyTo(SocketAddr),
}

/// Runs `b`; returns the packets per second the receiver got.
pub fn udp_blast(b: &Blast) -> Result<f64> {
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let (tx_bind, target, secs) = (b.tx_bind, b.target, b.secs);
    // The sender binds first (a reply direction's opening datagram must
    // find it), then waits for the receiver to be ready.
    let sender = spawn_in(
        b.tx_ns,
        b.tx_cpu,
        "udp sender",
        move |ns| udp_bind(ns, tx_bind),
        move |s: std::net::UdpSocket| -> Option<Result<f64>> {
            Some(
                go_rx
                    .recv()
                    .map_err(anyhow::Error::from)
                    .and_then(|_| blast(&s, target, secs)),
            )
        },
    )?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop_t = stop.clone();
    let rx_bind = b.rx_bind;
    let setup = move |ns: &str| {
        let s = udp_bind(ns, rx_bind)?;
        let size: libc::c_int = 8 << 20;
        // SAFETY: setsockopt with a c_int option value on an open socket.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                &size as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        if let Target::ReplyTo(peer) = target {
            s.send_to(b"open", peer)
                .with_context(|| format!("opening datagram to {peer} from {ns}"))?;
        }
        Ok(s)
    };
    let count = move |sock: std::net::UdpSocket| {
        let (mut n, mut buf) = (0u64, [0u8; 2048]);
        while !stop_t.load(Ordering::Relaxed) {
            if sock.recv(&mut buf).is_ok() {
                n += 1;
            }
        }
        n
    };
    let receiver = spawn_in(b.rx_ns, b.rx_cpu, "udp receiver", setup, count);
    if receiver.is_ok() {
        let _ = go_tx.send(());
    }
    // Without a receiver the sender's wait fails and it ends at once.
    drop(go_tx);
    let sent = sender
        .join()
        .map_err(|_| anyhow::anyhow!("udp sender thread panicked"))?
        .context("udp sender")?;
    // Datagrams still in flight land well within this.
    std::thread::sleep(Duration::from_millis(150));
    stop.store(true, Ordering::Relaxed);
    let received = receiver?
        .join()
        .map_err(|_| anyhow::anyhow!("udp receiver thread panicked"))?;
    Ok(received as f64 / sent?)
}

/// Sends 64-byte datagrams from `s` for `secs` (see [`Target`]); returns
/// the seconds it sent for.
fn blast(s: &std::net::UdpSocket, target: Target, secs: f64) -> Result<f64> {
    let to = match target {
        Target::To(a) => a,
        Target::ReplyTo(_) => {
            let mut buf = [0u8; 64];
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            let (_, from) = s
                .recv_from(&mut buf)
                .context("no opening datagram from the receiver")?;
            from
        }
    };
    s.connect(to)?;
    let payload = [0u8; 64];
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < secs {
        for _ in 0..64 {
            let _ = s.send(&payload);
        }
    }
    Ok(start.elapsed().as_secs_f64())
}
