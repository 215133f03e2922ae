//! `ipv6_dad = "wait"`: the addresses went on without IFA_F_NODAD, so the
//! kernel runs duplicate address detection on each; `up` returns only once
//! none is tentative, and fails naming the address when another node on
//! the link already has it (IFA_F_DADFAILED). DAD of every interface runs
//! at the same time in the kernel, so waiting for them one by one costs
//! about one DAD (1-2 s with the kernel's defaults) in all.
use std::time::{Duration, Instant};

use super::{Result, TopologyError, host_of, in_ns, ns_of, phases, port, run::Run};
use crate::{
    config::{Port, Topology, ipv6s},
    netlink::{self, Dad},
    netns::Netns,
};

/// DAD takes `dad_transmits` (1) x `retrans_time` (1 s) after a random
/// delay of up to 1 s with the kernel's defaults; this bounds a slow or
/// reconfigured one.
const LIMIT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);

/// One interface whose IPv6 addresses `up` waits for.
struct Iface {
    ns: Netns,
    ifname: String,
}

/// Waits for DAD of every interface of `t` (and `ports`) with an IPv6
/// address configured: the bridge, each port's namespace end, both ends of
/// every link.
pub(super) fn wait(t: &Topology, ports: &[Port], run: &mut Run) -> Result<()> {
    let mut all = Vec::new();
    if let Some(b) = t
        .bridge
        .as_ref()
        .filter(|b| ipv6s(&b.addresses).next().is_some())
    {
        all.push(Iface {
            ns: host_of(t),
            ifname: b.name.clone(),
        });
    }
    all.extend(ports.iter().filter_map(port_iface));
    for l in &t.links {
        for e in [&l.a, &l.b] {
            if ipv6s(&e.addresses).next().is_some() {
                all.push(Iface {
                    ns: ns_of(t, &e.netns),
                    ifname: e.ifname.clone(),
                });
            }
        }
    }
    settle_all(&all, run)
}

/// Waits for DAD of one port added to a running topology.
pub(super) fn wait_port(p: &Port, run: &mut Run) -> Result<()> {
    let one: Vec<Iface> = port_iface(p).into_iter().collect();
    settle_all(&one, run)
}

fn port_iface(p: &Port) -> Option<Iface> {
    ipv6s(&p.addresses).next()?;
    Some(Iface {
        ns: port::netns_of(p),
        ifname: p.ifname.clone(),
    })
}

fn settle_all(all: &[Iface], run: &mut Run) -> Result<()> {
    let deadline = Instant::now() + LIMIT;
    phases::parallel(run, all, |_, i| settle(i, deadline)).map(drop)
}

/// Polls `i`'s IPv6 addresses (its link-local one too) until none is
/// tentative. An interface without carrier is skipped: the kernel starts
/// its DAD when it gets one (a bridge with no port up).
fn settle(i: &Iface, deadline: Instant) -> Result<()> {
    let label = i.ns.label();
    let ifname = i.ifname.as_str();
    in_ns(&i.ns, |h| async move {
        loop {
            let Some(link) = netlink::link(&h, ifname).await? else {
                return Err(TopologyError::Vanished {
                    ns: label.into(),
                    ifname: ifname.into(),
                });
            };
            if netlink::has_carrier(&h, ifname).await? != Some(true) {
                log::info!("{ifname} in {label} has no carrier: not waiting for its IPv6 DAD");
                return Ok(());
            }
            let states = netlink::dad_states(&h, link.index).await?;
            if let Some((addr, _)) = states.iter().find(|(_, d)| *d == Dad::Failed) {
                return Err(dad_error(
                    label,
                    ifname,
                    addr,
                    "failed duplicate address detection: another node on the link has it",
                ));
            }
            let Some((addr, _)) = states.iter().find(|(_, d)| *d == Dad::Tentative) else {
                return Ok(());
            };
            if Instant::now() >= deadline {
                let why = format!(
                    "still tentative after {} s of duplicate address detection",
                    LIMIT.as_secs()
                );
                return Err(dad_error(label, ifname, addr, &why));
            }
            tokio::time::sleep(POLL).await;
        }
    })
}

fn dad_error(ns: &str, ifname: &str, addr: &ipnet::IpNet, problem: &str) -> TopologyError {
    TopologyError::Dad {
        ns: ns.into(),
        ifname: ifname.into(),
        addr: addr.addr().to_string(),
        problem: problem.into(),
    }
}
