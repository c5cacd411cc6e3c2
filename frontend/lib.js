// Shared by the pages: the app element, per-page timers, the signed-in session, HTML helpers,
// formatting, the metrics loader and mean ± std. Every string from the server goes through esc().
import { api, qs } from "./api.js";

export const app = document.getElementById("app");
export const session = { me: null }; // GET /api/auth/me: { auth, user }
const timers = [];
let methodsCache = null;

export const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
export const h = (html) => { const t = document.createElement("template"); t.innerHTML = html.trim(); return t.content.firstElementChild; };
export const fmtS = (s) => (s == null ? "" : s < 90 ? `${Math.round(s)} s` : s < 5400 ? `${Math.round(s / 60)} min` : `${(s / 3600).toFixed(1)} h`);
export const pct = (v) => (v == null ? "" : `${(100 * v).toFixed(1)}%`);
export const methods = async () => (methodsCache ??= await api("/api/methods"));
// Page timers: cleared when the router leaves the page.
export const every = (ms, fn) => { const t = setInterval(fn, ms); timers.push(() => clearInterval(t)); };
export const clearTimers = () => timers.splice(0).forEach((f) => f());
// Render the current page again (after sign-in, sign-out, or a run that finished).
export const rerender = () => window.dispatchEvent(new HashChangeEvent("hashchange"));

export function flash(msg) {
  const el = h(`<div class="flash err" role="alert">${esc(msg)}</div>`);
  document.body.append(el);
  setTimeout(() => el.remove(), 6000);
}

export const show = (v) => (v !== null && typeof v === "object" ? JSON.stringify(v) : v);
export const getPath = (o, p) => p.split(".").reduce((a, k) => a?.[k], o);
export function setPath(o, p, v) { const ks = p.split("."); const last = ks.pop(); ks.reduce((a, k) => (a[k] ??= {}), o)[last] = v; }

export function toYaml(o, ind = "") {
  return Object.entries(o).map(([k, v]) => (v && typeof v === "object" && !Array.isArray(v)
    ? `${ind}${k}:\n${toYaml(v, ind + "  ")}` : `${ind}${k}: ${Array.isArray(v) ? `[${v.join(", ")}]` : v === null ? "null" : typeof v === "string" && /[:#\s]|^$/.test(v) ? JSON.stringify(v) : v}`)).join("\n");
}

// mean and sample standard deviation of the values that are not null
export function meanStd(values) {
  const v = values.filter((x) => x != null);
  const mean = v.reduce((a, b) => a + b, 0) / (v.length || 1);
  const std = v.length > 1 ? Math.sqrt(v.reduce((a, b) => a + (b - mean) ** 2, 0) / (v.length - 1)) : 0;
  return { n: v.length, mean, std };
}

export const metricsLoader = (id, keys, label = (k) => k) => async (range) => {
  const p = { keys: keys.join(","), max_points: 800 };
  if (range) Object.assign(p, { after_step: Math.max(-1, Math.floor(range[0]) - 1), before_step: Math.ceil(range[1]) });
  const { series } = await api(`/api/runs/${id}/metrics?${qs(p)}`);
  return keys.filter((k) => series[k]?.step.length).map((k) => ({ label: label(k), x: series[k].step, y: series[k].value }));
};

export function statusCell(r) {
  const frac = r.total_steps ? r.step / r.total_steps : 0;
  const bar = r.status === "running" ? `<div class="bar"><div style="width:${(100 * frac).toFixed(1)}%"></div></div>
    <span class="muted">${r.step}/${r.total_steps ?? "?"}${r.eta_s != null ? ` · ETA ${fmtS(r.eta_s)}` : ""}</span>` : "";
  return `<span class="status ${r.status}">${r.status}${r.cancel_requested && r.status === "running" ? " (cancelling)" : ""}</span>${bar}`;
}

export function duration(r) {
  if (!r.started_at) return "";
  const end = r.finished_at ? new Date(r.finished_at) : new Date();
  return fmtS((end - new Date(r.started_at)) / 1000);
}
