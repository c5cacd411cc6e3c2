"""The three result tables' benchmarks run end to end at a toy size (the committed tables in
docs/results/ come from these scripts at full size): a refactor that breaks one fails here, not
months later when someone reruns it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

TOY = {
    "reproduce": ["--methods", "erm", "--seeds", "2", "--epochs", "1", "--panel", "quick", "--n", "20"],
    "game": ["--variants", "erm,great (g of the logit margin)", "--seeds", "2", "--epochs", "1"],
}
# The study benchmarks run a toy version of their committed design (studies/NAME.yaml).
SINGLE = {"method": "single_task", "label": "single", "grid": {"task": ["digit", "intensity"]}}
STUDIES = {
    "defense": (
        "defense-digits",
        {"methods": [{"method": "erm"}, {"method": "great"}]},
        {"train": {"epochs": 1}, "eval": {"panel": "quick", "n": 30}},
    ),
    "distill": (
        "distill-digits",
        {"methods": [{"method": "student"}, {"method": "great"}]},
        {"train": {"epochs": 2, "batch_size": 32}},
    ),
    "multitask": (
        "multitask-digits",
        {"methods": [SINGLE, {"method": "equal"}, {"method": "great"}]},
        {"train": {"epochs": 1}},
    ),
}
ROW = {
    "reproduce": "| erm",
    "game": "| great (g of the logit margin)",
}


@pytest.mark.parametrize("bench", sorted(TOY))
def test_a_result_table_benchmark_runs_at_toy_size_with_spreads_over_seeds(bench):
    out = subprocess.run(
        [sys.executable, "-m", f"bench.{bench}", *TOY[bench]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    table = [line for line in out.stdout.splitlines() if line.startswith(ROW[bench])]
    assert table and " ± " in table[0], out.stdout
    if bench == "reproduce":  # the verdict against the published anchor is printed, whatever it is
        assert "no published anchor" in table[0] and "AutoAttack per seed [95 % CI]" in out.stdout
        checks = table[0].split(" | ")[4]  # each failed check says whether it suspects masking
        assert checks == "none" or all(c[:1] in "✗△" for c in checks.split(", ")), checks


def test_the_tuning_benchmark_runs_its_three_validation_studies_on_a_lab_at_toy_size(tmp_path):
    """bench.tune at toy size: each committed tuning design shrunk (two GREAT trials, two seeds, an
    epoch or two) runs as a study through a local lab's workers; each report reads validation only,
    and the verdict of each method names one of its report's trials, over both seeds."""
    keep = {
        "defense": (3, {"train": {"epochs": 1}}),
        "distill": (3, {"train": {"epochs": 2}}),
        "multitask": (1, {}),
    }
    files = []
    for scenario, (n, small) in keep.items():
        design = yaml.safe_load((ROOT / "studies" / f"tune-{scenario}-digits.yaml").read_text())
        design["methods"] = design["methods"][:n] + (
            [{"method": "igr", "grid": {"weight": [0.1, 1.0]}}] if scenario == "defense"
            else [{"method": "great", "grid": {"lam": [0.1, 1.0]}}] if scenario == "multitask" else []
        )  # fmt: skip
        if scenario == "distill":  # a one-epoch teacher
            design["methods"] = [{**m, "params": {"teacher_epochs": 1}} for m in design["methods"]]
        design = {**design, "seeds": [0, 1], **{k: {**design[k], **v} for k, v in small.items()}}
        files.append(tmp_path / f"tune-{scenario}-digits.yaml")
        files[-1].write_text(
            yaml.safe_dump(design, allow_unicode=True, sort_keys=False)
        )  # labels keep their order
    docs = tmp_path / "docs"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.tune",
            "--designs",
            *map(str, files),
            "--docs",
            str(docs),
            "--workers",
            "2",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    chosen = (docs / "tune-digits.md").read_text()
    assert "22 runs through a local lab, 2 workers of one thread" in chosen, chosen
    for scenario in keep:
        md = (docs / f"tune-{scenario}-digits.md").read_text()
        assert "| val " in md and "| test " not in md and "validation split" in md, md
        assert (docs / f"tune-{scenario}-digits.tex").exists()
        methods = ("great", "igr") if scenario == "defense" else ("great",)
        for method in methods:
            pick = next(line for line in chosen.splitlines() if line.startswith(f"| {scenario} | {method} |"))
            assert f"| {pick.split(' | ')[2]} | 2 |" in md and pick.count(" ± ") == 3, chosen


@pytest.mark.parametrize("bench", sorted(STUDIES))
def test_a_study_benchmark_runs_its_design_at_toy_size_and_writes_the_reports_exports(bench, tmp_path):
    name, arms, small = STUDIES[bench]
    design = {**yaml.safe_load((ROOT / "studies" / f"{name}.yaml").read_text()), **arms, "seeds": [0, 1]}
    design = {**design, **{k: {**design[k], **v} for k, v in small.items()}}
    if bench == "distill":  # a one-epoch teacher
        design["methods"] = [{**m, "params": {"teacher_epochs": 1}} for m in design["methods"]]
    f = tmp_path / "toy.yaml"
    f.write_text(yaml.safe_dump(design))
    docs, runs = tmp_path / "docs", tmp_path / "runs"
    args = ["--design", str(f), "--docs", str(docs), "--out-dir", str(runs)]
    out = subprocess.run(
        [sys.executable, "-m", f"bench.{bench}", *args], cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    assert out.returncode == 0, out.stderr[-3000:]
    md = (docs / f"{name}.md").read_text()
    assert (docs / f"{name}.tex").read_text().startswith("\\begin{table}")
    great = next(line for line in md.splitlines() if line.startswith("| great | 2 |"))
    assert " ± " in great and design["notes"].split(".")[0] in md, md  # over both seeds; the design's notes
    if bench == "defense":  # per seed: intervals with their n, the probe (whole test split), the checks
        per_seed = (docs / f"{name}-per-seed.md").read_text()
        rows = [line for line in per_seed.splitlines() if line.startswith(("| erm | 0 |", "| great | 1 |"))]
        assert len(rows) == 2 and all("(n=30)" in r and "(n=359)" in r for r in rows), per_seed
    else:  # the step costs, interleaved in one run, against the plain method
        base = "student" if bench == "distill" else "equal"
        assert f"| {base} | " in out.stdout and " | 1.00 |" in out.stdout, out.stdout
    if bench == "multitask":
        assert "Δm%" in md and great.count(" ± ") >= 5, md


def test_the_tuning_verdict_skips_collapsed_trials_and_keeps_a_default_inside_the_seeds_spread():
    """bench.tune's choice from a validation study's report: a trial whose clean accuracy collapsed is
    never chosen, whatever its robust score; a win by more than the seeds' spread replaces the default;
    a win inside it does not. The default is told by the knobs the trials vary, whatever is fixed."""
    from bench.tune import choose
    from labcore.study import StudyDesign, report

    design = StudyDesign.model_validate(
        {
            "name": "t",
            "scenario": "defense",
            "dataset": {"name": "digits"},
            "eval": {"panel": "none"},
            "split": "val",
            "baseline": "erm",
            "seeds": [0, 1, 2],
            "methods": [
                {"method": "erm"},
                {"method": "igr", "grid": {"weight": [0.01, 0.1, 10.0]}},  # default 0.1
                {
                    "method": "greace",
                    "params": {"aux_width": 8},
                    "grid": {"beta": [1.0, 3.0]},
                },  # default beta 1.0
            ],
        }
    )
    clean_pgd = {  # per seed (clean, pgd)
        "erm": [(0.95, 0.10)] * 3,
        "igr[weight=0.01]": [(0.94, 0.40), (0.95, 0.42), (0.93, 0.41)],  # beats 0.1 by 10 points
        "igr[weight=0.1]": [(0.95, 0.30), (0.95, 0.32), (0.94, 0.31)],
        "igr[weight=10.0]": [(0.30, 0.30), (0.31, 0.90), (0.29, 0.30)],  # collapsed: best pgd, not eligible
        "greace[beta=1.0]": [(0.95, 0.10), (0.95, 0.14), (0.95, 0.12)],
        "greace[beta=3.0]": [(0.95, 0.11), (0.95, 0.15), (0.95, 0.13)],  # +1 point, spread 2: noise
    }
    recs = [
        {"label": label, "seed": seed, "status": "succeeded", "run_id": None, "curve": {},
         "metrics": {"val acc": clean, "val pgd": pgd, "s/step": 0.01}}
        for label, vals in clean_pgd.items() for seed, (clean, pgd) in enumerate(vals)
    ]  # fmt: skip
    got = {
        c["method"]: (c["best"][0], c["default"][0], c["verdict"])
        for c in choose(design, report(design, recs))
    }
    assert got == {
        "igr": ("igr[weight=0.01]", "igr[weight=0.1]", "adopt (+10.0 points)"),
        "greace": ("greace[beta=3.0]", "greace[beta=1.0]", "keep the default"),
    }
