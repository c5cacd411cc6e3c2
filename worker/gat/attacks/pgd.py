"""FGSM (Goodfellow et al. 2015) and PGD (Madry et al. 2018; the paper's iterative FGSM) in
L-inf and L2, untargeted or targeted, on cross-entropy or margin (CW) loss, with random start
and restarts. Inputs and outputs are images in [0, 1]; every iterate is projected onto the
epsilon ball and the [0, 1] box.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example max_{j != y} z_j - z_y (positive once misclassified)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return other - true


def _loss(logits, y, target, kind):
    if target is not None:  # move towards the target: minimise its loss
        return (
            -F.cross_entropy(logits, target, reduction="none")
            if kind == "ce"
            else -margin_loss(logits, target)
        )
    return F.cross_entropy(logits, y, reduction="none") if kind == "ce" else margin_loss(logits, y)


def _flat_norm(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (v.dim() - 1)))


def project(delta: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Onto the eps-ball of `norm`, then into the [0, 1] box (x + delta)."""
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        delta = delta * (eps / _flat_norm(delta)).clamp(max=1.0)
    return (x + delta).clamp(0, 1) - x


def _random_start(x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """L-inf: uniform in the cube. L2: a uniform direction at a radius uniform in [0, eps] (as
    torchattacks and advertorch draw it). Uniform in the ball's volume would put nearly every start
    on the surface in 64+ dimensions (radius eps * U^(1/d)), which made PGD-L2 weaker than its
    reference."""
    if norm == "linf":
        return (torch.rand_like(x) * 2 - 1) * eps
    d = torch.randn_like(x)
    r = torch.rand(x.shape[0], *([1] * (x.dim() - 1)), device=x.device)
    return d / _flat_norm(d) * eps * r


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    steps: int = 10,
    step_size: float | None = None,
    restarts: int = 1,
    random_start: bool = True,
    loss: str = "ce",
    target: torch.Tensor | None = None,
) -> torch.Tensor:
    """Adversarial images; over restarts each example keeps the first one that fools the model
    (or reaches the target), else the one of highest loss. An L2 attack's first try starts at the
    clean image (stronger than any random start in high dimension), its later restarts at random."""
    if eps == 0:
        return x.clone()
    step_size = step_size if step_size is not None else 2.5 * eps / steps
    best, best_loss = x.clone(), torch.full((len(x),), float("-inf"), device=x.device)
    done = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for k in range(restarts):
        rand = random_start and not (norm == "l2" and k == 0)
        delta = project(_random_start(x, eps, norm), x, eps, norm) if rand else torch.zeros_like(x)
        for _ in range(steps):
            delta.requires_grad_(True)
            per_example = _loss(model(x + delta), y, target, loss)
            (g,) = torch.autograd.grad(per_example.sum(), delta)
            step = g.sign() if norm == "linf" else g / _flat_norm(g)
            delta = project(delta.detach() + step_size * step, x, eps, norm)
        with torch.no_grad():
            logits = model(x + delta)
            per_example = _loss(logits, y, target, loss)
            success = logits.argmax(1) != y if target is None else logits.argmax(1) == target
            take = (~done) & (success | (per_example > best_loss))
            best[take], best_loss[take] = (x + delta)[take], per_example[take]
            done |= success
    return best.detach()


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float) -> torch.Tensor:
    """One signed-gradient step of size eps from x (no random start)."""
    return pgd(model, x, y, eps=eps, steps=1, step_size=eps, random_start=False)
