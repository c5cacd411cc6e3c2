"""Metric ingestion rate, side by side in one run: points per second through the worker's
recorder (batched, idempotent, with rollups) into SQLite and PostgreSQL, raw sqlite3
executemany for the floor, and MLflow's log_batch into its own SQLite store (if installed:
`pip install -e '.[bench]'`).

    python -m bench.ingest [--points 1000000]
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time

from bench._common import database
from labcore import series
from labcore.models import Run

KEYS = [f"train/m{i}" for i in range(10)]  # a training step logs about ten scalars


def points(n: int, run_id: int):
    for step in range(n // len(KEYS)):
        for k in KEYS:
            yield (run_id, k, step, float(step % 1000), 0.0)


def recorder_rate(kind: str, n: int, batch: int = 5000) -> float:
    with database(kind) as s:
        run = Run(
            name="b", scenario="defense", method="erm", dataset="d", config={}, tags=[], status="running"
        )
        s.add(run)
        s.commit()
        buf, t = [], time.perf_counter()
        for p in points(n, run.id):
            buf.append(p)
            if len(buf) == batch:  # the recorder's flush: one transaction per batch
                series.add_points(s, buf)
                s.commit()
                buf = []
        series.add_points(s, buf)
        s.commit()
        return n / (time.perf_counter() - t)


def raw_sqlite_rate(n: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        c = sqlite3.connect(f"{d}/raw.db")
        c.execute("PRAGMA journal_mode=WAL")
        c.execute(
            "CREATE TABLE m (run_id INT, key TEXT, step INT, value REAL, wall REAL, UNIQUE(run_id, key, step))"
        )
        t = time.perf_counter()
        c.executemany("INSERT INTO m VALUES (?, ?, ?, ?, ?)", points(n, 1))
        c.commit()
        return n / (time.perf_counter() - t)


def mlflow_rate(n: int) -> float | None:
    try:
        import mlflow  # noqa: F401 - the optional extra must be installed
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient
    except ImportError:
        return None
    with tempfile.TemporaryDirectory() as d:
        client = MlflowClient(tracking_uri=f"sqlite:///{d}/mlflow.db")
        run = client.create_run(client.create_experiment("bench"))
        ts = int(time.time() * 1000)
        t = time.perf_counter()
        buf = []
        for _, k, step, v, _ in points(n, 0):
            buf.append(Metric(k, v, ts, step))
            if len(buf) == 1000:  # MLflow's own per-request limit on metrics in log_batch
                client.log_batch(run.info.run_id, metrics=buf)
                buf = []
        if buf:
            client.log_batch(run.info.run_id, metrics=buf)
        return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=1_000_000)
    ap.add_argument("--mlflow-points", type=int, default=100_000)
    args = ap.parse_args()
    rows = [
        ("recorder -> SQLite", recorder_rate("sqlite", args.points), args.points),
        ("recorder -> PostgreSQL", recorder_rate("postgres", args.points), args.points),
        ("raw sqlite3 executemany", raw_sqlite_rate(args.points), args.points),
    ]
    ml = mlflow_rate(args.mlflow_points)
    rows.append(("MLflow log_batch -> SQLite", ml, args.mlflow_points))
    base = rows[0][1]
    print(f"{'path':<28}{'points':>10}{'points/s':>12}{'vs recorder->SQLite':>22}")
    for name, rate, n in rows:
        if rate is None:
            print(f"{name:<28}{n:>10}{'not installed':>12}")
        else:
            print(f"{name:<28}{n:>10}{rate:>12,.0f}{rate / base:>22.2f}")


if __name__ == "__main__":
    main()
