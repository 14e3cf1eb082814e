// The coordinator's live dashboard: polls /api/status, /api/curves and
// /api/metrics every 2 s and draws the run. No libraries and nothing
// fetched from elsewhere (clusters are offline): the charts are inline SVG
// drawn here. The server downsamples the curves to the chart's width in
// pixels (first, last, min and max of each pixel column: the same pixels
// as every point, spikes included), so a run of a million steps costs the
// page a few thousand points.
//
// DOM contract (tests/dashboard.rs reads it): #loss-chart and #speed-chart
// each hold one <polyline class="curve"> through the curve's points as the
// server sent them (every step when there are no more steps than pixel
// columns), and carry data-points="<step rows the curve stands for>" and
// data-drawn="<points of the polyline>"; #latest-grid gets
// data-loaded="true" and data-natural-width once its image has loaded;
// <body> carries data-step and data-phase of the last status.
"use strict";

const POLL_MS = 2000;
// A fetch that hangs longer than this counts as a lost connection.
const FETCH_TIMEOUT_MS = 10000;
const SVG_NS = "http://www.w3.org/2000/svg";
// The charts' margins in viewBox units (axes and labels).
const MARGIN = { l: 62, r: 14, t: 12, b: 30 };
const MAX_COLUMNS = 4096;

// The last /api/curves answer, and what it was asked for and holds: a
// new one is drawn only when that changed.
let curves = null;
let curvesKey = null;
let chartsDirty = true;
let gridUrl = null;
const rendered = {}; // table id -> JSON of what it shows

// ---- fetching ----------------------------------------------------------

async function getJson(url) {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), FETCH_TIMEOUT_MS);
  try {
    const r = await fetch(url, { cache: "no-store", signal: ctl.signal });
    if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
    return await r.json();
  } finally {
    clearTimeout(timer);
  }
}

// Pixel columns of the charts' plot area on this screen.
function plotColumns() {
  const svg = byId("loss-chart");
  const vb = svg.viewBox.baseVal;
  const width = svg.getBoundingClientRect().width || vb.width;
  const px = ((vb.width - MARGIN.l - MARGIN.r) / vb.width) * width * (window.devicePixelRatio || 1);
  return Math.max(16, Math.min(MAX_COLUMNS, Math.round(px)));
}

// Fetches the curves for this width; marks the charts for redrawing when
// they changed (a new step, a restart that superseded rows, a resize).
async function pullCurves() {
  const columns = plotColumns();
  const c = await getJson(`/api/curves?columns=${columns}`);
  const key = `${c.rows}|${c.first_step}|${c.last_step}|${columns}`;
  if (key !== curvesKey) {
    curves = c;
    curvesKey = key;
    chartsDirty = true;
  }
}

// The evaluations (and no step rows).
async function pullEvals() {
  const m = await getJson("/api/metrics?limit=0");
  return Array.isArray(m.evals) ? m.evals : [];
}

async function poll() {
  try {
    const status = await getJson("/api/status");
    renderStatus(status);
    await pullCurves();
    const evals = await pullEvals();
    if (chartsDirty) {
      drawCharts();
      chartsDirty = false;
    }
    renderEvals(evals);
    setConnected(true);
  } catch (e) {
    setConnected(false, e);
  }
  setTimeout(poll, POLL_MS);
}

function setConnected(ok, err) {
  const conn = byId("conn");
  document.body.classList.toggle("offline", !ok);
  if (ok) {
    conn.hidden = true;
    byId("updated").textContent = new Date().toLocaleTimeString();
  } else {
    if (conn.hidden) conn.dataset.since = new Date().toLocaleTimeString();
    conn.hidden = false;
    conn.textContent = `connection lost, retrying (since ${conn.dataset.since})`;
    conn.title = String(err && err.message ? err.message : err);
  }
}

// ---- the header and tables ----------------------------------------------

function renderStatus(s) {
  document.body.dataset.step = String(s.step ?? 0);
  document.body.dataset.phase = s.phase || "";

  const run = String(s.run || "");
  const short = run.replace(/\/+$/, "").split("/").pop() || run || "DDPM run";
  byId("run").textContent = short;
  byId("run").title = run;
  byId("run-url").textContent = run;
  document.title = `${short}: ${s.phase || "?"} step ${s.step ?? 0}`;
  const phase = byId("phase");
  phase.textContent = s.phase || "unknown";
  phase.className = `phase phase-${s.phase || "unknown"}`;

  const step = s.step ?? 0;
  const total = s.total_steps ?? 0;
  const frac = total > 0 ? Math.min(1, step / total) : 0;
  byId("progress-bar").style.width = `${(frac * 100).toFixed(2)}%`;
  byId("progress-text").textContent =
    total > 0 ? `step ${step} / ${total} (${(frac * 100).toFixed(1)}%)` : `step ${step}`;

  byId("loss").textContent = fmtSig(s.loss, 4);
  byId("ips").textContent = fmtFixed(s.images_per_s, 1);
  byId("elapsed").textContent = fmtDuration(s.elapsed_s);
  const finished = s.phase === "serving" || s.phase === "done";
  byId("eta").textContent = finished ? "finished" : num(s.eta_s) !== null ? fmtDuration(s.eta_s) : "–";
  const skipped = byId("skipped");
  skipped.textContent = String(s.skipped_steps ?? 0);
  skipped.classList.toggle("warn", (s.skipped_steps ?? 0) > 0);
  byId("last-ckpt").textContent = s.last_checkpoint_step ? `step ${s.last_checkpoint_step}` : "none yet";
  byId("unsaved").textContent = String(s.unsaved_steps ?? 0);
  byId("resumed").textContent = s.resumed_from ? `step ${s.resumed_from}` : "new run";

  const err = byId("ckpt-error");
  if (s.checkpoint_error) {
    err.hidden = false;
    err.textContent = `Checkpoint error: ${s.checkpoint_error}`;
  } else {
    err.hidden = true;
    err.textContent = "";
  }

  renderGrid(s.latest_grid);
  renderTable("workers", s.workers || [], (w) => [
    td(w.id, "num"),
    td(w.name),
    td(w.device),
    td(w.role),
    td(w.state, `state state-${w.state}`),
    td(w.last_step, "num"),
    td(fmtFixed(w.compute_s, 3), "num"),
    td(fmtFixed(w.images_per_s, 1), "num"),
    // Heartbeats come every few seconds: longer is worth a look.
    td(num(w.silent_s) !== null && w.silent_s >= 10 ? fmtDuration(w.silent_s) : "", w.silent_s >= 10 ? "num warn" : "num"),
  ], "no workers connected");
  const nw = (s.workers || []).length;
  byId("workers-count").textContent = num(s.workers_expected) !== null ? `(${nw} of ${s.workers_expected} expected)` : `(${nw})`;
  // Newest first: the ones a person looks for.
  renderTable("jobs", (s.jobs || []).slice().reverse(), (j) => [
    td(j.id, "num"),
    td(j.kind),
    stateCell(j.state, j.error),
    el("td", {}, progressBar(j.done, j.total, j.state)),
    td(fmtDuration(j.age_s), "num"),
    el("td", {}, j.grid_url ? el("a", { href: j.grid_url, target: "_blank" }, "grid") : ""),
  ], "no jobs");
  renderTable("checkpoints", (s.checkpoints || []).slice().reverse(), (c) => [
    td(c.step, "num"),
    td(c.location, "loc"),
  ], "no checkpoint yet");
}

function renderGrid(g) {
  const img = byId("latest-grid");
  const label = byId("latest-grid-label");
  if (!g || !g.url) {
    img.hidden = true;
    if (gridUrl !== null) img.removeAttribute("src");
    gridUrl = null;
    img.dataset.loaded = "false";
    label.textContent = "no sample grid yet";
    return;
  }
  label.textContent = g.label || g.url;
  if (g.url === gridUrl) return;
  gridUrl = g.url;
  img.dataset.loaded = "false";
  img.onload = () => {
    img.hidden = false;
    img.dataset.loaded = "true";
    img.dataset.naturalWidth = String(img.naturalWidth);
  };
  img.onerror = () => {
    img.dataset.loaded = "false";
    label.textContent = `${g.label || g.url} (could not be loaded; retrying)`;
    gridUrl = null; // the next poll tries again
  };
  img.src = g.url;
}

function renderEvals(evals) {
  // Newest first.
  renderTable("evals", evals.slice().reverse(), (row) => {
    const e = row.eval || {};
    const fid = e.fid && num(e.fid.value);
    const is = e.inception_score;
    const isText = is && num(is.mean) !== null ? `${fmtFixed(is.mean, 2)} ± ${fmtFixed(is.std, 2)}` : "–";
    const grid = e.grid_url
      ? el("a", { href: e.grid_url, target: "_blank" }, el("img", { src: e.grid_url, class: "thumb", alt: `grid of step ${row.step}`, loading: "lazy" }))
      : "";
    return [
      td(row.step, "num"),
      td(e.job_id ?? "–"),
      stateCell(e.state, e.error),
      td(fid !== null && fid !== undefined ? fmtFixed(fid, 2) : "–", "num"),
      td(isText, "num"),
      el("td", {}, grid),
    ];
  }, "no evaluation yet");
}

// Replaces the rows of table `id` when what they show changed (so images
// in them are not reloaded and selections survive the polls).
function renderTable(id, items, cells, empty) {
  const json = JSON.stringify(items);
  if (rendered[id] === json) return;
  rendered[id] = json;
  const body = byId(id).tBodies[0];
  const cols = byId(id).tHead.rows[0].cells.length;
  if (!items.length) {
    body.replaceChildren(el("tr", { class: "empty" }, el("td", { colspan: cols }, empty)));
    return;
  }
  body.replaceChildren(...items.map((it) => el("tr", {}, ...cells(it))));
}

function stateCell(state, error) {
  const cell = td(state || "?", `state state-${state}`);
  if (error) {
    cell.title = error;
    cell.append(el("div", { class: "cell-error" }, error));
  }
  return cell;
}

function progressBar(done, total, state) {
  const frac = total > 0 ? Math.min(1, (done || 0) / total) : state === "done" ? 1 : 0;
  return el("div", { class: "jobprogress" },
    el("div", { class: `jobbar state-${state}` }, el("div", { style: `width:${(frac * 100).toFixed(1)}%` })),
    el("span", {}, `${done ?? 0}/${total ?? 0}`));
}

// ---- charts ---------------------------------------------------------------

function drawCharts() {
  const empty = { points: [], mean: [] };
  const rows = curves ? curves.rows : 0;
  drawChart(byId("loss-chart"), curves ? curves.loss : empty, rows, { log: true, smooth: true, unit: "loss" });
  drawChart(byId("speed-chart"), curves ? curves.images_per_s : empty, rows, { log: false, smooth: false, unit: "images/s" });
}

// Redraws at the new width once a resize has settled.
let resizeTimer = null;
window.addEventListener("resize", () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(() => {
    curvesKey = null;
    pullCurves().then(() => {
      if (chartsDirty) {
        drawCharts();
        chartsDirty = false;
      }
    }, () => {});
  }, 300);
});

// Draws `curve` (its points [step, value|null], and its per-column means
// [step, mean]) standing for `rows` step rows into `svg` (its viewBox gives
// the size): axes with ticks and labels, the curve, the means as a smooth
// line on request, and a read-out of the point under the pointer.
function drawChart(svg, curve, rows, opt) {
  const started = performance.now();
  const vb = svg.viewBox.baseVal;
  const W = vb.width, H = vb.height;
  const m = MARGIN;
  const pw = W - m.l - m.r, ph = H - m.t - m.b;
  const pts = Array.isArray(curve.points) ? curve.points : [];
  const xs = pts.map((p) => p[0]);
  const ys = pts.map((p) => num(p[1]));
  const n = xs.length;

  const finite = ys.filter((v) => v !== null && (!opt.log || v > 0));
  let lo, hi;
  if (finite.length) {
    lo = Math.min(...chunkedMinMax(finite, Math.min));
    hi = Math.max(...chunkedMinMax(finite, Math.max));
  } else {
    [lo, hi] = opt.log ? [0.01, 1] : [0, 1];
  }
  if (opt.log) {
    if (lo === hi) { lo /= 1.5; hi *= 1.5; }
    const pad = (Math.log10(hi) - Math.log10(lo)) * 0.05;
    lo = 10 ** (Math.log10(lo) - pad);
    hi = 10 ** (Math.log10(hi) + pad);
  } else {
    lo = Math.min(0, lo);
    hi = hi > lo ? hi * 1.08 : lo + 1;
  }
  const x0 = n ? xs[0] : 0, x1 = n ? xs[n - 1] : 1;
  const [dx0, dx1] = x0 === x1 ? [x0 - 1, x1 + 1] : [x0, x1];
  const sx = (x) => m.l + ((x - dx0) / (dx1 - dx0)) * pw;
  const ly = opt.log ? (v) => Math.log10(v) : (v) => v;
  const [l0, l1] = [ly(lo), ly(hi)];
  // A value the scale cannot show (none, or not positive on a log axis)
  // sits on the top edge: a skipped step shows as a spike.
  const sy = (v) => (v === null || (opt.log && v <= 0) ? m.t : m.t + ph - ((ly(v) - l0) / (l1 - l0)) * ph);

  const kids = [];
  // Grid lines and tick labels.
  const yt = !n ? [] : opt.log ? logTicks(lo, hi) : niceTicks(lo, hi, 5);
  for (const v of yt) {
    const y = sy(v);
    kids.push(svgEl("line", { class: "gridline", x1: m.l, x2: m.l + pw, y1: y, y2: y }));
    kids.push(svgEl("text", { class: "tick", x: m.l - 6, y: y + 4, "text-anchor": "end" }, fmtTick(v)));
  }
  const xt = !n ? [] : niceTicks(dx0, dx1, 7).filter((v) => Number.isInteger(v));
  for (const v of xt) {
    const x = sx(v);
    kids.push(svgEl("line", { class: "gridline", x1: x, x2: x, y1: m.t, y2: m.t + ph }));
    kids.push(svgEl("text", { class: "tick", x, y: m.t + ph + 18, "text-anchor": "middle" }, fmtCompact(v)));
  }
  kids.push(svgEl("rect", { class: "frame", x: m.l, y: m.t, width: pw, height: ph }));
  kids.push(svgEl("text", { class: "axis-label", x: m.l - 6, y: m.t + ph + 18, "text-anchor": "end" }, "step"));

  const line = new Array(n);
  for (let i = 0; i < n; i++) line[i] = `${sx(xs[i]).toFixed(1)},${sy(ys[i]).toFixed(1)}`;
  kids.push(svgEl("polyline", { class: "curve", points: line.join(" ") }));
  const means = (Array.isArray(curve.mean) ? curve.mean : []).filter((p) => num(p[1]) !== null && (!opt.log || p[1] > 0));
  if (opt.smooth && means.length >= 10) {
    const avg = movingAverage(means.map((p) => p[1]), Math.max(3, Math.round(means.length / 150)));
    const sp = [];
    for (let i = 0; i < means.length; i++) if (avg[i] !== null) sp.push(`${sx(means[i][0]).toFixed(1)},${sy(avg[i]).toFixed(1)}`);
    kids.push(svgEl("polyline", { class: "smooth", points: sp.join(" ") }));
  }
  if (n) kids.push(svgEl("circle", { class: "last", cx: sx(xs[n - 1]), cy: sy(ys[n - 1]), r: 3 }));
  else kids.push(svgEl("text", { class: "nodata", x: m.l + pw / 2, y: m.t + ph / 2, "text-anchor": "middle" }, "no steps yet"));

  const cursor = svgEl("line", { class: "cursor", x1: 0, x2: 0, y1: m.t, y2: m.t + ph, visibility: "hidden" });
  const readout = svgEl("text", { class: "readout", x: m.l + 6, y: m.t + 14 }, "");
  kids.push(cursor, readout);
  svg.replaceChildren(...kids);
  svg.dataset.points = String(rows);
  svg.dataset.drawn = String(n);
  svg.dataset.drawMs = (performance.now() - started).toFixed(1);

  svg.onmousemove = (ev) => {
    if (!n) return;
    const p = svg.createSVGPoint();
    p.x = ev.clientX; p.y = ev.clientY;
    const ctm = svg.getScreenCTM();
    if (!ctm) return;
    const at = p.matrixTransform(ctm.inverse());
    const i = nearest(xs, dx0 + ((at.x - m.l) / pw) * (dx1 - dx0));
    const x = sx(xs[i]);
    cursor.setAttribute("x1", x); cursor.setAttribute("x2", x);
    cursor.setAttribute("visibility", "visible");
    readout.textContent = `step ${xs[i]}: ${opt.unit} ${ys[i] === null ? "none" : fmtSig(ys[i], 4)}`;
  };
  svg.onmouseleave = () => {
    cursor.setAttribute("visibility", "hidden");
    readout.textContent = "";
  };
}

// Math.min(...a) overflows the stack on long arrays: reduce in chunks.
function chunkedMinMax(a, f) {
  const out = [];
  for (let i = 0; i < a.length; i += 10000) out.push(f(...a.slice(i, i + 10000)));
  return out;
}

// Centred moving average over about `window` rows (fewer at the ends),
// skipping missing values: no lag behind the curve, unlike an EMA.
function movingAverage(ys, window) {
  const n = ys.length, half = Math.max(1, Math.floor(window / 2));
  const sum = new Float64Array(n + 1), cnt = new Uint32Array(n + 1);
  for (let i = 0; i < n; i++) {
    const ok = ys[i] !== null && ys[i] > 0;
    sum[i + 1] = sum[i] + (ok ? ys[i] : 0);
    cnt[i + 1] = cnt[i] + (ok ? 1 : 0);
  }
  const out = new Array(n);
  for (let i = 0; i < n; i++) {
    const a = Math.max(0, i - half), b = Math.min(n, i + half + 1);
    const c = cnt[b] - cnt[a];
    out[i] = c ? (sum[b] - sum[a]) / c : null;
  }
  return out;
}

// Index of the x nearest to `x` in the ascending array xs.
function nearest(xs, x) {
  let lo = 0, hi = xs.length - 1;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (xs[mid] < x) lo = mid; else hi = mid;
  }
  return Math.abs(xs[lo] - x) <= Math.abs(xs[hi] - x) ? lo : hi;
}

// About `count` round ticks (1, 2 or 5 times a power of ten) in [lo, hi].
function niceTicks(lo, hi, count) {
  const span = hi - lo;
  if (!(span > 0)) return [lo];
  const raw = span / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((k) => k * mag).find((s) => s >= raw * 0.75);
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

// Ticks for a log axis: powers of ten, with 2 and 5 between them when the
// range is short, and round linear ticks when it is under a decade's worth.
function logTicks(lo, hi) {
  const out = [];
  for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) {
    for (const k of [1, 2, 5]) {
      const v = Number((k * 10 ** e).toPrecision(12));
      if (v >= lo && v <= hi) out.push(v);
    }
  }
  if (out.length > 8) return out.filter((v) => Math.abs(Math.log10(v) % 1) < 1e-9);
  if (out.length < 3) return niceTicks(lo, hi, 4).filter((v) => v > 0);
  return out;
}

// ---- formatting and DOM helpers ---------------------------------------------

function num(v) {
  return typeof v === "number" && Number.isFinite(v) ? v : null;
}

function fmtSig(v, digits) {
  v = num(v);
  return v === null ? "–" : String(Number(v.toPrecision(digits)));
}

function fmtFixed(v, digits) {
  v = num(v);
  return v === null ? "–" : v.toFixed(digits);
}

function fmtTick(v) {
  return Math.abs(v) >= 1000 ? fmtCompact(v) : String(Number(v.toPrecision(3)));
}

function fmtCompact(v) {
  const a = Math.abs(v);
  if (a >= 1e6) return `${Number((v / 1e6).toPrecision(3))}M`;
  if (a >= 1e4) return `${Number((v / 1e3).toPrecision(3))}k`;
  return String(v);
}

function fmtDuration(s) {
  s = num(s);
  if (s === null) return "–";
  if (s < 60) return `${s.toFixed(1)} s`;
  const t = Math.round(s);
  const d = Math.floor(t / 86400), h = Math.floor((t % 86400) / 3600), m = Math.floor((t % 3600) / 60), sec = t % 60;
  const two = (x) => String(x).padStart(2, "0");
  if (d) return `${d}d ${two(h)}h ${two(m)}m`;
  if (h) return `${h}h ${two(m)}m`;
  return `${m}m ${two(sec)}s`;
}

function byId(id) {
  return document.getElementById(id);
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const c of children) e.append(c instanceof Node ? c : String(c ?? ""));
  return e;
}

function td(text, cls) {
  return el("td", cls ? { class: cls } : {}, text ?? "–");
}

function svgEl(tag, attrs, text) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

drawCharts();
poll();
