"""The tuning search behind the defaults, run through a lab: every method of every scenario gets
the same budget of trials, each a sweep of the lab (POST /api/sweeps) over several seeds, scored on
the validation split only (never the test split).

    python -m bench.tune                                  # digits: all three scenarios, 6 trials x 3 seeds
    python -m bench.tune --scenarios defense --methods great,igr --trials 4
    python -m bench.tune --server http://lab:8000 --token T   # on a running lab instead of a local one

Without --server it starts a local lab (`gatlab up`'s embedded stack: SQLite, the embedded broker)
with --workers worker processes, one CPU thread each. Scores, as the runs logged them on the
validation split at their last epoch: defense, accuracy under PGD-20 at the dataset's standard
L-inf radius (`train.val_pgd_steps`); distillation, the student's accuracy (fraction 0.1 of the
training split, one teacher run for all); multi-task, the mean accuracy of the classification
tasks. A method's trials are its whole grid when the grid has at most --trials points, else a
seeded random sample of it that always holds today's defaults. Prints markdown: the chosen knobs
per method with the spread over seeds, then every trial.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from backend.run_config import PARAMS
from bench._common import Stack, spread
from worker.gat import data as gdata

SPACES: dict[str, dict[str, dict[str, list]]] = {
    "defense": {
        "great": {"lam": [0.03, 0.1, 0.3, 1.0], "aux_width": [16, 32, 64], "aux_lr": [3e-4, 1e-3, 3e-3]},
        "greace": {"beta": [0.1, 0.3, 1.0, 3.0, 10.0, 30.0]},
        "igr": {"weight": [0.01, 0.1, 0.3, 1.0, 3.0, 10.0]},
        "trades": {"beta": [0.5, 1.0, 2.0, 4.0, 6.0, 10.0]},
        "pgd_at": {"step_mult": [1.0, 1.5, 2.0, 2.5, 3.0, 4.0]},
        "fgsm_at": {"alpha": [0.5, 0.75, 1.0, 1.25, 1.5, 2.0]},
    },
    "distill": {
        "great": {"lam": [0.03, 0.1, 0.3, 1.0], "aux_width": [16, 32, 64], "aux_lr": [3e-4, 1e-3, 3e-3]},
        "soft_targets": {"temperature": [2.0, 4.0, 8.0], "alpha": [0.5, 0.9]},
        "jacobian_matching": {"beta": [0.1, 0.3, 1.0, 3.0, 10.0, 30.0]},
        "great+soft_targets": {"lam": [0.01, 0.03, 0.1, 0.3, 1.0, 3.0]},
    },
    "multitask": {
        "great": {"lam": [0.01, 0.03, 0.1, 0.3, 1.0, 3.0]},
        "gradnorm": {"alpha": [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]},
        "uncertainty": {"weight_lr": [1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3]},
    },
}
DATASETS = {"defense": "digits", "distill": "digits", "multitask": "digits_mt"}
FINAL = ("succeeded", "failed", "cancelled")


def defaults(scenario: str, method: str) -> dict:
    fields = PARAMS[(scenario, method)].model_fields
    return {k: fields[k].default for k in SPACES[scenario][method]}


def trials(scenario: str, method: str, budget: int, seed: int = 0) -> list[dict]:
    """The method's grid if it fits the budget, else today's defaults and a seeded sample of
    `budget - 1` other grid points (so a default is always scored against its rivals)."""
    space = SPACES[scenario][method]
    grid = [dict(zip(space, values, strict=True)) for values in itertools.product(*space.values())]
    if len(grid) <= budget:
        return grid
    rest = [g for g in grid if g != defaults(scenario, method)]
    return [defaults(scenario, method), *random.Random(seed).sample(rest, budget - 1)]


def base_config(args, scenario: str, method: str, teacher: int | None) -> dict:
    """The run config every trial of a scenario shares: the benchmark tables' own settings."""
    train = {"batch_size": 64, "log_every": 50, "stats_every": 10**6}
    cfg = {"name": f"tune-{scenario}-{method}", "scenario": scenario, "method": method}
    if scenario == "defense":
        return {
            **cfg,
            "dataset": {"name": args.dataset},
            "model": {"arch": "cnn", "width": 16},
            "train": {**train, "epochs": args.epochs, "lr": 1e-3, "val_pgd_steps": 20},
            "eval": {"panel": "none"},
        }
    if scenario == "distill":  # as bench.distill --fractions 0.1: ~1000 steps of batch 32
        n = len(gdata.load({"name": args.dataset, "fraction": 0.1}).train)
        return {
            **cfg,
            "dataset": {"name": args.dataset, "fraction": 0.1},
            "model": {"arch": "cnn", "width": 8},
            "train": {
                **train,
                "batch_size": 32,
                "epochs": math.ceil(args.distill_steps / math.ceil(n / 32)),
                "lr": 0.01,
            },
            "params": {"teacher_run": teacher},
            "eval": {"panel": "none"},
        }
    return {  # as bench.multitask
        **cfg,
        "dataset": {"name": DATASETS["multitask"]},
        "model": {"arch": "cnn", "width": 8},
        "train": {**train, "epochs": args.mt_epochs, "lr": 0.003},
        "eval": {"panel": "none"},
    }


def score(scenario: str, last: dict[str, float]) -> tuple[float, float]:
    """(the score, clean validation accuracy) from a run's last validation values."""
    if scenario == "defense":
        return last["val/pgd"], last["val/acc"]
    if scenario == "distill":
        return last["val/acc"], last["val/acc"]
    accs = [v for k, v in last.items() if k.endswith("/acc")]
    return statistics.mean(accs), statistics.mean(accs)


class Lab:
    """The lab the search runs on: a local embedded one, or a running server."""

    def __init__(self, args, home: Path):
        self.stack = None
        if args.server:
            headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
            self.http = httpx.Client(base_url=args.server, headers=headers, timeout=60)
        else:
            self.stack = Stack.create(home, None, None, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
            for _ in range(args.workers):
                self.stack.start_worker()
            self.http = self.stack.http

    def post(self, path: str, body: dict) -> dict:
        r = self.http.post(path, json=body)
        if r.status_code >= 400:
            raise SystemExit(f"bench.tune: {path} answered {r.status_code}: {r.text[:500]}")
        return r.json()

    def wait(self, ids: list[int]) -> dict[int, dict]:
        runs: dict[int, dict] = {}
        while len(runs) < len(ids):
            for i in ids:
                if i not in runs:
                    run = self.http.get(f"/api/runs/{i}").json()
                    if run["status"] in FINAL:
                        runs[i] = run
            time.sleep(2)
        return runs

    def last_values(self, run_id: int) -> dict[str, float]:
        series = self.http.get(f"/api/runs/{run_id}/metrics", params={"max_points": 2}).json()["series"]
        return {k: s["value"][-1] for k, s in series.items() if k.startswith("val/") and s["value"]}

    def close(self) -> None:
        if self.stack:
            self.stack.stop()


COLLAPSE = 0.10  # a trial this far below the method's best clean validation accuracy is not eligible


def verdict(scenario: str, method: str, scored: dict) -> str:
    """One row: the best eligible trial, today's default, and whether the best replaces it. A trial
    is eligible when its mean clean validation accuracy is within COLLAPSE of the method's best: a
    model that collapses to one class scores that class's share under any attack, so a robust score
    bought with clean accuracy is not a win."""
    top_clean = max(statistics.mean(t[1]) for t in scored.values())
    eligible = [t for t in scored.values() if statistics.mean(t[1]) >= top_clean - COLLAPSE]
    knobs, clean, adv = max(eligible, key=lambda t: statistics.mean(t[2]))
    _, _, dadv = scored[repr(defaults(scenario, method))]
    margin = statistics.mean(adv) - statistics.mean(dadv)
    noise = max(statistics.stdev(adv), statistics.stdev(dadv)) if len(adv) > 1 else 0.0
    call = (
        "keep the default"
        if knobs == defaults(scenario, method) or margin <= noise
        else f"adopt (+{100 * margin:.1f} points)"
    )
    return (
        f"| {scenario} | {method} | {knobs} | {spread(clean, 100)} | {spread(adv, 100)} | {spread(dadv, 100)} |"
        f" {call} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="digits", help="defense and distillation (multi-task: digits_mt)")
    ap.add_argument("--epochs", type=int, default=15, help="defense")
    ap.add_argument("--distill-steps", type=int, default=1000, help="distillation: about this many steps")
    ap.add_argument("--teacher-epochs", type=int, default=20, help="distillation's teacher run")
    ap.add_argument("--mt-epochs", type=int, default=30, help="multi-task")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--scenarios", default=",".join(SPACES))
    ap.add_argument("--methods", help="only these methods (any scenario)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="local lab's workers")
    ap.add_argument("--server", help="a running lab's address, instead of a local one")
    ap.add_argument("--token", help="with --server: an API token")
    args = ap.parse_args()
    t0 = time.time()
    tag = f"tune-{int(t0)}"
    with tempfile.TemporaryDirectory() as home:
        lab = Lab(args, Path(home))
        try:
            teacher = None
            if "distill" in args.scenarios.split(","):  # one teacher for every student, as bench.distill
                tcfg = {
                    "name": "tune-teacher",
                    "scenario": "defense",
                    "method": "erm",
                    "dataset": {"name": args.dataset},
                    "model": {"arch": "cnn", "width": 32},
                    "train": {"epochs": args.teacher_epochs, "batch_size": 64, "seed": 0},
                    "eval": {"panel": "none"},
                }
                teacher = lab.post("/api/runs", {"config": tcfg, "experiment": tag})["id"]
                assert lab.wait([teacher])[teacher]["status"] == "succeeded", "the teacher run failed"
            plan = []  # (scenario, method, knobs, run ids)
            for scenario in args.scenarios.split(","):
                for method in SPACES[scenario]:
                    if args.methods and method not in args.methods.split(","):
                        continue
                    for knobs in trials(scenario, method, args.trials):
                        body = {
                            "config": base_config(args, scenario, method, teacher),
                            "grid": {f"params.{k}": [v] for k, v in knobs.items()},
                            "seeds": list(range(args.seeds)),
                            "experiment": f"{tag}-{scenario}-{method}",
                        }
                        plan.append(
                            (
                                scenario,
                                method,
                                knobs,
                                [r["id"] for r in lab.post("/api/sweeps", body)["items"]],
                            )
                        )
            runs = lab.wait([i for *_, ids in plan for i in ids])
            failed = [r for r in runs.values() if r["status"] != "succeeded"]
            if failed:
                raise SystemExit(f"bench.tune: {len(failed)} runs did not succeed, e.g. {failed[0]['error']}")
            scored: dict[tuple, dict] = {}
            lines = ["| scenario | method | knobs | val clean | val score |", "|---|---|---|---|---|"]
            for scenario, method, knobs, ids in plan:
                vals = [score(scenario, lab.last_values(i)) for i in ids]
                entry = (knobs, [v[1] for v in vals], [v[0] for v in vals])
                scored.setdefault((scenario, method), {})[repr(knobs)] = entry
                lines.append(
                    f"| {scenario} | {method} | {knobs} | {spread(entry[1], 100)} | {spread(entry[2], 100)} |"
                )
        finally:
            lab.close()
    print("# Tuning: the same budget for every method, scored on validation, through the lab's sweeps\n")
    print(f"Command: `python -m bench.tune {' '.join(sys.argv[1:])}`  ")
    print(
        f"{args.trials} trials per method × {args.seeds} seeds, each trial one sweep of the lab"
        f" ({'a running lab' if args.server else f'a local lab, {args.workers} workers of one thread'});"
        f" {len(runs)} runs in {time.time() - t0:.0f} s. Validation scores at the last epoch (mean ± std"
        " over seeds): defense, PGD-20 accuracy at the standard ε (cnn width 16,"
        f" {args.epochs} epochs, Adam lr 0.001); distillation, the student's accuracy (cnn width 8,"
        f" fraction 0.1, ~{args.distill_steps} steps, one ERM teacher of width 32, {args.teacher_epochs} epochs);"
        " multi-task, the mean accuracy of the classification tasks of digits_mt (cnn width 8,"
        f" {args.mt_epochs} epochs).\n"
    )
    print("## Chosen\n")
    print(
        "The best trial (highest mean validation score among the trials whose mean clean validation"
        f" accuracy is within {100 * COLLAPSE:.0f} points of the method's best: a collapsed model scores its"
        " majority class's share under any attack) becomes the default only where it beats today's default"
        " by more than one standard deviation over seeds (the larger of the two): a win inside the seeds'"
        " spread is noise, and the default stays.\n"
    )
    print("| scenario | method | best trial | val clean | val score | today's default: val score | verdict |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(verdict(sc, m, s) for (sc, m), s in scored.items()))
    print("\n## Every trial\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
