"""Studies: a declared design (methods x seeds on one scenario, dataset, model and panel, against a
baseline) expanded into runs, and the report computed from those runs' own stored results.

Pure functions over plain dicts: the API feeds them runs from the database, `gatlab study run
--local` feeds them run directories, and both print the same tables. The report's exports are
byte-identical for the same runs (sorted, fixed formatting, no clocks)."""

from __future__ import annotations

import csv
import html
import io
import itertools
import json
import math
import re
import statistics
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from labcore import stats
from labcore.panel import NOT_ATTACKS, PanelResult
from labcore.run_config import NO_NUL, EvalConfig, parse_run_config
from labcore.stats import t_quantile_975, t_two_sided_p

Label = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.+=,\- λ]{1,60}$")]


class Arm(BaseModel):
    """One row of the study's table: a method with its knobs (a grid expands into one arm per point)."""

    model_config = ConfigDict(extra="forbid")
    method: str = Field(min_length=1, max_length=64)
    label: Label | None = Field(
        None, description="The row's name (default: the method, plus the grid point)."
    )
    params: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="knob -> values: one arm per point")


class StudyDesign(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.\-]{1,100}$")]
    scenario: str
    dataset: dict[str, Any]
    model: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict)
    eval: dict[str, Any] = Field(default_factory=dict)
    methods: list[Arm] = Field(min_length=1, max_length=50)
    seeds: list[Annotated[int, Field(ge=0, le=2**31 - 1)]] = Field(min_length=1, max_length=100)
    baseline: str = Field(description="The label of the arm every other arm is tested against.")
    split: Literal["test", "val"] = Field(
        "test",
        description="The split the report reads: `val` for a tuning study, whose choice must never see"
        " the test split (its report shows the final models' validation figures and nothing else).",
    )
    notes: Annotated[str, StringConstraints(pattern=NO_NUL, max_length=2000)] = ""

    @model_validator(mode="after")
    def _arms_are_named_once(self) -> StudyDesign:
        size = sum(math.prod(len(v) for v in arm.grid.values()) for arm in self.methods) * len(self.seeds)
        if size > 1000:  # counted before anything is expanded: a large grid is refused, not built
            raise ValueError(f"a study may expand to at most 1000 runs (this one: {size})")
        labels = [label for label, _ in arm_params(self)]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise ValueError(f"methods: two arms share the label {dup[0]!r}; give each a label")
        if self.baseline not in labels:
            raise ValueError(f"baseline: {self.baseline!r} is none of the arms ({', '.join(labels)})")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds: each seed once")
        if self.split == "val" and self.eval.get("panel", EvalConfig.model_fields["panel"].default) != "none":
            raise ValueError(
                "eval.panel: a study read on the validation split runs no panel (it attacks the test split)"
            )
        return self


def arm_params(design: StudyDesign) -> list[tuple[str, dict]]:
    """(label, method params) per arm, a grid expanded in its declared order."""
    out = []
    for arm in design.methods:
        keys = list(arm.grid)
        for values in itertools.product(*arm.grid.values()):
            point = dict(zip(keys, values, strict=True))
            label = arm.label or arm.method
            if point:
                label += "[" + ",".join(f"{k}={v}" for k, v in point.items()) + "]"
            out.append((label, {"method": arm.method, "params": {**arm.params, **point}}))
    return out


def expand(design: StudyDesign) -> list[tuple[str, str, int, dict]]:
    """Every run the design asks for: (key, arm label, seed, validated run config). The key (also the
    run's config name) names a run of the study for good: extending or retrying never duplicates it."""
    out = []
    for label, spec in arm_params(design):
        for seed in design.seeds:
            key = f"{design.name}/{label}/seed={seed}"
            raw = {
                "name": key,
                "scenario": design.scenario,
                "method": spec["method"],
                "dataset": design.dataset,
                "model": design.model,
                "train": {**design.train, "seed": seed},
                "params": spec["params"],
                "eval": design.eval,
            }
            out.append((key, label, seed, parse_run_config(raw).model_dump(mode="json")))
    return out


def run_dir_name(label: str, seed: int) -> str:
    """A local run's directory under the study's (`gatlab study run --local`): the arm and the seed."""
    return re.sub(r"[^\w.=,+-]", "_", f"{label}-seed{seed}")


# ---- the report ---------------------------------------------------------------------------------

LOWER_IS_BETTER = ("loss", "mse", "s/step", "Δm%")
# Diagnostics with no better direction for every method, so no best is marked: the probe reads how
# much the gradients tell (GREAT aims at chance; a robust model's gradients may tell more); the
# distillation teacher's own accuracy is the reference every student is read against.
UNRANKED = ("probe", "test teacher_acc")
REFERENCE = ("test teacher_acc",)  # the same for every arm of a seed: never tested against the baseline


def run_metrics(
    summary: dict | None, ev: PanelResult | None, seconds_per_step: float | None
) -> dict[str, float]:
    """One succeeded run's figures: its test and final validation metrics, every L-inf attack at the
    panel's standard eps (and L2 PGD at its standard L2 eps), the game's fresh probe, seconds per step."""
    out: dict[str, float] = {}
    for split in ("test", "val"):
        for k, v in (summary or {}).get(split, {}).items():
            if not k.startswith("probe") and k != "loss" and isinstance(v, int | float):
                out[f"{split} {k}"] = float(v)
    for r in ev.at_standard_eps() if ev else []:
        if r.attack not in NOT_ATTACKS:
            out[r.attack] = r.accuracy
    game = (summary or {}).get("game")
    if game:
        out["probe"] = game["accuracy"]
    if seconds_per_step is not None:
        out["s/step"] = seconds_per_step
    return out


def _sizes(summary: dict | None, ev: PanelResult | None) -> dict:
    """The radii and example counts behind a run's figures: the panel's standard eps and its n
    examples, the test and validation splits' sizes, the game's held-out gradients."""
    data = (summary or {}).get("data") or {}
    game = (summary or {}).get("game") or {}
    out = {"eps": ev and ev.std_eps, "eps_l2": ev and ev.std_eps_l2, "n_panel": ev and ev.n,
           "n_test": data.get("n_test"), "n_val": data.get("n_val"), "n_probe": game.get("n_test")}  # fmt: skip
    return {k: v for k, v in out.items() if v is not None}


def _size_of(column: str) -> str | None:
    """Which count a proportion column is a share of (`_sizes`' key): the split's examples for an
    accuracy, agreement or val PGD, the game's held-out gradients for the probe; None otherwise."""
    if column == "probe":
        return "n_probe"
    name = column.split(" ", 1)[-1]
    if name.endswith(("acc", "agreement")) or name == "pgd":
        return "n_val" if column.startswith("val ") else "n_test"
    return None


def record(
    label: str, seed: int, status: str, run_id: int | None, summary: dict | None, ev: PanelResult | None
) -> dict:
    """What the report reads of one run: its newest panel `ev` (from the store, or a run directory's
    eval.json) and the run's summary. `examples`: per panel column, the examples it got right (a bit
    string, the same examples for every run); `n`: per proportion column, its number of examples."""
    rec = {"label": label, "seed": seed, "status": status, "run_id": run_id, "metrics": {}}
    if status == "succeeded":
        rec["metrics"] = run_metrics(summary, ev, (summary or {}).get("seconds_per_step"))
        rec["checked"] = bool(ev and ev.checks)  # no panel ran: nothing passed or failed
        failed = [c for c in ev.checks if not c.passed] if ev else []
        rec["failed_checks"] = [c.name for c in failed if c.severity == "masking"]  # masking suspected
        rec["weaker_checks"] = [
            c.name for c in failed if c.severity != "masking"
        ]  # covered by the worst case
        rows = ev.rows if ev else []
        rec["curve"] = {str(r.eps): r.accuracy for r in rows if r.attack == "worst_case" and r.norm == "linf"}
        rec["sizes"] = _sizes(summary, ev)
        per_example = (ev and ev.per_example) or {}
        rec["examples"] = {c: b for c, b in per_example.get("correct", {}).items() if c in rec["metrics"]}
        rec["n"] = {c: rec["sizes"].get(_size_of(c)) for c in rec["metrics"] if _size_of(c)}
    return rec


def _describe(values: list[float]) -> dict:
    """Mean and spread over seeds; the t interval of the mean (for figures with no examples behind
    them) only from 3 seeds on: from 2 it is wider than the figures' own range."""
    n = len(values)
    mean = statistics.fmean(values) if n else None
    std = statistics.stdev(values) if n > 1 else None
    ci = None
    if n > 2:
        half = t_quantile_975(n - 1) * std / math.sqrt(n)
        ci = [mean - half, mean + half]
    return {"n": n, "mean": mean, "std": std, "ci": ci, "interval": "t over seeds" if ci else None,
            "values": values}  # fmt: skip


def _paired_t(arm: dict[int, float], base: dict[int, float]) -> dict | None:
    """A paired t-test over the seeds both arms have; None below 2 pairs (never a mark from one)."""
    seeds = sorted(set(arm) & set(base))
    if len(seeds) < 2:
        return None
    diffs = [arm[s] - base[s] for s in seeds]
    if max(diffs) - min(diffs) < 1e-9:  # the same difference every seed (to rounding): no spread to test
        return {"test": "paired t", "pairs": len(seeds), "diff": diffs[0], "p": None}
    t = statistics.fmean(diffs) / (statistics.stdev(diffs) / math.sqrt(len(diffs)))
    p = t_two_sided_p(t, len(diffs) - 1)  # the paired t-test (scipy's ttest_rel)
    return {"test": "paired t", "pairs": len(seeds), "diff": statistics.fmean(diffs), "p": p}


def _column(c: str, runs: list[dict], base_runs: list[dict], compared: bool) -> dict:
    """One column of one arm: its values over seeds described, the interval that includes the
    examples where they are known, and the test against the baseline (McNemar on the examples
    where both have them, else the paired t-test over seeds)."""
    per_seed = {r["seed"]: r for r in runs if c in r["metrics"]}
    seeds = sorted(per_seed)
    d = _describe([per_seed[s]["metrics"][c] for s in seeds])
    masks = [per_seed[s].get("examples", {}).get(c) for s in seeds]
    sizes = {len(m) for m in masks if m}
    if seeds and all(masks) and len(sizes) == 1:
        n = sizes.pop()
        d.update(ci=stats.interval_from_examples([stats.bits_to_int(m) for m in masks], n),
                 interval="bootstrap over seeds and examples", examples=n)  # fmt: skip
    elif seeds and all(per_seed[s].get("n", {}).get(c) for s in seeds):
        n = per_seed[seeds[0]]["n"][c]
        d.update(ci=stats.interval_from_counts(d["values"], n), interval="bootstrap over seeds and examples",
                 examples=n)  # fmt: skip
    base = {r["seed"]: r for r in base_runs if c in r["metrics"]}
    d["vs_baseline"] = None
    if compared and d.get("examples") and all(base[s].get("examples", {}).get(c) for s in base):
        arm_m = {s: stats.bits_to_int(per_seed[s]["examples"][c]) for s in seeds}
        base_m = {s: stats.bits_to_int(base[s]["examples"][c]) for s in base}
        d["vs_baseline"] = stats.mcnemar(arm_m, base_m, d["examples"])
        if d["vs_baseline"]:
            shared = sorted(set(arm_m) & set(base_m))
            diffs = [per_seed[s]["metrics"][c] - base[s]["metrics"][c] for s in shared]
            d["vs_baseline"]["diff"] = statistics.fmean(diffs)
    elif compared:
        d["vs_baseline"] = _paired_t({s: r["metrics"][c] for s, r in per_seed.items()},
                                     {s: r["metrics"][c] for s, r in base.items()})  # fmt: skip
    return d


def _row(design: StudyDesign, label: str, by_arm: dict[str, list[dict]], columns: list[str]) -> dict:
    """One arm's row: per column its values over seeds described, and the test against the baseline."""
    done = [r for r in by_arm[label] if r["status"] == "succeeded"]
    base_done = [r for r in by_arm[design.baseline] if r["status"] == "succeeded"]
    cells = {
        c: _column(c, done, base_done, compared=label != design.baseline and c not in REFERENCE)
        for c in columns
    }
    eps = sorted({float(e) for r in done for e in r.get("curve", {})})
    curve = [
        {"eps": e, **_describe([r["curve"][str(e)] for r in done if str(e) in r.get("curve", {})])}
        for e in eps
    ]
    return {
        "label": label,
        "baseline": label == design.baseline,
        "seeds_done": sorted(r["seed"] for r in done),
        "runs": sorted(r["run_id"] for r in by_arm[label] if r.get("run_id") is not None),
        "checked": any(r.get("checked", True) for r in done),
        "failed_checks": sorted({c for r in done for c in r.get("failed_checks", [])}),
        "weaker_checks": sorted({c for r in done for c in r.get("weaker_checks", [])}),
        "cells": cells,
        "curve": curve,
    }


def with_delta_m(design: StudyDesign, records: list[dict]) -> list[dict]:
    """Multi-task studies with single-task arms (method single_task, knob `task`): a single-task run
    keeps only its own task's metric (its other heads are untrained) and its step cost, and every other
    run gets Δm% (Maninis et al. 2019): the mean over tasks of (-1)^(higher is better) (M_run -
    M_single) / M_single x 100, lower is better, M_single the single-task arm's mean over seeds."""
    task_of = {
        label: spec["params"].get("task")
        for label, spec in arm_params(design)
        if spec["method"] == "single_task" and spec["params"].get("task")
    }
    if design.scenario != "multitask" or not task_of:
        return records
    own = lambda r, c: c == "s/step" or c.startswith(f"{design.split} {task_of[r['label']]}/")
    records = [
        {**r, "metrics": {c: v for c, v in r["metrics"].items() if own(r, c)}} if r["label"] in task_of else r
        for r in records
    ]
    ref: dict[str, list[float]] = {}
    for r in records:
        if r["label"] in task_of and r["status"] == "succeeded":
            for c, v in r["metrics"].items():
                if c != "s/step":
                    ref.setdefault(c, []).append(v)
    base = {c: statistics.fmean(v) for c, v in ref.items()}
    out = []
    for r in records:
        m = r.get("metrics", {})
        if r["label"] not in task_of and base and all(c in m for c in base) and all(base.values()):
            sign = lambda c: 1 if c.endswith("mse") else -1
            dm = 100 * statistics.fmean(sign(c) * (m[c] - base[c]) / base[c] for c in base)
            r = {**r, "metrics": {**m, "Δm%": dm}}
        out.append(r)
    return out


def on_split(design: StudyDesign, records: list[dict]) -> list[dict]:
    """Each record's metrics of the design's split: a test study never shows validation figures; a
    validation (tuning) study shows its validation figures and step cost, nothing measured on test."""

    def keep(column: str) -> bool:
        if design.split == "val":
            return column.startswith("val ") or column == "s/step"
        return not column.startswith("val ")

    return [{**r, "metrics": {c: v for c, v in r.get("metrics", {}).items() if keep(c)}} for r in records]


def report(design: StudyDesign, records: list[dict]) -> dict:
    """The study's table from its runs. A record: {"label", "seed", "status", "run_id", "metrics"
    (run_metrics of a succeeded run), "checked", "failed_checks", "curve" ({eps: worst-case accuracy})}."""
    records = with_delta_m(design, on_split(design, records))
    prefix = f"{design.split} "
    labels = [label for label, _ in arm_params(design)]
    by_arm = {label: [r for r in records if r["label"] == label] for label in labels}
    columns: list[str] = []
    for r in sorted(records, key=lambda r: (labels.index(r["label"]), r["seed"])):
        columns += [c for c in r.get("metrics", {}) if c not in columns]
    columns = (
        [c for c in columns if c.startswith(prefix)]
        + [c for c in columns if not c.startswith(prefix) and c not in UNRANKED + ("Δm%", "s/step")]
        + [c for c in ("Δm%", *UNRANKED, "s/step") if c in columns and not c.startswith(prefix)]
    )
    total = len(labels) * len(design.seeds)
    counts: dict[str, int] = {}
    for r in records:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    rows = [_row(design, label, by_arm, columns) for label in labels]
    _adjust(rows, columns)
    best = {c: _best(rows, c) for c in columns if c not in UNRANKED}
    best = {c: labels for c, labels in best.items() if labels}
    for row in rows:
        row["checks_text"] = _checks(row)
        for c in columns:
            row["cells"][c]["text"] = cell_text(c, row["cells"][c])
    rep = {
        "study": design.name,
        "scenario": design.scenario,
        "dataset": design.dataset,
        "baseline": design.baseline,
        "split": design.split,
        "seeds": design.seeds,
        "progress": {"total": total, **{k: counts[k] for k in sorted(counts)}},
        "columns": columns,
        "best": best,
        "rows": rows,
        "sizes": _report_sizes(records),
        "alpha": ALPHA,
        "design": design.model_dump(mode="json"),
    }
    rep["legend"] = _legend(rep)  # the page shows the exports' own legend
    return rep


ALPHA = 0.05  # a star: Holm-adjusted p below this, over every test the report makes


def _adjust(rows: list[dict], columns: list[str]) -> None:
    """Holm's adjustment over the whole report's family of tests against the baseline."""
    tests = [row["cells"][c]["vs_baseline"] for row in rows for c in columns]
    tests = [t for t in tests if t and t.get("p") is not None]
    for t, p in zip(tests, stats.holm([t["p"] for t in tests]), strict=True):
        t["p_adjusted"], t["family"] = p, len(tests)


def _best(rows: list[dict], c: str) -> list[str]:
    """The best arm of a column, only where it is separable: its 95 % interval clear of every other
    arm's. No interval anywhere (one seed, or two with no examples behind them), or an overlap: no best."""
    cells = [(r["label"], r["cells"][c]) for r in rows if r["cells"][c]["mean"] is not None]
    if len(cells) < 2 or any(d["ci"] is None for _, d in cells):
        return []
    lower = c.endswith(LOWER_IS_BETTER)
    label, top = (min if lower else max)(cells, key=lambda x: x[1]["mean"])
    others = [d for lab, d in cells if lab != label]
    clear = (
        all(top["ci"][1] < d["ci"][0] for d in others)
        if lower
        else all(top["ci"][0] > d["ci"][1] for d in others)
    )
    return [label] if clear else []


def _report_sizes(records: list[dict]) -> dict:
    """The radii and example counts the table's figures stand on, each with every value the runs
    gave (one, unless the runs differ)."""
    out: dict[str, list] = {}
    for r in records:
        for k, v in r.get("sizes", {}).items():
            out.setdefault(k, [])
            if v not in out[k]:
                out[k].append(v)
    return {k: sorted(v) for k, v in sorted(out.items())}


# ---- exports ---------------------------------------------------------------------------------------


def _scale(column: str) -> float:
    return 1.0 if column.endswith(LOWER_IS_BETTER) else 100.0


def _digits(column: str) -> int:
    return 2 if column == "Δm%" else 4 if column.endswith(LOWER_IS_BETTER) else 1


def _fmt(c: str, v: float) -> str:
    """The one rounding rule of the page and every export: % with one decimal, seconds and losses
    with four, Δm% with two."""
    return f"{_scale(c) * v:.{_digits(c)}f}"


def cell_text(c: str, d: dict) -> str:
    """A cell as the page and every export show it: mean ± std [95 % interval], * where the test
    against the baseline stays below ALPHA after Holm's adjustment."""
    if d["mean"] is None:
        return "–"
    text = _fmt(c, d["mean"]) + (f" ± {_fmt(c, d['std'])}" if d["std"] is not None else "")
    if d["ci"] is not None:
        text += f" [{_fmt(c, d['ci'][0])}, {_fmt(c, d['ci'][1])}]"
    vs = d["vs_baseline"]
    if vs and vs.get("p_adjusted") is not None and vs["p_adjusted"] < ALPHA:
        text += "*"
    return text


def _cell(rep: dict, row: dict, c: str, latex: bool = False) -> str:
    text = row["cells"][c].get("text") or cell_text(c, row["cells"][c])
    if latex:
        text = text.replace(" ± ", r" $\pm$ ").replace("–", "--")
    if row["label"] in rep["best"].get(c, []):
        text = rf"\textbf{{{text}}}" if latex else f"**{text}**"
    return text


def sizes_text(rep: dict) -> str:
    """ε and n, stated on every table."""
    z = rep.get("sizes", {})
    one = lambda k: ", ".join(f"{v:g}" for v in z[k])
    parts = []
    if z.get("eps"):
        parts.append(
            f"attacks at L-inf ε = {one('eps')}" + (f" (L2 ε = {one('eps_l2')})" if z.get("eps_l2") else "")
            + f" on n = {one('n_panel')} test examples per run, the same examples for every method and seed"
        )  # fmt: skip
    if z.get("n_test") and rep.get("split") != "val":  # a tuning study shows nothing read on test
        parts.append(f"test figures on n = {one('n_test')} test examples")
    if z.get("n_val"):
        parts.append(f"validation figures on n = {one('n_val')} examples")
    if z.get("n_probe"):
        parts.append(f"the probe on n = {one('n_probe')} held-out gradients")
    return "; ".join(parts) or "no run has finished yet"


def _legend(rep: dict) -> str:
    cols = rep["columns"]
    return (
        f"Mean ± std over seeds ({', '.join(map(str, rep['seeds']))}) [95 % interval of the mean: a"
        " hierarchical bootstrap over seeds and examples for accuracies (the examples' uncertainty"
        " included), a t interval over seeds, from 3 seeds on, for the rest];"
        + (
            " the final models on the validation split (a tuning study: nothing here is read on test);"
            if rep.get("split") == "val"
            else ""
        )
        + f" {sizes_text(rep)};"
        + " accuracies in %, s/step in seconds;"
        + (" Δm% against the single-task arms (lower is better);" if "Δm%" in cols else "")
        + " bold: the best of a column, only where its interval is clear of every other row's"
        + "".join(f"; {c} is not ranked" for c in UNRANKED if c in cols)
        + f"; * = against {rep['baseline']}, p < {rep.get('alpha', ALPHA):g} after Holm's correction over all"
        " the table's tests (McNemar on the same examples, summed over the seeds both have, for the"
        " panel's attacks; a paired t-test over seeds, never from fewer than 2, for the rest); ✗ = a"
        " masking check failed (the row's numbers may be inflated), △ = one attack was weaker than"
        " another, which the worst case covers (– where no panel ran)."
    )


def _checks(row: dict) -> str:
    """✗ masking suspected (the row's numbers may be inflated); △ one attack was weaker than another
    (the worst case covers it); ok."""
    if not row.get("checked", True):
        return "–"
    out = []
    if row["failed_checks"]:
        out.append("✗ " + ", ".join(row["failed_checks"]))
    if row.get("weaker_checks"):
        out.append("△ " + ", ".join(row["weaker_checks"]))
    return "; ".join(out) or "ok"


def csv_cell(value):
    """A text cell a spreadsheet would run as a formula (=, +, -, @, tab, CR first) is prefixed with
    an apostrophe (OWASP's advice); numbers are left as they are."""
    return "'" + value if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def md_text(text: str) -> str:
    """Text into Markdown as text: HTML escaped, so nothing a user wrote renders as markup."""
    return html.escape(text, quote=False)


def md_cell(text: str) -> str:
    """A Markdown table cell: escaped, its pipes kept inside the cell, on one line."""
    return md_text(text).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def to_markdown(rep: dict) -> str:
    head = ["method", "seeds", *(md_cell(c) for c in rep["columns"]), "checks"]
    notes = rep["design"].get("notes", "").strip()
    lines = [
        f"# Study {md_text(rep['study'])}: {rep['scenario']} on {md_text(str(rep['dataset'].get('name')))}",
        "",
        _legend(rep),
        "",
        *([md_text(notes), ""] if notes else []),
        _md_row(head),
        "|" + "---|" * len(head),
    ]
    for row in rep["rows"]:
        cells = [_cell(rep, row, c) for c in rep["columns"]]
        lines.append(
            _md_row([md_cell(row["label"]), str(len(row["seeds_done"])), *cells, md_cell(_checks(row))])
        )
    lines += [
        "",
        "## Against the baseline",
        "",
        f"Each test against {md_text(rep['baseline'])}; p adjusted by Holm over all the table's tests.",
        "",
        "| method | metric | comparison | seeds | discordant examples (b / c) | mean difference | p | p (Holm) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rep["rows"]:
        for c in rep["columns"]:
            vs = row["cells"][c]["vs_baseline"]
            if vs:
                p = "no spread" if vs["p"] is None else f"{vs['p']:.3g}"
                adj = "–" if vs.get("p_adjusted") is None else f"{vs['p_adjusted']:.3g}"
                diff = "–" if vs.get("diff") is None else f"{_scale(c) * vs['diff']:+.{max(2, _digits(c))}f}"
                bc = f"{vs['b']} / {vs['c']}" if "b" in vs else "–"
                cells = [md_cell(row["label"]), md_cell(c), vs["test"], str(vs["pairs"]), bc, diff, p, adj]
                lines.append(_md_row(cells))
    return "\n".join(lines) + "\n"


_TEX = {"\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "$": r"\$",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
        "<": r"$<$", ">": r"$>$", "Δ": r"$\Delta$", "λ": r"$\lambda$", "±": r"$\pm$", "✗": r"$\times$", "△": r"$\triangle$",
        "–": "--"}  # fmt: skip


def _tex(s: str) -> str:
    """Text for pdfLaTeX: its special characters escaped, the report's symbols in math mode."""
    return "".join(_TEX.get(ch, ch) for ch in s)


def to_latex(rep: dict) -> str:
    cols = rep["columns"]
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\begin{tabular}{l" + "r" * (len(cols) + 1) + "}",
        r"\toprule",
        " & ".join(["Method", "Seeds", *(_tex(c) for c in cols)]) + r" \\",
        r"\midrule",
    ]
    for row in rep["rows"]:
        mark = (r" $\times$" if row["failed_checks"] else "") + (
            r" $\triangle$" if row.get("weaker_checks") else ""
        )
        cells = [_cell(rep, row, c, latex=True) for c in cols]
        lines.append(
            " & ".join([f"{_tex(row['label'])}{mark}", str(len(row["seeds_done"])), *cells]) + r" \\"
        )
    lines += [
        r"\bottomrule",
        r"\end{tabular}",
        rf"\caption{{{_tex(rep['study'])}: {_tex(rep['scenario'])} on {_tex(str(rep['dataset'].get('name')))}. "
        + _tex(_legend(rep))
        + "}",
        r"\end{table}",
    ]
    return "\n".join(lines) + "\n"


def to_csv(rep: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        [
            "method",
            "metric",
            "n",
            "mean",
            "std",
            "ci_low",
            "ci_high",
            "best",
            "interval",
            "examples",
            "test",
            "pairs",
            "p_vs_baseline",
            "p_holm",
            "text",
            "failed_checks",
            "weaker_checks",
        ]
    )
    for row in rep["rows"]:
        for c in rep["columns"]:
            d, vs = row["cells"][c], row["cells"][c]["vs_baseline"]
            fmt = lambda v: "" if v is None else repr(float(v))
            w.writerow(
                [
                    csv_cell(row["label"]), csv_cell(c), d["n"], fmt(d["mean"]), fmt(d["std"]),
                    fmt(d["ci"][0] if d["ci"] else None), fmt(d["ci"][1] if d["ci"] else None),
                    int(row["label"] in rep["best"].get(c, [])), d.get("interval") or "", d.get("examples") or "",
                    vs["test"] if vs else "", vs["pairs"] if vs else "", fmt(vs["p"]) if vs else "",
                    fmt(vs.get("p_adjusted")) if vs else "", csv_cell(d.get("text", "")),
                    csv_cell(";".join(row["failed_checks"])), csv_cell(";".join(row.get("weaker_checks", []))),
                ]
            )  # fmt: skip
    return buf.getvalue()


def to_json(rep: dict) -> str:
    return json.dumps(rep, sort_keys=True, indent=1) + "\n"


EXPORTS = {"md": (to_markdown, "text/markdown"), "latex": (to_latex, "application/x-latex"),
           "csv": (to_csv, "text/csv"), "json": (to_json, "application/json")}  # fmt: skip
