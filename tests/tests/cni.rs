//! The CNI plugin through the harness (`cni_harness`): every verb at each
//! spec version, for `netbridge-cni` and, as the positive control, Debian
//! 12's reference bridge + portmap; then what only netbridge-cni does:
//! GC and STATUS, port mappings with their sessions, configuration errors
//! that change nothing, parallel ADD/DEL on one network. All in sandbox
//! node namespaces.
mod cni_harness;

use std::{collections::BTreeSet, time::Duration};

use cni_harness::{Attachment, Lab, NetList, Subject};
use netbridge::cni::{CniResult, CniVersion};
use netbridge_tests::{Sandbox, require_root, script};
use serde_json::{Value, json};

/// The subject's result must look like the reference bridge's: bridge,
/// host veth, container interface with its sandbox; the IP on the
/// container interface; routes; dns.
fn check_result_shape(lab: &Lab, r: &Value, att: &Attachment) -> CniResult {
    let p = CniResult::from_json(r).unwrap();
    let idx = p
        .container_interface("eth0")
        .expect("container interface with sandbox");
    assert_eq!(
        p.interfaces[idx].sandbox.as_deref(),
        Some(att.netns.as_str())
    );
    assert_eq!(p.ips[0].interface, Some(idx));
    // (bandwidth appends its ifb device when chained)
    assert!(p.interfaces.len() >= 3, "{r}");
    assert_eq!(p.interfaces[0].name, lab.bridge, "{r}");
    assert!(p.interfaces.iter().all(|i| i.mac.is_some()), "{r}");
    assert_eq!(idx, 2, "{r}");
    assert!(
        p.routes.iter().any(|x| x.dst.to_string() == "0.0.0.0/0"),
        "{r}"
    );
    assert!(r["dns"].is_object(), "{r}");
    p
}

/// Every verb at one version against a subject that serves it.
fn full_lifecycle(subject: &Subject, version: CniVersion) {
    let mut lab = Lab::new();
    // Web servers in c1 (it binds before eth0 exists) and upstream.
    let (c1, up) = (lab.ctrs[0].clone(), lab.upstream.clone());
    lab.web(&c1, 80, "hello from c1\n");
    lab.web(&up, 8000, "hello from upstream\n");
    let chained = version <= CniVersion::V1_0_0;
    let sb = &lab.sb;
    let net = lab.netlist(subject, version, chained);

    // VERSION lists the version.
    let v = net.subject_call("VERSION", None, |_| {});
    assert_eq!(v.rc, 0);
    let listed = v.json()["supportedVersions"].clone();
    assert!(
        listed
            .as_array()
            .unwrap()
            .contains(&version.as_str().into()),
        "{listed}"
    );

    // ADD both containers through the whole chain.
    let (a1, a2) = (lab.attachment(0, 8080), lab.attachment(1, 8081));
    let r1 = net.add(&a1).unwrap_or_else(|o| panic!("ADD c1: {o:?}"));
    let r2 = net.add(&a2).unwrap_or_else(|o| panic!("ADD c2: {o:?}"));
    assert_eq!(r1["cniVersion"], version.as_str());
    assert_eq!(
        r1["ips"][0].get("version").is_some(),
        version == CniVersion::V0_4_0
    );
    let p1 = check_result_shape(&lab, &r1, &a1);
    let ip1 = p1.ips[0].address.addr().to_string();
    let ip2 = check_result_shape(&lab, &r2, &a2).ips[0]
        .address
        .addr()
        .to_string();
    let mut both = vec![ip1.clone(), ip2.clone()];
    both.sort();
    assert_eq!(lab.leases(), both);
    let host_veth = p1.interfaces[1].name.clone();

    if chained {
        // The chained Go plugins acted on the subject's result: tuning's
        // sysctl in the container, bandwidth's qdisc on the host veth it
        // found by interfaces[].sandbox.
        assert_eq!(
            sb.sh(&lab.ctrs[0], "sysctl -n net.ipv4.conf.eth0.log_martians")
                .trim(),
            "1"
        );
        let qd = sb.sh(&sb.host, &format!("tc qdisc show dev {host_veth}"));
        assert!(qd.contains("tbf"), "bandwidth shaped the host veth: {qd}");
    }
    assert!(
        sb.sh(&lab.ctrs[0], "ip link show eth0")
            .contains("mtu 1400")
    );

    // Real traffic: container to container, to the gateway, a published port
    // from upstream, and out through the masquerade (upstream has no route
    // to the pod subnet, so only a masqueraded connection completes).
    sb.sh(&lab.ctrs[0], &format!("ping -c 2 -W 2 {ip2}"));
    sb.sh(&lab.ctrs[1], "ping -c 1 -W 2 192.168.93.1");
    assert_eq!(
        lab.fetch(&lab.upstream, "203.0.113.1:8080/").as_deref(),
        Some("hello from c1\n"),
        "published port from upstream"
    );
    let route = sb.sh_output(&lab.upstream, "ip route get 192.168.93.3");
    assert!(
        !route.status.success(),
        "upstream must not route to the pods: {route:?}"
    );
    let got = sb.sh(&lab.ctrs[1], "curl -sS -m 5 http://203.0.113.2:8000/");
    assert_eq!(
        got, "hello from upstream\n",
        "c2 out through the masquerade"
    );
    // Hairpin: c2 reaches c1 through the node's published port.
    assert_eq!(
        lab.fetch(&lab.ctrs[1], "203.0.113.1:8080/").as_deref(),
        Some("hello from c1\n"),
        "hairpin"
    );

    // netbridge: no iptables or nft rule at all, and its CLI reads the
    // network; the reference needs rules (which shows the check sees them).
    let rules = sb.netfilter_rules(&sb.host);
    if subject.netbridge {
        assert_eq!(rules, Vec::<String>::new(), "netbridge-cni made rules");
        cli_sees_the_network(sb, &net, &[&a1, &a2], &ip1);
    } else {
        assert!(
            rules.iter().any(|r| r.contains("CNI-HOSTPORT-DNAT")),
            "the reference's rules must be visible to the check: {rules:?}"
        );
    }

    // CHECK passes; a duplicate ADD of the same (id, ifname) fails as JSON.
    net.check(&a1, &r1)
        .unwrap_or_else(|o| panic!("CHECK: {o:?}"));
    let dup = net.subject_call("ADD", Some(&a1), |_| {});
    let code = dup.error_code();
    if subject.netbridge {
        assert_eq!(code, 101, "{dup:?}");
        // The first attachment is untouched by the refused one.
        sb.sh(&lab.ctrs[0], &format!("ping -c 1 -W 2 {ip2}"));
    }
    if version.has_gc_and_status() {
        net.subject_call("STATUS", None, |_| {}).ok_empty();
        // GC listing both changes nothing.
        net.gc(&[&a1, &a2]).ok_empty();
        sb.sh(&lab.ctrs[0], &format!("ping -c 1 -W 2 {ip2}"));
        assert_eq!(lab.leases(), both);
    } else if subject.netbridge {
        // GC and STATUS do not exist before 1.1.0: code 1.
        for verb in ["GC", "STATUS"] {
            let o = net.subject_call(verb, None, |c| {
                c["cni.dev/valid-attachments"] = json!([]);
            });
            assert_eq!(o.error_code(), 1, "{verb}: {o:?}");
        }
        assert_eq!(lab.leases(), both, "a refused GC removed something");
    }

    // DEL: everything of c1 goes, twice is fine, c2 is untouched.
    net.del(&a1, Some(&r1))
        .unwrap_or_else(|o| panic!("DEL: {o:?}"));
    assert!(!sb.sh(&lab.ctrs[0], "ip -o link").contains("eth0"));
    assert!(!sb.sh(&sb.host, "ip -o link").contains(host_veth.as_str()));
    assert_eq!(lab.leases(), vec![ip2.clone()]);
    net.del(&a1, Some(&r1))
        .unwrap_or_else(|o| panic!("second DEL: {o:?}"));
    sb.sh(&lab.ctrs[1], "ping -c 1 -W 2 192.168.93.1");
    if subject.netbridge {
        let fwd = sb.nb_ok(&["forward", "list", "--name", &net.topology()]);
        assert!(!fwd.contains("8080") && fwd.contains("8081"), "{fwd}");
    }

    // DEL without prevResult and with the netns gone (runtime crashed).
    netbridge::netns::delete(&lab.ctrs[1]).unwrap();
    net.del(&a2, None)
        .unwrap_or_else(|o| panic!("DEL, netns gone: {o:?}"));
    let mut gone = a2.clone();
    gone.netns = String::new();
    net.del(&gone, None)
        .unwrap_or_else(|o| panic!("DEL, empty CNI_NETNS: {o:?}"));
    assert_eq!(lab.leases(), Vec::<String>::new(), "every lease released");
    if subject.netbridge {
        let st = netbridge::state::State::load(&net.topology())
            .unwrap()
            .unwrap();
        assert!(st.attachments.is_empty(), "{:?}", st.attachments);
        let links = sb.sh(&sb.host, "ip -o link show type veth");
        assert!(!links.contains("nbc"), "a host veth was left: {links}");
    }
}

/// `netbridge stats`, `fdb` and `conntrack` on a CNI network: both ports
/// by name with traffic, their MACs learned, the published port's DNAT
/// session to c1 (`ip1`).
fn cli_sees_the_network(sb: &Sandbox, net: &NetList, atts: &[&Attachment], ip1: &str) {
    let topo = net.topology();
    let stats: Value =
        serde_json::from_str(&sb.nb_ok(&["stats", "--json", "--name", &topo])).unwrap();
    let ports = stats["ports"].as_object().unwrap();
    for a in atts {
        let row = ports
            .values()
            .find(|p| p["namespace"] == a.port().as_str())
            .unwrap_or_else(|| panic!("stats lacks port {}: {stats}", a.port()));
        assert!(row["rx_packets"].as_u64().unwrap() > 0, "{row}");
    }
    let fdb: Value = serde_json::from_str(&sb.nb_ok(&["fdb", "--json", "--name", &topo])).unwrap();
    let learned: BTreeSet<&str> = fdb
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["port"].as_str().unwrap())
        .collect();
    for host in ports.keys() {
        assert!(learned.contains(host.as_str()), "{host} not in {fdb}");
    }
    let ct: Value =
        serde_json::from_str(&sb.nb_ok(&["conntrack", "--json", "--name", &topo])).unwrap();
    let sessions = ct["sessions"].as_array().unwrap();
    assert!(
        sessions.iter().any(|s| s["kind"] == "dnat"
            && s["inside"] == format!("{ip1}:80")
            && s["external"] == "203.0.113.1:8080"),
        "{ct}"
    );
    assert!(sessions.iter().any(|s| s["kind"] == "snat"), "{ct}");
}

/// What every subject must refuse, with spec error codes.
fn protocol_errors(subject: &Subject) {
    let lab = Lab::new();
    let net = lab.netlist(subject, CniVersion::V1_0_0, false);
    let a = lab.attachment(0, 8080);
    // Versions outside the subject's list: code 1.
    for v in CniVersion::SUPPORTED
        .into_iter()
        .filter(|v| !subject.versions.contains(v))
    {
        let o = net.subject_call("ADD", Some(&a), |c| c["cniVersion"] = v.as_str().into());
        assert_eq!(o.error_code(), 1, "{v}: {o:?}");
    }
    let o = net.subject_call("ADD", Some(&a), |c| c["cniVersion"] = "9.9.9".into());
    assert_eq!(o.error_code(), 1);
    // Missing env (no CNI_NETNS for ADD): code 4, naming it.
    let mut no_netns = a.clone();
    no_netns.netns = String::new();
    let o = net.subject_call("ADD", Some(&no_netns), |_| {});
    assert_eq!(o.error_code(), 4);
    assert!(
        o.json()["msg"].as_str().unwrap().contains("CNI_NETNS"),
        "{o:?}"
    );
    // Not JSON: code 6. Nothing was created by any of these.
    let bad = cni_harness::exec_in(
        &lab.sb,
        &lab.sb.host,
        subject,
        subject.plugin_type,
        "ADD",
        Some(&a),
        &Value::String("{".into()),
    );
    assert_eq!(bad.error_code(), 6);
    assert!(!lab.sb.sh(&lab.ctrs[0], "ip -o link").contains("eth0"));
    assert_eq!(lab.leases(), Vec::<String>::new());
    // GC/STATUS: served from 1.1.0 by subjects that list it; the others
    // refuse (the reference 1.1.1 does not know the verbs).
    for verb in ["GC", "STATUS"] {
        let o = net.subject_call(verb, None, |c| {
            c["cniVersion"] = "1.1.0".into();
            c["cni.dev/valid-attachments"] = json!([]);
        });
        if subject.versions.contains(&CniVersion::V1_1_0) {
            o.ok_empty();
        } else {
            // 1.1.1 checks the env by its own table first: no
            // CNI_CONTAINERID (GC and STATUS have none) is code 3; else 1 or 4.
            let code = o.error_code();
            assert!([1, 3, 4].contains(&code), "{verb}: {o:?}");
        }
    }
}

#[test]
fn reference_bridge_lifecycle_cni_0_4_0() {
    require_root!();
    full_lifecycle(&Subject::reference_bridge(), CniVersion::V0_4_0);
}

#[test]
fn reference_bridge_lifecycle_cni_1_0_0() {
    require_root!();
    full_lifecycle(&Subject::reference_bridge(), CniVersion::V1_0_0);
}

#[test]
fn reference_bridge_protocol_errors() {
    require_root!();
    protocol_errors(&Subject::reference_bridge());
}

#[test]
fn netbridge_lifecycle_cni_0_4_0() {
    require_root!();
    full_lifecycle(&Subject::netbridge(), CniVersion::V0_4_0);
}

#[test]
fn netbridge_lifecycle_cni_1_0_0() {
    require_root!();
    full_lifecycle(&Subject::netbridge(), CniVersion::V1_0_0);
}

#[test]
fn netbridge_lifecycle_cni_1_1_0() {
    require_root!();
    full_lifecycle(&Subject::netbridge(), CniVersion::V1_1_0);
}

#[test]
fn netbridge_protocol_errors() {
    require_root!();
    protocol_errors(&Subject::netbridge());
}

/// The node's view of what a network holds: host veths of the plugin,
/// the journal's ports, the records' attachments.
fn footprint(lab: &Lab, net: &NetList) -> (usize, usize, String) {
    let veths = lab
        .sb
        .sh(&lab.sb.host, "ip -o link show type veth")
        .matches(": nbc")
        .count();
    let ports = netbridge::state::State::load(&net.topology())
        .unwrap()
        .map_or(0, |st| st.attachments.len());
    let records = std::fs::read_to_string(
        std::path::Path::new(netbridge::cni::store::CNI_STATE_DIR)
            .join(net.topology())
            .join("attachments.json"),
    )
    .unwrap_or_default();
    (veths, ports, records)
}

/// Configuration netbridge-cni refuses: spec error JSON with the key and
/// value, and nothing made (no interface, no lease, no port, no record).
#[test]
fn netbridge_config_errors_change_nothing() {
    require_root!();
    let subject = Subject::netbridge();
    let lab = Lab::new();
    let net = lab.netlist(&subject, CniVersion::V1_1_0, false);
    let a1 = lab.attachment(0, 8080);
    // A first container holds tcp 8080.
    let r1 = net.add(&a1).unwrap_or_else(|o| panic!("ADD c1: {o:?}"));
    let before = footprint(&lab, &net);
    let leases = lab.leases();
    let a2 = lab.attachment(1, 8090);
    type Tweak = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, u64, Tweak, &str)> = vec![
        (
            "unknown key",
            2,
            Box::new(|c| c["antispoof"] = false.into()),
            "antispoof = false: unknown key",
        ),
        (
            "unimplemented reference key",
            2,
            Box::new(|c| c["vlan"] = 7.into()),
            "vlan = 7",
        ),
        (
            "bad value",
            7,
            Box::new(|c| c["mtu"] = 20.into()),
            "mtu = 20",
        ),
        (
            "hostIP not on the uplink",
            7,
            Box::new(|c| c["runtimeConfig"]["portMappings"][0]["hostIP"] = "203.0.113.9".into()),
            "runtimeConfig.portMappings[0].hostIP = \"203.0.113.9\": netbridge publishes ports on the uplink",
        ),
        (
            "host port of another container",
            7,
            Box::new(|c| c["runtimeConfig"]["portMappings"][0]["hostPort"] = 8080.into()),
            "tcp host port 8080 is already published by container ctr0-",
        ),
        (
            "forwards need the TC datapath",
            7,
            Box::new(|c| c["datapath"] = "xdp".into()),
            "datapath",
        ),
        (
            "uplink that does not exist",
            7,
            Box::new(|c| c["uplink"] = "nope0".into()),
            "uplink = \"nope0\": no such interface in the node",
        ),
        (
            "bad requested MAC",
            7,
            Box::new(|c| c["runtimeConfig"]["mac"] = "03:00:00:00:00:01".into()),
            "runtimeConfig.mac",
        ),
    ];
    for (what, code, tweak, msg) in cases {
        let o = net.subject_call("ADD", Some(&a2), |c| tweak(c));
        assert_eq!(o.error_code(), code, "{what}: {o:?}");
        let e = o.json();
        let text = format!(
            "{} {}",
            e["msg"].as_str().unwrap_or(""),
            e["details"].as_str().unwrap_or("")
        );
        assert!(text.contains(msg), "{what}: {text}");
        assert_eq!(e["cniVersion"], "1.1.0", "{what}: {e}");
        assert!(
            !lab.sb.sh(&lab.ctrs[1], "ip -o link").contains("eth0"),
            "{what}"
        );
        assert_eq!(lab.leases(), leases, "{what}: a lease was left");
        assert_eq!(footprint(&lab, &net), before, "{what}: state changed");
    }
    // The same attachment with a good config works, and c1 kept its port.
    let r2 = net.add(&a2).unwrap_or_else(|o| panic!("ADD c2: {o:?}"));
    net.del(&a2, Some(&r2)).unwrap();
    net.del(&a1, Some(&r1)).unwrap();
}

/// GC removes every port, forward, session and address of the
/// attachments `cni.dev/valid-attachments` leaves out, and nothing of the
/// ones it lists; with host-local (whose 1.1.1 has no GC: netbridge
/// releases the stale leases through its DEL) and with the built-in IPAM.
fn gc_removes_stale_attachments(builtin: bool) {
    let subject = Subject::netbridge();
    let mut lab = Lab::with_containers(3);
    for (i, c) in lab.ctrs.clone().iter().enumerate() {
        lab.web(c, 80, &format!("hello from c{}\n", i + 1));
    }
    let up = lab.upstream.clone();
    lab.web(&up, 8000, "hello from upstream\n");
    let mut net = lab.netlist(&subject, CniVersion::V1_1_0, false);
    if builtin {
        net.plugins[0]["ipam"] = json!({"type": "netbridge-cni",
            "ranges": [[{"subnet": "192.168.93.0/24", "gateway": "192.168.93.1"}]],
            "routes": [{"dst": "0.0.0.0/0"}]});
    }
    let atts: Vec<Attachment> = (0..3).map(|i| lab.attachment(i, 8080 + i as u16)).collect();
    let mut ips = Vec::new();
    for a in &atts {
        let r = net.add(a).unwrap_or_else(|o| panic!("ADD: {o:?}"));
        ips.push(
            CniResult::from_json(&r).unwrap().ips[0]
                .address
                .addr()
                .to_string(),
        );
    }
    // Sessions of every container: its published port, its masquerade.
    for (i, c) in lab.ctrs.iter().enumerate() {
        let port = 8080 + i;
        assert_eq!(
            lab.fetch(&lab.upstream, &format!("203.0.113.1:{port}/")),
            Some(format!("hello from c{}\n", i + 1))
        );
        assert_eq!(
            lab.fetch(c, "203.0.113.2:8000/").as_deref(),
            Some("hello from upstream\n")
        );
    }
    let topo = net.topology();
    let sessions_of = |ip: &str| -> usize {
        let ct: Value =
            serde_json::from_str(&lab.sb.nb_ok(&["conntrack", "--json", "--name", &topo])).unwrap();
        ct["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["inside"].as_str().unwrap().starts_with(&format!("{ip}:")))
            .count()
    };
    for ip in &ips {
        assert!(sessions_of(ip) >= 2, "sessions of {ip} before GC");
    }
    let leased = |lab: &Lab| -> Vec<String> {
        if builtin {
            let text = std::fs::read_to_string(
                std::path::Path::new(netbridge::cni::store::CNI_STATE_DIR)
                    .join(&topo)
                    .join("leases.json"),
            )
            .unwrap();
            let v: Value = serde_json::from_str(&text).unwrap();
            let mut l: Vec<String> = v["leases"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| {
                    l["address"]
                        .as_str()
                        .unwrap()
                        .split('/')
                        .next()
                        .unwrap()
                        .to_string()
                })
                .collect();
            l.sort();
            l
        } else {
            lab.leases()
        }
    };
    let mut all = ips.clone();
    all.sort();
    assert_eq!(leased(&lab), all);

    // GC keeping only the first: the others go entirely.
    net.gc(&[&atts[0]]).ok_empty();
    assert_eq!(leased(&lab), vec![ips[0].clone()], "addresses released");
    let st = netbridge::state::State::load(&topo).unwrap().unwrap();
    let ports: Vec<&str> = st.attachments.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(ports, [atts[0].port().as_str()]);
    assert_eq!(
        lab.sb
            .sh(&lab.sb.host, "ip -o link show type veth")
            .matches(": nbc")
            .count(),
        1
    );
    for c in &lab.ctrs[1..] {
        assert!(!lab.sb.sh(c, "ip -o link").contains("eth0"), "{c}");
    }
    let fwd = lab.sb.nb_ok(&["forward", "list", "--name", &topo]);
    assert!(
        fwd.contains("8080") && !fwd.contains("8081") && !fwd.contains("8082"),
        "{fwd}"
    );
    for ip in &ips[1..] {
        assert_eq!(sessions_of(ip), 0, "sessions of {ip} left after GC");
    }
    // Positive control: the kept container's sessions are still there,
    // and it still works both ways.
    assert!(
        sessions_of(&ips[0]) >= 2,
        "GC took a valid attachment's sessions"
    );
    assert_eq!(
        lab.fetch(&lab.upstream, "203.0.113.1:8080/").as_deref(),
        Some("hello from c1\n")
    );
    assert_eq!(
        lab.fetch(&lab.ctrs[0], "203.0.113.2:8000/").as_deref(),
        Some("hello from upstream\n")
    );
    // GC again changes nothing; an empty list clears the network.
    net.gc(&[&atts[0]]).ok_empty();
    net.gc(&[]).ok_empty();
    assert_eq!(leased(&lab), Vec::<String>::new());
    let st = netbridge::state::State::load(&topo).unwrap().unwrap();
    assert!(st.attachments.is_empty());
}

#[test]
fn netbridge_gc_removes_stale_attachments_host_local() {
    require_root!();
    gc_removes_stale_attachments(false);
}

#[test]
fn netbridge_gc_removes_stale_attachments_builtin_ipam() {
    require_root!();
    gc_removes_stale_attachments(true);
}

/// STATUS: ready before the network exists and while its datapath is all
/// attached; 51 when programs are missing and containers are attached
/// (they may have lost connectivity), 50 when none are; the next ADD
/// repairs the datapath.
#[test]
fn netbridge_status_reports_the_datapath() {
    require_root!();
    let subject = Subject::netbridge();
    let lab = Lab::new();
    let net = lab.netlist(&subject, CniVersion::V1_1_0, false);
    let status = || net.subject_call("STATUS", None, |_| {});
    status().ok_empty();
    let a1 = lab.attachment(0, 8080);
    let r1 = net.add(&a1).unwrap_or_else(|o| panic!("ADD: {o:?}"));
    status().ok_empty();
    // Pins gone (someone emptied netbridge's bpffs): every program detached.
    let pins = std::path::Path::new(netbridge::bpf::BPFFS_ROOT).join(net.topology());
    std::fs::remove_dir_all(&pins).unwrap();
    let o = status();
    assert_eq!(o.error_code(), 51, "{o:?}");
    let details = o.json()["details"].as_str().unwrap().to_string();
    assert!(details.contains("no datapath program on nbc"), "{details}");
    assert!(
        details.contains("nb_uplink_ingress is not attached"),
        "{details}"
    );
    net.del(&a1, Some(&r1)).unwrap();
    assert_eq!(status().error_code(), 50);
    // An ADD brings the datapath back; STATUS is ready again and traffic
    // flows.
    let mut lab = lab;
    let c2 = lab.ctrs[1].clone();
    lab.web(&c2, 80, "hello from c2\n");
    let net = lab.netlist(&subject, CniVersion::V1_1_0, false);
    let a2 = lab.attachment(1, 8081);
    let r2 = net
        .add(&a2)
        .unwrap_or_else(|o| panic!("ADD after the loss: {o:?}"));
    net.subject_call("STATUS", None, |_| {}).ok_empty();
    assert_eq!(
        lab.fetch(&lab.upstream, "203.0.113.1:8081/").as_deref(),
        Some("hello from c2\n")
    );
    // A masquerading network without its uplink is not ready.
    let o = net.subject_call("STATUS", None, |c| c["uplink"] = "nope0".into());
    assert_eq!(o.error_code(), 50, "{o:?}");
    net.del(&a2, Some(&r2)).unwrap();
}

/// Many ADD and DEL at once on one network (separate processes, as
/// runtimes run them): each waits for the network's lock, none is lost or
/// doubled: exactly the attachments added and not deleted remain, each
/// with one port, one veth, one distinct address, reachable.
#[test]
fn netbridge_parallel_add_del_on_one_network() {
    require_root!();
    const N: usize = 12;
    let subject = Subject::netbridge();
    let lab = Lab::with_containers(N);
    let mut net = lab.netlist(&subject, CniVersion::V1_0_0, false);
    net.plugins[0]["ipam"] = json!({"type": "netbridge-cni", "subnet": "192.168.93.0/24"});
    let atts: Vec<Attachment> = (0..N).map(|i| lab.attachment_with(i, json!([]))).collect();
    // Every process is started before any is waited for.
    let run = |calls: Vec<(&str, usize)>| {
        let pending: Vec<_> = calls
            .iter()
            .map(|(verb, i)| net.start(verb, &atts[*i]))
            .collect();
        for ((verb, i), p) in calls.iter().zip(pending) {
            let o = p.wait();
            assert_eq!(o.rc, 0, "{verb} {i}: {o:?}");
        }
    };
    let first: Vec<usize> = (0..N / 2).collect();
    run(first.iter().map(|i| ("ADD", *i)).collect());
    // The second half is added while a quarter is deleted.
    run((N / 2..N)
        .map(|i| ("ADD", i))
        .chain(first[..N / 4].iter().map(|i| ("DEL", *i)))
        .collect());
    let kept: Vec<usize> = (N / 4..N).collect();
    let st = netbridge::state::State::load(&net.topology())
        .unwrap()
        .unwrap();
    let ports: BTreeSet<String> = st.attachments.iter().map(|p| p.name.clone()).collect();
    let want: BTreeSet<String> = kept.iter().map(|i| atts[*i].port()).collect();
    assert_eq!(ports, want, "lost or doubled ports");
    assert_eq!(st.attachments.len(), kept.len());
    let veths = lab.sb.sh(&lab.sb.host, "ip -o link show type veth");
    assert_eq!(veths.matches(": nbc").count(), kept.len(), "{veths}");
    let mut addrs = BTreeSet::new();
    for i in &kept {
        let out = lab.sb.sh(&lab.ctrs[*i], "ip -4 -o addr show dev eth0");
        let addr = out
            .split_whitespace()
            .nth(3)
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_string();
        assert!(
            addrs.insert(addr.clone()),
            "address {addr} handed out twice"
        );
    }
    for i in &first[..N / 4] {
        assert!(!lab.sb.sh(&lab.ctrs[*i], "ip -o link").contains("eth0"));
    }
    // Every kept container reaches the gateway and the next one.
    let list: Vec<&String> = addrs.iter().collect();
    for (k, i) in kept.iter().enumerate() {
        let next = list[(k + 1) % list.len()];
        lab.sb.sh(
            &lab.ctrs[*i],
            &format!("ping -c 1 -W 2 192.168.93.1 && ping -c 1 -W 2 {next}"),
        );
    }
    // And all of them go in parallel too.
    run(kept.iter().map(|i| ("DEL", *i)).collect());
    let st = netbridge::state::State::load(&net.topology())
        .unwrap()
        .unwrap();
    assert!(st.attachments.is_empty(), "{:?}", st.attachments);
    assert_eq!(
        lab.sb
            .sh(&lab.sb.host, "ip -o link show type veth")
            .matches(": nbc")
            .count(),
        0
    );
}

/// A UDP flow to a published port (containernetworking/plugins#1277, #123):
/// after DEL it must not stay tied to the deleted container, and after an
/// ADD of another container with the same mapping it must reach that one.
/// A node socket on the host port stands for "the port is free again"
/// (a hostNetwork pod, #1277). With the reference portmap, the flow's
/// conntrack entry outlives DEL and keeps steering the flow at the deleted
/// container's address: the node socket gets nothing (the positive
/// control: the check can fail).
fn udp_flow_after_del(subject: &Subject) {
    let mut lab = Lab::new();
    let stop = lab.dir.join("stop");
    let count = |p: &std::path::Path| -> u64 {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| v["received"].as_u64())
            .unwrap_or(0)
    };
    // Receivers in both containers and in the node, bound from the start.
    let (c1, c2, node) = (
        lab.ctrs[0].clone(),
        lab.ctrs[1].clone(),
        lab.sb.host.clone(),
    );
    let mut tallies = Vec::new();
    for (ns, name) in [(&c1, "c1"), (&c2, "c2"), (&node, "node")] {
        let out = lab.dir.join(format!("{name}.json"));
        let argv = [
            "python3",
            &script("udp_tally.py"),
            "5353",
            out.to_str().unwrap(),
            stop.to_str().unwrap(),
            "120",
        ];
        lab.sb.spawn_ready(ns, &argv, None, "listening");
        tallies.push(out);
    }
    let (t1, t2, tn) = (&tallies[0], &tallies[1], &tallies[2]);
    // One flow, fixed source port, every 20 ms, from upstream.
    let progress = lab.dir.join("sent");
    let argv = [
        "python3",
        &script("udp_send.py"),
        "203.0.113.1",
        "5353",
        "40000",
        "0.02",
        progress.to_str().unwrap(),
        stop.to_str().unwrap(),
        "10000",
        "120",
    ];
    let up = lab.upstream.clone();
    lab.sb.spawn_ready(&up, &argv, None, "sending");
    let sent = || count_plain(&progress);
    let grows = |p: &std::path::Path, by: u64| {
        let start = count(p);
        Sandbox::wait_for(Duration::from_secs(10), || {
            (count(p) >= start + by).then_some(())
        })
        .is_some()
    };
    let net = lab.netlist(subject, CniVersion::V1_0_0, false);
    let map = json!([{"hostPort": 5353, "containerPort": 5353, "protocol": "udp"}]);
    let (a1, a2) = (
        lab.attachment_with(0, map.clone()),
        lab.attachment_with(1, map),
    );
    let r1 = net.add(&a1).unwrap_or_else(|o| panic!("ADD c1: {o:?}"));
    assert!(grows(t1, 20), "the flow never reached c1");
    net.del(&a1, Some(&r1))
        .unwrap_or_else(|o| panic!("DEL c1: {o:?}"));
    // The flow goes on for 2 s (100 datagrams) with no container mapped.
    let at_del = (count(tn), sent());
    assert!(
        Sandbox::wait_for(Duration::from_secs(10), || {
            (sent() >= at_del.1 + 100).then_some(())
        })
        .is_some(),
        "the sender stalled"
    );
    let node_got = count(tn) - at_del.0;
    // c1's tally settled (it writes every 0.1 s): its count from now on.
    let c1_gone = count(t1);
    println!(
        "{}: after DEL, {} datagrams sent, the node's socket got {node_got}",
        subject.plugin_type,
        sent() - at_del.1
    );
    if subject.netbridge {
        assert!(
            node_got >= 50,
            "the flow stayed tied to the deleted container"
        );
    } else {
        assert_eq!(
            node_got, 0,
            "the reference's stale conntrack entry went away?"
        );
    }
    // Another container takes the mapping: the flow reaches it.
    let r2 = net.add(&a2).unwrap_or_else(|o| panic!("ADD c2: {o:?}"));
    assert!(grows(t2, 20), "the flow never reached the new container");
    assert_eq!(count(t1), c1_gone, "the old container still got datagrams");
    std::fs::write(&stop, "").unwrap();
    net.del(&a2, Some(&r2)).unwrap();
}

/// A number in a file (udp_send.py's progress), 0 if unreadable.
fn count_plain(p: &std::path::Path) -> u64 {
    std::fs::read_to_string(p)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn netbridge_udp_flow_leaves_a_deleted_container() {
    require_root!();
    udp_flow_after_del(&Subject::netbridge());
}

#[test]
fn reference_portmap_udp_flow_sticks_to_a_deleted_container() {
    require_root!();
    udp_flow_after_del(&Subject::reference_bridge());
}

/// A container that died without a DEL (its namespace gone) does not keep
/// its host port: the next ADD publishing that port detaches the dead
/// container's port and takes it over; the dead one's DEL still works
/// later and releases its address.
#[test]
fn netbridge_dead_container_frees_its_host_port() {
    require_root!();
    let subject = Subject::netbridge();
    let mut lab = Lab::new();
    let c2 = lab.ctrs[1].clone();
    lab.web(&c2, 80, "hello from c2\n");
    let net = lab.netlist(&subject, CniVersion::V1_0_0, false);
    let (a1, a2) = (lab.attachment(0, 8080), lab.attachment(1, 8080));
    net.add(&a1).unwrap_or_else(|o| panic!("ADD c1: {o:?}"));
    netbridge::netns::delete(&lab.ctrs[0]).unwrap();
    let r2 = net.add(&a2).unwrap_or_else(|o| panic!("ADD c2: {o:?}"));
    let ip2 = CniResult::from_json(&r2).unwrap().ips[0]
        .address
        .addr()
        .to_string();
    assert_eq!(
        lab.fetch(&lab.upstream, "203.0.113.1:8080/").as_deref(),
        Some("hello from c2\n")
    );
    let st = netbridge::state::State::load(&net.topology())
        .unwrap()
        .unwrap();
    let ports: Vec<&str> = st.attachments.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(ports, [a2.port().as_str()]);
    assert_eq!(
        lab.leases().len(),
        2,
        "the dead one's address waits for its DEL"
    );
    net.del(&a1, None)
        .unwrap_or_else(|o| panic!("DEL c1: {o:?}"));
    assert_eq!(lab.leases(), vec![ip2]);
    net.del(&a2, Some(&r2)).unwrap();
}

/// `"datapath": "xdp"`: the ports run the XDP program, bridging and the
/// masquerade work, STATUS sees the XDP programs (port mappings need the
/// TC datapath: refused, see `netbridge_config_errors_change_nothing`).
#[test]
fn netbridge_xdp_datapath() {
    require_root!();
    let subject = Subject::netbridge();
    let mut lab = Lab::new();
    let up = lab.upstream.clone();
    lab.web(&up, 8000, "hello from upstream\n");
    let mut net = lab.netlist(&subject, CniVersion::V1_1_0, false);
    net.plugins[0]["datapath"] = "xdp".into();
    let (a1, a2) = (
        lab.attachment_with(0, json!([])),
        lab.attachment_with(1, json!([])),
    );
    let r1 = net.add(&a1).unwrap_or_else(|o| panic!("ADD c1: {o:?}"));
    let r2 = net.add(&a2).unwrap_or_else(|o| panic!("ADD c2: {o:?}"));
    let p2 = CniResult::from_json(&r2).unwrap();
    let host = &CniResult::from_json(&r1).unwrap().interfaces[1].name;
    let link = lab.sb.sh(&lab.sb.host, &format!("ip -d link show {host}"));
    assert!(link.contains("xdp"), "{link}");
    lab.sb.sh(
        &lab.ctrs[0],
        &format!("ping -c 2 -W 2 {}", p2.ips[0].address.addr()),
    );
    assert_eq!(
        lab.fetch(&lab.ctrs[0], "203.0.113.2:8000/").as_deref(),
        Some("hello from upstream\n")
    );
    net.subject_call("STATUS", None, |_| {}).ok_empty();
    net.del(&a1, Some(&r1)).unwrap();
    net.del(&a2, Some(&r2)).unwrap();
}
