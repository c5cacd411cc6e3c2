"""The dashboard in a real headless Chromium (Debian's), against a running app with a real worker."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from bench._common import Stack

from .conftest import ARTIFACTS, browser_page, wait_until


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    s = Stack.create(tmp_path_factory.mktemp("ui"), None, None)
    s.start_worker()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def page(lab):
    with browser_page(lab) as pg:
        yield pg


def goto(page, lab, hash_, ready):
    page.goto(f"{lab.base}/{hash_}")
    page.wait_for_selector(f'#app[data-ready="{ready}"]', timeout=30_000)


def points(page, selector) -> int:
    return int(page.get_attribute(selector, "data-points") or 0)


def test_launch_watch_robustness_compare_export(page, lab):
    goto(page, lab, "#/launch", "launch")
    page.fill('[data-path="train.epochs"]', "3")
    page.fill('[data-path="model.width"]', "4")
    page.fill('[data-path="params.lam"]', "-1")
    page.click("#launch")
    expect(page.locator('[data-error="params.lam"]')).to_contain_text("greater than or equal to 0")
    expect(page.locator('[data-path="params.lam"]')).to_have_class("invalid")
    assert "curl -X POST" in page.inner_text("#curl") and "method: great" in page.inner_text("#yaml")
    assert [e for e in page.errors if "422" not in e] == []  # Chromium logs the refused POST itself
    page.errors.clear()
    page.screenshot(path=ARTIFACTS / "launch.png", full_page=True)

    page.fill('[data-path="params.lam"]', "0.1")
    page.click("#launch")
    page.wait_for_url("**/#/run/*")
    run_id = int(page.url.rsplit("/", 1)[1])
    expect(page.locator(".run-head .status")).to_have_text("succeeded", timeout=240_000)
    page.wait_for_selector('#app[data-ready="run"]')
    wait_until(page, "document.querySelectorAll('.badge').length >= 10", timeout=30)
    # Charts refresh every 2 s, and a run that finished before its page first drew charts is drawn
    # again with them: wait for the run's points (the chart may not exist yet), not a race.
    for chart in ("loss", "accuracy"):
        wait_until(
            page,
            f"Number(document.querySelector('[data-chart=\"{chart}\"]')?.dataset.points) > 0",
            timeout=30,
        )
    assert points(page, '[data-chart="histogram"]') > 0
    page.locator('[data-chart="loss"] .u-over').hover()  # scrolls it into view, cursor in the plot
    page.mouse.wheel(0, -300)  # zoom in around the cursor; the chart re-queries its window
    wait_until(page, "document.querySelector('[data-chart=\"loss\"]').dataset.zoomed === '1'")
    zoomed_attr = page.get_attribute('[data-chart="loss"]', "data-range")
    zoomed = [float(v) for v in zoomed_attr.split(",")]
    page.keyboard.down("Shift")
    page.mouse.wheel(0, 200)  # pan
    page.keyboard.up("Shift")
    wait_until(page, f"document.querySelector('[data-chart=\"loss\"]').dataset.range !== '{zoomed_attr}'")
    panned = [float(v) for v in page.get_attribute('[data-chart="loss"]', "data-range").split(",")]
    assert panned[0] > zoomed[0] and abs((panned[1] - panned[0]) - (zoomed[1] - zoomed[0])) < 1e-6
    assert points(page, '[data-chart="loss"]') > 0
    page.dblclick('[data-chart="loss"] .u-over')  # back to the whole run
    drawn = page.evaluate("""() => { const c = document.querySelector('[data-chart="loss"] canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let ink = 0; for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 0 && d[i] < 200) ink++; return ink; }""")
    assert drawn > 100  # the canvas has lines on it, not just axes space
    assert points(page, "#robust .rob-chart") > 0
    page.wait_for_selector(".gallery canvas.thumb")
    expect(page.locator("#log")).to_contain_text("epoch 3/3")
    assert (
        page.locator(".gallery figure").count() == 6 and page.locator(".gallery canvas.thumb").count() == 18
    )
    assert page.locator("#robust .badge.pass").count() + page.locator("#robust .badge.fail").count() == 10
    expect(page.locator(".game .badge")).to_have_text(re.compile("^game (won|lost)$"))  # GREAT's game
    expect(page.locator(".game")).to_contain_text("the class from input gradients")
    page.screenshot(path=ARTIFACTS / "run.png", full_page=True)

    other = lab.http.post(
        "/api/runs",
        json={
            "config": {
                "name": "baseline",
                "scenario": "defense",
                "method": "erm",
                "dataset": {"name": "digits"},
                "model": {"width": 4},
                "train": {"epochs": 3},
                "eval": {"panel": "none"},
            }
        },
    ).json()["id"]
    lab.wait_for(other, lambda r: r["status"] == "succeeded", what="succeeded")
    goto(page, lab, "#/runs", "runs")
    for rid in (run_id, other):
        page.check(f'tr[data-id="{rid}"] input.sel')
    href = page.get_attribute("#export", "href")
    csv = lab.http.get(href).text.splitlines()
    assert csv[0] == "run_id,key,step,value" and {line.split(",")[0] for line in csv[1:]} == {
        str(run_id),
        str(other),
    }
    page.screenshot(path=ARTIFACTS / "runs.png", full_page=True)
    page.click("#compare")
    page.wait_for_selector('#app[data-ready="compare"]')
    wait_until(page, "document.querySelector('#overlay').dataset.series === '2'", timeout=30)
    assert points(page, "#overlay") > 0
    for rid in (run_id, other):  # the game column: each run's fresh probe against chance, and its verdict
        game = lab.http.get(f"/api/runs/{rid}").json()["summary"]["game"]
        won = game["ci"][0] <= game["chance"]
        want = ("game won" if won else "game lost") if game["played"] else ("hidden" if won else "tellable")
        row = page.locator("#gametable tr", has_text=f"#{rid} ")
        expect(row.locator(".badge")).to_contain_text(want)
        expect(row).to_contain_text(f"{100 * game['accuracy']:.1f}%")
        expect(row).to_contain_text("the class from input gradients")
    assert lab.http.get(f"/api/runs/{run_id}").json()["summary"]["game"]["played"]  # GREAT plays, ERM not
    page.select_option("#group", "method")  # two groups: a mean curve and a ±std band each
    wait_until(page, "document.querySelector('#overlay').dataset.bands === '2'", timeout=30)
    assert page.get_attribute("#overlay", "data-series") == "6"
    page.select_option("#group", "")
    with page.expect_download() as dl:
        page.click("#csv")
    text = Path(dl.value.path()).read_text().splitlines()
    assert text[0].startswith("run,name,method,seed,last") and len(text) == 3
    page.screenshot(path=ARTIFACTS / "compare.png", full_page=True)

    assert page.errors == [], page.errors
    assert page.foreign == [], page.foreign


def test_run_page_says_whether_the_multitask_game_was_won(page, lab):
    """The fresh task-id probe of a multi-task GREAT run, against chance, as a badge on its page."""
    cfg = {
        "name": "mt-game",
        "scenario": "multitask",
        "method": "great",
        "dataset": {"name": "digits_mt"},
        "model": {"width": 4},
        "train": {"epochs": 1},
        "eval": {"panel": "none"},
    }
    rid = lab.http.post("/api/runs", json={"config": cfg}).json()["id"]
    game = lab.wait_for(rid, lambda r: r["status"] == "succeeded", what="succeeded")["summary"]["game"]
    goto(page, lab, f"#/run/{rid}", "run")
    won = game["ci"][0] <= game["chance"]
    badge = page.locator(".game .badge")
    expect(badge).to_have_text("game won" if won else "game lost")
    expect(badge).to_have_class("badge pass" if won else "badge fail")
    expect(page.locator(".game")).to_contain_text(f"{100 * game['accuracy']:.1f}%")
    expect(page.locator(".game")).to_contain_text("chance 25.0%")
    assert page.errors == [], page.errors
