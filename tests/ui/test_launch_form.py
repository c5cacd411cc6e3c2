"""The launch form is built from the run config's schema the API returns: choices and defaults come
from the pydantic models, not from a second list in the page."""

from __future__ import annotations

import pytest

from bench._common import Stack

from .conftest import browser_page


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    s = Stack.create(tmp_path_factory.mktemp("launch"), None, None)  # embedded, no worker
    yield s
    s.stop()


def test_the_launch_form_takes_choices_and_defaults_from_the_schema(lab):
    schema = lab.http.get("/api/methods").json()["config_schema"]
    defs = schema["$defs"]
    with browser_page(lab) as page:
        page.goto(f"{lab.base}/#/launch")
        page.wait_for_selector('#app[data-ready="launch"]', timeout=30_000)
        options = lambda path: page.eval_on_selector_all(
            f'[data-path="{path}"] option', "os => os.map(o => o.value)"
        )
        assert options("dataset.name") == defs["DatasetConfig"]["properties"]["name"]["enum"]
        assert options("model.arch") == defs["ModelConfig"]["properties"]["arch"]["enum"]
        assert options("train.optimizer") == defs["TrainConfig"]["properties"]["optimizer"]["enum"]
        help_text = page.inner_text('label:has([data-path="model.width"]) .help')
        assert help_text == defs["ModelConfig"]["properties"]["width"]["description"]
        great = next(
            m
            for m in lab.http.get("/api/methods").json()["methods"]
            if (m["scenario"], m["method"]) == ("defense", "great")
        )
        knobs = {k["name"]: k for k in great["knobs"]}
        page.select_option('[data-path="scenario"]', "defense")
        page.select_option('[data-path="method"]', "great")
        assert page.input_value('[data-path="params.lam"]') == str(knobs["lam"]["default"])
        assert page.errors == []


def test_a_study_is_launched_from_the_form(lab):
    """The form's settings for every method ticked, over its seeds, against the chosen baseline."""
    with browser_page(lab) as page:
        page.goto(f"{lab.base}/#/launch")
        page.wait_for_selector('#app[data-ready="launch"]', timeout=30_000)
        page.select_option('[data-path="scenario"]', "defense")
        page.select_option('[data-path="method"]', "great")
        page.fill('[data-path="train.epochs"]', "2")
        page.fill('[data-path="params.lam"]', "0.5")
        page.fill("#seeds", "0,1")
        page.check('#study-methods input[value="erm"]')
        page.select_option("#study-baseline", "erm")
        page.click("#launch-study")  # no name yet: the error names the field
        page.wait_for_selector("#study-result:has-text('name')", timeout=10_000)
        page.fill("#study-name", "from-the-form")
        page.click("#launch-study")
        page.wait_for_url("**/#/study/*")
        page.wait_for_selector('#app[data-ready="study"]', timeout=30_000)
        study = lab.http.get(f"/api/studies/{page.url.rsplit('/', 1)[1]}").json()
        d = study["design"]
        assert (d["name"], d["baseline"], d["seeds"], d["train"]["epochs"]) == (
            "from-the-form",
            "erm",
            [0, 1],
            2,
        )
        assert [(a["method"], a["params"].get("lam")) for a in d["methods"]] == [
            ("erm", None),
            ("great", 0.5),
        ]
        assert study["progress"] == {"total": 4, "queued": 4} and d["split"] == "test"
        page.goto(f"{lab.base}/#/launch")  # a tuning study: read on validation, so it runs no panel
        page.wait_for_selector('#app[data-ready="launch"]', timeout=30_000)
        page.select_option('[data-path="scenario"]', "defense")
        page.select_option('[data-path="eval.panel"]', "quick")
        page.select_option("#study-split", "val")
        page.fill("#study-name", "tuning-from-the-form")
        page.click("#launch-study")
        page.wait_for_selector("#study-result:has-text('eval.panel')", timeout=10_000)
        page.select_option('[data-path="eval.panel"]', "none")
        page.click("#launch-study")
        page.wait_for_url("**/#/study/*")
        page.wait_for_selector('#app[data-ready="study"]', timeout=30_000)
        assert "read on the validation split" in page.inner_text("section.study")
        study = lab.http.get(f"/api/studies/{page.url.rsplit('/', 1)[1]}").json()
        assert (study["design"]["split"], study["design"]["eval"]["panel"]) == ("val", "none")
        assert [e for e in page.errors if "422" not in e] == []
