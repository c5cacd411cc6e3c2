"""Dashboard smoothness with big runs: 20 runs x 1M points of one metric (seeded straight into an
embedded lab's SQLite through the recorder's path, rollups included), opened on the compare page in
Debian's headless Chromium. Prints the time to the first full overlay, then frame statistics
(requestAnimationFrame) and metric-request latencies while the overlay is zoomed and panned with
the wheel (each step re-queries all 20 series for the visible window).

    python -m bench.ui_frames [--runs 20] [--points 1000000] [--steps 16]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright
from sqlalchemy.orm import Session

from bench._common import Stack
from labcore import series
from labcore.db import make_engine
from labcore.models import Run

FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CONFIG = {
    "name": "big",
    "scenario": "defense",
    "method": "great",
    "dataset": {"name": "digits"},
    "model": {"arch": "cnn"},
    "train": {"seed": 0},
    "params": {},
    "eval": {"panel": "none"},
}


def seed(db_url: str, runs: int, points: int) -> list[int]:
    engine = make_engine(db_url)
    ids = []
    with Session(engine) as s:
        for r in range(runs):
            run = Run(
                name=f"big-{r}",
                scenario="defense",
                method="great",
                dataset="digits",
                config={**CONFIG, "name": f"big-{r}", "train": {"seed": r}},
                tags=[],
                status="succeeded",
            )
            s.add(run)
            s.commit()
            batch = []
            for step in range(points):
                batch.append(
                    (
                        run.id,
                        "val/acc",
                        step,
                        0.5 + 0.4 * (1 - 1 / (1 + step / 1e5)) + 0.01 * ((step * 7919 + r) % 13) / 13,
                        0.0,
                    )
                )
                if len(batch) == 20_000:
                    series.add_points(s, batch)
                    s.commit()
                    batch = []
            series.add_points(s, batch)
            s.commit()
            ids.append(run.id)
    engine.dispose()
    return ids


FRAMES = """() => { window.__frames = []; let last = performance.now();
  const tick = (t) => { window.__frames.push(t - last); last = t; if (window.__frames.length < 100000) requestAnimationFrame(tick); };
  requestAnimationFrame(tick); performance.clearResourceTimings(); }"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--points", type=int, default=1_000_000)
    ap.add_argument("--steps", type=int, default=16, help="wheel zoom steps, then as many pan steps")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        lab = Stack.create(Path(d), None, None)
        try:
            t = time.perf_counter()
            ids = seed(f"sqlite:///{Path(d) / '.gatlab' / 'gatlab.db'}", args.runs, args.points)
            print(f"seeded {args.runs} runs x {args.points:,} points in {time.perf_counter() - t:.0f} s")
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS)
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                t = time.perf_counter()
                page.goto(f"{lab.base}/#/compare/{','.join(map(str, ids))}")
                page.wait_for_function(
                    f"document.querySelector('#overlay')?.dataset.series === '{args.runs}' "
                    "&& +document.querySelector('#overlay').dataset.points > 0",
                    timeout=120_000,
                )
                first = time.perf_counter() - t
                pts = int(page.get_attribute("#overlay", "data-points"))
                print(
                    f"compare page, {args.runs} series drawn: {first:.2f} s after navigation "
                    f"({pts:,} points sent for {args.runs * args.points:,} stored)"
                )
                page.locator("#overlay .u-over").hover()
                page.evaluate(FRAMES)
                t = time.perf_counter()
                for i in range(2 * args.steps):
                    if i >= args.steps:
                        page.keyboard.down("Shift")
                    page.mouse.wheel(0, -120 if i < args.steps else 120)
                    page.keyboard.up("Shift")
                    page.wait_for_timeout(250)
                wall = time.perf_counter() - t
                t = time.perf_counter()
                page.wait_for_function("!document.querySelector('#overlay').dataset.loading", timeout=120_000)
                settle = time.perf_counter() - t
                frames = page.evaluate("window.__frames.slice(1)")
                reqs = page.evaluate(
                    "performance.getEntriesByType('resource').filter(e => e.name.includes('/metrics'))"
                    ".map(e => e.duration)"
                )
                rng = page.get_attribute("#overlay", "data-range")
                browser.close()
        finally:
            lab.stop()
    frames.sort()
    print(
        f"{2 * args.steps} wheel steps (zoom then pan) over {wall:.1f} s; window now {rng}; "
        f"the last window's {args.runs} series were drawn {settle:.2f} s after the last step"
    )
    print(
        f"frames: {len(frames) / wall:.1f} fps, median {statistics.median(frames):.1f} ms, "
        f"p95 {frames[int(0.95 * len(frames))]:.1f} ms, longest {frames[-1]:.1f} ms"
    )
    reqs.sort()
    print(
        f"metric requests during zoom/pan: {len(reqs)}, median {statistics.median(reqs):.1f} ms, "
        f"p95 {reqs[int(0.95 * len(reqs))]:.1f} ms, max {reqs[-1]:.1f} ms"
    )


if __name__ == "__main__":
    main()
