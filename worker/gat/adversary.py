"""The GAT machinery: gradient reversal layer, auxiliary networks, gradient normalisation and
lambda schedules (Sinha et al., "Gradient Adversarial Training of Neural Networks", 2018;
the reversal layer and the DANN ramp follow Ganin & Lempitsky, 2015).
"""

from __future__ import annotations

import math

import torch
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


class GradReverse(nn.Module):
    def __init__(self, lam: float = 1.0):
        super().__init__()
        self.lam = lam

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return grad_reverse(x, self.lam)


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
