import inspect

import pytest
import torch
import torch.nn.functional as F

from backend.run_config import PARAMS, TRAINER_KNOBS
from worker.gat import data as gdata
from worker.gat import models
from worker.gat.methods import make, registry
from worker.gat.methods.great import greace_loss
from worker.gat.train import aux_optimizer, train_step

from .conftest import small_cnn


def _mlp(d):
    torch.manual_seed(0)
    return models.build(
        {"arch": "mlp", "width": 8, "depth": 1},
        input_shape=d.input_shape,
        num_classes=d.num_classes,
        mean=d.mean,
        std=d.std,
    )


def _weight_grads(model, method, x, y):
    model.zero_grad()
    loss, _ = method.step(x, y, 0.5, 0)
    loss.backward()
    return [p.grad.clone() for p in model.parameters()]


def test_aux_loss_reaches_main_weights_through_second_order_gradients(synthetic):
    x, y = synthetic.train.images()[:32], synthetic.train.y[:32]
    kw = {"num_classes": synthetic.num_classes, "input_shape": synthetic.input_shape}
    model = _mlp(synthetic)
    plain = _weight_grads(model, make("defense", "erm", model, **kw), x, y)
    adv = _weight_grads(model, make("defense", "great", model, lam=1.0, **kw), x, y)
    off = _weight_grads(model, make("defense", "great", model, lam=0.0, **kw), x, y)
    assert any(not torch.allclose(a, p) for a, p in zip(adv, plain, strict=False)), "A's loss never reached f"
    assert all(torch.allclose(o, p, atol=1e-7) for o, p in zip(off, plain, strict=False)), (
        "lambda = 0 must leave f's gradient as CE's"
    )


def test_greace_with_beta_zero_is_cross_entropy():
    logits, y = torch.randn(16, 5), torch.randint(0, 5, (16,))
    q = torch.rand(16, 5).softmax(1)
    assert torch.allclose(greace_loss(logits, y, q, 0.0), F.cross_entropy(logits, y))
    assert greace_loss(logits, y, q, 2.0) > F.cross_entropy(logits, y)  # confused negatives cost more


@pytest.mark.parametrize("key", sorted(k for k in registry() if k[0] == "defense"))
def test_every_defense_method_trains_and_its_loss_falls(key, synthetic):
    model = small_cnn(synthetic)
    method = make(*key, model, num_classes=synthetic.num_classes, input_shape=synthetic.input_shape, eps=0.05)
    opt, aux_opt = torch.optim.Adam(model.parameters(), lr=1e-2), aux_optimizer(method)
    losses = []
    for epoch in range(10):
        for _, x, y in gdata.batches(synthetic.train, 64, shuffle=True, seed=epoch):
            _, metrics = train_step(method, opt, aux_opt, x, y, epoch / 10, len(losses))
            losses.append(float(metrics["loss"]))
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.5 * first, f"{key}: loss {first:.3f} -> {last:.3f}"


@pytest.mark.parametrize("key", sorted(PARAMS))
def test_schema_defaults_match_the_core(key):
    """The API's knob defaults are the factories' defaults: the two cannot drift apart."""
    sig = inspect.signature(registry()[key]).parameters
    for name, field in PARAMS[key].model_fields.items():
        if name in TRAINER_KNOBS:  # consumed by the trainer (the teacher), not the factory
            continue
        assert name in sig, f"{key}: knob {name} unknown to the core"
        assert sig[name].default == field.default, f"{key}.{name}: {sig[name].default} != {field.default}"


def test_trainer_knobs_are_the_cores_teacher_knobs():
    from worker.gat.train import TEACHER_KNOBS

    assert set(TEACHER_KNOBS) == TRAINER_KNOBS
