"""Metric series: idempotent batch ingestion with rollups, and bounded downsampled reads.

Points are unique per (run, key, step): a retried batch never duplicates one. As points arrive,
min/max/last per bucket are folded into `metric_rollups` at widths 16, 256 and 4096 steps
(min, max and last are idempotent, so a replayed point changes nothing). A read of N points into
`max_points` buckets uses the raw table when N is small, else the finest rollup level with at
most 8 x max_points rows, merged into the output buckets: spikes survive as min/max.
"""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy import case, delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from .models import Metric, MetricRollup

WIDTHS = (16, 256, 4096)
_RAW_SQL = {
    "sqlite": "INSERT OR IGNORE INTO metrics (run_id, key, step, value, wall_time) VALUES (?, ?, ?, ?, ?)",
    "postgresql": "INSERT INTO metrics (run_id, key, step, value, wall_time) VALUES (%s, %s, %s, %s, %s) "
    "ON CONFLICT (run_id, key, step) DO NOTHING",
}


def add_points(s: Session, rows: list[tuple[int, str, int, float, float]]) -> None:
    """Insert (run_id, key, step, value, wall_time) tuples and fold them into the rollups."""
    if not rows:
        return
    dialect = s.bind.dialect.name
    s.connection().exec_driver_sql(_RAW_SQL[dialect], rows)  # executemany straight to the driver
    _fold(s, _rollups(rows), dialect)


def _rollups(rows) -> list[dict]:
    acc: dict[tuple, list] = {}
    for run_id, key, step, value, _ in rows:
        for w in WIDTHS:
            k = (run_id, key, w, step // w)
            a = acc.get(k)
            if a is None:
                acc[k] = [value, value, step, value]
            else:
                a[0] = min(a[0], value)
                a[1] = max(a[1], value)
                if step >= a[2]:
                    a[2], a[3] = step, value
    return [
        {
            "run_id": r,
            "key": k,
            "width": w,
            "bucket": b,
            "vmin": a[0],
            "vmax": a[1],
            "last_step": a[2],
            "last_value": a[3],
        }
        for (r, k, w, b), a in acc.items()
    ]


def _fold(s: Session, rollups: list[dict], dialect: str) -> None:
    ins = (pg_insert if dialect == "postgresql" else sqlite_insert)(MetricRollup)
    lo, hi = (func.least, func.greatest) if dialect == "postgresql" else (func.min, func.max)
    t, x = MetricRollup.__table__.c, ins.excluded
    newer = x.last_step >= t.last_step
    stmt = ins.on_conflict_do_update(
        index_elements=["run_id", "key", "width", "bucket"],
        set_={
            "vmin": lo(t.vmin, x.vmin),
            "vmax": hi(t.vmax, x.vmax),
            "last_step": case((newer, x.last_step), else_=t.last_step),
            "last_value": case((newer, x.last_value), else_=t.last_value),
        },
    )
    for i in range(0, len(rollups), 2000):
        s.execute(stmt, rollups[i : i + 2000])


def drop_after(s: Session, *, run_id: int, step: int) -> None:
    """Forget points after `step` (a resume recomputes them) and rebuild the buckets they touched."""
    s.execute(delete(Metric).where(Metric.run_id == run_id, Metric.step > step))
    for w in WIDTHS:
        s.execute(
            delete(MetricRollup).where(
                MetricRollup.run_id == run_id, MetricRollup.width == w, MetricRollup.bucket >= (step + 1) // w
            )
        )
    start = (step + 1) // WIDTHS[-1] * WIDTHS[-1]  # the first step of the oldest touched bucket
    pts = s.execute(
        select(Metric.run_id, Metric.key, Metric.step, Metric.value, Metric.wall_time).where(
            Metric.run_id == run_id, Metric.step >= start
        )
    ).all()
    _fold(s, _rollups(pts), s.bind.dialect.name)


def columns(
    s: Session, *, run_id: int, key: str, max_points: int, after_step: int, before_step: int | None = None
) -> dict:
    """{step, value (last), min, max} with at most max_points entries, for after_step < step <= before_step."""
    where = [Metric.run_id == run_id, Metric.key == key, Metric.step > after_step]
    if before_step is not None:
        where.append(Metric.step <= before_step)
    lo = s.scalar(select(func.min(Metric.step)).where(*where))  # index seeks, not scans
    hi = s.scalar(select(func.max(Metric.step)).where(*where))
    if lo is None:
        return {"step": [], "value": [], "min": [], "max": []}
    n = s.scalar(
        select(func.count()).select_from(select(Metric.id).where(*where).limit(max_points + 1).subquery())
    )
    if n <= max_points:
        pts = s.execute(select(Metric.step, Metric.value).where(*where).order_by(Metric.step)).all()
        vals = [p[1] for p in pts]
        return {"step": [p[0] for p in pts], "value": vals, "min": vals, "max": vals}
    width = next((w for w in WIDTHS if (hi - lo) / w <= 8 * max_points), WIDTHS[-1])
    first, end = -(-lo // width), (hi + 1) // width  # whole buckets: first <= bucket < end
    rows = [
        tuple(r)
        for r in s.execute(
            select(
                MetricRollup.bucket,
                MetricRollup.vmin,
                MetricRollup.vmax,
                MetricRollup.last_step,
                MetricRollup.last_value,
            )
            .where(
                MetricRollup.run_id == run_id,
                MetricRollup.key == key,
                MetricRollup.width == width,
                MetricRollup.bucket >= first,
                MetricRollup.bucket < end,
            )
            .order_by(MetricRollup.bucket)
        ).all()
    ]
    # partial buckets at either edge come from raw points
    head = _raw_bucket(s, where, lo, min(first * width, hi + 1))
    tail = _raw_bucket(s, where, max(end * width, first * width, lo), hi + 1) if end * width <= hi else None
    rows = ([head] if head else []) + rows + ([tail] if tail else [])
    return _merge(rows, max_points)


def _raw_bucket(s: Session, where: list, start: int, stop: int) -> tuple | None:
    pts = s.execute(
        select(Metric.step, Metric.value)
        .where(*where, Metric.step >= start, Metric.step < stop)
        .order_by(Metric.step)
    ).all()
    if not pts:
        return None
    vals = [v for _, v in pts]
    return (-1, min(vals), max(vals), pts[-1][0], pts[-1][1])


def _merge(rows: list[tuple], max_points: int) -> dict:
    group = -(-len(rows) // max_points)
    out: dict[str, list] = defaultdict(list)
    for i in range(0, len(rows), group):
        chunk = rows[i : i + group]
        out["step"].append(chunk[-1][3])
        out["value"].append(chunk[-1][4])
        out["min"].append(min(r[1] for r in chunk))
        out["max"].append(max(r[2] for r in chunk))
    return dict(out)
