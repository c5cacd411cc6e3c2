"""Registry of attacks, one call signature: `attack(model, x, y, *, eps, seed, **knobs) -> x_adv`.

FGSM, iterative FGSM and PGD are our own (attacks/pgd.py), cross-checked against APGD-CE in the
tests; APGD (CE, DLR, targeted), FAB, Square and AutoAttack come from `pyautoattack`, the
reference code (Croce & Hein 2020).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .pgd import fgsm, margin_loss, pgd
from .reference import apgd_ce, apgd_dlr, apgd_t, autoattack, square

Attack = Callable[..., torch.Tensor]


def _fgsm(model, x, y, *, eps, seed=0, **_):
    return fgsm(model, x, y, eps=eps)


def _pgd(model, x, y, *, eps, seed=0, steps=10, restarts=1, **_):
    torch.manual_seed(seed)
    return pgd(model, x, y, eps=eps, steps=steps, restarts=restarts)


def _ifgsm(model, x, y, *, eps, seed=0, steps=10, **_):
    """The paper's iterative FGSM (Kurakin et al. 2017): no random start, steps of 1.25 eps / steps."""
    return pgd(model, x, y, eps=eps, steps=steps, step_size=1.25 * eps / steps, random_start=False)


def _pgd_margin(model, x, y, *, eps, seed=0, steps=10, restarts=1, **_):
    torch.manual_seed(seed)
    return pgd(model, x, y, eps=eps, steps=steps, restarts=restarts, loss="margin")


def _pgd_l2(model, x, y, *, eps, seed=0, steps=10, restarts=1, **_):
    torch.manual_seed(seed)
    return pgd(model, x, y, eps=eps, norm="l2", steps=steps, restarts=restarts)


def pick_target(kind: str, model, x, y, seed: int) -> torch.Tensor:
    """The target class: the least likely one, or a random class other than the true one."""
    with torch.no_grad():
        logits = model(x)
    if kind == "least_likely":
        return logits.argmin(1)
    k = logits.shape[1]
    g = torch.Generator().manual_seed(seed)
    return (y + torch.randint(1, k, y.shape, generator=g).to(y.device)) % k


def _targeted(kind: str) -> Attack:
    def attack(model, x, y, *, eps, seed=0, steps=10, restarts=1, target=None, **_):
        target = pick_target(kind, model, x, y, seed) if target is None else target
        torch.manual_seed(seed)
        return pgd(model, x, y, eps=eps, steps=steps, restarts=restarts, target=target)

    return attack


def _noise(model, x, y, *, eps, seed=0, draws=1, **_):
    """Uniform noise in the L-inf ball, `draws` samples per example, keeping the first that fools
    the model (the worst case per example): the floor every gradient attack must beat."""
    g = torch.Generator(device=x.device).manual_seed(seed)
    best, fooled = None, torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for _ in range(draws):
        cand = (x + (torch.rand(x.shape, generator=g, device=x.device) * 2 - 1) * eps).clamp(0, 1)
        with torch.no_grad():
            hit = model(cand).argmax(1) != y
        take = hit & ~fooled if best is not None else torch.ones_like(fooled)
        best = cand if best is None else torch.where(take.view(-1, *[1] * (x.dim() - 1)), cand, best)
        fooled |= hit
    return best


ATTACKS: dict[str, tuple[str, Attack]] = {  # name -> (norm, function)
    "fgsm": ("linf", _fgsm),
    "pgd": ("linf", _pgd),
    "ifgsm": ("linf", _ifgsm),
    "pgd_margin": ("linf", _pgd_margin),
    "pgd_l2": ("l2", _pgd_l2),
    "pgd_target_random": ("linf", _targeted("random")),
    "pgd_target_ll": ("linf", _targeted("least_likely")),
    "noise": ("linf", _noise),
    "apgd_ce": ("linf", apgd_ce),
    "apgd_dlr": ("linf", apgd_dlr),
    "apgd_t": ("linf", apgd_t),
    "square": ("linf", square),
    "autoattack": ("linf", autoattack),
}

__all__ = ["ATTACKS", "fgsm", "pgd", "margin_loss", "pick_target"]
