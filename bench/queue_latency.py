"""Queue latency: seconds from POST /api/runs to the run being `running`, with an idle worker,
over Redis (+ PostgreSQL) and over the embedded SQLite broker, in one run.

    python -m bench.queue_latency [--repeat 10]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

from bench._common import PG, Stack

REDIS = "redis://127.0.0.1:6379/0"
CONFIG = {
    "scenario": "defense",
    "method": "erm",
    "dataset": {"name": "synthetic", "size": 60},
    "model": {"arch": "mlp", "width": 2},
    "train": {"epochs": 1},
    "eval": {"panel": "none"},
}


def latencies(stack: Stack, repeat: int) -> list[float]:
    stack.start_worker()
    out = []
    for _ in range(repeat + 1):  # the first one warms the worker's imports
        t = time.perf_counter()
        run_id = stack.http.post("/api/runs", json={"config": CONFIG}).json()["id"]
        run = stack.wait_for(run_id, lambda r: r["status"] != "queued", timeout=60, what="started", poll=0.01)
        out.append(time.perf_counter() - t)
        stack.wait_for(run_id, lambda r: r["status"] in ("succeeded", "failed"), timeout=60, what="finished")
        assert run["status"] != "failed", run
        time.sleep(0.5)
    return out[1:]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=10)
    args = ap.parse_args()
    base = make_url(PG)
    admin = base.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"gatlab_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    try:
        print(f"{'broker':<34}{'median s':>10}{'max s':>8}")
        for label, db, redis in (
            ("Redis + PostgreSQL", base.set(database=name).render_as_string(hide_password=False), REDIS),
            ("embedded (SQLite broker)", None, None),
        ):
            with tempfile.TemporaryDirectory() as d:
                stack = Stack.create(Path(d), db, redis)
                try:
                    lat = latencies(stack, args.repeat)
                finally:
                    stack.stop()
            print(f"{label:<34}{statistics.median(lat):>10.3f}{max(lat):>8.3f}")
    finally:
        with psycopg.connect(admin, autocommit=True) as c:
            c.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
