"""Registry of training methods. A method factory takes the model and the data's shape and
returns a `Method`: a step that maps a batch to (loss, metrics), plus any auxiliary modules.
All factories share one signature: `factory(model, *, num_classes, input_shape, eps, **knobs)`;
distillation factories also take the frozen `teacher`, multi-task ones the dataset's `tasks`.

A method's knobs are declared once, in the run config's schema (labcore.run_config.PARAMS: type,
default, bounds, description); the factories take them without defaults, and `make` fills in the
declared defaults and refuses a knob the method does not declare.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from pydantic import ValidationError
from torch import nn

from labcore.run_config import PARAMS, TRAINER_KNOBS, format_errors

# step(x, y, progress, step) -> (loss, metrics); metrics may hold 0-d tensors.
StepFn = Callable[[torch.Tensor, torch.Tensor, float, int], tuple[torch.Tensor, dict]]


@dataclass
class Method:
    step: StepFn
    aux: dict[str, nn.Module] = field(default_factory=dict)  # trained by their own Adam
    aux_lr: float = 1e-3
    manual_backward: bool = False  # the step already filled .grad (PCGrad)
    post_step: Callable[[], None] | None = None  # after the optimiser steps (GradNorm's renormalisation)
    plays: bool = (
        False  # GAT's game: an auxiliary network trained against the model through the reversal layer
    )


def registry() -> dict[tuple[str, str], Callable[..., Method]]:
    from . import baselines, distill, great, multitask

    return {
        ("defense", "erm"): baselines.erm,
        ("defense", "great"): great.great,
        ("defense", "greace"): great.greace,
        ("defense", "great+greace"): great.great_greace,
        ("defense", "fgsm_at"): baselines.fgsm_at,
        ("defense", "pgd_at"): baselines.pgd_at,
        ("defense", "trades"): baselines.trades,
        ("defense", "igr"): baselines.igr,
        ("distill", "student"): distill.student,
        ("distill", "soft_targets"): distill.soft_targets,
        ("distill", "jacobian_matching"): distill.jacobian_matching,
        ("distill", "great"): distill.great,
        ("distill", "great+soft_targets"): distill.great_soft_targets,
        ("multitask", "single_task"): multitask.single_task,
        ("multitask", "equal"): multitask.equal,
        ("multitask", "uncertainty"): multitask.uncertainty,
        ("multitask", "gradnorm"): multitask.gradnorm,
        ("multitask", "pcgrad"): multitask.pcgrad,
        ("multitask", "great"): multitask.great,
    }


def make(
    scenario: str, method: str, model: nn.Module, *, num_classes: int, input_shape: tuple, eps=None, **given
) -> Method:
    """The method `scenario:method` on `model`, with the knobs `given` (the declared defaults for the
    rest); the frozen `teacher` or the `tasks` go through as they are."""
    try:
        factory = registry()[(scenario, method)]
    except KeyError:
        allowed = ", ".join(f"{s}:{m}" for s, m in registry())
        raise ValueError(f"method: unknown {scenario}:{method} (allowed: {allowed})") from None
    context = {k: given.pop(k) for k in ("teacher", "tasks") if k in given}
    try:
        knobs = PARAMS[(scenario, method)].model_validate(given).model_dump(exclude={*TRAINER_KNOBS, "eps"})
    except ValidationError as e:
        raise ValueError(f"params of {scenario}:{method}: " + "; ".join(format_errors(e))) from None
    return factory(model, num_classes=num_classes, input_shape=input_shape, eps=eps, **knobs, **context)
