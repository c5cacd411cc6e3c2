"""Wrappers around `pyautoattack` (the reference AutoAttack code): APGD-CE, Square and the
standard AutoAttack ensemble, in the registry's call signature. With fewer than ten classes
the targeted attacks use every other class (K - 1 targets) instead of nine.
"""

from __future__ import annotations

import logging

import torch
from pyautoattack import AutoAttack
from pyautoattack.autopgd_base import APGDAttack
from pyautoattack.square import SquareAttack

logging.getLogger("auto-attack").setLevel(logging.WARNING)


def apgd_ce(model, x, y, *, eps, seed=0, steps=100, restarts=1, **_):
    a = APGDAttack(
        model, n_iter=steps, n_restarts=restarts, norm="Linf", eps=eps, seed=seed, loss="ce", device=x.device
    )
    return a.perturb(x, y).detach()


def square(model, x, y, *, eps, seed=0, queries=5000, **_):
    a = SquareAttack(
        model,
        norm="Linf",
        n_queries=queries,
        eps=eps,
        p_init=0.8,
        n_restarts=1,
        seed=seed,
        verbose=False,
        device=x.device,
        resc_schedule=False,
    )
    with torch.no_grad():
        return a.perturb(x, y).detach()


def autoattack(model, x, y, *, eps, seed=0, **_):
    aa = AutoAttack(model, eps=eps, norm="Linf", version="standard", seed=seed, device=x.device)
    aa.verbose = False
    with torch.no_grad():
        k = model(x[:1]).shape[1]
    aa.apgd_targeted.n_target_classes = min(9, k - 1)
    aa.fab.n_target_classes = min(9, k - 1)
    x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=len(x))
    return x_adv.detach()
