// Charts: uPlot line charts that re-query the server's downsampled series on zoom (drag or wheel)
// and pan (shift+wheel), a log-scale toggle, and a canvas heat map of gradient histograms.
import { esc } from "./lib.js";
import uPlot from "./vendor/uplot-1.6.32/uPlot.esm.js";

const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777",
                "#4b5563", "#65a30d", "#7c3aed", "#0d9488"];
export const color = (i) => COLORS[i % COLORS.length];

// Align several {x:[], y:[]} series on the union of their x values (uPlot wants one x column).
export function align(series) {
  const xs = [...new Set(series.flatMap((s) => s.x))].sort((a, b) => a - b);
  const index = new Map(xs.map((x, i) => [x, i]));
  const cols = series.map((s) => {
    const col = new Array(xs.length).fill(null);
    s.x.forEach((x, i) => (col[index.get(x)] = s.y[i]));
    return col;
  });
  return [xs, ...cols];
}

// uPlot's options for `series` (each {label, band?}) and dashed `extraLines`: a band's bounds take the
// colour of the mean line before them; {band: "upper"} then {band: "lower"} are filled between.
function plotOptions(series, extraLines, { xLabel, xRange, points, log, width }, onZoom) {
  let ci = -1;
  const line = (s) => ({ label: s.label, stroke: s.band ? color(ci) + "88" : color(++ci), width: s.band ? 0.5 : 1.5,
    spanGaps: true, points: { show: points && !s.band } });
  const dashed = (l) => ({ label: l.label, stroke: "#6b7280", dash: [6, 4], width: 1.5, spanGaps: true });
  const opts = {
    width, height: 220,
    scales: { x: { time: false, ...(xRange ? { range: xRange } : {}) }, y: log ? { distr: 3 } : {} },
    axes: [{ label: xLabel }, {}],
    legend: { live: true },
    cursor: { drag: { x: true, y: false } },
    series: [{ label: xLabel }, ...series.map(line), ...extraLines.map(dashed)],
    hooks: { setSelect: [(u) => onZoom(u)] },
  };
  const bands = series.flatMap((s, i) => (s.band === "upper" ? [{ series: [i + 1, i + 2] }] : []));
  opts.bands = bands.map((b) => ({ ...b, fill: opts.series[b.series[0]].stroke.slice(0, 7) + "33" }));
  return opts;
}

// The x window after a wheel step: shift+wheel (or a horizontal wheel) pans, a wheel zooms around the cursor.
function wheelWindow(e, min, max, cursorX) {
  if (e.shiftKey || Math.abs(e.deltaX) > Math.abs(e.deltaY)) {
    const d = (max - min) * 0.15 * Math.sign(e.deltaX || e.deltaY);
    return [min + d, max + d];
  }
  const x = cursorX();
  const f = e.deltaY < 0 ? 0.75 : 1 / 0.75;
  return [x - (x - min) * f, x + (max - x) * f];
}

// Loads of a chart's x window, one at a time, the latest window winning: a burst of wheel steps never
// queues stale requests on the server, and an old answer never overwrites a newer window.
function latestWindow(el, load, show) {
  let pending = null, inflight = false, want = null;
  const fetchWindow = async () => {
    if (inflight) return; // the running load takes `want` when it is done
    inflight = true;
    el.dataset.loading = "1";
    try {
      while (want) {
        const [lo, hi] = want;
        want = null;
        const series = await load([lo, hi]);
        if (!want) show(series, lo, hi);
      }
    } finally {
      inflight = false;
      delete el.dataset.loading;
    }
  };
  return (lo, hi) => {
    clearTimeout(pending);
    want = [lo, hi];
    el.dataset.loading = "1";
    pending = setTimeout(fetchWindow, 150);
  };
}

// A line chart in `el`. `load(range)` returns [{label, x, y}] for an x range (null = all);
// it is called again on zoom so the server sends a finer series for the visible window.
export function lineChart(el, { title, load, xLabel = "step", log = false, points = false, extraLines = [], xRange = null }) {
  el.classList.add("chart");
  el.innerHTML = `<div class="chart-head"><span>${esc(title)}</span>
    <label><input type="checkbox" class="log" ${log ? "checked" : ""}> log</label></div><div class="plot"></div>`;
  const plotEl = el.querySelector(".plot");
  let plot = null;
  let seriesCache = [];

  const render = (series) => {
    seriesCache = series;
    const flat = (l) => ({ ...l, x: series[0]?.x ?? [], y: (series[0]?.x ?? []).map(() => l.value) });
    const data = align([...series, ...extraLines.map(flat)]);
    const look = { xLabel, xRange, points, log: el.querySelector(".log").checked, width: Math.max(300, plotEl.clientWidth || 480) };
    const opts = plotOptions(series, extraLines, look, onZoom);
    if (plot) plot.destroy();
    plot = new uPlot(opts, data, plotEl);
    plot.over.addEventListener("wheel", onWheel, { passive: false });
    const n = series.reduce((a, s) => a + s.y.filter((v) => v !== null).length, 0);
    el.dataset.points = String(n);
    el.dataset.series = String(series.length);
    el.dataset.bands = String(opts.bands.length);
  };

  const onZoom = async (u) => {
    if (u.select.width < 5) return;
    const lo = u.posToVal(u.select.left, "x");
    const hi = u.posToVal(u.select.left + u.select.width, "x");
    render(await load([lo, hi]));
    el.dataset.zoomed = "1";
  };

  // Wheel zooms around the cursor, shift+wheel (or a horizontal wheel) pans; the server is then
  // asked again for the visible window, so detail appears as you zoom in.
  const ask = latestWindow(el, load, (series, lo, hi) => { render(series); plot.setScale("x", { min: lo, max: hi }); });
  const onWheel = (e) => {
    e.preventDefault();
    const { min, max } = plot.scales.x;
    if (min == null || max == null) return;
    const [lo, hi] = wheelWindow(e, min, max, () => plot.posToVal(e.offsetX, "x"));
    plot.setScale("x", { min: lo, max: hi });
    el.dataset.zoomed = "1";
    el.dataset.range = `${lo.toFixed(3)},${hi.toFixed(3)}`;
    ask(lo, hi);
  };

  el.querySelector(".log").addEventListener("change", () => render(seriesCache));
  el.addEventListener("dblclick", async () => { delete el.dataset.zoomed; render(await load(null)); });
  const refresh = async () => { if (!el.dataset.zoomed) render(await load(null)); };
  return { refresh, render };
}

// Histograms over time: one column per record, one row per bin, colour = log count.
export function heatmap(el, { title, steps, edges, counts }) {
  el.classList.add("chart");
  el.innerHTML = `<div class="chart-head"><span>${esc(title)}</span><span class="muted">bins ${edges[0]?.toFixed(2)} … ${edges.at(-1)?.toFixed(2)}</span></div>`;
  const canvas = document.createElement("canvas");
  canvas.width = Math.max(1, counts.length);
  canvas.height = Math.max(1, edges.length - 1);
  canvas.className = "heat";
  el.append(canvas);
  const ctx = canvas.getContext("2d");
  const max = Math.max(1, ...counts.flat());
  counts.forEach((col, x) =>
    col.forEach((c, b) => {
      const t = Math.log1p(c) / Math.log1p(max);
      ctx.fillStyle = `rgb(${Math.round(255 - 220 * t)}, ${Math.round(255 - 180 * t)}, ${Math.round(255 - 60 * t)})`;
      ctx.fillRect(x, canvas.height - 1 - b, 1, 1);
    }));
  el.dataset.points = String(counts.length);
  const foot = document.createElement("div");
  foot.className = "muted";
  foot.textContent = `steps ${steps[0] ?? "-"} … ${steps.at(-1) ?? "-"}`;
  el.append(foot);
}
