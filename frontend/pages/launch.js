// The launch page: presets, the method's knobs, a sweep, YAML and curl equivalents, errors beside the field.
import { api, ApiError, qs, upload } from "../api.js";
import { app, esc, getPath, h, methods, session, setPath, show, toYaml } from "../lib.js";

// Which config fields the form shows, and their labels: a layout choice. Their types, choices,
// defaults and help come from the run config's JSON schema (GET /api/methods), the one description.
const BASE = [
  ["name", "name"], ["dataset.name", "dataset"], ["dataset.path", ".npz path"], ["dataset.fraction", "train fraction"],
  ["model.arch", "model"], ["model.width", "width"], ["train.epochs", "epochs"], ["train.batch_size", "batch size"],
  ["train.optimizer", "optimizer"], ["train.lr", "learning rate"], ["train.seed", "seed"], ["train.device", "device"],
  ["eval.panel", "robustness panel"],
];

// A config field as the schema describes it: { options (an enum), default, help }.
function describe(schema, path) {
  const deref = (node) => (node?.$ref ? schema.$defs[node.$ref.split("/").at(-1)] : node);
  const variant = deref((schema.oneOf ?? schema.anyOf)[0]); // the sections are the same in every method's model
  const [section, key] = path.includes(".") ? path.split(".") : [null, path];
  const holder = section ? deref(variant.properties[section]) : variant;
  const prop = holder.properties[key];
  const plain = prop.anyOf?.find((p) => p.type !== "null") ?? prop;
  const dflt = "default" in prop ? prop.default : section ? variant.properties[section].default?.[key] : undefined;
  return { options: plain.enum, default: dflt ?? plain.enum?.[0], help: prop.description ?? "" };
}

function field(path, type, label, options, value, help = "") {
  const input = type === "select"
    ? `<select data-path="${path}">${options.map((o) => `<option ${String(o) === String(value) ? "selected" : ""}>${esc(o)}</option>`).join("")}</select>`
    : `<input data-path="${path}" type="${type === "number" ? "text" : "text"}" inputmode="${type === "number" ? "decimal" : "text"}" value="${esc(value ?? "")}">`;
  return `<label class="field"><span>${esc(label)}</span>${input}<small class="help">${esc(help)}</small><small class="error" data-error="${path}"></small></label>`;
}

function evaluateForm(form) {
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    form.querySelectorAll("[data-error]").forEach((el) => (el.textContent = ""));
    const v = Object.fromEntries(new FormData(form));
    const source = v.upload?.size || !v.model_path ? {} : { model_path: v.model_path };
    const model = v.arch ? { model: { arch: v.arch, ...(v.width ? { width: Number(v.width) } : {}) } } : {};
    const body = { dataset: { name: v.dataset }, ...model, eval: { ...source, panel: v.panel, ...(v.n ? { n: Number(v.n) } : {}) } };
    try {
      if (v.upload?.size) {
        form.querySelector("#evaluate-result").textContent = `uploading ${v.upload.name}…`;
        body.eval.model_upload = (await upload("/api/models", v.upload).catch((err) => {
          const msg = Array.isArray(err.detail) ? err.detail.map((d) => d.msg).join("; ") : err.message;
          throw new ApiError(err.status, [{ loc: ["body", "eval", "model_upload"], msg }]);
        })).upload;
        form.querySelector("#evaluate-result").textContent = "";
      }
      const out = await api("/api/evaluations", { method: "POST", body });
      location.hash = `#/run/${out.id}`;
    } catch (err) {
      const details = err instanceof ApiError && Array.isArray(err.detail) ? err.detail : [{ loc: [], msg: err.message }];
      for (const d of details) {
        const slot = form.querySelector(`[data-error="${CSS.escape(d.loc.slice(1).join("."))}"]`) ?? form.querySelector("#evaluate-result");
        slot.textContent = d.msg;
      }
    }
  });
}

function pageHtml(examples, scenarios) {
  const presets = examples.map((e, i) => `<option value="${i}">${esc(e.name)}</option>`).join("");
  const scenarioOptions = scenarios.map((s) => `<option>${esc(s)}</option>`).join("");
  return `<section><h1>Launch</h1>
    <div class="launch"><form id="form" autocomplete="off">
      <label class="field"><span>preset</span><select id="preset">${presets}</select></label>
      <label class="field"><span>scenario</span><select data-path="scenario">${scenarioOptions}</select><small class="error" data-error="scenario"></small></label>
      <label class="field"><span>method</span><select data-path="method"></select><small class="help" id="method-help"></small><small class="error" data-error="method"></small></label>
      <div id="base"></div><h2>Knobs</h2><div id="knobs"></div>
      <h2>Sweep</h2>
      <label class="field"><span>seeds</span><input id="seeds" placeholder="e.g. 0,1,2 (empty: one run)"></label>
      <label class="field"><span>knob to sweep</span><select id="sweep-knob"><option value="">none</option></select></label>
      <label class="field"><span>values</span><input id="sweep-values" placeholder="e.g. 0.01,0.1,1"><small class="error" data-error="grid"></small></label>
      <label class="field"><span>experiment</span><input id="experiment" placeholder="group name (required for sweeps)"><small class="error" data-error="experiment"></small></label>
      <div class="toolbar"><button type="submit" id="launch">Launch</button><span id="result" class="muted"></span></div>
      <h2>Study</h2><p class="muted">Compare methods: this form's data, model, schedule and panel for every method ticked (the one above with its knobs, the others at their defaults), over the seeds above (default 0), reported against a baseline.</p>
      <div id="study-methods" class="checks"></div>
      <label class="field"><span>baseline</span><select id="study-baseline"></select></label>
      <label class="field"><span>read on</span><select id="study-split"><option value="test">the test split (a comparison)</option><option value="val">the validation split (a tuning study: no panel)</option></select></label>
      <label class="field"><span>study name</span><input id="study-name" placeholder="letters, digits, . _ -"></label>
      <div class="toolbar"><button type="button" id="launch-study">Launch study</button><span id="study-result" class="error"></span></div>
    </form>
    <div class="preview"><h2>YAML</h2><pre id="yaml"></pre><h2>curl</h2><pre id="curl"></pre></div></div>
    <h2>Evaluate a model trained elsewhere</h2>
    <form id="evaluate" autocomplete="off"><p class="muted">A TorchScript file (images in [0, 1] → logits) or safetensors weights of one of the lab's architectures, as <code>gatlab export</code> writes them,
      judged by the same panel as every run: uploaded here (up to the server's request limit) or named under the server's data root. A pickled model is refused: loading one would run its code.</p>
      <label class="field"><span>upload</span><input name="upload" type="file" accept=".pt,.pth,.safetensors"><small class="error" data-error="eval.model_upload"></small></label>
      <label class="field"><span>or a file under the data root</span><input name="model_path" placeholder="models/my-model.pt"><small class="error" data-error="eval.model_path"></small></label>
      <label class="field"><span>architecture</span><input name="arch" placeholder="safetensors without it in the file: e.g. madry_cnn"><small class="error" data-error="model.arch"></small></label>
      <label class="field"><span>width</span><input name="width" placeholder="16"><small class="error" data-error="model.width"></small></label>
      <label class="field"><span>dataset</span><input name="dataset" value="digits"><small class="error" data-error="dataset.name"></small></label>
      <label class="field"><span>panel</span><select name="panel"><option>quick</option><option>standard</option></select></label>
      <label class="field"><span>examples</span><input name="n" placeholder="the panel's default"><small class="error" data-error="eval.n"></small></label>
      <div class="toolbar"><button type="submit">Evaluate</button><span class="muted" id="evaluate-result"></span></div></form></section>`;
}

// A form value as typed: null, a boolean, JSON for a mapping, a number, or the text itself.
function parse(v) {
  if (v === "" || v === "null") return null;
  if (v === "true" || v === "false") return v === "true";
  if (/^[[{]/.test(v)) { try { return JSON.parse(v); } catch { return v; } }  // e.g. {"parity": 2}
  return isNaN(Number(v)) ? v : Number(v);
}

const list = (s) => s.split(",").map((x) => x.trim()).filter(Boolean).map(parse);
const errorsOf = (err) => (err instanceof ApiError && Array.isArray(err.detail) ? err.detail : [{ loc: [], msg: err.message }]);

// The launch form's state: the catalogue `m`, the config being edited, the form element.
class Launch {
  constructor(m, examples, form) {
    this.m = m;
    this.examples = examples;
    this.form = form;
    this.config = structuredClone(examples[0]?.config ?? { scenario: "defense", method: "great", dataset: { name: "digits" } });
  }

  $(sel) { return this.form.querySelector(sel); }

  methodsHere() { return this.m.methods.filter((x) => x.scenario === this.config.scenario); }

  knobs() { return this.methodsHere().find((x) => x.method === this.config.method)?.knobs ?? []; }

  render() {
    const { config, m } = this;
    this.$('[data-path="scenario"]').value = config.scenario;
    const methodSel = this.$('[data-path="method"]');
    methodSel.innerHTML = this.methodsHere().map((x) => `<option>${esc(x.method)}</option>`).join("");
    methodSel.value = config.method;
    this.$("#method-help").textContent = this.methodsHere().find((x) => x.method === config.method)?.help ?? "";
    this.$("#base").innerHTML = BASE.map(([p, label]) => {
      const d = describe(m.config_schema, p);
      return field(p, d.options ? "select" : "text", label, d.options, getPath(config, p) ?? d.default, d.help);
    }).join("");
    this.$("#knobs").innerHTML = this.knobs().map((k) => field(`params.${k.name}`, k.choices ? "select" : "text",
      k.name, k.choices, show(config.params?.[k.name] ?? k.default), `default ${show(k.default)}. ${k.help}`)).join("")
      || '<p class="muted">no knobs</p>';
    this.$("#sweep-knob").innerHTML = '<option value="">none</option>'
      + this.knobs().map((k) => `<option>params.${esc(k.name)}</option>`).join("");
    const names = this.methodsHere().map((x) => x.method);
    this.$("#study-methods").innerHTML = names.map((n) =>
      `<label><input type="checkbox" value="${esc(n)}" ${n === config.method ? "checked" : ""}> ${esc(n)}</label>`).join(" ");
    this.$("#study-baseline").innerHTML = names.map((n) => `<option>${esc(n)}</option>`).join("");
    this.preview();
  }

  // The config the form holds now.
  read() {
    const c = { scenario: this.config.scenario, method: this.config.method, params: {} };
    this.form.querySelectorAll("#base [data-path], #knobs [data-path]").forEach((el) => {
      const v = parse(el.value);
      if (v !== null || el.dataset.path.startsWith("params.")) setPath(c, el.dataset.path, v);
    });
    if (!["npz", "multidigits"].includes(c.dataset?.name) || c.dataset.path === null) delete c.dataset.path;
    return c;
  }

  // [path, body]: one run, or a sweep when seeds or a knob's values are given.
  request() {
    const seeds = list(this.$("#seeds").value);
    const knob = this.$("#sweep-knob").value;
    const values = list(this.$("#sweep-values").value);
    const experiment = this.$("#experiment").value || null;
    if (!seeds.length && !(knob && values.length)) return ["/api/runs", { config: this.read(), experiment }];
    const grid = knob && values.length ? { [knob]: values } : {};
    return ["/api/sweeps", { config: this.read(), grid, seeds: seeds.length ? seeds : [0], experiment }];
  }

  preview() {
    const [path, body] = this.request();
    app.querySelector("#yaml").textContent = toYaml(body.config);
    const auth = session.me?.auth ? ` \\\n  -H "Authorization: Bearer $GATLAB_TOKEN"` : "";
    app.querySelector("#curl").textContent =
      `curl -X POST ${location.origin}${path}${auth} \\\n  -H 'content-type: application/json' \\\n  -d '${JSON.stringify(body)}'`;
  }

  changed(e) {
    const first = (scenario) => this.m.methods.find((x) => x.scenario === scenario).method;
    if (e.target.id === "preset") this.config = structuredClone(this.examples[Number(e.target.value)].config);
    else if (e.target.dataset.path === "scenario") {
      this.config = { ...this.read(), scenario: e.target.value, method: first(e.target.value), params: {} };
    } else if (e.target.dataset.path === "method") this.config = { ...this.read(), method: e.target.value, params: {} };
    else return this.preview();
    this.render();
  }

  // The study: this form's data, model, schedule and panel for every method ticked.
  design() {
    const c = this.read(), seeds = list(this.$("#seeds").value);
    const picked = [...this.form.querySelectorAll("#study-methods input:checked")].map((el) => el.value);
    const { seed, ...train } = c.train ?? {};
    return {
      name: this.$("#study-name").value, scenario: c.scenario, dataset: c.dataset, model: c.model, train, eval: c.eval,
      methods: picked.map((name) => ({ method: name, ...(name === c.method ? { params: c.params } : {}) })),
      seeds: seeds.length ? seeds : [0], baseline: this.$("#study-baseline").value, split: this.$("#study-split").value,
    };
  }

  async launchStudy() {
    try {
      const out = await api("/api/studies", { method: "POST", body: this.design() });
      location.hash = `#/study/${out.id}`;
    } catch (err) {
      this.$("#study-result").textContent = errorsOf(err).map((d) => `${d.loc.slice(1).join(".") || "study"}: ${d.msg}`).join("; ");
    }
  }

  async submit(e) {
    e.preventDefault();
    this.form.querySelectorAll("[data-error]").forEach((el) => (el.textContent = ""));
    this.form.querySelectorAll(".invalid").forEach((el) => el.classList.remove("invalid"));
    const [path, body] = this.request();
    try {
      const out = await api(path, { method: "POST", body });
      location.hash = path === "/api/runs" ? `#/run/${out.id}` : `#/runs?${qs({ experiment: body.experiment })}`;
    } catch (err) {
      if (!(err instanceof ApiError) || !Array.isArray(err.detail)) { app.querySelector("#result").textContent = err.message; return; }
      for (const d of err.detail) this.showError(d);
    }
  }

  // An error beside its field (or its section's, or the result line), the field marked invalid.
  showError(d) {
    const loc = d.loc[0] === "body" ? d.loc.slice(1) : d.loc;
    const key = loc[0] === "config" ? loc.slice(1).join(".") : loc[0];
    const slot = this.$(`[data-error="${CSS.escape(key)}"]`)
      ?? this.$(`[data-error="${CSS.escape(key.split(".").slice(0, -1).join("."))}"]`);
    (slot ?? app.querySelector("#result")).textContent = `${d.msg}`;
    this.$(`[data-path="${CSS.escape(key)}"]`)?.classList.add("invalid");
  }
}

export async function launchPage() {
  const m = await methods();
  const examples = await api("/api/examples");
  const scenarios = [...new Set(m.methods.map((x) => x.scenario))];
  app.replaceChildren(h(pageHtml(examples, scenarios)));
  evaluateForm(app.querySelector("#evaluate"));
  const launch = new Launch(m, examples, app.querySelector("#form"));
  launch.form.addEventListener("change", (e) => launch.changed(e));
  launch.form.addEventListener("input", () => launch.preview());
  launch.$("#launch-study").addEventListener("click", () => launch.launchStudy());
  launch.form.addEventListener("submit", (e) => launch.submit(e));
  launch.render();
}
