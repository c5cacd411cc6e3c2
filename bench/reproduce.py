"""Validate the pipeline against published numbers: train the standard anchors (an undefended
model, PGD adversarial training, TRADES) and judge them with the standard panel, so anyone can see
that the lab's training and evaluation land where the literature does.

    python -m bench.reproduce                                   # CPU-sized: digits, a few minutes
    python -m bench.reproduce --dataset mnist --data-dir data --epochs 100 --lr 0.01 --optimizer sgd
    python -m bench.reproduce --dataset cifar10 --data-dir data --epochs 200 --lr 0.1 --optimizer sgd --augment

The CIFAR-10 line wants a GPU (PreAct ResNet-18, the default for 32x32 colour images).

Published anchors (AutoAttack accuracy at the dataset's standard L-inf radius, as Croce & Hein 2020
measured each paper's own released model), each trained as its paper trained it (PUBLISHED): an
undefended model falls to ~0 % everywhere; MNIST at 0.3, Madry et al.'s PGD-AT (their CNN,
`madry_cnn`, 40 steps of 0.01) 88.5 %; CIFAR-10 at 8/255, Madry et al.'s PGD-AT (their WRN-34-10,
7 steps of 2/255) 44.0 % and TRADES (Zhang et al., WRN-34-10, beta 6, 10 steps of 0.007) 53.1 %.
A row trained otherwise (another --arch) is printed as not the published setting. Digits has no
published numbers (its standard eps 0.1 is this lab's choice): there the table shows only that the
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

from bench._common import spread
from labcore.run_config import parse_run_config
from worker.gat import job
from worker.gat.recorder import NullRecorder

# (dataset, method) -> (low, high) AutoAttack accuracy in %, with the source
ANCHORS = {
    ("mnist", "erm"): (0, 1, "an undefended model falls to ~0 %"),
    ("mnist", "pgd_at"): (86, 91, "Madry et al. 2018, their CNN: AutoAttack 88.5 % (Croce & Hein 2020)"),
    ("cifar10", "erm"): (0, 1, "RobustBench: standard training 0.0 %"),
    ("cifar10", "pgd_at"): (
        40,
        48,
        "Madry et al. 2018, their WRN-34-10: AutoAttack 44.0 % (Croce & Hein 2020)",
    ),
    ("cifar10", "trades"): (49, 57, "Zhang et al. 2019, WRN-34-10: AutoAttack 53.1 % (Croce & Hein 2020)"),
}
# (dataset, method) -> the architecture and knobs the anchor's paper trained with (eps: the
# dataset's standard radius; the step size step_mult * eps / steps)
PUBLISHED = {
    ("mnist", "pgd_at"): ("madry_cnn", {"steps": 40, "step_mult": 0.01 * 40 / 0.3}),  # 40 x 0.01
    ("cifar10", "pgd_at"): ("wrn34_10", {"steps": 7, "step_mult": 2 * 7 / 8}),  # 7 x 2/255
    ("cifar10", "trades"): ("wrn34_10", {"beta": 6.0, "steps": 10, "step_mult": 0.007 * 10 * 255 / 8}),
}
METHODS = ["erm", "pgd_at", "trades"]


def published(args, method: str) -> tuple[str, dict]:
    """The architecture and knobs of the run: the anchor's paper's where there is one (an --arch
    other than auto overrides its architecture), else the lab's (TRADES' beta 6 as published)."""
    arch, params = PUBLISHED.get(
        (args.dataset, method), ("auto", {"beta": 6.0} if method == "trades" else {})
    )
    return (arch if args.arch == "auto" else args.arch), params


def config(args, method: str, seed: int) -> dict:
    arch, params = published(args, method)
    ds = {"name": args.dataset, "data_dir": args.data_dir}
    if args.path:
        ds["path"] = args.path
    raw = {
        "name": f"reproduce-{method}-{seed}",
        "scenario": "defense",
        "method": method,
        "dataset": ds,
        "model": {"arch": arch},
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
        # The published settings, not the lab's defaults tuned on digits.
        "params": params,
        "eval": {"panel": args.panel, "n": args.n},
    }
    return parse_run_config(raw).model_dump(mode="json")


def autoattack(result: dict) -> tuple[float, list[float], int]:
    row = next(
        r for r in result["rows"] if r["attack"] == "autoattack" and abs(r["eps"] - result["std_eps"]) < 1e-12
    )
    return row["accuracy"], row["ci"], row["n"]


def verdict(args, method: str, accs: list[float]) -> str:
    dataset = args.dataset
    if (dataset, method) not in ANCHORS:
        return "no published anchor"
    lo, hi, source = ANCHORS[(dataset, method)]
    paper = PUBLISHED.get((dataset, method))
    if paper and published(args, method)[0] != paper[0]:
        return (
            f"not the published setting (arch {published(args, method)[0]}, the paper's {paper[0]}): {source}"
        )
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
                results.append(job.run(config(args, method, seed), Path(d), NullRecorder()).panel)
            print(f"{method} seed {seed}: AutoAttack {autoattack(results[-1])}", file=sys.stderr)
        rows.append((method, results))
    res = rows[0][1][0]
    print(f"# Reproduction on {args.dataset}: AutoAttack at L-inf eps {res['std_eps']:.4g}\n")
    print(f"Command: `python -m bench.reproduce {' '.join(sys.argv[1:])}`  ")
    print(
        f"arch: the anchor's paper's where it has one, else {args.arch}; {args.epochs} epochs,"
        f" {args.seeds} seeds, panel '{args.panel}' on {res['n']} test"
        f" examples (AutoAttack on all of them); {time.time() - t0:.0f} s on"
        f" {'cuda' if torch.cuda.is_available() else f'{torch.get_num_threads()} CPU threads'}.\n"
    )
    print(
        "| method | clean | AutoAttack (mean ± std over seeds) | AutoAttack per seed [95 % CI]"
        " | failed checks (✗ masking, △ weaker attack) | verdict |"
    )
    print("|---|---|---|---|---|---|")
    for method, results in rows:
        aa = [autoattack(r) for r in results]
        per_seed = "; ".join(f"{100 * a:.1f} [{100 * c[0]:.1f}, {100 * c[1]:.1f}]" for a, c, _ in aa)
        failed = sorted(  # ✗ masking suspected; △ one attack weaker than another, the worst case covers it
            {("△ " if c.get("severity") == "weaker_attack" else "✗ ") + c["name"]
             for r in results for c in r["checks"] if not c["passed"]}
        )  # fmt: skip
        print(
            f"| {method} | {spread([r['clean_accuracy'] for r in results], 100)} | {spread([a for a, _, _ in aa], 100)}"
            f" | {per_seed} | {', '.join(failed) or 'none'} | {verdict(args, method, [a for a, _, _ in aa])} |"
        )


if __name__ == "__main__":
    main()
