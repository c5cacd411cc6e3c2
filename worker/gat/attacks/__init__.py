"""Registry of attacks, one call signature: `attack(model, x, y, *, eps, seed, **knobs) -> x_adv`,
each with what the panel needs to know of it (`Attack`): its norm, whether it reads the model's
gradients (white box) or only its outputs (black box), whether it is pyautoattack's code run alone (its
warnings are kept with AutoAttack's), and the knobs it takes. A knob an attack does not take is refused
(TypeError), never swallowed.

FGSM, iterative FGSM and PGD are our own (attacks/pgd.py), cross-checked against APGD-CE in the
tests; APGD (CE, DLR, targeted), FAB, Square and AutoAttack come from `pyautoattack`, the
reference code (Croce & Hein 2020).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from .pgd import fgsm, margin_loss, pgd
from .reference import apgd_dlr, apgd_t, square

AttackFn = Callable[..., torch.Tensor]


class Attack(NamedTuple):
    norm: str  # linf or l2
    fn: AttackFn
    box: str  # white (reads gradients), black (outputs only), or floor (uniform noise, not an attack)
    knobs: tuple[str, ...]  # what the attack takes besides eps and seed
    reference: bool = False  # pyautoattack's code run on its own: its warnings are kept


def _fgsm(model, x, y, *, eps, seed=0):
    return fgsm(model, x, y, eps=eps)


def _pgd(model, x, y, *, eps, seed=0, steps=10, restarts=1):
    torch.manual_seed(seed)
    return pgd(model, x, y, eps=eps, steps=steps, restarts=restarts)


def _ifgsm(model, x, y, *, eps, seed=0, steps=10):
    """The paper's iterative FGSM (Kurakin et al. 2017): no random start, steps of 1.25 eps / steps."""
    return pgd(model, x, y, eps=eps, steps=steps, step_size=1.25 * eps / steps, random_start=False)


def _pgd_margin(model, x, y, *, eps, seed=0, steps=10, restarts=1):
    torch.manual_seed(seed)
    return pgd(model, x, y, eps=eps, steps=steps, restarts=restarts, loss="margin")


def _pgd_l2(model, x, y, *, eps, seed=0, steps=10, restarts=1):
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


def _targeted(kind: str) -> AttackFn:
    def attack(model, x, y, *, eps, seed=0, steps=10, restarts=1, target=None):
        target = pick_target(kind, model, x, y, seed) if target is None else target
        torch.manual_seed(seed)
        return pgd(model, x, y, eps=eps, steps=steps, restarts=restarts, target=target)

    return attack


def _noise(model, x, y, *, eps, seed=0, draws=1):
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


STEPS = ("steps", "restarts")
ATTACKS: dict[str, Attack] = {
    "fgsm": Attack("linf", _fgsm, "white", ()),
    "pgd": Attack("linf", _pgd, "white", STEPS),
    "ifgsm": Attack("linf", _ifgsm, "white", ("steps",)),
    "pgd_margin": Attack("linf", _pgd_margin, "white", STEPS),
    "pgd_l2": Attack("l2", _pgd_l2, "white", STEPS),
    "pgd_target_random": Attack("linf", _targeted("random"), "white", (*STEPS, "target")),
    "pgd_target_ll": Attack("linf", _targeted("least_likely"), "white", (*STEPS, "target")),
    "noise": Attack("linf", _noise, "floor", ("draws",)),
    "apgd_dlr": Attack("linf", apgd_dlr, "white", STEPS, reference=True),
    "apgd_t": Attack("linf", apgd_t, "white", ("steps",), reference=True),
    "square": Attack("linf", square, "black", ("queries",), reference=True),
}


def budget(name: str, **knobs) -> dict:
    """The knobs of `knobs` that attack `name` takes: a panel gives one budget, each attack its share."""
    return {k: v for k, v in knobs.items() if k in ATTACKS[name].knobs}


__all__ = ["ATTACKS", "Attack", "budget", "fgsm", "pgd", "margin_loss", "pick_target"]
