/* The extraction line as a schematic (issue 17), the way Pychron's canvas shows it: valves
 * on their pipes, gauges where they sit with their pressure, labelled parts.
 *
 *   buildSchematic(node, spec, valves, gauges, onValve) -> {svg, placed: Set of valve keys}
 *
 * spec (the node file's `schematic:` entry of that node, or null):
 *   {valves: {A: [x, y]}, gauges: {IG: [x, y]}, parts: {pump: [x, y]}, pipes: [[a, b, ...]]}
 * Without one, a default is derived: valves with layout hints (x, y, to) from the valve
 * bank's node file sit where the hints say, joined by their `to` pipes; with no hints at all
 * the valves sit in one row on one pipe; the node's gauges sit above the line.
 * gauges: [{topic, label, meta}] (the node's pressure series); their readings are filled in
 * by updateGauge().
 */
"use strict";

const SVGNS = "http://www.w3.org/2000/svg";
const CELL_X = 104, CELL_Y = 88, VALVE_W = 84, VALVE_H = 62;

function svgEl(tag, attrs = {}, text) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function defaultSpec(valves, gauges) {
  const spec = { valves: {}, gauges: {}, parts: {}, pipes: [] };
  const hinted = valves.filter((v) => v.layout && isFinite(v.layout.x) && isFinite(v.layout.y));
  if (hinted.length) {
    for (const v of hinted) spec.valves[v.name] = [v.layout.x, v.layout.y];
    for (const v of hinted) {
      for (const to of v.layout.to || []) if (to in spec.valves) spec.pipes.push([v.name, to]);
    }
  } else {
    valves.forEach((v, i) => { spec.valves[v.name] = [i, 0]; });
    if (valves.length > 1) spec.pipes.push(valves.map((v) => v.name));
  }
  const xs = Object.values(spec.valves).map((p) => p[0]);
  const ys = Object.values(spec.valves).map((p) => p[1]);
  const minX = xs.length ? Math.min(...xs) : 0, maxX = xs.length ? Math.max(...xs) : 0;
  const minY = ys.length ? Math.min(...ys) : 0;
  gauges.forEach((g, i) => {
    const x = gauges.length === 1 ? (minX + maxX) / 2
                                  : minX + (i * (maxX - minX)) / Math.max(1, gauges.length - 1);
    spec.gauges[g.label] = [x, minY - 0.9];
  });
  return spec;
}

/* The gauge series a schematic name means: "IG" or "gauges.IG" of that node. */
function findGauge(name, gauges) {
  return gauges.find((g) => g.label === name || g.topic.endsWith(`.${name}`)) || null;
}

function buildSchematic(node, given, valves, gauges, onValve) {
  const spec = given || defaultSpec(valves, gauges);
  const pos = new Map();
  for (const kind of ["valves", "gauges", "parts"]) {
    for (const [name, p] of Object.entries(spec[kind] || {})) pos.set(name, { kind, x: p[0], y: p[1] });
  }
  const placed = new Set();
  if (!pos.size) return { svg: null, placed };
  const xs = [...pos.values()].map((p) => p.x), ys = [...pos.values()].map((p) => p.y);
  const minX = Math.min(...xs), minY = Math.min(...ys);
  const W = (Math.max(...xs) - minX) * CELL_X + 1.6 * CELL_X;
  const H = (Math.max(...ys) - minY) * CELL_Y + 1.5 * CELL_Y;
  const px = (x) => 0.8 * CELL_X + (x - minX) * CELL_X;
  const py = (y) => 0.85 * CELL_Y + (y - minY) * CELL_Y;
  const svg = svgEl("svg", { class: "schematic", viewBox: `0 0 ${W} ${H}`, role: "img",
                             "data-node": node, "aria-label": `extraction line of ${node}` });
  // pipes first, under everything: right angles, horizontal then vertical
  for (const pipe of spec.pipes || []) {
    const pts = pipe.map((n) => pos.get(n)).filter((p) => p);
    if (pts.length < 2) continue;
    let d = `M ${px(pts[0].x)} ${py(pts[0].y)}`;
    for (let i = 1; i < pts.length; i++) {
      const a = pts[i - 1], b = pts[i];
      if (a.x !== b.x && a.y !== b.y) d += ` L ${px(b.x)} ${py(a.y)}`;
      d += ` L ${px(b.x)} ${py(b.y)}`;
    }
    svg.append(svgEl("path", { class: "pipe", d, "data-through": pipe.join(" ") }));
  }
  for (const [name, p] of pos) {
    const x = px(p.x), y = py(p.y);
    if (p.kind === "parts") {
      const g = svgEl("g", { class: "part", transform: `translate(${x},${y})`, "data-part": name });
      const w = Math.min(CELL_X - 8, Math.max(64, name.length * 10 + 16));
      const label = svgEl("text", { y: 6 }, name);
      // a long name is squeezed into its box rather than spilling over its neighbours
      if (name.length * 9.5 > w - 10) {
        label.setAttribute("textLength", String(w - 12));
        label.setAttribute("lengthAdjust", "spacingAndGlyphs");
      }
      g.append(svgEl("rect", { x: -w / 2, y: -20, width: w, height: 40, rx: 10 }), label);
      svg.append(g);
    } else if (p.kind === "gauges") {
      const gauge = findGauge(name, gauges);
      const g = svgEl("g", { class: "gauge", transform: `translate(${x},${y})`,
                             "data-topic": gauge ? gauge.topic : "", "data-node": node,
                             "data-name": name });
      g.append(svgEl("circle", { r: 18 }), svgEl("text", { class: "gname", y: 5 }, name.slice(0, 3)),
               svgEl("text", { class: "gvalue", y: -24 }, "-"));
      svg.append(g);
    } else {
      const v = valves.find((vv) => vv.name === name);
      const key = v ? v.key : `${node}/${name}`;
      placed.add(key);
      const g = svgEl("g", { class: "valve", "data-key": key, tabindex: "0",
                             transform: `translate(${x - VALVE_W / 2},${y - VALVE_H / 2})` });
      g.append(svgEl("rect", { width: VALVE_W, height: VALVE_H, rx: 7 }),
               svgEl("text", { x: VALVE_W / 2, y: 25, class: "vname" }, name),
               svgEl("text", { x: VALVE_W / 2, y: 42, class: "small vstate" }),
               svgEl("text", { x: VALVE_W / 2, y: 56, class: "small vmeta" }));
      g.addEventListener("click", () => onValve(key));
      g.addEventListener("keydown", (ev) => { if (ev.key === "Enter" || ev.key === " ") onValve(key); });
      svg.append(g);
    }
  }
  return { svg, placed };
}
