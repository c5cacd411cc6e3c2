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
    "tune": [
        *("--methods", "great,igr", "--trials", "2", "--seeds", "2", "--epochs", "1", "--workers", "2"),
        *("--distill-steps", "20", "--teacher-epochs", "1", "--mt-epochs", "1"),
    ],
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
    "tune": "| defense | igr",
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
    if bench == "tune":  # through a lab's sweeps: the chosen knobs are one of the trials, over both seeds
        chosen, trials = out.stdout.split("## Every trial")
        for scenario in ("defense", "distill", "multitask"):  # GREAT in each scenario, IGR in defense
            pick = next(line for line in chosen.splitlines() if line.startswith(f"| {scenario} | great |"))
            assert pick.split(" | ")[2] in trials and pick.count(" ± ") == 3, out.stdout
        assert "each trial one sweep of the lab" in out.stdout


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
