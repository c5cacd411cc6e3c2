"""The tuning search behind the defaults, as three studies read on the validation split
(studies/tune-defense-digits.yaml, tune-distill-digits.yaml, tune-multitask-digits.yaml): every
method of a scenario gets the same budget of trials (one arm each), every trial the same seeds, and
nothing is read on the test split (`split: val`).

    python -m bench.tune                                   # the three studies on a local lab
    python -m bench.tune --designs studies/tune-multitask-digits.yaml
    python -m bench.tune --server http://lab:8000 --token T   # on a running lab instead of a local one

Each study runs through a lab (without --server a local one, `gatlab up`'s embedded stack with
--workers worker processes of one CPU thread each) by the code path of every study (bench/study.py:
`gatlab study run FILE --server URL`), which writes its report's Markdown and LaTeX exports
(docs/results/tune-SCENARIO-digits.md, .tex: every trial, mean ± std [interval] over seeds). Then,
from each report's JSON export, one verdict per method, written to docs/results/tune-digits.md.
Scores, the final models' validation figures: defense, accuracy under PGD-20 at the standard L-inf
radius (`val pgd`); distillation, the student's accuracy; multi-task, the mean accuracy of the
classification tasks.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench import study
from bench._common import Stack, spread
from labcore.run_config import PARAMS
from labcore.study import StudyDesign, arm_params

DESIGNS = [f"studies/tune-{s}-digits.yaml" for s in ("defense", "distill", "multitask")]
COLLAPSE = 0.10  # a trial this far below the method's best clean validation accuracy is not eligible


def score_columns(scenario: str, columns: list[str]) -> tuple[list[str], list[str]]:
    """(the score's columns, the clean accuracy's columns) of a validation report; a run's score is
    the mean of its score columns (multi-task: the classification tasks' accuracies)."""
    if scenario == "defense":
        return ["val pgd"], ["val acc"]
    if scenario == "distill":
        return ["val acc"], ["val acc"]
    accs = [c for c in columns if c.startswith("val ") and c.endswith("/acc")]
    return accs, accs


def per_seed(row: dict, columns: list[str]) -> list[float]:
    """A row's per-seed mean over `columns` (every column holds every finished seed, in seed order)."""
    values = [row["cells"][c]["values"] for c in columns]
    return [statistics.fmean(v) for v in zip(*values, strict=True)]


def choose(design: StudyDesign, rep: dict) -> list[dict]:
    """One verdict per tuned method (an arm with a grid is a trial): the best eligible trial against
    today's default. A trial is eligible when its mean clean validation accuracy is within COLLAPSE
    of the method's best, since a model collapsed to one class scores that class's share under any
    attack; the best replaces the default only where it wins by more than one standard deviation
    over seeds (the larger of the two), since a win inside the seeds' spread is noise."""
    score_cols, clean_cols = score_columns(design.scenario, rep["columns"])
    rows = {r["label"]: r for r in rep["rows"]}
    knobs: dict[str, set] = {}  # per tuned method, the knobs its trials vary (not the fixed `params`)
    for arm in design.methods:
        if arm.grid:
            knobs.setdefault(arm.method, set()).update(arm.grid)
    trials: dict[str, list[tuple]] = {}
    for label, spec in arm_params(design):
        if spec["method"] in knobs:
            row = rows[label]
            trials.setdefault(spec["method"], []).append(
                (label, spec["params"], per_seed(row, clean_cols), per_seed(row, score_cols))
            )
    out = []
    for method, scored in trials.items():
        fields = PARAMS[(design.scenario, method)].model_fields
        default = next((t for t in scored if all(t[1][k] == fields[k].default for k in knobs[method])), None)
        top_clean = max(statistics.mean(t[2]) for t in scored)
        eligible = [t for t in scored if statistics.mean(t[2]) >= top_clean - COLLAPSE]
        best = max(eligible, key=lambda t: statistics.mean(t[3]))
        verdict = "today's default is not among the trials"
        if default is not None:
            margin = statistics.mean(best[3]) - statistics.mean(default[3])
            noise = max(statistics.stdev(best[3]), statistics.stdev(default[3])) if len(best[3]) > 1 else 0.0
            adopt = best is not default and margin > noise
            verdict = f"adopt (+{100 * margin:.1f} points)" if adopt else "keep the default"
        out.append({"method": method, "best": best, "default": default, "verdict": verdict})
    return out


def chosen_table(design: StudyDesign, rep: dict) -> list[str]:
    """The verdicts as Markdown rows."""
    lines = []
    for c in choose(design, rep):
        label, _, clean, adv = c["best"]
        dflt = spread(c["default"][3], 100) if c["default"] else "–"
        lines.append(
            f"| {design.scenario} | {c['method']} | {label} | {spread(clean, 100)} | {spread(adv, 100)}"
            f" | {dflt} | {c['verdict']} |"
        )
    return lines


def write(path: Path, designs: list[StudyDesign], reports: list[dict], how: str) -> None:
    names = ", ".join(f"`{d.name}.md`" for d in designs)
    lines = [
        "# Tuning: the same budget for every method, scored on validation, as studies",
        "",
        f"Command: `{' '.join(['python', '-m', 'bench.tune', *sys.argv[1:]])}`  ",
        f"{how}. The designs: `studies/<name>.yaml`; their reports, every trial with mean ± std [95 %"
        f" interval] over seeds, paired against the plain baseline: {names} beside this file. Scores,"
        " the final models' validation figures: defense, PGD-20 accuracy at the standard ε (`val pgd`);"
        " distillation, the student's accuracy; multi-task, the mean accuracy of the classification"
        " tasks.",
        "",
        "## Chosen",
        "",
        "The best trial (highest mean validation score among the trials whose mean clean validation"
        f" accuracy is within {100 * COLLAPSE:.0f} points of the method's best: a collapsed model scores its"
        " majority class's share under any attack) becomes the default only where it beats today's default"
        " by more than one standard deviation over seeds (the larger of the two): a win inside the seeds'"
        " spread is noise, and the default stays.",
        "",
        "| scenario | method | best trial | val clean | val score | today's default: val score | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for design, rep in zip(designs, reports, strict=True):
        lines += chosen_table(design, rep)
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--designs", nargs="+", default=DESIGNS, help="the tuning studies (split: val)")
    ap.add_argument("--docs", default="docs/results", help="where the reports and tune-digits.md go")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="local lab's workers")
    ap.add_argument("--server", help="a running lab's address, instead of a local one")
    ap.add_argument("--token", help="with --server: an API token")
    args = ap.parse_args()
    designs = [StudyDesign.model_validate(yaml.safe_load(Path(f).read_text())) for f in args.designs]
    if any(d.split != "val" for d in designs):
        raise SystemExit("bench.tune: a tuning study reads the validation split (split: val)")
    t0 = time.time()
    with tempfile.TemporaryDirectory() as home:
        stack = None
        if args.server:
            if args.token:
                os.environ["GATLAB_TOKEN"] = args.token
        else:
            stack = Stack.create(Path(home), None, None, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
            for _ in range(args.workers):
                stack.start_worker()
        try:
            reports = []
            for f in args.designs:
                study.run(f, docs=args.docs, server=args.server or stack.base)
                reports.append(study.report(f, server=args.server or stack.base))
        finally:
            if stack:
                stack.stop()
    failed = [(r["study"], r["progress"]) for r in reports if set(r["progress"]) - {"total", "succeeded"}]
    if failed:
        raise SystemExit(f"bench.tune: runs did not succeed: {failed}")
    runs = sum(r["progress"]["total"] for r in reports)
    where = "a running lab" if args.server else f"a local lab, {args.workers} workers of one thread"
    out = Path(args.docs) / "tune-digits.md"
    write(out, designs, reports, f"{runs} runs through {where} in {time.time() - t0:.0f} s")
    print(out.read_text())


if __name__ == "__main__":
    main()
