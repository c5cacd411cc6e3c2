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


@pytest.mark.parametrize(
    "shape,conv",
    [
        ((1, 8, 8), True),
        ((3, 32, 32), True),
        ((1, 4, 4), True),
        ((1, 3, 8), False),
        ((1, 3, 3), False),
        ((10,), False),
    ],
)
def test_aux_net_auto_picks_a_cnn_for_images_of_side_four_or_more(shape, conv):
    a = aux_net(shape, 7)
    assert any(isinstance(m, torch.nn.Conv2d) for m in a.modules()) == conv
    assert a(torch.randn(2, *shape)).shape == (2, 7)
    wide = aux_net(shape, 7, width=5)
    first = next(m for m in wide.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    assert first.out_features == 20 if not conv else first.out_channels == 5


def test_gradient_losses_by_hand():
    from worker.gat.adversary import _gradient_loss

    z = torch.tensor([[2.0, 0.5, 1.0], [0.0, 3.0, -1.0]])
    y = torch.tensor([2, 0])
    lp = z.log_softmax(1)
    assert torch.allclose(_gradient_loss(z, y, "label"), -(lp[0, 2] + lp[1, 0]))  # summed, not averaged
    assert torch.allclose(_gradient_loss(z, y, "predicted"), -(lp[0, 0] + lp[1, 1]))
    assert torch.allclose(_gradient_loss(z, y, "margin"), torch.tensor((2.0 - 1.0) + (3.0 - 0.0)))
    with pytest.raises(ValueError, match="grad_of"):
        _gradient_loss(z, y, "bogus")
    two = torch.tensor([[1.0, -1.0], [0.5, 2.0]])  # two classes: the margin of the top two is all there is
    assert torch.allclose(_gradient_loss(two, torch.tensor([0, 0]), "margin"), torch.tensor(2.0 + 1.5))


def test_input_gradient_defaults_to_eval_mode_without_a_graph():
    from worker.gat.adversary import logits_and_input_grad

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6), torch.nn.Linear(6, 3)
    )
    x, y = torch.rand(8, 1, 2, 2), torch.randint(0, 3, (8,))
    model(x)  # running statistics differ from this batch's
    model.train()
    logits, g = logits_and_input_grad(model, x, y)
    assert not g.requires_grad and logits.requires_grad and model.training
    model.eval()
    xe = x.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(torch.nn.functional.cross_entropy(model(xe), y, reduction="sum"), xe)
    model.train()
    assert torch.allclose(g, want, atol=1e-6)
    _, g_train = logits_and_input_grad(model, x, y, grad_mode="train", create_graph=True)
    assert g_train.requires_grad and not torch.allclose(g_train, want, atol=1e-4)
    with pytest.raises(ValueError, match="grad_mode"):
        logits_and_input_grad(model, x, y, grad_mode="bogus")


def test_aux_cnn_is_the_documented_smooth_downsampling_net():
    """A for images: conv 3x3 (same size), ELU, conv 3x3 stride 2 doubling the width, ELU, pooled to
    2 x 2, then linear; ELU (not ReLU) keeps A's input gradient smooth for the second-order game."""
    a = aux_net((1, 8, 8), 7, width=4)
    convs = [m for m in a if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding) for c in convs] == [
        (1, 4, (3, 3), (1, 1), (1, 1)),
        (4, 8, (3, 3), (2, 2), (1, 1)),
    ]
    assert [type(m).__name__ for m in a] == [
        "Conv2d", "ELU", "Conv2d", "ELU", "AdaptiveAvgPool2d", "Flatten", "Linear",
    ]  # fmt: skip
    assert a[4].output_size == 2 and a[-1].in_features == 8 * 4
    assert aux_net((1, 8, 8), 7)[0].out_channels == 32  # the default width
    mlp = aux_net((10,), 3, width=4)
    assert [type(m).__name__ for m in mlp] == ["Flatten", "Linear", "ELU", "Linear"]
    assert (mlp[1].in_features, mlp[1].out_features, mlp[3].out_features) == (10, 16, 3)
