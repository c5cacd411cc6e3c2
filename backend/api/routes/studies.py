"""Studies (a design expanded into queued runs of one experiment, its progress, its report) and the
robustness leaderboard."""

from __future__ import annotations

import csv
import io
import json
import statistics
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Response
from fastapi import Path as FPath
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend import crud
from backend.api.deps import CurrentUser, SessionDep, require_user
from backend.api.routes.runs import (
    _check_quota,
    _check_references,
    _commit_and_enqueue,
    _validated,
    eval_results,
)
from backend.models import EvalResult, EvalSummary, Experiment, Run, SanityCheck, User
from backend.run_config import NO_NUL, config_errors
from backend.study import EXPORTS, StudyDesign, csv_cell, expand, record, report

router = APIRouter(prefix="/api", tags=["studies"], dependencies=[Depends(require_user)])
ACTIVE = ("queued", "running", "succeeded")
StudyId = Annotated[int, FPath(ge=1, le=2**31 - 1)]


class Extend(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seeds: list[Annotated[int, Field(ge=0, le=2**31 - 1)]] = Field(min_length=1, max_length=100)


def _design_errors(e: ValidationError) -> HTTPException:
    """422 naming the field: a run config's `params` are the design's `methods[].params`."""
    where = lambda loc: ["methods", *loc] if loc and loc[0] == "params" else list(loc)  # noqa: E731
    return HTTPException(422, detail=[{**d, "loc": ["body", *where(d["loc"])]} for d in config_errors(e)])


def _study(s: Session, study_id: int) -> Experiment:
    exp = s.get(Experiment, study_id)
    if exp is None or exp.design is None:
        raise HTTPException(404, detail=f"no study {study_id}")
    return exp


def _latest_runs(s: Session, exp: Experiment) -> dict[str, Run]:
    """The study's runs by key (config name): the newest run of each key, of the study's owner only
    (anyone may name a run into any experiment; only the study's own runs make its report)."""
    owner = Run.owner_id.is_(None) if exp.owner_id is None else Run.owner_id == exp.owner_id
    runs = s.scalars(select(Run).where(Run.experiment_id == exp.id, owner).order_by(Run.id)).all()
    return {r.config.get("name"): r for r in runs}


def _sync(s: Session, exp: Experiment, user, design: StudyDesign) -> list[Run]:
    """Queue every run the design asks for that has none queued, running or succeeded: a new seed,
    or a failed or cancelled run again. Finished runs are never duplicated."""
    have = _latest_runs(s, exp)
    todo = []
    for key, _, _, cfg in expand(design):
        if key not in have or have[key].status not in ACTIVE:
            todo.append(_validated(cfg))
            _check_references(s, todo[-1])
    owner = s.get(User, exp.owner_id) if exp.owner_id is not None else None  # an admin acts for the owner
    _check_quota(s, owner, len(todo))
    runs = [crud.create_run(s, config=c, experiment=exp.name, tags=["study"], owner=owner) for c in todo]
    _commit_and_enqueue(s, runs)
    return runs


def _view(s: Session, exp: Experiment, created: int = 0) -> dict:
    design = StudyDesign.model_validate(exp.design)
    have = _latest_runs(s, exp)
    runs = []
    for key, label, seed, _ in expand(design):
        r = have.get(key)
        runs.append(
            {
                "key": key,
                "label": label,
                "seed": seed,
                "id": r.id if r else None,
                "status": r.status if r else "missing",
            }
        )
    counts = {st: sum(r["status"] == st for r in runs) for st in sorted({r["status"] for r in runs})}
    done = [have[r["key"]] for r in runs if r["status"] == "succeeded"]
    durations = [
        (d.finished_at - d.started_at).total_seconds() for d in done if d.finished_at and d.started_at
    ]
    left = sum(r["status"] in ("queued", "running") for r in runs)
    busy = max(1, counts.get("running", 0))
    eta = statistics.fmean(durations) * left / busy if durations and left else (0.0 if not left else None)
    return {
        "id": exp.id,
        "name": exp.name,
        "design": exp.design,
        "created": created,
        "progress": {"total": len(runs), **counts},
        "eta_s": eta,
        "runs": runs,
    }


@router.post("/studies", status_code=201)
def create_study(design: StudyDesign, user: CurrentUser, s: SessionDep) -> dict:
    """A study from its design (as `gatlab study run FILE` reads it): its runs are queued at once."""
    try:
        expand(design)
    except ValidationError as e:
        raise _design_errors(e) from None
    if s.scalar(select(Experiment).where(Experiment.name == design.name)) is not None:
        raise HTTPException(
            409, detail=f"an experiment named {design.name!r} exists; extend or retry it instead"
        )
    exp = Experiment(
        name=design.name, design=design.model_dump(mode="json"), owner_id=user.id if user else None
    )
    s.add(exp)
    s.flush()
    runs = _sync(s, exp, user, design)
    return _view(s, exp, created=len(runs))


@router.get("/studies")
def list_studies(s: SessionDep) -> list[dict]:
    exps = s.scalars(select(Experiment).where(Experiment.design.is_not(None)).order_by(Experiment.id)).all()
    return [{**_view(s, e), "runs": None} for e in exps]


@router.get("/studies/{study_id}")
def get_study(study_id: StudyId, s: SessionDep) -> dict:
    return _view(s, _study(s, study_id))


def _owned(s: Session, study_id: int, user, action: str) -> Experiment:
    """Only a study's owner or an admin may change it (auth off: anyone)."""
    exp = _study(s, study_id)
    if user is None or user.is_admin or exp.owner_id == user.id:
        return exp
    raise HTTPException(
        403, detail=f"study {exp.id} belongs to another user: only its owner or an admin may {action} it"
    )


@router.post("/studies/{study_id}/extend")
def extend_study(study_id: StudyId, body: Extend, user: CurrentUser, s: SessionDep) -> dict:
    """More seeds: the new ones' runs are queued; finished runs stay as they are."""
    exp = _owned(s, study_id, user, "extend")
    design = StudyDesign.model_validate({**exp.design, "seeds": sorted({*exp.design["seeds"], *body.seeds})})
    exp.design = design.model_dump(mode="json")
    return _view(s, exp, created=len(_sync(s, exp, user, design)))


@router.post("/studies/{study_id}/retry")
def retry_study(study_id: StudyId, user: CurrentUser, s: SessionDep) -> dict:
    """The failed and cancelled runs again (new runs with the same key); nothing else is rerun."""
    exp = _owned(s, study_id, user, "retry")
    return _view(s, exp, created=len(_sync(s, exp, user, StudyDesign.model_validate(exp.design))))


def records(s: Session, exp: Experiment, design: StudyDesign) -> list[dict]:
    """What the report reads of each of the study's runs: its own stored results."""
    have = _latest_runs(s, exp)
    out = []
    for key, label, seed, _ in expand(design):
        run = have.get(key)
        if run is None:
            continue
        ev = (
            eval_results(run=run, s=s, job=None)
            if run.status == "succeeded" and run.scenario == "defense"
            else None
        )
        out.append(record(label, seed, run.status, run.id, run.summary, ev if ev and ev["rows"] else None))
    return out


@router.get("/studies/{study_id}/report")
def study_report(
    study_id: StudyId,
    s: SessionDep,
    format: Annotated[Literal["json", "md", "latex", "csv"], Query()] = "json",
) -> Response:
    """The study's table, computed from its runs as they finish: mean ± std over seeds with a 95 %
    interval, the best per column, a paired test against the baseline, failed checks per method."""
    exp = _study(s, study_id)
    design = StudyDesign.model_validate(exp.design)
    rep = report(design, records(s, exp, design))
    fn, media = EXPORTS[format]
    name = f"{design.name}.{ {'md': 'md', 'latex': 'tex', 'csv': 'csv', 'json': 'json'}[format] }"
    headers = {} if format == "json" else {"Content-Disposition": f'attachment; filename="{name}"'}
    return Response(fn(rep), media_type=media, headers=headers)


QText = Annotated[str | None, Query(max_length=200, pattern=NO_NUL)]


def _latest_rows(s: Session, q, norm: str, eps: float | None) -> list[tuple]:
    """Per run, its newest panel's AutoAttack row at `eps` (default: that panel's standard radius)."""
    latest: dict[int, tuple] = {}
    for row, run in s.execute(q).all():
        of_job = lambda t, job=row.job_id: t.job_id.is_(None) if job is None else t.job_id == job  # noqa: E731
        summ = (
            s.scalar(
                select(EvalSummary.data)
                .where(EvalSummary.run_id == run.id, of_job(EvalSummary))
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
                    of_job(SanityCheck),
                )
            ).all()
            latest[run.id] = (row, run, summ, sorted(failed))
    return list(latest.values())


LEADERBOARD_COLUMNS = (
    "rank run_id name method dataset norm eps autoattack ci n clean flagged failed_checks".split()
)


@router.get("/leaderboard")
def leaderboard(
    s: SessionDep,
    dataset: QText = None,
    norm: Literal["linf", "l2"] = "linf",
    eps: Annotated[float | None, Query(ge=0, le=100)] = None,
    panel: Literal["standard", "quick"] = "standard",
    experiment: QText = None,
    method: QText = None,
    format: Literal["json", "csv"] = "json",
) -> Response:
    """Every run judged by `panel` (standard: AutoAttack on every example), ranked by AutoAttack
    accuracy at `eps` (default: the panel's standard radius) with its interval, then clean accuracy.
    A run with a failed masking check is flagged and ranked after every unflagged one, never above (a
    check that only found one attack weaker than another leaves AutoAttack's number standing)."""
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
        for row, run, summ, failed in _latest_rows(s, q, norm, eps)
    ]  # fmt: skip
    entries.sort(key=lambda e: (e["flagged"], -e["autoattack"], -(e["clean"] or 0), e["run_id"]))
    for rank, e in enumerate(entries, 1):
        e["rank"] = rank
    if format == "json":
        return Response(
            json.dumps({"panel": panel, "norm": norm, "entries": entries}), media_type="application/json"
        )
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(LEADERBOARD_COLUMNS)
    for e in entries:
        w.writerow(
            [
                csv_cell(";".join(map(str, e[c])) if isinstance(e[c], list) else e[c])
                for c in LEADERBOARD_COLUMNS
            ]
        )
    disposition = {"Content-Disposition": 'attachment; filename="gatlab-leaderboard.csv"'}
    return Response(buf.getvalue(), media_type="text/csv", headers=disposition)
