// The compare page: overlays, mean ± std bands grouped by a knob, final values, robustness, CSV.
import { api, qs } from "../api.js";
import { lineChart } from "../charts.js";
import { app, esc, getPath, h, meanStd, metricsLoader, pct } from "../lib.js";

// One mean curve per value of knob `g`, with the mean ± std band over the runs that share it.
function groupBands(runs, per, g) {
  const groups = new Map();
  runs.forEach((r, i) => {
    if (!per[i]) return;
    const k = String(getPath(r.config, g) ?? getPath(r, g));
    groups.set(k, [...(groups.get(k) ?? []), per[i]]);
  });
  return [...groups].flatMap(([k, list]) => {
    const xs = [...new Set(list.flatMap((s) => s.x))].sort((a, b) => a - b);
    const maps = list.map((s) => new Map(s.x.map((x, j) => [x, s.y[j]])));
    const stats = xs.map((x) => meanStd(maps.map((m) => m.get(x))));
    const mean = stats.map((s) => s.mean), sd = stats.map((s) => s.std);
    return [{ label: `${g}=${k} (${list.length} runs)`, x: xs, y: mean },
      { label: "+std", x: xs, y: mean.map((m, i) => m + sd[i]), band: "upper" },
      { label: "-std", x: xs, y: mean.map((m, i) => m - sd[i]), band: "lower" }];
  });
}

const withCi = (v, c, n) => (v == null ? "–" : `${pct(v)} <span class="muted">[${pct(c?.[0])}, ${pct(c?.[1])}] n=${n}</span>`);

// Per run: clean, AutoAttack and worst case at the standard eps, and the gradient probe, each with its
// interval; per group of runs (e.g. seeds of one method): mean ± std over the runs.
function robustnessTable(runs, evs, g) {
  const cols = ["clean", "autoattack", "worst_case", "probe"];
  const cells = evs.map((ev) => {
    const s = ev.summary;
    if (!s) return null;
    const at = (a) => ev.rows.find((r) => r.attack === a && r.norm === "linf" && Math.abs(r.eps - s.std_eps) < 1e-12);
    return {
      clean: { v: s.clean_accuracy, c: s.clean_ci, n: s.n },
      autoattack: at("autoattack") && { v: at("autoattack").accuracy, c: at("autoattack").ci, n: at("autoattack").n },
      worst_case: at("worst_case") && { v: at("worst_case").accuracy, c: at("worst_case").ci, n: at("worst_case").n },
      probe: s.probe && { v: s.probe.accuracy, c: s.probe.ci, n: s.probe.n_test },
      eps: s.std_eps, failed: ev.checks.filter((c) => !c.passed).map((c) => c.name),
    };
  });
  const el = document.querySelector("#robtable");
  if (!cells.some(Boolean)) { el.innerHTML = '<tr><td class="muted">No robustness panel on these runs.</td></tr>'; return; }
  const groups = new Map();
  runs.forEach((r, i) => { if (!cells[i]) return; const k = String(g ? getPath(r.config, g) ?? getPath(r, g) : "all runs"); groups.set(k, [...(groups.get(k) ?? []), cells[i]]); });
  const head = `<tr><th>run</th><th>eps</th>${cols.map((c) => `<th>${c}</th>`).join("")}<th>failed checks</th></tr>`;
  const body = runs.map((r, i) => (cells[i] ? `<tr><td>#${r.id} ${esc(r.name)}</td><td>${esc(cells[i].eps)}</td>${cols.map((c) => `<td>${withCi(cells[i][c]?.v, cells[i][c]?.c, cells[i][c]?.n)}</td>`).join("")}
    <td class="${cells[i].failed.length ? "bad" : ""}">${cells[i].failed.map(esc).join(", ") || "none"}</td></tr>` : "")).join("");
  const agg = [...groups].map(([k, list]) => `<tr class="group"><td><b>${esc(k)}</b> (${list.length} runs)</td><td></td>${cols.map((c) => {
    const { n, mean, std } = meanStd(list.map((x) => x[c]?.v));
    return `<td>${n > 1 ? `${pct(mean)} ± ${pct(std)}` : n ? `${pct(mean)} (one run: no spread)` : "–"}</td>`;
  }).join("")}<td>${list.filter((x) => x.failed.length).length} with failures</td></tr>`).join("");
  el.innerHTML = head + body + agg;
}

// GAT's game after training, per run: what a fresh probe reads from the gradients, against chance
// (won only when chance lies in its interval); baselines play no game and give the reference.
// Per group of runs: the probe's mean ± std and how many runs won.
function gameTable(runs, g) {
  const el = document.querySelector("#gametable");
  const games = runs.map((r) => r.summary?.game ?? null);
  if (!games.some(Boolean)) { el.innerHTML = '<tr><td class="muted">No game probe on these runs.</td></tr>'; return; }
  const verdict = (x) => {
    const hidden = x.ci[0] <= x.chance;
    return x.played ? (hidden ? ["pass", "game won"] : ["fail", "game lost"]) : [hidden ? "pass" : "fail", hidden ? "hidden (no game)" : "tellable (no game)"];
  };
  const head = "<tr><th>run</th><th>method</th><th>the probe reads</th><th>probe</th><th>chance</th><th>game</th></tr>";
  const body = runs.map((r, i) => {
    const x = games[i];
    if (!x) return "";
    const [cls, text] = verdict(x);
    return `<tr><td>#${r.id} ${esc(r.name)}</td><td>${esc(r.method)}</td><td>${esc(x.of)}</td><td>${withCi(x.accuracy, x.ci, x.n_test)}</td><td>${pct(x.chance)}</td><td><span class="badge ${cls}">${text}</span></td></tr>`;
  }).join("");
  const groups = new Map();
  runs.forEach((r, i) => { if (!games[i]) return; const k = String(g ? getPath(r.config, g) ?? getPath(r, g) : "all runs"); groups.set(k, [...(groups.get(k) ?? []), games[i]]); });
  const agg = [...groups].map(([k, list]) => {
    const { n, mean, std } = meanStd(list.map((x) => x.accuracy));
    const won = list.filter((x) => x.played && x.ci[0] <= x.chance).length, played = list.filter((x) => x.played).length;
    return `<tr class="group"><td><b>${esc(k)}</b> (${list.length} runs)</td><td></td><td></td><td>${n > 1 ? `${pct(mean)} ± ${pct(std)}` : pct(mean)}</td><td></td><td>${played ? `${won} of ${played} won` : "no game played"}</td></tr>`;
  }).join("");
  el.innerHTML = head + body + agg;
}

const fmt = (x) => (x == null || !isFinite(x) ? "" : x.toFixed(4));

// Each run's last, best, min and max of `key` (bucketed columns keep the exact min, max and last
// value of any series, however long), and per group the mean ± std of the last values.
async function showFinals(runs, key, g) {
  const cols = await Promise.all(runs.map((r) => api(`/api/runs/${r.id}/metrics?${qs({ keys: key, max_points: 500 })}`)));
  const table = runs.map((r, i) => {
    const s = cols[i].series[key] ?? { value: [], min: [], max: [] };
    const lo = Math.min(...s.min), hi = Math.max(...s.max);
    return { run: r.id, name: r.name, method: r.method, seed: r.config.train?.seed, last: s.value.at(-1), min: lo, max: hi,
      best: key.includes("loss") ? lo : hi };
  });
  const cells = (t) => [t.run, esc(t.name), esc(t.method), t.seed ?? "", fmt(t.last), fmt(t.best), fmt(t.min), fmt(t.max)];
  app.querySelector("#finals").innerHTML = "<tr><th>run</th><th>name</th><th>method</th><th>seed</th><th>last</th><th>best</th>"
    + "<th>min</th><th>max</th></tr>" + table.map((t) => `<tr>${cells(t).map((c) => `<td>${c}</td>`).join("")}</tr>`).join("");
  const groups = new Map();
  runs.forEach((r, i) => {
    const k = String(g ? getPath(r.config, g) ?? getPath(r, g) : "all");
    groups.set(k, [...(groups.get(k) ?? []), table[i].last]);
  });
  app.querySelector("#groups").innerHTML = `<tr><th>${esc(g || "group")}</th><th>runs</th><th>mean</th><th>std</th></tr>`
    + [...groups].map(([k, vs]) => {
      const { n, mean, std } = meanStd(vs);
      return `<tr><td>${esc(k)}</td><td>${n}</td><td>${fmt(mean)}</td><td>${fmt(std)}</td></tr>`;
    }).join("");
  return table;
}

function downloadCsv(table) {
  const row = (t) => [t.run, JSON.stringify(t.name), t.method, t.seed, t.last, t.best, t.min, t.max].join(",");
  const csv = ["run,name,method,seed,last,best,min,max", ...table.map(row)].join("\n");
  const href = URL.createObjectURL(new Blob([csv], { type: "text/csv" }));
  Object.assign(document.createElement("a"), { href, download: "gatlab-compare.csv" }).click();
}

export async function comparePage(idsArg) {
  const ids = (idsArg ?? "").split(",").map(Number).filter(Boolean);
  if (!ids.length) { app.replaceChildren(h('<section><h1>Compare</h1><p class="muted">Select runs on the <a href="#/runs">runs page</a> and press “Compare selected”.</p></section>')); return; }
  const runs = await Promise.all(ids.map((i) => api(`/api/runs/${i}`)));
  const all = await Promise.all(ids.map((i) => api(`/api/runs/${i}/metrics?max_points=2`)));
  const keys = [...new Set(all.flatMap((a) => Object.keys(a.series)))].sort();
  const knobs = [...new Set(runs.flatMap((r) => [...Object.keys(r.config.params ?? {}).map((k) => `params.${k}`), "train.seed", "method"]))];
  app.replaceChildren(h(`<section><h1>Compare ${ids.length} runs</h1>
    <div class="toolbar"><label>metric <select id="metric">${keys.map((k) => `<option ${k === "val/acc" ? "selected" : ""}>${esc(k)}</option>`).join("")}</select></label>
    <label>group by <select id="group"><option value="">none</option>${knobs.map((k) => `<option>${esc(k)}</option>`).join("")}</select></label>
    <button id="csv">Export table CSV</button></div>
    <div class="grid"><div id="overlay"></div><div id="rob"></div></div>
    <h2>Robustness at the standard ε</h2><p class="muted">Each accuracy with its 95% Wilson interval over the panel's n examples; per group, the mean ± std over runs (seeds).
    <a id="eval-csv" download="gatlab-robustness.csv">Export robustness CSV</a></p><table id="robtable" class="small"></table>
    <h2>GAT's game after training</h2><p class="muted">A fresh classifier's accuracy at reading each run's gradient origin (the class, teacher vs student, or the task), with its 95% interval, against chance: a GAT method won its game only where chance lies inside the interval.</p><table id="gametable" class="small"></table>
    <h2>Final values</h2><table id="finals" class="small"></table><h2>Groups (mean ± std of last value over runs)</h2><table id="groups" class="small"></table></section>`));
  const label = (r) => `#${r.id} ${r.name}`;
  const overlay = lineChart(app.querySelector("#overlay"), {
    title: "overlay (group by: mean ± std band per group)",
    load: async (range) => {
      const per = await Promise.all(runs.map(async (r) => (await metricsLoader(r.id, [app.querySelector("#metric").value], () => label(r))(range))[0]));
      const g = app.querySelector("#group").value;
      return g ? groupBands(runs, per, g) : per.filter(Boolean);
    },
  });
  let table = [];
  const finals = async () => { table = await showFinals(runs, app.querySelector("#metric").value, app.querySelector("#group").value); };
  const evs = await Promise.all(runs.map((r) => api(`/api/runs/${r.id}/eval`)));
  const rob = evs.map((ev, i) => {
    const rows = ev.rows.filter((r) => r.attack === "worst_case").sort((a, b) => a.eps - b.eps);
    return { label: `${label(runs[i])} worst case`, x: rows.map((r) => r.eps), y: rows.map((r) => r.accuracy) };
  }).filter((s) => s.x.length);
  if (rob.length) lineChart(app.querySelector("#rob"), { title: "robustness: worst case over attacks", xLabel: "eps", points: true, load: async () => rob }).refresh();
  const robTable = () => robustnessTable(runs, evs, app.querySelector("#group").value);
  robTable();
  gameTable(runs, app.querySelector("#group").value);
  app.querySelector("#eval-csv").href = `/api/export?${qs({ ids: ids.join(","), what: "eval" })}`;
  app.querySelector("#metric").addEventListener("change", () => { overlay.refresh(); finals(); });
  app.querySelector("#group").addEventListener("change", () => { overlay.refresh(); finals(); robTable(); gameTable(runs, app.querySelector("#group").value); });
  app.querySelector("#csv").addEventListener("click", () => downloadCsv(table));
  await Promise.all([overlay.refresh(), finals()]);
}
