"""Defense: the study studies/defense-digits.yaml (every method, 3 seeds, the robustness panel; the
report written to docs/results/defense-digits.md and .tex by bench/study.py), then, from the same
run directories, each run's AutoAttack, worst case and gradient probe with their 95 % Wilson
intervals over the panel's examples (docs/results/defense-digits-per-seed.md).

    python -m bench.defense                              # the study, then the per-seed intervals
    python -m bench.defense --design studies/my.yaml     # another defense study

GREAT's lambda is tuned with every other method's knobs, on the validation split and with the same
budget, by bench/tune.py (docs/results/tune-digits.md); the study runs each method at its defaults.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from bench import study
from labcore.study import StudyDesign, arm_params, run_dir_name


def per_seed(design: StudyDesign, runs: Path) -> list[str]:
    """Per arm and seed: AutoAttack, worst case and the probe with 95 % Wilson intervals (n examples)."""
    cell = lambda acc, ci, n: f"{100 * acc:.1f} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}] (n={n})"
    lines = [
        f"# Study {design.name}: each run's panel, with 95 % Wilson intervals over its examples\n",
        f"From the run directories of `python -m bench.defense` (`gatlab study run` of the design in"
        f" studies/{design.name}.yaml); the table over seeds is docs/results/{design.name}.md.\n",
        "| method | seed | autoattack | worst_case | gradient probe (chance) | FAB median L-inf | failed checks |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, _ in arm_params(design):
        for seed in design.seeds:
            ev = json.loads((runs / run_dir_name(label, seed) / "eval.json").read_text())
            at = {
                r["attack"]: r
                for r in ev["rows"]
                if r["norm"] == "linf" and abs(r["eps"] - ev["std_eps"]) < 1e-12
            }
            aa, wc, pr, med = at["autoattack"], at["worst_case"], ev["probe"], ev["min_norm"]["median"]
            failed = ", ".join(c["name"] for c in ev["checks"] if not c["passed"]) or "none"
            lines.append(
                f"| {label} | {seed} | {cell(aa['accuracy'], aa['ci'], aa['n'])} | {cell(wc['accuracy'], wc['ci'], wc['n'])}"
                f" | {cell(pr['accuracy'], pr['ci'], pr['n_test'])} ({100 * pr['chance']:.1f})"
                f" | {'-' if med is None else f'{med:.4f}'} | {failed} |"
            )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--design", default="studies/defense-digits.yaml")
    ap.add_argument("--out-dir", help="where the run directories go (default runs/study-NAME)")
    ap.add_argument("--docs", default="docs/results", help="where the report's exports go")
    args = ap.parse_args()
    md = study.run(args.design, out_dir=args.out_dir, docs=args.docs)
    design = StudyDesign.model_validate(yaml.safe_load(Path(args.design).read_text()))
    out = md.with_name(f"{design.name}-per-seed.md")
    out.write_text("\n".join(per_seed(design, study.runs_dir(args.design, args.out_dir))) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
