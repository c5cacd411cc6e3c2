"""The robustness panel (DESIGN section 4): every attack over an epsilon grid on a fixed,
recorded subset of the test split, the point-wise worst case per epsilon, and the sanity checks
that catch gradient masking, reported as pass/fail with the numbers behind them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
from torch import nn

from . import data as gdata
from . import models
from .attacks import ATTACKS
from .methods import make
from .train import train_step

log = logging.getLogger(__name__)

TOL = 0.03  # accuracy slack in the sanity checks (same examples for every attack)
LARGE_EPS = 0.5  # L-inf radius at which any undefended or defended model must fall to ~0


@dataclass(frozen=True)
class PanelSpec:
    n: int  # test examples attacked
    n_aa: int  # of which AutoAttack sees the first n_aa
    steps: int  # PGD steps
    strong_steps: int  # the "more steps and restarts" PGD
    strong_restarts: int
    square_queries: int
    surrogate_epochs: int
    aa_all_eps: bool  # AutoAttack at every epsilon, or at the standard one only


PANELS = {
    "quick": PanelSpec(
        n=200,
        n_aa=50,
        steps=10,
        strong_steps=50,
        strong_restarts=2,
        square_queries=300,
        surrogate_epochs=5,
        aa_all_eps=False,
    ),
    "standard": PanelSpec(
        n=1000,
        n_aa=1000,
        steps=20,
        strong_steps=100,
        strong_restarts=5,
        square_queries=5000,
        surrogate_epochs=30,
        aa_all_eps=True,
    ),
}


def eps_grid(std_eps: float) -> list[float]:
    return [0.0, std_eps / 4, std_eps / 2, std_eps, 2 * std_eps]


def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bs: int = 512) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(x[i : i + bs]).argmax(1) == y[i : i + bs] for i in range(0, len(x), bs)])


def _attack(name: str, model, x, y, *, eps: float, seed: int, bs: int = 256, **kw) -> torch.Tensor:
    """Run a registered attack in batches; returns adversarial images checked against the ball."""
    norm, fn = ATTACKS[name]
    out = torch.cat(
        [fn(model, x[i : i + bs], y[i : i + bs], eps=eps, seed=seed, **kw) for i in range(0, len(x), bs)]
    )
    check_ball(out, x, eps, norm)
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
    """Evaluate `model` (images in [0, 1] -> logits) and return rows, worst case and checks."""
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
        p.linf_attacks(e, autoattack=e > 0 and (spec.aa_all_eps or abs(e - std_linf) < 1e-12))
    for e in eps_l2 or [0.0, std_l2 / 2, std_l2, 2 * std_l2]:
        p.add("pgd_l2", e, p.correct("pgd_l2", eps=e, **p.pgd_kw), norm="l2", **p.pgd_kw)
    big = {"steps": spec.strong_steps, "restarts": 1}
    p.add("pgd_large_eps", LARGE_EPS, p.correct("pgd", eps=LARGE_EPS, **big), **big)
    result = {
        "panel": panel,
        "n": n,
        "seed": seed,
        "clean_accuracy": p.clean.float().mean().item(),
        "subset_hash": gdata._hash(idx),
        "std_eps": std_linf,
        "std_eps_l2": std_l2,
        "rows": p.rows + [p.worst_case(e) for e in eps],
        "seconds": time.monotonic() - t0,
    }
    result["checks"] = sanity_checks(result)
    result["gallery"] = gallery(model, x[:6], y[:6], eps=std_linf, seed=seed, steps=spec.steps)
    return result


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

    def correct(self, attack: str, *, seed_offset: int = 0, **kw) -> torch.Tensor:
        """Which examples the model still classifies correctly under `attack`."""
        adv = _attack(attack, self.model, self.x, self.y, seed=self.seed + seed_offset, **kw)
        return _correct(self.model, adv, self.y)

    def add(self, attack: str, e: float, mask: torch.Tensor, norm: str = "linf", **extra) -> None:
        self.masks[(attack, e)] = mask
        self.rows.append(
            {
                "attack": attack,
                "norm": norm,
                "eps": e,
                "accuracy": mask.float().mean().item(),
                "n": len(mask),
                "steps": extra.pop("steps", None),
                "restarts": extra.pop("restarts", None),
                **extra,
            }
        )

    def linf_attacks(self, e: float, *, autoattack: bool) -> None:
        spec, kw = self.spec, self.pgd_kw
        self.add("fgsm", e, self.correct("fgsm", eps=e), steps=1, restarts=1)
        for name in ("pgd", "pgd_margin", "pgd_target_random", "pgd_target_ll"):
            self.add(name, e, self.correct(name, eps=e, **kw), **kw)
        strong = {"steps": spec.strong_steps, "restarts": spec.strong_restarts}
        self.add("pgd_strong", e, self.correct("pgd", eps=e, seed_offset=1, **strong), **strong)
        self.add("noise", e, self.correct("noise", eps=e))
        self.add(
            "square", e, self.correct("square", eps=e, queries=spec.square_queries), steps=spec.square_queries
        )
        x_tr = _attack(
            "pgd", self.surrogate, self.x, self.y, eps=e, seed=self.seed, **kw
        )  # crafted on the surrogate
        self.add("transfer", e, _correct(self.model, x_tr, self.y), **kw)
        if autoattack:
            self.autoattack(e)

    def autoattack(self, e: float) -> None:
        n = len(self.y)
        m = n if self.spec.aa_all_eps else min(self.spec.n_aa, n)
        adv = _attack("autoattack", self.model, self.x[:m], self.y[:m], eps=e, seed=self.seed, bs=m)
        aa = _correct(self.model, adv, self.y[:m])
        self.masks[("autoattack", e)] = torch.cat(
            [aa, self.clean[m:]]
        )  # examples past n_aa: not attacked by AA
        self.rows.append(
            {
                "attack": "autoattack",
                "norm": "linf",
                "eps": e,
                "accuracy": aa.float().mean().item(),
                "n": m,
                "steps": 100,
                "restarts": 1,
            }
        )

    def worst_case(self, e: float) -> dict:
        """Correct only if correct under every L-inf attack at `e` (the large-eps check excluded)."""
        w = self.clean.clone()
        for (a, ee), m in self.masks.items():
            if ee == e and ATTACKS.get(a, ("linf",))[0] == "linf" and a != "pgd_large_eps":
                w &= m
        return {
            "attack": "worst_case",
            "norm": "linf",
            "eps": e,
            "accuracy": w.float().mean().item(),
            "n": len(w),
        }


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


def sanity_checks(result: dict) -> list[dict]:
    """Gradient-masking red flags (Athalye et al. 2018; Carlini et al. 2019), each pass/fail."""
    acc = {(r["attack"], r["eps"]): r["accuracy"] for r in result["rows"]}
    eps = sorted({e for (a, e) in acc if a == "pgd" and e > 0})
    clean = result["clean_accuracy"]
    checks = []

    def check(name: str, ok: bool, detail: str):
        checks.append({"name": name, "passed": bool(ok), "detail": detail})

    def worst_over(names, e):
        return min(acc[(a, e)] for a in names if (a, e) in acc)

    white = ("fgsm", "pgd", "pgd_margin", "pgd_strong", "autoattack")
    bad = [e for e in eps if acc[("pgd", e)] > acc[("fgsm", e)] + TOL]
    check(
        "iterative_beats_single_step",
        not bad,
        f"PGD above FGSM at eps {bad}" if bad else "PGD <= FGSM at every eps",
    )
    big = acc[("pgd_large_eps", LARGE_EPS)]
    check(
        "large_eps_to_zero", big <= 0.05, f"PGD accuracy {big:.3f} at L-inf eps {LARGE_EPS} (must be <= 0.05)"
    )
    bad = [e for e in eps if worst_over(white, e) > min(acc[("transfer", e)], acc[("square", e)]) + TOL]
    check(
        "white_box_beats_black_box",
        not bad,
        f"transfer or Square beat the white-box attacks at eps {bad}"
        if bad
        else "white box <= transfer and Square",
    )
    bad = [e for e in eps if acc[("pgd_strong", e)] > acc[("pgd", e)] + TOL]
    check(
        "more_steps_no_higher", not bad, f"more steps/restarts raised accuracy at eps {bad}" if bad else "ok"
    )
    bad = [e for e in eps if acc[("pgd", e)] > acc[("noise", e)] + TOL]
    check("gradient_beats_noise", not bad, f"random noise beat PGD at eps {bad}" if bad else "ok")
    bad = [e for e in eps if abs(acc[("pgd", e)] - acc[("pgd_margin", e)]) > 0.1]
    check("ce_margin_agree", not bad, f"CE and margin PGD differ by > 0.1 at eps {bad}" if bad else "ok")
    zero = [a for (a, e), v in acc.items() if e == 0 and abs(v - clean) > 1e-9 and a != "autoattack"]
    check("eps0_is_clean", not zero, f"eps 0 differs from clean for {zero}" if zero else "ok")
    return checks
