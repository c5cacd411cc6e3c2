"""A study's report page and the robustness leaderboard in a real browser, on a lab with a real
worker: the table and the ε chart are drawn from the study's runs, and a gradient-masked model
on the leaderboard is marked red and never ranked above a run whose checks passed."""

from __future__ import annotations

from playwright.sync_api import expect

from bench._common import Stack

from .conftest import ARTIFACTS, browser_page, wait_until

FINAL = ("succeeded", "failed", "cancelled")
DESIGN = {
    "name": "ui-study",
    "scenario": "defense",
    "dataset": {"name": "digits"},
    "model": {"arch": "cnn", "width": 4},
    "train": {"epochs": 2},
    "eval": {"panel": "quick", "n": 30},
    "methods": [{"method": "erm"}, {"method": "great"}],
    "seeds": [0, 1],
    "baseline": "erm",
}


def test_a_study_report_page_and_the_leaderboard(tmp_path):
    import torch

    from worker.gat import data as gdata

    from ..gat.conftest import fit_erm
    from ..gat.test_checks import Quantised

    root = tmp_path / "data"
    (root / "models").mkdir(parents=True)
    digits = gdata.load({"name": "digits"})
    x = digits.test.images()[:4]
    torch.jit.trace(Quantised(fit_erm(digits, epochs=5)), x).save(str(root / "models" / "masked.pt"))
    lab = Stack.create(tmp_path, None, None, GATLAB_DATA_ROOT=str(root))
    try:
        study = lab.http.post("/api/studies", json=DESIGN).json()
        masked = lab.http.post(
            "/api/evaluations",
            json={
                "dataset": {"name": "digits"},
                "eval": {"panel": "quick", "n": 30, "model_path": "models/masked.pt"},
            },
        ).json()
        lab.start_worker()
        for r in [*study["runs"], masked]:
            assert (
                lab.wait_for(r["id"], lambda r: r["status"] in FINAL, what="done", timeout=600)["status"]
                == "succeeded"
            )
        rep = lab.http.get(f"/api/studies/{study['id']}/report").json()
        with browser_page(lab) as page:
            page.goto(f"{lab.base}/#/studies")
            page.wait_for_selector('#app[data-ready="studies"]', timeout=30_000)
            page.click("text=ui-study")
            page.wait_for_selector('#app[data-ready="study"]', timeout=30_000)
            expect(page.locator("#progress")).to_contain_text("4 of 4 done")
            rows = page.locator("#report tr[data-label]")
            expect(rows).to_have_count(2)
            for metric, labels in rep["best"].items():  # the best of each column in bold, nowhere else
                col = rep["columns"].index(metric) + 3
                for label in ("erm", "great"):
                    bold = page.locator(f'#report tr[data-label="{label}"] td:nth-child({col}) b').count()
                    assert bold == (label in labels), (metric, label)
            for row in rep["rows"]:  # the exports' own cell text: one rounding rule for page and files
                for c in rep["columns"]:
                    col = rep["columns"].index(c) + 3
                    cell = page.locator(f'#report tr[data-label="{row["label"]}"] td:nth-child({col})')
                    assert cell.inner_text() == row["cells"][c]["text"], (row["label"], c)
            md = lab.http.get(f"/api/studies/{study['id']}/report", params={"format": "md"}).text
            great = next(line for line in md.splitlines() if line.startswith("| great | 2 |"))
            assert all(f" {rep['rows'][1]['cells'][c]['text']} |" in great for c in rep["columns"])
            expect(page.locator("#legend")).to_contain_text(
                "L-inf ε = 0.1 (L2 ε = 0.5) on n = 30 test examples"
            )
            expect(page.locator("#legend")).to_contain_text("Holm")
            wait_until(page, "Number(document.querySelector('#eps-chart')?.dataset.points) > 0", timeout=30)
            wait_until(page, "Number(document.querySelector('#train-chart')?.dataset.points) > 0", timeout=30)
            assert page.get_attribute("#train-chart", "data-series") == "6"  # per method: mean, +std, -std
            import json

            assert json.loads(page.inner_text("#design")) == study["design"]  # runnable as it stands
            page.screenshot(path=str(ARTIFACTS / "study-report.png"), full_page=True)
            with page.expect_download() as dl:
                page.click("text=LaTeX")
            assert r"\toprule" in open(dl.value.path()).read()

            page.goto(f"{lab.base}/#/leaderboard?panel=quick")
            page.wait_for_selector('#app[data-ready="leaderboard"]', timeout=30_000)
            board = lab.http.get("/api/leaderboard", params={"panel": "quick"}).json()["entries"]
            assert {e["run_id"] for e in board} == {r["id"] for r in study["runs"]} | {masked["id"]}
            flagged = [e["rank"] for e in board if e["flagged"]]
            assert all(e["rank"] < min(flagged) for e in board if not e["flagged"])  # never above a clean run
            row = page.locator(f'#leaderboard tr[data-run="{masked["id"]}"]')
            expect(row).to_have_class("flagged")
            expect(row).to_contain_text("✗")
            assert (
                row.evaluate("el => getComputedStyle(el).backgroundColor") != "rgba(0, 0, 0, 0)"
            )  # marked red
            page.screenshot(path=str(ARTIFACTS / "leaderboard.png"), full_page=True)
            assert page.errors == [] and page.foreign == []
    finally:
        lab.stop()
