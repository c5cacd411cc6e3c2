"""The robustness panel (docs/design.md section 4): every attack over an epsilon grid on a fixed,
recorded subset of the test split, the point-wise worst case per epsilon, and the sanity checks
that catch gradient masking, reported as pass/fail with the numbers behind them.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from . import data as gdata
from . import models
from .attacks import ATTACKS, budget, pick_target
from .attacks.reference import autoattack_with_warnings, caught_warnings, fab_min_norm
from .methods import make
from .probe import gradient_probe
from .stats import wilson
from .train import train_step

log = logging.getLogger(__name__)

TOL = 0.03  # accuracy slack in the sanity checks (same examples for every attack)
LARGE_EPS = 0.5  # L-inf radius at which any undefended or defended model must fall to ~0
# The rows the white-box vs black-box check compares, from the registry's own metadata: every untargeted
# L-inf attack that reads gradients, with the panel's own white-box rows (PGD with more steps and
# restarts; FAB's minimum norm); every black-box one (a standalone Square of the full budget, never
# AutoAttack's), with PGD transferred from a surrogate.
WHITE_BOX = (
    *(n for n, a in ATTACKS.items() if a.box == "white" and a.norm == "linf" and "target" not in a.knobs),
    "pgd_strong",
    "fab",
)
BLACK_BOX = (*(n for n, a in ATTACKS.items() if a.box == "black"), "transfer")


@dataclass(frozen=True)
class PanelSpec:
    n: int  # test examples attacked, every attack on the same ones
    steps: int  # PGD steps
    strong_steps: int  # the "more steps and restarts" PGD
    strong_restarts: int
    apgd_steps: int  # APGD-DLR and APGD-T alone
    fab_steps: int  # the minimum-norm attack
    square_queries: int
    noise_draws: int  # uniform noise: draws per example, the worst kept
    surrogate_epochs: int
    all_eps: bool  # AutoAttack and the APGD attacks at every epsilon, or at the standard one only


PANELS = {
    "quick": PanelSpec(
        n=200,
        steps=10,
        strong_steps=50,
        strong_restarts=2,
        apgd_steps=50,
        fab_steps=50,
        square_queries=1000,
        noise_draws=20,
        surrogate_epochs=5,
        all_eps=False,
    ),
    "standard": PanelSpec(
        n=1000,
        steps=20,
        strong_steps=100,
        strong_restarts=5,
        apgd_steps=100,
        fab_steps=100,
        square_queries=5000,
        noise_draws=100,
        surrogate_epochs=30,
        all_eps=True,
    ),
}


def eps_grid(std_eps: float) -> list[float]:
    return [0.0, std_eps / 4, std_eps / 2, std_eps, 2 * std_eps]


def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bs: int = 512) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(x[i : i + bs]).argmax(1) == y[i : i + bs] for i in range(0, len(x), bs)])


def _attack(
    name: str, model, x, y, *, eps: float, seed: int, bs: int = 256, target=None, **kw
) -> torch.Tensor:
    """Run a registered attack in batches (a targeted one's targets batched with x and y); returns
    adversarial images checked against the ball."""
    attack = ATTACKS[name]
    each = lambda i: {} if target is None else {"target": target[i : i + bs]}
    out = torch.cat(
        [
            attack.fn(model, x[i : i + bs], y[i : i + bs], eps=eps, seed=seed, **kw, **each(i))
            for i in range(0, len(x), bs)
        ]
    )
    check_ball(out, x, eps, attack.norm)
    return out


def check_ball(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str, tol: float = 1e-5) -> None:
    d = (x_adv - x).flatten(1)
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    if size.max() > eps + tol or x_adv.min() < -tol or x_adv.max() > 1 + tol:
        raise AssertionError(f"attack left its {norm} ball of {eps} or the [0, 1] box")


def train_surrogate(config: dict, data: gdata.Data, epochs: int, device: torch.device) -> nn.Module:
    """An independently trained ERM model (other seed) for the black-box transfer attack."""
    torch.manual_seed(config["train"]["seed"] + 7919)
    sur = models.build(
        config["model"],
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        mean=data.mean,
        std=data.std,
    ).to(device)

    method = make("defense", "erm", sur, num_classes=data.num_classes, input_shape=data.input_shape)
    opt = torch.optim.Adam(sur.parameters(), lr=1e-3)
    for epoch in range(epochs):
        for _, x, y in gdata.batches(data.train, 64, shuffle=True, seed=10_000 + epoch):
            train_step(method, opt, None, x.to(device), y.to(device), 0.0, 0)
    return sur.eval()


def run_panel(
    model: nn.Module,
    data: gdata.Data,
    config: dict,
    *,
    panel: str = "quick",
    n: int | None = None,
    eps: list[float] | None = None,
    eps_l2: list[float] | None = None,
    seed: int = 0,
    device: torch.device | None = None,
) -> dict:
    """Evaluate `model` (images in [0, 1] -> logits) and return rows, worst case, checks and probe."""
    spec = PANELS[panel]
    device = device or next(model.parameters()).device
    model = model.eval().to(device)
    std_linf, std_l2 = gdata.STANDARD_EPS[config["dataset"]["name"]]
    eps = eps or eps_grid(std_linf)
    n = min(n or spec.n, len(data.test))
    idx = torch.randperm(len(data.test), generator=torch.Generator().manual_seed(seed))[:n]
    x, y = data.test.images(idx).to(device), data.test.y[idx].to(device)
    t0 = time.monotonic()
    p = _Panel(model, x, y, seed, spec, train_surrogate(config, data, spec.surrogate_epochs, device))
    for e in eps:
        p.linf_attacks(e, full=e > 0 and (spec.all_eps or abs(e - std_linf) < 1e-12))
    p.min_norm(eps)
    for e in eps_l2 or [0.0, std_l2 / 2, std_l2, 2 * std_l2]:
        p.add("pgd_l2", e, p.correct("pgd_l2", eps=e, **p.pgd_kw), norm="l2", **p.pgd_kw)
    big = {"steps": spec.strong_steps, "restarts": 1}
    p.add("pgd_large_eps", LARGE_EPS, p.correct("pgd", eps=LARGE_EPS, **big), **big)
    k = int(p.clean.sum())
    result = {
        "panel": panel,
        "n": n,
        "seed": seed,
        "clean_accuracy": k / n,
        "clean_ci": list(wilson(k, n)),
        "subset_hash": gdata._hash(idx),
        "std_eps": std_linf,
        "std_eps_l2": std_l2,
        "rows": p.rows + [p.worst_case(e) for e in eps],
        "deterministic": p.deterministic,
        "autoattack_warnings": p.aa_warnings,
        "per_example": p.per_example(std_linf, std_l2),
        "min_norm": p.norms_summary,
        "probe": gradient_probe(model, data, device=device, seed=seed),
        "spec": asdict(spec),
    }
    result["checks"] = sanity_checks(result)
    result["masking_suspected"] = masking_suspected(result["checks"])
    result["gallery"] = gallery(model, x[:6], y[:6], eps=std_linf, seed=seed, steps=spec.steps)
    result["seconds"] = time.monotonic() - t0
    return result


def _row(attack: str, norm: str, e: float, mask: torch.Tensor, **extra) -> dict:
    k, n = int(mask.sum()), len(mask)
    return {
        "attack": attack,
        "norm": norm,
        "eps": e,
        "accuracy": k / n,
        "n": n,
        "ci": list(wilson(k, n)),
        "steps": extra.pop("steps", None),
        "restarts": extra.pop("restarts", None),
        "info": extra or None,
    }


class _Panel:
    """One panel's examples, its rows, and each attack's per-example success mask."""

    def __init__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int, spec, surrogate: nn.Module
    ):
        self.model, self.x, self.y, self.seed, self.spec, self.surrogate = model, x, y, seed, spec, surrogate
        self.clean = _correct(model, x, y)
        self.pgd_kw = {"steps": spec.steps, "restarts": 1}
        self.rows: list[dict] = []
        self.masks: dict[tuple[str, float], torch.Tensor] = {}
        self.aa_warnings: list[str] = []
        self.norms_summary: dict | None = None
        with torch.no_grad():
            a, b = model(x), model(x)
        change = (a - b).abs().max().item()
        self.deterministic = {
            "max_logit_change": change,
            "same": bool(change <= 1e-4 * max(a.abs().max().item(), 1.0)),
        }

    def correct(self, attack: str, *, seed_offset: int = 0, **kw) -> torch.Tensor:
        """Which examples the model still classifies correctly under `attack` (the warnings of a
        pyautoattack attack kept with AutoAttack's own)."""
        with caught_warnings() as warned:
            adv = _attack(attack, self.model, self.x, self.y, seed=self.seed + seed_offset, **kw)
        if ATTACKS[attack].reference:
            self.aa_warnings += [f"eps {kw['eps']:g}, {attack}: {w}" for w in _collapse(warned)]
        return _correct(self.model, adv, self.y)

    def add(self, attack: str, e: float, mask: torch.Tensor, norm: str = "linf", **extra) -> None:
        self.masks[(attack, e)] = mask
        self.rows.append(_row(attack, norm, e, mask, **extra))

    def linf_attacks(self, e: float, *, full: bool) -> None:
        """Every L-inf attack at `e` on the panel's examples; `full` adds AutoAttack and APGD-DLR/-T.
        At eps 0 each attack's accuracy is the clean accuracy (no perturbation is allowed)."""
        spec, kw = self.spec, self.pgd_kw
        strong = {"steps": spec.strong_steps, "restarts": spec.strong_restarts}
        plain = {
            "fgsm": ({}, {"steps": 1, "restarts": 1}),
            "ifgsm": (kw, {"steps": spec.steps, "restarts": 1}),
            "pgd": (kw, kw),
            "pgd_margin": (kw, kw),
            "pgd_strong": (strong, strong),
            "noise": ({"draws": spec.noise_draws}, {"restarts": spec.noise_draws}),
            "square": ({"queries": spec.square_queries}, {"steps": spec.square_queries}),
        }
        for name, (knobs, shown) in plain.items():
            attack = "pgd" if name == "pgd_strong" else name
            off = 1 if name == "pgd_strong" else 0
            mask = (
                self.clean
                if e == 0
                else self.correct(attack, eps=e, seed_offset=off, **budget(attack, **knobs))
            )
            self.add(name, e, mask, **shown)
        for kind in ("random", "least_likely"):
            self.targeted(kind, e)
        crafted = _attack("pgd", self.surrogate, self.x, self.y, eps=e, seed=self.seed, **kw)
        self.add("transfer", e, _correct(self.model, crafted, self.y), **kw)
        if full:
            steps = {"steps": spec.apgd_steps, "restarts": 1}
            self.add("apgd_dlr", e, self.correct("apgd_dlr", eps=e, **steps), **steps)
            self.add("apgd_t", e, self.correct("apgd_t", eps=e, **budget("apgd_t", **steps)), **steps)
            self.autoattack(e)

    def targeted(self, kind: str, e: float) -> None:
        """Targeted PGD, scored as accuracy (for the worst case) and as the rate of reaching the target."""
        name = "pgd_target_random" if kind == "random" else "pgd_target_ll"
        target = pick_target(kind, self.model, self.x, self.y, self.seed)
        adv = _attack(name, self.model, self.x, self.y, eps=e, seed=self.seed, target=target, **self.pgd_kw)
        with torch.no_grad():
            pred = self.model(adv).argmax(1)
        hit = int((pred == target).sum())
        self.add(
            name,
            e,
            pred == self.y,
            **self.pgd_kw,
            target_success=hit / len(pred),
            target_ci=list(wilson(hit, len(pred))),
        )

    def autoattack(self, e: float) -> None:
        adv, warnings = autoattack_with_warnings(self.model, self.x, self.y, eps=e, seed=self.seed)
        check_ball(adv, self.x, e, "linf")
        self.aa_warnings += [f"eps {e:g}, autoattack: {w}" for w in _collapse(warnings)]
        self.add("autoattack", e, _correct(self.model, adv, self.y), steps=100, restarts=1)

    def min_norm(self, eps: list[float]) -> None:
        """FAB's smallest L-inf perturbation per example: a row per eps (robust where it is larger)
        and the distribution (median, quantiles, every example's value; None where none was found)."""
        norms = fab_min_norm(self.model, self.x, self.y, seed=self.seed, steps=self.spec.fab_steps)
        steps = {"steps": self.spec.fab_steps, "restarts": 1}
        for e in eps:
            self.add("fab", e, self.clean if e == 0 else self.clean & (norms > e), **steps)
        ranked = norms.sort().values
        q = {str(p): _quantile(ranked, p) for p in (10, 25, 50, 75, 90)}
        self.norms_summary = {
            "attack": "fab",
            "norm": "linf",
            "steps": self.spec.fab_steps,
            "median": q["50"],
            "quantiles": q,
            "found": int(torch.isfinite(norms).sum()),
            "n": len(norms),
            "norms": [None if not torch.isfinite(v) else round(v.item(), 6) for v in norms],
        }

    def _worst_mask(self, e: float) -> torch.Tensor:
        w = self.clean.clone()
        for (a, ee), m in self.masks.items():
            if ee == e and a not in ("pgd_l2", "pgd_large_eps"):
                w &= m
        return w

    def worst_case(self, e: float) -> dict:
        """Correct only if correct under every L-inf attack at `e` (the large-eps check excluded)."""
        return _row("worst_case", "linf", e, self._worst_mask(e))

    def per_example(self, std: float, std_l2: float) -> dict:
        """Which examples each attack at the standard radii left correct ('1' at position i: example
        i of the panel's subset): what a study's paired tests and intervals over examples read."""
        bits = lambda m: "".join("1" if v else "0" for v in m.tolist())
        at_std = {a: bits(m) for (a, e), m in self.masks.items() if e == std and a != "pgd_l2"}
        at_std.update({a: bits(m) for (a, e), m in self.masks.items() if a == "pgd_l2" and e == std_l2})
        return {"eps": std, "eps_l2": std_l2, "correct": {"clean": bits(self.clean), **at_std,
                "worst_case": bits(self._worst_mask(std))}}  # fmt: skip


def _collapse(warnings: list[str]) -> list[str]:
    """One line per kind of warning (AutoAttack repeats one per target class), with its count."""
    kinds: dict[str, list[str]] = {}
    for w in warnings:
        kinds.setdefault(re.sub(r"[0-9.]+%?", "#", w), []).append(w)
    return [ws[0] + (f" ({len(ws)} times)" if len(ws) > 1 else "") for ws in kinds.values()]


def _quantile(ranked: torch.Tensor, p: int) -> float | None:
    """Nearest-rank percentile of sorted values; None when it falls among the examples FAB never fooled."""
    v = ranked[min(len(ranked) - 1, max(0, -(-p * len(ranked) // 100) - 1))]
    return v.item() if torch.isfinite(v) else None


def gallery(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, seed: int, steps: int) -> dict:
    """A few clean images, their PGD counterparts at the standard radius, and the perturbations."""
    x_adv = _attack("pgd", model, x, y, eps=eps, seed=seed, steps=steps)
    with torch.no_grad():
        pc, pa = model(x).argmax(1), model(x_adv).argmax(1)
    return {
        "attack": "pgd",
        "eps": eps,
        "label": y.tolist(),
        "pred_clean": pc.tolist(),
        "pred_adv": pa.tolist(),
        "clean": x.cpu().tolist(),
        "adv": x_adv.cpu().tolist(),
        "delta": (x_adv - x).cpu().tolist(),
    }


def _worst(acc: dict, names, e: float) -> float:
    return min(acc[(a, e)] for a in names if (a, e) in acc)


# Checks over the epsilon grid: (name, fails at eps e given accuracies acc, failure, pass, severity).
# MASKING: the robustness numbers themselves may be inflated (gradient masking); do not trust them.
# WEAKER: one attack was weaker than another; the worst case takes the stronger, so it stands.
MASKING, WEAKER = "masking", "weaker_attack"
PER_EPS = [
    (
        "iterative_beats_single_step",
        lambda acc, e: acc[("pgd", e)] > acc[("fgsm", e)] + TOL,
        "PGD above FGSM at eps {}",
        "PGD <= FGSM at every eps",
        MASKING,
    ),
    (
        "white_box_beats_black_box",
        lambda acc, e: _worst(acc, WHITE_BOX, e) > _worst(acc, BLACK_BOX, e) + TOL,
        "a black-box attack (transfer or standalone Square) beat every white-box attack at eps {}",
        "white box <= transfer and standalone Square at every eps",
        MASKING,
    ),
    (
        "more_steps_no_higher",
        lambda acc, e: acc[("pgd_strong", e)] > acc[("pgd", e)] + TOL,
        "more steps and restarts raised accuracy at eps {}",
        "more steps and restarts never raised accuracy",
        MASKING,
    ),
    (
        "gradient_beats_noise",
        lambda acc, e: acc[("pgd", e)] > acc[("noise", e)] + TOL,
        "the worst of many uniform noise draws beat PGD at eps {}",
        "PGD <= the worst of many noise draws at every eps",
        MASKING,
    ),
    (
        "ce_margin_agree",
        lambda acc, e: abs(acc[("pgd", e)] - acc[("pgd_margin", e)]) > 0.1,
        "cross-entropy and margin PGD differ by > 0.1 at eps {} (saturated logits?): the weaker of"
        " the two is not to be read alone; the worst case takes both, and APGD-DLR",
        "cross-entropy and margin PGD within 0.1",
        WEAKER,
    ),
]


def sanity_checks(result: dict) -> list[dict]:
    """Gradient-masking red flags (Athalye et al. 2018; Carlini et al. 2019), each pass/fail with its
    severity (MASKING or WEAKER). Each one is shown failing on a model built to violate it in
    tests/gat/test_checks.py."""
    acc = {(r["attack"], r["eps"]): r["accuracy"] for r in result["rows"]}
    eps = sorted({e for (a, e) in acc if a == "pgd" and e > 0})
    det, big = result["deterministic"], acc[("pgd_large_eps", LARGE_EPS)]
    checks = [
        {
            "name": "deterministic_model",
            "passed": det["same"],
            "severity": MASKING,
            "detail": "the same images give the same logits"
            if det["same"]
            else f"two forward passes on the same images differ (logits by up to {det['max_logit_change']:.3g}):"
            " a randomised model needs attacks that average over its randomness (EOT)",
        },
        {
            "name": "large_eps_to_zero",
            "passed": big <= 0.05,
            "severity": MASKING,
            "detail": f"PGD accuracy {big:.3f} at L-inf eps {LARGE_EPS} (must be <= 0.05)",
        },
    ]
    for name, fails, bad_text, ok_text, severity in PER_EPS:
        bad = [e for e in eps if fails(acc, e)]
        checks.append(
            {
                "name": name,
                "passed": not bad,
                "severity": severity,
                "detail": bad_text.format(bad) if bad else ok_text,
            }
        )
    if any(a == "autoattack" for a, _ in acc):
        black_box_found_more = not next(c for c in checks if c["name"] == "white_box_beats_black_box")[
            "passed"
        ]
        checks += autoattack_checks(result["autoattack_warnings"], black_box_found_more)
    return checks


def masking_suspected(checks: list[dict]) -> bool:
    """A failed check of MASKING severity: the panel's numbers may be inflated."""
    return any(not c["passed"] and c.get("severity", MASKING) == MASKING for c in checks)


AA_WARNINGS = {  # check name -> the phrase that pyautoattack's own check logs
    "autoattack_no_zero_gradients": "zero gradient",
    "autoattack_square_adds_nothing": "Square Attack has decreased",
}


def autoattack_checks(warnings: list[str], black_box_found_more: bool = True) -> list[dict]:
    """pyautoattack's own flags as checks: zero gradients, Square beating its gradient attacks, and
    any other warning it raises (a randomised or dynamic model, probabilities for logits). Zero
    gradients at some points are masking unless the black-box attacks (which need no gradient) found
    no more than the white-box worst case: then the worst case covers those points."""
    out = []
    for name, phrase in AA_WARNINGS.items():
        hits = [w for w in warnings if phrase in w]
        detail = (
            hits[0] + (f" (and {len(hits) - 1} more such warnings)" if len(hits) > 1 else "")
            if hits
            else "pyautoattack (AutoAttack, APGD-DLR, APGD-T, Square) raised no such warning"
        )
        severity = MASKING
        if hits and name == "autoattack_no_zero_gradients" and not black_box_found_more:
            severity = WEAKER
            detail += (
                "; the gradient attacks were blind at those points, but the black-box attacks (Square,"
                " transfer) found no more than the white-box worst case, which covers them"
            )
        out.append({"name": name, "passed": not hits, "severity": severity, "detail": detail})
    rest = [w for w in warnings if not any(p in w for p in AA_WARNINGS.values())]
    out.append(
        {
            "name": "autoattack_no_other_warnings",
            "passed": not rest,
            "severity": MASKING,
            "detail": "; ".join(rest) or "pyautoattack raised no other warning",
        }
    )
    return out
