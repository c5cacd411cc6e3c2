"""Every robustness panel run on a run stays readable on its page: the latest is shown, a selector
reaches the earlier ones (the API keeps each panel job's results apart)."""

from __future__ import annotations

from playwright.sync_api import expect

from bench._common import Stack

from ..service.conftest import tiny_config
from .conftest import browser_page, wait_until

FINAL = ("succeeded", "failed", "cancelled")


def test_the_run_page_shows_the_latest_panel_and_reaches_the_earlier_one(tmp_path):
    lab = Stack.create(tmp_path, None, None)
    try:
        lab.start_worker()
        run_id = lab.http.post(
            "/api/runs", json={"config": tiny_config(eval={"panel": "quick", "n": 20})}
        ).json()["id"]
        lab.wait_for(run_id, lambda r: r["status"] in FINAL, what="trained")
        job = lab.http.post(f"/api/runs/{run_id}/eval", json={"panel": "quick", "n": 10}).json()["id"]
        lab.wait_for(job, lambda r: r["status"] in FINAL, what="panel job finished")
        with browser_page(lab) as page:
            page.goto(f"{lab.base}/#/run/{run_id}")
            page.wait_for_selector('#app[data-ready="run"]', timeout=30_000)
            picker = page.locator("#panel-job")
            expect(picker.locator("option")).to_have_count(2)
            assert picker.input_value() == str(job)
            ns = lambda: {
                int(t) for t in page.locator("#robust table tr td:nth-child(7)").all_text_contents()
            }
            assert ns() <= {10}
            picker.select_option(str(run_id))  # the panel at the end of training, on 20 examples
            wait_until(
                page,
                "[...document.querySelectorAll('#robust table td:nth-child(7)')].some(td => td.textContent === '20')",
            )
            assert max(ns()) == 20 and page.locator("#panel-job").input_value() == str(run_id)
            assert page.errors == [] and page.foreign == []
    finally:
        lab.stop()
