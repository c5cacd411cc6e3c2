import copy
import inspect

import pytest
import torch
import torch.nn.functional as F

from labcore.run_config import PARAMS, TRAINER_KNOBS
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


def test_every_registered_method_is_declared_in_the_schema_and_back():
    """A method the core registers but the schema does not declare (or the reverse) could be
    neither submitted nor trained: the two lists are one."""
    assert set(registry()) == set(PARAMS)


@pytest.mark.parametrize("key", sorted(PARAMS))
def test_each_knob_is_declared_once_in_the_schema(key):
    """The factories take every declared knob and give none a default: the schema's default is
    the only one, read by the API, the form, `gatlab methods` and (through `make`) the core."""
    sig = inspect.signature(registry()[key]).parameters
    for name in PARAMS[key].model_fields:
        if name in TRAINER_KNOBS or name == "eps":  # the teacher's knobs are the trainer's; eps is context
            continue
        assert name in sig, f"{key}: knob {name} unknown to the core"
        assert sig[name].default is inspect.Parameter.empty, f"{key}.{name}: a second default in the core"


def test_make_refuses_a_knob_the_method_does_not_declare(synthetic):
    model = small_cnn(synthetic)
    kw = {"num_classes": synthetic.num_classes, "input_shape": synthetic.input_shape, "eps": 0.1}
    make("defense", "pgd_at", model, steps=3, **kw)
    with pytest.raises(ValueError, match="params of defense:pgd_at: stepz"):
        make("defense", "pgd_at", model, stepz=3, **kw)
    with pytest.raises(ValueError, match="lam"):
        make("defense", "erm", model, lam=0.5, **kw)


def _eval_mode_grad(model, x, y):
    """The input gradient an attacker takes (model.eval(), cross entropy with the label) after the
    step's training forward has moved BatchNorm's running statistics, on a copy of the model."""
    model = copy.deepcopy(model).train()
    with torch.no_grad():
        model(x)
    model.eval()
    xe = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(xe), y, reduction="sum"), xe)
    model.train()
    return g


def _seen_by_aux(method, x, y):
    """What A is fed in one step (the first call: the main network's gradient)."""
    seen = []
    hook = method.aux["aux"].register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach()))
    method.step(x, y, 0.5, 0)
    hook.remove()
    return seen[0]


@pytest.mark.parametrize("method_name", ["great", "greace", "great+greace"])
def test_defense_gradient_seen_by_a_is_the_eval_mode_input_gradient(method_name, synthetic):
    """By default A classifies the tensor FGSM/PGD use (BatchNorm on running statistics); the
    knob grad_mode=train gives the batch-statistics gradient, which differs."""
    from worker.gat.adversary import normalize_grad

    x, y = synthetic.train.images()[:64], synthetic.train.y[:64]
    model = small_cnn(synthetic)
    kw = {"num_classes": synthetic.num_classes, "input_shape": synthetic.input_shape}
    for _, xb, _ in gdata.batches(synthetic.train, 64, shuffle=True, seed=0):  # running stats != batch stats
        model(xb)
    model.train()
    want = normalize_grad(_eval_mode_grad(model, x, y), "l2")
    running = model[2].running_mean.clone()  # the first BatchNorm after Normalize and the conv
    seen = _seen_by_aux(make("defense", method_name, model, **kw), x, y)
    assert torch.allclose(seen, want, atol=1e-5)
    assert model.training, "the step must leave the model in train mode"
    assert not torch.equal(model[2].running_mean, running), "the task loss must still train BatchNorm"
    want = normalize_grad(_eval_mode_grad(model, x, y), "l2")  # the first step moved the running stats
    seen_train = _seen_by_aux(make("defense", method_name, model, grad_mode="train", **kw), x, y)
    cos = F.cosine_similarity(seen_train.flatten(1), want.flatten(1), dim=1)
    assert cos.min() < 0.99, "train-mode gradients should differ from eval-mode ones on a BatchNorm model"


def test_igr_penalises_the_eval_mode_gradient(synthetic):
    x, y = synthetic.train.images()[:64], synthetic.train.y[:64]
    model = small_cnn(synthetic)
    for _, xb, _ in gdata.batches(synthetic.train, 64, shuffle=True, seed=0):
        model(xb)
    want = _eval_mode_grad(model, x, y).flatten(1).pow(2).sum(1).mean()
    kw = {"num_classes": synthetic.num_classes, "input_shape": synthetic.input_shape}
    _, m = make("defense", "igr", model, **kw).step(x, y, 0.5, 0)
    assert torch.allclose(m["grad_penalty"], want, rtol=1e-4)
    _, m = make("defense", "igr", model, grad_mode="train", **kw).step(x, y, 0.5, 0)
    assert not torch.allclose(m["grad_penalty"], want, rtol=1e-2)


@pytest.mark.parametrize("grad_of", ["predicted", "margin"])
def test_label_free_gradients_ignore_the_label(grad_of, synthetic):
    """grad_of predicted/margin: A's input does not change when the labels are shuffled; label does."""
    x, y = synthetic.train.images()[:64], synthetic.train.y[:64]
    kw = {"num_classes": synthetic.num_classes, "input_shape": synthetic.input_shape}
    model = small_cnn(synthetic).eval()
    other = (y + 1) % synthetic.num_classes
    free = make("defense", "great", model, grad_of=grad_of, **kw)
    assert torch.allclose(_seen_by_aux(free, x, y), _seen_by_aux(free, x, other), atol=1e-6)
    labelled = make("defense", "great", model, **kw)
    assert not torch.allclose(_seen_by_aux(labelled, x, y), _seen_by_aux(labelled, x, other), atol=1e-3)


def test_an_unknown_method_is_refused_with_every_method_the_core_has():
    with pytest.raises(ValueError) as e:
        make("defense", "magic", torch.nn.Linear(2, 2), num_classes=2, input_shape=(2,))
    assert str(e.value) == "method: unknown defense:magic (allowed: {})".format(
        ", ".join(f"{s}:{m}" for s, m in registry())
    )
    assert "defense:great" in str(e.value) and "multitask:gradnorm" in str(e.value)


@pytest.mark.parametrize("method_name,loss_passes", [("fgsm_at", 1), ("pgd_at", 1), ("trades", 2)])
def test_training_attacks_craft_in_eval_mode_and_never_move_batchnorm_statistics(
    method_name, loss_passes, synthetic
):
    """One rule for every training attack: its examples are crafted in eval mode, so BatchNorm's
    running statistics are updated only by the loss's own train-mode passes (one per batch the loss
    sees: the adversarial batch, and for TRADES the clean one too), never by an attack step; the
    model is back in train mode for the loss."""
    model = small_cnn(synthetic).train()
    method = make("defense", method_name, model, num_classes=4, input_shape=synthetic.input_shape, eps=0.1)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    modes = []
    model.register_forward_pre_hook(lambda m, args: modes.append(m.training))
    x, y = synthetic.train.images()[:32], synthetic.train.y[:32]
    before = [int(b.num_batches_tracked) for b in bns]
    method.step(x, y, 0.5, 0)
    assert [int(b.num_batches_tracked) - n for b, n in zip(bns, before, strict=True)] == [loss_passes] * len(
        bns
    )
    assert modes.count(True) == loss_passes and modes[-loss_passes:] == [True] * loss_passes
    assert model.training
