"""GREAT and GREACE for adversarial defense (Sinha et al., "Gradient Adversarial Training of
Neural Networks", 2018; docs/design.md section 3).

The auxiliary network A classifies the per-example input gradient g = dJ/dx by the class of its
example. GREAT trains f through a gradient reversal layer so that g stops revealing the class;
GREACE instead uses A's confusion q = softmax(A(g)) (held constant) to push down harder the
negative classes whose gradients look like the true class's:
    L = -log( e^{z_y} / (e^{z_y} + sum_{j != y} (1 + beta q_j) e^{z_j}) ),
which is cross entropy on logits z_j + log(1 + beta q_j) for j != y (beta = 0: cross entropy).

By default g is taken in eval mode (`grad_mode`), the tensor FGSM and PGD differentiate; the
task loss still trains BatchNorm on batch statistics. `grad_of` swaps the labelled loss behind
g for a label-free one (predicted class, logit margin): the labelled gradient J^T (p - e_y)
carries y by construction, which is what makes the defense game hard to win.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..adversary import aux_net, grad_reverse, lam_at, logits_and_input_grad, normalize_grad
from . import Method


def greace_loss(logits: torch.Tensor, y: torch.Tensor, q: torch.Tensor, beta: float) -> torch.Tensor:
    """GREACE cross entropy; logits, q: N x K, y: N."""
    shift = torch.log1p(beta * q.detach()).scatter(1, y[:, None], 0.0)
    return F.cross_entropy(logits + shift, y)


def _make(
    model: nn.Module,
    *,
    num_classes: int,
    input_shape: tuple,
    adversarial: bool,
    beta: float,
    lam: float,
    lam_schedule: str,
    warmup: float,
    adv_every: int,
    grad_norm: str,
    aux_arch: str,
    aux_width: int,
    aux_lr: float,
    grad_mode: str,
    grad_of: str,
) -> Method:
    aux = aux_net(input_shape, num_classes, arch=aux_arch, width=aux_width)

    def step(x: torch.Tensor, y: torch.Tensor, progress: float, i: int):
        lam_now = lam_at(progress, lam=lam, schedule=lam_schedule, warmup=warmup)
        reverse = adversarial and lam_now > 0 and i % adv_every == 0
        # Per-example input gradients; create_graph lets A's loss reach f's weights (2nd order).
        logits, g = logits_and_input_grad(
            model, x, y, grad_mode=grad_mode, grad_of=grad_of, create_graph=reverse
        )  # N x K, N x C x H x W
        ce = F.cross_entropy(logits, y, reduction="none")  # N
        g = normalize_grad(g if reverse else g.detach(), grad_norm)  # N x C x H x W
        aux_logits = aux(grad_reverse(g, lam_now) if reverse else g)
        aux_loss = F.cross_entropy(aux_logits, y)
        task = greace_loss(logits, y, aux_logits.softmax(1), beta) if beta > 0 else ce.mean()
        metrics = {
            "loss": task.detach(),
            "aux_loss": aux_loss.detach(),
            "lam": lam_now,
            "aux_acc": (aux_logits.argmax(1) == y).float().mean(),
            "aux_chance": 1.0 / num_classes,
        }
        return task + aux_loss, metrics

    return Method(step=step, aux={"aux": aux}, aux_lr=aux_lr, plays=adversarial)


def great(
    model: nn.Module,
    *,
    num_classes: int,
    input_shape: tuple,
    eps: float | None = None,
    lam: float,
    lam_schedule: str,
    warmup: float,
    adv_every: int,
    grad_norm: str,
    aux_arch: str,
    aux_width: int,
    aux_lr: float,
    grad_mode: str,
    grad_of: str,
) -> Method:
    """GREAT: cross entropy + A's loss through the reversal layer. lambda, A's width and A's learning
    rate come from `bench/tune.py` (docs/results/tune-digits.md); great+greace inherits them."""
    return _make(
        model,
        num_classes=num_classes,
        input_shape=input_shape,
        adversarial=True,
        beta=0.0,
        lam=lam,
        lam_schedule=lam_schedule,
        warmup=warmup,
        adv_every=adv_every,
        grad_norm=grad_norm,
        aux_arch=aux_arch,
        aux_width=aux_width,
        aux_lr=aux_lr,
        grad_mode=grad_mode,
        grad_of=grad_of,
    )


def greace(
    model: nn.Module,
    *,
    num_classes: int,
    input_shape: tuple,
    eps: float | None = None,
    beta: float,
    grad_norm: str,
    aux_arch: str,
    aux_width: int,
    aux_lr: float,
    grad_mode: str,
    grad_of: str,
) -> Method:
    """GREACE alone: A learns on detached gradients; f trains on the GREACE loss only."""
    return _make(
        model,
        num_classes=num_classes,
        input_shape=input_shape,
        adversarial=False,
        beta=beta,
        lam=0.0,
        lam_schedule="constant",
        warmup=0.1,
        adv_every=1,
        grad_norm=grad_norm,
        aux_arch=aux_arch,
        aux_width=aux_width,
        aux_lr=aux_lr,
        grad_mode=grad_mode,
        grad_of=grad_of,
    )


def great_greace(
    model: nn.Module,
    *,
    num_classes: int,
    input_shape: tuple,
    eps: float | None = None,
    beta: float,
    lam: float,
    lam_schedule: str,
    warmup: float,
    adv_every: int,
    grad_norm: str,
    aux_arch: str,
    aux_width: int,
    aux_lr: float,
    grad_mode: str,
    grad_of: str,
) -> Method:
    """GREAT and GREACE together."""
    return _make(
        model,
        num_classes=num_classes,
        input_shape=input_shape,
        adversarial=True,
        beta=beta,
        lam=lam,
        lam_schedule=lam_schedule,
        warmup=warmup,
        adv_every=adv_every,
        grad_norm=grad_norm,
        aux_arch=aux_arch,
        aux_width=aux_width,
        aux_lr=aux_lr,
        grad_mode=grad_mode,
        grad_of=grad_of,
    )
