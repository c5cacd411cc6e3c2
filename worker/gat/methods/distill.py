"""Knowledge distillation methods (docs/design.md section 3), one registry signature with a fixed
`teacher` (frozen, eval mode): `student` (cross entropy), `soft_targets` (Hinton, Vinyals & Dean
2015), `jacobian_matching` (Srinivas & Fleuret 2018: L2 between the normalised input Jacobians of
the true class's output activation, student against teacher),
and GREAT (Sinha et al. 2018): a binary auxiliary network tells the teacher's gradient from the
student's, and the student learns through the reversal layer to be mistaken for the teacher.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..adversary import aux_net, grad_reverse, lam_at, logits_and_input_grad, normalize_grad
from . import Method


def _freeze(teacher: nn.Module) -> nn.Module:
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def soft_target_loss(zs: torch.Tensor, zt: torch.Tensor, temperature: float) -> torch.Tensor:
    """tau^2 KL(softmax(zt / tau) || softmax(zs / tau)), batch mean."""
    t = temperature
    return F.kl_div((zs / t).log_softmax(1), (zt / t).softmax(1), reduction="batchmean") * t * t


def _grads(model, x, y, *, wrt: str, create_graph: bool, grad_mode: str = "eval"):
    """Logits, per-example cross entropy (both from the model's own mode) and the gradient of the
    cross entropy w.r.t. the input (N x C x H x W, in `grad_mode`) or the logits (N x K)."""
    if wrt == "input":
        logits, g = logits_and_input_grad(model, x, y, grad_mode=grad_mode, create_graph=create_graph)
        return logits, F.cross_entropy(logits, y, reduction="none"), g
    logits = model(x)
    if not logits.requires_grad:  # the frozen teacher: its logits still have a gradient to give
        logits = logits.detach().requires_grad_(True)
    ce = F.cross_entropy(logits, y, reduction="none")
    (g,) = torch.autograd.grad(ce.sum(), logits, create_graph=create_graph, retain_graph=True)
    return logits, ce, g


def _agreement(zs, zt) -> torch.Tensor:
    return (zs.argmax(1) == zt.argmax(1)).float().mean()


def _grad_stats(gs: torch.Tensor, gt: torch.Tensor) -> dict:
    a, b = F.normalize(gs.detach().flatten(1), dim=1), F.normalize(gt.detach().flatten(1), dim=1)
    return {"st_cos": (a * b).sum(1).mean(), "st_l2": (a - b).norm(dim=1).mean()}


def student(
    model: nn.Module, *, num_classes: int, input_shape: tuple, teacher: nn.Module, eps: float | None = None
) -> Method:
    _freeze(teacher)

    def step(x, y, progress, i):
        zs = model(x)
        with torch.no_grad():
            zt = teacher(x)
        loss = F.cross_entropy(zs, y)
        return loss, {"loss": loss.detach(), "agreement": _agreement(zs, zt)}

    return Method(step=step)


def soft_targets(
    model: nn.Module,
    *,
    num_classes: int,
    input_shape: tuple,
    teacher: nn.Module,
    eps: float | None = None,
    temperature: float,
    alpha: float,
) -> Method:
    _freeze(teacher)

    def step(x, y, progress, i):
        zs = model(x)
        with torch.no_grad():
            zt = teacher(x)
        ce, kd = F.cross_entropy(zs, y), soft_target_loss(zs, zt, temperature)
        return (1 - alpha) * ce + alpha * kd, {
            "loss": ce.detach(),
            "kd": kd.detach(),
            "agreement": _agreement(zs, zt),
        }

    return Method(step=step)


def jacobian_matching(
    model: nn.Module,
    *,
    num_classes: int,
    input_shape: tuple,
    teacher: nn.Module,
    eps: float | None = None,
    beta: float,
    temperature: float,
    alpha: float,
    grad_mode: str,
    match: str,
) -> Method:
    """Srinivas & Fleuret's objective: soft targets ((1 - alpha) CE + alpha tau^2 KL, as
    `soft_targets`) plus beta times the squared distance of the normalised input Jacobians; alpha = 0
    is the gradient term on plain cross entropy alone. match logit (theirs, the default): the
    Jacobian row of the true class's output activation, d z_y / dx, for student and teacher alike;
    match ce (a variant): the input gradient of each one's cross entropy, J^T (p - e_y), which mixes
    each network's own softmax error into the matched tensor."""
    _freeze(teacher)
    of = {"logit": "logit", "ce": "label"}.get(match)
    if of is None:
        raise ValueError(f"match: unknown {match!r} (allowed: logit, ce)")

    def step(x, y, progress, i):
        zs, gs = logits_and_input_grad(model, x, y, grad_mode=grad_mode, grad_of=of, create_graph=True)
        zt, gt = logits_and_input_grad(teacher, x, y, grad_mode="eval", grad_of=of)
        ce = F.cross_entropy(zs, y, reduction="none")
        a, b = F.normalize(gs.flatten(1), dim=1), F.normalize(gt.detach().flatten(1), dim=1)
        match_l2 = (a - b).pow(2).sum(1).mean()
        kd = soft_target_loss(zs, zt.detach(), temperature)
        task = (1 - alpha) * ce.mean() + alpha * kd
        return task + beta * match_l2, {
            "loss": ce.mean().detach(),
            "kd": kd.detach(),
            "jacobian_l2": match_l2.detach(),
            "agreement": _agreement(zs.detach(), zt.detach()),
            **_grad_stats(gs, gt),
        }

    return Method(step=step)


def _great(
    model,
    *,
    num_classes,
    input_shape,
    teacher,
    soft: bool,
    temperature: float,
    alpha: float,
    lam: float,
    lam_schedule: str,
    warmup: float,
    adv_every: int,
    grad_norm: str,
    aux_arch: str,
    aux_width: int,
    aux_lr: float,
    grad_wrt: str,
    grad_mode: str,
) -> Method:
    _freeze(teacher)
    shape = tuple(input_shape) if grad_wrt == "input" else (num_classes,)
    disc = aux_net(shape, 1, arch=aux_arch, width=aux_width)

    def step(x, y, progress, i):
        lam_now = lam_at(progress, lam=lam, schedule=lam_schedule, warmup=warmup)
        reverse = lam_now > 0 and i % adv_every == 0
        zs, ce, gs = _grads(model, x, y, wrt=grad_wrt, create_graph=reverse, grad_mode=grad_mode)
        zt, _, gt = _grads(teacher, x, y, wrt=grad_wrt, create_graph=False)
        gs_n = normalize_grad(gs if reverse else gs.detach(), grad_norm)
        gt_n = normalize_grad(gt.detach(), grad_norm)
        d_s = disc(grad_reverse(gs_n, lam_now) if reverse else gs_n).squeeze(1)  # N: logit "teacher"
        d_t = disc(gt_n).squeeze(1)
        ones, zeros = torch.ones_like(d_t), torch.zeros_like(d_s)
        d_loss = F.binary_cross_entropy_with_logits(torch.cat([d_t, d_s]), torch.cat([ones, zeros]))
        task = ce.mean()
        metrics = {
            "loss": task.detach(),
            "aux_loss": d_loss.detach(),
            "lam": lam_now,
            "aux_chance": 0.5,
            "aux_acc": torch.cat([d_t > 0, d_s <= 0]).float().mean(),
            "agreement": _agreement(zs.detach(), zt.detach()),
            **_grad_stats(gs, gt),
        }
        if soft:
            kd = soft_target_loss(zs, zt.detach(), temperature)
            task = (1 - alpha) * task + alpha * kd
            metrics["kd"] = kd.detach()
        return task + d_loss, metrics

    return Method(step=step, aux={"aux": disc}, aux_lr=aux_lr, plays=True)


def great(
    model: nn.Module,
    *,
    num_classes: int,
    input_shape: tuple,
    teacher: nn.Module,
    eps: float | None = None,
    lam: float,
    lam_schedule: str,
    warmup: float,
    adv_every: int,
    grad_norm: str,
    aux_arch: str,
    aux_width: int,
    aux_lr: float,
    grad_wrt: str,
    grad_mode: str,
) -> Method:
    return _great(
        model,
        num_classes=num_classes,
        input_shape=input_shape,
        teacher=teacher,
        soft=False,
        temperature=1.0,
        alpha=0.0,
        lam=lam,
        lam_schedule=lam_schedule,
        warmup=warmup,
        adv_every=adv_every,
        grad_norm=grad_norm,
        aux_arch=aux_arch,
        aux_width=aux_width,
        aux_lr=aux_lr,
        grad_wrt=grad_wrt,
        grad_mode=grad_mode,
    )


def great_soft_targets(
    model: nn.Module,
    *,
    num_classes: int,
    input_shape: tuple,
    teacher: nn.Module,
    eps: float | None = None,
    temperature: float,
    alpha: float,
    lam: float,
    lam_schedule: str,
    warmup: float,
    adv_every: int,
    grad_norm: str,
    aux_arch: str,
    aux_width: int,
    aux_lr: float,
    grad_wrt: str,
    grad_mode: str,
) -> Method:
    return _great(
        model,
        num_classes=num_classes,
        input_shape=input_shape,
        teacher=teacher,
        soft=True,
        temperature=temperature,
        alpha=alpha,
        lam=lam,
        lam_schedule=lam_schedule,
        warmup=warmup,
        adv_every=adv_every,
        grad_norm=grad_norm,
        aux_arch=aux_arch,
        aux_width=aux_width,
        aux_lr=aux_lr,
        grad_wrt=grad_wrt,
        grad_mode=grad_mode,
    )
