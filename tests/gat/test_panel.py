"""The panel's bookkeeping, fast: which attacks run at which radius with which budget, each row's
numbers recomputed from the model, the worst case, FAB's norms, the gallery, and every sanity check
at its threshold on hand-made rows. test_checks.py and test_attacks.py judge the panel's attacks and
checks on real models at the quick panel's budget; this file runs a tiny budget (seconds), so a slip
in the panel's plumbing is caught at once (and mutation testing, issue 17, stays affordable).
"""

import math
import time
from dataclasses import asdict

import pytest
import torch

from worker.gat import data as gdata
from worker.gat import panel as P
from worker.gat.attacks import ATTACKS, Attack, pgd, pick_target
from worker.gat.attacks.reference import fab_min_norm
from worker.gat.probe import gradient_probe
from worker.gat.stats import wilson

CONFIG = {
    "dataset": {"name": "digits"},
    "model": {"arch": "cnn", "width": 8, "depth": 2},
    "train": {"seed": 0},
}
TINY = P.PanelSpec(
    n=24,
    steps=3,
    strong_steps=6,
    strong_restarts=2,
    apgd_steps=5,
    fab_steps=5,
    square_queries=20,
    noise_draws=3,
    surrogate_epochs=1,
    all_eps=False,
)
LINF = [0.0, 0.05, 0.2]  # digits' standard L-inf radius is 0.1, its L2 radius 0.5
L2 = [0.0, 0.25, 0.5, 1.0]
EVERY_EPS = ["fgsm", "ifgsm", "pgd", "pgd_margin", "pgd_strong", "noise", "square"]
EVERY_EPS += ["pgd_target_random", "pgd_target_ll", "transfer", "fab", "worst_case"]
STD_ONLY = ["apgd_dlr", "apgd_t", "autoattack"]
SHOWN = {  # attack -> (steps, restarts) the row reports, from TINY's budget
    "fgsm": (1, 1),
    "ifgsm": (3, 1),
    "pgd": (3, 1),
    "pgd_margin": (3, 1),
    "pgd_strong": (6, 2),
    "noise": (None, 3),
    "square": (20, None),
    "pgd_target_random": (3, 1),
    "pgd_target_ll": (3, 1),
    "transfer": (3, 1),
    "fab": (5, 1),
    "apgd_dlr": (5, 1),
    "apgd_t": (5, 1),
    "autoattack": (100, 1),
    "pgd_l2": (3, 1),
    "pgd_large_eps": (6, 1),
    "worst_case": (None, None),
}


def test_a_tiny_panel_end_to_end(digits, digits_model, monkeypatch):
    """One test, so that mutation testing (which runs only the tests that reach a mutated function)
    runs every one of these checks on a mutant of the panel's plumbing."""
    monkeypatch.setitem(P.PANELS, "tiny", TINY)
    # Not the standard radius 0.1: AutoAttack there costs seconds per robust example (it has its own test)
    t0 = time.monotonic()
    tiny = P.run_panel(digits_model, digits, CONFIG, panel="tiny", seed=1, eps=LINF)
    assert 0 < tiny["seconds"] <= time.monotonic() - t0
    _the_panel_attacks_its_recorded_subset_and_reports_its_budget(tiny, digits, digits_model)
    _each_attack_runs_at_its_radii_with_its_budget(tiny)
    _each_row_counts_its_examples(tiny)
    _the_worst_case_is_below_every_linf_attack_at_its_radius(tiny)
    _fab_rows_and_norms_agree_per_example(tiny, digits, digits_model)
    _the_gallery_shows_the_first_six_examples_under_pgd(tiny, digits, digits_model)
    _rows_are_their_attacks_at_the_budget_they_report(tiny, digits, digits_model)


def _subset(digits, n, seed):
    idx = torch.randperm(len(digits.test), generator=torch.Generator().manual_seed(seed))[:n]
    return idx, digits.test.images(idx), digits.test.y[idx]


def _clean(model, x, y):
    with torch.no_grad():
        return model(x).argmax(1) == y


def _the_panel_attacks_its_recorded_subset_and_reports_its_budget(tiny, digits, digits_model):
    idx, x, y = _subset(digits, 24, seed=1)
    k = int(_clean(digits_model, x, y).sum())
    assert (tiny["panel"], tiny["n"], tiny["seed"]) == ("tiny", 24, 1)
    assert tiny["subset_hash"] == gdata._hash(idx)
    assert tiny["clean_accuracy"] == k / 24 and tiny["clean_ci"] == list(wilson(k, 24))
    assert (tiny["std_eps"], tiny["std_eps_l2"]) == (0.1, 0.5)
    assert tiny["spec"] == asdict(TINY)
    assert tiny["deterministic"] == {"max_logit_change": 0.0, "same": True}
    assert tiny["probe"] == gradient_probe(digits_model, digits, device=torch.device("cpu"), seed=1)
    assert tiny["checks"] == P.sanity_checks(tiny)  # the checks of the rows shown


def _each_attack_runs_at_its_radii_with_its_budget(tiny):
    got = sorted((r["attack"], r["norm"], r["eps"]) for r in tiny["rows"])
    want = [(a, "linf", e) for a in EVERY_EPS for e in LINF]  # no STD_ONLY attack off the standard eps
    want += [("pgd_l2", "l2", e) for e in L2] + [("pgd_large_eps", "linf", 0.5)]
    assert got == sorted(want)  # each pair once: no attack run twice or skipped
    for r in tiny["rows"]:
        assert (r["steps"], r["restarts"]) == SHOWN[r["attack"]], r


def _each_row_counts_its_examples(tiny):
    for r in tiny["rows"]:
        k = round(r["accuracy"] * 24)
        assert r["n"] == 24 and r["accuracy"] == k / 24 and r["ci"] == list(wilson(k, 24)), r
        if r["eps"] == 0:  # no perturbation allowed: every attack leaves the clean accuracy
            assert r["accuracy"] == tiny["clean_accuracy"], r
        if r["attack"].startswith("pgd_target"):
            hit = round(r["info"]["target_success"] * 24)
            assert r["info"] == {"target_success": hit / 24, "target_ci": list(wilson(hit, 24))}
        else:
            assert r["info"] is None, r
    # digits' standard model falls at the standard radius; a perturbation of 0.5 breaks everything
    acc = {(r["attack"], r["eps"]): r["accuracy"] for r in tiny["rows"]}
    assert acc[("pgd", 0.2)] < tiny["clean_accuracy"] - 0.3 and acc[("pgd_large_eps", 0.5)] == 0


def _the_worst_case_is_below_every_linf_attack_at_its_radius(tiny):
    by_eps = {}
    for r in tiny["rows"]:
        if r["norm"] == "linf" and r["attack"] not in ("worst_case", "pgd_large_eps"):
            by_eps.setdefault(r["eps"], []).append(r["accuracy"])
    worst = {r["eps"]: r["accuracy"] for r in tiny["rows"] if r["attack"] == "worst_case"}
    assert sorted(worst) == LINF
    for e, accs in by_eps.items():
        assert worst[e] <= min(accs), e
    assert worst[0.0] == tiny["clean_accuracy"]
    assert worst[0.2] < worst[0.05]


def _fab_rows_and_norms_agree_per_example(tiny, digits, digits_model):
    _, x, y = _subset(digits, 24, seed=1)
    clean = _clean(digits_model, x, y).tolist()
    mn = tiny["min_norm"]
    norms = [math.inf if v is None else v for v in mn["norms"]]
    assert (mn["attack"], mn["norm"], mn["steps"], mn["n"], len(norms)) == ("fab", "linf", 5, 24, 24)
    assert mn["found"] == sum(v is not None for v in mn["norms"])
    assert all(v == 0 for v, c in zip(norms, clean, strict=True) if not c)  # already wrong: nothing to find
    ranked = sorted(norms)
    for p in (10, 25, 50, 75, 90):  # nearest rank
        v = ranked[math.ceil(p * 24 / 100) - 1]
        assert mn["quantiles"][str(p)] == (None if v == math.inf else pytest.approx(v, abs=1e-6))
    assert mn["median"] == mn["quantiles"]["50"]
    fab = {r["eps"]: r["accuracy"] for r in tiny["rows"] if r["attack"] == "fab"}
    for e in LINF:
        robust = sum(c and (e == 0 or v > e) for v, c in zip(norms, clean, strict=True))
        assert fab[e] == robust / 24, e


def _the_gallery_shows_the_first_six_examples_under_pgd(tiny, digits, digits_model):
    _, x, y = _subset(digits, 24, seed=1)
    g = tiny["gallery"]
    assert (g["attack"], g["eps"], g["label"]) == ("pgd", 0.1, y[:6].tolist())
    clean, adv, delta = (torch.tensor(g[k]) for k in ("clean", "adv", "delta"))
    assert torch.equal(clean, x[:6])
    assert torch.allclose(adv - clean, delta) and delta.abs().max() <= 0.1 + 1e-6
    with torch.no_grad():
        assert g["pred_clean"] == digits_model(clean).argmax(1).tolist()
        assert g["pred_adv"] == digits_model(adv).argmax(1).tolist()
    assert g["pred_adv"] != g["pred_clean"]  # three steps at 0.1 fool this model on some of the six
    torch.manual_seed(1)  # the panel's seed and steps, one try
    want = pgd(digits_model, x[:6], y[:6], eps=0.1, steps=3)
    assert torch.allclose(adv, want, atol=1e-6)


def _rows_are_their_attacks_at_the_budget_they_report(tiny, digits, digits_model):
    """Rerun each attack here, straight from the registry, at the seed and budget of TINY: the same
    accuracy (and the same rate of reaching the target)."""
    _, x, y = _subset(digits, 24, seed=1)
    rows = {(r["attack"], r["eps"]): r for r in tiny["rows"]}
    steps = {"steps": 3, "restarts": 1}
    again = {  # row -> (attack, model, seed, knobs): pgd_strong draws its restarts from the next seed
        "fgsm": ("fgsm", digits_model, 1, {}),
        "ifgsm": ("ifgsm", digits_model, 1, {"steps": 3}),
        "pgd": ("pgd", digits_model, 1, steps),
        "pgd_margin": ("pgd_margin", digits_model, 1, steps),
        "pgd_strong": ("pgd", digits_model, 2, {"steps": 6, "restarts": 2}),
        "noise": ("noise", digits_model, 1, {"draws": 3}),
        "square": ("square", digits_model, 1, {"queries": 20}),
        "transfer": ("pgd", P.train_surrogate(CONFIG, digits, 1, torch.device("cpu")), 1, steps),
    }
    for e in (0.05, 0.2):
        for row, (attack, on, seed, knobs) in again.items():
            adv = ATTACKS[attack][1](on, x, y, eps=e, seed=seed, **knobs)
            assert rows[(row, e)]["accuracy"] == int(_clean(digits_model, adv, y).sum()) / 24, (row, e)
        for kind, row in (("random", "pgd_target_random"), ("least_likely", "pgd_target_ll")):
            target = pick_target(kind, digits_model, x, y, 1)
            adv = ATTACKS[row][1](digits_model, x, y, eps=e, seed=1, target=target, **steps)
            with torch.no_grad():
                pred = digits_model(adv).argmax(1)
            assert rows[(row, e)]["accuracy"] == int((pred == y).sum()) / 24, (row, e)
            assert rows[(row, e)]["info"]["target_success"] == int((pred == target).sum()) / 24, (row, e)
    adv = ATTACKS["pgd_l2"][1](digits_model, x, y, eps=0.5, seed=1, **steps)
    assert rows[("pgd_l2", 0.5)]["accuracy"] == int(_clean(digits_model, adv, y).sum()) / 24
    norms = fab_min_norm(digits_model, x, y, seed=1, steps=5)
    assert tiny["min_norm"]["norms"] == [
        None if not math.isfinite(v) else round(v, 6) for v in norms.tolist()
    ]


def test_a_randomised_model_is_not_deterministic(digits, digits_model):
    class Noisy(torch.nn.Module):
        def forward(self, x):
            return digits_model((x + 0.05 * torch.randn_like(x)).clamp(0, 1))

    x, y = digits.test.images()[:16], digits.test.y[:16]
    noisy = P._Panel(Noisy(), x, y, 0, TINY, digits_model)
    assert not noisy.deterministic["same"] and noisy.deterministic["max_logit_change"] > 0.01
    assert P._Panel(digits_model, x, y, 0, TINY, digits_model).deterministic["same"]


class _Quantised(torch.nn.Module):
    """Zero input gradients almost everywhere: AutoAttack warns about them at every radius."""

    def __init__(self, base):
        super().__init__()
        self.base = base

    def forward(self, x):
        return self.base(torch.round(x * 16) / 16)


@pytest.mark.slow
def test_every_eps_gets_autoattack_when_the_spec_says_so(digits, digits_model, monkeypatch):
    monkeypatch.setitem(P.PANELS, "tiny_all", P.PanelSpec(**{**asdict(TINY), "n": 8, "all_eps": True}))
    seen, real = [], P.autoattack_with_warnings

    def recorded(model, x, y, *, eps, seed):  # AutoAttack itself, its seed and warnings noted
        adv, warnings = real(model, x, y, eps=eps, seed=seed)
        seen.append((eps, seed, warnings))
        return adv, warnings

    monkeypatch.setattr(P, "autoattack_with_warnings", recorded)
    model = _Quantised(digits_model)
    r = P.run_panel(model, digits, CONFIG, panel="tiny_all", n=6, eps=[0.0, 0.2, 0.3], eps_l2=[0.3], seed=3)
    pairs = {(row["attack"], row["eps"]) for row in r["rows"]}
    assert r["n"] == 6 and all(row["n"] == 6 for row in r["rows"])  # n overrides the spec's
    assert {("autoattack", 0.3), ("apgd_t", 0.3), ("apgd_dlr", 0.3), ("pgd_l2", 0.3)} <= pairs
    assert [(e, s) for e, s, _ in seen] == [(0.2, 3), (0.3, 3)]  # the panel's seed
    assert all(w for _, _, w in seen)  # so the warnings of both radii must be kept, in order
    own = [w for w in r["autoattack_warnings"] if ", autoattack: " in w]
    assert own == [f"eps {e:g}, autoattack: {w}" for e, _, ws in seen for w in P._collapse(ws)]
    # the standalone APGD-DLR's warnings (through warnings.warn) are kept too, per radius
    assert {w.split(":")[0] for w in r["autoattack_warnings"] if "apgd_dlr: " in w} == {
        "eps 0.2, apgd_dlr",
        "eps 0.3, apgd_dlr",
    }
    assert ("autoattack", 0.0) not in pairs  # nothing to attack at radius 0
    assert not {e for a, e in pairs if a == "pgd_l2"} - {0.3}
    for row in r["rows"]:  # the budget each row reports, AutoAttack's and APGD's included
        assert (row["steps"], row["restarts"]) == SHOWN[row["attack"]], row


def test_the_surrogate_is_an_independent_model_trained_for_its_epochs(digits, digits_model):
    cpu = torch.device("cpu")
    a = P.train_surrogate(CONFIG, digits, 3, cpu)
    b = P.train_surrogate(CONFIG, digits, 3, cpu)
    other = P.train_surrogate({**CONFIG, "train": {"seed": 1}}, digits, 1, cpu)
    untrained = P.train_surrogate(CONFIG, digits, 0, cpu)
    x, y = digits.test.images(), digits.test.y
    acc = lambda m: _clean(m, x, y).float().mean().item()
    assert not a.training and sum(p.numel() for p in a.parameters()) == sum(
        p.numel() for p in digits_model.parameters()
    )  # the config's architecture
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), other.parameters(), strict=True))
    assert acc(untrained) < 0.15 < 0.2 < acc(a)  # three epochs of Adam at 1e-3 learn (measured 0.11, 0.26)


def test_the_determinism_tolerance_scales_with_the_largest_logit():
    """Logits that move by `change` between two passes on the same images count as the same when
    the change is within 1e-4 of the largest logit (or of 1, for small logits)."""

    class Jitter(torch.nn.Module):  # every other forward pass moves one logit by `change`
        def __init__(self, scale, change):
            super().__init__()
            self.scale, self.change, self.calls = scale, change, 0

        def forward(self, x):
            self.calls += 1
            z = torch.full((len(x), 3), self.scale)
            z[:, 0] += self.change * (self.calls % 2)
            return z

    x, y = torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)
    same = lambda scale, change: P._Panel(Jitter(scale, change), x, y, 0, TINY, None).deterministic["same"]
    assert same(50.0, 4e-3) and not same(50.0, 6e-3)  # 1e-4 of 50
    assert same(0.5, 0.9e-4) and not same(0.5, 1.5e-4)  # 1e-4 of 1, not of 0.5 (nor of 2)


def test_quantiles_are_nearest_rank():
    ranked = torch.arange(1.0, 102.0)  # 1..101
    assert [P._quantile(ranked, p) for p in (10, 50, 90)] == [11.0, 51.0, 91.0]
    assert P._quantile(torch.tensor([0.1, math.inf]), 90) is None  # among the examples never fooled


def test_the_batches_of_an_attack_get_its_knobs_and_their_targets(digits, digits_model):
    """_attack splits the examples in batches of 256 and hands each its slice of the targets and
    the attack's knobs, the same as calling the attack on each batch."""
    x, y = digits.test.images()[:300], digits.test.y[:300]
    t = pick_target("least_likely", digits_model, x, y, 0)  # not the random targets the attack would draw
    fn = ATTACKS["pgd_target_random"][1]
    want = torch.cat(
        [
            fn(digits_model, x[i : i + 256], y[i : i + 256], eps=0.1, seed=0, steps=2, target=t[i : i + 256])
            for i in (0, 256)
        ]
    )
    assert torch.equal(
        P._attack("pgd_target_random", digits_model, x, y, eps=0.1, seed=0, steps=2, target=t), want
    )


def test_batched_attacks_match_one_batch(digits, digits_model):
    x, y = digits.test.images()[:20], digits.test.y[:20]
    whole = P._attack("ifgsm", digits_model, x, y, eps=0.1, seed=0, steps=3)
    assert torch.equal(P._attack("ifgsm", digits_model, x, y, eps=0.1, seed=0, steps=3, bs=7), whole)
    assert P._correct(digits_model, x, y, bs=3).tolist() == _clean(digits_model, x, y).tolist()


def test_an_attack_that_leaves_its_ball_is_refused(digits, digits_model, monkeypatch):
    x, y = digits.test.images()[:4], digits.test.y[:4]
    leaky = lambda model, x, y, *, eps, seed: x + 2 * eps
    monkeypatch.setitem(P.ATTACKS, "leaky", Attack("linf", leaky, "white", ()))
    with pytest.raises(AssertionError, match="left its linf ball of 0.1"):
        P._attack("leaky", digits_model, x, y, eps=0.1, seed=0)


@pytest.mark.parametrize(
    "delta,norm,eps,ok",
    [
        (0.1, "linf", 0.1, True),
        (0.1001, "linf", 0.1, False),
        (0.0624, "l2", 0.5, True),  # 64 pixels of 0.0624: L2 norm 0.4992
        (0.0626, "l2", 0.5, False),  # 0.5008
    ],
)
def test_check_ball_bounds(delta, norm, eps, ok):
    x = torch.full((2, 1, 8, 8), 0.5)
    adv = x + delta
    if ok:
        P.check_ball(adv, x, eps, norm)
    else:
        with pytest.raises(AssertionError):
            P.check_ball(adv, x, eps, norm)


def test_check_ball_refuses_images_outside_the_box():
    x = torch.full((1, 1, 8, 8), 0.0)
    with pytest.raises(AssertionError):
        P.check_ball(x - 0.01, x, 0.1, "linf")
    with pytest.raises(AssertionError):
        P.check_ball(x + 1.01, x + 1, 0.1, "linf")
    P.check_ball(x + 1e-6, x, 0.0, "linf")  # within the tolerance


def test_eps_grid_and_quantiles():
    assert P.eps_grid(0.1) == [0.0, 0.025, 0.05, 0.1, 0.2]
    ranked = torch.arange(1.0, 11.0)
    assert [P._quantile(ranked, p) for p in (10, 25, 50, 75, 90, 100)] == [1, 3, 5, 8, 9, 10]
    assert P._quantile(torch.tensor([0.5]), 1) == 0.5
    assert P._quantile(torch.tensor([0.1, math.inf]), 90) is None


def test_collapse_counts_each_kind_of_warning_once():
    ws = ["rate 12.5% at class 3", "rate 7% at class 4", "zero gradient"]
    assert P._collapse(ws) == ["rate 12.5% at class 3 (2 times)", "zero gradient"]
    assert P._collapse([]) == []


# Sanity checks on hand-made rows: each at the edge of its threshold.
def _result(eps=(0.05, 0.1), large=0.0, same=True, aa=None, **acc):
    base = {"fgsm": 0.5, "pgd": 0.4, "pgd_margin": 0.4, "pgd_strong": 0.4, "noise": 0.9, "transfer": 0.8}
    base |= {"square": 0.7, "ifgsm": 0.45}
    rows = [{"attack": a, "eps": e, "accuracy": acc.get(a, v)} for a, v in base.items() for e in eps]
    rows += [{"attack": "pgd", "eps": 0.0, "accuracy": 0.0}, {"attack": "fgsm", "eps": 0.0, "accuracy": 1.0}]
    rows.append({"attack": "pgd_large_eps", "eps": P.LARGE_EPS, "accuracy": large})
    if aa is not None:
        rows.append({"attack": "autoattack", "eps": 0.1, "accuracy": 0.3})
    det = {"same": same, "max_logit_change": 0.0 if same else 0.25}
    return {"rows": rows, "deterministic": det, "autoattack_warnings": aa or []}


def _verdicts(result):
    return {c["name"]: c["passed"] for c in P.sanity_checks(result)}


NAMES = ["deterministic_model", "large_eps_to_zero", "iterative_beats_single_step"]
NAMES += ["white_box_beats_black_box", "more_steps_no_higher", "gradient_beats_noise", "ce_margin_agree"]


def test_honest_rows_pass_every_check_and_the_names_are_stable():
    checks = P.sanity_checks(_result())
    assert [c["name"] for c in checks] == NAMES and all(c["passed"] for c in checks)
    assert [c["detail"] for c in checks] == [
        "the same images give the same logits",
        "PGD accuracy 0.000 at L-inf eps 0.5 (must be <= 0.05)",
        "PGD <= FGSM at every eps",
        "white box <= transfer and standalone Square at every eps",
        "more steps and restarts never raised accuracy",
        "PGD <= the worst of many noise draws at every eps",
        "cross-entropy and margin PGD within 0.1",
    ]


@pytest.mark.parametrize(
    "name,edge,over",
    [
        ("iterative_beats_single_step", {"pgd": 0.5 + P.TOL}, {"pgd": 0.54, "pgd_margin": 0.54}),
        ("more_steps_no_higher", {"pgd_strong": 0.4 + P.TOL}, {"pgd_strong": 0.44}),
        ("gradient_beats_noise", {"noise": 0.4 - P.TOL + 1e-9}, {"noise": 0.36}),
        ("ce_margin_agree", {"pgd_margin": 0.4 + 0.1 - 1e-9}, {"pgd_margin": 0.51}),
        ("ce_margin_agree", {"pgd_margin": 0.4 - 0.1 + 1e-9}, {"pgd_margin": 0.29}),
        ("white_box_beats_black_box", {"transfer": 0.4 - P.TOL + 1e-9, "square": 0.9}, {"transfer": 0.36}),
        ("white_box_beats_black_box", {"square": 0.4 - P.TOL + 1e-9, "transfer": 0.9}, {"square": 0.36}),
    ],
)
def test_each_per_eps_check_fails_just_past_its_threshold(name, edge, over):
    assert _verdicts(_result(**edge))[name], edge
    failed = {k for k, ok in _verdicts(_result(eps=(0.1,), **over)).items() if not ok}
    assert failed == {name}, over
    detail = next(c["detail"] for c in P.sanity_checks(_result(eps=(0.1,), **over)) if c["name"] == name)
    assert "[0.1]" in detail  # names the radius where it failed


def test_a_check_fails_at_the_eps_where_it_is_violated_only():
    rows = _result(eps=(0.05, 0.1))
    for r in rows["rows"]:
        if r["attack"] == "pgd" and r["eps"] == 0.05:
            r["accuracy"] = 0.6  # above FGSM at 0.05 only (pgd at eps 0 is not judged)
    detail = next(c["detail"] for c in P.sanity_checks(rows) if c["name"] == "iterative_beats_single_step")
    assert detail == "PGD above FGSM at eps [0.05]"


def test_white_box_is_the_best_of_the_white_box_attacks():
    # PGD at 0.4 but ifgsm at 0.2: the best white-box attack (0.2) is compared with the black box
    assert _verdicts(_result(ifgsm=0.2, transfer=0.25))["white_box_beats_black_box"]
    assert not _verdicts(_result(ifgsm=0.2, transfer=0.16))["white_box_beats_black_box"]


def test_large_eps_and_determinism_checks_at_their_edges():
    assert _verdicts(_result(large=0.05))["large_eps_to_zero"]
    assert not _verdicts(_result(large=0.051))["large_eps_to_zero"]
    bad = P.sanity_checks(_result(same=False))
    assert not bad[0]["passed"] and "differ (logits by up to 0.25)" in bad[0]["detail"]
    assert bad[0]["detail"].endswith("needs attacks that average over its randomness (EOT)")
    assert [c["name"] for c in bad if not c["passed"]] == ["deterministic_model"]


def test_autoattack_checks_appear_with_autoattack_and_read_its_warnings():
    assert len(P.sanity_checks(_result(aa=[]))) == len(NAMES) + 3
    ws = [
        "eps 0.1: there are 3 points with zero gradient!",
        "eps 0.1: there are 1 points with zero gradient!",
    ]
    ws += ["eps 0.1: it seems that the model is randomised"]
    checks = {c["name"]: c for c in P.sanity_checks(_result(aa=ws))}
    zero = checks["autoattack_no_zero_gradients"]
    assert not zero["passed"] and zero["detail"].startswith(ws[0] + " (and 1 more such warnings)")
    assert zero["severity"] == P.WEAKER  # the black-box attacks found no more: the worst case covers them
    assert checks["autoattack_square_adds_nothing"] == {
        "name": "autoattack_square_adds_nothing",
        "passed": True,
        "severity": P.MASKING,
        "detail": "pyautoattack (AutoAttack, APGD-DLR, APGD-T, Square) raised no such warning",
    }
    other = checks["autoattack_no_other_warnings"]
    assert not other["passed"] and other["detail"] == ws[2]
    one = {c["name"]: c for c in P.autoattack_checks([ws[0]])}  # black box found more: masking
    assert one["autoattack_no_zero_gradients"]["detail"] == ws[0]
    assert one["autoattack_no_zero_gradients"]["severity"] == P.MASKING
    assert one["autoattack_no_other_warnings"]["detail"] == "pyautoattack raised no other warning"
    two = P.autoattack_checks(["a", "b"])[2]
    assert two["detail"] == "a; b"
