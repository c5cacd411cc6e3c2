"""Registry of attacks, one call signature: `attack(model, x, y, *, eps, seed, **knobs) -> x_adv`.

FGSM and PGD are our own (attacks/pgd.py), cross-checked against APGD-CE in the tests;
APGD, Square and AutoAttack come from `pyautoattack`, the reference code (Croce & Hein 2020).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .pgd import fgsm, margin_loss, pgd
from .reference import apgd_ce, autoattack, square

Attack = Callable[..., torch.Tensor]


def _fgsm(model, x, y, *, eps, seed=0, **_):
    return fgsm(model, x, y, eps=eps)


def _pgd(model, x, y, *, eps, seed=0, steps=10, restarts=1, **_):
    torch.manual_seed(seed)
    return pgd(model, x, y, eps=eps, steps=steps, restarts=restarts)


def _pgd_margin(model, x, y, *, eps, seed=0, steps=10, restarts=1, **_):
    torch.manual_seed(seed)
    return pgd(model, x, y, eps=eps, steps=steps, restarts=restarts, loss="margin")


def _pgd_l2(model, x, y, *, eps, seed=0, steps=10, restarts=1, **_):
    torch.manual_seed(seed)
    return pgd(model, x, y, eps=eps, norm="l2", steps=steps, restarts=restarts)


def _targeted(kind: str) -> Attack:
    def attack(model, x, y, *, eps, seed=0, steps=10, restarts=1, **_):
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            logits = model(x)
        if kind == "least_likely":
            target = logits.argmin(1)
        else:  # a random class other than the true one
            k = logits.shape[1]
            target = (y + torch.randint(1, k, y.shape, generator=g).to(y.device)) % k
        torch.manual_seed(seed)
        return pgd(model, x, y, eps=eps, steps=steps, restarts=restarts, target=target)

    return attack


def _noise(model, x, y, *, eps, seed=0, restarts=1, **_):
    """Uniform noise in the L-inf ball: the floor every gradient attack must beat."""
    g = torch.Generator(device=x.device).manual_seed(seed)
    noise = (torch.rand(x.shape, generator=g, device=x.device) * 2 - 1) * eps
    return (x + noise).clamp(0, 1)


ATTACKS: dict[str, tuple[str, Attack]] = {  # name -> (norm, function)
    "fgsm": ("linf", _fgsm),
    "pgd": ("linf", _pgd),
    "pgd_margin": ("linf", _pgd_margin),
    "pgd_l2": ("l2", _pgd_l2),
    "pgd_target_random": ("linf", _targeted("random")),
    "pgd_target_ll": ("linf", _targeted("least_likely")),
    "noise": ("linf", _noise),
    "apgd_ce": ("linf", apgd_ce),
    "square": ("linf", square),
    "autoattack": ("linf", autoattack),
}

__all__ = ["ATTACKS", "fgsm", "pgd", "margin_loss"]
