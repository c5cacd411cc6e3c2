"""A study's design and report as pure functions: what the API and `gatlab study run --local` share."""

from __future__ import annotations

import re
import statistics
import time
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError
from scipy import stats

from labcore.panel import PanelResult
from labcore.stats import t_quantile_975
from labcore.study import (
    StudyDesign,
    expand,
    record,
    report,
    run_metrics,
    to_csv,
    to_json,
    to_latex,
    to_markdown,
)

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
    assert cell["vs_baseline"]["p"] < 0.05 <= cell["vs_baseline"]["p_adjusted"]  # 4 tests: no star after Holm
    assert "autoattack" not in rep["best"]  # two arms tie: neither is separable from the other
    assert rep["best"]["s/step"] == ["erm"]  # lower is better for cost, and clear of the others
    assert (
        rep["rows"][0]["failed_checks"] == ["ce_margin_agree"]
        and rep["rows"][0]["cells"]["autoattack"]["vs_baseline"] is None
    )
    md = to_markdown(rep)
    assert "| great[lam=0.1] | 3 | 16.3 ± 1.5 [12.5, 20.1] |" in md and "✗ ce_margin_agree" in md
    assert to_markdown(report(design, _records(vals, steps))) == to_markdown(
        report(design, _records(vals, steps))
    )
    tex = to_latex(rep)
    assert (
        r"16.3 $\pm$ 1.5 [12.5, 20.1] &" in tex
        and r"\textbf{2.3 $\pm$" not in tex
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
    assert "| great | 1 | 50.0 |" in to_markdown(rep)  # no interval, so no best and no significance mark


def test_the_same_difference_every_seed_has_no_p_value_even_after_rounding():
    """Accuracies are counts over the same examples: 0.1 + 1/359 - 0.1 is not exactly 1/359 in floating
    point, and a t-test on such near-equal differences reports an absurd p (1e-28)."""
    design = StudyDesign.model_validate({**DESIGN, "methods": [{"method": "erm"}, {"method": "great"}]})
    base = [0.3, 0.7, 0.9]
    vals = {"erm": base, "great": [b - 1 / 359 for b in base]}
    rep = report(design, _records(vals, {"erm": [0.1] * 3, "great": [0.1] * 3}))
    assert rep["rows"][1]["cells"]["autoattack"]["vs_baseline"]["p"] is None


def test_a_row_with_no_panel_shows_no_verdict_and_the_probe_is_not_ranked():
    """Without a panel no check ran: the row must not read "ok" (a check that could not fail shown as
    passed). The probe has no better direction for every method, so no best is marked on it."""
    design = StudyDesign.model_validate(
        {**DESIGN, "notes": "Why this study.", "methods": [{"method": "erm"}, {"method": "great"}]}
    )
    recs = _records(
        {"erm": [0.1, 0.2, 0.3], "great": [0.2, 0.3, 0.4]}, {"erm": [0.1] * 3, "great": [0.1] * 3}
    )
    for r in recs:
        r["metrics"]["probe"] = 0.9 if r["label"] == "erm" else 0.5
        r["checked"] = False
    rep = report(design, recs)
    assert [row["checked"] for row in rep["rows"]] == [False, False]
    assert "probe" in rep["columns"] and "probe" not in rep["best"]
    for r in recs:  # a distillation teacher's accuracy: the reference, never a best
        r["metrics"]["test teacher_acc"] = 0.98 if r["label"] == "erm" else 0.97
    with_teacher = report(design, recs)
    assert "test teacher_acc" in with_teacher["columns"] and "test teacher_acc" not in with_teacher["best"]
    md = to_markdown(with_teacher)
    assert "every other row's; probe is not ranked; test teacher_acc is not ranked;" in md
    assert with_teacher["columns"].count("test teacher_acc") == 1  # among the test columns, once
    assert "| great | test teacher_acc |" not in md  # a reference, not tested against the baseline
    assert all(row["cells"]["test teacher_acc"]["vs_baseline"] is None for row in with_teacher["rows"])
    md = to_markdown(rep)
    assert "| erm | 3 | 20.0 ± 10.0 [-4.8, 44.8] | 90.0 ± 0.0 [90.0, 90.0] | 0.1000" in md
    assert md.count("[0.1000, 0.1000] | – |") == 2 and "| ok |" not in md
    assert "\n\nWhy this study.\n\n" in md  # the design's notes under the legend
    recs[0]["checked"] = True  # one run of erm ran its panel and passed every check
    assert "[0.1000, 0.1000] | ok |" in to_markdown(report(design, recs))


def test_a_validation_study_reads_the_validation_split_and_nothing_measured_on_test():
    """A tuning study (split: val) chooses knobs: its report must never show a figure of the test
    split (test metrics, the panel's attacks, the probe), and a test study never shows validation."""
    summary = {"test": {"acc": 0.9, "loss": 0.3}, "val": {"acc": 0.8, "loss": 0.4, "pgd": 0.2}}
    ev = PanelResult.model_validate(
        {
            "panel": "quick",
            "std_eps": 0.1,
            "rows": [{"attack": "pgd", "norm": "linf", "eps": 0.1, "accuracy": 0.1, "n": 10}],
        }
    )
    metrics = run_metrics({**summary, "game": {"accuracy": 0.99}}, ev, 0.01)
    assert metrics == {
        "test acc": 0.9,
        "val acc": 0.8,
        "val pgd": 0.2,
        "pgd": 0.1,
        "probe": 0.99,
        "s/step": 0.01,
    }
    recs = [
        {"label": label, "seed": seed, "status": "succeeded", "run_id": None, "curve": {}, "metrics": metrics}
        for label in ("erm", "great[lam=0.1]", "great[lam=1.0]") for seed in (0, 1)
    ]  # fmt: skip
    tuning = {**DESIGN, "seeds": [0, 1], "split": "val", "eval": {"panel": "none"}}
    rep = report(StudyDesign.model_validate(tuning), recs)
    assert rep["columns"] == ["val acc", "val pgd", "s/step"] and rep["split"] == "val"
    assert "on the validation split (a tuning study: nothing here is read on test)" in to_markdown(rep)
    plain = report(StudyDesign.model_validate({**DESIGN, "seeds": [0, 1]}), recs)
    assert plain["columns"] == ["test acc", "pgd", "probe", "s/step"]
    assert "validation" not in to_markdown(plain)
    for panel in ({}, {"panel": "quick"}):  # the panel attacks the test split: refused, not wasted
        with pytest.raises(ValidationError, match="eval.panel: a study read on the validation split"):
            StudyDesign.model_validate({**tuning, "eval": panel})


MT = {
    "name": "mt",
    "scenario": "multitask",
    "dataset": {"name": "digits_mt"},
    "methods": [
        {"method": "single_task", "label": "single", "grid": {"task": ["a", "b"]}},
        {"method": "equal"},
        {"method": "great"},
    ],
    "seeds": [0, 1],
    "baseline": "equal",
}


def _mt(label, seed, acc, mse):
    m = {"test a/acc": acc, "test b/mse": mse, "s/step": 0.01}
    return {"label": label, "seed": seed, "status": "succeeded", "run_id": None, "metrics": m, "curve": {}}


def test_multitask_delta_m_against_the_single_task_models_computed_by_hand():
    """Δm% = mean over tasks of (-1)^(higher is better) (M - M_single) / M_single x 100 (Maninis et
    al. 2019), M_single the single-task arm's mean over seeds; single-task rows show their own task."""

    recs = [_mt("single[task=a]", 0, 0.80, 9.0), _mt("single[task=a]", 1, 0.90, 9.0)]
    recs += [_mt("single[task=b]", 0, 0.10, 0.20), _mt("single[task=b]", 1, 0.10, 0.30)]
    recs += [_mt("equal", 0, 0.85, 0.25), _mt("equal", 1, 0.68, 0.50)]
    recs += [_mt("great", 0, 0.85, 0.30), _mt("great", 1, 0.85, 0.20)]
    rep = report(StudyDesign.model_validate(MT), recs)
    rows = {r["label"]: r["cells"] for r in rep["rows"]}
    by_hand = {  # single a: acc 0.85; single b: mse 0.25
        "equal": [
            100 * (-(0.85 - 0.85) / 0.85 + 0) / 2,
            100 * (-(0.68 - 0.85) / 0.85 + (0.50 - 0.25) / 0.25) / 2,
        ],
        "great": [100 * (0 + (0.30 - 0.25) / 0.25) / 2, 100 * (0 + (0.20 - 0.25) / 0.25) / 2],
    }
    for label, want in by_hand.items():
        assert rows[label]["Δm%"]["values"] == pytest.approx(want), label
    assert rows["single[task=a]"]["test b/mse"]["mean"] is None  # its untrained head is not shown
    assert rows["single[task=b]"]["test b/mse"]["mean"] == pytest.approx(0.25)
    assert rows["single[task=a]"]["Δm%"]["mean"] is None and "Δm%" not in rep["best"]  # 2 seeds: no interval
    assert rep["columns"][-2:] == ["Δm%", "s/step"]
    md = to_markdown(rep)
    assert "| great | 2 | 85.0 ± 0.0 | 0.2500 ± 0.0707 | 0.00 ± 14.14 |" in md  # no t interval from 2 seeds


@pytest.mark.parametrize("path", sorted(Path(__file__).parents[1].joinpath("studies").glob("*.yaml")))
def test_each_committed_study_is_a_valid_design_with_its_notes(path):
    """The benchmarks run these files: a broken one would fail only after hours of training."""
    design = StudyDesign.model_validate(yaml.safe_load(path.read_text()))
    assert design.name == path.stem and design.notes and f"studies/{path.name}" in design.notes
    expand(design)  # every run config of it validates (methods, knobs, dataset)


def test_the_latex_export_is_plain_ascii_for_pdflatex():
    """Labels with λ, Δm%, missing cells and the legend's symbols all become LaTeX commands."""
    rep = report(StudyDesign.model_validate({**MT, "methods": [*MT["methods"][:2], {"method": "great", "label": "great λ=1"}]}), [
        _mt("single[task=a]", 0, 0.8, 9.0), _mt("single[task=b]", 0, 0.1, 0.2), _mt("equal", 0, 0.85, 0.25),
        _mt("great λ=1", 0, 0.8, 0.3)])  # fmt: skip
    tex = to_latex(rep)
    assert tex.isascii(), [ch for ch in tex if not ch.isascii()]
    assert r"great $\lambda$=1 & 1 &" in tex and r"$\Delta$m\%" in tex and " & -- & " in tex
    assert r"p $<$ 0.05" in tex


def _cells(line: str) -> int:
    """Cells of a Markdown table row: pipes not escaped with a backslash."""
    return len(re.findall(r"(?<!\\)\|", line)) - 1


def _tables_well_formed(md: str) -> bool:
    """Every row of each Markdown table has as many cells as its header."""
    tables = [[r for r in block.splitlines() if r.startswith("|")] for block in md.split("\n\n")]
    return all(len({_cells(r) for r in t}) == 1 for t in tables if t)


def test_exports_are_safe_and_well_formed_with_hostile_text_and_no_metric_column_yet():
    """Issue 27, findings 9, 10 and 12: labels starting with '=' went into CSVs as formulas; notes and
    labels went into Markdown raw (HTML, and '|' added columns); with no metric column yet (no run
    finished) the Markdown rows had more cells than the header and LaTeX declared too few columns."""
    design = StudyDesign.model_validate(
        {
            **DESIGN,
            "methods": [{"method": "erm", "label": "=1+2"}, {"method": "great", "label": "-cmd"}],
            "baseline": "=1+2",
            "notes": "<script>alert(1)</script> | a | b",
        }
    )
    queued = [
        {"label": label, "seed": seed, "status": "queued", "run_id": None, "metrics": {}}
        for _, label, seed, _ in expand(design)
    ]
    for records in (queued, []):
        rep = report(design, records)
        assert rep["columns"] == []
        md = to_markdown(rep)
        assert "<script>" not in md and "&lt;script&gt;" in md
        assert _tables_well_formed(md) and "| method | seeds | checks |" in md, md
        tex = to_latex(rep)
        spec = re.search(r"\\begin\{tabular\}\{(\w+)\}", tex).group(1)
        rows = [line for line in tex.splitlines() if line.endswith(r"\\")]
        assert {line.count("&") + 1 for line in rows} == {len(spec)}, (spec, rows)
    finished = [
        {
            **r,
            "status": "succeeded",
            "run_id": i,
            "metrics": {"test acc": 0.9},
            "checked": False,
            "failed_checks": [],
        }
        for i, r in enumerate(queued)
    ]
    rep = report(design, finished)
    for line in to_csv(rep).splitlines()[1:]:
        assert line.startswith("'=1+2,") or line.startswith("'-cmd,"), line
    assert _tables_well_formed(to_markdown(rep))
    from labcore.study import csv_cell

    assert csv_cell('=HYPERLINK("http://x")') == '\'=HYPERLINK("http://x")' and csv_cell("@SUM(A1)")[0] == "'"
    assert csv_cell(-0.5) == -0.5 and csv_cell("erm") == "erm"  # the leaderboard's cells go through it too


def test_the_probe_is_a_share_of_its_own_held_out_gradients_and_its_interval_stays_in_0_100():
    """The probe's accuracy is a proportion of the game's n held-out gradients: its interval is the
    binomial one on that n (a t interval over 3 seeds near 100 % passes 100 %), and the legend says n."""
    recs = [
        record(label, seed, "succeeded", seed,
               {"test": {"acc": 0.9}, "data": {"n_test": 360}, "game": {"accuracy": acc, "n_test": 200}}, None)
        for label in ("erm", "great[lam=0.1]", "great[lam=1.0]") for seed, acc in enumerate((0.995, 1.0, 0.96))
    ]  # fmt: skip
    assert recs[0]["n"]["probe"] == 200
    rep = report(StudyDesign.model_validate(DESIGN), recs)
    probe = next(r for r in rep["rows"] if r["label"] == "erm")["cells"]["probe"]
    lo, hi = probe["ci"]
    assert probe["examples"] == 200 and probe["interval"].startswith("bootstrap")
    assert 0.9 < lo < probe["mean"] < hi <= 1.0
    t_hi = probe["mean"] + t_quantile_975(2) * probe["std"] / 3**0.5
    assert t_hi > 1.0  # what the t interval gave: past 100 %
    assert "the probe on n = 200 held-out gradients" in to_markdown(rep)
