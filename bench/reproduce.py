"""Validate the pipeline against published numbers: train the standard anchors (an undefended
model, PGD adversarial training, TRADES) and judge them with the standard panel, so anyone can see
that the lab's training and evaluation land where the literature does.

    python -m bench.reproduce                                   # CPU-sized: digits, a few minutes
    python -m bench.reproduce --dataset mnist --data-dir data --epochs 100 --lr 0.01 --optimizer sgd
    python -m bench.reproduce --dataset cifar10 --data-dir data --epochs 200 --lr 0.1 --optimizer sgd --augment

The CIFAR-10 line wants a GPU (PreAct ResNet-18, the default for 32x32 colour images).

Published anchors (AutoAttack accuracy at the dataset's standard L-inf radius): an undefended
model falls to ~0 % everywhere; MNIST at 0.3, Madry et al.'s PGD-AT 88-92 % (their CNN,
`arch: madry_cnn`, the default for 28x28); CIFAR-10 at 8/255, RobustBench lists PGD-AT (PreAct
ResNet-18, Rice et al. 2020) near 44 % and TRADES (WRN-34-10) near 53 %. Digits has no published
numbers (its standard eps 0.1 is this lab's choice): there the table shows only that the
pipeline runs end to end and how far adversarial training lifts AutoAttack accuracy above the
undefended model. A row outside its range is printed as such, never hidden.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from backend.run_config import parse_run_config
from bench._common import spread
from worker.gat import job
from worker.gat.recorder import NullRecorder

# (dataset, method) -> (low, high) AutoAttack accuracy in %, with the source
ANCHORS = {
    ("mnist", "erm"): (0, 1, "an undefended model falls to ~0 %"),
    ("mnist", "pgd_at"): (88, 92, "Madry et al. 2018 (AutoAttack on their model: 88-92 %)"),
    ("cifar10", "erm"): (0, 1, "RobustBench: standard training 0.0 %"),
    ("cifar10", "pgd_at"): (40, 48, "RobustBench: PGD-AT, PreAct ResNet-18 (Rice et al. 2020) ~44 %"),
    ("cifar10", "trades"): (49, 57, "RobustBench: TRADES, WRN-34-10 ~53 %"),
}
METHODS = ["erm", "pgd_at", "trades"]


def config(args, method: str, seed: int) -> dict:
    ds = {"name": args.dataset, "data_dir": args.data_dir}
    if args.path:
        ds["path"] = args.path
    raw = {
        "name": f"reproduce-{method}-{seed}",
        "scenario": "defense",
        "method": method,
        "dataset": ds,
        "model": {"arch": args.arch},
        "train": {
            "epochs": args.epochs,
            "lr": args.lr,
            "optimizer": args.optimizer,
            "lr_schedule": "cosine",
            "augment": args.augment,
            "seed": seed,
            "log_every": 50,
            "stats_every": 10**6,
        },
        # The published settings, not the lab's defaults tuned on digits (TRADES' beta 6, Zhang et al.).
        "params": {"beta": 6.0} if method == "trades" else {},
        "eval": {"panel": args.panel, "n": args.n},
    }
    return parse_run_config(raw).model_dump(mode="json")


def autoattack(result: dict) -> tuple[float, list[float], int]:
    row = next(
        r for r in result["rows"] if r["attack"] == "autoattack" and abs(r["eps"] - result["std_eps"]) < 1e-12
    )
    return row["accuracy"], row["ci"], row["n"]


def verdict(dataset: str, method: str, accs: list[float]) -> str:
    if (dataset, method) not in ANCHORS:
        return "no published anchor"
    lo, hi, source = ANCHORS[(dataset, method)]
    mean = 100 * sum(accs) / len(accs)
    where = "in range" if lo <= mean <= hi else ("BELOW the range" if mean < lo else "ABOVE the range")
    return f"{where} {lo}-{hi} % ({source})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--path")
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--arch", default="auto")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--optimizer", default="adam", choices=["adam", "sgd"])
    ap.add_argument("--augment", action="store_true")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--panel", default="standard", choices=["quick", "standard"])
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--methods", default=",".join(METHODS))
    args = ap.parse_args()
    t0 = time.time()
    rows = []
    for method in args.methods.split(","):
        results = []
        for seed in range(args.seeds):
            with tempfile.TemporaryDirectory() as d:
                results.append(job.run(config(args, method, seed), Path(d), NullRecorder())["eval"])
            print(f"{method} seed {seed}: AutoAttack {autoattack(results[-1])}", file=sys.stderr)
        rows.append((method, results))
    res = rows[0][1][0]
    print(f"# Reproduction on {args.dataset}: AutoAttack at L-inf eps {res['std_eps']:.4g}\n")
    print(f"Command: `python -m bench.reproduce {' '.join(sys.argv[1:])}`  ")
    print(
        f"arch {args.arch}, {args.epochs} epochs, {args.seeds} seeds, panel '{args.panel}' on {res['n']} test"
        f" examples (AutoAttack on all of them); {time.time() - t0:.0f} s on"
        f" {'cuda' if torch.cuda.is_available() else f'{torch.get_num_threads()} CPU threads'}.\n"
    )
    print(
        "| method | clean | AutoAttack (mean ± std over seeds) | AutoAttack per seed [95 % CI] | failed checks | verdict |"
    )
    print("|---|---|---|---|---|---|")
    for method, results in rows:
        aa = [autoattack(r) for r in results]
        per_seed = "; ".join(f"{100 * a:.1f} [{100 * c[0]:.1f}, {100 * c[1]:.1f}]" for a, c, _ in aa)
        failed = sorted({c["name"] for r in results for c in r["checks"] if not c["passed"]})
        print(
            f"| {method} | {spread([r['clean_accuracy'] for r in results], 100)} | {spread([a for a, _, _ in aa], 100)}"
            f" | {per_seed} | {', '.join(failed) or 'none'} | {verdict(args.dataset, method, [a for a, _, _ in aa])} |"
        )


if __name__ == "__main__":
    main()
