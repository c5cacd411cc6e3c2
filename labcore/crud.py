"""Database operations, keyword-only, each taking a session."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Text, cast, delete, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from . import lifecycle, series
from .models import (
    EvalResult,
    EvalSummary,
    Experiment,
    Histogram,
    Metric,
    Run,
    SanityCheck,
    User,
    now,
)
from .panel import PanelResult


def get_or_create_experiment(s: Session, *, name: str | None) -> int | None:
    if not name:
        return None
    exp = s.scalar(select(Experiment).where(Experiment.name == name))
    if exp is None:
        exp = Experiment(name=name)
        s.add(exp)
        s.flush()
    return exp.id


def create_run(
    s: Session,
    *,
    config: dict,
    experiment: str | None = None,
    tags: list[str] | None = None,
    kind: str = "train",
    parent_id: int | None = None,
    owner: User | None = None,
) -> Run:
    return create_runs(
        s, configs=[config], experiment=experiment, tags=tags, kind=kind, parent_id=parent_id, owner=owner
    )[0]


def create_runs(
    s: Session,
    *,
    configs: list[dict],
    experiment: str | None = None,
    tags: list[str] | None = None,
    kind: str = "train",
    parent_id: int | None = None,
    owner: User | None = None,
) -> list[Run]:
    """Queued runs of validated configs, written in one flush (a sweep's thousand runs at once)."""
    experiment_id = get_or_create_experiment(s, name=experiment)
    runs = [
        lifecycle.queued(
            Run(
                name=config["name"],
                scenario=config["scenario"],
                method=config["method"],
                owner_id=owner.id if owner else None,
                dataset=config["dataset"]["name"],
                config=config,
                tags=list(tags or []),
                kind=kind,
                parent_id=parent_id,
                experiment_id=experiment_id,
            )
        )
        for config in configs
    ]
    s.add_all(runs)
    s.flush()
    return runs


def list_runs(
    s: Session,
    *,
    status=None,
    scenario=None,
    method=None,
    experiment=None,
    tag=None,
    q=None,
    sort="-created_at",
    limit=50,
    offset=0,
) -> tuple[list[Run], int]:
    stmt = select(Run)
    if status:
        stmt = stmt.where(Run.status == status)
    if scenario:
        stmt = stmt.where(Run.scenario == scenario)
    if method:
        stmt = stmt.where(Run.method == method)
    if experiment:
        stmt = stmt.join(Experiment, Run.experiment_id == Experiment.id).where(Experiment.name == experiment)
    if tag:
        stmt = stmt.where(
            cast(Run.tags, Text).contains(f'"{tag}"', autoescape=True)
        )  # % and _ match themselves
    if q:
        stmt = stmt.where(
            or_(Run.name.icontains(q, autoescape=True), Run.notes.icontains(q, autoescape=True))
        )
    total = s.scalar(select(func.count()).select_from(stmt.subquery()))
    col = getattr(Run, sort.lstrip("-"))
    stmt = stmt.order_by(col.desc() if sort.startswith("-") else col.asc(), Run.id.desc())
    return list(s.scalars(stmt.limit(limit).offset(offset))), total


def _insert(s: Session):
    return pg_insert if s.bind.dialect.name == "postgresql" else sqlite_insert


def add_histograms(s: Session, *, rows: list[dict]) -> None:
    if rows:
        s.execute(
            _insert(s)(Histogram).on_conflict_do_nothing(index_elements=["run_id", "key", "step"]), rows
        )


def drop_points_after(s: Session, *, run_id: int, step: int) -> None:
    """Before a resume from a checkpoint at `step`: the points after it will be recomputed."""
    series.drop_after(s, run_id=run_id, step=step)
    s.execute(delete(Histogram).where(Histogram.run_id == run_id, Histogram.step > step))


def store_eval(s: Session, *, run_id: int, result: PanelResult, job_id: int | None = None) -> None:
    """Store one panel's results. Each panel job keeps its own set (`job_id`); only the same job
    (a resumed one) replaces its earlier rows, never another job's."""
    for table in (EvalResult, SanityCheck, EvalSummary):
        same_job = table.job_id.is_(None) if job_id is None else table.job_id == job_id
        s.execute(delete(table).where(table.run_id == run_id, same_job))
    rows, summary, checks = result.to_rows()
    ids = {"run_id": run_id, "job_id": job_id}
    s.add_all([EvalResult(**ids, **r) for r in rows])
    s.add(EvalSummary(**ids, panel=result.panel, data=summary))
    s.add_all([SanityCheck(**ids, **c) for c in checks])


def metric_columns(
    s: Session,
    *,
    run_id: int,
    keys: list[str] | None,
    max_points: int,
    after_step: int,
    before_step: int | None = None,
) -> dict:
    """Chart-ready columns per key; long series come as min/max/last buckets (see labcore.series)."""
    if not keys:
        keys = list(
            s.scalars(select(Metric.key).where(Metric.run_id == run_id).distinct().order_by(Metric.key))
        )
    return {
        k: series.columns(
            s, run_id=run_id, key=k, max_points=max_points, after_step=after_step, before_step=before_step
        )
        for k in keys
    }


def stale_runs(s: Session, *, older_than_s: float) -> list[Run]:
    cutoff = datetime.now(UTC) - timedelta(seconds=older_than_s)
    return list(
        s.scalars(select(Run).where(Run.status == "running", Run.heartbeat_at < cutoff).with_for_update())
    )


def mark_enqueued(s: Session, *, run_ids: list[int]) -> None:
    if run_ids:
        s.execute(update(Run).where(Run.id.in_(run_ids)).values(enqueued_at=now()))


def unsent_runs(s: Session, *, older_than_s: float) -> list[int]:
    """Queued in the database, never put on the broker, for longer than a request takes."""
    cutoff = datetime.now(UTC) - timedelta(seconds=older_than_s)
    return list(
        s.scalars(
            select(Run.id).where(Run.status == "queued", Run.enqueued_at.is_(None), Run.created_at < cutoff)
        )
    )


def lost_runs(s: Session, *, older_than_s: float) -> list[int]:
    """Queued, sent to the broker longer ago than `older_than_s`, and held by no worker: their message
    may be lost (a Redis restarted without persistence). Sending one again is harmless."""
    cutoff = datetime.now(UTC) - timedelta(seconds=older_than_s)
    return list(
        s.scalars(select(Run.id).where(Run.status == "queued", Run.enqueued_at < cutoff).order_by(Run.id))
    )


class Superseded(RuntimeError):
    """Another attempt owns the run now (it was requeued while this one was silent)."""


def hold(s: Session, *, run_id: int, attempt: int) -> None:
    """The fence every write of a worker passes first: the run is still running under this
    attempt. The row stays locked (PostgreSQL) until the write commits, so a claim cannot slip in."""
    row = s.execute(select(Run.status, Run.attempt).where(Run.id == run_id).with_for_update()).one_or_none()
    if row is None or row.status != "running" or row.attempt != attempt:
        state = "gone" if row is None else f"{row.status} under attempt {row.attempt}"
        raise Superseded(f"run {run_id} is {state}; attempt {attempt} writes nothing more")


def set_progress(s: Session, *, run_id: int, step: int, total: int, eta: float | None) -> None:
    s.execute(update(Run).where(Run.id == run_id).values(step=step, total_steps=total, eta_s=eta))


def heartbeat(s: Session, *, run_id: int, attempt: int) -> bool:
    """Mark the run alive (if this attempt still owns it); returns whether a cancel was requested."""
    hold(s, run_id=run_id, attempt=attempt)
    s.execute(update(Run).where(Run.id == run_id).values(heartbeat_at=now()))
    return cancel_requested(s, run_id=run_id)


def cancel_requested(s: Session, *, run_id: int) -> bool:
    return bool(s.scalar(select(Run.cancel_requested).where(Run.id == run_id)))
