/* labbridge web dashboard page (issues 8 and 17; docs/web.md).
 *
 * Data flow: the WebSocket's "hello" carries the whole current state (config, nodes, valves,
 * series with their units, status values, frames, events); the page says hello back and
 * pings every config.ping_interval seconds (the server gives idle connections' slots to
 * newcomers); then it fetches the last N minutes of every series at once from
 * /api/history and merges them with what arrived live meanwhile; then "batch" and "health"
 * messages keep it current. On a lost connection the page reconnects with backoff and
 * starts again from a fresh "hello".
 *
 * Honest display: every reading carries its units; a node that is not live greys all its
 * widgets; a sampled value older than its node's stale limit is greyed and its line stops
 * where the data stopped; only a held value (announced on change) is carried to "now".
 *
 * Access (issue 12): the page first asks /api/session who it is (identity, role, whether it
 * may control, its CSRF token). Nobody: only the login form. Observer: everything, no
 * control (nothing clickable; the server refuses anyway). Operator: controls, every POST
 * with the X-CSRF-Token header. A closed WebSocket with code 4003 means the session ended:
 * the page asks again who it is.
 *
 * Test hooks (stable DOM state, no sleeps needed): #who data-role / data-identity; #login
 * open with data-required; #login-error text; events data-kind / data-outcome / data-who; valves data-state / data-locked /
 * data-owner / data-stale; nodes data-status / data-missed; legend items data-topic,
 * data-last, data-points, data-first, data-units, data-color, data-stale, data-alarm;
 * readings (.reading) data-topic, data-units, data-stale; schematic gauges data-topic;
 * frames data-count / data-loaded; #control-result data-outcome; #conn data-conn.
 */
"use strict";

const S = {
  config: { control: false, history_minutes: 10, stale_after: 10, command_nodes: [],
            ping_interval: 10, schematic: {}, alarms: [] },
  offset: 0,              // server clock - local clock, seconds
  nodes: new Map(),       // node -> health json
  baseline: new Map(),    // node -> real gaps ("missed") when this page said hello
  valves: new Map(),      // key -> valve json
  series: new Map(),      // topic -> series json + {points, color}
  values: new Map(),      // topic -> value json
  frames: new Map(),      // topic -> frame json
  aliases: new Map(),     // topic -> the series it was merged into
  events: [],
  me: { identity: null, role: "nobody", can_control: false, csrf: null },
  plots: new Map(),       // plot key -> {el, plot, legend, topics}
  ws: null,
  connected: false,
  retry: 0,
  pinger: null,
  dirty: false,
  rebuild: false,
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

// ---------------------------------------------------------------- connection
function connect() {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${proto}://${location.host}/ws`);
  S.ws = ws;
  setConn("connecting");
  ws.onopen = () => {
    S.retry = 0;
    S.connected = true;
    setConn("open");
    ws.send(JSON.stringify({ type: "hello" }));
  };
  ws.onmessage = (ev) => {
    let msg;
    try { msg = JSON.parse(ev.data); } catch (e) { return; }
    handle(msg);
  };
  ws.onclose = (ev) => {
    if (S.ws !== ws) return;
    S.connected = false;  // we know nothing now: every widget greys until the next hello
    schedule();
    clearInterval(S.pinger);
    if (ev.code === 4003) {
      // Our login session ended (logout in another tab, expiry): who are we now?
      setConn("closed");
      sessionEnded();
      return;
    }
    if (ev.code === 4001) {
      // Our slot went to a newer page (the dashboard is full): wait before asking again.
      setConn("replaced");
      setTimeout(connect, 30000);
      return;
    }
    setConn("closed");
    const delay = ev.code === 1013 ? 100 : Math.min(5000, 250 * Math.pow(2, S.retry++));
    setTimeout(connect, delay);
  };
}

function setConn(state) {
  const b = $("#conn");
  b.dataset.conn = state;
  b.textContent = { open: "live", connecting: "connecting", closed: "disconnected",
                    replaced: "replaced by a newer page", login: "log in to see" }[state];
}

function handle(msg) {
  switch (msg.type) {
    case "hello": return onHello(msg);
    case "batch": for (const it of msg.items) handleItem(it); schedule(); return;
    case "health":
      S.offset = msg.now - Date.now() / 1000;
      setNodes(msg.nodes);
      $("#nodes").dataset.health = String(Number($("#nodes").dataset.health || 0) + 1);
      schedule();
      return;
    default: handleItem(msg); schedule();
  }
}

function handleItem(it) {
  switch (it.type) {
    case "valve": setValve(it.valve); break;
    case "point": addPoint(it.topic, it.t, it.v); break;
    case "series": setSeries(it.series); break;
    case "alias": setAlias(it.topic, it.into); break;
    case "unseries": if (S.series.delete(it.topic)) S.rebuild = true; break;
    case "value": setValue(it.value); break;
    case "event": addEvent(it.event); break;
    case "frame": setFrame(it); break;
  }
}

function onHello(msg) {
  S.offset = msg.now - Date.now() / 1000;
  S.config = msg.config;
  if (msg.you && msg.you.role) S.me = { ...S.me, ...msg.you };
  document.title = `${msg.config.title} dashboard`;
  $("#title").textContent = msg.config.title;
  renderWho();
  $("#window-label").textContent = `last ${msg.config.history_minutes} min`;
  const d = msg.devices;
  S.valves = new Map(d.valves.map((v) => [v.key, v]));
  S.aliases = new Map(Object.entries(d.aliases || {}));
  const old = S.series;
  S.series = new Map();
  for (const s of d.series) {
    const kept = old.get(s.topic);
    setSeries(s, kept ? kept.points : []);
    if (s.last) addPoint(s.topic, s.last[0], s.last[1]);
  }
  S.values = new Map(d.values.map((v) => [v.topic, v]));
  S.frames = new Map();
  for (const f of d.frames) S.frames.set(f.topic, f);
  S.baseline = new Map(msg.nodes.map((n) => [n.node, n.missed]));
  setNodes(msg.nodes);
  S.events = [];
  $("#events").replaceChildren();
  for (const e of msg.events) addEvent(e);
  if (!msg.events.length) $("#events").append(el("li", { class: "empty", text: "No events." }));
  clearInterval(S.pinger);
  S.pinger = setInterval(() => {
    if (S.ws && S.ws.readyState === WebSocket.OPEN) S.ws.send(JSON.stringify({ type: "ping" }));
  }, Math.max(1, msg.config.ping_interval) * 1000);
  S.rebuild = true;
  schedule();
  loadHistory();
}

async function loadHistory() {
  const minutes = S.config.history_minutes;
  try {
    const r = await fetch(`/api/history?minutes=${minutes}&max_points=1000`);
    if (!r.ok) return;
    const h = await r.json();
    for (const [topic, points] of Object.entries(h.series)) mergeHistory(topic, points);
    $("#plots").dataset.history = h.source;
  } catch (e) { /* the live stream still runs; history is a nicety */ }
  schedule();
}

// ---------------------------------------------------------------- model
function setSeries(s, points) {
  const cur = S.series.get(s.topic);
  const next = { ...s, points: points || (cur ? cur.points : []), color: colorFor(s.topic) };
  if (!cur || cur.units !== s.units || cur.group !== s.group || cur.quantity !== s.quantity
      || cur.held !== s.held) S.rebuild = true;
  S.series.set(s.topic, next);
  schedule();
  return next;
}

function setAlias(topic, into) {
  S.aliases.set(topic, into);
  const gone = S.series.get(topic);
  S.series.delete(topic);
  if (gone) {
    const target = S.series.get(into);
    if (target && !target.points.length) target.points = gone.points;
    S.rebuild = true;
  }
}

function setValue(v) {
  if (!S.values.has(v.topic)) S.rebuild = true;
  S.values.set(v.topic, v);
}

function setValve(v) {
  const known = S.valves.has(v.key);
  S.valves.set(v.key, v);
  if (!known) S.rebuild = true;
  else renderValve(v);
}

function setFrame(f) {
  if (!S.frames.has(f.topic)) S.rebuild = true;
  S.frames.set(f.topic, f);
  const img = document.querySelector(`img.frame[data-topic="${CSS.escape(f.topic)}"]`);
  if (img) loadFrame(img, f);
}

function setNodes(nodes) {
  for (const n of nodes) {
    if (!S.nodes.has(n.node)) S.rebuild = true;
    S.nodes.set(n.node, n);
    if (!S.baseline.has(n.node)) S.baseline.set(n.node, n.missed);
  }
  renderNodes();
}

function trim(s) {
  const limit = now() - S.config.history_minutes * 60 - 60;
  let i = 0;
  while (i < s.points.length - 1 && s.points[i][0] < limit) i++;
  if (i) s.points.splice(0, i);
  if (s.points.length > 20000) s.points.splice(0, s.points.length - 20000);
}

function addPoint(topic, t, v) {
  const s = S.series.get(S.aliases.get(topic) || topic);
  if (!s) return;
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
}

function mergeHistory(topic, points) {
  const s = S.series.get(S.aliases.get(topic) || topic);
  if (!s) return;
  const seen = new Set(s.points.map((p) => p[0]));
  for (const p of points) if (!seen.has(p[0])) s.points.push(p);
  s.points.sort((a, b) => a[0] - b[0]);
  trim(s);
}

// ---------------------------------------------------------------- honesty
function nodeStatus(node) {
  if (!S.connected) return "disconnected";
  if (node === S.config.node && !S.nodes.has(node)) return "live";  // this dashboard itself
  const n = S.nodes.get(node);
  return n ? n.status : "disconnected";
}

function staleLimit(node) {
  const n = S.nodes.get(node);
  return n && n.stale_after ? n.stale_after : S.config.stale_after;
}

function lastPoint(s) { return s.points.length ? s.points[s.points.length - 1] : null; }

/* A series is stale when its node is not live, or (a sample) when its last point is older
 * than its node's stale limit. A held value stands while its node lives. */
function seriesStale(s) {
  if (nodeStatus(s.node) !== "live") return true;
  const last = lastPoint(s);
  if (!last) return true;
  return !s.held && now() - last[0] > staleLimit(s.node);
}

function valueStale(v) {
  if (nodeStatus(v.node) !== "live") return true;
  return !v.held && now() - v.t > staleLimit(v.node);
}

// ---------------------------------------------------------------- line (valves, gauges)
function valveText(v) {
  const bits = [];
  if (v.locked) bits.push("locked");
  if (v.owner) bits.push(`owner ${v.owner}`);
  return bits.join(" - ");
}

function mayControl() {
  return Boolean(S.config.control && S.me.can_control);
}

function canControl(v) {
  return mayControl() && S.config.command_nodes.includes(v.node);
}

function pressureSeries(node) {
  return [...S.series.values()].filter((s) => s.node === node && s.quantity === "pressure")
    .sort((a, b) => a.topic.localeCompare(b.topic));
}

function renderLine() {
  const root = $("#valves");
  root.replaceChildren();
  const byNode = new Map();
  for (const v of S.valves.values()) {
    if (!byNode.has(v.node)) byNode.set(v.node, []);
    byNode.get(v.node).push(v);
  }
  for (const node of Object.keys(S.config.schematic || {})) if (!byNode.has(node)) byNode.set(node, []);
  if (!byNode.size) {
    root.append(el("p", { class: "empty", text: "No valves seen yet." }));
    return;
  }
  for (const [node, valves] of [...byNode.entries()].sort()) {
    valves.sort((a, b) => a.name.localeCompare(b.name));
    const box = el("div", { class: "valve-node", "data-node": node });
    box.append(el("h3", { text: node }));
    const gauges = pressureSeries(node);
    const { svg, placed } = buildSchematic(node, (S.config.schematic || {})[node] || null,
                                           valves, gauges, askValve);
    if (svg) box.append(svg);
    const rest = valves.filter((v) => !placed.has(v.key));
    if (rest.length) {
      const grid = el("div", { class: "valve-grid" });
      for (const v of rest) grid.append(valveBox(v));
      box.append(grid);
    }
    root.append(box);
    for (const v of valves) renderValve(v);
  }
}

function valveBox(v) {
  const b = el("button", { type: "button", class: "valve", "data-key": v.key },
    el("span", { class: "vname", text: v.name }),
    el("span", { class: "vstate" }), el("span", { class: "vmeta" }));
  b.addEventListener("click", () => askValve(v.key));
  return b;
}

function updateValveEl(e, v) {
  e.dataset.node = v.node;
  e.dataset.valve = v.name;
  e.dataset.state = v.state;
  e.dataset.locked = String(v.locked);
  e.dataset.owner = v.owner || "";
  e.dataset.known = String(v.known);
  e.dataset.stale = String(nodeStatus(v.node) !== "live");
  e.classList.toggle("clickable", canControl(v));
  const st = e.querySelector(".vstate"), meta = e.querySelector(".vmeta");
  if (st) st.textContent = v.known ? v.state : "unknown";
  // on the schematic the box is small: "locked" / "owned" (who owns it is in the tooltip)
  if (meta) meta.textContent = e instanceof SVGElement
    ? [v.locked ? "locked" : "", v.owner ? "owned" : ""].filter((x) => x).join(" + ")
    : valveText(v);
  const title = `${v.node} ${v.name}${v.description ? " (" + v.description + ")" : ""}: ` +
    `${v.state}${v.locked ? ", software-locked" : ""}${v.owner ? ", owned by " + v.owner : ""}` +
    `${nodeStatus(v.node) !== "live" ? " (node " + nodeStatus(v.node) + ": last known)" : ""}`;
  e.setAttribute("aria-label", title);
  let tip = e.querySelector("title");
  if (e instanceof SVGElement) {
    if (!tip) { tip = document.createElementNS(SVGNS, "title"); e.prepend(tip); }
    tip.textContent = title;
  } else {
    e.title = title;
  }
}

function renderValve(v) {
  const e = document.querySelector(`.valve[data-key="${CSS.escape(v.key)}"]`);
  if (e) updateValveEl(e, v); else S.rebuild = true;
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
  const headers = { "Content-Type": "application/json" };
  if (S.me.csrf) headers["X-CSRF-Token"] = S.me.csrf;
  try {
    r = await fetch(path, { method: "POST", headers, body: JSON.stringify(body) });
  } catch (e) {
    return { ok: false, outcome: "error", action: body.action || "setpoint",
             target: body.node, reason: "the dashboard is unreachable" };
  }
  const j = await r.json().catch(() => ({}));
  if (r.status === 401) sessionEnded();
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
  if (nodeStatus(v.node) !== "live") text += ` ${v.node} is ${nodeStatus(v.node)}: its state is the last known.`;
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
function renderNodes() {
  const ul = $("#nodes");
  const nodes = [...S.nodes.values()].sort((a, b) => a.node.localeCompare(b.node));
  if (!nodes.length) {
    ul.replaceChildren(el("li", { class: "empty", text: "No node heard yet." }));
    return;
  }
  ul.replaceChildren(...nodes.map((n) => {
    // Only real gaps since this page opened: joining late is not a loss.
    const missed = Math.max(0, n.missed - (S.baseline.get(n.node) || 0));
    return el("li", { class: "node", "data-node": n.node, "data-status": n.status,
                      "data-missed": String(missed) },
      el("span", { class: "nname", text: n.node }),
      el("span", { class: "status", text: n.status }),
      el("span", { class: "age", text: `heartbeat ${fmtAge(n.heartbeat_age)}` }),
      el("span", { class: "nmeta",
                   text: `${n.messages} msgs${missed ? `, ${missed} missed since this page opened` : ""}` }));
  }));
}

// ---------------------------------------------------------------- instruments
function deviceKey(node, device) { return `${node} / ${device}`; }

function renderInstruments() {
  const root = $("#instruments");
  const cards = new Map();
  const card = (node, device) => {
    const key = deviceKey(node, device);
    if (!cards.has(key)) cards.set(key, { node, device, series: [], values: [], frames: [] });
    return cards.get(key);
  };
  for (const s of S.series.values()) card(s.node, s.device).series.push(s);
  for (const v of S.values.values()) card(v.node, v.device).values.push(v);
  for (const f of S.frames.values()) card(f.node, f.device).frames.push(f);
  if (!cards.size) {
    root.replaceChildren(el("p", { class: "empty", text: "No instrument heard yet." }));
    return;
  }
  root.replaceChildren();
  for (const [key, c] of [...cards.entries()].sort()) {
    const box = el("article", { class: "card", "data-node": c.node, "data-device": c.device },
                   el("h3", { text: key }));
    for (const f of c.frames) {
      const img = el("img", { class: "frame", "data-topic": f.topic, alt: `latest frame of ${f.topic}` });
      box.append(el("figure", {}, img, el("figcaption", { class: "fmeta" })));
      loadFrame(img, f);
    }
    const dl = el("dl", { class: "readings" });
    for (const s of c.series.sort((a, b) => a.label.localeCompare(b.label, undefined, { numeric: true }))) {
      dl.append(el("dt", { text: s.label }),
                el("dd", { class: "reading", "data-topic": s.topic, "data-units": s.units || "",
                           "data-kind": "series" }));
    }
    for (const v of c.values.sort((a, b) => a.signal.localeCompare(b.signal))) {
      dl.append(el("dt", { text: v.signal }),
                el("dd", { class: "reading", "data-topic": v.topic, "data-units": v.units || "",
                           "data-kind": "value" }));
    }
    if (dl.children.length) box.append(dl);
    if (mayControl() && S.config.command_nodes.includes(c.node)
        && c.series.some((s) => s.label === "setpoint")) {
      const input = el("input", { type: "number", step: "any", inputmode: "decimal",
                                  "aria-label": `new setpoint for ${c.device}` });
      const form = el("form", { class: "setpoint-form", "data-node": c.node },
                      el("label", { text: "setpoint" }), input,
                      el("button", { type: "submit", text: "Set" }));
      form.addEventListener("submit", (ev) => { ev.preventDefault(); askSetpoint(c.node, c.device, input); });
      box.append(form);
    }
    root.append(box);
  }
}

function loadFrame(img, f) {
  const last = Number(img.dataset.requested || 0);
  if (Date.now() - last < 1000 && img.dataset.count) return;  // at most one frame a second
  img.dataset.requested = String(Date.now());
  img.dataset.count = String(f.count);
  img.onload = () => {
    img.dataset.loaded = String(f.count);
    const cap = img.parentElement && img.parentElement.querySelector(".fmeta");
    // shape is [rows, columns]: say it as width x height
    if (cap) cap.textContent = `frame ${f.count} at ${fmtClock(f.ts)} (${f.shape[1]} x ${f.shape[0]} px)`;
  };
  img.src = `/api/frame?topic=${encodeURIComponent(f.topic)}&n=${f.count}`;
}

function updateReadings() {
  for (const dd of document.querySelectorAll(".reading")) {
    const topic = dd.dataset.topic;
    let stale, text, value;
    if (dd.dataset.kind === "series") {
      const s = S.series.get(topic);
      if (!s) continue;
      const last = lastPoint(s);
      value = last ? last[1] : null;
      stale = seriesStale(s);
      text = fmtReading(value, s);
      dd.dataset.alarm = s.alarm || "";
    } else {
      const v = S.values.get(topic);
      if (!v) continue;
      value = v.v;
      stale = valueStale(v);
      text = fmtReading(value, v);
    }
    dd.textContent = value === null || value === undefined ? "no reading" : text;
    dd.dataset.value = value === null || value === undefined ? "" : String(value);
    dd.dataset.stale = String(stale);
  }
  for (const g of document.querySelectorAll("svg.schematic g.gauge")) {
    const s = S.series.get(g.dataset.topic);
    const t = g.querySelector(".gvalue");
    if (!s) { t.textContent = "-"; g.dataset.stale = "true"; continue; }
    const last = lastPoint(s);
    t.textContent = last ? fmtReading(last[1], s) : "no reading";
    g.dataset.stale = String(seriesStale(s));
    g.dataset.alarm = s.alarm || "";
  }
  for (const v of S.valves.values()) {
    const e = document.querySelector(`.valve[data-key="${CSS.escape(v.key)}"]`);
    if (e) e.dataset.stale = String(nodeStatus(v.node) !== "live");
  }
  for (const c of document.querySelectorAll(".card, .valve-node, .plot")) {
    if (c.dataset.node) c.dataset.stale = String(nodeStatus(c.dataset.node) !== "live");
  }
  const alarms = [...S.series.values()].filter((s) => s.alarm).length;
  const down = [...S.nodes.values()].filter((n) => n.status !== "live").length;
  const badge = $("#alarm-summary");
  badge.dataset.alarms = String(alarms);
  badge.dataset.down = String(down);
  badge.hidden = !(alarms || down);
  badge.textContent = [alarms ? `${alarms} in alarm` : "", down ? `${down} node${down > 1 ? "s" : ""} not live` : ""]
    .filter((x) => x).join(", ");
}

// ---------------------------------------------------------------- trends
/* One plot per device; a device with more than two units gets one plot per pair. */
function plotGroups() {
  const groups = new Map();
  for (const s of S.series.values()) {
    if (!groups.has(s.group)) groups.set(s.group, []);
    groups.get(s.group).push(s);
  }
  const out = [];
  for (const [group, list] of [...groups.entries()].sort()) {
    list.sort((a, b) => a.label.localeCompare(b.label, undefined, { numeric: true }));
    const units = [...new Set(list.map((s) => s.units || ""))];
    for (let i = 0; i < units.length; i += 2) {
      const mine = units.slice(i, i + 2);
      out.push({ key: i ? `${group}#${i / 2}` : group, group, title: list[0].title,
                 node: list[0].node, device: list[0].device,
                 topics: list.filter((s) => mine.includes(s.units || "")).map((s) => s.topic) });
    }
  }
  return out;
}

function renderPlots() {
  const root = $("#plots");
  root.replaceChildren();
  S.plots = new Map();
  const groups = plotGroups();
  if (!groups.length) {
    root.append(el("p", { class: "empty", text: "No numeric signal yet." }));
    return;
  }
  for (const g of groups) {
    const canvas = el("canvas", { "aria-label": `trend of ${g.title}` });
    const legend = el("div", { class: "legend" });
    const box = el("div", { class: "plot", "data-group": g.key, "data-node": g.node },
                   el("h3", { text: g.title }), canvas, legend);
    for (const topic of g.topics) {
      const s = S.series.get(topic);
      legend.append(el("span", { class: "legend-item", "data-topic": topic, "data-last": "",
                                 "data-units": s.units || "", "data-color": s.color },
        el("i", { style: `background:${s.color}` }), el("span", { class: "lname", text: s.label }),
        document.createTextNode(" "), el("b", { class: "lval", text: "-" }),
        el("small", { class: "lalarm" })));
    }
    root.append(box);
    S.plots.set(g.key, { ...g, el: box, plot: new TimePlot(canvas), legend });
  }
}

function rebuildAll() {
  S.rebuild = false;
  renderLine();
  renderInstruments();
  renderPlots();
}

function schedule() {
  if (S.dirty) return;
  S.dirty = true;
  requestAnimationFrame(drawAll);
}

function drawAll() {
  S.dirty = false;
  if (S.rebuild) rebuildAll();
  const t1 = now(), windowStart = t1 - S.config.history_minutes * 60;
  for (const g of S.plots.values()) {
    const series = g.topics.map((t) => S.series.get(t)).filter((s) => s);
    // Zoom to the data while there is less of it than the window (at least one minute).
    let first = Infinity;
    for (const s of series) if (s.points.length) first = Math.min(first, s.points[0][0]);
    const t0 = Math.max(windowStart, Math.min(first, t1 - 60));
    const drawn = series.map((s) => ({
      label: s.label, color: s.color, points: s.points, units: s.units,
      log: s.quantity === "pressure", held: s.held, stale: seriesStale(s),
      gap: s.held ? 0 : Math.max(staleLimit(s.node), 1),
    }));
    const limits = [];
    for (const a of S.config.alarms || []) {
      for (const s of series) {
        if (a.topic === s.topic || (a.topic.endsWith(".") && s.topic.startsWith(a.topic))) {
          if (a.above !== null) limits.push({ units: s.units, value: a.above, level: a.level });
          if (a.below !== null) limits.push({ units: s.units, value: a.below, level: a.level });
        }
      }
    }
    g.plot.draw(drawn, t0, t1, { now: t1, limits });
    g.el.dataset.axes = g.plot.axes.map((a) => `${a.units}:${a.log ? "log" : "lin"}`).join(",");
    g.el.dataset.t0 = String(t0);
    for (const s of series) {
      const last = lastPoint(s);
      const item = g.legend.querySelector(`.legend-item[data-topic="${CSS.escape(s.topic)}"]`);
      if (!item) continue;
      item.dataset.last = last === null ? "" : String(last[1]);
      item.dataset.points = String(s.points.length);
      item.dataset.first = s.points.length ? String(s.points[0][0]) : "";
      item.dataset.stale = String(seriesStale(s));
      // where the line ends: "now" only for a held value that is still current
      item.dataset.lastT = last === null ? "" : String(last[0]);
      item.dataset.until = last === null ? "" : String(s.held && !seriesStale(s) ? t1 : last[0]);
      item.dataset.alarm = s.alarm || "";
      item.querySelector(".lval").textContent = last === null ? "no reading" : fmtReading(last[1], s);
      item.querySelector(".lalarm").textContent = s.alarm ? ` ${s.alarm}` : "";
    }
  }
  updateReadings();
}

// ---------------------------------------------------------------- events
function addEvent(e) {
  const ol = $("#events");
  ol.querySelector(".empty")?.remove();
  S.events.push(e);
  if (S.events.length > 500) S.events.splice(0, S.events.length - 500);
  const attrs = { "data-level": e.level, "data-kind": e.kind || "", "data-node": e.node || "" };
  if (e.outcome) attrs["data-outcome"] = e.outcome;
  if (e.who) attrs["data-who"] = e.who;
  const li = el("li", attrs,
    el("time", { text: fmtClock(e.ts) }), el("span", { class: "lvl", text: e.level }),
    el("span", { class: "enode", text: `${e.node}: ` }), el("span", { class: "etext", text: e.text }));
  ol.prepend(li);
  while (ol.children.length > 200) ol.lastChild.remove();
}

// ---------------------------------------------------------------- start
function tick() {
  $("#clock").textContent = fmtClock(now());
  schedule();
}

// ---------------------------------------------------------------- login
async function loadSession() {
  const r = await fetch("/api/session", { cache: "no-store" });
  const j = await r.json();
  S.me = { identity: j.identity, role: j.role, can_control: j.can_control, csrf: j.csrf,
           expired: j.expired };
  if (j.title) $("#title").textContent = j.title;
  renderWho();
  return S.me;
}

function renderWho() {
  const b = $("#who");
  b.dataset.role = S.me.role;
  b.dataset.identity = S.me.identity || "";
  b.textContent = S.me.identity ? `${S.me.identity} (${S.me.role})`
    : S.me.role === "nobody" ? "not logged in" : `not logged in (${S.me.role})`;
  $("#login-open").hidden = Boolean(S.me.identity);
  $("#logout").hidden = !S.me.identity;
  const cm = $("#control-mode");
  cm.dataset.control = mayControl() ? "on" : "off";
  cm.textContent = mayControl() ? "control ON"
    : !S.config.control ? "control off (view only)"
    : "view only: log in as an operator to control";
  S.rebuild = true;
  schedule();
}

function showLogin(required, note) {
  const d = $("#login");
  d.dataset.required = String(required);
  $("#login-cancel").hidden = required;
  $("#login-note").textContent = note || (required ? "This dashboard shows nothing without a login." : "");
  $("main").hidden = required;
  if (required) {
    setConn("login");
    $("#login-open").hidden = true;
  }
  if (!d.open) d.showModal();
  $("#login-user").focus();
}

function loginError(text) {
  const e = $("#login-error");
  e.textContent = text;
  e.hidden = false;
}

async function submitLogin(ev) {
  ev.preventDefault();
  $("#login-error").hidden = true;
  const body = { user: $("#login-user").value, password: $("#login-password").value };
  let r;
  try {
    r = await fetch("/api/login", { method: "POST", headers: { "Content-Type": "application/json" },
                                    body: JSON.stringify(body) });
  } catch (e) {
    loginError("the dashboard is unreachable");
    return;
  }
  if (r.ok) { location.replace("/"); return; }
  const j = await r.json().catch(() => ({}));
  $("#login-password").value = "";
  loginError(j.error || `HTTP ${r.status}`);
}

async function logout() {
  await fetch("/api/logout", { method: "POST", headers: { "X-CSRF-Token": S.me.csrf || "" } })
    .catch(() => null);
  location.replace("/");
}

async function sessionEnded() {
  let me;
  try { me = await loadSession(); } catch (e) { setTimeout(sessionEnded, 2000); return; }
  if (me.role === "nobody") {
    if (S.ws) { const ws = S.ws; S.ws = null; ws.close(); }
    showLogin(true, "Your session has ended: log in again.");
    return;
  }
  if (!S.ws || S.ws.readyState !== WebSocket.OPEN) connect();
}

async function start() {
  let me;
  try { me = await loadSession(); } catch (e) { setTimeout(start, 2000); return; }
  const wanted = location.pathname === "/login";
  if (wanted || me.role === "nobody") {
    const note = location.hash === "#used"
      ? "That one-time login link has been used already (or is wrong)."
      : me.expired ? "Your session has ended: log in again." : "";
    if (wanted) history.replaceState(null, "", "/");
    showLogin(me.role === "nobody", note);
  }
  if (me.role !== "nobody") connect();
}

$("#login-form").addEventListener("submit", submitLogin);
$("#login-cancel").addEventListener("click", () => $("#login").close());
$("#login").addEventListener("cancel", (ev) => {
  if ($("#login").dataset.required === "true") ev.preventDefault();
});
$("#login-open").addEventListener("click", () => showLogin(false, ""));
$("#logout").addEventListener("click", logout);
window.addEventListener("resize", schedule);
setInterval(tick, 1000);
start();
