"""TorchScript models that misbehave (issue 27, finding 1): each answers the lab's shape check only
if its payload is stopped, so a test sees the payload's effect or its refusal. Scripted from this
file (TorchScript needs the classes' source)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class Reader(nn.Module):
    """Reads a file outside its inputs into its logits, where its results would show it (the finding:
    /etc/passwd read into the run's error); answers only if it could read it."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.from_file(self.path, shared=False, size=10, dtype=torch.uint8)
        return self.head(x.flatten(1)) + t.float()


class Writer(nn.Module):
    """Overwrites a file outside its inputs (the finding: another user's run.log), then answers."""

    def __init__(self, path: str, size: int):
        super().__init__()
        self.path, self.size = path, size
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.from_file(self.path, shared=True, size=self.size, dtype=torch.uint8)
        t.fill_(88)  # 'X'
        return self.head(x.flatten(1)) + 0.0 * t[0].float()  # used, so the write is not optimised away


class Forever(nn.Module):
    """Never returns."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        while bool(y.sum() > -1.0):
            y = y + 0.0
        return y.flatten(1)[:, :10]


class Hungry(nn.Module):
    """Allocates without bound (64 GiB)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        big = torch.ones(1 << 36, dtype=torch.uint8)
        return x.flatten(1)[:, :10] + big[0].float()


def save(model: nn.Module, path: Path) -> Path:
    torch.jit.script(model).save(str(path))
    return path
