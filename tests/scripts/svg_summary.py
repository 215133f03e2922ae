#!/usr/bin/python3
"""Parses an SVG (stdin) as XML and prints what the graph tests check, as
JSON: size, node boxes (id, class, texts), edges (id, from, to, class),
edge labels (lines, red lines). Fails (exit 1) on anything that is not
well-formed SVG."""
import json
import sys
import xml.etree.ElementTree as ET

NS = "{http://www.w3.org/2000/svg}"


def texts(el):
    return ["".join(t.itertext()) for t in el.iter(NS + "text")]


def main():
    root = ET.fromstring(sys.stdin.read())
    if root.tag != NS + "svg":
        print(f"root element is {root.tag}, not svg", file=sys.stderr)
        return 1
    out = {
        "width": float(root.get("width")),
        "height": float(root.get("height")),
        "view_box": [float(v) for v in root.get("viewBox").split()],
        "title": texts(root)[0],
        "nodes": [],
        "edges": [],
        "labels": {},
    }
    for g in root.iter(NS + "g"):
        cls = g.get("class", "").split()
        if "node" in cls:
            rect = g.find(NS + "rect")
            out["nodes"].append({
                "id": g.get("id"),
                "kind": cls[1],
                "texts": texts(g),
                "box": [float(rect.get(k)) for k in ("x", "y", "width", "height")],
            })
        elif "label" in cls:
            red = [t.text for t in g.iter(NS + "text") if t.get("fill") == "#c62828"]
            out["labels"][g.get("data-edge")] = {"lines": texts(g), "red": red}
    for tag in ("line", "path"):
        for e in root.iter(NS + tag):
            if "edge" in e.get("class", "").split():
                out["edges"].append({
                    "id": e.get("data-edge"),
                    "from": e.get("data-from"),
                    "to": e.get("data-to"),
                    "kind": e.get("class").split()[1],
                    "dashed": e.get("stroke-dasharray") is not None,
                })
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
