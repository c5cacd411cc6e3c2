"""Studies (a design expanded into queued runs of one experiment, their progress, the report) and the
robustness leaderboard. A design is expanded once per request: its configs are validated there."""

from __future__ import annotations

import statistics

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from labcore import crud, lifecycle
from labcore.errors import Refused, check_owner, conflict
from labcore.models import EvalResult, EvalSummary, Experiment, Run, SanityCheck, User
from labcore.run_config import config_errors
from labcore.services import panels
from labcore.services.runs import check_quota, check_references, commit_and_enqueue, within_limits
from labcore.study import StudyDesign, expand, record, report

Expansion = list[tuple[str, str, int, dict]]


def _expand(design: StudyDesign) -> Expansion:
    """Every run of the design, each config validated; a 422 naming the field otherwise (a run
    config's `params` are the design's `methods[].params`)."""
    try:
        return expand(design)
    except ValidationError as e:
        where = lambda loc: ["methods", *loc] if loc and loc[0] == "params" else list(loc)
        raise Refused(422, [{**d, "loc": ["body", *where(d["loc"])]} for d in config_errors(e)]) from None


def get(s: Session, study_id: int) -> Experiment:
    exp = s.get(Experiment, study_id)
    if exp is None or exp.design is None:
        raise Refused(404, f"no study {study_id}")
    return exp


def _latest_runs(s: Session, exp: Experiment) -> dict[str, Run]:
    """The study's runs by key (config name): the newest run of each key, of the study's owner only
    (anyone may name a run into any experiment; only the study's own runs make its report)."""
    owner = Run.owner_id.is_(None) if exp.owner_id is None else Run.owner_id == exp.owner_id
    runs = s.scalars(select(Run).where(Run.experiment_id == exp.id, owner).order_by(Run.id)).all()
    return {r.config.get("name"): r for r in runs}


def _sync(s: Session, exp: Experiment, runs: Expansion) -> int:
    """Queue every run the design asks for that has none queued, running or succeeded: a new seed,
    or a failed or cancelled run again. Finished runs are never duplicated. Returns how many."""
    have = _latest_runs(s, exp)
    todo = [cfg for key, _, _, cfg in runs if key not in have or have[key].status not in lifecycle.ACTIVE]
    for cfg in todo:
        within_limits(cfg)
        check_references(s, cfg)
    owner = s.get(User, exp.owner_id) if exp.owner_id is not None else None  # an admin acts for the owner
    check_quota(s, owner, len(todo))
    new = crud.create_runs(s, configs=todo, experiment=exp.name, tags=["study"], owner=owner)
    return len(commit_and_enqueue(s, new))


def view(s: Session, exp: Experiment, created: int = 0, runs: Expansion | None = None) -> dict:
    """The study with each of its runs' state, its progress and an estimate of the time left."""
    have = _latest_runs(s, exp)
    listed = []
    for key, label, seed, _ in runs if runs is not None else _expand(StudyDesign.model_validate(exp.design)):
        r = have.get(key)
        listed.append(
            {
                "key": key,
                "label": label,
                "seed": seed,
                "id": r.id if r else None,
                "status": r.status if r else "missing",
            }
        )
    counts = {st: sum(r["status"] == st for r in listed) for st in sorted({r["status"] for r in listed})}
    done = [have[r["key"]] for r in listed if r["status"] == lifecycle.SUCCEEDED]
    durations = [
        (d.finished_at - d.started_at).total_seconds() for d in done if d.finished_at and d.started_at
    ]
    left = sum(r["status"] in (lifecycle.QUEUED, lifecycle.RUNNING) for r in listed)
    busy = max(1, counts.get(lifecycle.RUNNING, 0))
    eta = statistics.fmean(durations) * left / busy if durations and left else (0.0 if not left else None)
    return {
        "id": exp.id,
        "name": exp.name,
        "design": exp.design,
        "created": created,
        "progress": {"total": len(listed), **counts},
        "eta_s": eta,
        "runs": listed,
    }


def create(s: Session, user: User | None, design: StudyDesign) -> dict:
    """A study from its design (as `gatlab study run FILE` reads it): its runs are queued at once."""
    runs = _expand(design)
    if s.scalar(select(Experiment).where(Experiment.name == design.name)) is not None:
        raise conflict(f"an experiment named {design.name!r} exists; extend or retry it instead")
    exp = Experiment(
        name=design.name, design=design.model_dump(mode="json"), owner_id=user.id if user else None
    )
    s.add(exp)
    s.flush()
    return view(s, exp, created=_sync(s, exp, runs), runs=runs)


def listing(s: Session) -> list[dict]:
    exps = s.scalars(select(Experiment).where(Experiment.design.is_not(None)).order_by(Experiment.id)).all()
    return [{**view(s, e), "runs": None} for e in exps]


def _owned(s: Session, study_id: int, user: User | None, action: str) -> Experiment:
    exp = get(s, study_id)
    check_owner(exp.owner_id, user, f"study {exp.id}", action)
    return exp


def extend(s: Session, user: User | None, study_id: int, seeds: list[int]) -> dict:
    """More seeds: the new ones' runs are queued; finished runs stay as they are."""
    exp = _owned(s, study_id, user, "extend")
    design = StudyDesign.model_validate({**exp.design, "seeds": sorted({*exp.design["seeds"], *seeds})})
    exp.design = design.model_dump(mode="json")
    runs = _expand(design)
    return view(s, exp, created=_sync(s, exp, runs), runs=runs)


def retry(s: Session, user: User | None, study_id: int) -> dict:
    """The failed and cancelled runs again (new runs with the same key); nothing else is rerun."""
    exp = _owned(s, study_id, user, "retry")
    runs = _expand(StudyDesign.model_validate(exp.design))
    return view(s, exp, created=_sync(s, exp, runs), runs=runs)


def records(s: Session, exp: Experiment, design: StudyDesign) -> list[dict]:
    """What the report reads of each of the study's runs: its own stored results."""
    have = _latest_runs(s, exp)
    out = []
    for key, label, seed, _ in _expand(design):
        run = have.get(key)
        if run is None:
            continue
        attacked = run.status == lifecycle.SUCCEEDED and run.scenario == "defense"
        out.append(
            record(label, seed, run.status, run.id, run.summary, panels.latest(s, run) if attacked else None)
        )
    return out


def study_report(s: Session, study_id: int) -> tuple[StudyDesign, dict]:
    """The study's table, computed from its runs as they finish."""
    exp = get(s, study_id)
    design = StudyDesign.model_validate(exp.design)
    return design, report(design, records(s, exp, design))


def _standard_rows(s: Session, q, norm: str, eps: float | None) -> list[tuple]:
    """Per run, its newest panel's AutoAttack row at `eps` (default: that panel's standard radius),
    that panel's summary and its failed masking checks."""
    latest: dict[int, tuple] = {}
    for row, run in s.execute(q).all():
        summ = (
            s.scalar(
                select(EvalSummary.data)
                .where(EvalSummary.run_id == run.id, panels.of_job(EvalSummary, run.id, row.job_id))
                .order_by(EvalSummary.id.desc())
            )
            or {}
        )
        want = eps if eps is not None else summ.get("std_eps" if norm == "linf" else "std_eps_l2")
        if want is not None and abs(row.eps - want) < 1e-9:
            failed = s.scalars(
                select(SanityCheck.name).where(
                    SanityCheck.run_id == run.id,
                    SanityCheck.passed.is_(False),
                    SanityCheck.severity == "masking",
                    panels.of_job(SanityCheck, run.id, row.job_id),
                )
            ).all()
            latest[run.id] = (row, run, summ, sorted(failed))
    return list(latest.values())


def leaderboard(
    s: Session, *, panel: str, norm: str, eps=None, dataset=None, method=None, experiment=None
) -> list[dict]:
    """Every run judged by `panel`, ranked by AutoAttack accuracy at `eps` with its interval, then clean
    accuracy. A run with a failed masking check is flagged and ranked after every unflagged one."""
    q = (
        select(EvalResult, Run)
        .join(Run, Run.id == EvalResult.run_id)
        .where(EvalResult.attack == "autoattack", EvalResult.panel == panel, EvalResult.norm == norm)
        .order_by(EvalResult.id)
    )
    if dataset:
        q = q.where(Run.dataset == dataset)
    if method:
        q = q.where(Run.method == method)
    if experiment:
        q = q.join(Experiment, Experiment.id == Run.experiment_id).where(Experiment.name == experiment)
    entries = [
        {
            "run_id": run.id, "name": run.name, "method": run.method, "dataset": run.dataset,
            "norm": norm, "eps": row.eps, "autoattack": row.accuracy,
            "ci": None if row.ci_low is None else [row.ci_low, row.ci_high], "n": row.n,
            "clean": summ.get("clean_accuracy"), "clean_ci": summ.get("clean_ci"),
            "flagged": bool(failed), "failed_checks": failed,
        }
        for row, run, summ, failed in _standard_rows(s, q, norm, eps)
    ]  # fmt: skip
    entries.sort(key=lambda e: (e["flagged"], -e["autoattack"], -(e["clean"] or 0), e["run_id"]))
    for rank, e in enumerate(entries, 1):
        e["rank"] = rank
    return entries
