"""Recorders: how the core reports. The worker's writes to the database in batches; the CLI's
prints a progress bar and appends JSON lines to the run directory."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Protocol

from tqdm import tqdm

log = logging.getLogger(__name__)


class Recorder(Protocol):
    """How the core reports. The CLI's JsonlRecorder and the worker's DbRecorder implement it; a
    class that subclasses it explicitly inherits no-op methods for what it does not keep."""

    def log(self, step: int, metrics: dict[str, float]) -> None: ...

    def histogram(self, step: int, key: str, edges: list[float], counts: list[int]) -> None: ...

    def progress(self, step: int, total: int, eta_s: float | None) -> None: ...

    def evaluation(self, result: dict) -> None: ...

    def flush(self) -> None: ...


class JsonlRecorder(Recorder):
    """metrics.jsonl and histograms.jsonl in the run directory. On resume, lines past the
    checkpoint's step are dropped first, so a resumed run's file has no duplicates."""

    def __init__(self, run_dir: Path, *, resume_step: int = 0, progress_bar: bool = True):
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        for name in ("metrics.jsonl", "histograms.jsonl"):
            _truncate_after(run_dir / name, resume_step)
        self._metrics = open(run_dir / "metrics.jsonl", "a")
        self._hists = open(run_dir / "histograms.jsonl", "a")
        self._bar = None
        self._use_bar = progress_bar

    def log(self, step, metrics):
        self._metrics.write(json.dumps({"step": step, **metrics}) + "\n")

    def histogram(self, step, key, edges, counts):
        self._hists.write(json.dumps({"step": step, "key": key, "edges": edges, "counts": counts}) + "\n")

    def progress(self, step, total, eta_s):
        if not self._use_bar:
            return
        if self._bar is None:
            self._bar = tqdm(total=total, initial=step, unit="step", dynamic_ncols=True)
        self._bar.update(step - self._bar.n)

    def evaluation(self, result):
        (self.run_dir / "eval.json").write_text(json.dumps(result, indent=2))

    def flush(self):
        self._metrics.flush()
        self._hists.flush()

    def close(self):
        self.flush()
        self._metrics.close()
        self._hists.close()
        if self._bar is not None:
            self._bar.close()


def _truncate_after(path: Path, step: int) -> None:
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in keep))


class NullRecorder(Recorder):
    """Keeps nothing: for benchmarks and studies that read the returned summary only."""
