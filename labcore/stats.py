"""The study report's statistics, in plain Python (the API image has no numpy or scipy; each
function is checked against scipy in tests/test_study_stats.py).

- `hierarchical_interval`: a 95 % percentile interval of a mean accuracy over seeds that includes
  both sources of uncertainty, the seeds and the test examples: each bootstrap replicate resamples
  the seeds, then the examples. Where each example's result is stored (the panel's attacks, on the
  same examples for every seed and method) the examples are resampled once per replicate for all
  seeds together, keeping their correlation; where only an accuracy and its n are known (test
  accuracy over the whole split) each seed's count is drawn from its binomial, at one quantile
  for all seeds (the shared split's correlation taken as full: the wider interval).
- `mcnemar`: the exact McNemar test between two methods on the same examples, its discordant
  pairs summed over the seeds both have.
- `holm`: Holm's step-down adjustment of a family of p-values (every test a report makes).
- `t_two_sided_p`, `t_quantile_975`: Student's t, for the columns with no examples behind them.
"""

from __future__ import annotations

import bisect
import math
import random
from functools import lru_cache

REPLICATES = 1000
SEED = 20181108  # fixed: the same runs give the same interval, byte for byte


# ---- Student's t: the regularised incomplete beta function by its continued fraction (Numerical
# Recipes 6.4) ----------------------------------------------------------------------------------
_TINY = 1e-300


def _betacf(a: float, b: float, x: float) -> float:
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, 400):
        even = m * (b - m) * x / ((a - 1.0 + 2 * m) * (a + 2 * m))
        odd = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 1.0 + 2 * m))
        for coef in (even, odd):
            d = 1.0 + coef * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + coef / c
            c = c if abs(c) > _TINY else _TINY
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    front = math.exp(
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: int) -> float:
    """P(|T| >= |t|) for Student's t with `df` degrees of freedom."""
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def t_quantile_975(df: int) -> float:
    """The 97.5 % quantile of Student's t (the half-width factor of a 95 % interval), by bisection."""
    lo, hi = 0.0, 1e4
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_two_sided_p(mid, df) > 0.05 else (lo, mid)
    return (lo + hi) / 2


# ---- the hierarchical bootstrap -----------------------------------------------------------------


@lru_cache(maxsize=64)
def _seed_draws(k: int) -> tuple[tuple[int, ...], ...]:
    """Per replicate, how often each of k seeds is drawn (k draws with replacement)."""
    rng = random.Random(SEED + k)
    out = []
    for _ in range(REPLICATES):
        counts = [0] * k
        for i in rng.choices(range(k), k=k):
            counts[i] += 1
        out.append(tuple(counts))
    return tuple(out)


@lru_cache(maxsize=16)
def _example_planes(n: int) -> tuple[tuple[int, ...], ...]:
    """Per replicate, the example resample (n draws with replacement) as bit planes: example i was
    drawn w_i = sum_j 2^j [bit i of plane j] times, so sum_i w_i b_i = sum_j 2^j popcount(b & plane_j)
    for a bit mask b of the examples."""
    rng = random.Random(SEED + 7919 * n)
    out = []
    for _ in range(REPLICATES):
        counts = [0] * n
        for i in rng.choices(range(n), k=n):
            counts[i] += 1
        planes = []
        for j in range(max(counts).bit_length()):
            planes.append(sum(1 << i for i, w in enumerate(counts) if w >> j & 1))
        out.append(tuple(planes))
    return tuple(out)


def bits_to_int(bits: str) -> int:
    """'0110...' (example i correct at position i) as an integer mask, example i at bit i."""
    return int(bits[::-1], 2) if bits else 0


def _percentile(values: list[float]) -> list[float]:
    v = sorted(values)
    lo, hi = v[int(0.025 * (len(v) - 1))], v[int(math.ceil(0.975 * (len(v) - 1)))]
    return [lo, hi]


def interval_from_examples(masks: list[int], n: int) -> list[float]:
    """95 % interval of the mean accuracy over seeds; masks[s]: seed s's correct examples (the
    same n examples for every seed), seeds and examples resampled together."""
    k, planes = len(masks), _example_planes(n)
    means = []
    for seeds, ex in zip(_seed_draws(k), planes, strict=True):
        hits = [sum((m & p).bit_count() << j for j, p in enumerate(ex)) for m in masks]
        means.append(sum(c * h for c, h in zip(seeds, hits, strict=True)) / (k * n))
    return _percentile(means)


def _binomial_cdf(n: int, p: float) -> list[float]:
    if p <= 0.0 or p >= 1.0:
        return [0.0 if (p >= 1.0 and i < n) else 1.0 for i in range(n + 1)]
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * math.log(p)
            + (n - i) * math.log1p(-p) for i in range(n + 1)]  # fmt: skip
    out, total = [], 0.0
    for v in logs:
        total += math.exp(v)
        out.append(total)
    return out


def interval_from_counts(accs: list[float], n: int) -> list[float]:
    """95 % interval of the mean accuracy over seeds when only each seed's accuracy on n examples is
    known (a test split every seed shares): seeds resampled, then one draw of the examples for all
    seeds together, each drawn seed's count at the same quantile of its Binomial(n, accuracy). That
    takes the seeds' results on the shared examples as fully correlated: the widest the examples'
    share can be, never narrower than one run's own binomial interval."""
    k = len(accs)
    cdfs = [_binomial_cdf(n, a) for a in accs]
    rng = random.Random(SEED + 31 * n + k)
    means = []
    for seeds in _seed_draws(k):
        u = rng.random()
        counts = [min(n, bisect.bisect_left(cdf, u * cdf[-1])) for cdf in cdfs]
        means.append(sum(c * x for c, x in zip(seeds, counts, strict=True)) / (k * n))
    return _percentile(means)


# ---- tests between methods ------------------------------------------------------------------------


def binom_two_sided(k: int, n: int) -> float:
    """Exact two-sided binomial test of k successes in n at p = 1/2 (scipy's binomtest)."""
    if n == 0:
        return 1.0
    k = min(k, n - k)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def mcnemar(arm: dict[int, int], base: dict[int, int], n: int) -> dict | None:
    """The exact McNemar test on the examples both runs of each shared seed judged: b examples
    right for the arm and wrong for the baseline, c the other way round, summed over the seeds.
    None without a shared seed."""
    seeds = sorted(set(arm) & set(base))
    if not seeds:
        return None
    full = (1 << n) - 1
    b = sum((arm[s] & ~base[s] & full).bit_count() for s in seeds)
    c = sum((base[s] & ~arm[s] & full).bit_count() for s in seeds)
    return {"test": "mcnemar", "pairs": len(seeds), "b": b, "c": c, "p": binom_two_sided(b, b + c)}


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    out, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out
