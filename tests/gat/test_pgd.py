"""Our attacks against a written-out reference: each step, each random start, each restart's choice
and the noise floor are computed here by hand and must match what attacks/pgd.py returns. Tests
that only check an attack's outcome (its ball, a drop in accuracy) pass for many wrong attacks."""

import pytest
import torch
import torch.nn.functional as F

from worker.gat.attacks import ATTACKS, pick_target
from worker.gat.attacks.pgd import _loss, fgsm, margin_loss, pgd


def _batch(d, n=48):
    return d.test.images()[:n], d.test.y[:n]


def _box(x, delta):
    return (x + delta).clamp(0, 1) - x


def _l2(v):
    return v.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)


def _one_try(model, x, y, *, eps, norm, steps, step_size, start, kind="ce", target=None):
    """One run of PGD from `start`: signed (L-inf) or normalised (L2) gradient steps on the summed
    loss, each followed by the projection onto the ball and the box."""
    delta = start
    for _ in range(steps):
        delta = delta.detach().requires_grad_(True)
        logits = model(x + delta)
        if target is None:
            obj = (
                F.cross_entropy(logits, y, reduction="sum") if kind == "ce" else margin_loss(logits, y).sum()
            )
        else:
            obj = -F.cross_entropy(logits, target, reduction="sum")
        (g,) = torch.autograd.grad(obj, delta)
        if norm == "linf":
            delta = _box(x, (delta.detach() + step_size * g.sign()).clamp(-eps, eps))
        else:
            d = delta.detach() + step_size * g / _l2(g)
            delta = _box(x, d * (eps / _l2(d)).clamp(max=1.0))
    return x + delta.detach()


def _start(x, eps, norm):
    """The random start, drawn from torch's global generator as the attack draws it: L2 at a
    radius uniform in [0, eps], not uniform in the ball's volume (almost all on its surface)."""
    if norm == "linf":
        return _box(x, (torch.rand_like(x) * 2 - 1) * eps)
    d = torch.randn_like(x)
    r = torch.rand(len(x), 1, 1, 1)
    u = d / _l2(d) * eps * r
    return _box(x, u * (eps / _l2(u)).clamp(max=1.0))


def test_the_loss_of_each_kind_and_direction():
    torch.manual_seed(0)
    logits, y, t = torch.randn(6, 5), torch.randint(0, 5, (6,)), torch.randint(0, 5, (6,))
    assert torch.equal(_loss(logits, y, None, "ce"), F.cross_entropy(logits, y, reduction="none"))
    assert torch.equal(_loss(logits, y, None, "margin"), margin_loss(logits, y))
    assert torch.equal(_loss(logits, y, t, "ce"), -F.cross_entropy(logits, t, reduction="none"))
    assert torch.equal(_loss(logits, y, t, "margin"), -margin_loss(logits, t))
    z = torch.tensor([[1.0, 3.0, 2.0]])
    assert margin_loss(z, torch.tensor([0])).item() == 2.0  # the best other class minus the true one


def test_pgd_is_projected_gradient_ascent_from_a_uniform_start(digits, digits_model):
    """Madry et al.'s PGD with the default step 2.5 eps / steps (Madry's rule of thumb)."""
    x, y = _batch(digits)
    torch.manual_seed(3)
    start = _start(x, 0.05, "linf")
    want = _one_try(digits_model, x, y, eps=0.05, norm="linf", steps=5, step_size=2.5 * 0.05 / 5, start=start)
    torch.manual_seed(3)
    got = pgd(digits_model, x, y, eps=0.05, norm="linf", steps=5)
    assert torch.allclose(got, want, atol=1e-6)


def test_l2_pgd_starts_at_the_clean_image_then_at_random_radii(digits, digits_model):
    """L2: the first try from the clean image, later restarts from a uniform direction at a radius
    uniform in [0, eps]; the first fooling try kept, else the highest loss."""
    x, y = _batch(digits)
    eps, steps = 0.5, 2
    step = 2.5 * eps / steps
    torch.manual_seed(3)
    first = _one_try(
        digits_model, x, y, eps=eps, norm="l2", steps=steps, step_size=step, start=torch.zeros_like(x)
    )
    second = _one_try(
        digits_model, x, y, eps=eps, norm="l2", steps=steps, step_size=step, start=_start(x, eps, "l2")
    )
    torch.manual_seed(3)
    alone = pgd(digits_model, x, y, eps=eps, norm="l2", steps=steps)
    assert torch.allclose(alone, first, atol=1e-6)
    torch.manual_seed(3)
    got = pgd(digits_model, x, y, eps=eps, norm="l2", steps=steps, restarts=2)
    assert torch.allclose(got, _first_fooling_else_highest_loss(digits_model, y, [first, second]), atol=1e-6)


def test_l2_pgd_is_no_weaker_than_a_reference_pgd_l2(digits, digits_model):
    """At the standard L2 eps, over 5 seeds, no more accuracy left than a PGD-L2 written as the
    independent libraries write it (torchattacks, advertorch: a random start at a radius uniform in
    [0, eps]) with the same steps, within one example in 200. A start uniform in the ball's volume
    (which in 64 dimensions lies on its surface) left ~3 examples more."""
    x, y = digits.test.images()[:200], digits.test.y[:200]
    eps, steps = 0.5, 10

    def acc(adv):
        with torch.no_grad():
            return (digits_model(adv).argmax(1) == y).float().mean().item()

    ref, lab = [], []
    for seed in range(5):
        torch.manual_seed(seed)
        start = _start(x, eps, "l2")
        ref.append(
            acc(
                _one_try(
                    digits_model,
                    x,
                    y,
                    eps=eps,
                    norm="l2",
                    steps=steps,
                    step_size=2.5 * eps / steps,
                    start=start,
                )
            )
        )
        lab.append(acc(ATTACKS["pgd_l2"][1](digits_model, x, y, eps=eps, seed=seed, steps=steps)))
    assert sum(lab) / 5 <= sum(ref) / 5 + 0.005, (lab, ref)


def test_fgsm_and_iterative_fgsm_take_the_papers_steps(digits, digits_model):
    x, y = _batch(digits)
    zero = torch.zeros_like(x)
    one = _one_try(digits_model, x, y, eps=0.05, norm="linf", steps=1, step_size=0.05, start=zero)
    assert torch.allclose(fgsm(digits_model, x, y, eps=0.05), one, atol=1e-6)
    assert torch.allclose(ATTACKS["fgsm"][1](digits_model, x, y, eps=0.05, seed=0), one, atol=1e-6)
    it = _one_try(digits_model, x, y, eps=0.05, norm="linf", steps=4, step_size=1.25 * 0.05 / 4, start=zero)
    assert torch.allclose(ATTACKS["ifgsm"][1](digits_model, x, y, eps=0.05, seed=0, steps=4), it, atol=1e-6)


def _first_fooling_else_highest_loss(model, y, tries, target=None):
    """Per example: the first try that fools the model (reaches the target), else the try of highest
    loss, the earliest of equals."""
    out = tries[0].clone()
    with torch.no_grad():
        logits = [model(t) for t in tries]
    for i in range(len(y)):
        if target is None:
            won = [int(z[i].argmax() != y[i]) for z in logits]
            loss = [F.cross_entropy(z[i : i + 1], y[i : i + 1]).item() for z in logits]
        else:
            won = [int(z[i].argmax() == target[i]) for z in logits]
            loss = [-F.cross_entropy(z[i : i + 1], target[i : i + 1]).item() for z in logits]
        pick = won.index(1) if 1 in won else max(range(len(tries)), key=lambda j: (loss[j], -j))
        out[i] = tries[pick][i]
    return out


@pytest.mark.parametrize("targeted", [False, True])
def test_restarts_keep_the_first_fooling_try_else_the_highest_loss(targeted, digits, digits_model):
    x, y = digits.test.images(), digits.test.y
    target = pick_target("random", digits_model, x, y, 0) if targeted else None
    eps, steps = 0.05, 1  # one step from a random start: some examples fooled by one try, not another
    torch.manual_seed(5)
    tries = [
        _one_try(
            digits_model, x, y, eps=eps, norm="linf", steps=steps, step_size=2.5 * eps / steps,
            start=_start(x, eps, "linf"), target=target,
        )
        for _ in range(4)
    ]  # fmt: skip
    with torch.no_grad():
        pred = torch.stack([digits_model(t).argmax(1) for t in tries])
    hits = pred != y if target is None else pred == target
    assert (hits.any(0) & ~hits.all(0)).sum() >= 5  # the tries disagree on some examples
    torch.manual_seed(5)
    got = pgd(digits_model, x, y, eps=eps, steps=steps, restarts=4, target=target)
    assert torch.allclose(got, _first_fooling_else_highest_loss(digits_model, y, tries, target), atol=1e-6)


def test_pgd_over_the_whole_box_fools_every_example(digits, digits_model):
    """At eps 1 every image is allowed: a working attack fools (nearly) all."""
    x, y = _batch(digits, 64)
    torch.manual_seed(0)
    adv = pgd(digits_model, x, y, eps=1.0, steps=10)
    with torch.no_grad():
        assert (digits_model(adv).argmax(1) == y).float().mean() <= 0.05


def test_noise_keeps_the_first_draw_that_fools_else_the_first_draw(digits, digits_model):
    x, y = _batch(digits, 64)
    g = torch.Generator().manual_seed(4)
    draws = [(x + (torch.rand(x.shape, generator=g) * 2 - 1) * 0.3).clamp(0, 1) for _ in range(6)]
    with torch.no_grad():
        hits = torch.stack([digits_model(d).argmax(1) != y for d in draws])
    assert (hits.any(0) & ~hits[0]).sum() >= 3  # later draws fool examples the first did not
    want = torch.stack([draws[int(h.nonzero()[0]) if h.any() else 0][i] for i, h in enumerate(hits.T)])
    assert torch.equal(ATTACKS["noise"][1](digits_model, x, y, eps=0.3, seed=4, draws=6), want)


def test_a_random_target_is_any_class_but_the_true_one():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4))
    x, y = torch.rand(400, 1, 8, 8), torch.randint(0, 4, (400,))
    t = pick_target("random", model, x, y, seed=1)
    assert (t != y).all()
    assert sorted(((t - y) % 4).unique().tolist()) == [1, 2, 3]  # every other class drawn
    with torch.no_grad():
        assert torch.equal(pick_target("least_likely", model, x, y, seed=1), model(x).argmin(1))
