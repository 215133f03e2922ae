//! Where the SVG puts each box: the host namespace (with the bridge
//! inside) in the middle, what its links lead to above it (the upstream,
//! farther hops higher), the bridge's namespaces and ports below, then
//! what their links lead to, then namespaces joined only to each other.
//! Rows wrap after [`MAX_PER_ROW`] boxes. Sizes follow the text (a
//! monospace font of known advance).
use std::collections::{BTreeMap, HashMap, VecDeque};

use super::model::{BRIDGE, EdgeKind, Graph, HOST};

/// Advance of one character of the 12 px monospace font, line height.
pub const CHAR_W: f64 = 7.3;
pub const LINE_H: f64 = 15.0;
pub const TITLE_H: f64 = 22.0;
pub const PAD: f64 = 10.0;
const MIN_W: f64 = 150.0;
const GAP_X: f64 = 40.0;
const MAX_PER_ROW: usize = 8;
pub const MARGIN: f64 = 20.0;

#[derive(Debug, Clone, Copy, Default)]
pub struct Rect {
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
}

impl Rect {
    pub fn cx(&self) -> f64 {
        self.x + self.w / 2.0
    }
    pub fn bottom(&self) -> f64 {
        self.y + self.h
    }
}

pub struct Layout {
    pub boxes: HashMap<String, Rect>,
    /// Vertical level of each node (host 0, above < 0, below > 0).
    pub level: HashMap<String, i32>,
    pub width: f64,
    pub height: f64,
}

pub fn text_w(s: &str) -> f64 {
    s.chars().count() as f64 * CHAR_W
}

/// Box size of a node: its text, and for the host the bridge inside.
fn size(g: &Graph, id: &str, min_w: f64) -> (f64, f64) {
    let n = g.nodes.iter().find(|n| n.id == id).expect("node");
    let (title, lines) = n.lines();
    let text = lines
        .iter()
        .map(|l| text_w(l))
        .fold(text_w(&title), f64::max);
    let mut w = (text + 2.0 * PAD).max(MIN_W).max(min_w);
    let mut h = TITLE_H + lines.len() as f64 * LINE_H + PAD;
    if id == HOST && g.nodes.iter().any(|n| n.id == BRIDGE) {
        let (bw, bh) = size(g, BRIDGE, 0.0);
        w = w.max(bw + 4.0 * PAD);
        h += bh + PAD;
    }
    (w, h)
}

/// Levels by breadth-first search over links from the host (going up)
/// and from the bridge's namespaces (going down); the rest below all,
/// each group of namespaces joined only to each other on one row.
pub fn levels(g: &Graph) -> HashMap<String, i32> {
    let mut adj: HashMap<&str, Vec<&str>> = HashMap::new();
    for e in g
        .edges
        .iter()
        .filter(|e| matches!(e.kind, EdgeKind::Link | EdgeKind::Uplink))
    {
        adj.entry(&e.from).or_default().push(&e.to);
        adj.entry(&e.to).or_default().push(&e.from);
    }
    let mut level: HashMap<String, i32> = HashMap::new();
    let mut queue = VecDeque::new();
    level.insert(HOST.into(), 0);
    queue.push_back(HOST.to_string());
    for e in g.edges.iter().filter(|e| e.kind == EdgeKind::Port) {
        if level.insert(e.to.clone(), 1).is_none() {
            queue.push_back(e.to.clone());
        }
    }
    bfs(&adj, &mut level, &mut queue, |l| {
        if l <= 0 { l - 1 } else { l + 1 }
    });
    let islands = level.values().copied().max().unwrap_or(0) + 1;
    for n in g.nodes.iter().filter(|n| n.id != BRIDGE) {
        if !level.contains_key(&n.id) {
            level.insert(n.id.clone(), islands);
            queue.push_back(n.id.clone());
            bfs(&adj, &mut level, &mut queue, |l| l);
        }
    }
    level
}

/// Gives every node reached from `queue` the level `next(its parent's)`.
fn bfs(
    adj: &HashMap<&str, Vec<&str>>,
    level: &mut HashMap<String, i32>,
    queue: &mut VecDeque<String>,
    next: impl Fn(i32) -> i32,
) {
    while let Some(id) = queue.pop_front() {
        let l = level[&id];
        for n in adj.get(id.as_str()).into_iter().flatten() {
            if !level.contains_key(*n) {
                level.insert(n.to_string(), next(l));
                queue.push_back(n.to_string());
            }
        }
    }
}

/// Boxes of every node at `level`; `gap_above(level, first)` is the room
/// left above a row of that level (`first`: the top row) for edge labels.
pub fn layout(
    g: &Graph,
    level: HashMap<String, i32>,
    min_w: &HashMap<String, f64>,
    gap_above: impl Fn(i32, bool) -> f64,
) -> Layout {
    let mut rows: BTreeMap<i32, Vec<&str>> = BTreeMap::new();
    for n in g.nodes.iter().filter(|n| n.id != BRIDGE) {
        rows.entry(level[&n.id]).or_default().push(&n.id);
    }
    let mut boxes = HashMap::new();
    let mut y = MARGIN + TITLE_H;
    let mut placed_rows: Vec<(Vec<String>, f64)> = Vec::new();
    for (r, (lvl, ids)) in rows.iter().enumerate() {
        for (k, chunk) in ids.chunks(MAX_PER_ROW).enumerate() {
            // A wrapped row needs the same room for labels as the first.
            y += gap_above(*lvl, r == 0 && k == 0);
            let mut x = 0.0;
            let mut row_h: f64 = 0.0;
            for id in chunk {
                let (w, h) = size(g, id, min_w.get(*id).copied().unwrap_or(0.0));
                boxes.insert(id.to_string(), Rect { x, y, w, h });
                x += w + GAP_X;
                row_h = row_h.max(h);
            }
            placed_rows.push((chunk.iter().map(|s| s.to_string()).collect(), x - GAP_X));
            y += row_h;
        }
    }
    // Center every row on the widest.
    let width = placed_rows.iter().map(|r| r.1).fold(0.0, f64::max);
    for (ids, w) in &placed_rows {
        let shift = MARGIN + (width - w) / 2.0;
        for id in ids {
            boxes.get_mut(id).expect("placed").x += shift;
        }
    }
    if let Some(host) = boxes.get(HOST).copied()
        && g.nodes.iter().any(|n| n.id == BRIDGE)
    {
        let (bw, bh) = size(g, BRIDGE, 0.0);
        let r = Rect {
            x: host.cx() - bw / 2.0,
            y: host.bottom() - PAD - bh,
            w: bw,
            h: bh,
        };
        boxes.insert(BRIDGE.into(), r);
    }
    Layout {
        boxes,
        level,
        width: width + 2.0 * MARGIN,
        height: y + MARGIN,
    }
}
