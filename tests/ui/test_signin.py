"""Signing in to a lab server (auth on) in a real headless Chromium: token, session cookie the page
cannot read, owners in the runs table, another user's run refused, sign out."""

from __future__ import annotations

import httpx
import pytest
from playwright.sync_api import expect

from bench._common import Stack

from ..service.conftest import tiny_config
from .conftest import ARTIFACTS, browser_page


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    s = Stack.create(
        tmp_path_factory.mktemp("signin"), None, None, GATLAB_AUTH="true"
    )  # no worker: runs stay queued
    yield s
    s.stop()


def test_sign_in_with_a_token_see_owners_and_sign_out(lab):
    alice = lab.cli("users", "create", "alice").strip().splitlines()[-1]
    bob = lab.cli("users", "create", "bob").strip().splitlines()[-1]
    r = httpx.post(
        f"{lab.base}/api/runs",
        json={"config": tiny_config(name="alices-run")},
        headers={"Authorization": f"Bearer {alice}"},
    )
    assert r.status_code == 201
    with browser_page(lab) as page:
        page.goto(f"{lab.base}/#/runs")
        expect(page.locator("#app[data-page=signin]")).to_be_visible()
        page.fill('input[name="token"]', "gat_wrong")
        page.click('button[type="submit"]')
        expect(page.locator("#signin-error")).to_contain_text("invalid or revoked token")
        page.screenshot(path=ARTIFACTS / "signin.png")
        page.fill('input[name="token"]', bob)
        page.click('button[type="submit"]')
        page.wait_for_selector('#app[data-ready="runs"]', timeout=30_000)
        expect(page.locator("#who")).to_contain_text("bob")
        assert page.evaluate("document.cookie") == ""  # HttpOnly: the page's scripts cannot read the session
        row = page.locator("tr", has_text="alices-run")
        expect(row).to_contain_text("alice")
        row.locator("button.cancel").click()  # bob may read alice's run, not cancel it
        expect(page.locator(".flash")).to_contain_text("belongs to another user")
        expect(row).to_contain_text("queued")
        page.goto(f"{lab.base}/#/launch")
        page.wait_for_selector('#app[data-ready="launch"]', timeout=30_000)
        assert "Authorization: Bearer $GATLAB_TOKEN" in page.inner_text("#curl")
        assert bob not in page.content()  # the token is never put back into the page
        session = {c["name"]: c["value"] for c in page.context.cookies()}
        assert httpx.get(f"{lab.base}/api/runs", cookies=session).status_code == 200
        page.click("#signout")
        expect(page.locator("#app[data-page=signin]")).to_be_visible()
        assert httpx.get(f"{lab.base}/api/runs", cookies=session).status_code == 401  # ended on the server
        assert [
            e for e in page.errors if "401" not in e and "403" not in e
        ] == []  # refused requests log themselves
        assert page.foreign == []
