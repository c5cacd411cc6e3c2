"""Robustness panels: which a run has, one read back from the store as a `PanelResult`, a new one
queued on a finished run, the images of one, and every row of a selection of runs for export."""

from __future__ import annotations

import copy
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from labcore import crud, lifecycle
from labcore.config import get_settings
from labcore.errors import Refused, check_owner, conflict
from labcore.models import EvalResult, EvalSummary, Run, SanityCheck, User
from labcore.panel import PanelResult
from labcore.services.runs import check_quota, commit_and_enqueue

EXPORT_COLUMNS = ("run_id", "job_id", "panel", "attack", "norm", "eps", "steps", "restarts", "n", "accuracy")
EXPORT_COLUMNS += ("ci_low", "ci_high")


def jobs(s: Session, run: Run) -> list[dict]:
    """The panels run on this run, oldest first. A panel job is named by its run id; the panel at
    the end of the run's own training by the run's id."""
    rows = s.execute(
        select(EvalResult.job_id, EvalResult.panel, func.max(EvalResult.n), func.min(EvalResult.id))
        .where(EvalResult.run_id == run.id)
        .group_by(EvalResult.job_id, EvalResult.panel)
        .order_by(func.min(EvalResult.id))
    ).all()
    return [{"job_id": job or run.id, "panel": panel, "n": n} for job, panel, n, _ in rows]


def of_job(table, run_id: int, job_id: int | None):
    """Rows of one panel: the run's own (stored with job_id NULL) or a panel job's."""
    return table.job_id.is_(None) if job_id in (None, run_id) else table.job_id == job_id


def pick(s: Session, run: Run, job: int | None) -> tuple[list[dict], int | None]:
    """Every panel of the run, and the one asked for (default: the latest); 404 for one it has not."""
    found = jobs(s, run)
    if job is not None and job not in [j["job_id"] for j in found]:
        raise Refused(404, f"run {run.id} has no results of panel job {job}")
    return found, job if job is not None else (found[-1]["job_id"] if found else None)


def read(s: Session, run_id: int, job_id: int | None) -> PanelResult | None:
    """One panel's result from the store (None if it has no rows)."""
    rows = s.scalars(
        select(EvalResult)
        .where(EvalResult.run_id == run_id, of_job(EvalResult, run_id, job_id))
        .order_by(EvalResult.id)
    ).all()
    if not rows:
        return None
    checks = s.scalars(
        select(SanityCheck)
        .where(SanityCheck.run_id == run_id, of_job(SanityCheck, run_id, job_id))
        .order_by(SanityCheck.id)
    ).all()
    summary = s.scalar(
        select(EvalSummary.data)
        .where(EvalSummary.run_id == run_id, of_job(EvalSummary, run_id, job_id))
        .order_by(EvalSummary.id.desc())
    )
    return PanelResult.from_rows(rows[0].panel, summary, rows, checks)


def job_dir(run: Run, job_id: int | None) -> Path:
    return get_settings().runs_path / str(job_id or run.id)


def view(s: Session, run: Run, job: int | None = None) -> dict:
    """The API's answer: one panel (the latest, or `job`) and the list of every panel of the run."""
    found, job_id = pick(s, run, job)
    result = read(s, run.id, job_id)
    body = result.view() if result else {"summary": None, "rows": [], "checks": []}
    body.setdefault("all_passed", None)
    body.setdefault("masking_suspected", None)
    return {
        "job_id": job_id,
        "panels": found,
        **body,
        "gallery": (job_dir(run, job_id) / "gallery.json").is_file(),
    }


def latest(s: Session, run: Run) -> PanelResult | None:
    """The run's newest panel, as a study's report reads it."""
    return read(s, run.id, pick(s, run, None)[1])


def queue(s: Session, user: User | None, run: Run, panel: str, n: int | None) -> Run:
    """The panel on a finished defense run, as its own job (owner or admin)."""
    check_owner(run.owner_id, user, f"run {run.id}", "evaluate")
    if run.kind != "train" or run.scenario != "defense" or run.status != lifecycle.SUCCEEDED:
        raise conflict("the panel runs on a succeeded defense training run")
    cfg = copy.deepcopy(run.config)
    cfg["eval"] = {**cfg["eval"], "panel": panel, "n": n}
    check_quota(s, user, 1)
    job = crud.create_run(s, config=cfg, kind="eval", parent_id=run.id, owner=user)
    job.name = f"eval {panel}: {run.name}"[:200]
    return commit_and_enqueue(s, [job])[0]


def gallery(s: Session, run: Run, job: int | None) -> Path:
    """The file of one panel's clean, adversarial and perturbation images."""
    path = job_dir(run, pick(s, run, job)[1]) / "gallery.json"
    if not path.is_file():
        raise Refused(404, f"run {run.id} has no robustness panel images yet")
    return path


def export_rows(s: Session, run_ids: list[int]) -> list[tuple]:
    """Every robustness row of the runs' panels, with its interval and number of examples."""
    return [
        tuple(r)
        for r in s.execute(
            select(*(getattr(EvalResult, c) for c in EXPORT_COLUMNS))
            .where(EvalResult.run_id.in_(run_ids))
            .order_by(EvalResult.run_id, EvalResult.id)
        )
    ]
