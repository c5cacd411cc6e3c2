"""The dashboard in Debian's Firefox ESR (headless, over WebDriver BiDi: see firefox.py) against a
running app with a real worker: the four pages render, charts draw and zoom, a field error shows,
no console errors, no request outside the app's origin."""

from __future__ import annotations

import base64

import pytest

from bench._common import Stack

from ..service.conftest import tiny_config
from .conftest import ARTIFACTS

INK = """(sel => { const c = document.querySelector(sel);
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let ink = 0; for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 0 && d[i] < 200) ink++; return ink; })"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    s = Stack.create(tmp_path_factory.mktemp("firefox"), None, None)
    s.start_worker()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def firefox():
    from .firefox import Firefox

    ff = Firefox()
    yield ff
    ff.close()


def shot(ff, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    data = ff.cmd("browsingContext.captureScreenshot", context=ff.context)["data"]
    (ARTIFACTS / name).write_bytes(base64.b64decode(data))


def test_dashboard_works_in_firefox(lab, firefox):
    ff = firefox
    ids = [
        lab.http.post("/api/runs", json={"config": tiny_config(name=f"ff-{m}", method=m)}).json()["id"]
        for m in ("great", "erm")
    ]
    for i in ids:
        assert lab.wait_for(i, lambda r: r["status"] in ("succeeded", "failed"))["status"] == "succeeded"

    ff.goto(f"{lab.base}/#/runs")
    ff.wait("document.querySelector('#app').dataset.ready === 'runs'")
    assert ff.js("document.querySelectorAll('table.runs tbody tr').length") == 2

    ff.js(f"location.hash = '#/run/{ids[0]}'")
    ff.wait("document.querySelector('#app').dataset.ready === 'run'")
    ff.wait("document.querySelectorAll('.badge').length >= 10")
    ff.wait("+document.querySelector('[data-chart=\"loss\"]').dataset.points > 0")
    assert ff.js("+document.querySelector('[data-chart=\"accuracy\"]').dataset.points") > 0
    assert ff.js("+document.querySelector('#robust .rob-chart').dataset.points") > 0
    ff.wait("document.querySelectorAll('.gallery canvas.thumb').length === 18")
    assert ff.js(INK + "('[data-chart=\"loss\"] canvas')") > 100  # lines drawn, not just axes
    box = ff.js("""(() => { const o = document.querySelector('[data-chart="loss"] .u-over'); o.scrollIntoView();
        const r = o.getBoundingClientRect(); return [Math.round(r.x + r.width / 2), Math.round(r.y + r.height / 2)]; })()""")
    ff.wheel(box[0], box[1], -300)  # zoom in around the pointer: the chart re-queries its window
    ff.wait("document.querySelector('[data-chart=\"loss\"]').dataset.zoomed === '1'", timeout=20)
    assert ff.js("+document.querySelector('[data-chart=\"loss\"]').dataset.points") > 0
    shot(ff, "firefox-run.png")

    ff.js(f"location.hash = '#/compare/{ids[0]},{ids[1]}'")
    ff.wait("document.querySelector('#app').dataset.ready === 'compare'")
    ff.wait("+document.querySelector('#overlay').dataset.points > 0")
    assert ff.js("document.querySelector('#overlay').dataset.series") == "2"

    ff.js("location.hash = '#/launch'")
    ff.wait("document.querySelector('#app').dataset.ready === 'launch'")
    ff.js("""(() => { const i = document.querySelector('[data-path="params.lam"]'); i.value = '-1';
        i.dispatchEvent(new Event('input', {bubbles: true})); i.dispatchEvent(new Event('change', {bubbles: true}));
        document.querySelector('#launch').click(); })()""")
    ff.wait(
        "(document.querySelector('[data-error=\"params.lam\"]')?.textContent ?? '').includes('greater than or equal to 0')"
    )
    shot(ff, "firefox-launch.png")

    assert [e for e in ff.errors() if "422" not in e] == []
    foreign = [u for u in ff.requests() if not u.startswith(lab.base) and not u.startswith("data:")]
    assert foreign == [] and len(ff.requests()) > 10
