// The sign-in page of a lab server (auth on): an API token, or a user name and password.
import { api } from "../api.js";
import { app, h, rerender, session } from "../lib.js";

export function signInPage() {
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
      session.me = { auth: true, user: (await api("/api/auth/login", { method: "POST", body })).user };
      rerender();
    } catch (err) {
      form.querySelector("#signin-error").textContent = err.message;
    }
  });
}
