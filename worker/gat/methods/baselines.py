"""Baselines for adversarial defense, one factory each, all sharing the registry's signature:
`erm` (cross entropy), `fgsm_at` (FGSM with random start, Wong, Rice & Kolter 2020),
`pgd_at` (Madry et al. 2018), `trades` (Zhang et al. 2019) and `igr` (input-gradient
regularisation by double backprop, Ross & Doshi-Velez 2018: the non-adversarial counterpart of
GAT). `eps` left unset means the dataset's standard L-inf radius (filled in by the trainer).

One rule for every training attack (FGSM-AT, PGD-AT, TRADES): the adversarial examples are crafted
with the model in eval mode (`crafting`): BatchNorm normalises with its running statistics, which
no attack step updates, and dropout is off; the loss on the crafted batch is then taken in train
mode, as on a clean batch. (Madry et al.'s code crafts in train mode, TRADES' reference in eval
mode; we had both. Eval mode is the attacker's view of the model, and keeps the running statistics
a record of the training data only.)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from ..adversary import logits_and_input_grad
from ..attacks.pgd import pgd
from . import Method


@contextmanager
def crafting(model: nn.Module) -> Iterator[None]:
    """Eval mode while a training attack crafts its examples; the model's mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def erm(model: nn.Module, *, num_classes: int, input_shape: tuple, eps: float | None = None) -> Method:
    def step(x, y, progress, i):
        loss = F.cross_entropy(model(x), y)
        return loss, {"loss": loss.detach()}

    return Method(step=step)


def fgsm_at(
    model: nn.Module, *, num_classes: int, input_shape: tuple, eps: float | None = None, alpha: float
) -> Method:
    def step(x, y, progress, i):
        with crafting(model):
            x_adv = pgd(model, x, y, eps=eps, steps=1, step_size=alpha * eps, random_start=True)
        loss = F.cross_entropy(model(x_adv), y)
        return loss, {"loss": loss.detach()}

    return Method(step=step)


def pgd_at(
    model: nn.Module,
    *,
    num_classes: int,
    input_shape: tuple,
    eps: float | None = None,
    steps: int,
    step_mult: float,
) -> Method:
    def step(x, y, progress, i):
        with crafting(model):
            x_adv = pgd(model, x, y, eps=eps, steps=steps, step_size=step_mult * eps / steps)
        loss = F.cross_entropy(model(x_adv), y)
        return loss, {"loss": loss.detach()}

    return Method(step=step)


def trades(
    model: nn.Module,
    *,
    num_classes: int,
    input_shape: tuple,
    eps: float | None = None,
    beta: float,
    steps: int,
    step_mult: float,
) -> Method:
    def step(x, y, progress, i):
        with crafting(model):
            with torch.no_grad():
                p_clean = model(x).softmax(1)
            x_adv = (x + 0.001 * torch.randn_like(x)).clamp(0, 1)
            for _ in range(steps):
                x_adv.requires_grad_(True)
                kl = F.kl_div(model(x_adv).log_softmax(1), p_clean, reduction="sum")
                (g,) = torch.autograd.grad(kl, x_adv)
                step = step_mult * eps / steps * g.sign()
                x_adv = (x + (x_adv.detach() + step - x).clamp(-eps, eps)).clamp(0, 1)
        logits = model(x)
        ce = F.cross_entropy(logits, y)
        robust = F.kl_div(model(x_adv).log_softmax(1), logits.softmax(1), reduction="batchmean")
        return ce + beta * robust, {"loss": ce.detach(), "robust_kl": robust.detach()}

    return Method(step=step)


def igr(
    model: nn.Module,
    *,
    num_classes: int,
    input_shape: tuple,
    eps: float | None = None,
    weight: float,
    grad_mode: str,
) -> Method:
    """The penalised gradient is, like GREAT's, taken in eval mode by default (the attacker's)."""

    def step(x, y, progress, i):
        logits, g = logits_and_input_grad(
            model, x, y, grad_mode=grad_mode, create_graph=True
        )  # g: N x C x H x W
        ce = F.cross_entropy(logits, y, reduction="none")  # N
        penalty = g.flatten(1).pow(2).sum(1).mean()
        return ce.mean() + weight * penalty, {"loss": ce.mean().detach(), "grad_penalty": penalty.detach()}

    return Method(step=step)
