"""The study report's statistics (labcore/stats.py), each checked against scipy or by hand, and
the report built on them: intervals that include the examples' uncertainty, a per-example paired
test between methods, Holm's correction behind every star, a best only where separable, and ε and
n stated on every table, rounded one way on the page and in every export."""

from __future__ import annotations

import random

import pytest
from scipy import stats as sp

from labcore import stats
from labcore.study import StudyDesign, report, to_csv, to_latex, to_markdown

N = 200
DESIGN = {
    "name": "s",
    "scenario": "defense",
    "dataset": {"name": "digits"},
    "methods": [{"method": "erm"}, {"method": "great"}, {"method": "trades"}],
    "seeds": [0, 1, 2],
    "baseline": "erm",
}


def test_student_t_matches_scipy():
    """The API image has no numpy, so the report computes Student's t itself: checked against scipy."""
    for df in (1, 2, 3, 4, 5, 9, 29, 99):
        assert stats.t_quantile_975(df) == pytest.approx(sp.t.ppf(0.975, df), rel=1e-9)
        for t in (0.0, 0.3, 1.0, 2.5, 7.0, 40.0):
            assert stats.t_two_sided_p(t, df) == pytest.approx(2 * sp.t.sf(t, df), rel=1e-8, abs=1e-15)


@pytest.mark.parametrize("k,n", [(0, 0), (0, 5), (3, 10), (7, 10), (40, 100), (12, 13)])
def test_the_exact_binomial_test_matches_scipy(k, n):
    want = 1.0 if n == 0 else sp.binomtest(k, n, 0.5).pvalue
    assert stats.binom_two_sided(k, n) == pytest.approx(want, rel=1e-12)


def test_holm_by_hand():
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0]) and stats.holm([]) == []


def _bits(p: float, rng: random.Random, n: int = N) -> str:
    return "".join("1" if rng.random() < p else "0" for _ in range(n))


def test_three_seeds_that_agree_still_carry_the_examples_uncertainty():
    """Three seeds right on the same 100 of 200 examples: a t interval over seeds is [50, 50]; the
    interval over seeds and examples is about ± 7 points, the binomial's 1.96 sqrt(.25 / 200), both
    from the stored examples and from the accuracies alone. Seeds right on different examples
    average out some of it (about ± 4 to 5 points for three independent halves)."""
    rng = random.Random(1)
    same = sum(1 << i for i in rng.sample(range(N), N // 2))
    for lo, hi in (stats.interval_from_examples([same] * 3, N), stats.interval_from_counts([0.5] * 3, N)):
        assert 0.06 < 0.5 - lo < 0.08 and 0.06 < hi - 0.5 < 0.08
    independent = [sum(1 << i for i in rng.sample(range(N), N // 2)) for _ in range(3)]
    lo, hi = stats.interval_from_examples(independent, N)
    assert 0.03 < 0.5 - lo < 0.06 and 0.03 < hi - 0.5 < 0.06
    assert stats.interval_from_examples(independent, N) == [lo, hi]  # the same runs, the same interval


def test_mcnemar_sums_the_discordant_examples_over_the_seeds_both_have():
    a = {0: 0b1101, 1: 0b0111, 2: 0b1111}
    b = {0: 0b0001, 1: 0b0110}  # seed 2: the baseline has no run
    out = stats.mcnemar(a, b, 4)
    # seed 0: a right & b wrong at examples 2, 3 (b=2), the other way none; seed 1: b=1, c=0
    assert (out["pairs"], out["b"], out["c"]) == (2, 3, 0)
    assert out["p"] == pytest.approx(sp.binomtest(3, 3, 0.5).pvalue)


def _records(acc: dict[str, float], seed_rng: int = 0) -> list[dict]:
    """Runs on the same 200 panel examples: each method's per-example results drawn at its accuracy."""
    rng = random.Random(seed_rng)
    out = []
    for i, (label, p) in enumerate(acc.items()):
        for seed in range(3):
            bits = _bits(p, rng)
            out.append({
                "label": label, "seed": seed, "status": "succeeded", "run_id": 10 * i + seed,
                "metrics": {"autoattack": bits.count("1") / N, "s/step": 0.01},
                "examples": {"autoattack": bits}, "n": {}, "failed_checks": [], "curve": {},
                "sizes": {"eps": 0.1, "eps_l2": 0.5, "n_panel": N, "n_test": 359},
            })  # fmt: skip
    return out


def test_the_report_tests_each_method_per_example_and_corrects_every_star():
    """McNemar on the same examples against the baseline (not a t-test on 3 seed means), its p
    adjusted by Holm over the whole table; intervals over seeds and examples; ε and n stated."""
    design = StudyDesign.model_validate(DESIGN)
    recs = _records({"erm": 0.10, "great": 0.13, "trades": 0.60})
    rep = report(design, recs)
    cells = {r["label"]: r["cells"]["autoattack"] for r in rep["rows"]}
    great, trades = cells["great"], cells["trades"]
    assert great["interval"] == "bootstrap over seeds and examples" and great["examples"] == N
    assert great["ci"][1] - great["ci"][0] > 0.04  # the examples' uncertainty: several points wide
    vs = great["vs_baseline"]
    arm = {r["seed"]: r["examples"]["autoattack"] for r in recs if r["label"] == "great"}
    base = {r["seed"]: r["examples"]["autoattack"] for r in recs if r["label"] == "erm"}
    b = sum(x == "1" and y == "0" for s in range(3) for x, y in zip(arm[s], base[s], strict=True))
    c = sum(x == "0" and y == "1" for s in range(3) for x, y in zip(arm[s], base[s], strict=True))
    assert (vs["test"], vs["b"], vs["c"]) == ("mcnemar", b, c)
    assert vs["p"] == pytest.approx(sp.binomtest(b, b + c, 0.5).pvalue)
    ps = [cells[m]["vs_baseline"]["p"] for m in ("great", "trades")]  # s/step has no spread: no p
    assert vs["p_adjusted"] == pytest.approx(min(1.0, stats.holm(ps)[0]))
    assert trades["vs_baseline"]["p_adjusted"] < 0.05 and trades["text"].endswith("*")
    assert rep["best"]["autoattack"] == ["trades"]  # clear of both others
    md = to_markdown(rep)
    assert "attacks at L-inf ε = 0.1 (L2 ε = 0.5) on n = 200 test examples per run" in md
    assert "test figures on n = 359 test examples" in md and "Holm" in md
    assert "| great | autoattack | mcnemar | 3 |" in md


def test_a_raw_p_below_005_loses_its_star_when_the_family_is_corrected():
    """Two tests (great and trades against erm, on autoattack): great's raw p in (0.025, 0.05) as the
    smaller of the two is doubled by Holm, above 0.05: no star (uncorrected, it had one)."""
    design = StudyDesign.model_validate(DESIGN)
    for seed_rng in range(200):
        rep = report(design, _records({"erm": 0.30, "great": 0.36, "trades": 0.30}, seed_rng))
        great, trades = (rep["rows"][i]["cells"]["autoattack"]["vs_baseline"] for i in (1, 2))
        if 0.025 < great["p"] < 0.05 and trades["p"] > great["p"]:
            break
    else:
        pytest.fail("no draw with great's raw p between 0.025 and 0.05, the smaller of the two")
    assert great["family"] == 2 and great["p_adjusted"] == pytest.approx(2 * great["p"])
    assert not rep["rows"][1]["cells"]["autoattack"]["text"].endswith("*")


def test_no_best_where_the_top_row_is_not_separable_and_one_rounding_everywhere():
    design = StudyDesign.model_validate(DESIGN)
    rep = report(design, _records({"erm": 0.10, "great": 0.55, "trades": 0.57}))
    assert "autoattack" not in rep["best"]  # trades leads great by 2 points: the intervals overlap
    md, tex, csv = to_markdown(rep), to_latex(rep), to_csv(rep)
    assert "**" not in md.split("## Against")[0].split("| erm |")[1]
    for row in rep["rows"]:
        text = row["cells"]["autoattack"]["text"]  # what the page shows
        assert f"| {row['label']} | 3 | {text} |" in md
        assert text.replace(" ± ", r" $\pm$ ") in tex
        assert text in csv
