"""Reproduction table for the defense scenario: every method, several seeds, the robustness panel.

    python -m bench.defense                           # digits, 3 seeds, quick panel
    python -m bench.defense --dataset npz --path my.npz --panel standard
    python -m bench.defense --dataset mnist --data-dir data --epochs 10

Prints markdown: clean and per-attack accuracy at the dataset's standard L-inf radius (and L2
PGD at its standard L2 radius), mean +- std over seeds, and how many sanity checks passed; then
per seed AutoAttack and the worst case with their 95 % intervals over the panel's examples (every
attack runs on the same ones), the gradient probe against chance, and FAB's median minimum norm.
A lambda sweep for GREAT is scored on the validation split only (never the test split).
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
from worker.gat import data as gdata
from worker.gat import job
from worker.gat.attacks import pgd
from worker.gat.recorder import NullRecorder
from worker.gat.train import train

METHODS = ["erm", "great", "greace", "great+greace", "fgsm_at", "pgd_at", "trades", "igr"]
COLUMNS = [
    "clean",
    "fgsm",
    "ifgsm",
    "pgd",
    "pgd_margin",
    "pgd_target_ll",
    "apgd_dlr",
    "apgd_t",
    "fab",
    "square",
    "transfer",
    "autoattack",
    "worst_case",
    "pgd_l2",
    "probe",
]


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


def row_of(result: dict) -> dict:
    std, std2 = result["std_eps"], result["std_eps_l2"]
    out = {
        "clean": result["clean_accuracy"],
        "checks": sum(c["passed"] for c in result["checks"]),
        "n_checks": len(result["checks"]),
        "failed": [c["name"] for c in result["checks"] if not c["passed"]],
        "probe": result["probe"]["accuracy"],
        "intervals": {
            "probe": (result["probe"]["accuracy"], result["probe"]["ci"], result["probe"]["n_test"])
        },
        "chance": result["probe"]["chance"],
        "fab_median": result["min_norm"]["median"],
    }
    for r in result["rows"]:
        if (r["norm"] == "linf" and abs(r["eps"] - std) < 1e-9) or (
            r["attack"] == "pgd_l2" and abs(r["eps"] - std2) < 1e-9
        ):
            out[r["attack"]] = r["accuracy"]
            out["intervals"][r["attack"]] = (r["accuracy"], r["ci"], r["n"])
    return out


def interval_table(results: dict[str, list[dict]]) -> list[str]:
    """Per method and seed: AutoAttack, worst case and the probe with 95 % Wilson intervals."""
    cell = lambda v: f"{100 * v[0]:.1f} [{100 * v[1][0]:.1f}, {100 * v[1][1]:.1f}] (n={v[2]})"
    lines = [
        "| method | seed | autoattack | worst_case | gradient probe (chance) | FAB median L-inf | failed checks |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, rows in results.items():
        for seed, r in enumerate(rows):
            iv, med = r["intervals"], r["fab_median"]
            lines.append(
                f"| {method} | {seed} | {cell(iv['autoattack'])} | {cell(iv['worst_case'])} | "
                f"{cell(iv['probe'])} ({100 * r['chance']:.1f}) | {'-' if med is None else f'{med:.4f}'} | "
                f"{', '.join(r['failed']) or 'none'} |"
            )
    return lines


def fmt(vals: list[float]) -> str:
    return spread(vals, 100) if vals else "-"


def lam_sweep(args) -> list[str]:
    """GREAT's lambda scored on the validation split: clean and PGD-10 accuracy."""
    lines = ["| lambda | val clean | val PGD-10 |", "|---|---|---|"]
    for lam in (0.0, 0.01, 0.03, 0.1, 0.3, 1.0):
        cfg = config(args, "great", 0, {"lam": lam}, panel="none")
        with tempfile.TemporaryDirectory() as d:
            train(cfg, Path(d), NullRecorder())
            from worker.gat.train import load_model

            model = load_model(Path(d))
        data = gdata.load(cfg["dataset"])
        x, y = data.val.images(), data.val.y
        eps = gdata.STANDARD_EPS[args.dataset][0]
        torch.manual_seed(0)
        with torch.no_grad():
            clean = (model(x).argmax(1) == y).float().mean().item()
        adv = (model(pgd(model, x, y, eps=eps, steps=10)).argmax(1) == y).float().mean().item()
        lines.append(f"| {lam} | {100 * clean:.1f} | {100 * adv:.1f} |")
        print(lines[-1], file=sys.stderr)
    return lines


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
    ap.add_argument("--panel", default="quick", choices=["quick", "standard"])
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--no-sweep", action="store_true")
    args = ap.parse_args()
    t0 = time.time()
    results: dict[str, list[dict]] = {}
    for method in args.methods.split(","):
        for seed in range(args.seeds):
            with tempfile.TemporaryDirectory() as d:
                summary = job.run(config(args, method, seed), Path(d), NullRecorder())
            results.setdefault(method, []).append(row_of(summary["eval"]))
            print(f"{method} seed {seed}: {results[method][-1]}", file=sys.stderr)
    std, std2 = gdata.STANDARD_EPS[args.dataset]
    print(f"# Defense on {args.dataset}: accuracy (%) at L-inf eps {std:.4g} (L2 PGD at {std2:.4g})\n")
    print(f"Command: `python -m bench.defense {' '.join(sys.argv[1:])}`  ")
    print(
        f"{args.arch} width {args.width}, {args.epochs} epochs, {args.seeds} seeds (mean ± std), "
        f"panel '{args.panel}' on {summary['eval']['n']} test examples, every attack (AutoAttack included) on "
        "the same ones; probe: a fresh classifier's accuracy at reading the label from input gradients. "
        f"{time.time() - t0:.0f} s on {torch.get_num_threads()} threads.\n"
    )
    print("| method | " + " | ".join(COLUMNS) + " | sanity checks passed |")
    print("|---" * (len(COLUMNS) + 2) + "|")
    for method, rows in results.items():
        cells = [fmt([r[c] for r in rows if c in r]) for c in COLUMNS]
        failed = sorted({f for r in rows for f in r["failed"]})
        checks = f"{sum(r['checks'] for r in rows)}/{sum(r['n_checks'] for r in rows)}" + (
            f" (failed: {', '.join(failed)})" if failed else ""
        )
        print(f"| {method} | " + " | ".join(cells) + f" | {checks} |")
    print("\n## AutoAttack, worst case and the gradient probe per seed, with 95 % Wilson intervals\n")
    print("\n".join(interval_table(results)))
    if not args.no_sweep:
        print("\n## GREAT's lambda, scored on the validation split (seed 0)\n")
        print("\n".join(lam_sweep(args)))


if __name__ == "__main__":
    main()
