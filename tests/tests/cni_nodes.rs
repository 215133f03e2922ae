//! Two simulated Kubernetes nodes on netbridge-cni, wired the way kindnet
//! wires a cluster: two node namespaces joined by a link, a pod CIDR each
//! and a route to the other node's pod CIDR through that link; each node
//! also has an uplink to an upstream network that knows nothing of the pod
//! CIDRs. Each node keeps its own netbridge state (its own mount namespace,
//! like a machine's own /run), under the same network name. Pods on
//! different nodes reach each other without NAT (the receiver sees the
//! pod's address), pods reach the upstream masqueraded.
mod cni_harness;

use cni_harness::{Attachment, Node, Subject, run_plugin, with_cni_env};
use netbridge::cni::CniResult;
use netbridge_tests::{Sandbox, require_root, script};
use serde_json::{Value, json};

/// The node's network config: the cluster network, the built-in IPAM on
/// the node's pod CIDR (its state in the node), masquerade out of the
/// interface of the node's default route.
fn conf(net: &str, pod_cidr: &str, gateway: &str) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": net,
        "type": "netbridge-cni",
        "bridge": "cni0",
        "isGateway": true,
        "isDefaultGateway": true,
        "ipMasq": true,
        "ipam": {"type": "netbridge-cni", "ranges": [[{"subnet": pod_cidr, "gateway": gateway}]]}
    })
}

fn cni(node: &Node, subject: &Subject, verb: &str, att: &Attachment, stdin: &Value) -> Value {
    let bin = subject.bin();
    let c = with_cni_env(node.cmd(&[bin.to_str().unwrap()]), subject, verb, Some(att));
    let o = run_plugin(c, subject.plugin_type, verb, Some(att), stdin);
    assert_eq!(o.rc, 0, "{verb} on node {}: {o:?}", node.net);
    if o.stdout.trim().is_empty() {
        Value::Null
    } else {
        o.json()
    }
}

/// "ADDR:PORT" the server at `dst` saw for a connection from `ns`.
fn whoami(sb: &Sandbox, ns: &str, dst: &str) -> String {
    let out = sb.sh(
        ns,
        &format!(
            "python3 {} client 0.0.0.0 0 {dst} 7000",
            script("tcp_whoami.py")
        ),
    );
    out.trim().rsplit_once(':').unwrap().0.to_string()
}

#[test]
fn two_nodes_route_pods_without_nat_and_masquerade_upstream() {
    require_root!();
    let subject = Subject::netbridge();
    let mut sb = Sandbox::new();
    let (na, nb, up) = (sb.add_ns("nodea"), sb.add_ns("nodeb"), sb.add_ns("up"));
    // Pods first: a node's mount namespace only sees the namespaces that
    // exist when it is made.
    let (pa, pb) = (sb.add_ns("pa"), sb.add_ns("pb"));
    sb.veth(
        &na,
        "eth1",
        Some("192.168.200.1/24"),
        &nb,
        "eth1",
        Some("192.168.200.2/24"),
    );
    sb.veth(
        &na,
        "eth0",
        Some("203.0.113.1/24"),
        &up,
        "a0",
        Some("203.0.113.2/24"),
    );
    sb.veth(
        &nb,
        "eth0",
        Some("198.51.100.1/24"),
        &up,
        "b0",
        Some("198.51.100.2/24"),
    );
    sb.sh(
        &na,
        "ip route add default via 203.0.113.2 && ip route add 192.168.11.0/24 via 192.168.200.2",
    );
    sb.sh(
        &nb,
        "ip route add default via 198.51.100.2 && ip route add 192.168.10.0/24 via 192.168.200.1",
    );
    let own_run = "mkdir -p /run/netbridge; mount -t tmpfs nbtest /run/netbridge";
    let node_a = Node::new(&mut sb, &na, own_run);
    let node_b = Node::new(&mut sb, &nb, own_run);
    for ns in [&pa, &pb, &up] {
        sb.spawn(
            ns,
            &["python3", &script("tcp_whoami.py"), "server", "7000", "120"],
        );
    }
    let net = sb.name("kind");
    let att = |ns: &str, id: &str| Attachment {
        container_id: format!("{id}-{}", sb.id),
        netns: format!("/run/netns/{ns}"),
        ifname: "eth0".into(),
        args: format!("IgnoreUnknown=1;K8S_POD_NAME={id};K8S_POD_NAMESPACE=default"),
        capability_args: Value::Null,
    };
    let (att_a, att_b) = (att(&pa, "pa"), att(&pb, "pb"));
    let (conf_a, conf_b) = (
        conf(&net, "192.168.10.0/24", "192.168.10.1"),
        conf(&net, "192.168.11.0/24", "192.168.11.1"),
    );
    let ra = cni(&node_a, &subject, "ADD", &att_a, &conf_a);
    let rb = cni(&node_b, &subject, "ADD", &att_b, &conf_b);
    let ip = |r: &Value| {
        CniResult::from_json(r).unwrap().ips[0]
            .address
            .addr()
            .to_string()
    };
    let (ip_a, ip_b) = (ip(&ra), ip(&rb));
    assert!(ip_a.starts_with("192.168.10.") && ip_b.starts_with("192.168.11."));
    // Each node has its own state: same network name, own topology.
    for (node, other_ip) in [(&node_a, &ip_b), (&node_b, &ip_a)] {
        let st = node.sh(&format!("cat /run/netbridge/state/{net}.json"));
        assert!(!st.contains(other_ip.as_str()), "{st}");
    }
    assert!(
        !std::path::Path::new(netbridge::state::STATE_DIR)
            .join(format!("{net}.json"))
            .exists(),
        "a node's state leaked into the machine's /run"
    );

    // Pod to pod across nodes: routed, not translated.
    sb.sh(&pa, &format!("ping -c 2 -W 2 {ip_b}"));
    assert_eq!(
        whoami(&sb, &pa, &ip_b),
        ip_a,
        "pod b saw a translated address"
    );
    assert_eq!(
        whoami(&sb, &pb, &ip_a),
        ip_b,
        "pod a saw a translated address"
    );
    // Pods to upstream: masqueraded to their node's uplink address (the
    // upstream has no route to either pod CIDR).
    for cidr in ["192.168.10.5", "192.168.11.5"] {
        let r = sb.sh_output(&up, &format!("ip route get {cidr}"));
        assert!(!r.status.success(), "upstream routes to {cidr}");
    }
    assert_eq!(whoami(&sb, &pa, "203.0.113.2"), "203.0.113.1");
    assert_eq!(whoami(&sb, &pb, "198.51.100.2"), "198.51.100.1");
    // Node a's NAT saw the upstream flow and nothing of the pod-to-pod ones.
    let ct = node_a.sh(&format!(
        "{} conntrack --json --name {net}",
        netbridge_tests::netbridge_bin().display()
    ));
    let ct: Value = serde_json::from_str(&ct).unwrap();
    let sessions = ct["sessions"].as_array().unwrap();
    assert!(
        sessions.iter().any(|s| s["remote"]
            .as_str()
            .unwrap()
            .starts_with("203.0.113.2:7000")),
        "{ct}"
    );
    assert!(
        !sessions.iter().any(|s| s.to_string().contains(&ip_b)),
        "pod-to-pod traffic went through the NAT: {ct}"
    );
    // No iptables or nft rule on either node.
    for n in [&na, &nb] {
        assert_eq!(sb.netfilter_rules(n), Vec::<String>::new(), "{n}");
    }

    cni(&node_a, &subject, "DEL", &att_a, &conf_a);
    cni(&node_b, &subject, "DEL", &att_b, &conf_b);
    assert!(!sb.sh(&pa, "ip -o link").contains("eth0"));
    drop(node_b);
    drop(node_a);
}
