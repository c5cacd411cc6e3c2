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


def gradient_probe(model: nn.Module, data: gdata.Data, *, device: torch.device, seed: int = 0) -> dict:
    """Train a one-hidden-layer probe on train-split gradients; its test accuracy with a 95 % interval."""
    was_training = model.training
    model.eval()
    try:
        g_tr, y_tr = _grads(model, data.train, MAX_TRAIN, device, seed)
        g_te, y_te = _grads(model, data.test, MAX_TEST, device, seed)
    finally:
        model.train(was_training)
    probe = MLPClassifier(hidden_layer_sizes=(128,), max_iter=400, random_state=seed)
    probe.fit(g_tr * g_tr.shape[1] ** 0.5, y_tr)  # unit vectors scaled to unit-size entries
    k = int((probe.predict(g_te * g_te.shape[1] ** 0.5) == y_te).sum())
    n = len(y_te)
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
