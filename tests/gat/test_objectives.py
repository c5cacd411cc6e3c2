"""Each method's *total* objective, checked against an independent re-derivation of its formula:
the gradients the main network and the auxiliary modules receive, not the logged cross entropy.
A missing reversal layer, a dropped or mis-weighted term, or a wrong sign fails here."""

import math

import pytest
import torch
import torch.nn.functional as F

from worker.gat import data as gdata
from worker.gat import models
from worker.gat.attacks.pgd import pgd
from worker.gat.methods import make
from worker.gat.methods.multitask import project_conflicts


def _mlp(d, seed=0, width=8):
    torch.manual_seed(seed)
    return models.build(
        {"arch": "mlp", "width": width, "depth": 1},
        input_shape=d.input_shape,
        num_classes=d.num_classes,
        mean=d.mean,
        std=d.std,
    )


def _grads(loss, params):
    return torch.autograd.grad(loss, list(params), retain_graph=True, allow_unused=True)


def _close(got, want, atol=1e-6):
    for a, b in zip(got, want, strict=True):
        if a is None and b is None:
            continue
        a = torch.zeros_like(b) if a is None else a
        b = torch.zeros_like(a) if b is None else b
        assert torch.allclose(a, b, atol=atol, rtol=1e-4), (a - b).abs().max()


def _rms_normalise(g):  # the l2 normalisation, written out: unit RMS per example
    flat = g.flatten(1)
    return (flat * math.sqrt(flat.shape[1]) / flat.norm(dim=1, keepdim=True)).view_as(g)


def _input_grad(model, x, y, create_graph):
    xe = x.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(xe), y, reduction="sum"), xe, create_graph=create_graph)
    return g


def _greace_ref(z, y, q, beta):
    """-log(e^{z_y} / (e^{z_y} + sum_{j != y} (1 + beta q_j) e^{z_j})), batch mean."""
    w = 1 + beta * q
    w = w.scatter(1, y[:, None], 1.0)
    return -(z.gather(1, y[:, None]).squeeze(1) - (w * z.exp()).sum(1).log()).mean()


@pytest.fixture(scope="module")
def batch():
    d = gdata.load({"name": "synthetic", "size": 400})
    return d, d.train.images()[:32], d.train.y[:32]


def _defense(d, name, model, **knobs):
    return make("defense", name, model, num_classes=d.num_classes, input_shape=d.input_shape, **knobs)


@pytest.mark.parametrize("name,beta", [("great", 0.0), ("great+greace", 1.5)])
def test_great_main_network_descends_task_and_ascends_a(name, beta, batch):
    """f's gradient is the task loss's minus lambda times A's loss's (the reversal layer); A's own
    gradient is its loss's, unreversed. Without the reversal layer f would help A."""
    d, x, y = batch
    lam = 0.7
    model = _mlp(d)
    m = _defense(d, name, model, lam=lam, **({"beta": beta} if beta else {}))
    aux = m.aux["aux"]
    total, metrics = m.step(x, y, 0.5, 0)
    got_f, got_a = _grads(total, model.parameters()), _grads(total, aux.parameters())

    g = _rms_normalise(_input_grad(model, x, y, create_graph=True))
    a_logits = aux(g)
    a_loss = F.cross_entropy(a_logits, y)
    z = model(x)
    task = _greace_ref(z, y, a_logits.softmax(1).detach(), beta) if beta else F.cross_entropy(z, y)
    want_f = [t - lam * a for t, a in zip(_grads(task, model.parameters()), _grads(a_loss, model.parameters()),
                                          strict=True)]  # fmt: skip
    _close(got_f, want_f)
    _close(got_a, _grads(a_loss, aux.parameters()))
    assert torch.allclose(total, task + a_loss, atol=1e-6)
    assert metrics["lam"] == lam and torch.allclose(metrics["aux_loss"], a_loss)
    assert metrics["aux_acc"] == (a_logits.argmax(1) == y).float().mean()
    assert metrics["aux_chance"] == 1 / d.num_classes
    # The adversarial term really moves f: its share of the gradient is not negligible.
    assert sum((t - w).norm() for t, w in zip(want_f, _grads(task, model.parameters()), strict=True)) > 1e-3


def test_great_skips_the_game_between_adversarial_steps_and_follows_its_schedule(batch):
    d, x, y = batch
    model = _mlp(d)
    ce_grads = _grads(F.cross_entropy(model(x), y), model.parameters())
    m = _defense(d, "great", model, lam=0.7, adv_every=2)
    total, metrics = m.step(x, y, 0.5, 1)  # step 1 of every 2: A learns, f sees cross entropy only
    _close(_grads(total, model.parameters()), ce_grads)
    assert any(g is not None and g.abs().sum() > 0 for g in _grads(total, m.aux["aux"].parameters()))
    warm = _defense(d, "great", model, lam=0.7, lam_schedule="warmup", warmup=0.5)
    assert warm.step(x, y, 0.1, 0)[1]["lam"] == pytest.approx(0.7 * 0.1 / 0.5)
    assert warm.step(x, y, 0.9, 0)[1]["lam"] == pytest.approx(0.7)


def test_greace_alone_trains_f_on_the_greace_loss_and_a_on_detached_gradients(batch):
    d, x, y = batch
    model = _mlp(d)
    m = _defense(d, "greace", model, beta=1.0)  # the default; beta in (0, 1] must use GREACE too
    aux = m.aux["aux"]
    total, _ = m.step(x, y, 0.5, 0)
    a_logits = aux(_rms_normalise(_input_grad(model, x, y, create_graph=False)))
    task = _greace_ref(model(x), y, a_logits.softmax(1).detach(), 1.0)
    _close(_grads(total, model.parameters()), _grads(task, model.parameters()))
    _close(_grads(total, aux.parameters()), _grads(F.cross_entropy(a_logits, y), aux.parameters()))
    assert not torch.allclose(task, F.cross_entropy(model(x), y))  # beta > 0 changes the loss


def test_igr_adds_weight_times_the_squared_input_gradient(batch):
    d, x, y = batch
    model = _mlp(d)
    total, metrics = _defense(d, "igr", model, weight=0.3).step(x, y, 0.5, 0)
    g = _input_grad(model, x, y, create_graph=True)
    want = F.cross_entropy(model(x), y) + 0.3 * g.flatten(1).pow(2).sum(1).mean()
    assert torch.allclose(total, want, rtol=1e-5)
    _close(_grads(total, model.parameters()), _grads(want, model.parameters()))
    assert torch.allclose(metrics["loss"], F.cross_entropy(model(x), y))


def test_trades_is_ce_plus_beta_kl_at_its_own_attack(batch):
    """Zhang et al.'s objective, re-derived: KL attack from a small Gaussian start, frozen BN,
    `steps` signed steps of step_mult * eps / steps, projected; then CE + beta * KL(clean || adv)."""
    d, x, y = batch
    model = _mlp(d)
    eps, beta, steps = 0.1, 4.0, 5
    torch.manual_seed(1)
    total, metrics = _defense(d, "trades", model, eps=eps, beta=beta, steps=steps).step(x, y, 0.5, 0)
    torch.manual_seed(1)
    with torch.no_grad():
        p = model(x).softmax(1)
    xa = (x + 0.001 * torch.randn_like(x)).clamp(0, 1)
    for _ in range(steps):
        xa.requires_grad_(True)
        (gr,) = torch.autograd.grad((p * (p.log() - model(xa).log_softmax(1))).sum(), xa)
        xa = torch.min(torch.max(xa.detach() + 2.5 * eps / steps * gr.sign(), x - eps), x + eps).clamp(0, 1)
    z = model(x)
    ps = z.softmax(1)
    kl = (ps * (ps.log() - model(xa).log_softmax(1))).sum(1).mean()
    want = F.cross_entropy(z, y) + beta * kl
    assert kl > 1e-4 and torch.allclose(total, want, rtol=1e-4)
    _close(_grads(total, model.parameters()), _grads(want, model.parameters()), atol=1e-5)
    assert torch.allclose(metrics["robust_kl"], kl, rtol=1e-4)


@pytest.mark.parametrize(
    "name,knobs,steps,step",
    [
        ("pgd_at", {}, 10, 0.25),  # Madry et al.: 10 steps of 2.5 eps / 10 from a random start
        ("pgd_at", {"steps": 3, "step_mult": 1.5}, 3, 0.5),  # the knobs reach the attack
        ("fgsm_at", {}, 1, 1.25),  # Wong et al.: one step of 1.25 eps from a random start
        ("fgsm_at", {"alpha": 0.5}, 1, 0.5),
    ],
)
def test_adversarial_training_trains_on_the_attacked_batch(name, knobs, steps, step, batch):
    d, x, y = batch
    model = _mlp(d)
    eps = 0.1
    torch.manual_seed(3)
    total, _ = _defense(d, name, model, eps=eps, **knobs).step(x, y, 0.5, 0)
    torch.manual_seed(3)
    xa = pgd(model, x, y, eps=eps, steps=steps, step_size=step * eps, random_start=True)
    want = F.cross_entropy(model(xa), y)
    assert torch.allclose(total, want, rtol=1e-5) and total > F.cross_entropy(model(x), y) + 0.01


# Distillation -------------------------------------------------------------------------------


def _kd_ref(zs, zt, t):
    pt = (zt / t).softmax(1)
    return (pt * (pt.log() - (zs / t).log_softmax(1))).sum(1).mean() * t * t


def _distill(d, name, model, teacher, **knobs):
    return make(
        "distill", name, model, num_classes=d.num_classes, input_shape=d.input_shape, teacher=teacher, **knobs
    )


def test_soft_targets_mix_ce_and_tau_squared_kl(batch):
    d, x, y = batch
    model, teacher = _mlp(d, 0), _mlp(d, 1, width=16)
    total, metrics = _distill(d, "soft_targets", model, teacher, temperature=3.0, alpha=0.6).step(
        x, y, 0.5, 0
    )
    zs, zt = model(x), teacher(x)
    want = 0.4 * F.cross_entropy(zs, y) + 0.6 * _kd_ref(zs, zt, 3.0)
    assert torch.allclose(total, want, rtol=1e-5)
    assert metrics["agreement"] == (zs.argmax(1) == zt.argmax(1)).float().mean()


def _logit_jacobian(model, x, y, create_graph):
    """d z_y / dx per example: the input Jacobian row of the true class's output activation."""
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(x).gather(1, y[:, None]).sum(), x, create_graph=create_graph)
    return g


@pytest.mark.parametrize("match", ["logit", "ce", None])
def test_jacobian_matching_adds_beta_times_the_normalised_jacobian_distance(match, batch):
    """Srinivas & Fleuret match the Jacobians of the output activations, d z_y / dx (the default,
    None); the `ce` variant matches each network's cross-entropy gradient J^T (p - e_y)."""
    d, x, y = batch
    model, teacher = _mlp(d, 0), _mlp(d, 1, width=16)
    knobs = {"beta": 2.0, "temperature": 3.0, "alpha": 0.6, **({"match": match} if match else {})}
    total, metrics = _distill(d, "jacobian_matching", model, teacher, **knobs).step(x, y, 0.5, 0)
    zs, zt = model(x), teacher(x)
    jac = _input_grad if match == "ce" else _logit_jacobian
    a = F.normalize(jac(model, x, y, create_graph=True).flatten(1), dim=1)
    b = F.normalize(jac(teacher, x, y, create_graph=False).flatten(1), dim=1)
    match_l2 = (a - b).pow(2).sum(1).mean()
    want = 0.4 * F.cross_entropy(zs, y) + 0.6 * _kd_ref(zs, zt, 3.0) + 2.0 * match_l2
    assert match_l2 > 1e-3 and torch.allclose(total, want, rtol=1e-5)
    _close(_grads(total, model.parameters()), _grads(want, model.parameters()))
    assert torch.allclose(metrics["st_cos"], (a * b).sum(1).mean(), atol=1e-6)
    assert torch.allclose(metrics["st_l2"], (a - b).norm(dim=1).mean(), atol=1e-6)  # per example, then mean


@pytest.mark.parametrize("name", ["great", "great+soft_targets"])
def test_distill_great_student_fools_the_discriminator_through_the_reversal(name, batch):
    d, x, y = batch
    model, teacher = _mlp(d, 0), _mlp(d, 1, width=16)
    lam, alpha, t = 0.6, 0.5, 2.0
    knobs = {"lam": lam, **({"alpha": alpha, "temperature": t} if name != "great" else {})}
    m = _distill(d, name, model, teacher, **knobs)
    disc = m.aux["aux"]
    total, metrics = m.step(x, y, 0.5, 0)
    gs = _rms_normalise(_input_grad(model, x, y, create_graph=True))
    gt = _rms_normalise(_input_grad(teacher, x, y, create_graph=False))
    ds, dt = disc(gs).squeeze(1), disc(gt).squeeze(1)
    # The discriminator says "teacher" (1) for the teacher's gradients, "student" (0) for the student's.
    d_loss = (F.softplus(-dt).sum() + F.softplus(ds).sum()) / (2 * len(x))
    zs, zt = model(x), teacher(x)
    task = (
        F.cross_entropy(zs, y)
        if name == "great"
        else (1 - alpha) * F.cross_entropy(zs, y) + alpha * _kd_ref(zs, zt, t)
    )
    want_f = [a - lam * b for a, b in zip(_grads(task, model.parameters()), _grads(d_loss, model.parameters()),
                                          strict=True)]  # fmt: skip
    _close(got := _grads(total, model.parameters()), want_f)
    _close(_grads(total, disc.parameters()), _grads(d_loss, disc.parameters()))
    assert torch.allclose(total, task + d_loss, atol=1e-6) and got[0] is not None
    acc = torch.cat([dt > 0, ds <= 0]).float().mean()
    assert metrics["aux_acc"] == acc and metrics["aux_chance"] == 0.5


# Multi-task -------------------------------------------------------------------------------


def _mt_model(d, depth=1):
    return models.build_multitask(
        {"arch": "mlp", "width": 16, "depth": depth},
        input_shape=d.input_shape,
        tasks=d.tasks,
        mean=d.mean,
        std=d.std,
    )


@pytest.fixture(scope="module")
def mt():
    d = gdata.load({"name": "digits_mt"})  # three classification tasks and a regression
    torch.manual_seed(0)
    model = _mt_model(d)
    x = d.train.images()[:32]
    targets = d.targets(d.train, torch.arange(32))
    return d, model, x, targets


def _multitask(d, name, model, **knobs):
    return make(
        "multitask", name, model, num_classes=d.num_classes, input_shape=d.input_shape, tasks=d.tasks, **knobs
    )


def _task_losses(d, model, x, targets):
    out = model(x)
    return {
        t: F.cross_entropy(out[t], targets[t])
        if s["kind"] == "cls"
        else F.mse_loss(out[t][:, 0], targets[t].float())
        for t, s in d.tasks.items()
    }


def test_equal_weights_and_uncertainty_weighting(mt):
    d, model, x, targets = mt
    names = list(d.tasks)
    w = {names[0]: 2.0}
    total, metrics = _multitask(d, "equal", model, weights=w).step(x, targets, 0.5, 0)
    losses = _task_losses(d, model, x, targets)
    want = sum(w.get(t, 1.0) * loss for t, loss in losses.items())
    assert torch.allclose(total, want, rtol=1e-5) and metrics[f"weight/{names[0]}"] == 2.0
    m = _multitask(d, "uncertainty", model)
    s = m.aux["log_vars"].value
    with torch.no_grad():
        s.copy_(torch.linspace(-0.5, 0.5, len(names)))
    total, _ = m.step(x, targets, 0.5, 0)
    c = [1.0 if d.tasks[t]["kind"] == "cls" else 0.5 for t in names]
    want = sum(torch.exp(-s[k]) * c[k] * losses[t] + s[k] / 2 for k, t in enumerate(names))
    assert torch.allclose(total, want, rtol=1e-5)
    _close(_grads(total, [s]), _grads(want, [s]))


def test_pcgrad_projects_only_conflicting_gradients():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])  # a . b = -1: conflict
    merged = project_conflicts([a, b])
    # a minus its component along b, b minus its component along a, summed.
    want = (a - (a @ b) / (b @ b) * b) + (b - (b @ a) / (a @ a) * a)
    assert torch.allclose(merged, want)
    c = torch.tensor([1.0, 1.0])  # a . c > 0: no conflict, plain sum
    assert torch.allclose(project_conflicts([a, c]), a + c)


def test_multitask_great_trains_gal_scales_against_the_task_classifier(mt):
    """A's loss reaches the GAL scales reversed (-lambda) and A itself unreversed; with lam = 0 the
    scales get no gradient at all."""
    d, model, x, targets = mt
    names = list(d.tasks)
    lam = 0.5
    m = _multitask(d, "great", model, lam=lam, second_order=False)
    disc, scales = m.aux["aux"], m.aux["gal"]
    with torch.no_grad():
        scales.theta.normal_(0, 0.3)
    total, metrics = m.step(x, targets, 0.5, 0)
    f = model.encoder(x)
    gamma = scales()
    fs = [f.detach().requires_grad_(True) for _ in names]
    per = []
    for k, t in enumerate(names):
        out = model.heads[t](fs[k])
        loss = (
            F.cross_entropy(out, targets[t])
            if d.tasks[t]["kind"] == "cls"
            else F.mse_loss(out[:, 0], targets[t].float())
        )
        (g,) = torch.autograd.grad(loss, fs[k])
        per.append(gamma[k] * g)
    z = _rms_normalise(torch.cat(per))
    ids = torch.arange(len(names)).repeat_interleave(len(x))
    a_loss = F.cross_entropy(disc(z), ids)
    _close(_grads(total, [scales.theta]), [-lam * _grads(a_loss, [scales.theta])[0]])
    _close(_grads(total, disc.parameters()), _grads(a_loss, disc.parameters()))
    assert metrics["aux_chance"] == 1 / len(names)
    assert metrics["aux_acc"] == (disc(z).argmax(1) == ids).float().mean()
    off = _multitask(d, "great", model, lam=0.0)
    total0, _ = off.step(x, targets, 0.5, 0)
    (g0,) = _grads(total0, [off.aux["gal"].theta])
    assert g0 is None or not g0.any(), "with lam = 0 nothing trains the scales"


# Every method: its metrics, its defaults, its knobs -------------------------------------------

METRICS = {  # the keys the trainer logs and the dashboard plots, per method
    ("defense", "erm"): {"loss"},
    ("defense", "great"): {"aux_acc", "aux_chance", "aux_loss", "lam", "loss"},
    ("defense", "greace"): {"aux_acc", "aux_chance", "aux_loss", "lam", "loss"},
    ("defense", "great+greace"): {"aux_acc", "aux_chance", "aux_loss", "lam", "loss"},
    ("defense", "fgsm_at"): {"loss"},
    ("defense", "pgd_at"): {"loss"},
    ("defense", "trades"): {"loss", "robust_kl"},
    ("defense", "igr"): {"grad_penalty", "loss"},
    ("distill", "student"): {"agreement", "loss"},
    ("distill", "soft_targets"): {"agreement", "kd", "loss"},
    ("distill", "jacobian_matching"): {"agreement", "jacobian_l2", "kd", "loss", "st_cos", "st_l2"},
    ("distill", "great"): {
        "agreement",
        "aux_acc",
        "aux_chance",
        "aux_loss",
        "lam",
        "loss",
        "st_cos",
        "st_l2",
    },
    ("distill", "great+soft_targets"): {
        *("agreement", "aux_acc", "aux_chance", "aux_loss", "kd", "lam", "loss", "st_cos", "st_l2")
    },
    ("multitask", "single_task"): {"loss", "loss/digit"},
    ("multitask", "equal"): {
        "loss",
        *(f"{k}/{t}" for k in ("loss", "weight") for t in ("digit", "parity", "gt4", "intensity")),
    },
    ("multitask", "uncertainty"): {
        "loss",
        *(f"{k}/{t}" for k in ("loss", "weight") for t in ("digit", "parity", "gt4", "intensity")),
    },
    ("multitask", "gradnorm"): {
        *("loss", "gradnorm_loss"),
        *(f"{k}/{t}" for k in ("loss", "weight") for t in ("digit", "parity", "gt4", "intensity")),
    },
    ("multitask", "pcgrad"): {"loss", *(f"loss/{t}" for t in ("digit", "parity", "gt4", "intensity"))},
    ("multitask", "great"): {
        *("aux_acc", "aux_chance", "aux_loss", "lam", "loss"),
        *(f"loss/{t}" for t in ("digit", "parity", "gt4", "intensity")),
        *(f"gal/{t}/{s}" for t in ("digit", "parity", "gt4", "intensity") for s in ("std", "max")),
    },
}


def _setup(key, batch, mt, seed=0, **knobs):
    """A fresh model (same seed, same init) and the method with these knobs; the step's inputs."""
    scenario, _ = key
    if scenario == "multitask":
        d, _, x, targets = mt
        torch.manual_seed(seed)
        model = _mt_model(d)
        torch.manual_seed(seed)
        return model, _multitask(d, key[1], model, **knobs), x, targets
    d, x, y = batch
    model = _mlp(d, seed)
    extra = {"teacher": _mlp(d, 7, width=16)} if scenario == "distill" else {"eps": 0.1}
    torch.manual_seed(seed)
    m = make(scenario, key[1], model, num_classes=d.num_classes, input_shape=d.input_shape, **extra, **knobs)
    return model, m, x, y


def _step_grads(model, m, x, y, progress=0.5, i=0):
    torch.manual_seed(11)  # the attacks' random starts
    model.zero_grad()
    for a in m.aux.values():
        a.zero_grad()
    total, metrics = m.step(x, y, progress, i)
    params = list(model.parameters()) + [p for a in m.aux.values() for p in a.parameters()]
    if m.manual_backward:
        return total, metrics, [None if p.grad is None else p.grad.clone() for p in params]
    return total, metrics, [g.clone() if g is not None else None for g in _grads(total, params)]


@pytest.mark.parametrize("key", sorted(METRICS), ids="-".join)
def test_every_method_logs_its_documented_metrics_as_finite_numbers(key, batch, mt):
    model, m, x, y = _setup(key, batch, mt)
    total, metrics = m.step(x, y, 0.5, 0)
    assert set(metrics) == METRICS[key]
    assert all(math.isfinite(float(v)) for v in metrics.values()), metrics
    assert torch.isfinite(total)


@pytest.mark.parametrize("key", sorted(METRICS), ids="-".join)
def test_omitted_knobs_are_the_schemas_defaults(key, batch, mt):
    """A method built without knobs trains exactly as one given the API's documented defaults
    (labcore/run_config.py), including under a warm-up schedule and on a step between games."""
    from labcore.run_config import PARAMS, TRAINER_KNOBS

    fields = PARAMS[key].model_fields if key in PARAMS else {}
    explicit = {
        n: f.default for n, f in fields.items() if n not in TRAINER_KNOBS | {"eps"}
    }  # eps: the trainer's
    cases = [({}, 0.5, 0), ({}, 0.5, 1)]
    if "lam_schedule" in explicit:
        cases.append(({"lam_schedule": "warmup"}, 0.03, 0))
    for over, progress, i in cases:
        model_a, a, x, y = _setup(key, batch, mt, **over)
        model_b, b, _, _ = _setup(key, batch, mt, **{**explicit, **over})
        ta, ma, ga = _step_grads(model_a, a, x, y, progress, i)
        tb, mb, gb = _step_grads(model_b, b, x, y, progress, i)
        assert torch.allclose(ta, tb) and a.aux_lr == b.aux_lr, (over, i)
        assert {k: float(v) for k, v in ma.items()} == pytest.approx({k: float(v) for k, v in mb.items()})
        _close(ga, gb)


GAT = [k for k in sorted(METRICS) if k[1] in ("great", "great+greace", "great+soft_targets", "greace")]


@pytest.mark.parametrize("key", GAT, ids="-".join)
def test_gat_knobs_reach_a_and_its_input(key, batch, mt):
    """aux_arch, aux_width, aux_lr and grad_norm each change what A is and what it sees."""
    model, m, x, y = _setup(key, batch, mt, aux_arch="mlp", aux_width=5, aux_lr=0.07, grad_norm="standardize")
    aux = m.aux["aux"]
    linear = [mod for mod in aux.modules() if isinstance(mod, torch.nn.Linear)]
    assert m.aux_lr == 0.07 and len(linear) == 2 and linear[0].out_features == 20  # MLP, 4 x width
    seen = []
    aux.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach().flatten(1)))
    m.step(x, y, 0.5, 0)
    z = torch.cat(seen)
    assert torch.allclose(z.mean(1), torch.zeros(len(z)), atol=1e-4)  # standardised per example
    assert torch.allclose(z.std(1), torch.ones(len(z)), atol=1e-3)


@pytest.mark.parametrize("key", [k for k in GAT if k[1] != "greace"], ids="-".join)
def test_gat_plays_every_adv_every_th_step_and_follows_its_warmup(key, batch, mt):
    """adv_every 2: f gets A's reversed loss at steps 0 and 2, not 1; warm-up: lam grows with progress."""
    lam = 0.6
    _, base, x, y = _setup(key, batch, mt, lam=0.0)
    _, _, g0 = _step_grads(*_setup(key, batch, mt, lam=0.0)[:2], x, y)
    for i, plays in ((0, True), (1, False), (2, True)):
        model, m, _, _ = _setup(key, batch, mt, lam=lam, adv_every=2)
        _, metrics, g = _step_grads(model, m, x, y, 0.5, i)
        n = len(list(model.parameters()))
        differs = any(
            not torch.allclose(a, b, atol=1e-7) for a, b in zip(g[:n], g0[:n], strict=True) if a is not None
        )
        assert differs == plays, (i, plays)
    model, m, _, _ = _setup(key, batch, mt, lam=lam, lam_schedule="warmup", warmup=0.5)
    assert _step_grads(model, m, x, y, 0.1, 0)[1]["lam"] == pytest.approx(lam * 0.2)


@pytest.mark.parametrize("key", [k for k in GAT if k[0] != "multitask"], ids="-".join)
def test_gat_aux_arch_is_the_one_asked_for(key, batch, mt):
    for arch, conv in (("cnn", True), ("mlp", False)):  # digits-sized inputs: auto would pick the CNN
        _, m, _, _ = _setup(key, batch, mt, aux_arch=arch)
        assert any(isinstance(mod, torch.nn.Conv2d) for mod in m.aux["aux"].modules()) == conv, arch


GRAD_MODE = [
    ("defense", "great"),
    ("defense", "greace"),
    ("defense", "great+greace"),
    ("defense", "igr"),
    ("distill", "great"),
    ("distill", "great+soft_targets"),
    ("distill", "jacobian_matching"),
]


@pytest.mark.parametrize("key", GRAD_MODE, ids="-".join)
def test_grad_mode_reaches_the_gradient_taken(key, batch):
    """On a BatchNorm model whose running statistics differ from the batch's, grad_mode train and
    eval give different objectives: the knob is passed on to the gradient the method uses."""
    from .conftest import small_cnn

    d, x, y = batch
    out = {}
    for mode in ("eval", "train"):
        model = small_cnn(d)
        with torch.no_grad():
            model(d.train.images()[200:300])  # running statistics of other examples
        extra = {"teacher": _mlp(d, 7, width=16)} if key[0] == "distill" else {}
        torch.manual_seed(0)
        m = make(*key, model, num_classes=d.num_classes, input_shape=d.input_shape, grad_mode=mode, **extra)
        out[mode] = _step_grads(model, m, x, y)
    assert not all(
        a is None or torch.allclose(a, b, atol=1e-6)
        for a, b in zip(out["eval"][2], out["train"][2], strict=True)
    )


@pytest.mark.parametrize("name", ["great", "great+soft_targets"])
def test_distill_great_on_logit_gradients(name, batch):
    """grad_wrt logits: the discriminator sees dCE/dz = softmax(z) - onehot(y) of each network (N x K)."""
    d, x, y = batch
    model, teacher = _mlp(d, 0), _mlp(d, 1, width=16)
    lam = 0.5
    m = _distill(
        d, name, model, teacher, lam=lam, grad_wrt="logits", **({"alpha": 0.0} if name != "great" else {})
    )
    disc = m.aux["aux"]
    total, _ = m.step(x, y, 0.5, 0)
    onehot = F.one_hot(y, d.num_classes).float()
    zs, zt = model(x), teacher(x)
    gs, gt = _rms_normalise(zs.softmax(1) - onehot), _rms_normalise(zt.softmax(1) - onehot).detach()
    ds, dt = disc(gs).squeeze(1), disc(gt).squeeze(1)
    d_loss = (F.softplus(-dt).sum() + F.softplus(ds).sum()) / (2 * len(x))
    task = F.cross_entropy(zs, y)
    want = [
        a - lam * b
        for a, b in zip(_grads(task, model.parameters()), _grads(d_loss, model.parameters()), strict=True)
    ]
    _close(_grads(total, model.parameters()), want)
    assert disc(gs).shape == (len(x), 1) and next(disc.parameters()).shape[1] == d.num_classes


def test_gradnorm_moves_weights_toward_balanced_gradient_norms(mt):
    """Chen et al.: L = sum_t w_t L_t (w held) + sum_t |w_t G_t - mean(G) r_t^alpha| with G_t = |dL_t/dF|
    and r_t = (L_t / L_t(0)) / mean; the first step records L_t(0)."""
    d, model, x, targets = mt
    names, alpha = list(d.tasks), 0.7
    m = _multitask(d, "gradnorm", model, alpha=alpha)
    w = m.aux["weights"].value
    total0, _ = m.step(x, targets, 0.0, 0)  # first step: L_t(0) recorded, every rate 1
    with torch.no_grad():
        w.copy_(torch.tensor([1.5, 0.5, 1.2, 0.8]))
    x2 = d.train.images()[32:64]
    t2 = d.targets(d.train, torch.arange(32, 64))
    total, metrics = m.step(x2, t2, 0.5, 1)

    def parts(xb, tb):
        f = model.encoder(xb)
        out = {t: model.heads[t](f) for t in names}
        ls = torch.stack([
            F.cross_entropy(out[t], tb[t]) if d.tasks[t]["kind"] == "cls" else F.mse_loss(out[t][:, 0], tb[t].float())
            for t in names
        ])  # fmt: skip
        norms = torch.stack([torch.autograd.grad(loss, f, retain_graph=True)[0].norm() for loss in ls])
        return ls, norms

    l0, _ = parts(x, targets)
    ls, norms = parts(x2, t2)
    g = w * norms.detach()
    rate = ls.detach() / l0.detach()
    target = g.mean().detach() * (rate / rate.mean()) ** alpha
    want = (w.detach() * ls).sum() + (g - target.detach()).abs().sum()
    assert torch.allclose(total, want, rtol=1e-5)
    _close(_grads(total, [w]), _grads(want, [w]))
    _close(_grads(total, model.parameters()), _grads((w.detach() * ls).sum(), model.parameters()))
    assert metrics["gradnorm_loss"] == pytest.approx(float((g - target).abs().sum()), rel=1e-5)
    assert [metrics[f"weight/{t}"] for t in names] == pytest.approx([1.5, 0.5, 1.2, 0.8])
    m.post_step()  # renormalised: positive, summing to the number of tasks
    with torch.no_grad():
        w.copy_(torch.tensor([3.0, -1.0, 1.0, 1.0]))
    m.post_step()
    assert torch.allclose(w, torch.tensor([3.0, 1e-3, 1.0, 1.0]) * 4 / 5.001)


def test_pcgrad_step_gives_shared_weights_the_projected_sum_and_heads_their_own(mt):
    import random

    d, model, x, targets = mt
    names = list(d.tasks)
    m = _multitask(d, "pcgrad", model)
    model.zero_grad()
    total, _ = m.step(x, targets, 0.5, 0)
    shared = [p for p in model.encoder.parameters()]
    losses = _task_losses(d, model, x, targets)
    flat = [
        torch.cat([g.flatten() for g in torch.autograd.grad(losses[t], shared, retain_graph=True)])
        for t in names
    ]
    rng = random.Random(0)  # the method's own order: one fresh shuffle per task
    orders = [rng.sample(range(len(flat)), len(flat)) for _ in flat]
    merged = project_conflicts(flat, orders)
    got = torch.cat([p.grad.flatten() for p in shared])
    assert torch.allclose(got, merged, atol=1e-6) and not torch.allclose(got, sum(flat), atol=1e-4)
    for t in names:  # each head: its own task's gradient
        for p in model.heads[t].parameters():
            (want,) = torch.autograd.grad(losses[t], p, retain_graph=True)
            assert torch.allclose(p.grad, want, atol=1e-6)
    assert torch.allclose(total, sum(losses.values()))


def test_pcgrad_projection_edge_cases():
    a, c = torch.tensor([1.0, 0.0]), torch.tensor([0.5, 1.0])  # dot 0.5 > 0: no projection
    assert torch.allclose(project_conflicts([a, c]), a + c)
    small, other = torch.tensor([0.1, 0.0]), torch.tensor([-0.1, 0.1])  # |g|^2 well below 1
    want = (small - (small @ other) / (other @ other) * other) + (
        other - (other @ small) / (small @ small) * small
    )
    assert torch.allclose(project_conflicts([small, other]), want)
    # the order of projection matters for three tasks; orders[i] is followed
    g = [torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 0.2]), torch.tensor([-0.3, -1.0])]
    one, two = project_conflicts(g, [[1, 2], [0, 2], [0, 1]]), project_conflicts(g, [[2, 1], [0, 2], [0, 1]])
    assert not torch.allclose(one, two)


def test_gal_scales_are_positive_with_mean_one_per_task():
    from worker.gat.methods.multitask import GalScales, gal

    s = GalScales(3, 5)
    with torch.no_grad():
        s.theta.normal_(0, 1)
    gamma = s()
    assert torch.allclose(gamma, 5 * s.theta.softmax(1)) and torch.allclose(gamma.mean(1), torch.ones(3))
    f = torch.randn(4, 5, requires_grad=True)
    out = gal(f, gamma[0].detach())
    assert torch.equal(out, f)
    out.sum().backward()
    assert torch.allclose(f.grad, gamma[0].detach().expand(4, 5))


def test_unknown_tasks_are_refused_and_uncertainty_logs_its_weights(mt):
    d, model, x, targets = mt
    with pytest.raises(ValueError, match="nope"):
        _multitask(d, "single_task", model, task="nope")
    with pytest.raises(ValueError, match="nope"):
        _multitask(d, "equal", model, weights={"nope": 2.0})
    m = _multitask(d, "uncertainty", model)
    with torch.no_grad():
        m.aux["log_vars"].value.copy_(torch.tensor([0.5, -0.5, 0.0, 1.0]))
    _, metrics = m.step(x, targets, 0.5, 0)
    want = [math.exp(-v) for v in (0.5, -0.5, 0.0, 1.0)]
    assert [metrics[f"weight/{t}"] for t in d.tasks] == pytest.approx(want)
    single = _multitask(d, "single_task", model, task="parity")
    total, metrics = single.step(x, targets, 0.5, 0)
    assert torch.allclose(total, _task_losses(d, model, x, targets)["parity"]) and "loss/parity" in metrics


def test_distill_great_without_the_game_trains_the_student_on_cross_entropy(batch):
    """lam 0 on logit gradients: no second-order graph is kept, and the student's gradient is plain CE's."""
    d, x, y = batch
    model, teacher = _mlp(d, 0), _mlp(d, 1, width=16)
    total, _ = _distill(d, "great", model, teacher, lam=0.0, grad_wrt="logits").step(x, y, 0.5, 0)
    _close(_grads(total, model.parameters()), _grads(F.cross_entropy(model(x), y), model.parameters()))


@pytest.mark.parametrize("name", ["uncertainty", "gradnorm"])
def test_task_weights_learn_at_their_own_rate(name, mt):
    d, model, *_ = mt
    assert _multitask(d, name, model, weight_lr=0.05).aux_lr == 0.05


def test_gradnorm_default_alpha_is_the_papers_1_5_over_two_steps(mt):
    d, _, x, targets = mt
    x2, t2 = d.train.images()[32:64], d.targets(d.train, torch.arange(32, 64))
    out = []
    for knobs in ({}, {"alpha": 1.5}):
        model, m, _, _ = _setup(("multitask", "gradnorm"), None, mt, **knobs)
        m.step(x, targets, 0.0, 0)  # records L_t(0); the second step's rates differ from 1
        with torch.no_grad():
            m.aux["weights"].value.copy_(torch.tensor([1.5, 0.5, 1.2, 0.8]))
        out.append(m.step(x2, t2, 0.5, 1)[1]["gradnorm_loss"])
    assert torch.allclose(out[0], out[1])


def test_pcgrad_writes_every_shared_parameter_its_own_slice(mt):
    """A deeper encoder (several weight tensors): each parameter gets its slice of the merged gradient."""
    import random

    d, _, x, targets = mt
    torch.manual_seed(0)
    model = _mt_model(d, depth=3)
    m = _multitask(d, "pcgrad", model)
    m.step(x, targets, 0.5, 0)
    shared = list(model.encoder.parameters())
    assert len(shared) > 2
    losses = _task_losses(d, model, x, targets)
    flat = [
        torch.cat([g.flatten() for g in torch.autograd.grad(losses[t], shared, retain_graph=True)])
        for t in d.tasks
    ]
    rng = random.Random(0)
    merged = project_conflicts(flat, [rng.sample(range(len(flat)), len(flat)) for _ in flat])
    offset = 0
    for p in shared:
        assert torch.allclose(p.grad.flatten(), merged[offset : offset + p.numel()], atol=1e-6)
        offset += p.numel()
