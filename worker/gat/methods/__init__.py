"""Registry of training methods. A method factory takes the model and the data's shape and
returns a `Method`: a step that maps a batch to (loss, metrics), plus any auxiliary modules.
All factories share one signature: `make(model, *, num_classes, input_shape, eps, **knobs)`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

# step(x, y, progress, step) -> (loss, metrics); metrics may hold 0-d tensors.
StepFn = Callable[[torch.Tensor, torch.Tensor, float, int], tuple[torch.Tensor, dict]]


@dataclass
class Method:
    step: StepFn
    aux: dict[str, nn.Module] = field(default_factory=dict)  # trained by their own Adam
    aux_lr: float = 1e-3


def registry() -> dict[tuple[str, str], Callable[..., Method]]:
    from . import baselines, great

    return {
        ("defense", "erm"): baselines.erm,
        ("defense", "great"): great.great,
        ("defense", "greace"): great.greace,
        ("defense", "great+greace"): great.great_greace,
        ("defense", "fgsm_at"): baselines.fgsm_at,
        ("defense", "pgd_at"): baselines.pgd_at,
        ("defense", "trades"): baselines.trades,
        ("defense", "igr"): baselines.igr,
    }


def make(scenario: str, method: str, model: nn.Module, **kwargs) -> Method:
    try:
        factory = registry()[(scenario, method)]
    except KeyError:
        allowed = ", ".join(f"{s}:{m}" for s, m in registry())
        raise ValueError(f"method: unknown {scenario}:{method} (allowed: {allowed})") from None
    return factory(model, **kwargs)
