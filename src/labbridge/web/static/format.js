/* Numbers, units and colours for the dashboard (issue 17).
 *
 *   fmtNumber(22.650000000000002)  -> "22.65"      (4 significant digits, no float noise)
 *   fmtEng(2.5e-10)                -> "250e-12"    (engineering: exponent a multiple of 3)
 *   fmtReading(2.5e-9, {units: "torr", quantity: "pressure"}) -> "2.50e-9 torr"
 *   colorFor("valve-controller.gauges.IG") -> the same colour on every page load
 */
"use strict";

function fmtNumber(v, sig = 4) {
  if (v === null || v === undefined || !isFinite(v)) return "-";
  if (v === 0) return "0";
  const a = Math.abs(v);
  if (a >= 1e-3 && a < 1e6) return String(Number(v.toPrecision(sig)));
  return v.toExponential(sig - 1).replace("e+", "e");
}

function fmtEng(v, sig = 3) {
  if (v === null || v === undefined || !isFinite(v)) return "-";
  if (v === 0) return "0";
  let e = Math.floor(Math.log10(Math.abs(v)) / 3) * 3;
  let m = v / Math.pow(10, e);
  if (Math.abs(Number(m.toPrecision(sig))) >= 1000) { e += 3; m /= 1000; }
  const mant = m.toPrecision(sig);
  return e === 0 ? mant : `${mant}e${e}`;
}

function isPressure(meta) {
  return !!meta && meta.quantity === "pressure";
}

/* A value as the page shows it: pressures in engineering notation, the rest to four
 * significant digits, with the units when known. */
function fmtReading(v, meta) {
  if (v === null || v === undefined) return "-";
  if (typeof v === "boolean") return v ? "true" : "false";
  if (typeof v === "string") return v;
  const text = isPressure(meta) ? fmtEng(v) : fmtNumber(v);
  return meta && meta.units ? `${text} ${meta.units}` : text;
}

/* FNV-1a, 32 bits: a stable hash of a series name. */
function hashName(name) {
  let h = 0x811c9dc5;
  for (let i = 0; i < name.length; i++) {
    h ^= name.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h >>> 0;
}

/* A colour that depends on the series name only (never on arrival order): 24 hues
 * 15 degrees apart, two lightnesses. */
function colorFor(name) {
  const h = hashName(name);
  const hue = (h % 24) * 15;
  const light = (h >>> 8) % 2 ? 36 : 46;
  return `hsl(${hue}, 70%, ${light}%)`;
}

function fmtClock(t) {
  const d = new Date(t * 1000);
  return d.toTimeString().slice(0, 8);
}

function fmtAge(s) {
  if (s === null || s === undefined) return "never heard";
  if (s < 60) return `${s.toFixed(1)} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  return `${(s / 3600).toFixed(1)} h ago`;
}
