"""A study's design and report as pure functions: what the API and `gatlab study run --local` share."""

from __future__ import annotations

import statistics
import time

import pytest
from pydantic import ValidationError
from scipy import stats

from backend.study import StudyDesign, expand, report, to_csv, to_json, to_latex, to_markdown

DESIGN = {
    "name": "s",
    "scenario": "defense",
    "dataset": {"name": "digits"},
    "methods": [{"method": "erm"}, {"method": "great", "grid": {"lam": [0.1, 1.0]}}],
    "seeds": [0, 1, 2],
    "baseline": "erm",
}


def test_a_design_expands_into_one_named_run_per_arm_and_seed():
    runs = expand(StudyDesign.model_validate(DESIGN))
    assert [(label, seed) for _, label, seed, _ in runs][:4] == [
        ("erm", 0),
        ("erm", 1),
        ("erm", 2),
        ("great[lam=0.1]", 0),
    ]
    key, _, _, cfg = runs[4]
    assert (
        key == "s/great[lam=0.1]/seed=1" == cfg["name"]
        and cfg["params"]["lam"] == 0.1
        and cfg["train"]["seed"] == 1
    )
    assert len(runs) == 9


@pytest.mark.parametrize(
    "change,why",
    [
        ({"baseline": "trades"}, "baseline"),
        ({"methods": [{"method": "erm"}, {"method": "erm"}]}, "share the label"),
        ({"seeds": [0, 0]}, "each seed once"),
        (
            {"methods": [{"method": "great", "grid": {"a": list(range(10**5)), "b": list(range(10**5))}}]},
            "at most 1000",
        ),
    ],
)
def test_a_bad_design_is_refused_with_its_reason_at_once(change, why):
    t0 = time.monotonic()
    with pytest.raises(ValidationError, match=why):
        StudyDesign.model_validate({**DESIGN, **change})
    assert time.monotonic() - t0 < 5  # a huge grid is counted, never built


def _records(values: dict[str, list[float]], steps: dict[str, list[float]], failed=()) -> list[dict]:
    return [
        {"label": label, "seed": seed, "status": "succeeded", "run_id": 10 * i + seed,
         "metrics": {"autoattack": v, "s/step": steps[label][seed]}, "failed_checks": list(failed) if label == "erm" else [],
         "curve": {"0.1": v}}
        for i, (label, vals) in enumerate(values.items()) for seed, v in enumerate(vals)
    ]  # fmt: skip


def test_the_report_is_mean_std_interval_best_and_a_paired_test_against_the_baseline():
    design = StudyDesign.model_validate(DESIGN)
    vals = {
        "erm": [0.10, 0.12, 0.11],
        "great[lam=0.1]": [0.15, 0.16, 0.18],
        "great[lam=1.0]": [0.15, 0.16, 0.18],
    }
    steps = {
        "erm": [0.02, 0.02, 0.03],
        "great[lam=0.1]": [0.06, 0.07, 0.06],
        "great[lam=1.0]": [0.06, 0.07, 0.06],
    }
    rep = report(design, _records(vals, steps, failed=["ce_margin_agree"]))
    cell = rep["rows"][1]["cells"]["autoattack"]
    v = vals["great[lam=0.1]"]
    half = stats.t.ppf(0.975, 2) * statistics.stdev(v) / 3**0.5
    assert cell["mean"] == pytest.approx(statistics.fmean(v)) and cell["std"] == pytest.approx(
        statistics.stdev(v)
    )
    assert cell["ci"] == pytest.approx([statistics.fmean(v) - half, statistics.fmean(v) + half])
    assert cell["vs_baseline"]["p"] == pytest.approx(stats.ttest_rel(v, vals["erm"]).pvalue)
    assert rep["best"]["autoattack"] == ["great[lam=0.1]", "great[lam=1.0]"]  # a tie marks both
    assert rep["best"]["s/step"] == ["erm"]  # lower is better for cost
    assert (
        rep["rows"][0]["failed_checks"] == ["ce_margin_agree"]
        and rep["rows"][0]["cells"]["autoattack"]["vs_baseline"] is None
    )
    md = to_markdown(rep)
    assert "| great[lam=0.1] | 3 | **16.3 ± 1.5 [12.5, 20.1]***" in md and "✗ ce_margin_agree" in md
    assert to_markdown(report(design, _records(vals, steps))) == to_markdown(
        report(design, _records(vals, steps))
    )
    tex = to_latex(rep)
    assert (
        r"\textbf{16.3 $\pm$ 1.5 [12.5, 20.1]*}" in tex
        and r"ce\_margin\_agree" not in tex
        and r"s/step" in tex
    )
    assert to_csv(rep).splitlines()[1].startswith("erm,autoattack,3,") and '"study": "s"' in to_json(rep)


def test_one_seed_gives_no_spread_no_interval_and_no_significance():
    design = StudyDesign.model_validate(
        {**DESIGN, "seeds": [0], "methods": [{"method": "erm"}, {"method": "great"}]}
    )
    rep = report(design, _records({"erm": [0.1], "great": [0.5]}, {"erm": [0.1], "great": [0.2]}))
    cell = rep["rows"][1]["cells"]["autoattack"]
    assert (cell["std"], cell["ci"], cell["vs_baseline"]) == (None, None, None)
    assert "| great | 1 | **50.0** |" in to_markdown(rep)  # best, but no significance mark from one seed


def test_the_same_difference_every_seed_has_no_p_value_even_after_rounding():
    """Accuracies are counts over the same examples: 0.1 + 1/359 - 0.1 is not exactly 1/359 in floating
    point, and a t-test on such near-equal differences reports an absurd p (1e-28)."""
    design = StudyDesign.model_validate({**DESIGN, "methods": [{"method": "erm"}, {"method": "great"}]})
    base = [0.3, 0.7, 0.9]
    vals = {"erm": base, "great": [b - 1 / 359 for b in base]}
    rep = report(design, _records(vals, {"erm": [0.1] * 3, "great": [0.1] * 3}))
    assert rep["rows"][1]["cells"]["autoattack"]["vs_baseline"]["p"] is None


def test_the_reports_own_t_distribution_matches_scipys():
    """The API image has no numpy, so the report computes Student's t itself: checked here against scipy."""
    from backend.study import t_quantile_975, t_two_sided_p

    for df in (1, 2, 3, 4, 5, 9, 29, 99):
        assert t_quantile_975(df) == pytest.approx(stats.t.ppf(0.975, df), rel=1e-9)
        for t in (0.0, 0.3, 1.0, 2.5, 7.0, 40.0):
            assert t_two_sided_p(t, df) == pytest.approx(2 * stats.t.sf(t, df), rel=1e-8, abs=1e-15)
