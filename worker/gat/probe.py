"""The gradient-information probe: how much of the label a fresh classifier can read from the
model's input gradients, the tensor an attacker (and GAT's auxiliary network) sees.

The in-loop auxiliary network is a poor judge of GAT's success: it is trained against a moving
target and for a few steps at a time. The probe trains a new classifier, after training, on the
eval-mode input gradients of the train split and scores it on the test split against chance
(the most frequent test label). A probe near chance means the gradients carry no class
information; near 100 % means they give the class away, whatever A's accuracy said.
"""

from __future__ import annotations

import torch
from sklearn.neural_network import MLPClassifier
from torch import nn

from . import data as gdata
from .losses import task_loss
from .stats import input_grad, wilson

MAX_TRAIN = 5000
MAX_TEST = 2000


def _grads(model: nn.Module, split: gdata.Split, n: int, device: torch.device, seed: int, bs: int = 256):
    """Unit-L2 input gradients (zero stays zero) of `n` examples drawn with `seed`, and their labels."""
    idx = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:n]
    out = []
    for i in range(0, len(idx), bs):
        x = split.images(idx[i : i + bs]).to(device)
        g = input_grad(model, x, split.y[idx[i : i + bs]].to(device)).flatten(1)
        out.append(g / g.norm(dim=1, keepdim=True).clamp_min(1e-30))
    return torch.cat(out).cpu().double().numpy(), split.y[idx].numpy()


def _fit_score(g_tr, y_tr, g_te, y_te, seed: int) -> tuple[int, int]:
    probe = MLPClassifier(hidden_layer_sizes=(128,), max_iter=400, random_state=seed)
    probe.fit(g_tr * g_tr.shape[1] ** 0.5, y_tr)  # unit vectors scaled to unit-size entries
    return int((probe.predict(g_te * g_te.shape[1] ** 0.5) == y_te).sum()), len(y_te)


def gradient_probe(model: nn.Module, data: gdata.Data, *, device: torch.device, seed: int = 0) -> dict:
    """Train a one-hidden-layer probe on train-split gradients; its test accuracy with a 95 % interval."""
    was_training = model.training
    model.eval()
    try:
        g_tr, y_tr = _grads(model, data.train, MAX_TRAIN, device, seed)
        g_te, y_te = _grads(model, data.test, MAX_TEST, device, seed)
    finally:
        model.train(was_training)
    k, n = _fit_score(g_tr, y_tr, g_te, y_te, seed)
    lo, hi = wilson(k, n)
    counts = torch.bincount(torch.as_tensor(y_te))
    return {
        "accuracy": k / n,
        "ci": [lo, hi],
        "n_test": n,
        "n_train": len(y_tr),
        "chance": counts.max().item() / n,
        "classifier": "MLP (128 hidden units) on unit-L2 eval-mode input gradients",
    }


def _unit(g: torch.Tensor):
    g = g.detach().flatten(1)
    return (g / g.norm(dim=1, keepdim=True).clamp_min(1e-30)).cpu().double().numpy()


def origin_probe(train: list[torch.Tensor], test: list[torch.Tensor], *, seed: int = 0) -> dict:
    """How well a fresh classifier tells gradients of different origins apart (origin k: the k-th
    tensor of each list, N_k x ...): its test accuracy with a 95 % interval, against chance (the
    largest origin's share). This is GAT's game scored after the fact: near chance, it was won."""
    import numpy as np

    g_tr, g_te = np.concatenate([_unit(g) for g in train]), np.concatenate([_unit(g) for g in test])
    y_tr = np.concatenate([np.full(len(g), k) for k, g in enumerate(train)])
    y_te = np.concatenate([np.full(len(g), k) for k, g in enumerate(test)])
    k, n = _fit_score(g_tr, y_tr, g_te, y_te, seed)
    return {"accuracy": k / n, "ci": list(wilson(k, n)), "n_test": n, "chance": max(len(g) for g in test) / n}


def task_gradients(
    model: nn.Module, data: gdata.Data, split: gdata.Split, device: torch.device, n: int = 1000
):
    """Per-task gradients dL_t/dF at the shared features of up to n examples, in eval mode: one
    tensor per task (N x D), the tensors the multi-task GALs' auxiliary network classifies."""
    was = model.training
    model.eval()
    idx = torch.arange(min(n, len(split)))
    x, targets = split.images(idx).to(device), data.targets(split, idx)
    f = model.encoder(x).detach().requires_grad_(True)
    out = [
        torch.autograd.grad(task_loss(model.heads[t](f), targets[t].to(device), spec), f)[0]
        for t, spec in data.tasks.items()
    ]
    model.train(was)
    return out


def task_probe(model: nn.Module, data: gdata.Data, *, device: torch.device, seed: int = 0) -> dict:
    """The multi-task game after training: task id read from per-task gradients (train -> test)."""
    return origin_probe(
        task_gradients(model, data, data.train, device),
        task_gradients(model, data, data.test, device),
        seed=seed,
    )


def teacher_student_probe(student: nn.Module, teacher: nn.Module, data: gdata.Data, *, device: torch.device,
                          seed: int = 0) -> dict:  # fmt: skip
    """The distillation game after training: teacher vs student read from eval-mode input gradients."""
    was = student.training
    student.eval()
    try:
        sides = [
            [_split_grads(m, s, device, seed) for m in (teacher, student)] for s in (data.train, data.test)
        ]
    finally:
        student.train(was)
    return origin_probe(*sides, seed=seed)


def _split_grads(model: nn.Module, split: gdata.Split, device: torch.device, seed: int, n: int = 1000):
    idx = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:n]
    return input_grad(model, split.images(idx).to(device), split.y[idx].to(device))
