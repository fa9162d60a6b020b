/* A small time-series plot on the browser's canvas (issue 8 item 4: no CDN, no library).
 *
 *   const p = new TimePlot(canvas);
 *   p.draw(seriesList, t0, t1);   // seriesList: [{label, color, points: [[t, v], ...]}]
 *
 * Times are Unix seconds; the x axis shows wall-clock HH:MM:SS ticks. The y range covers
 * every visible point with a little margin; a flat series gets a +-1 band.
 */
"use strict";

const PLOT_COLORS = ["#c53030", "#2b6cb0", "#2f855a", "#b7791f", "#6b46c1", "#319795",
                     "#d53f8c", "#4a5568"];

class TimePlot {
  constructor(canvas) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
  }

  resize() {
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(50, Math.round(this.canvas.clientWidth * dpr));
    const h = Math.max(50, Math.round(this.canvas.clientHeight * dpr));
    if (this.canvas.width !== w || this.canvas.height !== h) {
      this.canvas.width = w;
      this.canvas.height = h;
    }
    return dpr;
  }

  draw(series, t0, t1) {
    const dpr = this.resize();
    const ctx = this.ctx;
    const W = this.canvas.width, H = this.canvas.height;
    ctx.clearRect(0, 0, W, H);
    let lo = Infinity, hi = -Infinity;
    for (const s of series) {
      for (const [t, v] of s.points) {
        if (t < t0 || t > t1) continue;
        if (v < lo) lo = v;
        if (v > hi) hi = v;
      }
    }
    if (!isFinite(lo)) { lo = 0; hi = 1; }
    if (hi - lo < 1e-12) { lo -= 1; hi += 1; }
    const pad = (hi - lo) * 0.08;
    lo -= pad; hi += pad;
    const font = 11 * dpr;
    ctx.font = `${font}px system-ui, sans-serif`;
    const yTicks = niceTicks(lo, hi, 5);
    const labels = yTicks.map(fmtNumber);
    const left = Math.ceil(Math.max(...labels.map((l) => ctx.measureText(l).width)) + 10 * dpr);
    const right = 8 * dpr, top = 8 * dpr, bottom = font + 10 * dpr;
    const pw = Math.max(10, W - left - right), ph = Math.max(10, H - top - bottom);
    const X = (t) => left + ((t - t0) / (t1 - t0)) * pw;
    const Y = (v) => top + (1 - (v - lo) / (hi - lo)) * ph;

    ctx.strokeStyle = "#e2e6ec";
    ctx.fillStyle = "#5d6575";
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    yTicks.forEach((v, i) => {
      const y = Math.round(Y(v)) + 0.5;
      ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(left + pw, y); ctx.stroke();
      ctx.fillText(labels[i], left - 4 * dpr, y);
    });
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (const t of timeTicks(t0, t1, Math.max(2, Math.floor(pw / (70 * dpr))))) {
      const x = Math.round(X(t)) + 0.5;
      ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, top + ph); ctx.stroke();
      const label = fmtClock(t), half = ctx.measureText(label).width / 2;
      ctx.fillText(label, Math.min(Math.max(x, half), W - half), top + ph + 4 * dpr);
    }
    ctx.strokeStyle = "#9aa3b2";
    ctx.strokeRect(left + 0.5, top + 0.5, pw, ph);

    ctx.save();
    ctx.beginPath();
    ctx.rect(left, top, pw, ph);
    ctx.clip();
    ctx.lineWidth = 2 * dpr;
    for (const s of series) {
      ctx.strokeStyle = s.color;
      ctx.beginPath();
      let started = false, last = null;
      for (const [t, v] of s.points) {
        if (t < t0 - 60) continue;
        const x = X(t), y = Y(v);
        if (!started) { ctx.moveTo(x, y); started = true; } else {
          // Step to the new value: setpoints and valve-driven pressures change in steps.
          if (s.step && last !== null) ctx.lineTo(x, last);
          ctx.lineTo(x, y);
        }
        last = y;
      }
      // Carry the last value to "now" so a quiet signal is still visible.
      if (started && last !== null) ctx.lineTo(X(t1), last);
      ctx.stroke();
    }
    ctx.restore();
  }
}

function niceTicks(lo, hi, n) {
  const span = hi - lo;
  const raw = span / Math.max(1, n);
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => span / s <= n) || 10 * mag;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(v);
  return out;
}

function timeTicks(t0, t1, n) {
  const steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200];
  const step = steps.find((s) => (t1 - t0) / s <= n) || 14400;
  const out = [];
  for (let t = Math.ceil(t0 / step) * step; t <= t1; t += step) out.push(t);
  return out;
}

function fmtNumber(v) {
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e6)) return v.toExponential(2);
  return String(Number(v.toPrecision(6)));
}

function fmtClock(t) {
  const d = new Date(t * 1000);
  return d.toTimeString().slice(0, 8);
}
