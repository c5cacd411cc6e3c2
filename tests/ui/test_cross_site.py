"""Cross-site requests from a real browser (Debian's Chromium): a page on another origin cannot
change anything, in the embedded auth-off mode (any request) or on a lab server (a signed-in
cookie, from another port of the same host: same site for SameSite=Strict); DNS rebinding meets
the Host allow-list; the dashboard's pages carry CSP, nosniff and frame-ancestors 'none'."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from playwright.sync_api import expect, sync_playwright

from bench._common import Stack

from ..service.conftest import tiny_config
from .conftest import FLAGS


@contextmanager
def attacker_site(script: str):
    """Another origin (another port on 127.0.0.1) serving one page that runs `script`, then sets its title."""
    page = (
        f"<!doctype html><title>attacking</title><script>(async () => {{ try {{ {script} }} catch (e) {{}} "
        f"document.title = 'done'; }})();</script>".encode()
    )

    class Page(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()


@contextmanager
def chromium(*extra_flags: str):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[*FLAGS, *extra_flags])
        yield browser.new_context()
        browser.close()


def forged_posts(base: str, run_id: int) -> str:
    """What a hostile page can send without a preflight: 'simple' no-cors POSTs, cookies included."""
    return "".join(
        f"await fetch('{base}/api/runs/{run_id}/{action}', {{method: 'POST', mode: 'no-cors', credentials: 'include'}});"
        for action in ("cancel", "retry")
    )


@pytest.fixture
def embedded(tmp_path):
    s = Stack.create(tmp_path, None, None)  # auth off, like `gatlab up`; no worker: runs stay queued
    yield s
    s.stop()


def test_embedded_mode_a_page_on_another_origin_cannot_cancel_a_run(embedded):
    run_id = embedded.http.post("/api/runs", json={"config": tiny_config()}).json()["id"]
    with chromium() as ctx, attacker_site(forged_posts(embedded.base, run_id)) as evil:
        page = ctx.new_page()
        page.goto(evil)
        expect(page).to_have_title("done", timeout=20_000)
    run = embedded.http.get(f"/api/runs/{run_id}").json()
    assert run["status"] == "queued" and not run["cancel_requested"], run
    # The app's own page still may: the dashboard's cancel button works.
    with chromium() as ctx:
        page = ctx.new_page()
        page.goto(f"{embedded.base}/#/runs")
        page.wait_for_selector('#app[data-ready="runs"]', timeout=30_000)
        page.locator("tr", has_text="tiny").locator("button.cancel").click()
        expect(page.locator("tr", has_text="tiny")).to_contain_text("cancelled", timeout=10_000)


def test_dns_rebinding_meets_the_host_allow_list(embedded):
    """A name the attacker controls, resolved to 127.0.0.1 (Chromium's resolver rules stand in for
    the rebinding DNS server): the API answers 400 and no data leaves."""
    with chromium("--host-resolver-rules=MAP rebind.test 127.0.0.1") as ctx:
        page = ctx.new_page()
        r = page.goto(f"http://rebind.test:{embedded.port}/api/runs")
        assert r.status == 400 and "GATLAB_ALLOWED_HOSTS" in page.content()
        r = page.goto(f"http://localhost:{embedded.port}/api/runs")  # the loopback names are the app's own
        assert r.status == 200


def test_lab_mode_a_page_on_another_port_cannot_use_the_session_cookie(tmp_path):
    lab = Stack.create(tmp_path, None, None, GATLAB_AUTH="true")
    try:
        alice = lab.cli("users", "create", "alice").strip().splitlines()[-1]
        as_alice = {"Authorization": f"Bearer {alice}"}
        run_id = httpx.post(f"{lab.base}/api/runs", json={"config": tiny_config()}, headers=as_alice).json()[
            "id"
        ]
        with chromium() as ctx, attacker_site(forged_posts(lab.base, run_id)) as evil:
            page = ctx.new_page()
            page.goto(f"{lab.base}/#/runs")
            page.fill('input[name="token"]', alice)
            page.click('button[type="submit"]')
            page.wait_for_selector('#app[data-ready="runs"]', timeout=30_000)
            page.goto(evil)  # same site as the lab (127.0.0.1), so the SameSite=Strict cookie goes along
            expect(page).to_have_title("done", timeout=20_000)
            run = lab.http.get(f"/api/runs/{run_id}").json()
            assert run["status"] == "queued" and not run["cancel_requested"], run
            page.goto(f"{lab.base}/#/runs")  # the signed-in dashboard itself still may
            page.wait_for_selector('#app[data-ready="runs"]', timeout=30_000)
            page.locator("tr", has_text="tiny").locator("button.cancel").click()
            expect(page.locator("tr", has_text="tiny")).to_contain_text("cancelled", timeout=10_000)
    finally:
        lab.stop()


def test_pages_carry_csp_nosniff_and_refuse_framing(embedded):
    for path in ("/", "/app.js", "/api/runs"):
        h = embedded.http.get(path).headers
        assert (
            "default-src 'self'" in h["content-security-policy"]
            and "frame-ancestors 'none'" in h["content-security-policy"]
        )
        assert h["x-content-type-options"] == "nosniff"
    frame = (
        f"const f = document.createElement('iframe'); f.src = '{embedded.base}/';"
        "document.documentElement.appendChild(f); await new Promise(r => setTimeout(r, 2000));"
    )
    with chromium() as ctx, attacker_site(frame) as evil:
        page = ctx.new_page()
        page.goto(evil)
        expect(page).to_have_title("done", timeout=20_000)
        assert len(page.frames) == 2
        assert (
            page.frames[1].query_selector("#app") is None
        )  # the dashboard never renders inside another site
