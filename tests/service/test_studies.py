"""A study end to end on the lab stack (PostgreSQL, Redis, a real worker): its design expands into
runs, the report's numbers are those of the runs' own stored results (recomputed here
independently), the exports are stable, and extending or retrying never duplicates a run."""

from __future__ import annotations

import statistics

import pytest
from scipy import stats

from .conftest import make_stack

DESIGN = {
    "name": "study-digits",
    "scenario": "defense",
    "dataset": {"name": "digits"},
    "model": {"arch": "cnn", "width": 4},
    "train": {"epochs": 2, "batch_size": 64},
    "eval": {"panel": "quick", "n": 40},
    "methods": [{"method": "erm"}, {"method": "great", "params": {"lam": 0.03}}],
    "seeds": [0, 1],
    "baseline": "erm",
}


@pytest.fixture(scope="module")
def lab(tmp_path_factory, pg_database):
    s = make_stack(tmp_path_factory.mktemp("study"), "lab", pg_database)
    yield s
    s.stop()


def _independent(lab, run_ids: list[int]) -> tuple[dict[str, list[float]], dict[str, list[str]]]:
    """Per metric, each run's own stored value, and per panel column the examples each run got
    right, read from the runs' pages as a user would."""
    out: dict[str, list[float]] = {}
    bits: dict[str, list[str]] = {}
    for rid in run_ids:
        run = lab.http.get(f"/api/runs/{rid}").json()
        ev = lab.http.get(f"/api/runs/{rid}/eval").json()
        std = ev["summary"]["std_eps"]
        vals = {"test acc": run["summary"]["test"]["acc"], "probe": run["summary"]["game"]["accuracy"]}
        vals |= {r["attack"]: r["accuracy"] for r in ev["rows"] if r["norm"] == "linf" and r["eps"] == std}
        for k, v in vals.items():
            out.setdefault(k, []).append(v)
        for k, b in ev["summary"]["per_example"]["correct"].items():
            bits.setdefault(k, []).append(b)
    return out, bits


def test_a_study_runs_end_to_end_and_its_report_is_its_runs_own_numbers(lab):
    bad = {
        "baseline": {**DESIGN, "baseline": "pgd_at"},
        "methods": {**DESIGN, "methods": [{"method": "erm"}, {"method": "erm"}]},
    }
    for field, design in bad.items():
        r = lab.http.post("/api/studies", json=design)
        assert r.status_code == 422 and field in r.text, r.text
    knob = lab.http.post(
        "/api/studies",
        json={**DESIGN, "methods": [{"method": "great", "params": {"lam": -1}}], "baseline": "great"},
    )
    assert knob.status_code == 422 and ["body", "methods", "params", "lam"] in [
        d["loc"] for d in knob.json()["detail"]
    ]

    study = lab.http.post("/api/studies", json=DESIGN)
    assert study.status_code == 201, study.text
    study = study.json()
    assert study["created"] == 4 and study["progress"] == {"total": 4, "queued": 4}
    assert lab.http.post("/api/studies", json=DESIGN).status_code == 409  # one study per name
    lab.start_worker()
    sid = study["id"]
    import time

    deadline = time.monotonic() + 600
    while (view := lab.http.get(f"/api/studies/{sid}").json())["progress"].get("succeeded") != 4:
        assert time.monotonic() < deadline and not view["progress"].get("failed"), view
        time.sleep(1)
    assert view["eta_s"] == 0.0

    rep = lab.http.get(f"/api/studies/{sid}/report").json()
    assert [r["label"] for r in rep["rows"]] == ["erm", "great"] and rep["baseline"] == "erm"
    ids = {r["label"]: r["id"] for r in view["runs"]}
    by_label = {lab_: [r["id"] for r in view["runs"] if r["label"] == lab_] for lab_ in ("erm", "great")}
    assert set(ids) == {"erm", "great"}
    mine, bits = {}, {}
    for label, run_ids in by_label.items():
        mine[label], bits[label] = _independent(lab, run_ids)
    for row in rep["rows"]:
        assert row["seeds_done"] == [0, 1] and sorted(row["runs"]) == sorted(by_label[row["label"]])
        for metric in ("test acc", "pgd", "autoattack", "worst_case", "probe"):
            cell, vals = row["cells"][metric], mine[row["label"]][metric]
            assert cell["n"] == 2 and cell["mean"] == pytest.approx(statistics.fmean(vals))
            assert cell["std"] == pytest.approx(statistics.stdev(vals))
            assert cell["interval"] == "bootstrap over seeds and examples"
            if metric == "probe":  # a share of the game's own held-out gradients: binomial on their n
                n_probe = {
                    lab.http.get(f"/api/runs/{i}").json()["summary"]["game"]["n_test"] for i in row["runs"]
                }
                assert [cell["examples"]] == list(n_probe) and 0 <= cell["ci"][0] <= cell["ci"][1] <= 1
                continue
            assert cell["examples"] == (40 if metric != "test acc" else 359)
            assert cell["ci"][0] <= cell["mean"] <= cell["ci"][1]
            if metric != "test acc":  # the panel's examples: the run's own per-example results
                assert [b.count("1") / 40 for b in bits[row["label"]][metric]] == pytest.approx(vals)
    for metric in ("test acc", "autoattack", "probe"):
        if metric == "probe":  # a diagnostic with no better direction for every method: never ranked
            assert "probe" not in rep["best"]
        elif metric in rep["best"]:  # a best only where separable from the other row
            top, other = sorted(rep["rows"], key=lambda r: -r["cells"][metric]["mean"])
            assert rep["best"][metric] == [top["label"]]
            assert top["cells"][metric]["ci"][0] > other["cells"][metric]["ci"][1]
        vs = rep["rows"][1]["cells"][metric]["vs_baseline"]
        diffs = [g - e for g, e in zip(mine["great"][metric], mine["erm"][metric], strict=True)]
        assert vs["pairs"] == 2 and vs["diff"] == pytest.approx(statistics.fmean(diffs))
        if metric == "autoattack":  # McNemar on the same 40 examples, discordant pairs over both seeds
            pairs = list(zip(bits["great"][metric], bits["erm"][metric], strict=True))
            b = sum(x == "1" and y == "0" for g, e in pairs for x, y in zip(g, e, strict=True))
            c = sum(x == "0" and y == "1" for g, e in pairs for x, y in zip(g, e, strict=True))
            assert (vs["test"], vs["b"], vs["c"]) == ("mcnemar", b, c)
            assert vs["p"] == pytest.approx(stats.binomtest(b, b + c, 0.5).pvalue if b + c else 1.0)
        elif statistics.pstdev(diffs) > 0:
            assert vs["test"] == "paired t" and vs["p"] == pytest.approx(
                stats.ttest_rel(mine["great"][metric], mine["erm"][metric]).pvalue
            )
        assert (
            rep["rows"][0]["cells"][metric]["vs_baseline"] is None
        )  # the baseline is not tested against itself
    assert rep["rows"][0]["cells"]["s/step"]["mean"] > 0

    md = lab.http.get(f"/api/studies/{sid}/report", params={"format": "md"})
    assert (
        md.text == lab.http.get(f"/api/studies/{sid}/report", params={"format": "md"}).text
    )  # byte-identical
    assert "| method | seeds | test acc |" in md.text and "| great | 2 |" in md.text
    assert "L-inf ε = 0.1 (L2 ε = 0.5) on n = 40 test examples per run" in md.text  # ε and n stated
    tex = lab.http.get(f"/api/studies/{sid}/report", params={"format": "latex"}).text
    assert r"\toprule" in tex and r"\bottomrule" in tex and "great & 2 &" in tex
    csv = lab.http.get(f"/api/studies/{sid}/report", params={"format": "csv"}).text.splitlines()
    assert csv[0].startswith(
        "method,metric,n,mean,std,ci_low,ci_high,best,interval,examples,test,pairs,p_vs_baseline,p_holm"
    )
    assert len(csv) == 1 + 2 * len(rep["columns"])

    # More seeds: only the new ones run; retry reruns only what failed or was cancelled.
    more = lab.http.post(f"/api/studies/{sid}/extend", json={"seeds": [1, 2]}).json()
    assert more["created"] == 2 and more["design"]["seeds"] == [0, 1, 2] and more["progress"]["total"] == 6
    new = [r["id"] for r in more["runs"] if r["seed"] == 2]
    for rid in new:
        assert lab.http.post(f"/api/runs/{rid}/cancel").json()["status"] in ("cancelled", "running")
    again = lab.http.post(f"/api/studies/{sid}/retry").json()
    cancelled = [
        r
        for r in lab.http.get("/api/runs", params={"experiment": "study-digits", "limit": 100}).json()[
            "items"
        ]
        if r["status"] == "cancelled"
    ]
    assert again["created"] == len(cancelled) >= 1  # the cancelled ones, nothing finished
    total = lab.http.get("/api/runs", params={"experiment": "study-digits", "limit": 100}).json()["total"]
    assert total == 6 + again["created"]
    seed2 = [r["id"] for r in again["runs"] if r["seed"] == 2]
    for rid in seed2:
        lab.http.post(f"/api/runs/{rid}/cancel")
    final = [
        lab.wait_for(rid, lambda r: r["status"] in ("succeeded", "failed", "cancelled")) for rid in seed2
    ]
    # Exactly those that ended cancelled (a running one may have finished before its cancel was read).
    assert lab.http.post(f"/api/studies/{sid}/retry").json()["created"] == sum(
        r["status"] == "cancelled" for r in final
    )
