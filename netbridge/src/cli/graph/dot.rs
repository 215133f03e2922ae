//! Graphviz DOT: the host namespace as a cluster holding the bridge, one
//! box per namespace, edges labelled like the SVG's.
use std::fmt::Write as _;

use super::model::{BRIDGE, EdgeKind, Graph, HOST, NodeKind};

/// A DOT double-quoted string.
fn q(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Lines joined as a DOT label (centered lines).
fn label(lines: &[String]) -> String {
    q(&lines.join("\n")).replace('\n', "\\n")
}

pub fn render(g: &Graph) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "graph {} {{", q(&g.topology));
    let _ = writeln!(
        out,
        "  graph [fontname=\"monospace\", labelloc=t, label={}];",
        label(&[format!("{} ({} datapath)", g.topology, g.datapath)])
    );
    out += "  node [shape=box, style=\"rounded,filled\", fillcolor=\"#f4f6fb\", fontname=\"monospace\", fontsize=10];\n";
    out += "  edge [fontname=\"monospace\", fontsize=9];\n";
    // The host namespace is a cluster with its interfaces as a node and
    // the bridge inside (an edge cannot end at a cluster).
    let host = g.nodes.iter().find(|n| n.id == HOST).expect("host node");
    let (title, lines) = host.lines();
    let _ = writeln!(out, "  subgraph \"cluster_host\" {{");
    let _ = writeln!(
        out,
        "    label={}; style=\"rounded,filled\"; fillcolor=\"#eef3e8\";",
        label(&[title])
    );
    let mut host_lines = vec!["interfaces".to_string()];
    host_lines.extend(lines);
    let _ = writeln!(
        out,
        "    {} [label={}, fillcolor=\"#ffffff\"];",
        q(HOST),
        label(&host_lines)
    );
    if let Some(b) = g.nodes.iter().find(|n| n.id == BRIDGE) {
        let (title, mut lines) = b.lines();
        lines.insert(0, title);
        let _ = writeln!(
            out,
            "    {} [label={}, fillcolor=\"#ffe9b3\"];",
            q(BRIDGE),
            label(&lines)
        );
    }
    out += "  }\n";
    for n in g.nodes.iter().filter(|n| n.id != HOST && n.id != BRIDGE) {
        let (title, mut lines) = n.lines();
        lines.insert(0, title);
        let fill = match n.kind {
            NodeKind::External => ", shape=ellipse, fillcolor=\"#e8e8e8\"",
            NodeKind::Port => ", fillcolor=\"#e3f1fb\"",
            _ => "",
        };
        let _ = writeln!(out, "  {} [label={}{fill}];", q(&n.id), label(&lines));
    }
    for e in &g.edges {
        let style = match e.kind {
            EdgeKind::Port => "color=\"#3b6fb6\"",
            EdgeKind::Link => "color=\"#444444\"",
            EdgeKind::Uplink => "color=\"#2e7d32\", penwidth=2",
            EdgeKind::Forward => "color=\"#8e44ad\", style=dashed, dir=forward",
        };
        let red = if e.has_drops() {
            ", fontcolor=\"#c62828\""
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "  {} -- {} [label={}, {style}{red}];",
            q(&e.from),
            q(&e.to),
            label(&e.lines())
        );
    }
    out += "}\n";
    out
}
