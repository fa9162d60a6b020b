/* A small time-series plot on the browser's canvas (no CDN, no library; issues 8 and 17).
 *
 *   const p = new TimePlot(canvas);
 *   p.draw(series, t0, t1, {now, limits});
 *
 * series: [{label, color, points: [[t, v], ...], units, log, held, stale, gap}]
 *   - one y axis per unit (the first on the left, the second on the right; the page puts
 *     at most two units in one plot), labelled with the unit;
 *   - log: a logarithmic axis (pressures) when every value on it is > 0;
 *   - held: a value announced on change (a setpoint): drawn in steps and carried to "now"
 *     while fresh; a sampled value's line stops at its last point;
 *   - stale: drawn grey and dashed;
 *   - gap (seconds): a longer silence between two points breaks the line.
 * limits: [{units, value, level}] alarm limits, drawn dashed on their unit's axis.
 */
"use strict";

const GREY = "#a0a7b4";

class TimePlot {
  constructor(canvas) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.axes = [];
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

  /* The axes: one per unit, in order of first appearance, with their ranges. */
  layout(series, t0, t1, limits) {
    const axes = [];
    for (const s of series) {
      const u = s.units || "";
      let ax = axes.find((a) => a.units === u);
      if (!ax) { ax = { units: u, log: true, anyLog: false, lo: Infinity, hi: -Infinity }; axes.push(ax); }
      ax.anyLog = ax.anyLog || !!s.log;
      ax.log = ax.log && !!s.log;
      let last = null;
      for (const [t, v] of s.points) {
        if (t > t1) break;
        if (t >= t0) { ax.lo = Math.min(ax.lo, v); ax.hi = Math.max(ax.hi, v); }
        last = v;
      }
      if (s.held && last !== null) { ax.lo = Math.min(ax.lo, last); ax.hi = Math.max(ax.hi, last); }
    }
    for (const ax of axes) {
      if (ax.log && !(ax.lo > 0)) ax.log = false;  // a zero or negative value: linear
      if (ax.log) {
        let lo = Math.floor(Math.log10(ax.lo)), hi = Math.ceil(Math.log10(ax.hi));
        if (!isFinite(lo) || !isFinite(hi)) { lo = -10; hi = -9; }
        if (hi <= lo) hi = lo + 1;
        ax.lo = lo; ax.hi = hi;
        const step = Math.max(1, Math.ceil((hi - lo) / 6));
        ax.ticks = [];
        for (let d = lo; d <= hi; d += step) ax.ticks.push(Math.pow(10, d));
        ax.labels = ax.ticks.map((v) => v.toExponential(0).replace("e+", "e"));
      } else {
        let lo = ax.lo, hi = ax.hi;
        if (!isFinite(lo)) { lo = 0; hi = 1; }
        if (hi - lo < 1e-12 * Math.max(1, Math.abs(hi))) { const d = Math.abs(hi) * 0.05 || 1; lo -= d; hi += d; }
        const pad = (hi - lo) * 0.08;
        ax.lo = lo - pad; ax.hi = hi + pad;
        ax.ticks = niceTicks(ax.lo, ax.hi, 5);
        // as many decimals as the tick step needs, so close ticks never read the same
        const step = ax.ticks.length > 1 ? ax.ticks[1] - ax.ticks[0] : 1;
        let dec = 0;
        while (dec < 12 && Math.abs(step * 10 ** dec - Math.round(step * 10 ** dec)) > 1e-6 * 10 ** dec) dec++;
        const big = Math.max(Math.abs(ax.lo), Math.abs(ax.hi));
        ax.labels = ax.ticks.map((v) => (big >= 1e6 || (big < 1e-3 && big > 0))
          ? fmtNumber(v, 3) : v.toFixed(dec));
      }
    }
    this.axes = axes.slice(0, 2);
    return this.axes;
  }

  draw(series, t0, t1, opts = {}) {
    const dpr = this.resize();
    const ctx = this.ctx;
    const W = this.canvas.width, H = this.canvas.height;
    const now = opts.now === undefined ? t1 : opts.now;
    ctx.clearRect(0, 0, W, H);
    const axes = this.layout(series, t0, t1, opts.limits || []);
    const font = 11 * dpr;
    ctx.font = `${font}px system-ui, sans-serif`;
    const width = (ax) => ax ? Math.ceil(Math.max(
      ...ax.labels.map((l) => ctx.measureText(l).width)) + 10 * dpr) : 8 * dpr;
    const left = width(axes[0]), right = axes[1] ? width(axes[1]) : 10 * dpr;
    const top = font + 10 * dpr, bottom = font + 10 * dpr;
    const pw = Math.max(10, W - left - right), ph = Math.max(10, H - top - bottom);
    const X = (t) => left + ((t - t0) / (t1 - t0)) * pw;
    const Yof = (ax) => (v) => {
      const f = ax.log ? (Math.log10(Math.max(v, 1e-300)) - ax.lo) / (ax.hi - ax.lo)
                       : (v - ax.lo) / (ax.hi - ax.lo);
      return top + (1 - f) * ph;
    };

    // grid and labels
    ctx.lineWidth = 1;
    axes.forEach((ax, i) => {
      const Y = Yof(ax);
      ctx.fillStyle = "#5d6575";
      ctx.textBaseline = "middle";
      ctx.textAlign = i === 0 ? "right" : "left";
      const x = i === 0 ? left - 4 * dpr : left + pw + 4 * dpr;
      ax.ticks.forEach((v, k) => {
        const y = Math.round(Y(v)) + 0.5;
        if (i === 0) {
          ctx.strokeStyle = "#e2e6ec";
          ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(left + pw, y); ctx.stroke();
        }
        ctx.fillText(ax.labels[k], x, y);
      });
      if (ax.units) {
        // the unit above its axis, inside the canvas whatever its length
        ctx.textBaseline = "top";
        ctx.font = `600 ${font}px system-ui, sans-serif`;
        ctx.fillStyle = "#1d2330";
        ctx.textAlign = i === 0 ? "left" : "right";
        ctx.fillText(ax.units + (ax.log ? " (log)" : ""), i === 0 ? 2 * dpr : W - 2 * dpr, 2 * dpr);
        ctx.font = `${font}px system-ui, sans-serif`;
      }
    });
    ctx.strokeStyle = "#e2e6ec";
    ctx.fillStyle = "#5d6575";
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (const t of timeTicks(t0, t1, Math.max(2, Math.floor(pw / (70 * dpr))))) {
      const x = Math.round(X(t)) + 0.5;
      ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, top + ph); ctx.stroke();
      const label = fmtClock(t), half = ctx.measureText(label).width / 2;
      ctx.fillText(label, Math.min(Math.max(x, left + half), left + pw - half), top + ph + 4 * dpr);
    }
    ctx.strokeStyle = "#9aa3b2";
    ctx.strokeRect(left + 0.5, top + 0.5, pw, ph);

    ctx.save();
    ctx.beginPath();
    ctx.rect(left, top, pw, ph);
    ctx.clip();
    // alarm limits
    for (const lim of opts.limits || []) {
      const ax = axes.find((a) => a.units === (lim.units || ""));
      if (!ax) continue;
      const y = Yof(ax)(lim.value);
      if (y < top || y > top + ph) continue;
      ctx.strokeStyle = lim.level === "critical" ? "#c53030" : "#c27803";
      ctx.setLineDash([6 * dpr, 4 * dpr]);
      ctx.lineWidth = 1.5 * dpr;
      ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(left + pw, y); ctx.stroke();
      ctx.setLineDash([]);
    }
    // series
    ctx.lineWidth = 2 * dpr;
    for (const s of series) {
      const ax = axes.find((a) => a.units === (s.units || ""));
      if (!ax) continue;
      const Y = Yof(ax);
      ctx.strokeStyle = s.stale ? GREY : s.color;
      ctx.setLineDash(s.stale ? [4 * dpr, 3 * dpr] : []);
      ctx.beginPath();
      let lastT = null, lastY = null;
      for (const [t, v] of s.points) {
        if (t < t0 - 60) continue;
        const x = X(t), y = Y(v);
        if (lastT === null || (s.gap > 0 && t - lastT > s.gap)) {
          ctx.moveTo(x, y);  // first point, or after a silence: the line does not bridge it
        } else {
          if (s.held) ctx.lineTo(x, lastY);  // a held value changes in a step
          ctx.lineTo(x, y);
        }
        if (s.points.length === 1 || (s.gap > 0 && lastT !== null && t - lastT > s.gap)) {
          ctx.arc(x, y, 1.5 * dpr, 0, 2 * Math.PI);  // a lone point stays visible
          ctx.moveTo(x, y);
        }
        lastT = t; lastY = y;
      }
      // Only a held value that is still current is carried to "now"; a sample's line
      // stops where the data stopped.
      if (s.held && !s.stale && lastY !== null) ctx.lineTo(X(Math.min(now, t1)), lastY);
      ctx.stroke();
    }
    ctx.setLineDash([]);
    ctx.restore();
  }
}

function niceTicks(lo, hi, n) {
  const span = hi - lo;
  const raw = span / Math.max(1, n);
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => span / s <= n) || 10 * mag;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) {
    out.push(Math.abs(v) < step * 1e-9 ? 0 : v);
  }
  return out;
}

function timeTicks(t0, t1, n) {
  const steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200];
  const step = steps.find((s) => (t1 - t0) / s <= n) || 14400;
  const out = [];
  for (let t = Math.ceil(t0 / step) * step; t <= t1; t += step) out.push(t);
  return out;
}
