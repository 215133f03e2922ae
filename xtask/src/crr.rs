//! Connection-rate tool for the bench: TCP connect, 1-byte request, 1-byte
//! reply, close, one transaction per connection (like netperf TCP_CRR).
//! Client and server are threads that enter their namespaces with setns
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

/// Moves the calling thread into network namespace `ns` and onto `cpu`.
fn enter(ns: &str, cpu: usize) -> Result<()> {
    let f = std::fs::File::open(format!("/run/netns/{ns}"))
        .with_context(|| format!("opening namespace {ns}"))?;
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns {ns}: {}", std::io::Error::last_os_error());
    }
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
    Ok(())
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
    pub fn start(ns: &str, addr: SocketAddr, cpu: usize) -> Result<Server> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let (ns_t, stop_t) = (ns.to_string(), stop.clone());
        let handle = std::thread::spawn(move || {
            let listener = enter(&ns_t, cpu).and_then(|_| {
                TcpListener::bind(addr).with_context(|| format!("bind {addr} in {ns_t}"))
            });
            let listener = match listener {
                Ok(l) => {
                    let _ = tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
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
        });
        rx.recv().context("crr server thread")??;
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
        let (ns, addr) = (self.ns.clone(), self.addr);
        let _ = std::thread::spawn(move || {
            if enter(&ns, 0).is_ok() {
                let _ = TcpStream::connect_timeout(&addr, Duration::from_millis(500));
            }
        })
        .join();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Connections (transactions) per second from namespace `ns` to `target`
/// for `secs` seconds.
pub fn client(ns: &str, target: SocketAddr, secs: f64, cpu: usize) -> Result<f64> {
    let ns = ns.to_string();
    std::thread::spawn(move || -> Result<f64> {
        enter(&ns, cpu)?;
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
    .join()
    .map_err(|_| anyhow::anyhow!("crr client thread panicked"))?
}
