"""Multi-task learning: the study studies/multitask-digits.yaml (single-task models, every weighting
method and GREAT, 3 seeds, per-task metrics and Δm%, the report written to
docs/results/multitask-digits.md and .tex by bench/study.py), then seconds per step of every method
against `equal`, interleaved on one batch in one run.

    python -m bench.multitask                            # the study, then the step costs
    python -m bench.multitask --design studies/my.yaml   # another multi-task study
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml

from bench import study
from bench._common import interleaved_step_cost
from worker.gat import data as gdata
from worker.gat import models
from worker.gat.methods import make
from worker.gat.train import aux_optimizer

METHODS = ["equal", "uncertainty", "gradnorm", "pcgrad", "great"]


def step_costs(dataset: str, width: int, lr: float) -> dict[str, float]:
    """Interleaved seconds per step on one batch, every method on a fresh model."""
    data = gdata.load({"name": dataset})
    idx = torch.arange(64)
    x, y = data.train.images(idx), data.targets(data.train, idx)
    runs = {}
    for m in ["single_task", *METHODS]:
        torch.manual_seed(0)
        model = models.build_multitask(
            {"arch": "cnn", "width": width},
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
        runs[m] = (model, meth, torch.optim.Adam(model.parameters(), lr=lr), aux_optimizer(meth))
    return interleaved_step_cost(runs, x, y)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--design", default="studies/multitask-digits.yaml")
    ap.add_argument("--out-dir", help="where the run directories go (default runs/study-NAME)")
    ap.add_argument("--docs", default="docs/results", help="where the report's exports go")
    args = ap.parse_args()
    study.run(args.design, out_dir=args.out_dir, docs=args.docs)
    d = yaml.safe_load(Path(args.design).read_text())
    sps = step_costs(d["dataset"]["name"], d["model"]["width"], d["train"]["lr"])
    print("| method | s/step | × equal |\n|---|---|---|")
    for m, v in sps.items():
        print(f"| {m} | {v:.4f} | {v / sps['equal']:.2f} |")


if __name__ == "__main__":
    main()
