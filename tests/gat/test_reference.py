"""The wrappers around pyautoattack pass on what they are given: the labels (an example already
misclassified is left alone, as the reference code does), the budget, the number of target classes
for the model at hand, AutoAttack's own Square configuration, and AutoAttack's seed and batch."""

import pytest
import torch
from pyautoattack import AutoAttack
from pyautoattack.square import SquareAttack

from worker.gat.attacks import ATTACKS
from worker.gat.attacks import reference as R


def _linear(k: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, k)).eval()


def _batch(model, n=16, wrong=5):
    """Images the model classifies as `y`, but for the first `wrong` examples, whose label is another class."""
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:wrong] = (y[:wrong] + 1) % model[1].out_features
    return x, y


@pytest.mark.parametrize("name", ["apgd_ce", "apgd_dlr", "apgd_t", "square"])
def test_a_misclassified_example_is_left_alone_and_the_others_attacked(name):
    """Given the labels, the reference attacks skip what is already wrong; without them they would
    attack the predicted class, and move the misclassified examples too."""
    model = _linear(5)
    x, y = _batch(model)
    knobs = {"queries": 300} if name == "square" else {"steps": 10}
    adv = getattr(R, name)(model, x, y, eps=0.3, seed=0, **knobs)
    assert torch.equal(adv[:5], x[:5])
    with torch.no_grad():
        assert (model(adv[5:]).argmax(1) != y[5:]).float().mean() >= 0.8  # the rest: a radius that fools


class _Spy:
    """Records the instances of a pyautoattack class the wrappers build (they still run for real)."""

    def __init__(self, monkeypatch, name):
        self.made, self.calls = [], []
        base = getattr(R, name)
        spy = self

        class Recorded(base):
            def __init__(self, *a, **kw):
                super().__init__(*a, **kw)
                spy.made.append(self)

            def run_standard_evaluation(self, *a, **kw):
                spy.calls.append(kw)
                return super().run_standard_evaluation(*a, **kw)

        monkeypatch.setattr(R, name, Recorded)


@pytest.mark.parametrize("k,targets", [(5, 4), (12, 9)])
def test_apgd_t_tries_every_other_class_up_to_nine(k, targets, monkeypatch):
    spy = _Spy(monkeypatch, "APGDAttack_targeted")
    model = _linear(k)
    x, y = _batch(model, n=8, wrong=0)
    ATTACKS["apgd_t"][1](model, x, y, eps=0.3, seed=3, steps=2)
    (a,) = spy.made
    assert (a.n_target_classes, a.n_iter, a.seed, a.norm) == (targets, 2, 3, "Linf")


@pytest.mark.parametrize("k,targets", [(5, 4), (12, 9)])
def test_autoattack_is_the_standard_version_with_targets_for_the_model_at_hand(k, targets, monkeypatch):
    spy = _Spy(monkeypatch, "AutoAttack")
    model = _linear(k)
    x, y = _batch(model, n=8, wrong=0)
    handlers = list(R.AA_LOG.handlers)
    R.autoattack_with_warnings(model, x, y, eps=0.3, seed=4)
    (aa,) = spy.made
    assert (aa.version, aa.seed, aa.epsilon, aa.norm, aa.verbose) == ("standard", 4, 0.3, "Linf", False)
    assert (aa.apgd_targeted.n_target_classes, aa.fab.n_target_classes) == (targets, targets)
    assert spy.calls == [{"batch_size": 8}]  # every example in one batch, so the seed decides alone
    assert R.AA_LOG.handlers == handlers  # the warnings' handler is taken off again


def test_square_is_the_reference_square_with_its_schedule_rescaled_to_the_budget():
    """The same images as the Square that AutoAttack's standard version builds (p_init 0.8, one
    restart), given the same queries and seed, but with the schedule of square sizes rescaled to the
    query budget, as Square's authors advise for budgets other than 10,000."""
    model = _linear(5)
    x, y = _batch(model)
    aa = AutoAttack(model, eps=0.1, norm="Linf", version="standard", seed=2, device=x.device)
    aa.square.n_queries, aa.square.rescale_schedule = 40, True
    with torch.no_grad():
        want = aa.square.perturb(x, y)
    assert torch.equal(ATTACKS["square"][1](model, x, y, eps=0.1, seed=2, queries=40), want)


def test_square_on_a_small_budget_is_as_strong_as_its_rescaled_reference(digits, digits_model):
    """On the quick panel's kind of budget, the standalone Square leaves no more accuracy than the
    reference Square with its schedule rescaled (3 seeds, within one example in 200). AutoAttack's
    unrescaled schedule, meant for 5,000 queries, left about twice as many examples unbroken."""
    x, y = digits.test.images()[:200], digits.test.y[:200]

    def acc(adv):
        with torch.no_grad():
            return (digits_model(adv).argmax(1) == y).float().mean().item()

    lab, ref = [], []
    for seed in range(3):
        a = SquareAttack(digits_model, norm="Linf", n_queries=300, eps=0.1, p_init=0.8, n_restarts=1,
                         seed=seed, verbose=False, device=x.device, resc_schedule=True)  # fmt: skip
        with torch.no_grad():
            ref.append(acc(a.perturb(x, y)))
        lab.append(acc(ATTACKS["square"][1](digits_model, x, y, eps=0.1, seed=seed, queries=300)))
    assert sum(lab) / 3 <= sum(ref) / 3 + 0.005, (lab, ref)


def test_fab_runs_the_budget_and_seed_it_is_given_over_the_whole_box(monkeypatch):
    spy = _Spy(monkeypatch, "FABAttack_PT")
    model = _linear(5)
    x, y = _batch(model, n=8, wrong=0)
    R.fab_min_norm(model, x, y, seed=6, steps=7)
    (a,) = spy.made
    assert (a.n_iter, a.seed, a.n_restarts, a.norm) == (7, 6, 1, "Linf")  # the budget the panel's row reports
    assert a.eps >= 1.0  # no cap below the box's own: any minimum in [0, 1] is found


def test_an_example_fab_never_fools_has_no_minimum(digits, digits_model):
    """One FAB iteration leaves some examples correctly classified: their size is inf (none found),
    not the size of the step that failed."""
    x, y = digits.test.images()[:64], digits.test.y[:64]
    norms = R.fab_min_norm(digits_model, x, y, steps=1)
    assert torch.isinf(norms).sum() >= 5 and torch.isfinite(norms).sum() >= 5  # measured: 24 and 40
