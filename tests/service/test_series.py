"""Metric series on both databases: idempotent ingestion, rollups, downsampled reads, resume."""

from __future__ import annotations

import random

import pytest
from sqlalchemy.orm import Session

from labcore import series
from labcore.db import make_engine
from labcore.migrate import upgrade
from labcore.models import Run


@pytest.fixture(params=["sqlite", "postgresql"])
def s(request, tmp_path, pg_database):
    url = f"sqlite:///{tmp_path}/t.db" if request.param == "sqlite" else pg_database
    upgrade(url)
    engine = make_engine(url)
    with Session(engine) as session:
        yield session
        session.rollback()
    if request.param == "postgresql":
        with engine.begin() as c:
            c.exec_driver_sql("TRUNCATE runs, metrics, metric_rollups CASCADE")
    engine.dispose()


def _run(s) -> int:
    run = Run(
        name="r", scenario="defense", method="erm", dataset="digits", config={}, tags=[], status="running"
    )
    s.add(run)
    s.flush()
    return run.id


def _brute(points: dict[int, float], after: int, before: int | None = None):
    steps = sorted(k for k in points if k > after and (before is None or k <= before))
    return steps, [points[k] for k in steps]


@pytest.mark.parametrize(
    "n,max_points,after,before",
    [
        (50, 100, -1, None),
        (20_000, 300, -1, None),
        (20_000, 300, 7_777, None),
        (70_000, 1000, 100, None),
        (20_000, 200, 1_000, 50_001),
        (20_000, 200, 29_000, 31_000),  # zoom windows
    ],
)
def test_downsampled_read_is_bounded_and_keeps_extremes(s, n, max_points, after, before):
    rid = _run(s)
    rng = random.Random(n)
    points = {step: rng.gauss(0, 1) for step in range(0, 3 * n, 3)}  # sparse steps
    points[3 * (n // 2)] = 1e6  # one spike
    rows = [(rid, "loss", k, v, 0.0) for k, v in points.items()]
    rng.shuffle(rows)
    for i in range(0, len(rows), 4096):
        series.add_points(s, rows[i : i + 4096])
    series.add_points(s, rows[:5000])  # a replayed batch changes nothing
    out = series.columns(
        s, run_id=rid, key="loss", max_points=max_points, after_step=after, before_step=before
    )
    steps, values = _brute(points, after, before)
    assert len(out["step"]) <= max_points
    assert (
        out["step"] == sorted(out["step"]) and out["step"][-1] == steps[-1] and out["value"][-1] == values[-1]
    )
    assert max(out["max"]) == max(values) and min(out["min"]) == min(values)
    assert set(out["step"]) <= set(steps) and min(out["step"]) > after
    for st, v in zip(out["step"], out["value"], strict=False):
        assert points[st] == v


def test_drop_after_rebuilds_rollups_as_if_never_written(s):
    rid = _run(s)
    first = [(rid, "k", i, float(i % 97), 0.0) for i in range(10_000)]
    series.add_points(s, first)
    series.drop_after(s, run_id=rid, step=6_000)
    redo = [(rid, "k", i, -float(i % 89), 0.0) for i in range(6_001, 9_000)]  # a resumed run's new values
    series.add_points(s, redo)
    out = series.columns(s, run_id=rid, key="k", max_points=50, after_step=-1)
    expect = {i: float(i % 97) for i in range(6_001)} | {i: -float(i % 89) for i in range(6_001, 9_000)}
    assert out["step"][-1] == 8_999 and out["value"][-1] == expect[8_999]
    assert max(out["max"]) == max(expect.values()) and min(out["min"]) == min(expect.values())
    tail = series.columns(s, run_id=rid, key="k", max_points=50, after_step=6_000)
    assert max(tail["max"]) == 0.0 and min(tail["min"]) == -88.0  # no stale value of the first attempt
