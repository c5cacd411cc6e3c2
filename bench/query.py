"""Query latency on SQLite and PostgreSQL: a 1000-bucket min/max/last read of a 1M-point series,
and the runs list (filtered, sorted, paginated) at 10k runs. Median of repeated reads.

    python -m bench.query [--points 1000000] [--runs 10000]
"""

from __future__ import annotations

import argparse
import statistics
import time

from bench._common import database
from labcore import crud, series
from labcore.models import Run

STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"]
METHODS = ["erm", "great", "pgd_at", "trades"]


def timed(fn, repeat: int = 15) -> float:
    fn()  # warm
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=10_000)
    args = ap.parse_args()
    print(f"{'database':<12}{'query':<52}{'ms (median)':>12}")
    for kind in ("sqlite", "postgres"):
        with database(kind) as s:
            runs = [
                Run(
                    name=f"run-{i}",
                    scenario="defense",
                    method=METHODS[i % 4],
                    dataset="digits",
                    config={"i": i},
                    tags=["a"] if i % 3 else ["b"],
                    status=STATUSES[i % 5],
                )
                for i in range(args.runs)
            ]
            s.add_all(runs)
            s.commit()
            rid = runs[0].id
            for i in range(0, args.points, 5000):
                series.add_points(
                    s, [(rid, "loss", j, float(j % 977), 0.0) for j in range(i, min(i + 5000, args.points))]
                )
            s.commit()
            q1 = timed(
                lambda rid=rid: series.columns(s, run_id=rid, key="loss", max_points=1000, after_step=-1)
            )
            q2 = timed(
                lambda: crud.list_runs(
                    s, status="succeeded", method="great", sort="-created_at", limit=50, offset=100
                )
            )
            q3 = timed(lambda: crud.list_runs(s, q="run-99", limit=50))
            print(f"{kind:<12}{f'{args.points:,} points -> 1000 min/max/last buckets':<52}{q1:>12.1f}")
            print(f"{kind:<12}{f'{args.runs:,} runs: status+method filter, page 3 of 50':<52}{q2:>12.1f}")
            print(f"{kind:<12}{f'{args.runs:,} runs: text search':<52}{q3:>12.1f}")


if __name__ == "__main__":
    main()
