"""The defense game, measured: does GREAT hide the class in the input gradients? For each variant of
the gradient A sees (eval vs train mode; the labelled loss vs label-free ones) and the references
(plain training, input-gradient regularisation), several seeds, each scored on the test split by
the fresh gradient probe (docs/design.md section 3) and by PGD-20 at the standard radius, with 95 % intervals.

    python -m bench.game                  # digits, 3 seeds, 30 epochs
    python -m bench.game --epochs 10 --seeds 2

The probe reads the label from eval-mode gradients of the labelled loss, the attacks' tensor,
whatever tensor the variant trained on: a label-free variant can hide its own tensor and still
give the label away in this one.
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
from worker.gat import data as gdata
from worker.gat.attacks import pgd
from worker.gat.probe import gradient_probe
from worker.gat.recorder import NullRecorder
from worker.gat.stats import wilson
from worker.gat.train import load_model, train

VARIANTS = {
    "erm": ("erm", {}),
    "great (eval-mode g of the label)": ("great", {}),
    "great (train-mode g)": ("great", {"grad_mode": "train"}),
    "great (g of the predicted class)": ("great", {"grad_of": "predicted"}),
    "great (g of the logit margin)": ("great", {"grad_of": "margin"}),
    "igr": ("igr", {}),
}


def config(args, method: str, seed: int, params: dict | None = None, panel: str | None = None) -> dict:
    ds = {"name": args.dataset, "data_dir": args.data_dir}
    if args.path:
        ds["path"] = args.path
    return parse_run_config(
        {
            "name": f"bench-{method}-{seed}",
            "scenario": "defense",
            "method": method,
            "dataset": ds,
            "model": {"arch": args.arch, "width": args.width},
            "train": {
                "epochs": args.epochs,
                "batch_size": 64,
                "lr": args.lr,
                "seed": seed,
                "log_every": 50,
                "stats_every": 10**6,
            },
            "params": params or {},
            "eval": {"panel": panel or args.panel, "n": args.n},
        }
    ).model_dump()


def score(cfg: dict) -> dict:
    """Train one run; its probe and PGD-20 accuracy on the whole test split."""
    with tempfile.TemporaryDirectory() as d:
        train(cfg, Path(d), NullRecorder())
        model = load_model(Path(d))
    data = gdata.load(cfg["dataset"])
    x, y = data.test.images(), data.test.y
    torch.manual_seed(0)
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
    eps = gdata.STANDARD_EPS[cfg["dataset"]["name"]][0]
    k = int((model(pgd(model, x, y, eps=eps, steps=20)).argmax(1) == y).sum())
    probe = gradient_probe(model, data, device=torch.device("cpu"), seed=cfg["train"]["seed"])
    return {"clean": clean, "pgd": k / len(y), "pgd_ci": wilson(k, len(y)), "n": len(y), "probe": probe}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--path")
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--arch", default="cnn")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args()
    args.panel, args.n = "none", None
    t0, rows = time.time(), {}
    for name in args.variants.split(","):
        method, knobs = VARIANTS[name]
        rows[name] = [score(config(args, method, seed, knobs, panel="none")) for seed in range(args.seeds)]
        print(name, rows[name], file=sys.stderr, flush=True)
    r0 = next(iter(rows.values()))[0]
    print(f"# The defense game on {args.dataset}: is the class still in the input gradients?\n")
    print(f"Command: `python -m bench.game {' '.join(sys.argv[1:])}`  ")
    print(
        f"{args.arch} width {args.width}, {args.epochs} epochs, {args.seeds} seeds (mean ± std); PGD-20 at the"
        f" standard ε on all {r0['n']} test examples; probe: a fresh MLP reading the label from eval-mode input"
        f" gradients (train split -> {r0['probe']['n_test']} test examples, chance"
        f" {100 * r0['probe']['chance']:.1f} %). {time.time() - t0:.0f} s.\n"
    )
    print("| variant | clean | PGD-20 | probe | per seed: probe [95 % CI] |")
    print("|---|---|---|---|---|")
    for name, rs in rows.items():
        seeds = "; ".join(
            f"{100 * r['probe']['accuracy']:.1f} [{100 * r['probe']['ci'][0]:.1f}, {100 * r['probe']['ci'][1]:.1f}]"
            for r in rs
        )
        cells = [spread([r[k] for r in rs], 100) for k in ("clean", "pgd")]
        print(
            f"| {name} | {' | '.join(cells)} | {spread([r['probe']['accuracy'] for r in rs], 100)} | {seeds} |"
        )


if __name__ == "__main__":
    main()
