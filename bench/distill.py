"""Distillation table: student accuracy per method at several training fractions, mean +- std over
seeds, and seconds per step of each method against the plain student, in one run.

    python -m bench.distill                   # digits, fractions 1.0 / 0.1 / 0.05, 3 seeds
    python -m bench.distill --dataset npz --path my.npz --teacher-width 64

One teacher (ERM, full training split, seed 0) serves every student. Every method gets the same
training schedule (about --steps optimiser steps, lr --lr); nothing is tuned per method.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

from backend.run_config import parse_run_config
from bench._common import interleaved_step_cost, spread
from worker.gat import data as gdata
from worker.gat import models
from worker.gat.methods import make
from worker.gat.recorder import NullRecorder
from worker.gat.train import aux_optimizer, load_model, train

METHODS = ["student", "soft_targets", "jacobian_matching", "great", "great+soft_targets"]


def step_costs(args, ds: dict, teacher) -> dict[str, float]:
    data = gdata.load(ds)
    idx = torch.arange(32)
    x, y = data.train.images(idx), data.train.y[idx]
    runs = {}
    for m in METHODS:
        torch.manual_seed(0)
        model = models.build(
            {"arch": "cnn", "width": args.width},
            input_shape=data.input_shape,
            num_classes=data.num_classes,
            mean=data.mean,
            std=data.std,
        )
        meth = make(
            "distill", m, model, num_classes=data.num_classes, input_shape=data.input_shape, teacher=teacher
        )
        runs[m] = (model, meth, torch.optim.Adam(model.parameters(), lr=args.lr), aux_optimizer(meth))
    return interleaved_step_cost(runs, x, y)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--path")
    ap.add_argument("--fractions", default="1.0,0.1,0.05")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--teacher-width", type=int, default=32)
    ap.add_argument("--methods", default=",".join(METHODS))
    args = ap.parse_args()
    ds = {"name": args.dataset, **({"path": args.path} if args.path else {})}
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tdir:
        tcfg = parse_run_config(
            {
                "name": "teacher",
                "scenario": "defense",
                "method": "erm",
                "dataset": ds,
                "model": {"arch": "cnn", "width": args.teacher_width},
                "train": {"epochs": 20, "batch_size": 64, "seed": 0},
                "eval": {"panel": "none"},
            }
        ).model_dump()
        teacher = train(tcfg, Path(tdir), NullRecorder())
        acc: dict[tuple, list] = {}
        probe: dict[tuple, list] = {}
        for frac in map(float, args.fractions.split(",")):
            n = len(gdata.load({**ds, "fraction": frac}).train)
            epochs = max(1, math.ceil(args.steps / math.ceil(n / 32)))
            for method in args.methods.split(","):
                for seed in range(args.seeds):
                    cfg = parse_run_config(
                        {
                            "name": "s",
                            "scenario": "distill",
                            "method": method,
                            "dataset": {**ds, "fraction": frac},
                            "model": {"arch": "cnn", "width": args.width},
                            "train": {
                                "epochs": epochs,
                                "batch_size": 32,
                                "lr": args.lr,
                                "seed": seed,
                                "log_every": 100,
                                "stats_every": 10**6,
                            },
                            "params": {"teacher_dir": tdir},
                            "eval": {"panel": "none"},
                        }
                    ).model_dump()
                    with tempfile.TemporaryDirectory() as d:
                        s = train(cfg, Path(d), NullRecorder())
                    acc.setdefault((method, frac), []).append(s["test"]["acc"])
                    probe.setdefault((method, frac), []).append(s["test"]["probe"])
                    print(method, frac, seed, s["test"], file=sys.stderr)
        sps = step_costs(args, ds, load_model(Path(tdir)))
    fracs = list(map(float, args.fractions.split(",")))
    print(f"# Distillation on {args.dataset}: student test accuracy (%)\n")
    print(f"Command: `python -m bench.distill {' '.join(sys.argv[1:])}`  ")
    print(
        f"Teacher: CNN width {args.teacher_width}, ERM on the full training split, test accuracy "
        f"{100 * teacher['test']['acc']:.1f}%. Student: CNN width {args.width}, ~{args.steps} steps of batch 32, "
        f"Adam lr {args.lr}, {args.seeds} seeds (mean ± std [95 % t interval of the mean]). {time.time() - t0:.0f} s.\n"
    )
    print("s/step: median over interleaved steps of every method on one batch of 32.\n")
    print(
        f"probe: a fresh classifier telling the teacher's input gradients from the student's (fraction {fracs[-1]},"
        " test split, chance 50 %). GREAT's game is won when it falls to chance; the other methods play"
        " no game and give the reference.\n"
    )
    print("| method | " + " | ".join(f"fraction {f}" for f in fracs) + " | probe | s/step | × student |")
    print("|---" * (len(fracs) + 4) + "|")
    base = sps["student"]
    for m in args.methods.split(","):
        cells = []
        for f in fracs:
            v = acc[(m, f)]
            cells.append(spread(v, 100, ci=True))
        p = spread(probe[(m, fracs[-1])], 100, ci=True)
        print(f"| {m} | " + " | ".join(cells) + f" | {p} | {sps[m]:.4f} | {sps[m] / base:.2f} |")


if __name__ == "__main__":
    main()
