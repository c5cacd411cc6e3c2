"""The tuning search behind the defense defaults: every method gets the same budget of trials,
each trained on several seeds and scored on the validation split only (never the test split).

    python -m bench.tune                              # digits, 6 trials x 3 seeds per method
    python -m bench.tune --methods great,igr --trials 4 --epochs 30

Score: accuracy under PGD-20 (random start) at the dataset's standard L-inf radius on the whole
validation split, mean over seeds; clean validation accuracy is printed beside it. A method's
trials are its whole grid when the grid has at most `--trials` points, else a seeded random
sample of it that always holds today's defaults (GREAT's grid spans lambda, A's width and A's
learning rate). Prints markdown: every
trial, then the chosen knobs per method with the spread over seeds.
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from backend.run_config import PARAMS
from bench._common import spread
from bench.defense import config
from worker.gat import data as gdata
from worker.gat.attacks import pgd
from worker.gat.recorder import NullRecorder
from worker.gat.train import load_model, train

SPACES: dict[str, dict[str, list]] = {
    "great": {"lam": [0.03, 0.1, 0.3, 1.0], "aux_width": [16, 32, 64], "aux_lr": [3e-4, 1e-3, 3e-3]},
    "greace": {"beta": [0.1, 0.3, 1.0, 3.0, 10.0, 30.0]},
    "igr": {"weight": [0.01, 0.1, 0.3, 1.0, 3.0, 10.0]},
    "trades": {"beta": [0.5, 1.0, 2.0, 4.0, 6.0, 10.0]},
    "pgd_at": {"step_mult": [1.0, 1.5, 2.0, 2.5, 3.0, 4.0]},
    "fgsm_at": {"alpha": [0.5, 0.75, 1.0, 1.25, 1.5, 2.0]},
}


def trials(method: str, budget: int, seed: int = 0) -> list[dict]:
    """The method's grid if it fits the budget, else today's defaults and a seeded sample of
    `budget - 1` other grid points (so a default is always scored against its rivals)."""
    space = SPACES[method]
    grid = [dict(zip(space, values, strict=True)) for values in itertools.product(*space.values())]
    if len(grid) <= budget:
        return grid
    defaults = {k: PARAMS[("defense", method)].model_fields[k].default for k in space}
    rest = [g for g in grid if g != defaults]
    return [defaults, *random.Random(seed).sample(rest, budget - 1)]


def val_score(cfg: dict) -> tuple[float, float]:
    """Train one run; clean and PGD-20 accuracy on the validation split."""
    with tempfile.TemporaryDirectory() as d:
        train(cfg, Path(d), NullRecorder())
        model = load_model(Path(d))
    data = gdata.load(cfg["dataset"])
    x, y = data.val.images(), data.val.y
    eps = gdata.STANDARD_EPS[cfg["dataset"]["name"]][0]
    torch.manual_seed(0)
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
    adv = (model(pgd(model, x, y, eps=eps, steps=20)).argmax(1) == y).float().mean().item()
    return clean, adv


def verdict(method: str, scored: dict) -> str:
    """One row: the best trial, today's default, and whether the best replaces it."""
    knobs, clean, adv = max(scored.values(), key=lambda t: statistics.mean(t[2]))
    space = SPACES[method]
    default = {k: PARAMS[("defense", method)].model_fields[k].default for k in space}
    _, _, dadv = scored[repr(default)]
    margin = statistics.mean(adv) - statistics.mean(dadv)
    noise = max(statistics.stdev(adv), statistics.stdev(dadv)) if len(adv) > 1 else 0.0
    call = (
        "keep the default" if knobs == default or margin <= noise else f"adopt (+{100 * margin:.1f} points)"
    )
    return (
        f"| {method} | {knobs} | {spread(clean, 100)} | {spread(adv, 100)} | {spread(dadv, 100)} | {call} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--path")
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--arch", default="cnn")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--methods", default=",".join(SPACES))
    args = ap.parse_args()
    args.panel, args.n = "none", None
    t0 = time.time()
    lines, chosen = ["| method | knobs | val clean | val PGD-20 |", "|---|---|---|---|"], []
    for method in args.methods.split(","):
        scored = {}
        for knobs in trials(method, args.trials):
            runs = [val_score(config(args, method, seed, knobs, panel="none")) for seed in range(args.seeds)]
            scored[repr(knobs)] = (knobs, [r[0] for r in runs], [r[1] for r in runs])
            lines.append(
                f"| {method} | {knobs} | {spread(scored[repr(knobs)][1], 100)} | {spread(scored[repr(knobs)][2], 100)} |"
            )
            print(lines[-1], file=sys.stderr, flush=True)
        chosen.append(verdict(method, scored))
    n_val = len(gdata.load({"name": args.dataset, **({"path": args.path} if args.path else {})}).val)
    print(f"# Tuning on {args.dataset}: the same budget for every method, scored on validation\n")
    print(f"Command: `python -m bench.tune {' '.join(sys.argv[1:])}`  ")
    print(
        f"{args.trials} trials per method × {args.seeds} seeds, {args.arch} width {args.width}, {args.epochs} epochs,"
        f" Adam lr {args.lr}; PGD-20 at the standard ε on all {n_val} validation examples (mean ± std over"
        f" seeds). {time.time() - t0:.0f} s.\n"
    )
    print("## Chosen\n")
    print(
        "The best trial (highest mean validation PGD-20 accuracy) becomes the default only where it beats"
        " today's default by more than one standard deviation over seeds (the larger of the two): a win"
        " inside the seeds' spread is noise, and the published default stays.\n"
    )
    print("| method | best trial | val clean | val PGD-20 | today's default: val PGD-20 | verdict |")
    print("|---|---|---|---|---|---|")
    print("\n".join(chosen))
    print("\n## Every trial\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
