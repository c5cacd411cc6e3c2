"""Distillation: the study studies/distill-digits.yaml (every method, 3 seeds, the report written to
docs/results/distill-digits.md and .tex by bench/study.py), then seconds per step of each method
against the plain student, interleaved on one batch in one run.

    python -m bench.distill                            # the study, then the step costs
    python -m bench.distill --design studies/my.yaml   # another distillation study

The study's runs train their teacher in a first phase (ERM, the run's seed); the step costs use
seed 0's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml

from bench import study
from bench._common import interleaved_step_cost
from labcore.study import run_dir_name
from worker.gat import data as gdata
from worker.gat import models
from worker.gat.methods import make
from worker.gat.train import aux_optimizer, load_model

METHODS = ["student", "soft_targets", "jacobian_matching", "great", "great+soft_targets"]


def step_costs(ds: dict, width: int, lr: float, teacher) -> dict[str, float]:
    data = gdata.load(ds)
    idx = torch.arange(32)
    x, y = data.train.images(idx), data.train.y[idx]
    runs = {}
    for m in METHODS:
        torch.manual_seed(0)
        model = models.build(
            {"arch": "cnn", "width": width},
            input_shape=data.input_shape,
            num_classes=data.num_classes,
            mean=data.mean,
            std=data.std,
        )
        meth = make(
            "distill", m, model, num_classes=data.num_classes, input_shape=data.input_shape, teacher=teacher
        )
        runs[m] = (model, meth, torch.optim.Adam(model.parameters(), lr=lr), aux_optimizer(meth))
    return interleaved_step_cost(runs, x, y)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--design", default="studies/distill-digits.yaml")
    ap.add_argument("--out-dir", help="where the run directories go (default runs/study-NAME)")
    ap.add_argument("--docs", default="docs/results", help="where the report's exports go")
    args = ap.parse_args()
    study.run(args.design, out_dir=args.out_dir, docs=args.docs)
    design = yaml.safe_load(Path(args.design).read_text())
    first = study.runs_dir(args.design, args.out_dir) / run_dir_name(
        design["methods"][0].get("label") or design["methods"][0]["method"], design["seeds"][0]
    )
    teacher = load_model(first / "teacher")
    ds = {k: v for k, v in design["dataset"].items() if k != "fraction"}
    sps = step_costs(ds, design["model"]["width"], design["train"]["lr"], teacher)
    print("| method | s/step | × student |\n|---|---|---|")
    for m, v in sps.items():
        print(f"| {m} | {v:.4f} | {v / sps['student']:.2f} |")


if __name__ == "__main__":
    main()
