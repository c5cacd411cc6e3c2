"""Every robustness panel run on a run stays readable on its page: the latest is shown, a selector
reaches the earlier ones (the API keeps each panel job's results apart)."""

from __future__ import annotations

from playwright.sync_api import expect

from bench._common import Stack

from ..service.conftest import tiny_config
from .conftest import ARTIFACTS, browser_page, wait_until

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


def test_a_masked_model_brought_from_elsewhere_is_flagged_on_its_run_page(tmp_path):
    """A TorchScript model with quantised inputs (zero gradients), evaluated through the lab like any
    run: the API and the page show the failed checks, every accuracy's interval and the probe."""
    import torch

    from worker.gat import data as gdata

    from ..gat.conftest import fit_erm
    from ..gat.test_checks import Quantised

    root = tmp_path / "data"
    (root / "models").mkdir(parents=True)
    digits = gdata.load({"name": "digits"})
    torch.save(torch.nn.Linear(2, 2), tmp_path / "pickled.pt")  # what the upload must refuse
    x = digits.test.images()[:4]
    torch.jit.trace(Quantised(fit_erm(digits, epochs=5)), x).save(str(root / "models" / "masked.pt"))
    lab = Stack.create(tmp_path, None, None, GATLAB_DATA_ROOT=str(root))
    try:
        body = {"dataset": {"name": "digits"}, "eval": {"panel": "quick", "n": 60}}
        outside = lab.http.post(
            "/api/evaluations", json={**body, "eval": {**body["eval"], "model_path": "../x.pt"}}
        )
        assert outside.status_code == 422 and outside.json()["detail"][0]["loc"] == [
            "body",
            "eval",
            "model_path",
        ]
        body["eval"]["model_path"] = "models/masked.pt"
        by_path = lab.http.post("/api/evaluations", json=body).json()
        assert by_path["kind"] == "eval" and by_path["method"] == "external model"
        with browser_page(lab) as page:  # the same file uploaded through the launch page's form
            page.goto(f"{lab.base}/#/launch")
            form = page.locator("#evaluate")
            form.locator('input[name="upload"]').set_input_files(str(tmp_path / "pickled.pt"))
            form.locator('input[name="n"]').fill("60")
            form.locator('button[type="submit"]').click()
            expect(form.locator('[data-error="eval.model_upload"]')).to_contain_text("pickled model")
            assert page.errors and all("422" in e for e in page.errors)  # the refused upload's own
            page.errors.clear()
            form.locator('input[name="upload"]').set_input_files(str(root / "models" / "masked.pt"))
            form.locator('button[type="submit"]').click()
            page.wait_for_url(f"{lab.base}/#/run/*", timeout=30_000)
            run = {"id": int(page.url.rsplit("/", 1)[1])}
            assert page.errors == [] and page.foreign == []
        uploaded = lab.http.get(f"/api/runs/{run['id']}").json()
        assert uploaded["config"]["eval"]["model_upload"].endswith(".pt") and uploaded["kind"] == "eval"
        lab.start_worker()
        for r in (by_path, run):
            done = lab.wait_for(r["id"], lambda r: r["status"] in FINAL, what="evaluated")
            assert done["status"] == "succeeded", done
        ev = lab.http.get(f"/api/runs/{run['id']}/eval").json()
        same = lab.http.get(f"/api/runs/{by_path['id']}/eval").json()  # one model, whichever way it came
        assert [(c["name"], c["passed"]) for c in ev["checks"]] == [
            (c["name"], c["passed"]) for c in same["checks"]
        ]
        failed = {c["name"] for c in ev["checks"] if not c["passed"]}
        assert {"white_box_beats_black_box", "autoattack_no_zero_gradients"} <= failed and ev[
            "all_passed"
        ] is False
        assert ev["summary"]["probe"]["accuracy"] < ev["summary"]["probe"]["chance"] + 0.1  # zero gradients
        zero = next(c for c in ev["checks"] if c["name"] == "autoattack_no_zero_gradients")
        assert "zero gradient" in zero["detail"] and zero["severity"] == "masking"  # pyautoattack's own words
        assert ev["masking_suspected"] is True
        with browser_page(lab) as page:
            page.goto(f"{lab.base}/#/run/{run['id']}")
            page.wait_for_selector('#app[data-ready="run"]', timeout=30_000)
            page.wait_for_selector("#robust .headline", timeout=30_000)
            expect(page.locator("#robust .badge.fail", has_text="white_box_beats_black_box")).to_have_count(1)
            expect(page.locator("#robust .alarm").first).to_be_visible()
            warned = page.locator("#robust .failed-check", has_text="autoattack_no_zero_gradients")
            expect(warned).to_contain_text("zero gradient")  # the library's warning, shown as a failed check
            expect(warned).to_contain_text("masking suspected")
            expect(page.locator("#robust .headline .probe")).to_contain_text("gradient probe")
            expect(page.locator("#robust .headline")).to_contain_text("of 60 test examples")
            fooled = ev["summary"]["min_norm"]["norms"]
            drawn = int(page.locator("#robust .norm-chart").get_attribute("data-points"))
            assert (
                drawn >= len({v for v in fooled if v is not None}) >= 1
            )  # one point per distinct smallest norm
            page.locator("#robust .norm-chart").screenshot(path=str(ARTIFACTS / "fab-chart.png"))
            page.locator("#robust details summary").click()
            cis = page.locator("#robust table tr td:nth-child(9)").all_text_contents()
            assert cis and all(c.startswith("[") and c.endswith("%]") for c in cis)
            page.locator("#robust").screenshot(path=str(ARTIFACTS / "run-page-masked-model.png"))
            assert page.errors == [] and page.foreign == []
    finally:
        lab.stop()
