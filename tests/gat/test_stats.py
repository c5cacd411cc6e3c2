"""The gradient statistics every run records (worker/gat/stats.py), on tensors whose answers are
known by hand."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from worker.gat.stats import (
    HIST_BINS,
    class_stats,
    hist_edges,
    histogram,
    input_grad,
    layer_grad_norms,
    wilson,
)


def test_input_grad_is_each_examples_own_cross_entropy_gradient_detached():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x, y = torch.rand(5, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1])
    g = input_grad(model, x, y)
    for i in range(5):  # example i's gradient depends on its own loss only (the sum's gradient)
        xi = x[i : i + 1].clone().requires_grad_(True)
        (want,) = torch.autograd.grad(F.cross_entropy(model(xi), y[i : i + 1]), xi)
        assert torch.allclose(g[i : i + 1], want, atol=1e-6)
    assert not g.requires_grad and g.shape == x.shape and not x.requires_grad


def test_class_stats_on_gradients_known_by_hand():
    g = torch.tensor([[3.0, 4.0], [6.0, 8.0], [0.0, 2.0], [1.0, 0.0]])  # norms 5, 10, 2, 1
    y = torch.tensor([0, 0, 1, 2])
    out = class_stats(g, y, num_classes=4)
    assert out["grad_norm/class_0"] == pytest.approx(7.5)
    assert out["grad_norm/class_1"] == pytest.approx(2.0) and out["grad_norm/class_2"] == pytest.approx(1.0)
    assert "grad_norm/class_3" not in out  # no example of class 3 in the batch
    assert out["grad_norm/all"] == pytest.approx((5 + 10 + 2 + 1) / 4)
    assert out["cos/within"] == pytest.approx(1.0)  # the only same-class pair is parallel
    # between-class pairs (ordered, both ways): cosines of (3,4)/(6,8) with (0,1) 0.8, with (1,0) 0.6,
    # and (0,1) with (1,0) 0
    between = [0.8, 0.6, 0.8, 0.6, 0.0] * 2
    assert out["cos/between"] == pytest.approx(sum(between) / len(between))
    single = class_stats(g[2:], y[2:], num_classes=4)  # one example per class: no within-class pair
    assert "cos/within" not in single and single["cos/between"] == pytest.approx(0.0)
    same = class_stats(g[:2], y[:2], num_classes=4)
    assert "cos/between" not in same


def test_layer_grad_norms_reports_weight_matrices_that_have_gradients():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2), nn.BatchNorm1d(2))
    model[2].weight.requires_grad_(False)  # no gradient: not reported
    model(torch.randn(8, 3)).pow(2).sum().backward()
    out = layer_grad_norms(model)
    assert out == {"layer_grad/0": pytest.approx(model[0].weight.grad.norm().item())}  # no biases, no BN


def test_histogram_counts_normalised_entries_with_outliers_in_the_end_bins():
    edges = torch.linspace(-1, 1, 5)  # bins [-1,-.5) [-.5,0) [0,.5) [.5,1]
    g = torch.tensor([[-3.0, -0.75, -0.25, 0.25, 0.75, 9.0, 0.6]])
    assert histogram(g, "none", edges) == [2, 1, 1, 3]
    scaled = histogram(g * 1000, "l2", torch.linspace(-4, 4, 9))  # l2: the scale does not matter
    assert scaled == histogram(g, "l2", torch.linspace(-4, 4, 9)) and sum(scaled) == 7


def test_hist_edges_are_fixed_for_the_run():
    for mode, r in (("l2", 4.0), ("standardize", 4.0), ("none", 0.05)):
        e = hist_edges(mode)
        assert len(e) == HIST_BINS + 1 == 42 and e[0] == -r and e[-1] == r


def test_wilson_with_no_examples_says_nothing_and_takes_its_z():
    assert wilson(0, 0) == (0.0, 1.0)
    lo, hi = wilson(50, 100, z=2.576)  # 99 %: wider than the default 95 %
    lo95, hi95 = wilson(50, 100)
    assert lo < lo95 and hi > hi95
    p, n, z = 0.3, 200, 1.96
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert wilson(60, 200) == pytest.approx((centre - half, centre + half))
