// The run page: curves, gradient statistics, robustness (badges, curves, table, gallery), artifacts, config, log.
import { api, qs } from "../api.js";
import { heatmap, lineChart } from "../charts.js";
import { app, duration, esc, every, h, metricsLoader, pct, rerender, statusCell, toYaml } from "../lib.js";

const ci = (c) => (c ? `<span class="muted">[${pct(c[0])}, ${pct(c[1])}]</span>` : "");

// The panel's headline: clean and worst-case accuracy with intervals, the probe beside A's accuracy,
// the minimum-norm median, AutoAttack's own warnings.
function headline(ev, aux) {
  const s = ev.summary;
  if (!s) return "";
  const at = (a) => ev.rows.find((r) => r.attack === a && r.norm === "linf" && Math.abs(r.eps - s.std_eps) < 1e-12);
  const line = (label, r) => (r ? `<li>${label} at ε ${esc(s.std_eps)}: <b>${pct(r.accuracy)}</b> ${ci(r.ci)} of ${esc(r.n)}</li>` : "");
  const p = s.probe, mn = s.min_norm;
  return `<ul class="headline">
    <li>clean: <b>${pct(s.clean_accuracy)}</b> ${ci(s.clean_ci)} of ${esc(s.n)} test examples (every attack on the same ones)</li>
    ${line("AutoAttack", at("autoattack"))}${line("worst case over attacks", at("worst_case"))}
    ${p ? `<li class="probe">gradient probe: <b>${pct(p.accuracy)}</b> ${ci(p.ci)} of ${esc(p.n_test)} test labels read from input gradients
      (chance ${pct(p.chance)})${aux != null ? `; in-loop A's last accuracy ${pct(aux)}` : ""}.
      <span class="muted">Near chance: the gradients hide the class; near 100%: they give it away.</span></li>` : ""}
    ${mn ? `<li>smallest L-inf perturbation that fools the model (FAB): median <b>${mn.median == null ? "not reached" : mn.median.toFixed(4)}</b>, ${esc(mn.found)}/${esc(mn.n)} fooled</li>` : ""}
    ${(s.autoattack_warnings ?? []).map((w) => `<li class="alarm">pyautoattack warned: ${esc(w)}</li>`).join("")}
  </ul>`;
}

// GAT's game after training: a fresh probe against chance; won only when chance lies in its interval.
// Runs that play no game (baselines) show the same probe as the reference.
function gameLine(g) {
  const hidden = g.ci[0] <= g.chance;
  const label = g.played ? (hidden ? "game won" : "game lost") : hidden ? "origins hidden (no game played)" : "origins tellable (no game played)";
  return `<p class="game"><span class="badge ${hidden ? "pass" : "fail"}">${label}</span>
    a fresh probe reads ${esc(g.of)}: <b>${pct(g.accuracy)}</b> ${ci(g.ci)} of ${esc(g.n_test)}, chance ${pct(g.chance)}</p>`;
}

function robustness(el, ev, aux) {
  const linf = ev.rows.filter((r) => r.norm === "linf" && r.attack !== "pgd_large_eps");
  if (!linf.length) { el.innerHTML = '<p class="muted">No robustness panel yet.</p>'; return; }
  const panels = [...new Set(ev.rows.map((r) => r.panel))];
  const extra = (r) => (r.info?.target_success != null ? `target reached ${pct(r.info.target_success)} ${ci(r.info.target_ci)}` : "");
  const weaker = (c) => c.severity === "weaker_attack";
  const badge = (c) => (c.passed ? ["pass", "✓"] : weaker(c) ? ["warn", "△ weaker attack"] : ["fail", "✗ FAILED"]);
  el.innerHTML = `<div class="badges">${ev.checks.map((c) => `<span class="badge ${badge(c)[0]}" title="${esc(c.detail)}">${badge(c)[1]} ${esc(c.name)} <small>(${esc(c.panel)})</small></span>`).join("")}</div>
    ${ev.masking_suspected ? '<p class="alarm">A masking check failed: these robustness numbers may come from gradient masking. Do not trust them until it is explained.</p>'
      : ev.all_passed === false ? '<p class="notice">One attack was weaker than another (△): the worst case takes the stronger one, so the worst-case numbers stand; read the weaker attack\'s row with that in mind.</p>' : ""}
    ${ev.checks.filter((c) => !c.passed).map((c) => `<p class="failed-check ${weaker(c) ? "weaker" : ""}"><b>${esc(c.name)}</b>${weaker(c) ? " (weaker attack, covered)" : " (masking suspected)"}: ${esc(c.detail)}</p>`).join("")}
    ${headline(ev, aux)}
    <div class="rob-chart"></div><div class="norm-chart"></div><details><summary>table (${panels.join(", ")}; 95% Wilson intervals)</summary><table class="small"><tr><th>panel</th><th>attack</th><th>norm</th><th>eps</th><th>steps</th><th>restarts</th><th>n</th><th>accuracy</th><th>95% CI</th><th></th></tr>
    ${ev.rows.map((r) => `<tr><td>${esc(r.panel)}</td><td>${esc(r.attack)}</td><td>${esc(r.norm)}</td><td>${r.eps.toFixed(4)}</td><td>${r.steps ?? ""}</td><td>${r.restarts ?? ""}</td><td>${r.n}</td><td>${pct(r.accuracy)}</td><td>${ci(r.ci)}</td><td>${extra(r)}</td></tr>`).join("")}</table></details>`;
  const panel = panels.includes("standard") ? "standard" : panels[0];
  const attacks = [...new Set(linf.filter((r) => r.panel === panel).map((r) => r.attack))];
  const series = attacks.flatMap((a) => {
    const rows = linf.filter((r) => r.panel === panel && r.attack === a).sort((x, y) => x.eps - y.eps);
    const mean = { label: a === "worst_case" ? "WORST CASE" : a, x: rows.map((r) => r.eps), y: rows.map((r) => r.accuracy) };
    if (a !== "worst_case" || !rows.every((r) => r.ci)) return [mean];
    return [mean, { label: "95% CI", band: "upper", x: mean.x, y: rows.map((r) => r.ci[1]) }, { label: "", band: "lower", x: mean.x, y: rows.map((r) => r.ci[0]) }];
  });
  lineChart(el.querySelector(".rob-chart"), { title: `accuracy vs L-inf epsilon (${panel} panel, worst case with its 95% interval)`, xLabel: "eps", points: true, load: async () => series }).refresh();
  const norms = ev.summary?.min_norm?.norms;
  if (norms?.length) {
    const found = norms.filter((v) => v != null).sort((x, y) => x - y);
    const xs = [...new Set(found)];  // one point per distinct norm: the share fooled at or below it
    const cdf = { label: "fooled within eps", x: xs, y: xs.map((v) => found.filter((f) => f <= v).length / norms.length) };
    const xRange = [0, Math.max(found.at(-1) ?? 0, 2 * ev.summary.std_eps)];  // a fixed span: tiny norms stay visible
    if (xs.at(-1) !== xRange[1]) { cdf.x.push(xRange[1]); cdf.y.push(found.length / norms.length); }  // flat to the edge
    lineChart(el.querySelector(".norm-chart"), { title: "FAB minimum-norm: share of examples fooled within each L-inf eps", xLabel: "eps", points: true, xRange, load: async () => (found.length ? [cdf] : []) }).refresh();
  }
}

function imageCanvas(img, map = (v) => v) {
  // img: C x H x W nested lists in [0, 1] -> a canvas scaled up for viewing
  const [c, hgt, wid] = [img.length, img[0].length, img[0][0].length];
  const cv = Object.assign(document.createElement("canvas"), { width: wid, height: hgt, className: "thumb" });
  const ctx = cv.getContext("2d");
  const px = ctx.createImageData(wid, hgt);
  for (let i = 0; i < hgt; i++) for (let j = 0; j < wid; j++) for (let k = 0; k < 3; k++)
    px.data[4 * (i * wid + j) + k] = Math.round(255 * Math.min(1, Math.max(0, map(img[c === 3 ? k : 0][i][j]))));
  px.data.forEach((_, n) => { if (n % 4 === 3) px.data[n] = 255; });
  ctx.putImageData(px, 0, 0);
  return cv;
}

function showGallery(el, g) {
  const box = h(`<div class="gallery"><h3>PGD at eps ${g.eps.toFixed(4)}: clean / adversarial / perturbation (grey = 0)</h3><div class="cells"></div></div>`);
  g.clean.forEach((img, i) => {
    const cell = h(`<figure><figcaption>label ${g.label[i]}: ${g.pred_clean[i]} → <b class="${g.pred_adv[i] === g.label[i] ? "" : "bad"}">${g.pred_adv[i]}</b></figcaption></figure>`);
    cell.append(imageCanvas(img), imageCanvas(g.adv[i]), imageCanvas(g.delta[i], (v) => 0.5 + v / (2 * g.eps)));
    box.querySelector(".cells").append(cell);
  });
  el.append(box);
}

const PAGE = `<section><div class="run-head"></div>
    <div class="grid charts"></div>
    <h2>Robustness</h2><div class="toolbar"><button id="panel-quick">queue quick panel</button>
      <button id="panel-standard">queue standard panel</button><span id="panel-msg" class="muted"></span></div>
    <div id="robust"></div>
    <h2>Artifacts</h2><ul id="artifacts"></ul>
    <h2>Config</h2><pre id="config"></pre><div id="error"></div><h2>Log</h2><pre id="log" class="muted">no log yet</pre></section>`;

function testLine(run) {
  if (!run.summary?.test) return "";
  const fmt = (k, v) => (k.endsWith("mse") || k === "loss" ? v.toFixed(4) : pct(v));
  const figures = Object.entries(run.summary.test).map(([k, v]) => `${esc(k)} <b>${fmt(k, v)}</b>`).join(" · ");
  return `<p>test ${figures} · split ${esc(run.summary.data?.train_hash)}</p>`;
}

function headHtml(run) {
  const live = run.status === "running" || run.status === "queued";
  return `<h1>${esc(run.name)} <small class="muted">#${run.id}</small></h1>
      <p>${esc(run.scenario)} · ${esc(run.method)} · ${esc(run.dataset)} · ${statusCell(run)}
      ${run.worker_host ? `· on ${esc(run.worker_host)} (${esc(run.device)})` : ""} · ${duration(run)}
      ${run.retry_count ? `· requeued ${run.retry_count}×` : ""}
      ${live ? '<button id="cancel">cancel</button>' : '<button id="retry">retry</button>'}</p>
      ${testLine(run)}
      ${run.summary?.game ? gameLine(run.summary.game) : ""}`;
}

// The run's title, status, figures and buttons, its config and its error: drawn again on each poll.
function showHead(page) {
  const { run, id } = page;
  const head = app.querySelector(".run-head");
  head.innerHTML = headHtml(run);
  head.querySelector("#cancel")?.addEventListener("click", async () => {
    page.run = await api(`/api/runs/${id}/cancel`, { method: "POST" });
    showHead(page);
  });
  head.querySelector("#retry")?.addEventListener("click", async () => {
    const r = await api(`/api/runs/${id}/retry`, { method: "POST" });
    location.hash = `#/run/${r.id}`;
  });
  const env = run.summary?.env ? `\n\n# environment\n${toYaml(run.summary.env)}` : "";
  app.querySelector("#config").textContent = toYaml(run.config) + env;
  app.querySelector("#error").innerHTML = run.error
    ? `<h2>Error</h2><pre class="err">${esc(run.error)}\n\n${esc(run.traceback ?? "")}</pre>` : "";
}

// [title, keys, extra lines] of each chart this run has data for.
function chartSpecs(series) {
  const keys = Object.keys(series);
  const chance = series["train/aux_chance"]?.value.at(-1);
  const prefixed = (p) => keys.filter((k) => k.startsWith(p));
  return [
    ["loss", ["train/loss", "val/loss", "train/aux_loss"]],
    ["accuracy", ["val/acc", "train/aux_acc"], chance ? [{ label: "A's chance", value: chance }] : []],
    ["input-gradient norm per class", prefixed("grad_norm/")],
    ["input-gradient cosine similarity", ["cos/within", "cos/between"]],
    ["per-layer weight-gradient norm", prefixed("layer_grad/")],
    ["lambda and learning rate", ["train/lam", "train/lr"]],
    ["student-teacher input gradients", ["train/st_cos", "train/st_l2", "train/agreement"]],
    ["per-task loss", prefixed("train/loss/")],
    ["per-task validation metric", keys.filter((k) => k.startsWith("val/") && k.split("/").length === 3)],
    ["task gradient norm at the shared layer", prefixed("task_grad_norm/")],
    ["task gradient cosine similarity", prefixed("task_cos/")],
    ["task loss weights", prefixed("train/weight/")],
    ["gradient alignment scales", prefixed("train/gal/")],
  ].filter(([, ks]) => ks.some((k) => keys.includes(k)));
}

function chartBox(grid, title) {
  const el = document.createElement("div");
  el.dataset.chart = title;
  grid.append(el);
  return el;
}

async function addCharts(page) {
  const grid = app.querySelector(".charts");
  const keys = Object.keys(page.series);
  page.charts = chartSpecs(page.series).map(([title, ks, extra]) =>
    lineChart(chartBox(grid, title), { title, load: metricsLoader(page.id, ks.filter((k) => keys.includes(k))), extraLines: extra ?? [] }));
  const hist = await api(`/api/runs/${page.id}/histograms?limit=400`);
  if (hist.step.length) {
    const opts = { title: "input-gradient histogram over time", steps: hist.step, edges: hist.edges, counts: hist.counts };
    heatmap(chartBox(grid, "histogram"), opts);
  }
  await Promise.all(page.charts.map((c) => c.refresh()));
}

function panelPicker(page, ev) {
  const label = (p) => `${esc(p.panel)} on ${esc(p.n)} examples${p.job_id === page.run.id ? " (end of training)" : ` (job ${esc(p.job_id)})`}`;
  const options = ev.panels.map((p) => `<option value="${esc(p.job_id)}" ${p.job_id === ev.job_id ? "selected" : ""}>${label(p)}</option>`);
  const pick = h(`<label class="field">panel <select id="panel-job">${options.join("")}</select></label>`);
  pick.querySelector("select").addEventListener("change", (e) => showEval(page, Number(e.target.value)));
  return pick;
}

// Every panel run on this run is kept: the latest is shown, a selector reaches the others.
async function showEval(page, job) {
  const q = job ? `?${qs({ job })}` : "";
  const ev = await api(`/api/runs/${page.id}/eval${q}`);
  const box = app.querySelector("#robust");
  robustness(box, ev, page.series["train/aux_acc"]?.value.at(-1));
  if (ev.panels?.length > 1) box.prepend(panelPicker(page, ev));
  if (ev.gallery) showGallery(box, await api(`/api/runs/${page.id}/gallery${q}`));
}

async function showArtifacts(id) {
  const arts = await api(`/api/runs/${id}/artifacts`);
  if (arts.some((a) => a.name === "run.log")) {
    app.querySelector("#log").textContent = (await api(`/api/runs/${id}/artifacts/run.log`)).slice(-20000);
  }
  const item = (a) => `<li><a href="${esc(a.url)}" download>${esc(a.name)}</a>
    <span class="muted">${esc(a.kind)}, ${(a.size / 1024).toFixed(1)} KiB</span></li>`;
  app.querySelector("#artifacts").innerHTML = arts.map(item).join("") || '<li class="muted">none yet</li>';
}

function panelButtons(id) {
  for (const panel of ["quick", "standard"]) {
    app.querySelector(`#panel-${panel}`).addEventListener("click", async () => {
      const msg = app.querySelector("#panel-msg");
      try {
        const job = await api(`/api/runs/${id}/eval`, { method: "POST", body: { panel } });
        msg.innerHTML = `queued as <a href="#/run/${job.id}">run ${job.id}</a>`;
      } catch (err) { msg.textContent = err.message; }
    });
  }
}

export async function runPage(id) {
  const page = { id, run: await api(`/api/runs/${id}`), charts: [] };
  app.replaceChildren(h(PAGE));
  showHead(page);
  page.series = (await api(`/api/runs/${id}/metrics?max_points=2`)).series;
  await addCharts(page);
  await Promise.all([showEval(page), showArtifacts(id)]);
  panelButtons(id);
  every(2000, async () => {
    if (page.run.status !== "running" && page.run.status !== "queued") return;
    page.run = await api(`/api/runs/${id}`);
    showHead(page);
    await Promise.all(page.charts.map((c) => c.refresh()));
    if (!["running", "queued"].includes(page.run.status)) {
      await Promise.all([showEval(page), showArtifacts(id)]);
      if (!page.charts.length) rerender();
    }
  });
}
