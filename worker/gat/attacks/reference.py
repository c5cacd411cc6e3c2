"""Wrappers around `pyautoattack` (the reference AutoAttack code): APGD-CE, APGD-DLR, APGD-T,
FAB (minimum norm), Square and the standard AutoAttack ensemble, in the registry's call
signature. With fewer than ten classes the targeted attacks use every other class (K - 1
targets) instead of nine.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from pyautoattack import AutoAttack
from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
from pyautoattack.fab_pt import FABAttack_PT
from pyautoattack.square import SquareAttack

AA_LOG = logging.getLogger("auto-attack")
AA_LOG.setLevel(logging.WARNING)


def _classes(model, x) -> int:
    with torch.no_grad():
        return model(x[:1]).shape[1]


def apgd_ce(model, x, y, *, eps, seed=0, steps=100, restarts=1):
    a = APGDAttack(
        model, n_iter=steps, n_restarts=restarts, norm="Linf", eps=eps, seed=seed, loss="ce", device=x.device
    )
    return a.perturb(x, y).detach()


def apgd_dlr(model, x, y, *, eps, seed=0, steps=100, restarts=1):
    """APGD on the difference-of-logits-ratio loss: scale-invariant, so saturated logits don't hide."""
    a = APGDAttack(
        model, n_iter=steps, n_restarts=restarts, norm="Linf", eps=eps, seed=seed, loss="dlr", device=x.device
    )
    return a.perturb(x, y).detach()


def apgd_t(model, x, y, *, eps, seed=0, steps=100):
    """Targeted APGD-DLR over the top K - 1 (at most 9) other classes, as in AutoAttack."""
    a = APGDAttack_targeted(
        model,
        n_iter=steps,
        norm="Linf",
        eps=eps,
        seed=seed,
        device=x.device,
        n_target_classes=min(9, _classes(model, x) - 1),
    )
    return a.perturb(x, y).detach()


def fab_min_norm(model, x, y, *, seed=0, steps=100) -> torch.Tensor:
    """Per-example smallest L-inf perturbation that FAB finds to change the prediction
    (0 if already misclassified, inf if none was found)."""
    a = FABAttack_PT(model, norm="Linf", n_restarts=1, n_iter=steps, eps=1.0, seed=seed, device=x.device)
    adv = a.perturb(x, y).detach()
    with torch.no_grad():
        fooled = model(adv).argmax(1) != y
    size = (adv - x).flatten(1).abs().amax(1)
    return torch.where(fooled, size, torch.full_like(size, float("inf")))


def square(model, x, y, *, eps, seed=0, queries=5000):
    """Square (Andriushchenko et al. 2020) with its schedule of square sizes rescaled to the query
    budget, as its authors advise for budgets other than 10,000 (AutoAttack's own Square keeps the
    unrescaled schedule for its 5,000 queries; on 1,000 queries that left squares too large for
    too long and the attack weaker than its reference)."""
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
        resc_schedule=True,
    )
    with torch.no_grad():
        return a.perturb(x, y).detach()


class _Warnings(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def caught_warnings() -> Iterator[list[str]]:
    """Every warning pyautoattack's own checks raise inside the block, by either of its two ways:
    AutoAttack logs them, its attacks used alone call `warnings.warn` (which nothing caught before,
    so a zero-gradient warning of a standalone APGD reached the log but never a check). The list
    is filled when the block ends."""
    logged = _Warnings()
    AA_LOG.addHandler(logged)
    try:
        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always")
            yield logged.messages
    finally:
        AA_LOG.removeHandler(logged)
    logged.messages += [str(w.message) for w in warned if "pyautoattack" in w.filename]


def autoattack_with_warnings(model, x, y, *, eps, seed=0) -> tuple[torch.Tensor, list[str]]:
    """Standard AutoAttack, and the warnings its own checks raise (zero gradients, Square
    beating the gradient attacks, a randomised model)."""
    aa = AutoAttack(model, eps=eps, norm="Linf", version="standard", seed=seed, device=x.device)
    aa.verbose = False
    k = _classes(model, x)
    aa.apgd_targeted.n_target_classes = min(9, k - 1)
    aa.fab.n_target_classes = min(9, k - 1)
    with caught_warnings() as caught:
        x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=len(x))
    return x_adv.detach(), caught
