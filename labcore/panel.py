"""One robustness panel's result, typed: what the worker's panel returns (and eval.json holds), what the
store keeps in three tables, what the API answers, what the CLI prints and what a study reads.

`PanelResult.model_validate(eval_json)` reads the worker's result; `to_rows` / `from_rows` are the one
mapping to and from the store's rows (`EvalResult`, `EvalSummary`, `SanityCheck`); `view` is the API's
shape; `at_standard_eps` picks an attack's row at the panel's standard radius.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

# What of a result the summary row keeps, in this order (the rest is the rows and the checks).
SUMMARY_KEYS = (
    "n",
    "seed",
    "clean_accuracy",
    "clean_ci",
    "subset_hash",
    "std_eps",
    "std_eps_l2",
    "probe",
    "min_norm",
    "deterministic",
    "autoattack_warnings",
    "per_example",
    "spec",
    "seconds",
)
ROW_KEYS = ("attack", "norm", "eps", "steps", "restarts", "accuracy", "n", "info")
# Rows that are not an attack's accuracy: noise (a sanity baseline), PGD at a huge eps (a check).
NOT_ATTACKS = ("noise", "pgd_large_eps")


class AttackRow(BaseModel):
    """One attack at one radius: its accuracy on `n` examples, with a 95 % interval."""

    model_config = ConfigDict(extra="ignore")
    attack: str
    norm: str
    eps: float
    steps: int | None = None
    restarts: int | None = None
    accuracy: float
    n: int
    ci: list[float] | None = None
    info: Any = None


class Check(BaseModel):
    """A sanity check of the panel; a failed one of severity `masking` says the numbers may be inflated,
    one of severity `weaker_attack` that one attack was weaker than another (the worst case stands)."""

    name: str
    passed: bool
    severity: str = "masking"
    detail: str


class PanelResult(BaseModel):
    model_config = ConfigDict(extra="ignore")
    panel: str
    rows: list[AttackRow]
    checks: list[Check] = []
    n: int | None = None
    seed: int | None = None
    clean_accuracy: float | None = None
    clean_ci: list[float] | None = None
    subset_hash: str | None = None
    std_eps: float | None = None
    std_eps_l2: float | None = None
    probe: dict | None = None
    min_norm: dict | None = None
    deterministic: dict | None = None
    autoattack_warnings: list | None = None
    per_example: dict | None = None
    spec: dict | None = None
    seconds: float | None = None

    @property
    def masking_suspected(self) -> bool | None:
        """A failed masking check: the numbers may be inflated (None: no check ran)."""
        return any(not c.passed and c.severity == "masking" for c in self.checks) if self.checks else None

    @property
    def all_passed(self) -> bool | None:
        return all(c.passed for c in self.checks) if self.checks else None

    def summary(self) -> dict:
        """The summary row: the result less its rows and checks, the keys it has, in SUMMARY_KEYS order."""
        fields = self.model_dump(include=set(SUMMARY_KEYS), exclude_unset=True)
        return {k: fields[k] for k in SUMMARY_KEYS if k in fields}

    def at_standard_eps(self, attack: str | None = None) -> list[AttackRow]:
        """The rows at the panel's standard radius (L-inf, or L2 for an L2 attack), of `attack` if named."""

        def standard(r: AttackRow) -> float | None:
            return self.std_eps if r.norm == "linf" else self.std_eps_l2

        return [
            r
            for r in self.rows
            if (attack is None or r.attack == attack)
            and standard(r) is not None
            and abs(r.eps - standard(r)) < 1e-12
        ]

    def to_rows(self) -> tuple[list[dict], dict, list[dict]]:
        """The store's rows: (one per attack row, the summary, one per check), without run or job ids."""
        rows = [
            {
                "panel": self.panel,
                **r.model_dump(include=set(ROW_KEYS)),
                "ci_low": r.ci[0],
                "ci_high": r.ci[1],
            }
            for r in self.rows
        ]
        checks = [{"panel": self.panel, **c.model_dump()} for c in self.checks]
        return rows, self.summary(), checks

    @classmethod
    def from_rows(cls, panel: str, summary: dict | None, rows: list, checks: list) -> PanelResult:
        """Back from the store: ORM rows (or objects with the same attributes) and the summary's data."""
        return cls.model_validate(
            {
                **(summary or {}),
                "panel": panel,
                "rows": [
                    {
                        **{k: getattr(r, k) for k in ROW_KEYS},
                        "ci": None if r.ci_low is None else [r.ci_low, r.ci_high],
                    }
                    for r in rows
                ],
                "checks": [
                    {"name": c.name, "passed": c.passed, "severity": c.severity, "detail": c.detail}
                    for c in checks
                ],
            }
        )

    def view(self) -> dict:
        """The API's shape: the summary, the rows and checks each naming the panel, the verdicts."""
        return {
            "summary": self.summary(),
            "rows": [
                {"panel": self.panel, **r.model_dump(include=set(ROW_KEYS)), "ci": r.ci} for r in self.rows
            ],
            "checks": [{"panel": self.panel, **c.model_dump()} for c in self.checks],
            "all_passed": self.all_passed,
            "masking_suspected": self.masking_suspected,
        }
