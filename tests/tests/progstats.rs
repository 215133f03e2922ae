//! `netbridge stats --programs`: the programs of a running topology, how
//! often they ran and what a run cost, from the kernel's BPF statistics,
//! which are on only while the command samples.
use std::process::Stdio;

use netbridge_tests::{Sandbox, require_root};
use serde_json::Value;

/// Samples `--programs` of `topo` over `secs` while `during` runs (after a
/// short head start, so the window covers all of it).
fn sample(sb: &Sandbox, topo: &str, secs: u32, during: impl FnOnce()) -> Value {
    let bin = netbridge_tests::netbridge_bin();
    let interval = format!("{secs}s");
    let child = sb
        .cmd(
            &sb.host,
            &[
                bin.to_str().unwrap(),
                "stats",
                "--programs",
                "--json",
                "--name",
                topo,
                "--interval",
                &interval,
            ],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn netbridge stats --programs");
    std::thread::sleep(std::time::Duration::from_millis(500));
    during();
    let out = child.wait_with_output().expect("stats --programs");
    assert!(
        out.status.success(),
        "stats --programs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stats --programs JSON")
}

/// The entry of the program named `name` (as the kernel keeps it: 15
/// characters).
fn program<'a>(v: &'a Value, name: &str) -> &'a Value {
    let short = &name[..name.len().min(15)];
    v["programs"]
        .as_array()
        .expect("programs")
        .iter()
        .find(|p| p["name"] == short)
        .unwrap_or_else(|| panic!("no program {short} in {v:#}"))
}

fn attached(p: &Value) -> Vec<String> {
    p["attached"]
        .as_array()
        .expect("attached")
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

fn bpf_stats_sysctl() -> String {
    std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
        .expect("kernel.bpf_stats_enabled")
        .trim()
        .to_string()
}

#[test]
fn programs_are_measured_on_real_traffic_only_while_sampling() {
    require_root!();
    let sb = Sandbox::new();
    let (_, prefix) = sb.up_example("bridge-three.toml");
    let (black, topo) = (sb.name("black"), format!("{prefix}bridge-three"));
    sb.sh(&black, "ping -c 2 -i 0.2 -W 2 -q 192.168.2.1");
    let sysctl = bpf_stats_sysctl();

    // 100 echo requests enter nb-black, 100 replies nb-white.
    let busy = sample(&sb, &topo, 3, || {
        sb.sh(&black, "ping -c 100 -i 0.01 -W 2 -q 192.168.2.1");
    });
    let port = program(&busy, netbridge_common::PROG_PORT_INGRESS);
    let runs = port["runs"].as_u64().unwrap();
    assert!(runs >= 200, "runs {runs}: {busy:#}");
    assert!(port["ns_per_run"].as_f64().unwrap() > 0.0, "{busy:#}");
    let on = attached(port);
    for p in ["nb-black", "nb-white", "nb-green"] {
        assert!(on.contains(&format!("tc_ingress@{p}")), "{on:?}");
    }
    // Without NAT the port program never tail-calls its NAT part, so
    // `up` does not load it (the biggest program to verify). On a NAT lab
    // it is listed as tail-called: json_schema's `stats --programs` check.
    let names: Vec<&str> = busy["programs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert!(
        !names.contains(&netbridge_common::PROG_PORT_NAT),
        "{names:?}"
    );

    // Control: the same window without the pings counts (almost) nothing,
    // so the runs above are the traffic's, not a running total.
    let idle = sample(&sb, &topo, 1, || {});
    let idle_runs = program(&idle, netbridge_common::PROG_PORT_INGRESS)["runs"]
        .as_u64()
        .unwrap();
    assert!(idle_runs < 200, "idle runs {idle_runs}: {idle:#}");

    // Statistics were switched through BPF_ENABLE_STATS: the sysctl
    // others rely on is untouched.
    assert_eq!(bpf_stats_sysctl(), sysctl);
    sb.nb_ok(&["down", "--name", &topo]);
}

#[test]
fn nat_programs_are_listed_with_their_uplink() {
    require_root!();
    let mut sb = Sandbox::new();
    let (_, prefix) = sb.up_example("nat-lab.toml");
    for n in ["nbx-host", "black", "white", "upstream"] {
        sb.adopt_ns(&sb.name(n));
    }
    let (black, topo) = (sb.name("black"), format!("{prefix}nat-lab"));
    // Echo requests through SNAT; replies come back in on the uplink.
    let v = sample(&sb, &topo, 2, || {
        sb.sh(&black, "ping -c 20 -i 0.01 -W 2 -q 203.0.113.254");
    });
    let up_in = program(&v, netbridge_common::PROG_UPLINK_INGRESS);
    assert_eq!(attached(up_in), ["uplink_in@uplink0"]);
    assert!(up_in["runs"].as_u64().unwrap() >= 20, "{v:#}");
    let up_out = program(&v, netbridge_common::PROG_UPLINK_EGRESS);
    assert_eq!(attached(up_out), ["uplink_out@uplink0"]);
    assert!(
        program(&v, netbridge_common::PROG_PORT_INGRESS)["runs"]
            .as_u64()
            .unwrap()
            >= 20
    );
    sb.nb_ok(&["down", "--name", &topo]);
}

/// IPv6 frames run their own program: nb_port_ingress tail-calls
/// nb_port_ipv6 (slot `PORT_PROG_IPV6` of the port's tail-call array),
/// listed with that slot; the kernel counts its runs and time in the
/// port program (the caller), so IPv6 echoes show there ("in caller").
/// That IPv6 frames depend on it and IPv4 ones do not:
/// ipv6::ipv6_without_its_program_fails_closed_and_up_repairs.
#[test]
fn ipv6_program_is_listed_as_the_port_programs_tail_call() {
    require_root!();
    let sb = Sandbox::new();
    let (_, prefix) = sb.up_example("dual-stack.toml");
    let (black, topo) = (sb.name("black"), format!("{prefix}dual-stack"));
    sb.sh(&black, "ping -6 -c 2 -i 0.2 -W 2 -q fd00:77::b2");
    let v = sample(&sb, &topo, 3, || {
        sb.sh(&black, "ping -6 -c 100 -i 0.01 -W 2 -q fd00:77::b2");
    });
    let ipv6 = program(&v, netbridge_common::PROG_PORT_IPV6);
    let tail = format!("tail_call@{}[1]", netbridge_common::MAP_PORT_PROGS);
    assert_eq!(attached(ipv6), [tail], "{v:#}");
    assert_eq!(ipv6["tail_called"], true, "{v:#}");
    assert_eq!(ipv6["runs"], 0, "{v:#}");
    let port = program(&v, netbridge_common::PROG_PORT_INGRESS);
    assert!(port["runs"].as_u64().unwrap() >= 200, "{v:#}");
    // The verifier's work for each (what an `up` waits for): at least one
    // step per instruction the kernel kept (bpftool's translated size).
    for p in [port, ipv6] {
        let verified = p["verified_insns"].as_u64().expect("verified_insns");
        let id = p["id"].as_u64().unwrap();
        let shown = sb.sh(&sb.host, &format!("bpftool -j prog show id {id}"));
        let shown: Value = serde_json::from_str(&shown).unwrap();
        let insns = shown["bytes_xlated"].as_u64().unwrap() / 8;
        assert!(
            verified >= insns && insns > 100,
            "{verified} < {insns}: {v:#}"
        );
    }
    sb.nb_ok(&["down", "--name", &topo]);
}
