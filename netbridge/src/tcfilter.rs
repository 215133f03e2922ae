//! The port program's TC attachment: a cls_bpf filter (direct-action) on a
//! clsact qdisc, at a fixed priority and handle ([`PRIO`], [`HANDLE`]).
//!
//! Why not TCX like the uplink: every TCX attach (`BPF_LINK_CREATE`) waits
//! for an RCU grace period while it holds RTNL (`tcx_entry_sync()`), 13-15
//! ms here, so 100 ports spent 1.4 s attaching one after the other; a filter
//! is a netlink change of well under a millisecond. The filter holds its
//! program: unlike a TCX link pin, nothing netbridge pins keeps it attached
//! or detaches it. [`crate::bpf::Datapath::attach_port`] attaches (or, on
//! `up --reload`, replaces in place: same priority and handle, one RCU
//! pointer swap in cls_bpf, no gap) and pins the program under
//! `filters/` for `status`, `stats --programs` and repair; [`detach`]
//! deletes the filter. aya attaches; this module reads and deletes, on a
//! netlink socket of the calling thread's namespace.
//!
//! Order on the hook: TCX programs (other tools', netbridge's capture
//! observer) run before any filter, and the filters run by priority, lower
//! first. [`PRIO`] is high, so another tool's filter (the kernel's default
//! priority is 49152, and automatic ones count down from the first) runs
//! before the port program, as it would before an appended TCX program.
use std::io;

use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    RouteNetlinkMessage,
    tc::{TcAttribute, TcFilterBpfOption, TcHandle, TcMessage, TcOption},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// The port filter's priority (`tc filter ... pref 65000`).
pub const PRIO: u16 = 65000;
/// The port filter's handle (`tc filter ... handle 0x6e62`, "nb").
pub const HANDLE: u32 = 0x6e62;
/// `ETH_P_ALL` in network byte order, the protocol aya attaches with.
const ALL_PROTOCOLS: u32 = (libc::ETH_P_ALL as u16).to_be() as u32;
/// The clsact qdisc's handle (`ffff:`) and parent (`TC_H_CLSACT`).
const CLSACT_HANDLE: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0,
};
const CLSACT_PARENT: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0xfff1,
};

/// One filter on a hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub prio: u16,
    pub handle: u32,
    /// `bpf` for cls_bpf (the only kind with a name and a program id).
    pub kind: String,
    /// The name the loader gave (`TCA_BPF_NAME`; aya: the program's).
    pub name: Option<String>,
    pub prog_id: Option<u32>,
}

impl Filter {
    /// At netbridge's priority and handle.
    pub fn is_ours(&self) -> bool {
        self.prio == PRIO && self.handle == HANDLE
    }
}

fn parent(ingress: bool) -> TcHandle {
    TcHandle {
        major: 0xffff,
        minor: if ingress {
            TcHandle::MIN_INGRESS
        } else {
            TcHandle::MIN_EGRESS
        },
    }
}

/// The filters on `ifindex`'s clsact ingress (or egress) hook, of every
/// kind, in the kernel's order (priority). None without a clsact qdisc.
pub fn list(ifindex: u32, ingress: bool) -> io::Result<Vec<Filter>> {
    let mut m = TcMessage::with_index(ifindex as i32);
    m.header.parent = parent(ingress);
    let replies = match request(RouteNetlinkMessage::GetTrafficFilter(m), NLM_F_DUMP) {
        // No qdisc to hold filters (the kernel says EINVAL), or no device.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENODEV)) => {
            return Ok(Vec::new());
        }
        r => r?,
    };
    Ok(replies
        .into_iter()
        .filter_map(|r| match r {
            RouteNetlinkMessage::NewTrafficFilter(m) => filter(&m),
            _ => None,
        })
        .collect())
}

/// A dump entry as a [`Filter`]; not the per-priority entries (handle 0)
/// the kernel lists before each priority's filters.
fn filter(m: &TcMessage) -> Option<Filter> {
    let handle = u32::from(m.header.handle);
    let kind = m.attributes.iter().find_map(|a| match a {
        TcAttribute::Kind(k) => Some(k.clone()),
        _ => None,
    })?;
    if handle == 0 {
        return None;
    }
    let mut f = Filter {
        prio: (m.header.info >> 16) as u16,
        handle,
        kind,
        name: None,
        prog_id: None,
    };
    for a in &m.attributes {
        let TcAttribute::Options(opts) = a else {
            continue;
        };
        for o in opts {
            match o {
                TcOption::Bpf(TcFilterBpfOption::ProgName(n)) => f.name = Some(n.clone()),
                TcOption::Bpf(TcFilterBpfOption::ProgId(id)) => f.prog_id = Some(*id),
                _ => {}
            }
        }
    }
    Some(f)
}

/// The filter at netbridge's priority and handle on the ingress hook.
pub fn ours(ifindex: u32) -> io::Result<Option<Filter>> {
    Ok(list(ifindex, true)?.into_iter().find(Filter::is_ours))
}

/// Deletes netbridge's filter (the port program at [`PRIO`]/[`HANDLE`])
/// from `ifindex`'s ingress hook, then the clsact qdisc if no filter is
/// left on it (netbridge added it; another tool's filters keep it).
/// Anything else at that priority and handle stays. Returns whether a
/// filter was deleted.
pub fn detach(ifindex: u32) -> io::Result<bool> {
    let port = netbridge_common::PROG_PORT_INGRESS;
    if ours(ifindex)?.is_none_or(|f| f.name.as_deref() != Some(port)) {
        return Ok(false);
    }
    let mut m = TcMessage::with_index(ifindex as i32);
    m.header.parent = parent(true);
    m.header.handle = HANDLE.into();
    m.header.info = (u32::from(PRIO) << 16) | ALL_PROTOCOLS;
    m.attributes.push(TcAttribute::Kind("bpf".into()));
    let deleted = match request(RouteNetlinkMessage::DelTrafficFilter(m), NLM_F_ACK) {
        Ok(_) => true,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EINVAL)) => false,
        Err(e) => return Err(e),
    };
    if deleted && list(ifindex, true)?.is_empty() && list(ifindex, false)?.is_empty() {
        let mut q = TcMessage::with_index(ifindex as i32);
        q.header.parent = CLSACT_PARENT;
        q.header.handle = CLSACT_HANDLE;
        q.attributes.push(TcAttribute::Kind("clsact".into()));
        match request(RouteNetlinkMessage::DelQueueDiscipline(q), NLM_F_ACK) {
            Err(e) if !matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EINVAL)) => {
                return Err(e);
            }
            _ => {}
        }
    }
    Ok(deleted)
}

/// Sends one request and collects the replies until the dump ends or the
/// kernel acknowledges; an error reply becomes its errno.
fn request(msg: RouteNetlinkMessage, flags: u16) -> io::Result<Vec<RouteNetlinkMessage>> {
    let mut sock = Socket::new(NETLINK_ROUTE)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    let mut req = NetlinkMessage::from(msg);
    req.header.flags = NLM_F_REQUEST | flags;
    req.header.sequence_number = 1;
    req.finalize();
    let mut buf = vec![0; req.buffer_len()];
    req.serialize(&mut buf);
    sock.send(&buf, 0)?;
    let mut out = Vec::new();
    // Bounded: a dump of one hook is a few datagrams.
    for _ in 0..10_000 {
        let (data, _) = sock.recv_from_full()?;
        let mut at = 0;
        while at < data.len() {
            let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[at..])
                .map_err(io::Error::other)?;
            let len = m.header.length as usize;
            match m.payload {
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) => {
                    return match e.code {
                        Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                        None => Ok(out),
                    };
                }
                NetlinkPayload::InnerMessage(m) => out.push(m),
                _ => {}
            }
            if len == 0 {
                break;
            }
            at += (len + 3) & !3;
        }
    }
    Err(io::Error::other("netlink: no end of the reply"))
}
