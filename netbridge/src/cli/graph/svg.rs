//! The SVG picture, drawn from [`layout`]: boxes with their text, edges
//! as lines (ports blue, links grey, the uplink green, forwards dashed
//! purple arrows), each with its label; figures with drops in red.
use std::{
    collections::{HashMap, HashSet},
    fmt::Write as _,
};

use super::{
    layout::{self, LINE_H, Layout, MARGIN, PAD, Rect, TITLE_H, text_w},
    model::{BRIDGE, Edge, EdgeKind, Graph, NodeKind},
};

const FONT: &str = "DejaVu Sans Mono, Menlo, Consolas, monospace";
/// Label font is 11 px: its advance relative to the 12 px boxes' font.
const LABEL_SCALE: f64 = 11.0 / 12.0;

/// XML text/attribute escaping.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn label_size(lines: &[String]) -> (f64, f64) {
    let w = lines
        .iter()
        .map(|l| text_w(l) * LABEL_SCALE)
        .fold(0.0, f64::max);
    (w + 8.0, lines.len() as f64 * LINE_H + 4.0)
}

pub fn render(g: &Graph) -> String {
    let lay = place(g);
    let mut s = Svg::default();
    s.title(g, &lay);
    // Lines go behind the boxes (a forward passes through the host, as
    // DNAT does; a port's line to a second row passes behind the first),
    // labels on top of everything.
    for e in &g.edges {
        match e.kind {
            EdgeKind::Port => s.port_line(e, &lay),
            EdgeKind::Link | EdgeKind::Uplink => s.link_line(e, &lay),
            EdgeKind::Forward => s.forward_line(e, &lay),
        }
    }
    for n in &g.nodes {
        s.node(n, &lay.boxes[&n.id]);
    }
    let forwards: Vec<&Edge> = g
        .edges
        .iter()
        .filter(|e| e.kind == EdgeKind::Forward)
        .collect();
    let mut fwd_index: HashMap<&str, usize> = HashMap::new();
    for e in &g.edges {
        match e.kind {
            EdgeKind::Port => s.port_label(e, &lay),
            EdgeKind::Link | EdgeKind::Uplink => s.link_label(e, &lay),
            EdgeKind::Forward => {
                let k = fwd_index.entry(&e.from).or_default();
                s.forward_label(e, &lay, *k, &forwards);
                *k += 1;
            }
        }
    }
    s.finish(&lay)
}

/// The layout, with room above each row for the labels that go there.
fn place(g: &Graph) -> Layout {
    let port_label_h = g
        .edges
        .iter()
        .filter(|e| e.kind == EdgeKind::Port)
        .map(|e| label_size(&e.lines()))
        .fold(0.0, |m: f64, (_, h)| m.max(h));
    let fwd_h: f64 = g
        .edges
        .iter()
        .filter(|e| e.kind == EdgeKind::Forward)
        .map(|e| label_size(&e.lines()).1 + 6.0)
        .sum();
    let link_h = g
        .edges
        .iter()
        .filter(|e| matches!(e.kind, EdgeKind::Link | EdgeKind::Uplink))
        .map(|e| label_size(&e.lines()).1)
        .fold(0.0, f64::max);
    // A namespace is at least as wide as the label of its port.
    let min_w: HashMap<String, f64> = g
        .edges
        .iter()
        .filter(|e| e.kind == EdgeKind::Port)
        .map(|e| (e.to.clone(), label_size(&e.lines()).0))
        .collect();
    let level = layout::levels(g);
    // Rows with a link between two of their boxes (drawn as an arc above).
    let arcs: HashSet<i32> = g
        .edges
        .iter()
        .filter(|e| level.get(&e.from) == level.get(&e.to))
        .filter_map(|e| level.get(&e.from).copied())
        .collect();
    layout::layout(g, level, &min_w, |level, first| match level {
        _ if arcs.contains(&level) => link_h + 60.0,
        _ if first => 10.0,
        1 => port_label_h + 50.0,
        0 => (link_h + 30.0).max(fwd_h + 30.0).max(60.0),
        _ => link_h + 60.0,
    })
}

#[derive(Default)]
struct Svg {
    body: String,
    /// Horizontal extent of the labels drawn (they may reach past boxes).
    min_x: f64,
    max_x: f64,
}

impl Svg {
    fn title(&mut self, g: &Graph, _lay: &Layout) {
        let mut t = format!("{} ({} datapath)", g.topology, g.datapath);
        match (g.running, g.sample_secs) {
            (true, Some(secs)) => t += &format!(", live: rates over {secs:.1} s"),
            (true, None) => t += ", running",
            (false, _) => t += ", not running",
        }
        if let Some(d) = &g.drops {
            let nz: Vec<String> = d
                .iter()
                .filter(|(_, v)| **v > 0)
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            t += &format!(
                "; drops: {}",
                if nz.is_empty() {
                    "none".into()
                } else {
                    nz.join(" ")
                }
            );
        }
        self.max_x = MARGIN + text_w(&t) * 14.0 / 12.0;
        let _ = writeln!(
            self.body,
            r#"<text class="title" x="{MARGIN}" y="{}" font-size="14" font-weight="bold">{}</text>"#,
            MARGIN + 4.0,
            esc(&t)
        );
    }

    fn node(&mut self, n: &super::model::Node, r: &Rect) {
        let (fill, stroke) = match n.kind {
            NodeKind::Host => ("#eef3e8", "#6b8e4e"),
            NodeKind::Bridge => ("#ffe9b3", "#b7872f"),
            NodeKind::Namespace => ("#f4f6fb", "#5b6b8c"),
            NodeKind::Port => ("#e3f1fb", "#3b6fb6"),
            NodeKind::External => ("#e8e8e8", "#777777"),
        };
        let rx = if n.kind == NodeKind::External { 24 } else { 8 };
        let _ = writeln!(
            self.body,
            r#"<g class="node {kind}" id="{id}"><rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" rx="{rx}" fill="{fill}" stroke="{stroke}" stroke-width="1.5"/>"#,
            r.x,
            r.y,
            r.w,
            r.h,
            kind = format!("{:?}", n.kind).to_lowercase(),
            id = esc(&n.id),
        );
        let (title, lines) = n.lines();
        let _ = writeln!(
            self.body,
            r#"<text x="{:.1}" y="{:.1}" font-weight="bold">{}</text>"#,
            r.x + PAD,
            r.y + 16.0,
            esc(&title)
        );
        for (i, l) in lines.iter().enumerate() {
            let _ = writeln!(
                self.body,
                r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
                r.x + PAD,
                r.y + TITLE_H + 11.0 + i as f64 * LINE_H,
                esc(l)
            );
        }
        self.body += "</g>\n";
    }

    /// A multi-line label; `anchor` start/middle/end at (x, top).
    fn label(&mut self, e: &Edge, x: f64, top: f64, anchor: &str) {
        let lines = e.lines();
        let (w, h) = label_size(&lines);
        let left = match anchor {
            "start" => x,
            "end" => x - w,
            _ => x - w / 2.0,
        };
        self.min_x = self.min_x.min(left);
        self.max_x = self.max_x.max(left + w);
        let tx = match anchor {
            "start" => x + 4.0,
            "end" => x - 4.0,
            _ => x,
        };
        let _ = writeln!(
            self.body,
            r##"<g class="label" data-edge="{}"><rect x="{left:.1}" y="{top:.1}" width="{w:.1}" height="{h:.1}" fill="#ffffff" fill-opacity="0.85"/>"##,
            esc(&e.id)
        );
        for (i, l) in lines.iter().enumerate() {
            let red = i > 0 && e.has_drops() && l.contains("drops");
            let _ = writeln!(
                self.body,
                r#"<text x="{tx:.1}" y="{:.1}" font-size="11" text-anchor="{anchor}"{}>{}</text>"#,
                top + 13.0 + i as f64 * LINE_H,
                if red { r##" fill="#c62828""## } else { "" },
                esc(l)
            );
        }
        self.body += "</g>\n";
    }

    fn line(&mut self, e: &Edge, (x1, y1): (f64, f64), (x2, y2): (f64, f64), style: &str) {
        let _ = writeln!(
            self.body,
            r#"<line class="edge {kind}" data-edge="{}" data-from="{}" data-to="{}" x1="{x1:.1}" y1="{y1:.1}" x2="{x2:.1}" y2="{y2:.1}" {style}/>"#,
            esc(&e.id),
            esc(&e.from),
            esc(&e.to),
            kind = format!("{:?}", e.kind).to_lowercase(),
        );
    }

    /// Bridge to namespace.
    fn port_line(&mut self, e: &Edge, lay: &Layout) {
        let (b, n) = (lay.boxes[BRIDGE], lay.boxes[&e.to]);
        self.line(
            e,
            (b.cx(), b.bottom()),
            (n.cx(), n.y),
            r##"stroke="#3b6fb6" stroke-width="2""##,
        );
    }

    /// A port's label sits just above its namespace.
    fn port_label(&mut self, e: &Edge, lay: &Layout) {
        let n = lay.boxes[&e.to];
        let h = label_size(&e.lines()).1;
        self.label(e, n.cx(), n.y - h - 6.0, "middle");
    }

    /// Whether a link joins two boxes of one row (drawn as an arc over it).
    fn same_row(e: &Edge, lay: &Layout) -> bool {
        let (a, b) = (lay.boxes[&e.from], lay.boxes[&e.to]);
        lay.level[&e.from] == lay.level[&e.to] && (a.y - b.y).abs() < 1.0
    }

    /// The link's two ends: (upper box's bottom, lower box's top).
    fn link_ends(e: &Edge, lay: &Layout) -> ((f64, f64), (f64, f64)) {
        let (a, b) = (lay.boxes[&e.from], lay.boxes[&e.to]);
        let (up, down) = if a.y < b.y { (a, b) } else { (b, a) };
        ((up.cx(), up.bottom()), (down.cx(), down.y))
    }

    /// A link between two boxes: vertical between rows, an arc over the
    /// row between boxes of one row. The uplink is green and thicker.
    fn link_line(&mut self, e: &Edge, lay: &Layout) {
        let style = if e.kind == EdgeKind::Uplink {
            r##"stroke="#2e7d32" stroke-width="3""##
        } else {
            r##"stroke="#555555" stroke-width="2""##
        };
        if !Self::same_row(e, lay) {
            let (p, q) = Self::link_ends(e, lay);
            self.line(e, p, q, style);
            return;
        }
        let (a, b) = (lay.boxes[&e.from], lay.boxes[&e.to]);
        let top = a.y - 40.0;
        let _ = writeln!(
            self.body,
            r#"<path class="edge {kind}" data-edge="{}" data-from="{}" data-to="{}" d="M {:.1} {:.1} C {:.1} {top:.1} {:.1} {top:.1} {:.1} {:.1}" fill="none" {style}/>"#,
            esc(&e.id),
            esc(&e.from),
            esc(&e.to),
            a.cx(),
            a.y,
            a.cx(),
            b.cx(),
            b.cx(),
            b.y,
            kind = format!("{:?}", e.kind).to_lowercase(),
        );
    }

    /// A link's label: over the top of its arc, or left of its middle.
    fn link_label(&mut self, e: &Edge, lay: &Layout) {
        let h = label_size(&e.lines()).1;
        if Self::same_row(e, lay) {
            let (a, b) = (lay.boxes[&e.from], lay.boxes[&e.to]);
            self.label(e, (a.cx() + b.cx()) / 2.0, a.y - 10.0 - h, "middle");
            return;
        }
        let (p, q) = Self::link_ends(e, lay);
        let mid = ((p.0 + q.0) / 2.0, (p.1 + q.1) / 2.0);
        self.label(e, mid.0 - 8.0, mid.1 - h / 2.0, "end");
    }

    /// Where a forward's dashed arrow starts and ends.
    fn forward_ends(e: &Edge, lay: &Layout) -> ((f64, f64), (f64, f64)) {
        let (a, b) = (lay.boxes[&e.from], lay.boxes[&e.to]);
        ((a.x + a.w - 15.0, a.bottom()), (b.cx() + 20.0, b.y))
    }

    fn forward_line(&mut self, e: &Edge, lay: &Layout) {
        let (p, q) = Self::forward_ends(e, lay);
        self.line(
            e,
            p,
            q,
            r##"stroke="#8e44ad" stroke-width="1.5" stroke-dasharray="6 4" marker-end="url(#arrow)""##,
        );
    }

    /// Forward labels stack under their origin, right of every forward
    /// line at their height.
    fn forward_label(&mut self, e: &Edge, lay: &Layout, k: usize, all: &[&Edge]) {
        let (p, _) = Self::forward_ends(e, lay);
        let h = label_size(&e.lines()).1 + 6.0;
        let y = p.1 + 6.0 + k as f64 * h;
        let x = all
            .iter()
            .filter(|f| f.from == e.from)
            .map(|f| {
                let (p, q) = Self::forward_ends(f, lay);
                let t = ((y + h - p.1) / (q.1 - p.1)).clamp(0.0, 1.0);
                (p.0 + (q.0 - p.0) * t).max(p.0)
            })
            .fold(p.0, f64::max);
        self.label(e, x + 6.0, y, "start");
    }

    fn finish(self, lay: &Layout) -> String {
        // Labels may reach past the boxes: widen the canvas for them.
        let x0 = (self.min_x - MARGIN).min(0.0);
        let width = lay.width.max(self.max_x + MARGIN) - x0;
        let mut out = String::new();
        let _ = writeln!(
            out,
            r##"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{h:.0}" viewBox="{x0:.0} 0 {width:.0} {h:.0}" font-family="{FONT}" font-size="12">
<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#8e44ad"/></marker></defs>
<rect x="{x0:.0}" width="{width:.0}" height="{h:.0}" fill="#ffffff"/>"##,
            h = lay.height,
        );
        out += &self.body;
        out += "</svg>\n";
        out
    }
}
