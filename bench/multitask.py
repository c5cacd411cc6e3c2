"""Multi-task table: per-task test metrics of every method, mean +- std over seeds, Δm% against
the single-task models, and seconds per step against `equal`, in one run.

    python -m bench.multitask                     # digits_mt (digit, parity, >4, intensity)
    python -m bench.multitask --dataset multidigits

Δm% = mean over tasks of (-1)^(lower is better) (M_method - M_single) / M_single x 100 (higher is
better; Maninis et al. 2019). Same schedule for every method; nothing tuned per method.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from backend.run_config import DATASET_TASKS, parse_run_config
from bench._common import interleaved_step_cost, spread
from worker.gat import data as gdata
from worker.gat import models
from worker.gat.methods import make
from worker.gat.recorder import NullRecorder
from worker.gat.train import aux_optimizer, train

METHODS = ["equal", "uncertainty", "gradnorm", "pcgrad", "great"]
# Table rows: (label, method, knobs); GREAT also at lambda 1 and with the GAL scales alone.
ROWS = [(m, m, {}) for m in METHODS] + [
    ("great λ=1", "great", {"lam": 1.0}),
    ("great λ=1, GALs only", "great", {"lam": 1.0, "second_order": False}),
]


def step_costs(args) -> dict[str, float]:
    """Interleaved seconds per step on one batch, every method on a fresh model."""
    data = gdata.load({"name": args.dataset})
    idx = torch.arange(64)
    x, y = data.train.images(idx), data.targets(data.train, idx)
    runs = {}
    for m in ["single_task", *METHODS]:
        torch.manual_seed(0)
        model = models.build_multitask(
            {"arch": "cnn", "width": args.width},
            input_shape=data.input_shape,
            tasks=data.tasks,
            mean=data.mean,
            std=data.std,
        )
        meth = make(
            "multitask",
            m,
            model,
            num_classes=data.num_classes,
            input_shape=data.input_shape,
            tasks=data.tasks,
        )
        runs[m] = (model, meth, torch.optim.Adam(model.parameters(), lr=args.lr), aux_optimizer(meth))
    return interleaved_step_cost(runs, x, y)


def run(args, method: str, seed: int, params: dict) -> dict:
    cfg = parse_run_config(
        {
            "name": "mt",
            "scenario": "multitask",
            "method": method,
            "dataset": {"name": args.dataset},
            "model": {"arch": "cnn", "width": args.width},
            "train": {
                "epochs": args.epochs,
                "batch_size": 64,
                "lr": args.lr,
                "seed": seed,
                "log_every": 100,
                "stats_every": 10**6,
            },
            "params": params,
            "eval": {"panel": "none"},
        }
    ).model_dump()
    with tempfile.TemporaryDirectory() as d:
        return train(cfg, Path(d), NullRecorder())["test"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="digits_mt", choices=sorted(DATASET_TASKS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--lr", type=float, default=0.003)
    ap.add_argument("--width", type=int, default=8)
    args = ap.parse_args()
    t0 = time.time()
    tasks = DATASET_TASKS[args.dataset]
    single: dict[str, list] = {}
    for task in tasks:
        for seed in range(args.seeds):
            test = run(args, "single_task", seed, {"task": task})
            key = next(k for k in test if k.startswith(f"{task}/"))
            single.setdefault(key, []).append(test[key])
    results: dict[str, list[dict]] = {}
    for label, m, knobs in ROWS:
        for seed in range(args.seeds):
            results.setdefault(label, []).append(run(args, m, seed, knobs))
            print(label, seed, results[label][-1], file=sys.stderr)
    sps = step_costs(args)
    keys = list(single)
    ref = {k: statistics.mean(v) for k, v in single.items()}

    def delta(test: dict, only: list[str] | None = None) -> float:
        ks = only or keys
        return 100 * statistics.mean(
            (-1 if k.endswith("mse") else 1) * (test[k] - ref[k]) / ref[k] for k in ks
        )

    cls_keys = [k for k in keys if k.endswith("acc")]

    fmt = lambda v, k: spread(v, 100, 1, ci=True) if k.endswith("acc") else spread(v, 1, 3, ci=True)
    print(
        f"# Multi-task learning on {args.dataset}: test metrics (accuracy %, or MSE), mean ± std"
        f" [95 % t interval] over {args.seeds} seeds\n"
    )
    print(f"Command: `python -m bench.multitask {' '.join(sys.argv[1:])}`  ")
    print(
        f"Shared CNN width {args.width}, {args.epochs} epochs, Adam lr {args.lr}, batch 64. {time.time() - t0:.0f} s.\n"
    )
    print(
        "Δm% over all tasks is dominated by any regression task whose single-task error is tiny "
        "(a relative change of a small MSE); the classification-only column shows the rest.\n"
    )
    print(
        "s/step: median over interleaved steps of every method on one batch of 64 (single_task: one head).\n"
    )
    print(
        "task-id probe: a fresh classifier reading the task from each task's gradient at the shared features"
        f" of the final model (test split; chance {100 / len(tasks):.0f} %). GREAT's game is won when it falls"
        " to chance; the other methods play no game and give the reference.\n"
    )
    print(
        "| method | "
        + " | ".join(keys)
        + " | Δm% | Δm% (classification) | task-id probe | s/step | × equal |"
    )
    print("|---" * (len(keys) + 6) + "|")
    base = sps["equal"]
    print(
        "| single-task models | "
        + " | ".join(fmt(single[k], k) for k in keys)
        + f" | 0 | 0 | | {sps['single_task']:.4f} | {sps['single_task'] / base:.2f} |"
    )
    for (label, m, _), rows in zip(ROWS, results.values(), strict=True):
        dm, dc = [delta(r) for r in rows], [delta(r, cls_keys) for r in rows]
        step = sps[m]
        print(
            f"| {label} | "
            + " | ".join(fmt([r[k] for r in rows], k) for k in keys)
            + f" | {spread(dm, sign='+')} | {spread(dc, digits=2, sign='+')}"
            + f" | {spread([r['probe'] for r in rows], 100, 1, ci=True)} | {step:.4f} | {step / base:.2f} |"
        )


if __name__ == "__main__":
    main()
