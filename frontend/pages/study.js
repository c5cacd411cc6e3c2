// Studies (their list, and one study's report page) and the robustness leaderboard.
import { api, qs } from "../api.js";
import { lineChart } from "../charts.js";
import { app, esc, every, fmtS, h, meanStd, pct } from "../lib.js";

const progressText = (p) => Object.entries(p).filter(([k]) => k !== "total").map(([k, v]) => `${v} ${k}`).join(", ");

export async function studiesPage() {
  const studies = await api("/api/studies");
  app.replaceChildren(h(`<section><h1>Studies</h1>
    <p class="muted">A study runs every method of its design over the same seeds and reports them against its baseline.
      Start one with <code>gatlab study run studies/FILE.yaml</code>, <code>POST /api/studies</code> or the launch page. See also the <a href="#/leaderboard">robustness leaderboard</a>.</p>
    <table class="small" id="studies"><tr><th>study</th><th>scenario</th><th>dataset</th><th>runs</th><th>progress</th></tr>
    ${studies.map((st) => `<tr><td><a href="#/study/${st.id}">${esc(st.name)}</a></td><td>${esc(st.design.scenario)}</td><td>${esc(st.design.dataset?.name)}</td>
      <td>${st.progress.total}</td><td>${esc(progressText(st.progress))}</td></tr>`).join("") || '<tr><td colspan="5" class="muted">No study yet.</td></tr>'}</table></section>`));
}

// A cell as the report's exports write it (the server's text: one rounding rule for page and files),
// bold where the report found it separably best; its interval, test and per-seed values in its tooltip.
function cell(rep, row, c) {
  const d = row.cells[c];
  if (d.mean == null) return "<td>–</td>";
  const k = /(loss|mse|s\/step|Δm%)$/.test(c) ? 1 : 100, dig = c === "Δm%" ? 2 : k === 1 ? 4 : 1;
  const f = (v) => (k * v).toFixed(dig);
  const vs = d.vs_baseline;
  const test = vs ? `; vs baseline: ${vs.test}, ${vs.pairs} seeds${vs.b != null ? `, discordant ${vs.b} / ${vs.c}` : ""}, p ${vs.p == null ? "– (no spread)" : vs.p.toPrecision(3)}${vs.p_adjusted != null ? `, Holm ${vs.p_adjusted.toPrecision(3)}` : ""}` : "";
  const tip = `n=${d.n} seeds${d.examples ? ` x ${d.examples} examples` : ""}${d.interval ? `; 95% interval: ${d.interval}` : ""}; per seed ${d.values.map(f).join(", ")}${test}`;
  const best = rep.best[c]?.includes(row.label);
  return `<td title="${esc(tip)}" class="${best ? "best" : ""}">${best ? `<b>${esc(d.text)}</b>` : esc(d.text)}</td>`;
}

// The row's checks as the report writes them in every export: ✗ masking, △ weaker attack, ok, – (no panel).
const checksText = (row) => (row.checks_text === "–" ? '<span class="muted" title="no panel ran">–</span>' : esc(row.checks_text));

export async function studyPage(id) {
  const load = async () => [await api(`/api/studies/${id}`), await api(`/api/studies/${id}/report`)];
  let [study, rep] = await load();
  app.replaceChildren(h(`<section class="study"><h1>Study ${esc(study.name)}</h1>
    <p class="muted">${esc(study.design.scenario)} on ${esc(study.design.dataset?.name)}; baseline <b>${esc(study.design.baseline)}</b>; seeds ${esc(study.design.seeds.join(", "))}${study.design.split === "val" ? "; <b>read on the validation split</b> (a tuning study: nothing in its report is measured on test)" : ""}</p>
    <div class="toolbar"><span id="progress"></span>
      <button id="retry">Retry failed</button><button id="extend">Add a seed</button>
      <a href="/api/studies/${id}/report?format=md" download>Markdown</a> <a href="/api/studies/${id}/report?format=latex" download>LaTeX</a>
      <a href="/api/studies/${id}/report?format=csv" download>CSV</a> <a href="/api/studies/${id}/report?format=json" download>JSON</a>
      <a id="compare-runs">compare the runs</a> <button id="print">Print</button></div>
    <h2>Results</h2><p class="muted" id="legend"></p><p class="muted">Hover a cell for its test and per-seed values.</p>
    <table id="report" class="small"></table>
    <div class="grid"><div id="eps-chart"></div><div id="train-chart"></div></div>
    <h2>Design</h2><p class="muted">Save it as <code>${esc(study.name)}.yaml</code> (JSON is YAML) to run it again anywhere.</p><pre id="design"></pre>
    <h2>Reproduce</h2><pre id="reproduce"></pre></section>`));
  const render = () => {
    const p = study.progress;
    app.querySelector("#progress").textContent = `${p.succeeded ?? 0} of ${p.total} done (${progressText(p)})${study.eta_s ? `, ETA ${fmtS(study.eta_s)}` : ""}`;
    app.querySelector("#legend").textContent = rep.legend;
    const head = `<tr><th>method</th><th>seeds</th>${rep.columns.map((c) => `<th>${esc(c)}</th>`).join("")}<th>checks</th></tr>`;
    app.querySelector("#report").innerHTML = head + rep.rows.map((row) => `<tr class="${row.failed_checks.length ? "flagged" : ""}" data-label="${esc(row.label)}">
      <td>${esc(row.label)}${row.baseline ? ' <span class="muted">(baseline)</span>' : ""}</td><td>${row.seeds_done.length}</td>
      ${rep.columns.map((c) => cell(rep, row, c)).join("")}
      <td class="${row.failed_checks.length ? "bad" : ""}">${checksText(row)}</td></tr>`).join("");
    const ids = study.runs.filter((r) => r.id && r.status === "succeeded").map((r) => r.id);
    app.querySelector("#compare-runs").href = `#/compare/${ids.join(",")}`;
  };
  app.querySelector("#design").textContent = JSON.stringify(study.design, null, 2);  // JSON is YAML: save it, run it
  app.querySelector("#reproduce").textContent = `gatlab study run ${study.name}.yaml --server ${location.origin}   # the design above, saved as ${study.name}.yaml`;
  const curves = rep.rows.filter((r) => r.curve.length);
  if (curves.length) {
    lineChart(app.querySelector("#eps-chart"), {
      title: "worst case over attacks vs ε (mean ± std over seeds)", xLabel: "eps", points: true,
      load: async () => curves.flatMap((r) => {
        const x = r.curve.map((c) => c.eps), m = r.curve.map((c) => c.mean), sd = r.curve.map((c) => c.std ?? 0);
        return [{ label: r.label, x, y: m }, { label: "+std", x, y: m.map((v, i) => v + sd[i]), band: "upper" }, { label: "-std", x, y: m.map((v, i) => v - sd[i]), band: "lower" }];
      }),
    }).refresh();
  }
  trainingCurves(study, "val/acc");
  render();
  const act = async (path, body) => { study = await api(path, { method: "POST", body }); rep = await api(`/api/studies/${id}/report`); render(); };
  app.querySelector("#retry").addEventListener("click", () => act(`/api/studies/${id}/retry`));
  app.querySelector("#extend").addEventListener("click", () => act(`/api/studies/${id}/extend`, { seeds: [Math.max(...study.design.seeds) + 1] }));
  app.querySelector("#print").addEventListener("click", () => window.print());
  every(5000, async () => {
    if (!study.progress.queued && !study.progress.running) return;
    [study, rep] = await load();
    render();
  });
}

// Per arm, the mean ± std over its finished runs of one training curve (steps the runs share).
function trainingCurves(study, key) {
  const arms = [...new Set(study.runs.map((r) => r.label))];
  lineChart(app.querySelector("#train-chart"), {
    title: `${key} during training (mean ± std over seeds)`,
    load: async () => (await Promise.all(arms.map(async (label) => {
      const ids = study.runs.filter((r) => r.label === label && r.status === "succeeded").map((r) => r.id);
      const per = await Promise.all(ids.map(async (i) => (await api(`/api/runs/${i}/metrics?${qs({ keys: key, max_points: 200 })}`)).series[key]));
      const maps = per.filter(Boolean).map((s) => new Map(s.step.map((x, j) => [x, s.value[j]])));
      if (!maps.length) return [];
      const xs = [...maps[0].keys()].filter((x) => maps.every((m) => m.has(x)));
      const stats = xs.map((x) => meanStd(maps.map((m) => m.get(x))));
      const mean = stats.map((t) => t.mean), sd = stats.map((t) => t.std);
      return [{ label: `${label} (${maps.length} runs)`, x: xs, y: mean },
        { label: "+std", x: xs, y: mean.map((v, i) => v + sd[i]), band: "upper" }, { label: "-std", x: xs, y: mean.map((v, i) => v - sd[i]), band: "lower" }];
    }))).flat(),
  }).refresh();
}

export async function leaderboardPage(params) {
  const filters = { dataset: params.get("dataset") ?? "", panel: params.get("panel") ?? "standard", experiment: params.get("experiment") ?? "", method: params.get("method") ?? "" };
  const board = await api(`/api/leaderboard?${qs(filters)}`);
  app.replaceChildren(h(`<section><h1>Robustness leaderboard</h1>
    <p class="muted">Every run judged by the ${esc(board.panel)} panel, ranked by AutoAttack accuracy at the panel's standard ε (L-inf) with its 95% interval, then clean accuracy.
      A run whose sanity checks failed is marked ✗ and ranked after every run that passed them: its number may be inflated by gradient masking.</p>
    <form class="toolbar" id="filters">${Object.entries(filters).map(([k, v]) => `<label>${k} <input name="${k}" value="${esc(v)}"></label>`).join("")}
      <button>Filter</button> <a id="lb-csv" download="gatlab-leaderboard.csv">CSV</a></form>
    <table class="small" id="leaderboard"><tr><th>#</th><th>run</th><th>method</th><th>dataset</th><th>ε</th><th>AutoAttack</th><th>clean</th><th>checks</th></tr>
    ${board.entries.map((e) => `<tr class="${e.flagged ? "flagged" : ""}" data-run="${e.run_id}"><td>${e.rank}</td><td><a href="#/run/${e.run_id}">#${e.run_id} ${esc(e.name)}</a></td><td>${esc(e.method)}</td><td>${esc(e.dataset)}</td><td>${e.eps}</td>
      <td>${pct(e.autoattack)} <span class="muted">[${pct(e.ci?.[0])}, ${pct(e.ci?.[1])}] n=${e.n}</span></td><td>${pct(e.clean)}</td>
      <td class="${e.flagged ? "bad" : ""}">${e.flagged ? `✗ ${esc(e.failed_checks.join(", "))}` : "ok"}</td></tr>`).join("") || '<tr><td colspan="8" class="muted">No run judged by this panel yet.</td></tr>'}</table></section>`));
  app.querySelector("#lb-csv").href = `/api/leaderboard?${qs({ ...filters, format: "csv" })}`;
  app.querySelector("#filters").addEventListener("submit", (ev) => {
    ev.preventDefault();
    location.hash = `#/leaderboard?${qs(Object.fromEntries(new FormData(ev.target)))}`;
  });
}
