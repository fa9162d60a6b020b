/* labbridge web dashboard page (issue 8; docs/web.md).
 *
 * Data flow: GET-free start -- the WebSocket's "hello" carries the whole current state
 * (config, nodes, valves, series' last values, events); then the page fetches the last
 * N minutes of every series from /api/history and merges them with what arrived live
 * meanwhile; then "batch" and "health" messages keep it current. On a lost connection the
 * page reconnects with backoff and starts again from a fresh "hello".
 *
 * Test hooks (stable DOM state, no sleeps needed): valves carry data-state / data-locked /
 * data-owner; nodes data-status; each plotted series' legend item data-topic and data-last
 * (the last value drawn); #control-result data-outcome; #conn data-conn.
 */
"use strict";

const S = {
  config: { control: false, history_minutes: 10, stale_after: 10, command_nodes: [] },
  offset: 0,            // server clock - local clock, seconds
  nodes: [],
  valves: new Map(),    // key -> valve json
  series: new Map(),    // topic -> {topic, points: [[t, v]], color}
  groups: new Map(),    // group key -> {el, plot, topics: []}
  events: [],
  frames: new Map(),
  ws: null,
  retry: 0,
  dirty: false,
};

const $ = (sel) => document.querySelector(sel);
const now = () => Date.now() / 1000 + S.offset;

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

function fmtAge(s) {
  if (s === null || s === undefined) return "never heard";
  if (s < 60) return `${s.toFixed(1)} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  return `${(s / 3600).toFixed(1)} h ago`;
}

function fmtValue(v) {
  if (v === null || v === undefined) return "-";
  return typeof fmtNumber === "function" ? fmtNumber(v) : String(v);
}

// ---------------------------------------------------------------- connection
function connect() {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${proto}://${location.host}/ws`);
  S.ws = ws;
  setConn("connecting");
  ws.onopen = () => { S.retry = 0; setConn("open"); };
  ws.onmessage = (ev) => {
    let msg;
    try { msg = JSON.parse(ev.data); } catch (e) { return; }
    handle(msg);
  };
  ws.onclose = () => {
    if (S.ws !== ws) return;
    setConn("closed");
    const delay = Math.min(5000, 250 * Math.pow(2, S.retry++));
    setTimeout(connect, delay);
  };
}

function setConn(state) {
  const b = $("#conn");
  b.dataset.conn = state;
  b.textContent = { open: "live", connecting: "connecting", closed: "disconnected" }[state];
}

function handle(msg) {
  switch (msg.type) {
    case "hello": return onHello(msg);
    case "batch": for (const it of msg.items) handleItem(it); return;
    case "health": S.offset = msg.now - Date.now() / 1000; renderNodes(msg.nodes); return;
    default: return handleItem(msg);
  }
}

function handleItem(it) {
  switch (it.type) {
    case "valve": S.valves.set(it.valve.key, it.valve); renderValve(it.valve); break;
    case "point": addPoint(it.topic, it.t, it.v); break;
    case "event": addEvent(it.event); break;
    case "frame": showFrame(it); break;
  }
}

function onHello(msg) {
  S.offset = msg.now - Date.now() / 1000;
  S.config = msg.config;
  document.title = `${msg.config.title} dashboard`;
  $("#title").textContent = msg.config.title;
  const cm = $("#control-mode");
  cm.dataset.control = msg.config.control ? "on" : "off";
  cm.textContent = msg.config.control ? "control ON" : "control off (view only)";
  $("#window-label").textContent = `last ${msg.config.history_minutes} min`;
  S.valves = new Map(msg.devices.valves.map((v) => [v.key, v]));
  renderValves();
  renderNodes(msg.nodes);
  S.events = [];
  $("#events").replaceChildren();
  for (const e of msg.events) addEvent(e);
  if (!msg.events.length) $("#events").append(el("li", { class: "empty", text: "No warnings." }));
  for (const s of msg.devices.series) {
    if (s.last) addPoint(s.topic, s.last[0], s.last[1]);
  }
  for (const f of msg.devices.frames) showFrame(f);
  loadHistory(msg.devices.series.map((s) => s.topic));
}

async function loadHistory(topics) {
  const minutes = S.config.history_minutes;
  await Promise.all(topics.map(async (topic) => {
    try {
      const r = await fetch(`/api/history?topic=${encodeURIComponent(topic)}&minutes=${minutes}`);
      if (!r.ok) return;
      const h = await r.json();
      mergeHistory(topic, h.points);
    } catch (e) { /* the live stream still runs; history is a nicety */ }
  }));
}

// ---------------------------------------------------------------- valves
function valveText(v) {
  const bits = [];
  if (v.locked) bits.push("locked");
  if (v.owner) bits.push(`owner ${v.owner}`);
  return bits.join(" - ");
}

function renderValves() {
  const root = $("#valves");
  root.replaceChildren();
  const byNode = new Map();
  for (const v of S.valves.values()) {
    if (!byNode.has(v.node)) byNode.set(v.node, []);
    byNode.get(v.node).push(v);
  }
  if (!byNode.size) {
    root.append(el("p", { class: "empty", text: "No valves seen yet." }));
    return;
  }
  for (const [node, valves] of [...byNode.entries()].sort()) {
    const box = el("div", { class: "valve-node", "data-node": node });
    box.append(el("h3", { text: node }));
    const laid = valves.filter((v) => v.layout && isFinite(v.layout.x) && isFinite(v.layout.y));
    if (laid.length) box.append(schematic(node, laid));
    const rest = valves.filter((v) => !laid.includes(v));
    if (rest.length) {
      const grid = el("div", { class: "valve-grid" });
      for (const v of rest) grid.append(valveBox(v));
      box.append(grid);
    }
    root.append(box);
  }
}

function canControl(v) {
  return S.config.control && S.config.command_nodes.includes(v.node);
}

function valveBox(v) {
  const b = el("button", { type: "button", class: "valve", "data-key": v.key },
    el("span", { class: "vname", text: v.name }),
    el("span", { class: "vstate" }), el("span", { class: "vmeta" }));
  b.addEventListener("click", () => askValve(v.key));
  updateValveEl(b, v);
  return b;
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs = {}) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

function schematic(node, valves) {
  const xs = valves.map((v) => v.layout.x), ys = valves.map((v) => v.layout.y);
  const minX = Math.min(...xs), maxX = Math.max(...xs), minY = Math.min(...ys);
  const maxY = Math.max(...ys);
  const cell = 120, w = 92, h = 58;
  const px = (x) => 60 + (x - minX) * cell, py = (y) => 40 + (y - minY) * cell * 0.75;
  const W = (maxX - minX) * cell + 120, H = (maxY - minY) * cell * 0.75 + 80;
  const s = svg("svg", { class: "schematic", viewBox: `0 0 ${W} ${H}`, role: "img",
                         "aria-label": `valve schematic of ${node}` });
  const pos = new Map(valves.map((v) => [v.name, v.layout]));
  for (const v of valves) {
    for (const other of v.layout.to || []) {
      const o = pos.get(other);
      if (!o) continue;
      s.append(svg("line", { class: "pipe", x1: px(v.layout.x), y1: py(v.layout.y),
                             x2: px(o.x), y2: py(o.y) }));
    }
  }
  for (const v of valves) {
    const g = svg("g", { class: "valve", "data-key": v.key, tabindex: "0",
                         transform: `translate(${px(v.layout.x) - w / 2},${py(v.layout.y) - h / 2})` });
    g.append(svg("rect", { width: w, height: h }));
    const name = svg("text", { x: w / 2, y: 20 }); name.textContent = v.name;
    const st = svg("text", { x: w / 2, y: 37, class: "small vstate" });
    const meta = svg("text", { x: w / 2, y: 51, class: "small vmeta" });
    g.append(name, st, meta);
    g.addEventListener("click", () => askValve(v.key));
    updateValveEl(g, v);
    s.append(g);
  }
  return s;
}

function updateValveEl(e, v) {
  e.dataset.node = v.node;
  e.dataset.valve = v.name;
  e.dataset.state = v.state;
  e.dataset.locked = String(v.locked);
  e.dataset.owner = v.owner || "";
  e.dataset.known = String(v.known);
  e.classList.toggle("clickable", canControl(v));
  const st = e.querySelector(".vstate"), meta = e.querySelector(".vmeta");
  st.textContent = v.known ? v.state : "unknown";
  meta.textContent = valveText(v);
  const title = `${v.node} ${v.name}${v.description ? " (" + v.description + ")" : ""}: ` +
    `${v.state}${v.locked ? ", software-locked" : ""}${v.owner ? ", owned by " + v.owner : ""}`;
  e.setAttribute("aria-label", title);
}

function renderValve(v) {
  const e = document.querySelector(`.valve[data-key="${CSS.escape(v.key)}"]`);
  if (e) updateValveEl(e, v); else renderValves();
}

// ---------------------------------------------------------------- control
function confirmDialog(text) {
  const d = $("#confirm");
  $("#confirm-text").textContent = text;
  return new Promise((resolve) => {
    d.addEventListener("close", () => resolve(d.returnValue === "ok"), { once: true });
    d.returnValue = "cancel";
    d.showModal();
  });
}

function showResult(r) {
  const box = $("#control-result");
  box.hidden = false;
  box.dataset.outcome = r.outcome;
  box.textContent = r.ok ? `${r.action} ${r.target}: done${r.state ? " (" + r.state + ")" : ""}`
    : `${r.action} ${r.target} ${r.outcome}: ${r.reason || "no reason given"}`;
}

async function post(path, body) {
  let r;
  try {
    r = await fetch(path, { method: "POST", headers: { "Content-Type": "application/json" },
                            body: JSON.stringify(body) });
  } catch (e) {
    return { ok: false, outcome: "error", action: body.action || "setpoint",
             target: body.node, reason: "the dashboard is unreachable" };
  }
  const j = await r.json().catch(() => ({}));
  if (!("outcome" in j)) {
    return { ok: false, outcome: "error", action: body.action || "setpoint",
             target: body.node, reason: j.error || `HTTP ${r.status}` };
  }
  return j;
}

async function askValve(key) {
  const v = S.valves.get(key);
  if (!v || !canControl(v)) return;
  const action = v.state === "open" ? "close" : "open";
  let text = `${action[0].toUpperCase() + action.slice(1)} valve ${v.name} on ${v.node}?`;
  if (v.locked) text += " It is software-locked: the node will refuse.";
  if (v.owner) text += ` It is owned by ${v.owner}.`;
  if (!(await confirmDialog(text))) return;
  const r = await post("/api/control/valve", { node: v.node, valve: v.name, action });
  showResult(r);
  if (!r.ok) {
    const e = document.querySelector(`.valve[data-key="${CSS.escape(key)}"]`);
    if (e) { e.classList.add("flash"); setTimeout(() => e.classList.remove("flash"), 1500); }
  }
}

async function askSetpoint(node, device, input) {
  const value = Number(input.value);
  if (input.value.trim() === "" || !isFinite(value)) {
    showResult({ ok: false, outcome: "refused", action: "setpoint", target: `${node}/${device}`,
                 reason: "type a number first" });
    return;
  }
  if (!(await confirmDialog(`Set the ${device} setpoint on ${node} to ${value}?`))) return;
  showResult(await post("/api/control/setpoint", { node, device, value }));
}

// ---------------------------------------------------------------- nodes
function renderNodes(nodes) {
  S.nodes = nodes;
  const ul = $("#nodes");
  if (!nodes.length) {
    ul.replaceChildren(el("li", { class: "empty", text: "No node heard yet." }));
    return;
  }
  ul.replaceChildren(...nodes.map((n) => el("li", { class: "node", "data-node": n.node,
                                                    "data-status": n.status },
    el("span", { class: "nname", text: n.node }),
    el("span", { class: "status", text: n.status }),
    el("span", { class: "age", text: `heartbeat ${fmtAge(n.heartbeat_age)}` }),
    el("span", { class: "nmeta",
                 text: `${n.messages} msgs${n.missed ? `, ${n.missed} missed (late join or loss)` : ""}` }))));
}

// ---------------------------------------------------------------- trends
function groupOf(topic) {
  const p = topic.split(".");
  if (p[1] === "dashboard" && p[2] === "value" && p.length >= 5) {
    return { key: `${p[0]}.dashboard.${p[3]}`, label: p.slice(4).join("."),
             title: `${p[0]} / ${p[3]}`, node: p[0], device: p[3] };
  }
  return { key: p.slice(0, 2).join("."), label: p.slice(2).join(".") || p[1],
           title: `${p[0]} / ${p[1] || ""}`, node: p[0], device: p[1] || "" };
}

function ensureSeries(topic) {
  let s = S.series.get(topic);
  if (s) return s;
  const g = ensureGroup(topic);
  s = { topic, points: [], label: groupOf(topic).label,
        color: PLOT_COLORS[g.topics.length % PLOT_COLORS.length] };
  s.step = /setpoint|state/.test(s.label);
  S.series.set(topic, s);
  g.topics.push(topic);
  const item = el("span", { class: "legend-item", "data-topic": topic, "data-last": "" },
    el("i", { style: `background:${s.color}` }), el("span", { class: "lname", text: s.label }),
    document.createTextNode(" "), el("b", { class: "lval", text: "-" }));
  g.legend.append(item);
  if (/^(setpoint|temperature)$/.test(s.label) && S.config.control && S.config.command_nodes.includes(g.node)) {
    addSetpointForm(g);
  }
  return s;
}

function ensureGroup(topic) {
  const info = groupOf(topic);
  let g = S.groups.get(info.key);
  if (g) return g;
  const plots = $("#plots");
  plots.querySelector(".empty")?.remove();
  const canvas = el("canvas", { "aria-label": `trend of ${info.title}` });
  const legend = el("div", { class: "legend" });
  const box = el("div", { class: "plot", "data-group": info.key },
    el("h3", { text: info.title }), canvas, legend);
  plots.append(box);
  g = { key: info.key, node: info.node, device: info.device, el: box, legend,
        plot: new TimePlot(canvas), topics: [], form: null };
  S.groups.set(info.key, g);
  return g;
}

function addSetpointForm(g) {
  if (g.form) return;
  const input = el("input", { type: "number", step: "any", inputmode: "decimal",
                              "aria-label": `new ${g.device} setpoint`, class: "setpoint-input" });
  const btn = el("button", { type: "submit", class: "primary", text: "Set setpoint" });
  g.form = el("form", { class: "setpoint-form", "data-node": g.node, "data-device": g.device },
    el("label", { text: "Setpoint" }), input, btn);
  g.form.addEventListener("submit", (ev) => { ev.preventDefault(); askSetpoint(g.node, g.device, input); });
  g.el.append(g.form);
}

function trim(s) {
  const limit = now() - S.config.history_minutes * 60 - 60;
  let i = 0;
  while (i < s.points.length - 1 && s.points[i][0] < limit) i++;
  if (i) s.points.splice(0, i);
  if (s.points.length > 20000) s.points.splice(0, s.points.length - 20000);
}

function addPoint(topic, t, v) {
  const s = ensureSeries(topic);
  const pts = s.points;
  if (pts.length && pts[pts.length - 1][0] > t) {
    // out of order (history after live): insert in place
    let i = pts.length - 1;
    while (i >= 0 && pts[i][0] > t) i--;
    if (!(i >= 0 && pts[i][0] === t)) pts.splice(i + 1, 0, [t, v]);
  } else if (!(pts.length && pts[pts.length - 1][0] === t)) {
    pts.push([t, v]);
  }
  trim(s);
  schedule();
}

function mergeHistory(topic, points) {
  const s = ensureSeries(topic);
  const seen = new Set(s.points.map((p) => p[0]));
  for (const p of points) if (!seen.has(p[0])) s.points.push(p);
  s.points.sort((a, b) => a[0] - b[0]);
  trim(s);
  schedule();
}

function schedule() {
  if (S.dirty) return;
  S.dirty = true;
  requestAnimationFrame(drawAll);
}

function drawAll() {
  S.dirty = false;
  const t1 = now(), windowStart = t1 - S.config.history_minutes * 60;
  for (const g of S.groups.values()) {
    const series = g.topics.map((t) => S.series.get(t));
    // Zoom to the data while there is less of it than the window (at least one minute).
    let first = Infinity;
    for (const s of series) if (s.points.length) first = Math.min(first, s.points[0][0]);
    const t0 = Math.max(windowStart, Math.min(first, t1 - 60));
    g.plot.draw(series, t0, t1);
    for (const s of series) {
      const last = s.points.length ? s.points[s.points.length - 1][1] : null;
      const item = g.legend.querySelector(`.legend-item[data-topic="${CSS.escape(s.topic)}"]`);
      if (!item) continue;
      item.dataset.last = last === null ? "" : String(last);
      item.dataset.points = String(s.points.length);
      item.querySelector(".lval").textContent = fmtValue(last);
    }
  }
}

// ---------------------------------------------------------------- events, camera
function addEvent(e) {
  const ol = $("#events");
  ol.querySelector(".empty")?.remove();
  S.events.push(e);
  const li = el("li", { "data-level": e.level, "data-kind": e.kind || "" },
    el("time", { text: fmtClock(e.ts) }), el("span", { class: "lvl", text: e.level }),
    el("span", { class: "enode", text: `${e.node}: ` }), el("span", { class: "etext", text: e.text }));
  ol.prepend(li);
  while (ol.children.length > 200) ol.lastChild.remove();
}

function showFrame(f) {
  $("#camera-panel").hidden = false;
  let img = document.querySelector(`#frames img[data-topic="${CSS.escape(f.topic)}"]`);
  if (!img) {
    img = el("img", { "data-topic": f.topic, alt: `latest frame of ${f.topic}` });
    $("#frames").append(el("figure", {}, img, el("figcaption", { text: f.topic })));
  }
  const last = Number(img.dataset.loaded || 0);
  if (Date.now() - last < 1000) return;  // at most one frame a second
  img.dataset.loaded = String(Date.now());
  img.dataset.count = String(f.count);
  img.src = `/api/frame?topic=${encodeURIComponent(f.topic)}&n=${f.count}`;
}

// ---------------------------------------------------------------- start
function tick() {
  $("#clock").textContent = fmtClock(now());
  schedule();
}

window.addEventListener("resize", schedule);
setInterval(tick, 1000);
connect();
