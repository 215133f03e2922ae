//! `netbridge graph`: the picture of a topology from its file (every
//! namespace, the bridge, ports, links, the uplink, forwards, addresses)
//! in JSON, SVG (parsed as XML, boxes that do not overlap, rendered to PNG
//! by librsvg) and DOT (rendered by Graphviz); and of a running topology,
//! with live rates, drops and forward sessions from the maps, checked
//! against traffic the test sends (a busy port against an idle one).
use std::{collections::HashSet, io::Write, process::Stdio};

use netbridge::config::{Port, PortNetns};
use netbridge_tests::{
    Sandbox, example,
    opkit::{FETCH, serve_forward},
    require_root, script,
};
use serde_json::Value;

fn graph(sb: &Sandbox, args: &[&str]) -> String {
    let mut argv = vec!["graph"];
    argv.extend_from_slice(args);
    sb.nb_ok(&argv)
}

/// Runs `argv` with `input` on stdin; returns stdout, panics on failure.
fn pipe(argv: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = std::process::Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{argv:?}: {e} (xtask setup installs it)"));
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{argv:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The SVG parsed by Python's XML parser (tests/scripts/svg_summary.py).
fn svg_summary(svg: &str) -> Value {
    let out = pipe(
        &["/usr/bin/python3", &script("svg_summary.py")],
        svg.as_bytes(),
    );
    serde_json::from_slice(&out).unwrap()
}

fn edge<'a>(g: &'a Value, id: &str) -> &'a Value {
    g["edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == id)
        .unwrap_or_else(|| panic!("no edge {id} in {g:#}"))
}

/// Boxes of the SVG: every node of the JSON graph drawn once, none
/// overlapping another (the bridge sits inside the host), the canvas
/// holding them all; every edge drawn between the nodes the JSON names.
fn check_svg_matches(svg: &Value, g: &Value) {
    let ids: HashSet<&str> = g["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    let nodes = svg["nodes"].as_array().unwrap();
    let drawn: HashSet<&str> = nodes.iter().map(|n| n["id"].as_str().unwrap()).collect();
    assert_eq!(drawn, ids, "boxes drawn vs nodes");
    let boxes: Vec<(&str, [f64; 4])> = nodes
        .iter()
        .map(|n| {
            let b: Vec<f64> = n["box"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            (n["id"].as_str().unwrap(), [b[0], b[1], b[2], b[3]])
        })
        .collect();
    let vb: Vec<f64> = svg["view_box"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    for (i, (a, ra)) in boxes.iter().enumerate() {
        assert!(
            ra[0] >= vb[0] && ra[0] + ra[2] <= vb[0] + vb[2] && ra[1] + ra[3] <= vb[1] + vb[3],
            "{a} outside the canvas {vb:?}: {ra:?}"
        );
        for (b, rb) in &boxes[i + 1..] {
            let overlap = ra[0] < rb[0] + rb[2]
                && rb[0] < ra[0] + ra[2]
                && ra[1] < rb[1] + rb[3]
                && rb[1] < ra[1] + ra[3];
            let nested = [*a, *b].contains(&"host") && [*a, *b].contains(&"bridge");
            assert!(!overlap || nested, "{a} {ra:?} overlaps {b} {rb:?}");
        }
    }
    let edges = g["edges"].as_array().unwrap();
    assert_eq!(svg["edges"].as_array().unwrap().len(), edges.len());
    for e in edges {
        let id = e["id"].as_str().unwrap();
        let drawn = svg["edges"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["id"] == id)
            .unwrap_or_else(|| panic!("edge {id} not drawn"));
        assert_eq!(drawn["from"], e["from"], "{id}");
        assert_eq!(drawn["to"], e["to"], "{id}");
        assert_eq!(drawn["kind"], e["kind"], "{id}");
        assert_eq!(drawn["dashed"], e["kind"] == "forward", "{id}");
        let label = &svg["labels"][id]["lines"];
        assert_eq!(label[0], e["label"], "{id}");
    }
}

/// librsvg renders it: a PNG of the SVG's size.
fn render_png(sb: &mut Sandbox, svg: &str, name: &str) {
    let path = sb.tmp_file(name);
    let png = pipe(&["rsvg-convert", "--format", "png"], svg.as_bytes());
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let w = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert!(w > 300 && h > 150, "tiny picture {w}x{h}");
    std::fs::write(&path, png).unwrap();
}

#[test]
fn graph_of_a_file_shows_every_part() {
    require_root!();
    let mut sb = Sandbox::new();
    let prefix = sb.prefix();
    let file = example("nat-lab.toml");
    let p = |n: &str| format!("{prefix}{n}");
    let json = graph(&sb, &["-f", &file, "--prefix", &prefix, "--format", "json"]);
    let g: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(g["topology"], p("nat-lab"));
    assert_eq!(g["running"], false);
    assert!(g["sample_secs"].is_null() && g.get("drops").is_none());
    // Nodes: the host namespace (uplink address and default route), the
    // bridge inside it, the two lab namespaces and the upstream.
    let node = |id: &str| {
        g["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"] == id)
            .unwrap_or_else(|| panic!("no node {id}: {g:#}"))
            .clone()
    };
    let host = node("host");
    assert_eq!(host["name"], p("nbx-host"));
    assert_eq!(host["interfaces"][0]["name"], "uplink0");
    assert_eq!(host["interfaces"][0]["addresses"][0], "203.0.113.1/24");
    assert_eq!(host["routes"][0], "default via 203.0.113.254");
    let bridge = node("bridge");
    assert_eq!(bridge["parent"], "host");
    assert_eq!(bridge["interfaces"][0]["addresses"][0], "192.168.0.1/16");
    let white = node(&format!("ns:{}", p("white")));
    assert_eq!(white["interfaces"][0]["addresses"][0], "192.168.2.10/24");
    assert_eq!(white["routes"][0], "default via 192.168.0.1 dev eth0");
    let up = node(&format!("ns:{}", p("upstream")));
    assert_eq!(up["interfaces"][0]["addresses"][0], "203.0.113.254/24");
    assert_eq!(g["nodes"].as_array().unwrap().len(), 5);
    // Edges: a port per bridged namespace, the uplink link, two forwards.
    let port = edge(&g, "port:nb-black");
    assert_eq!(
        (port["from"].as_str(), port["to"].as_str()),
        (Some("bridge"), Some(format!("ns:{}", p("black")).as_str()))
    );
    assert_eq!(port["to_ifname"], "eth0");
    assert!(port["live"].is_null());
    let uplink = edge(&g, "link:0");
    assert_eq!(uplink["kind"], "uplink");
    assert_eq!(uplink["from"], "host");
    assert_eq!(uplink["label"], "uplink0 - eth0: uplink, masquerade");
    let fwd = edge(&g, "forward:tcp:5000");
    assert_eq!(fwd["from"], format!("ns:{}", p("upstream")));
    assert_eq!(fwd["to"], format!("ns:{}", p("white")));
    assert_eq!(fwd["label"], format!("tcp 5000 -> {}:5000", p("white")));
    assert_eq!(
        edge(&g, "forward:tcp:8080")["to"],
        format!("ns:{}", p("black"))
    );
    assert_eq!(g["edges"].as_array().unwrap().len(), 5);

    // The SVG shows the same graph and renders.
    let svg = graph(&sb, &["-f", &file, "--prefix", &prefix]);
    let s = svg_summary(&svg);
    check_svg_matches(&s, &g);
    assert!(s["title"].as_str().unwrap().contains("not running"), "{s}");
    let host_box = s["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "host")
        .unwrap();
    assert!(
        host_box["texts"]
            .as_array()
            .unwrap()
            .contains(&Value::from("uplink0 203.0.113.1/24")),
        "{host_box}"
    );
    render_png(&mut sb, &svg, "nat-lab.png");

    // DOT: Graphviz lays it out and draws every node and edge label.
    let dot = graph(&sb, &["-f", &file, "--prefix", &prefix, "--format", "dot"]);
    // (Graphviz writes "-" as &#45;.)
    let drawn = String::from_utf8(pipe(&["dot", "-Tsvg"], dot.as_bytes()))
        .unwrap()
        .replace("&#45;", "-");
    for text in [
        p("upstream"),
        "bridge br0".into(),
        "tcp 8080 -&gt; ".to_string() + &p("black") + ":8000",
        "nb-white - eth0".into(),
    ] {
        assert!(drawn.contains(&text), "Graphviz output lacks {text}");
    }

    // A bridge-less file of two namespaces on a link: no host box, one
    // link between them; -o writes the file.
    let out = sb.tmp_file("two.svg");
    let two = example("two-namespaces.toml");
    graph(
        &sb,
        &["-f", &two, "--prefix", &prefix, "-o", out.to_str().unwrap()],
    );
    let svg = std::fs::read_to_string(&out).unwrap();
    let json = graph(&sb, &["-f", &two, "--prefix", &prefix, "--format", "json"]);
    let g: Value = serde_json::from_str(&json).unwrap();
    check_svg_matches(&svg_summary(&svg), &g);
    assert_eq!(g["nodes"].as_array().unwrap().len(), 2, "{g:#}");
    assert_eq!(edge(&g, "link:0")["label"], "veth-red - veth-green");
}

/// A running nat-lab with traffic the test controls: black pings upstream
/// at ~200/s through SNAT (and sends a few spoofed pings, dropped), three
/// HTTP requests arrive on forward 5000, white stays idle, forward 8080
/// gets none. The graph's live figures must say exactly that.
#[test]
fn graph_of_a_running_topology_shows_rates_drops_and_sessions() {
    require_root!();
    let mut sb = Sandbox::new();
    let prefix = sb.prefix();
    let file = example("nat-lab.toml");
    sb.nb_ok(&["up", "-f", &file, "--prefix", &prefix]);
    let topo = sb.name("nat-lab");
    for n in ["nbx-host", "black", "white", "upstream"] {
        sb.adopt_ns(&sb.name(n));
    }
    serve_forward(&mut sb, &prefix);
    let (black, upstream) = (sb.name("black"), sb.name("upstream"));
    // A port attached at run time (as the CNI plugin does) in a namespace
    // netbridge creates: its own kind of node.
    let cni = sb.name("cni1");
    let port = Port {
        name: cni.clone(),
        netns: PortNetns::Named(cni.clone()),
        ifname: "eth0".into(),
        host_ifname: "nb-cni1".into(),
        addresses: vec!["192.168.7.10/24".parse().unwrap()],
        routes: vec![],
        mtu: None,
        sysctls: Default::default(),
        anti_spoof: true,
        mac: None,
        ipv6_router: false,
    };
    netbridge::topology::add_port(&topo, &port).unwrap();
    sb.sh(&upstream, &format!("{FETCH} && {FETCH}"));
    // Spoofed source: an address black does not own (anti-spoofing). The
    // gateway's MAC is learned first with black's own address, so the
    // spoofed pings leave as IPv4, not as ARP from the spoofed address.
    sb.sh(&black, "ping -c 1 -W 2 192.168.0.1");
    sb.sh(&black, "ip addr add 192.168.1.99/24 dev eth0");
    let spoofed = sb.sh_output(
        &black,
        "ping -c 3 -i 0.2 -W 1 -I 192.168.1.99 203.0.113.254",
    );
    assert!(!spoofed.status.success(), "spoofed pings were answered");
    let ping = sb.spawn(
        &black,
        &["ping", "-c", "2000", "-i", "0.005", "-q", "203.0.113.254"],
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    let json = graph(
        &sb,
        &["--name", &topo, "--format", "json", "--interval", "1s"],
    );
    assert!(sb.alive(ping), "the ping ended before the sample did");
    let g: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(g["running"], true);
    assert!(g["sample_secs"].as_f64().unwrap() >= 1.0, "{g:#}");
    let live = |id: &str| edge(&g, id)["live"].clone();
    let (b, w) = (live("port:nb-black"), live("port:nb-white"));
    let rate = |v: &Value, k: &str| v["rates"][k].as_f64().unwrap();
    // ~200 echo requests a second from black; white sends none (a
    // neighbour probe at most).
    assert!(rate(&b, "rx_pps") >= 100.0, "black: {b}");
    assert!(rate(&b, "rx_bps") >= 100.0 * 98.0 * 8.0, "black: {b}");
    assert!(rate(&w, "rx_pps") < 10.0, "white idle: {w}");
    assert!(b["dropped"].as_u64().unwrap() >= 3, "spoofed pings: {b}");
    assert_eq!(w["dropped"], 0, "{w}");
    assert!(g["drops"]["spoofed_ipv4"].as_u64().unwrap() >= 3, "{g:#}");
    let up = live("link:0");
    assert!(
        rate(&up, "out_pps") >= 100.0 && rate(&up, "in_pps") >= 100.0,
        "{up}"
    );
    assert!(up["live_sessions"].as_u64().unwrap() >= 1, "{up}");
    let (f5000, f8080) = (live("forward:tcp:5000"), live("forward:tcp:8080"));
    let attached = edge(&g, "port:nb-cni1");
    assert_eq!(attached["to"], format!("port:{cni}"));
    let node = g["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == format!("port:{cni}"))
        .unwrap_or_else(|| panic!("no port node: {g:#}"));
    assert_eq!(node["kind"], "port");
    assert_eq!(node["netns"], cni.as_str());
    assert_eq!(node["interfaces"][0]["addresses"][0], "192.168.7.10/24");
    assert!(f5000["sessions"].as_u64().unwrap() >= 3, "{f5000}");
    assert_eq!(f8080["sessions"], 0, "{f8080}");

    // The SVG carries the same figures: rates on the port labels, black's
    // drops in red, white's not.
    let svg = graph(&sb, &["--name", &topo, "--interval", "500ms"]);
    let s = svg_summary(&svg);
    check_svg_matches(&s, &g);
    let label = |id: &str| s["labels"][id].clone();
    let bl = label("port:nb-black");
    assert!(bl["lines"][1].as_str().unwrap().contains("pps"), "{bl}");
    assert!(bl["red"][0].as_str().unwrap().starts_with("drops "), "{bl}");
    assert_eq!(label("port:nb-white")["red"], Value::Array(vec![]));
    assert!(
        label("forward:tcp:5000")["lines"][1]
            .as_str()
            .unwrap()
            .contains("sessions"),
        "{s}"
    );
    assert!(
        s["title"].as_str().unwrap().contains("spoofed_ipv4="),
        "{s}"
    );
    render_png(&mut sb, &svg, "nat-lab-live.png");
    sb.interrupt(ping);
    sb.nb_ok(&["down", "--name", &topo]);
}
