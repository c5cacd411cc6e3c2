"""Seconds per training step of every defense method against `erm`, on the same model and batches,
interleaved in one run (so machine load hits every method alike), printed as a table of ratios.
`/train` rows take the gradient A sees (IGR: the penalised one) from the training forward, the
old way; the default rows pay a second, eval-mode forward for the attacker's tensor.

    python -m bench.step_cost [--rounds 5] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from worker.gat import data as gdata
from worker.gat import models
from worker.gat.methods import make, registry
from worker.gat.train import aux_optimizer, train_step

METHODS = [m for (s, m) in registry() if s == "defense"]
VARIANTS = {m: (m, {}) for m in METHODS} | {
    "great/every2": ("great", {"adv_every": 2}),
    "great/train": ("great", {"grad_mode": "train"}),
    "igr/train": ("igr", {"grad_mode": "train"}),
}


def setups(device):
    digits = gdata.load({"name": "digits"})
    x = digits.train.images()[:64]
    y = digits.train.y[:64]
    yield "cnn on digits (1x8x8, batch 64)", {"arch": "cnn", "width": 16}, x, y, digits.mean, digits.std, 10
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (64,), generator=g)
    yield "resnet20 on 3x32x32 (batch 64)", {"arch": "resnet20", "width": 16}, x, y, [0.5] * 3, [0.25] * 3, 10


def time_step(model, method, opt, aux_opt, x, y, i=0) -> float:
    if x.is_cuda:
        torch.cuda.synchronize()
    t = time.perf_counter()
    train_step(method, opt, aux_opt, x, y, 0.5, i)
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    dev = torch.device(args.device)
    print(f"device: {dev}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    for title, mcfg, x, y, mean, std, k in setups(dev):
        x, y = x.to(dev), y.to(dev)
        runs = {}
        for m, (name, knobs) in VARIANTS.items():
            torch.manual_seed(0)
            model = models.build(mcfg, input_shape=tuple(x.shape[1:]), num_classes=k, mean=mean, std=std).to(
                dev
            )
            meth = make(
                "defense", name, model, num_classes=k, input_shape=tuple(x.shape[1:]), eps=0.1, **knobs
            )
            for a in meth.aux.values():
                a.to(dev)
            runs[m] = (model, meth, torch.optim.SGD(model.parameters(), lr=0.01), aux_optimizer(meth))
            for _ in range(2):  # warm-up
                time_step(*runs[m], x, y)
        times = {m: [] for m in VARIANTS}
        for r in range(args.rounds):
            for m in VARIANTS:  # two steps each, so adv_every=2 pays its adversarial step once
                times[m].append((time_step(*runs[m], x, y, 2 * r) + time_step(*runs[m], x, y, 2 * r + 1)) / 2)
        base = statistics.median(times["erm"])
        print(f"\n{title}: median of {args.rounds} interleaved rounds")
        print(f"{'method':<14}{'s/step':>10}{'x erm':>8}")
        for m in VARIANTS:
            t = statistics.median(times[m])
            print(f"{m:<14}{t:>10.4f}{t / base:>8.2f}")


if __name__ == "__main__":
    main()
