"""Losses more than one part of the core uses: a task's loss (the multi-task methods, the trainer's
per-task gradient statistics, the task probe)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def task_loss(out: torch.Tensor, target: torch.Tensor, spec: dict) -> torch.Tensor:
    """Cross entropy for a classification task, mean squared error for a regression one."""
    if spec["kind"] == "cls":
        return F.cross_entropy(out, target)
    return F.mse_loss(out.squeeze(1), target.float())
