import math

import pytest
import torch

from worker.gat.adversary import aux_net, grad_reverse, lam_at, normalize_grad


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0, 3.0])
def test_reversal_is_identity_forward_and_flips_scaled_gradient(lam):
    x = torch.randn(4, 3, requires_grad=True)
    out = grad_reverse(x, lam)
    assert torch.equal(out, x)
    w = torch.randn(4, 3)
    (out * w).sum().backward()
    assert torch.allclose(x.grad, -lam * w)


def test_reversal_defaults_to_lambda_one():
    x = torch.randn(4, 3, requires_grad=True)
    grad_reverse(x).sum().backward()
    assert torch.equal(x.grad, -torch.ones(4, 3))


def test_normalisations():
    g = torch.randn(5, 1, 8, 8) * torch.tensor([1e-6, 1.0, 10.0, 1e3, 2.0]).view(5, 1, 1, 1)
    l2 = normalize_grad(g, "l2").flatten(1)
    assert torch.allclose(l2.pow(2).mean(1), torch.ones(5), atol=1e-4)  # unit RMS
    st = normalize_grad(g, "standardize").flatten(1)
    assert torch.allclose(st.mean(1), torch.zeros(5), atol=1e-4)
    assert torch.allclose(st.std(1), torch.ones(5), atol=1e-4)
    assert torch.equal(normalize_grad(g, "none"), g)
    with pytest.raises(ValueError, match="grad_norm"):
        normalize_grad(g, "bogus")


def test_lambda_schedules():
    assert lam_at(0.3, lam=2.0, schedule="constant") == 2.0
    assert lam_at(0.05, lam=2.0, schedule="warmup", warmup=0.1) == pytest.approx(1.0)
    assert lam_at(0.5, lam=2.0, schedule="warmup", warmup=0.1) == 2.0
    assert lam_at(0.05, lam=2.0, schedule="warmup") == pytest.approx(1.0)  # warm-up over 10 % by default
    assert lam_at(0.0, lam=1.0, schedule="dann") == 0.0
    assert lam_at(1.0, lam=1.0, schedule="dann") == pytest.approx(2 / (1 + math.exp(-10)) - 1)
    ramp = [lam_at(p / 10, lam=1.0, schedule="dann") for p in range(11)]
    assert ramp == sorted(ramp)


@pytest.mark.parametrize(
    "shape,arch", [((1, 8, 8), "cnn"), ((3, 32, 32), "cnn"), ((10,), "mlp"), ((1, 8, 8), "mlp")]
)
def test_aux_net_shapes(shape, arch):
    a = aux_net(shape, 7, arch="auto" if arch == "cnn" else arch)
    assert a(torch.randn(2, *shape)).shape == (2, 7)
