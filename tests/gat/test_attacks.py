import pytest
import torch

from worker.gat.attacks import ATTACKS, pgd
from worker.gat.attacks.reference import apgd_ce
from worker.gat.panel import check_ball, run_panel


def _batch(d, n=64):
    return d.test.images()[:n], d.test.y[:n]


def _acc(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


# The reference attacks take eps > 0 only; at eps 0 the panel reports clean accuracy for them.
CASES = [
    (n, e)
    for n in sorted(ATTACKS)
    for e in (0.0, 0.1)
    if e > 0 or n not in ("autoattack", "apgd_ce", "square")
]


@pytest.mark.parametrize("name,eps", CASES)
def test_every_attack_stays_in_its_ball_and_box(name, eps, digits, digits_model):
    x, y = _batch(digits, 32)
    norm, fn = ATTACKS[name]
    e = eps * (5 if norm == "l2" else 1)
    kw = {"queries": 50} if name == "square" else {"steps": 5}
    x_adv = fn(digits_model, x, y, eps=e, seed=0, **kw)
    check_ball(x_adv, x, e, norm)  # raises if outside
    if eps == 0:
        assert torch.equal(x_adv, x)
        assert _acc(digits_model, x_adv, y) == _acc(digits_model, x, y)
    else:
        assert _acc(digits_model, x_adv, y) <= _acc(digits_model, x, y)


def test_pgd_agrees_with_reference_apgd_ce(digits, digits_model):
    """Our PGD (50 steps, 3 restarts) is within 5 points of APGD-CE (100 steps) on a standard model."""
    x, y = _batch(digits, 200)
    ours = _acc(digits_model, pgd(digits_model, x, y, eps=0.1, steps=50, restarts=3), y)
    ref = _acc(digits_model, apgd_ce(digits_model, x, y, eps=0.1, steps=100), y)
    assert abs(ours - ref) <= 0.05, (ours, ref)
    assert ours < _acc(digits_model, x, y) - 0.3  # and it actually attacks


class Masked(torch.nn.Module):
    """Textbook gradient masking: quantised inputs give zero input gradients everywhere."""

    def __init__(self, base):
        super().__init__()
        self.base = base

    def forward(self, x):
        return self.base(torch.round(x * 4) / 4)


CONFIG = {
    "dataset": {"name": "digits"},
    "model": {"arch": "cnn", "width": 8, "depth": 2},
    "train": {"seed": 0},
}


def test_sanity_checks_pass_on_a_standard_model_and_flag_a_masked_one(digits, digits_model):
    honest = run_panel(digits_model, digits, CONFIG, panel="quick", n=100)
    assert all(c["passed"] for c in honest["checks"]), honest["checks"]
    masked = run_panel(Masked(digits_model), digits, CONFIG, panel="quick", n=100)
    failed = {c["name"] for c in masked["checks"] if not c["passed"]}
    assert "white_box_beats_black_box" in failed, masked["checks"]
    # the panel's rows: eps 0 is clean accuracy, worst case is below every single attack
    acc = {(r["attack"], r["eps"]): r["accuracy"] for r in honest["rows"]}
    assert acc[("pgd", 0.0)] == honest["clean_accuracy"]
    for e in (0.025, 0.05, 0.1, 0.2):
        same_subset = [v for (a, ee), v in acc.items() if ee == e and a not in ("pgd_l2", "autoattack")]
        assert acc[("worst_case", e)] <= min(same_subset)
