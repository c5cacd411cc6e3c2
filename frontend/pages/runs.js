// The runs page: filters, paging, live progress, cancel/retry, selection for compare and export.
import { api, qs } from "../api.js";
import { app, duration, esc, every, flash, h, methods, pct, statusCell } from "../lib.js";

const STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"];
const options = (xs) => xs.map((s) => `<option>${esc(s)}</option>`).join("");

function pageHtml(state, scenarios, names) {
  return `<section>
    <h1>Runs</h1>
    <form class="filters" id="filters">
      <select name="status"><option value="">any status</option>${options(STATUSES)}</select>
      <select name="scenario"><option value="">any scenario</option>${options(scenarios)}</select>
      <select name="method"><option value="">any method</option>${options(names)}</select>
      <input name="experiment" placeholder="experiment" value="${esc(state.experiment)}">
      <input name="q" placeholder="search name or notes">
      <select name="sort"><option value="-created_at">newest</option><option value="created_at">oldest</option>
        <option value="name">name</option><option value="status">status</option></select>
    </form>
    <div class="toolbar">
      <button id="compare" disabled>Compare selected</button>
      <a id="export" class="button disabled" href="#">Export CSV</a>
      <span id="count" class="muted"></span>
      <span class="spacer"></span>
      <button id="prev">‹ prev</button><button id="next">next ›</button>
    </div>
    <table class="runs"><thead><tr><th></th><th>name</th><th>scenario</th><th>method</th><th>dataset</th><th>owner</th>
      <th>status</th><th>test acc</th><th>created</th><th>duration</th><th>tags</th><th></th></tr></thead><tbody></tbody></table>
  </section>`;
}

function rowHtml(r, checked) {
  const acc = r.summary?.test?.acc ?? Object.entries(r.summary?.test ?? {}).find(([k]) => k.endsWith("/acc"))?.[1];
  const live = r.status === "queued" || r.status === "running";
  return `<tr data-id="${r.id}">
      <td><input type="checkbox" class="sel" ${checked ? "checked" : ""}></td>
      <td><a href="#/run/${r.id}">${esc(r.name)}</a>${r.kind === "eval" ? ' <span class="muted">(panel)</span>' : ""}</td>
      <td>${esc(r.scenario)}</td><td>${esc(r.method)}</td><td>${esc(r.dataset)}</td><td>${esc(r.owner ?? "")}</td>
      <td class="st">${statusCell(r)}</td>
      <td>${pct(acc)}</td>
      <td>${new Date(r.created_at).toLocaleString()}</td><td>${duration(r)}</td>
      <td>${r.tags.map((t) => `<span class="tag">${esc(t)}</span>`).join("")}</td>
      <td>${live ? '<button class="cancel">cancel</button>' : ""}
          ${["failed", "cancelled", "succeeded"].includes(r.status) ? '<button class="retry">retry</button>' : ""}</td></tr>`;
}

// The selection drives Compare and Export.
function syncSelection(selected) {
  const ids = [...selected].join(",");
  app.querySelector("#compare").disabled = selected.size < 1;
  const ex = app.querySelector("#export");
  ex.classList.toggle("disabled", !selected.size);
  ex.href = selected.size ? `/api/export?${qs({ ids, format: "csv" })}` : "#";
}

// One page of runs for the filters in `state`; answers whether any of them is still queued or running.
async function loadRuns(state, selected) {
  const data = await api(`/api/runs?${qs(state)}`);
  const last = Math.min(state.offset + state.limit, data.total);
  app.querySelector("#count").textContent = `${data.total} runs · ${state.offset + 1}–${last}`;
  app.querySelector("#prev").disabled = state.offset === 0;
  app.querySelector("#next").disabled = state.offset + state.limit >= data.total;
  app.querySelector("tbody").replaceChildren(...data.items.map((r) => h(rowHtml(r, selected.has(r.id)))));
  return data.items.some((r) => r.status === "queued" || r.status === "running");
}

export async function runsPage(params) {
  const m = await methods();
  const scenarios = [...new Set(m.methods.map((x) => x.scenario))];
  const names = [...new Set(m.methods.map((x) => x.method))];
  const state = { status: "", scenario: "", method: "", experiment: params.get("experiment") ?? "", q: "",
    sort: "-created_at", offset: 0, limit: 50 };
  const selected = new Set();
  app.replaceChildren(h(pageHtml(state, scenarios, names)));
  const tbody = app.querySelector("tbody");
  const form = app.querySelector("#filters");
  let active = false;
  const load = async () => { active = await loadRuns(state, selected); };
  form.addEventListener("input", () => { Object.assign(state, Object.fromEntries(new FormData(form)), { offset: 0 }); load(); });
  form.addEventListener("submit", (e) => e.preventDefault());
  tbody.addEventListener("change", (e) => {
    const id = Number(e.target.closest("tr").dataset.id);
    e.target.checked ? selected.add(id) : selected.delete(id);
    syncSelection(selected);
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
