// GAT Lab dashboard: a hash router over the pages in pages/. No build step.
import { api } from "./api.js";
import { app, clearTimers, esc, h, rerender, session } from "./lib.js";
import { comparePage } from "./pages/compare.js";
import { launchPage } from "./pages/launch.js";
import { runPage } from "./pages/run.js";
import { runsPage } from "./pages/runs.js";
import { signInPage } from "./pages/signin.js";
import { leaderboardPage, studiesPage, studyPage } from "./pages/study.js";

function showUser() {
  const who = document.getElementById("who");
  const me = session.me;
  if (!me?.auth) { who.textContent = "auth off (local)"; return; }
  if (!me.user) { who.textContent = ""; return; }
  who.replaceChildren(h(`<span>${esc(me.user.name)}${me.user.is_admin ? " (admin)" : ""} · <a href="#" id="signout">sign out</a></span>`));
  who.querySelector("#signout").addEventListener("click", async (e) => {
    e.preventDefault();
    await api("/api/auth/logout", { method: "POST" });
    session.me = null;
    rerender();
  });
}

async function route() {
  clearTimers();
  const [path, query] = location.hash.slice(1).split("?");
  const [, page = "runs", arg] = path.split("/");
  document.querySelectorAll("[data-nav]").forEach((a) => a.classList.toggle("active", a.dataset.nav === page));
  app.dataset.page = page;
  session.me ??= await api("/api/auth/me");
  showUser();
  if (session.me.auth && !session.me.user) {
    app.dataset.page = "signin";
    signInPage();
    return;
  }
  try {
    if (page === "launch") await launchPage();
    else if (page === "run") await runPage(Number(arg));
    else if (page === "compare") await comparePage(arg);
    else if (page === "studies") await studiesPage();
    else if (page === "study") await studyPage(Number(arg));
    else if (page === "leaderboard") await leaderboardPage(new URLSearchParams(query));
    else await runsPage(new URLSearchParams(query));
    app.dataset.ready = page;
  } catch (err) {
    if (err.status === 401) { session.me = null; return route(); } // the session ended: sign in again
    app.replaceChildren(h(`<section><h1>Error</h1><pre class="err">${esc(err.message)}\n${esc(err.stack ?? "")}</pre></section>`));
  }
}

window.addEventListener("hashchange", route);
route();
