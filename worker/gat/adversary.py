"""The GAT machinery: gradient reversal layer, auxiliary networks, gradient normalisation and
lambda schedules (Sinha et al., "Gradient Adversarial Training of Neural Networks", 2018;
the reversal layer and the DANN ramp follow Ganin & Lempitsky, 2015).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn


class _Reverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, lam: float) -> torch.Tensor:
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.lam * grad, None


def grad_reverse(x: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    """Identity forward; multiplies the incoming gradient by -lam backward."""
    return _Reverse.apply(x, lam)


def normalize_grad(g: torch.Tensor, mode: str) -> torch.Tensor:
    """Per-example normalisation of a gradient tensor g (N x ...) before the auxiliary network.

    l2: unit RMS per example (g / ||g|| * sqrt(D)), so A sees O(1) inputs whatever the input size;
    standardize: zero mean, unit std per example; none: raw.
    """
    if mode == "none":
        return g
    flat = g.flatten(1)  # N x D
    if mode == "l2":
        scale = flat.norm(dim=1, keepdim=True).clamp_min(1e-12) / math.sqrt(flat.shape[1])
        return (flat / scale).view_as(g)
    if mode == "standardize":
        mu, sd = flat.mean(1, keepdim=True), flat.std(1, keepdim=True).clamp_min(1e-12)
        return ((flat - mu) / sd).view_as(g)
    raise ValueError(f"grad_norm: unknown mode {mode!r} (allowed: none, l2, standardize)")


def lam_at(progress: float, *, lam: float, schedule: str, warmup: float = 0.1) -> float:
    """lambda at training progress p in [0, 1]."""
    if schedule == "constant":
        return lam
    if schedule == "warmup":
        return lam * min(1.0, progress / warmup)
    if schedule == "dann":
        return lam * (2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0)
    raise ValueError(f"lam_schedule: unknown schedule {schedule!r} (allowed: constant, warmup, dann)")


def aux_net(shape: tuple[int, ...], num_outputs: int, *, arch: str = "auto", width: int = 32) -> nn.Module:
    """A: small CNN for image-shaped gradients (C x H x W), MLP otherwise.

    ELU rather than ReLU keeps A's input-gradient smooth, which the main network trains against.
    """
    if arch == "auto":
        arch = "cnn" if len(shape) == 3 and min(shape[1:]) >= 4 else "mlp"
    if arch == "cnn":
        return nn.Sequential(
            nn.Conv2d(shape[0], width, 3, padding=1),
            nn.ELU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.ELU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(8 * width, num_outputs),
        )
    d = math.prod(shape)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, 4 * width), nn.ELU(), nn.Linear(4 * width, num_outputs))


@contextmanager
def eval_mode(model: nn.Module, on: bool = True) -> Iterator[None]:
    """Run the block with every module in eval mode (BatchNorm's running statistics, no
    dropout), as an attacker takes gradients at test time; each module's own flag comes back after."""
    flags = [(m, m.training) for m in model.modules()]
    if on:
        model.eval()
    try:
        yield
    finally:
        for m, training in flags:
            m.training = training


def _gradient_loss(logits: torch.Tensor, y: torch.Tensor, of: str) -> torch.Tensor:
    """The per-example loss whose input gradient A sees, summed over the batch.

    label: cross entropy with the true class (the tensor FGSM/PGD use; it carries y through
    J^T (p - e_y)); predicted: cross entropy with the predicted class (no label);
    margin: the logit margin of the predicted class over the runner-up (no label, no softmax);
    logit: the true class's logit z_y, whose input gradient is the row of the output activations'
    Jacobian that Srinivas & Fleuret (2018) match (no softmax: the student's own error stays out).
    """
    if of == "label":
        return F.cross_entropy(logits, y, reduction="sum")
    if of == "logit":
        return logits.gather(1, y[:, None]).sum()
    top2 = logits.topk(2, dim=1).indices  # N x 2
    if of == "predicted":
        return F.cross_entropy(logits, top2[:, 0], reduction="sum")
    if of == "margin":
        z = logits.gather(1, top2)  # N x 2
        return (z[:, 0] - z[:, 1]).sum()
    raise ValueError(f"grad_of: unknown {of!r} (allowed: label, predicted, margin)")


def logits_and_input_grad(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    grad_mode: str = "eval",
    grad_of: str = "label",
    create_graph: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's logits for the task loss (in the model's own mode, so BatchNorm trains as
    usual) and the per-example input gradient g (N x C x H x W) that A classifies.

    grad_mode eval (the default): g is taken with the model in eval mode, the tensor an attacker
    differentiates, at the cost of a second forward pass; train: g comes from the training
    forward itself, where each example's gradient carries terms from the rest of the batch
    through BatchNorm's batch statistics.
    """
    if grad_mode not in ("eval", "train"):
        raise ValueError(f"grad_mode: unknown {grad_mode!r} (allowed: eval, train)")
    if grad_mode == "train":
        x = x.detach().clone().requires_grad_(True)
        logits = model(x)
        (g,) = torch.autograd.grad(_gradient_loss(logits, y, grad_of), x, create_graph=create_graph,
                                   retain_graph=True)  # fmt: skip
        return logits, g
    logits = model(x)
    xe = x.detach().clone().requires_grad_(True)
    with eval_mode(model):
        (g,) = torch.autograd.grad(_gradient_loss(model(xe), y, grad_of), xe, create_graph=create_graph)
    return logits, g
