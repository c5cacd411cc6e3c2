"""The panel's attacks against an independent library (IBM's Adversarial Robustness Toolbox, whose
code shares nothing with ours or with pyautoattack's): on a fixed small model and the same examples,
its PGD (L-inf and L2), its Square and its APGD ensemble may not leave fewer examples correct than
the panel's attack of the same budget, within TOL. A weakened panel attack fails here; the last test
shows that this comparison catches one."""

import numpy as np
import pytest
import torch
from art.attacks.evasion import AutoProjectedGradientDescent, ProjectedGradientDescentPyTorch, SquareAttack
from art.estimators.classification import PyTorchClassifier

from worker.gat.attacks.reference import autoattack_with_warnings
from worker.gat.panel import PANELS, _attack, _correct

TOL = 0.03  # 3 of 100 examples: the two libraries draw their random starts differently
N, EPS, EPS_L2 = 100, 0.1, 0.5
SPEC = PANELS["quick"]


@pytest.fixture(scope="module")
def case(digits, digits_model):
    x, y = digits.test.images()[:N], digits.test.y[:N]
    clf = PyTorchClassifier(
        model=digits_model,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=tuple(x.shape[1:]),
        nb_classes=digits.num_classes,
        clip_values=(0.0, 1.0),
        device_type="cpu",
    )
    return digits_model, x, y, clf


def _art_acc(model, x, y, *attacks, seed: int = 0) -> float:
    """Accuracy left after ART's attacks, per example the worst of them (ART draws from numpy)."""
    np.random.seed(seed)
    ok = torch.ones(len(y), dtype=torch.bool)
    for a in attacks:
        adv = torch.as_tensor(a.generate(x.numpy(), y=y.numpy()))
        assert (adv - x).abs().max() <= a.eps + 1e-5 if a.norm == np.inf else True
        ok &= _correct(model, adv, y)
    return ok.float().mean().item()


def _panel_acc(name: str, model, x, y, seed: int = 0, **kw) -> float:
    return _correct(model, _attack(name, model, x, y, seed=seed, **kw), y).float().mean().item()


def _art_pgd(clf, norm, eps, steps):
    return ProjectedGradientDescentPyTorch(
        clf, norm=norm, eps=eps, eps_step=2.5 * eps / steps, max_iter=steps, num_random_init=1, verbose=False
    )


def test_pgd_linf_agrees_with_art_within_tolerance(case):
    model, x, y, clf = case
    art = _art_acc(model, x, y, _art_pgd(clf, np.inf, EPS, SPEC.steps))
    ours = _panel_acc("pgd", model, x, y, eps=EPS, steps=SPEC.steps)
    assert abs(ours - art) <= TOL, (ours, art)


def test_pgd_l2_is_no_weaker_than_arts(case):
    model, x, y, clf = case
    art = _art_acc(model, x, y, _art_pgd(clf, 2, EPS_L2, SPEC.steps))
    ours = _panel_acc("pgd_l2", model, x, y, eps=EPS_L2, steps=SPEC.steps)
    assert ours <= art + TOL, (ours, art)


def test_square_is_no_weaker_than_arts_with_the_same_queries(case):
    model, x, y, clf = case
    art_square = SquareAttack(
        clf, norm=np.inf, eps=EPS, max_iter=SPEC.square_queries, nb_restarts=1, verbose=False
    )
    art = _art_acc(model, x, y, art_square)
    ours = _panel_acc("square", model, x, y, eps=EPS, queries=SPEC.square_queries)
    assert ours <= art + TOL, (ours, art)


def _art_apgd(clf, loss):
    return AutoProjectedGradientDescent(
        clf, norm=np.inf, eps=EPS, eps_step=2 * EPS, max_iter=100, nb_random_init=1, loss_type=loss,
        batch_size=N, verbose=False,
    )  # fmt: skip


def test_autoattack_is_no_weaker_than_arts_apgd_ensemble(case):
    """ART's APGD-CE and APGD-DLR, per example the worst: AutoAttack (which adds APGD-T, FAB-T and
    Square) must leave no more correct."""
    model, x, y, clf = case
    art = _art_acc(model, x, y, _art_apgd(clf, "cross_entropy"), _art_apgd(clf, "difference_logits_ratio"))
    adv, _ = autoattack_with_warnings(model, x, y, eps=EPS, seed=0)  # as the panel runs it
    ours = _correct(model, adv, y).float().mean().item()
    assert ours <= art + TOL, (ours, art)


def test_the_comparison_catches_a_weakened_attack(case):
    """The same comparison, the panel's PGD cut to one step of a tenth of its size: it fails it."""
    model, x, y, clf = case
    art = _art_acc(model, x, y, _art_pgd(clf, np.inf, EPS, SPEC.steps))
    weak = (
        _correct(model, _attack("ifgsm", model, x, y, eps=EPS / 10, seed=0, steps=1), y).float().mean().item()
    )
    assert weak > art + TOL, (weak, art)
