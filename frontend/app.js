// GAT Lab dashboard: runs, launch, run and compare pages behind a hash router. No build step.
import { api, ApiError, qs } from "./api.js";
import { color, heatmap, lineChart } from "./charts.js";

const app = document.getElementById("app");
let cleanup = [];
let methodsCache = null;
let me = null; // GET /api/auth/me: { auth, user }

const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
const fmtS = (s) => (s == null ? "" : s < 90 ? `${Math.round(s)} s` : s < 5400 ? `${Math.round(s / 60)} min` : `${(s / 3600).toFixed(1)} h`);
const pct = (v) => (v == null ? "" : `${(100 * v).toFixed(1)}%`);
const every = (ms, fn) => { const t = setInterval(fn, ms); cleanup.push(() => clearInterval(t)); };
const methods = async () => (methodsCache ??= await api("/api/methods"));
const h = (html) => { const t = document.createElement("template"); t.innerHTML = html.trim(); return t.content.firstElementChild; };

function statusCell(r) {
  const frac = r.total_steps ? r.step / r.total_steps : 0;
  const bar = r.status === "running" ? `<div class="bar"><div style="width:${(100 * frac).toFixed(1)}%"></div></div>
    <span class="muted">${r.step}/${r.total_steps ?? "?"}${r.eta_s != null ? ` · ETA ${fmtS(r.eta_s)}` : ""}</span>` : "";
  return `<span class="status ${r.status}">${r.status}${r.cancel_requested && r.status === "running" ? " (cancelling)" : ""}</span>${bar}`;
}

function duration(r) {
  if (!r.started_at) return "";
  const end = r.finished_at ? new Date(r.finished_at) : new Date();
  return fmtS((end - new Date(r.started_at)) / 1000);
}

// ---------------------------------------------------------------- runs page
async function runsPage(params) {
  const m = await methods();
  const scenarios = [...new Set(m.methods.map((x) => x.scenario))];
  const names = [...new Set(m.methods.map((x) => x.method))];
  const state = { status: "", scenario: "", method: "", experiment: params.get("experiment") ?? "", q: "", sort: "-created_at", offset: 0, limit: 50 };
  const selected = new Set();
  app.replaceChildren(h(`<section>
    <h1>Runs</h1>
    <form class="filters" id="filters">
      <select name="status"><option value="">any status</option>${["queued", "running", "succeeded", "failed", "cancelled"].map((s) => `<option>${s}</option>`).join("")}</select>
      <select name="scenario"><option value="">any scenario</option>${scenarios.map((s) => `<option>${esc(s)}</option>`).join("")}</select>
      <select name="method"><option value="">any method</option>${names.map((s) => `<option>${esc(s)}</option>`).join("")}</select>
      <input name="experiment" placeholder="experiment" value="${esc(state.experiment)}">
      <input name="q" placeholder="search name or notes">
      <select name="sort"><option value="-created_at">newest</option><option value="created_at">oldest</option><option value="name">name</option><option value="status">status</option></select>
    </form>
    <div class="toolbar">
      <button id="compare" disabled>Compare selected</button>
      <a id="export" class="button disabled" href="#">Export CSV</a>
      <span id="count" class="muted"></span>
      <span class="spacer"></span>
      <button id="prev">‹ prev</button><button id="next">next ›</button>
    </div>
    <table class="runs"><thead><tr><th></th><th>name</th><th>scenario</th><th>method</th><th>dataset</th><th>owner</th><th>status</th>
      <th>test acc</th><th>created</th><th>duration</th><th>tags</th><th></th></tr></thead><tbody></tbody></table>
  </section>`));
  const tbody = app.querySelector("tbody");
  const form = app.querySelector("#filters");
  const syncSel = () => {
    const ids = [...selected].join(",");
    app.querySelector("#compare").disabled = selected.size < 1;
    const ex = app.querySelector("#export");
    ex.classList.toggle("disabled", !selected.size);
    ex.href = selected.size ? `/api/export?${qs({ ids, format: "csv" })}` : "#";
  };
  let active = false;
  const load = async () => {
    const data = await api(`/api/runs?${qs(state)}`);
    active = data.items.some((r) => r.status === "queued" || r.status === "running");
    app.querySelector("#count").textContent = `${data.total} runs · ${state.offset + 1}–${Math.min(state.offset + state.limit, data.total)}`;
    app.querySelector("#prev").disabled = state.offset === 0;
    app.querySelector("#next").disabled = state.offset + state.limit >= data.total;
    tbody.replaceChildren(...data.items.map((r) => h(`<tr data-id="${r.id}">
      <td><input type="checkbox" class="sel" ${selected.has(r.id) ? "checked" : ""}></td>
      <td><a href="#/run/${r.id}">${esc(r.name)}</a>${r.kind === "eval" ? ' <span class="muted">(panel)</span>' : ""}</td>
      <td>${esc(r.scenario)}</td><td>${esc(r.method)}</td><td>${esc(r.dataset)}</td><td>${esc(r.owner ?? "")}</td>
      <td class="st">${statusCell(r)}</td>
      <td>${pct(r.summary?.test?.acc ?? Object.entries(r.summary?.test ?? {}).find(([k]) => k.endsWith("/acc"))?.[1])}</td>
      <td>${new Date(r.created_at).toLocaleString()}</td><td>${duration(r)}</td>
      <td>${r.tags.map((t) => `<span class="tag">${esc(t)}</span>`).join("")}</td>
      <td>${r.status === "queued" || r.status === "running" ? '<button class="cancel">cancel</button>' : ""}
          ${["failed", "cancelled", "succeeded"].includes(r.status) ? '<button class="retry">retry</button>' : ""}</td></tr>`)));
  };
  form.addEventListener("input", () => { Object.assign(state, Object.fromEntries(new FormData(form)), { offset: 0 }); load(); });
  form.addEventListener("submit", (e) => e.preventDefault());
  tbody.addEventListener("change", (e) => {
    const id = Number(e.target.closest("tr").dataset.id);
    e.target.checked ? selected.add(id) : selected.delete(id);
    syncSel();
  });
  tbody.addEventListener("click", async (e) => {
    const id = e.target.closest("tr")?.dataset.id;
    const action = ["cancel", "retry"].find((a) => e.target.classList.contains(a));
    if (!action) return;
    try {
      await api(`/api/runs/${id}/${action}`, { method: "POST" });
    } catch (err) {
      flash(err.message); // e.g. 403: another user's run
    }
    load();
  });
  app.querySelector("#compare").addEventListener("click", () => (location.hash = `#/compare/${[...selected].join(",")}`));
  app.querySelector("#prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - state.limit); load(); });
  app.querySelector("#next").addEventListener("click", () => { state.offset += state.limit; load(); });
  await load();
  every(2000, () => active && load());
}

// ---------------------------------------------------------------- launch page
const FIELDS = [
  ["name", "text", "name"], ["dataset.name", "select", "dataset", ["digits", "synthetic", "npz", "mnist", "fashion_mnist", "cifar10", "cifar100", "svhn", "digits_mt", "multidigits", "multimnist", "cifar100_coarse"]],
  ["dataset.path", "text", ".npz path"], ["dataset.fraction", "number", "train fraction"],
  ["model.arch", "select", "model", ["cnn", "mlp", "resnet20", "resnet32", "resnet56", "resnet18"]], ["model.width", "number", "width"],
  ["train.epochs", "number", "epochs"], ["train.batch_size", "number", "batch size"], ["train.optimizer", "select", "optimizer", ["adam", "sgd"]],
  ["train.lr", "number", "learning rate"], ["train.seed", "number", "seed"], ["train.device", "select", "device", ["auto", "cpu", "cuda"]],
  ["eval.panel", "select", "robustness panel", ["quick", "standard", "none"]],
];
const show = (v) => (v !== null && typeof v === "object" ? JSON.stringify(v) : v);
const getPath = (o, p) => p.split(".").reduce((a, k) => a?.[k], o);
function setPath(o, p, v) { const ks = p.split("."); const last = ks.pop(); ks.reduce((a, k) => (a[k] ??= {}), o)[last] = v; }

function toYaml(o, ind = "") {
  return Object.entries(o).map(([k, v]) => (v && typeof v === "object" && !Array.isArray(v)
    ? `${ind}${k}:\n${toYaml(v, ind + "  ")}` : `${ind}${k}: ${Array.isArray(v) ? `[${v.join(", ")}]` : v === null ? "null" : typeof v === "string" && /[:#\s]|^$/.test(v) ? JSON.stringify(v) : v}`)).join("\n");
}

function field(path, type, label, options, value, help = "") {
  const input = type === "select"
    ? `<select data-path="${path}">${options.map((o) => `<option ${String(o) === String(value) ? "selected" : ""}>${esc(o)}</option>`).join("")}</select>`
    : `<input data-path="${path}" type="${type === "number" ? "text" : "text"}" inputmode="${type === "number" ? "decimal" : "text"}" value="${esc(value ?? "")}">`;
  return `<label class="field"><span>${esc(label)}</span>${input}<small class="help">${esc(help)}</small><small class="error" data-error="${path}"></small></label>`;
}

async function launchPage() {
  const m = await methods();
  const examples = await api("/api/examples");
  const scenarios = [...new Set(m.methods.map((x) => x.scenario))];
  let config = structuredClone(examples[0]?.config ?? { scenario: "defense", method: "great", dataset: { name: "digits" } });
  app.replaceChildren(h(`<section><h1>Launch</h1>
    <div class="launch"><form id="form" autocomplete="off">
      <label class="field"><span>preset</span><select id="preset">${examples.map((e, i) => `<option value="${i}">${esc(e.name)}</option>`).join("")}</select></label>
      <label class="field"><span>scenario</span><select data-path="scenario">${scenarios.map((s) => `<option>${esc(s)}</option>`).join("")}</select><small class="error" data-error="scenario"></small></label>
      <label class="field"><span>method</span><select data-path="method"></select><small class="help" id="method-help"></small><small class="error" data-error="method"></small></label>
      <div id="base"></div><h2>Knobs</h2><div id="knobs"></div>
      <h2>Sweep</h2>
      <label class="field"><span>seeds</span><input id="seeds" placeholder="e.g. 0,1,2 (empty: one run)"></label>
      <label class="field"><span>knob to sweep</span><select id="sweep-knob"><option value="">none</option></select></label>
      <label class="field"><span>values</span><input id="sweep-values" placeholder="e.g. 0.01,0.1,1"><small class="error" data-error="grid"></small></label>
      <label class="field"><span>experiment</span><input id="experiment" placeholder="group name (required for sweeps)"><small class="error" data-error="experiment"></small></label>
      <div class="toolbar"><button type="submit" id="launch">Launch</button><span id="result" class="muted"></span></div>
    </form>
    <div class="preview"><h2>YAML</h2><pre id="yaml"></pre><h2>curl</h2><pre id="curl"></pre></div></div></section>`));
  const form = app.querySelector("#form");
  const methodSel = form.querySelector('[data-path="method"]');

  const knobsOf = () => m.methods.find((x) => x.scenario === config.scenario && x.method === config.method)?.knobs ?? [];
  const render = () => {
    form.querySelector('[data-path="scenario"]').value = config.scenario;
    methodSel.innerHTML = m.methods.filter((x) => x.scenario === config.scenario).map((x) => `<option>${esc(x.method)}</option>`).join("");
    methodSel.value = config.method;
    form.querySelector("#method-help").textContent = m.methods.find((x) => x.method === config.method && x.scenario === config.scenario)?.help ?? "";
    form.querySelector("#base").innerHTML = FIELDS.map(([p, t, l, o]) => field(p, t, l, o, getPath(config, p) ?? defaults[p])).join("");
    form.querySelector("#knobs").innerHTML = knobsOf().map((k) => field(`params.${k.name}`, k.choices ? "select" : "text",
      k.name, k.choices, show(config.params?.[k.name] ?? k.default), `default ${show(k.default)}. ${k.help}`)).join("") || '<p class="muted">no knobs</p>';
    form.querySelector("#sweep-knob").innerHTML = '<option value="">none</option>' + knobsOf().map((k) => `<option>params.${esc(k.name)}</option>`).join("");
    preview();
  };
  const defaults = { name: "run", "dataset.fraction": 1, "model.arch": "cnn", "model.width": 16, "train.epochs": 5, "train.batch_size": 64,
    "train.optimizer": "adam", "train.lr": 0.001, "train.seed": 0, "train.device": "auto", "eval.panel": "quick" };
  const parse = (v) => {
    if (v === "" || v === "null") return null;
    if (v === "true" || v === "false") return v === "true";
    if (/^[[{]/.test(v)) { try { return JSON.parse(v); } catch { return v; } }  // e.g. {"parity": 2}
    return isNaN(Number(v)) ? v : Number(v);
  };
  const read = () => {
    const c = { scenario: config.scenario, method: config.method, params: {} };
    form.querySelectorAll("#base [data-path], #knobs [data-path]").forEach((el) => {
      const v = parse(el.value);
      if (v !== null || el.dataset.path.startsWith("params.")) setPath(c, el.dataset.path, v);
    });
    if (!["npz", "multidigits"].includes(c.dataset?.name) || c.dataset.path === null) delete c.dataset.path;
    return c;
  };
  const list = (s) => s.split(",").map((x) => x.trim()).filter(Boolean).map(parse);
  const request = () => {
    const seeds = list(form.querySelector("#seeds").value);
    const knob = form.querySelector("#sweep-knob").value;
    const values = list(form.querySelector("#sweep-values").value);
    const experiment = form.querySelector("#experiment").value || null;
    if (!seeds.length && !(knob && values.length)) return ["/api/runs", { config: read(), experiment }];
    return ["/api/sweeps", { config: read(), grid: knob && values.length ? { [knob]: values } : {}, seeds: seeds.length ? seeds : [0], experiment }];
  };
  const preview = () => {
    const [path, body] = request();
    app.querySelector("#yaml").textContent = toYaml(body.config);
    const auth = me?.auth ? ` \\\n  -H "Authorization: Bearer $GATLAB_TOKEN"` : "";
    app.querySelector("#curl").textContent = `curl -X POST ${location.origin}${path}${auth} \\\n  -H 'content-type: application/json' \\\n  -d '${JSON.stringify(body)}'`;
  };
  form.addEventListener("change", (e) => {
    if (e.target.id === "preset") config = structuredClone(examples[Number(e.target.value)].config);
    else if (e.target.dataset.path === "scenario") config = { ...read(), scenario: e.target.value, method: m.methods.find((x) => x.scenario === e.target.value).method, params: {} };
    else if (e.target.dataset.path === "method") config = { ...read(), method: e.target.value, params: {} };
    else return preview();
    render();
  });
  form.addEventListener("input", preview);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    form.querySelectorAll("[data-error]").forEach((el) => (el.textContent = ""));
    form.querySelectorAll(".invalid").forEach((el) => el.classList.remove("invalid"));
    const [path, body] = request();
    try {
      const out = await api(path, { method: "POST", body });
      location.hash = path === "/api/runs" ? `#/run/${out.id}` : `#/runs?${qs({ experiment: body.experiment })}`;
    } catch (err) {
      if (!(err instanceof ApiError) || !Array.isArray(err.detail)) { app.querySelector("#result").textContent = err.message; return; }
      for (const d of err.detail) {
        const loc = d.loc[0] === "body" ? d.loc.slice(1) : d.loc;
        const key = loc[0] === "config" ? loc.slice(1).join(".") : loc[0];
        const slot = form.querySelector(`[data-error="${CSS.escape(key)}"]`) ?? form.querySelector(`[data-error="${CSS.escape(key.split(".").slice(0, -1).join("."))}"]`);
        (slot ?? app.querySelector("#result")).textContent = `${d.msg}`;
        form.querySelector(`[data-path="${CSS.escape(key)}"]`)?.classList.add("invalid");
      }
    }
  });
  render();
}

// ---------------------------------------------------------------- run page
const metricsLoader = (id, keys, label = (k) => k) => async (range) => {
  const p = { keys: keys.join(","), max_points: 800 };
  if (range) Object.assign(p, { after_step: Math.max(-1, Math.floor(range[0]) - 1), before_step: Math.ceil(range[1]) });
  const { series } = await api(`/api/runs/${id}/metrics?${qs(p)}`);
  return keys.filter((k) => series[k]?.step.length).map((k) => ({ label: label(k), x: series[k].step, y: series[k].value }));
};

function robustness(el, ev) {
  const linf = ev.rows.filter((r) => r.norm === "linf" && r.attack !== "pgd_large_eps");
  if (!linf.length) { el.innerHTML = '<p class="muted">No robustness panel yet.</p>'; return; }
  const panels = [...new Set(ev.rows.map((r) => r.panel))];
  el.innerHTML = `<div class="badges">${ev.checks.map((c) => `<span class="badge ${c.passed ? "pass" : "fail"}" title="${esc(c.detail)}">${c.passed ? "✓" : "✗ FAILED"} ${esc(c.name)} <small>(${esc(c.panel)})</small></span>`).join("")}</div>
    ${ev.all_passed === false ? '<p class="alarm">A sanity check failed: these robustness numbers may come from gradient masking. Do not trust them until it is explained.</p>' : ""}
    <div class="rob-chart"></div><details><summary>table (${panels.join(", ")})</summary><table class="small"><tr><th>panel</th><th>attack</th><th>norm</th><th>eps</th><th>steps</th><th>restarts</th><th>n</th><th>accuracy</th></tr>
    ${ev.rows.map((r) => `<tr><td>${r.panel}</td><td>${r.attack}</td><td>${r.norm}</td><td>${r.eps.toFixed(4)}</td><td>${r.steps ?? ""}</td><td>${r.restarts ?? ""}</td><td>${r.n}</td><td>${pct(r.accuracy)}</td></tr>`).join("")}</table></details>`;
  const panel = panels.includes("standard") ? "standard" : panels[0];
  const attacks = [...new Set(linf.filter((r) => r.panel === panel).map((r) => r.attack))];
  const series = attacks.map((a) => {
    const rows = linf.filter((r) => r.panel === panel && r.attack === a).sort((x, y) => x.eps - y.eps);
    return { label: a === "worst_case" ? "WORST CASE" : a, x: rows.map((r) => r.eps), y: rows.map((r) => r.accuracy) };
  });
  lineChart(el.querySelector(".rob-chart"), { title: `accuracy vs L-inf epsilon (${panel} panel)`, xLabel: "eps", points: true, load: async () => series }).refresh();
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

async function runPage(id) {
  let run = await api(`/api/runs/${id}`);
  app.replaceChildren(h(`<section><div class="run-head"></div>
    <div class="grid charts"></div>
    <h2>Robustness</h2><div class="toolbar"><button id="panel-quick">queue quick panel</button><button id="panel-standard">queue standard panel</button><span id="panel-msg" class="muted"></span></div>
    <div id="robust"></div>
    <h2>Artifacts</h2><ul id="artifacts"></ul>
    <h2>Config</h2><pre id="config"></pre><div id="error"></div><h2>Log</h2><pre id="log" class="muted">no log yet</pre></section>`));
  const head = app.querySelector(".run-head");
  const showHead = () => {
    head.innerHTML = `<h1>${esc(run.name)} <small class="muted">#${run.id}</small></h1>
      <p>${esc(run.scenario)} · ${esc(run.method)} · ${esc(run.dataset)} · ${statusCell(run)}
      ${run.worker_host ? `· on ${esc(run.worker_host)} (${esc(run.device)})` : ""} · ${duration(run)}
      ${run.retry_count ? `· requeued ${run.retry_count}×` : ""}
      ${run.status === "running" || run.status === "queued" ? '<button id="cancel">cancel</button>' : '<button id="retry">retry</button>'}</p>
      ${run.summary?.test ? `<p>test ${Object.entries(run.summary.test).map(([k, v]) => `${esc(k)} <b>${k.endsWith("mse") || k === "loss" ? v.toFixed(4) : pct(v)}</b>`).join(" · ")} · split ${esc(run.summary.data?.train_hash)}</p>` : ""}`;
    head.querySelector("#cancel")?.addEventListener("click", async () => { run = await api(`/api/runs/${id}/cancel`, { method: "POST" }); showHead(); });
    head.querySelector("#retry")?.addEventListener("click", async () => { const r = await api(`/api/runs/${id}/retry`, { method: "POST" }); location.hash = `#/run/${r.id}`; });
    app.querySelector("#config").textContent = toYaml(run.config) + (run.summary?.env ? `\n\n# environment\n${toYaml(run.summary.env)}` : "");
    app.querySelector("#error").innerHTML = run.error ? `<h2>Error</h2><pre class="err">${esc(run.error)}\n\n${esc(run.traceback ?? "")}</pre>` : "";
  };
  showHead();
  const { series } = await api(`/api/runs/${id}/metrics?max_points=2`);
  const keys = Object.keys(series);
  const grid = app.querySelector(".charts");
  const chance = series["train/aux_chance"]?.value.at(-1);
  const specs = [
    ["loss", ["train/loss", "val/loss", "train/aux_loss"]],
    ["accuracy", ["val/acc", "train/aux_acc"], chance ? [{ label: "A's chance", value: chance }] : []],
    ["input-gradient norm per class", keys.filter((k) => k.startsWith("grad_norm/"))],
    ["input-gradient cosine similarity", ["cos/within", "cos/between"]],
    ["per-layer weight-gradient norm", keys.filter((k) => k.startsWith("layer_grad/"))],
    ["lambda and learning rate", ["train/lam", "train/lr"]],
    ["student-teacher input gradients", ["train/st_cos", "train/st_l2", "train/agreement"]],
    ["per-task loss", keys.filter((k) => k.startsWith("train/loss/"))],
    ["per-task validation metric", keys.filter((k) => k.startsWith("val/") && k.split("/").length === 3)],
    ["task gradient norm at the shared layer", keys.filter((k) => k.startsWith("task_grad_norm/"))],
    ["task gradient cosine similarity", keys.filter((k) => k.startsWith("task_cos/"))],
    ["task loss weights", keys.filter((k) => k.startsWith("train/weight/"))],
    ["gradient alignment scales", keys.filter((k) => k.startsWith("train/gal/"))],
  ].filter(([, ks]) => ks.some((k) => keys.includes(k)));
  const charts = specs.map(([title, ks, extra]) => {
    const el = document.createElement("div");
    el.dataset.chart = title;
    grid.append(el);
    return lineChart(el, { title, load: metricsLoader(id, ks.filter((k) => keys.includes(k))), extraLines: extra ?? [] });
  });
  const hist = await api(`/api/runs/${id}/histograms?limit=400`);
  if (hist.step.length) { const el = document.createElement("div"); el.dataset.chart = "histogram"; grid.append(el); heatmap(el, { title: "input-gradient histogram over time", steps: hist.step, edges: hist.edges, counts: hist.counts }); }
  await Promise.all(charts.map((c) => c.refresh()));
  const showEval = async () => {
    const ev = await api(`/api/runs/${id}/eval`);
    robustness(app.querySelector("#robust"), ev);
    if (ev.gallery) showGallery(app.querySelector("#robust"), await api(`/api/runs/${id}/gallery`));
  };
  const showArtifacts = async () => {
    const arts = await api(`/api/runs/${id}/artifacts`);
    if (arts.some((a) => a.name === "run.log")) app.querySelector("#log").textContent = (await api(`/api/runs/${id}/artifacts/run.log`)).slice(-20000);
    app.querySelector("#artifacts").innerHTML = arts.map((a) => `<li><a href="${a.url}" download>${esc(a.name)}</a> <span class="muted">${a.kind}, ${(a.size / 1024).toFixed(1)} KiB</span></li>`).join("") || '<li class="muted">none yet</li>';
  };
  await Promise.all([showEval(), showArtifacts()]);
  for (const panel of ["quick", "standard"]) {
    app.querySelector(`#panel-${panel}`).addEventListener("click", async () => {
      try { const job = await api(`/api/runs/${id}/eval`, { method: "POST", body: { panel } }); app.querySelector("#panel-msg").innerHTML = `queued as <a href="#/run/${job.id}">run ${job.id}</a>`; }
      catch (err) { app.querySelector("#panel-msg").textContent = err.message; }
    });
  }
  every(2000, async () => {
    if (run.status !== "running" && run.status !== "queued") return;
    run = await api(`/api/runs/${id}`);
    showHead();
    await Promise.all(charts.map((c) => c.refresh()));
    if (!["running", "queued"].includes(run.status)) { await Promise.all([showEval(), showArtifacts()]); if (!charts.length) route(); }
  });
}

// ---------------------------------------------------------------- compare page
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
    const mean = [], sd = [];
    for (const x of xs) {
      const v = maps.map((m) => m.get(x)).filter((y) => y != null);
      const m = v.reduce((a, b) => a + b, 0) / v.length;
      mean.push(m);
      sd.push(v.length > 1 ? Math.sqrt(v.reduce((a, b) => a + (b - m) ** 2, 0) / (v.length - 1)) : 0);
    }
    return [{ label: `${g}=${k} (${list.length} runs)`, x: xs, y: mean },
      { label: "+std", x: xs, y: mean.map((m, i) => m + sd[i]), band: "upper" },
      { label: "-std", x: xs, y: mean.map((m, i) => m - sd[i]), band: "lower" }];
  });
}

async function comparePage(idsArg) {
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
  const finals = async () => {
    const key = app.querySelector("#metric").value;
    // bucketed columns keep the exact min, max and last value of any series, however long
    const cols = await Promise.all(runs.map((r) => api(`/api/runs/${r.id}/metrics?${qs({ keys: key, max_points: 500 })}`)));
    table = runs.map((r, i) => {
      const s = cols[i].series[key] ?? { value: [], min: [], max: [] };
      const lo = Math.min(...s.min), hi = Math.max(...s.max);
      return { run: r.id, name: r.name, method: r.method, seed: r.config.train?.seed, last: s.value.at(-1), min: lo, max: hi, best: key.includes("loss") ? lo : hi };
    });
    const fmt = (x) => (x == null || !isFinite(x) ? "" : x.toFixed(4));
    app.querySelector("#finals").innerHTML = `<tr><th>run</th><th>name</th><th>method</th><th>seed</th><th>last</th><th>best</th><th>min</th><th>max</th></tr>` +
      table.map((t) => `<tr><td>${t.run}</td><td>${esc(t.name)}</td><td>${esc(t.method)}</td><td>${t.seed ?? ""}</td><td>${fmt(t.last)}</td><td>${fmt(t.best)}</td><td>${fmt(t.min)}</td><td>${fmt(t.max)}</td></tr>`).join("");
    const g = app.querySelector("#group").value;
    const groups = new Map();
    runs.forEach((r, i) => { const k = String(g ? getPath(r.config, g) ?? getPath(r, g) : "all"); groups.set(k, [...(groups.get(k) ?? []), table[i].last]); });
    app.querySelector("#groups").innerHTML = `<tr><th>${esc(g || "group")}</th><th>runs</th><th>mean</th><th>std</th></tr>` + [...groups].map(([k, vs]) => {
      const ok = vs.filter((v) => v != null);
      const mean = ok.reduce((a, b) => a + b, 0) / (ok.length || 1);
      const sd = ok.length > 1 ? Math.sqrt(ok.reduce((a, b) => a + (b - mean) ** 2, 0) / (ok.length - 1)) : 0;
      return `<tr><td>${esc(k)}</td><td>${ok.length}</td><td>${fmt(mean)}</td><td>${fmt(sd)}</td></tr>`;
    }).join("");
  };
  const evs = await Promise.all(runs.map((r) => api(`/api/runs/${r.id}/eval`)));
  const rob = evs.map((ev, i) => {
    const rows = ev.rows.filter((r) => r.attack === "worst_case").sort((a, b) => a.eps - b.eps);
    return { label: `${label(runs[i])} worst case`, x: rows.map((r) => r.eps), y: rows.map((r) => r.accuracy) };
  }).filter((s) => s.x.length);
  if (rob.length) lineChart(app.querySelector("#rob"), { title: "robustness: worst case over attacks", xLabel: "eps", points: true, load: async () => rob }).refresh();
  app.querySelector("#metric").addEventListener("change", () => { overlay.refresh(); finals(); });
  app.querySelector("#group").addEventListener("change", () => { overlay.refresh(); finals(); });
  app.querySelector("#csv").addEventListener("click", () => {
    const csv = ["run,name,method,seed,last,best,min,max", ...table.map((t) => [t.run, JSON.stringify(t.name), t.method, t.seed, t.last, t.best, t.min, t.max].join(","))].join("\n");
    const a = Object.assign(document.createElement("a"), { href: URL.createObjectURL(new Blob([csv], { type: "text/csv" })), download: "gatlab-compare.csv" });
    a.click();
  });
  await Promise.all([overlay.refresh(), finals()]);
}

// ---------------------------------------------------------------- sign-in
function flash(msg) {
  const el = h(`<div class="flash err" role="alert">${esc(msg)}</div>`);
  document.body.append(el);
  setTimeout(() => el.remove(), 6000);
}

function showUser() {
  const who = document.getElementById("who");
  if (!me?.auth) { who.textContent = "auth off (local)"; return; }
  if (!me.user) { who.textContent = ""; return; }
  who.replaceChildren(h(`<span>${esc(me.user.name)}${me.user.is_admin ? " (admin)" : ""} · <a href="#" id="signout">sign out</a></span>`));
  who.querySelector("#signout").addEventListener("click", async (e) => {
    e.preventDefault();
    await api("/api/auth/logout", { method: "POST" });
    me = null;
    route();
  });
}

function signInPage() {
  app.replaceChildren(h(`<section class="signin"><h1>Sign in</h1>
    <p class="muted">This lab server needs a user. Paste an API token (from <code>gatlab users create NAME</code>), or use a password.</p>
    <form id="signin">
      <label>API token <input name="token" type="password" autocomplete="off" placeholder="gat_..."></label>
      <p class="muted">or</p>
      <label>User <input name="username" autocomplete="username"></label>
      <label>Password <input name="password" type="password" autocomplete="current-password"></label>
      <p><button type="submit">Sign in</button> <span class="err" id="signin-error"></span></p>
    </form></section>`));
  const form = app.querySelector("#signin");
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const body = Object.fromEntries([...new FormData(form)].filter(([, v]) => v));
    try {
      me = { auth: true, user: (await api("/api/auth/login", { method: "POST", body })).user };
      route();
    } catch (err) {
      form.querySelector("#signin-error").textContent = err.message;
    }
  });
}

// ---------------------------------------------------------------- router
async function route() {
  cleanup.forEach((f) => f());
  cleanup = [];
  const [path, query] = location.hash.slice(1).split("?");
  const [, page = "runs", arg] = path.split("/");
  document.querySelectorAll("[data-nav]").forEach((a) => a.classList.toggle("active", a.dataset.nav === page));
  app.dataset.page = page;
  me ??= await api("/api/auth/me");
  showUser();
  if (me.auth && !me.user) {
    app.dataset.page = "signin";
    signInPage();
    return;
  }
  try {
    if (page === "launch") await launchPage();
    else if (page === "run") await runPage(Number(arg));
    else if (page === "compare") await comparePage(arg);
    else await runsPage(new URLSearchParams(query));
    app.dataset.ready = page;
  } catch (err) {
    if (err.status === 401) { me = null; return route(); } // the session ended: sign in again
    app.replaceChildren(h(`<section><h1>Error</h1><pre class="err">${esc(err.message)}\n${esc(err.stack ?? "")}</pre></section>`));
  }
}

window.addEventListener("hashchange", route);
route();
