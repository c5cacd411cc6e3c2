"""Gradient statistics for the defense scenario, recorded at a bounded interval.

Per-class norms of the input gradient g = dJ/dx, mean cosine similarity within and between
classes, per-layer weight-gradient norms, and a fixed-bin histogram of the tensor A classifies.
The same statistics are computed for every method on clean inputs, so runs compare fairly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .adversary import normalize_grad

HIST_BINS = 41


def input_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example input gradient of the per-example cross entropy, detached (N x C x H x W)."""
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), x)
    return g.detach()


def class_stats(g: torch.Tensor, y: torch.Tensor, num_classes: int) -> dict[str, float]:
    """Per-class mean L2 norm of g, and mean cosine similarity within and between classes."""
    flat = g.flatten(1)  # N x D
    out = {}
    for c in range(num_classes):
        sel = y == c
        if sel.any():
            out[f"grad_norm/class_{c}"] = flat[sel].norm(dim=1).mean().item()
    unit = F.normalize(flat, dim=1)
    cos = unit @ unit.T  # N x N
    same = y[:, None] == y[None, :]
    off_diag = ~torch.eye(len(y), dtype=torch.bool, device=y.device)
    if (same & off_diag).any():
        out["cos/within"] = cos[same & off_diag].mean().item()
    if (~same).any():
        out["cos/between"] = cos[~same].mean().item()
    out["grad_norm/all"] = flat.norm(dim=1).mean().item()
    return out


def layer_grad_norms(model: nn.Module) -> dict[str, float]:
    """L2 norm of each parameterised layer's weight gradient (after backward)."""
    out = {}
    for name, p in model.named_parameters():
        if p.grad is not None and name.endswith("weight") and p.dim() > 1:
            out[f"layer_grad/{name[: -len('.weight')]}"] = p.grad.norm().item()
    return out


def histogram(g: torch.Tensor, grad_norm: str, edges: torch.Tensor) -> list[int]:
    """Counts of the normalised gradient's entries in fixed bins; outliers land in the end bins."""
    v = normalize_grad(g, grad_norm).flatten().clamp(edges[0].item(), edges[-1].item())
    return torch.histogram(v.float().cpu(), bins=edges.cpu()).hist.long().tolist()


def hist_edges(grad_norm: str) -> torch.Tensor:
    """Fixed edges for the whole run: l2 and standardize give unit-scale entries."""
    r = 4.0 if grad_norm != "none" else 0.05
    return torch.linspace(-r, r, HIST_BINS + 1)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval for a proportion k / n (sound at 0 and 1, unlike k/n ± 1.96 se)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)
