"""Multi-task learning methods (docs/design.md section 3), one registry signature with the dataset's
`tasks` ({name: {"kind": "cls", "classes": K} | {"kind": "reg"}}) and a `MultiTaskNet`:
`single_task`, `equal` (fixed weights), `uncertainty` (Kendall, Gal & Cipolla 2018), `gradnorm`
(Chen et al. 2018), `pcgrad` (Yu et al. 2020) and GREAT's gradient alignment layers (Sinha et al.
2018): between the shared features F and each head sits a GAL, identity forward, scaling task t's
gradient dL_t/dF channel-wise by gamma_t backward; an auxiliary network classifies the scaled
per-task gradients by task id, and gamma is trained through the reversal layer against it.
GradNorm here balances gradient norms at F (the shared features) rather than at the last shared
weight matrix: one backward per task on an N x D tensor instead of on the weights.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from torch import nn

from ..adversary import aux_net, grad_reverse, lam_at, normalize_grad
from ..losses import task_loss
from . import Method


def _losses(outs: dict, targets: dict, tasks: dict) -> dict[str, torch.Tensor]:
    return {t: task_loss(outs[t], targets[t], spec) for t, spec in tasks.items()}


def _check(tasks: dict, names) -> None:
    unknown = [n for n in names if n not in tasks]
    if unknown:
        raise ValueError(f"params: task(s) {unknown} not in the dataset (tasks: {', '.join(tasks)})")


def _metrics(losses: dict, weights: dict | None = None) -> dict:
    out = {f"loss/{t}": loss.detach() for t, loss in losses.items()}
    out["loss"] = sum(losses.values()).detach()
    for t, w in (weights or {}).items():
        out[f"weight/{t}"] = float(w)
    return out


def single_task(
    model: nn.Module,
    *,
    num_classes: int,
    input_shape: tuple,
    tasks: dict,
    eps: float | None = None,
    task: str,
) -> Method:
    """One task only (the dataset's first if unset): the reference for delta-m%."""
    task = task or next(iter(tasks))
    _check(tasks, [task])

    def step(x, targets, progress, i):
        loss = task_loss(model(x)[task], targets[task], tasks[task])
        return loss, {"loss": loss.detach(), f"loss/{task}": loss.detach()}

    return Method(step=step)


def equal(
    model: nn.Module,
    *,
    num_classes: int,
    input_shape: tuple,
    tasks: dict,
    eps: float | None = None,
    weights: dict[str, float] | None,
) -> Method:
    """Fixed weights (1 for every task unless given)."""
    _check(tasks, weights or {})
    w = {t: (weights or {}).get(t, 1.0) for t in tasks}

    def step(x, targets, progress, i):
        losses = _losses(model(x), targets, tasks)
        return sum(w[t] * loss for t, loss in losses.items()), _metrics(losses, w)

    return Method(step=step)


class _Vector(nn.Module):
    def __init__(self, values: torch.Tensor):
        super().__init__()
        self.value = nn.Parameter(values)


def uncertainty(
    model: nn.Module,
    *,
    num_classes: int,
    input_shape: tuple,
    tasks: dict,
    eps: float | None = None,
    weight_lr: float,
) -> Method:
    """L = sum_t exp(-s_t) c_t L_t + s_t / 2 with s_t = log sigma_t^2 learned (c_t = 1/2 for regression)."""
    s = _Vector(torch.zeros(len(tasks)))
    coef = torch.tensor([1.0 if spec["kind"] == "cls" else 0.5 for spec in tasks.values()])

    def step(x, targets, progress, i):
        losses = _losses(model(x), targets, tasks)
        ls = torch.stack(list(losses.values()))
        total = (torch.exp(-s.value) * coef.to(ls.device) * ls + s.value / 2).sum()
        return total, _metrics(
            losses, {t: torch.exp(-v).item() for t, v in zip(tasks, s.value.detach(), strict=False)}
        )

    return Method(step=step, aux={"log_vars": s}, aux_lr=weight_lr)


def gradnorm(
    model: nn.Module,
    *,
    num_classes: int,
    input_shape: tuple,
    tasks: dict,
    eps: float | None = None,
    alpha: float,
    weight_lr: float,
) -> Method:
    """Weights w_t move so that the gradient norms |d(w_t L_t)/dF| approach mean * (relative rate)^alpha."""
    w = _Vector(torch.ones(len(tasks)))
    w.register_buffer("initial", torch.zeros(len(tasks)))  # L_t at the first step, checkpointed
    T = len(tasks)

    def step(x, targets, progress, i):
        f = model.encoder(x)  # N x D
        losses = _losses({t: h(f) for t, h in model.heads.items()}, targets, tasks)
        ls = torch.stack(list(losses.values()))
        if not w.initial.any():
            w.initial.copy_(ls.detach())
        norms = torch.stack(
            [torch.autograd.grad(loss, f, retain_graph=True)[0].norm() for loss in ls]
        ).detach()
        g = w.value * norms  # G_t, linear in w_t
        rate = ls.detach() / w.initial
        target = (g.mean() * (rate / rate.mean()) ** alpha).detach()
        balance = (g - target).abs().sum()  # reaches w only: norms and target are constants
        total = (w.value.detach() * ls).sum() + balance
        return total, {
            **_metrics(losses, dict(zip(tasks, w.value.detach().tolist(), strict=False))),
            "gradnorm_loss": balance.detach(),
        }

    def renormalise():  # keep sum_t w_t = T, each positive
        with torch.no_grad():
            w.value.clamp_(min=1e-3)
            w.value.mul_(T / w.value.sum())

    return Method(step=step, aux={"weights": w}, aux_lr=weight_lr, post_step=renormalise)


def project_conflicts(grads: list[torch.Tensor], orders: list[list[int]] | None = None) -> torch.Tensor:
    """PCGrad: project each task gradient g_i onto the normal plane of every other g_j it conflicts
    with (negative dot product), visiting the others in orders[i] (Yu et al. shuffle per task),
    then sum. grads: T flat tensors."""
    out = []
    for i, g in enumerate(grads):
        g = g.clone()
        for j in orders[i] if orders else range(len(grads)):
            if j != i and (dot := g @ grads[j]) < 0:
                g -= dot / grads[j].pow(2).sum().clamp_min(1e-20) * grads[j]
        out.append(g)
    return torch.stack(out).sum(0)


def pcgrad(
    model: nn.Module, *, num_classes: int, input_shape: tuple, tasks: dict, eps: float | None = None
) -> Method:
    shared = [p for p in model.encoder.parameters() if p.requires_grad]
    rng = random.Random(0)

    def step(x, targets, progress, i):
        losses = _losses(model(x), targets, tasks)
        flat = [
            torch.cat(
                [
                    g.flatten()
                    for g in torch.autograd.grad(loss, shared, retain_graph=True, allow_unused=False)
                ]
            )
            for loss in losses.values()
        ]
        orders = [rng.sample(range(len(flat)), len(flat)) for _ in flat]  # a fresh order per task
        merged = project_conflicts(flat, orders)
        total = sum(losses.values())
        total.backward()  # heads get their own task's gradient; the shared grads are replaced below
        offset = 0
        for p in shared:
            p.grad = merged[offset : offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        return total.detach(), _metrics(losses)

    return Method(step=step, manual_backward=True)


class _Align(torch.autograd.Function):
    """Gradient alignment layer: identity forward; backward multiplies by gamma (N x D * D)."""

    @staticmethod
    def forward(ctx, f: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gamma)
        return f.view_as(f)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (gamma,) = ctx.saved_tensors
        return grad * gamma, None


def gal(f: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    return _Align.apply(f, gamma)


class GalScales(nn.Module):
    """gamma_t = D * softmax(theta_t): positive channel scales with mean 1 per task (T x D)."""

    def __init__(self, tasks: int, dim: int):
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(tasks, dim))

    def forward(self) -> torch.Tensor:
        return self.theta.shape[1] * self.theta.softmax(1)


def _scaled_task_grads(losses: dict, fts: list, gamma: torch.Tensor, *, create_graph: bool) -> torch.Tensor:
    """gamma_t * dL_t/dF for every task, stacked: (T*N) x D, differentiable in gamma, and with
    create_graph in the heads' and encoder's weights too (second order)."""
    raw = torch.autograd.grad(list(losses.values()), fts, retain_graph=True, create_graph=create_graph)
    return torch.cat([gamma[k] * (g if create_graph else g.detach()) for k, g in enumerate(raw)])


def _gal_metrics(names: list[str], gamma: torch.Tensor) -> dict:
    g = gamma.detach()
    return {f"gal/{t}/{stat}": getattr(g[k], stat)() for k, t in enumerate(names) for stat in ("std", "max")}


def great(
    model: nn.Module,
    *,
    num_classes: int,
    input_shape: tuple,
    tasks: dict,
    eps: float | None = None,
    lam: float,
    lam_schedule: str,
    warmup: float,
    adv_every: int,
    grad_norm: str,
    aux_arch: str,
    aux_width: int,
    aux_lr: float,
    second_order: bool,
) -> Method:
    """GALs against a task-id classifier of the scaled per-task gradients at the shared features.
    second_order: A's reversed loss also reaches the heads and encoder (as in ASTMT); off, only the
    GAL scales play (channel scaling cannot align a linear head's fixed gradient directions)."""
    names = list(tasks)
    scales = GalScales(len(names), model.dim)
    disc = aux_net((model.dim,), len(names), arch="mlp" if aux_arch == "auto" else aux_arch, width=aux_width)

    def step(x, targets, progress, i):
        lam_now = lam_at(progress, lam=lam, schedule=lam_schedule, warmup=warmup)
        reverse = lam_now > 0 and i % adv_every == 0
        f = model.encoder(x)  # N x D
        gamma = scales()  # T x D
        fts = [gal(f, gamma[k].detach()) for k in range(len(names))]  # one aligned copy per task
        losses = {
            t: task_loss(model.heads[t](ft), targets[t], tasks[t]) for t, ft in zip(names, fts, strict=False)
        }
        scaled = _scaled_task_grads(losses, fts, gamma, create_graph=reverse and second_order)  # (T*N) x D
        ids = torch.arange(len(names), device=x.device).repeat_interleave(len(x))
        z = normalize_grad(scaled if reverse else scaled.detach(), grad_norm)
        aux_logits = disc(grad_reverse(z, lam_now) if reverse else z)
        aux_loss = F.cross_entropy(aux_logits, ids)
        metrics = {
            **_metrics(losses),
            "aux_loss": aux_loss.detach(),
            "lam": lam_now,
            "aux_acc": (aux_logits.argmax(1) == ids).float().mean(),
            "aux_chance": 1.0 / len(names),
            **_gal_metrics(names, gamma),
        }
        return sum(losses.values()) + aux_loss, metrics

    return Method(step=step, aux={"aux": disc, "gal": scales}, aux_lr=aux_lr, plays=True)
