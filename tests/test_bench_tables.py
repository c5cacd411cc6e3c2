"""The three result tables' benchmarks run end to end at a toy size (the committed tables in
docs/results/ come from these scripts at full size): a refactor that breaks one fails here, not
months later when someone reruns it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

TOY = {
    "defense": ["--methods", "erm,great", "--seeds", "2", "--epochs", "1", "--n", "30", "--no-sweep"],
    "distill": ["--methods", "student,great", "--seeds", "2", "--steps", "20", "--fractions", "0.1"],
    "multitask": ["--seeds", "2", "--epochs", "1"],
    "reproduce": ["--methods", "erm", "--seeds", "2", "--epochs", "1", "--panel", "quick", "--n", "20"],
    "tune": [
        *("--methods", "great,igr", "--trials", "2", "--seeds", "2", "--epochs", "1", "--workers", "2"),
        *("--distill-steps", "20", "--teacher-epochs", "1", "--mt-epochs", "1"),
    ],
    "game": ["--variants", "erm,great (g of the logit margin)", "--seeds", "2", "--epochs", "1"],
}
ROW = {
    "defense": "| great",
    "distill": "| great",
    "multitask": "| great",
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
    if bench == "defense":  # per seed: intervals with their n, the probe (whole test split), the checks
        assert "| method | seed | autoattack | worst_case | gradient probe (chance)" in out.stdout
        rows = [line for line in out.stdout.splitlines() if line.startswith(("| erm | 0 |", "| great | 1 |"))]
        assert len(rows) == 2 and all("(n=30)" in r and "(n=359)" in r for r in rows), out.stdout
    if bench in ("distill", "multitask"):  # the game's fresh probe beside the accuracies
        header = next(line for line in out.stdout.splitlines() if line.startswith("| method"))
        assert "probe |" in header, header
    if bench == "tune":  # through a lab's sweeps: the chosen knobs are one of the trials, over both seeds
        chosen, trials = out.stdout.split("## Every trial")
        for scenario in ("defense", "distill", "multitask"):  # GREAT in each scenario, IGR in defense
            pick = next(line for line in chosen.splitlines() if line.startswith(f"| {scenario} | great |"))
            assert pick.split(" | ")[2] in trials and pick.count(" ± ") == 3, out.stdout
        assert "each trial one sweep of the lab" in out.stdout
