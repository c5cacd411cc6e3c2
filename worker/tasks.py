"""Celery tasks: a thin adapter between the queue, the database and the core.

`train_run(run_id)` loads the run, marks it running, trains (or evaluates) through the core with a
recorder that writes to the database in batches, heartbeats, honours cancel between steps, and
sets the final status. It is idempotent: a redelivered or requeued task resumes the same run
from its last checkpoint and never creates a second copy or duplicate metric points.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from celery.signals import task_postrun, task_prerun, worker_ready, worker_shutting_down
from sqlalchemy import select
from sqlalchemy.orm import Session

from labcore import crud, lifecycle, series, uploads
from labcore.config import get_settings
from labcore.db import session_scope
from labcore.models import Artifact, Run, User, aware, now
from labcore.panel import PanelResult
from labcore.queue import ALIVE_EVERY_S, TRAIN_TASK, alive_file, make_celery
from labcore.run_config import PATH_FIELDS
from worker.gat import job
from worker.gat.train import HandedBack, Stopped, checkpoint_step, pick_device

log = logging.getLogger(__name__)
app = make_celery(get_settings())
# Set when this worker is told to stop (SIGTERM: `docker compose restart`, an upgrade): the run in
# hand is checkpointed at its next step and handed back to the queue, spending no retry.
SHUTTING_DOWN = threading.Event()


@worker_shutting_down.connect
def _on_shutdown(**_) -> None:
    SHUTTING_DOWN.set()


@dataclass(frozen=True)
class Fence:
    """The attempt that may write: `run_id` is the job's run (a panel job's own, not its parent's)."""

    run_id: int
    attempt: int

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A session whose writes commit only if this attempt still owns the run (else Superseded)."""
        with session_scope() as s:
            crud.hold(s, run_id=self.run_id, attempt=self.attempt)
            yield s


class DbRecorder:
    """Buffers points and writes them in batches; progress is written at most once a second. Every
    write passes the attempt's fence."""

    def __init__(
        self,
        run_id: int,
        fence: Fence,
        *,
        flush_every: int = 5000,
        progress_s: float = 1.0,
        job_id: int | None = None,
    ):
        self.run_id, self.fence, self.flush_every, self.progress_s = run_id, fence, flush_every, progress_s
        self.job_id = job_id  # a panel job's results are kept apart from the run's own and other jobs'
        self.rows: list[dict] = []
        self.hists: list[dict] = []
        self._last = 0.0

    def log(self, step: int, metrics: dict[str, float]) -> None:
        t = time.time()
        self.rows.extend((self.run_id, k, step, float(v), t) for k, v in metrics.items())
        if len(self.rows) >= self.flush_every:
            self.flush()

    def histogram(self, step, key, edges, counts) -> None:
        self.hists.append({"run_id": self.run_id, "key": key, "step": step, "edges": edges, "counts": counts})

    def progress(self, step: int, total: int, eta_s: float | None) -> None:
        if time.monotonic() - self._last < self.progress_s and step < total:
            return
        self._last = time.monotonic()
        self.flush()  # points first: progress never runs ahead of the stored metrics
        with self.fence.write() as s:
            crud.set_progress(s, run_id=self.run_id, step=step, total=total, eta=eta_s)

    def evaluation(self, result: dict) -> None:
        with self.fence.write() as s:
            crud.store_eval(
                s, run_id=self.run_id, result=PanelResult.model_validate(result), job_id=self.job_id
            )

    def flush(self) -> None:
        rows, hists, self.rows, self.hists = self.rows, self.hists, [], []
        if rows or hists:
            with self.fence.write() as s:
                series.add_points(s, rows)
                crud.add_histograms(s, rows=hists)


class Heartbeat(threading.Thread):
    """Beats every `period_s` while the task lives (training or evaluating), and reads the cancel
    flag four times a second, so a cancelled run stops within a few steps of the request. A beat
    that finds the run owned by a newer attempt stops the training loop the same way."""

    CANCEL_POLL_S = 0.25

    def __init__(self, fence: Fence, period_s: float, time_limit_s: float = float("inf")):
        super().__init__(name=f"heartbeat-{fence.run_id}", daemon=True)
        self.fence, self.period_s, self.time_limit_s = fence, period_s, time_limit_s
        self.cancel = self.superseded = False
        self.done = threading.Event()
        self.started = time.monotonic()

    def time_left(self) -> float:
        return self.time_limit_s - (time.monotonic() - self.started)

    @property
    def timed_out(self) -> bool:
        """The job's wall-clock limit (GATLAB_JOB_TIME_LIMIT_S, per attempt) has passed."""
        return self.time_left() <= 0

    @property
    def stop(self) -> bool:
        return self.cancel or self.superseded or self.timed_out

    def run(self) -> None:
        last = 0.0
        while not self.done.wait(min(self.CANCEL_POLL_S, self.period_s)):
            try:
                with session_scope() as s:
                    if time.monotonic() - last >= self.period_s:
                        self.cancel = (
                            crud.heartbeat(s, run_id=self.fence.run_id, attempt=self.fence.attempt)
                            or self.cancel
                        )
                        last = time.monotonic()
                    else:
                        self.cancel = crud.cancel_requested(s, run_id=self.fence.run_id) or self.cancel
            except crud.Superseded as e:
                log.warning("%s: stopping", e)
                self.superseded = True
                return
            except Exception:  # a missed beat is retried next period
                log.exception("heartbeat of run %s failed", self.fence.run_id)


def _claim(run_id: int) -> dict | None:
    """Mark the run running unless it is finished or alive elsewhere; returns what the job needs."""
    settings = get_settings()
    with session_scope() as s:
        run = s.get(Run, run_id, with_for_update=True)
        if run is None or run.status in lifecycle.FINAL:
            return None
        fresh = (
            run.heartbeat_at and (now() - aware(run.heartbeat_at)).total_seconds() < settings.stale_after_s
        )
        if run.status == "running" and fresh and run.worker_host != _me():
            log.info("run %s is alive on %s; not starting a second copy", run_id, run.worker_host)
            return None
        if run.cancel_requested:
            lifecycle.cancelled_before_start(run)
            return None
        first = run.started_at is None
        owner = s.get(User, run.owner_id) if run.owner_id is not None else None
        lifecycle.start(run, _me())
        return {
            "id": run.id,
            "kind": run.kind,
            "config": run.config,
            "parent_id": run.parent_id,
            "attempt": run.attempt,
            "first": first,
            # Who may evaluate TorchScript is checked again here, at use: a lab's rule may change.
            "torchscript_ok": settings.may_run_torchscript(
                bool(owner and owner.is_admin) if settings.auth else None
            ),
        }


def _set_aside_foreign_files(run_dir: Path) -> None:
    """A run's first attempt starts from an empty directory: files already there were not written
    by it (a run deleted before ids stopped being reused, a hand-made folder) and are moved aside,
    never read."""
    if run_dir.exists() and any(run_dir.iterdir()):
        aside = run_dir.parent / ".set-aside" / f"{run_dir.name}-{int(time.time())}"
        aside.parent.mkdir(exist_ok=True)
        run_dir.rename(aside)
        log.warning("run directory %s held files this run did not write; moved to %s", run_dir, aside)


def _me() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _finish(fence: Fence, status: str, run_dir: Path | None = None, **fields) -> None:
    """The final status, and the files of the run's directory as artifacts, in one fenced write:
    whoever sees the status can download the run's log and model at once."""
    with fence.write() as s:
        lifecycle.finish(s.get(Run, fence.run_id), status, **fields)
        if run_dir is not None:
            _register_artifacts(s, fence.run_id, run_dir)


class OutsideDataRoot(ValueError):
    """A config path that resolves (symbolic links followed) outside the data root."""


def _in_data_root(config: dict, root: Path | None) -> None:
    """Resolve every file path of a lab config at use: relative to the data root, symbolic links
    followed, and refused if the real path leaves the root (the API's check was textual, and at
    submit time: a link made later must not lead out). The core then reads the resolved path."""
    if root is None:
        return
    for section, key in PATH_FIELDS:
        value = config.get(section, {}).get(key)
        if value is None:
            continue
        real = Path(os.path.realpath(root / value))
        if not real.is_relative_to(root.resolve()):
            raise OutsideDataRoot(
                f"{section}.{key}: {value!r} resolves to {real}, outside the data root {root}"
            )
        config[section] = {**config[section], key: str(real)}


def _run_log(path: Path) -> logging.Handler:
    """The run's own log file (an artifact): what the core and this task log while it runs."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    return handler


def _register_artifacts(s, run_id: int, out_dir: Path) -> None:
    """The files the run's directory holds, recorded in the session of its final status."""
    kinds = {"checkpoint.pt": "checkpoint", "model.pt": "model", "run.log": "log"}
    for f in sorted(out_dir.iterdir()):
        if not f.is_file():
            continue
        art = s.scalar(select(Artifact).where(Artifact.run_id == run_id, Artifact.name == f.name))
        if art is None:
            s.add(
                Artifact(
                    run_id=run_id,
                    name=f.name,
                    kind=kinds.get(f.name, "file"),
                    path=str(f),
                    size=f.stat().st_size,
                )
            )
        else:
            art.size = f.stat().st_size


@app.task(name=TRAIN_TASK, acks_late=True, reject_on_worker_lost=True)
def train_run(run_id: int) -> None:
    job_info = _claim(run_id)
    if job_info is None:
        return
    settings = get_settings()
    fence = Fence(run_id, job_info["attempt"])
    beat = Heartbeat(fence, settings.heartbeat_s, settings.job_time_limit_s)
    beat.start()
    run_dir = settings.runs_path / str(run_id)
    if job_info["first"]:
        _set_aside_foreign_files(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = _run_log(run_dir / "run.log")
    rec = DbRecorder(run_id, fence)
    try:
        status, fields = _attempt(job_info, fence, beat, rec, run_dir)
        rec.flush()
        if status == "queued":
            _hand_back(fence)
            return
        _finish(fence, status, run_dir, **fields)
    except crud.Superseded as e:  # a newer attempt owns the run: write nothing more
        log.warning("%s", e)
    finally:
        beat.done.set()
        logging.getLogger().removeHandler(handler)
        handler.close()


def _attempt(
    job_info: dict, fence: Fence, beat: Heartbeat, rec: DbRecorder, run_dir: Path
) -> tuple[str, dict]:
    """Train (or evaluate) once; the final status and fields. Superseded propagates."""
    run_id = job_info["id"]
    try:
        return _run_job(job_info, fence, beat, rec, run_dir)
    except HandedBack as e:
        log.info("run %s: %s (this worker is shutting down)", run_id, e)
        return "queued", {}
    except Stopped:
        if beat.superseded:
            raise crud.Superseded(f"run {run_id}: attempt {fence.attempt} was superseded") from None
        if beat.timed_out and not beat.cancel:
            limit = f"{beat.time_limit_s:.0f} s (GATLAB_JOB_TIME_LIMIT_S)"
            return "failed", {"error": f"TimeLimit: the job ran past its time limit of {limit}"}
        return "cancelled", {}
    except crud.Superseded:
        raise
    except Exception as e:  # any failure is recorded on the run
        log.exception("run %s failed", run_id)
        return "failed", {"error": f"{e.__class__.__name__}: {e}", "traceback": traceback.format_exc()}


def _run_job(
    job_info: dict, fence: Fence, beat: Heartbeat, rec: DbRecorder, run_dir: Path
) -> tuple[str, dict]:
    """The job itself: a panel on a parent run, or a training run resumed from its checkpoint."""
    settings, config, run_id = get_settings(), job_info["config"], job_info["id"]
    device = pick_device(config["train"].get("device", "auto"))
    with fence.write() as s:
        s.get(Run, run_id).device = str(device)
    _in_data_root(config, settings.data_path)
    if job_info["kind"] == "eval" and job_info["parent_id"] is None:  # a model from elsewhere
        return _evaluate_external(job_info, beat, rec, run_dir, device)
    if job_info["kind"] == "eval":
        parent = job_info["parent_id"]
        recorder = DbRecorder(parent, fence, job_id=run_id)
        result = job.evaluate_run(
            settings.runs_path / str(parent), config, recorder, device=device, out_dir=run_dir
        )
        return "succeeded", {"summary": {"panel": result["panel"], "parent": parent}}
    teacher = config.get("params", {}).get("teacher_run")
    if teacher is not None:  # the core knows directories, the lab knows run ids
        teacher_dir = str(settings.runs_path / str(teacher))
        config["params"] = {**config["params"], "teacher_run": None, "teacher_dir": teacher_dir}
    start = checkpoint_step(run_dir)
    if start:
        log.info("run %s resumes from its checkpoint at step %d", run_id, start)
    with fence.write() as s:
        crud.drop_points_after(s, run_id=run_id, step=start)
    summary, _ = job.run(  # the panel's result is stored as it is recorded
        config,
        run_dir,
        rec,
        should_stop=lambda: beat.stop,
        should_hand_back=SHUTTING_DOWN.is_set,
        device=device,
    )
    return "succeeded", {"summary": summary, "eta_s": 0.0}


def _evaluate_external(
    job_info: dict, beat: Heartbeat, rec: DbRecorder, run_dir: Path, device
) -> tuple[str, dict]:
    """The panel on an uploaded or data-root model, in a child process (a sandbox for TorchScript)."""
    settings, config = get_settings(), job_info["config"]
    upload = config["eval"].get("model_upload")
    model_file = uploads.upload_path(upload) if upload else Path(config["eval"]["model_path"])
    torchscript = uploads.is_torchscript(config["eval"])
    if torchscript and not job_info["torchscript_ok"]:
        raise PermissionError(
            f"this lab lets {settings.torchscript_policy} evaluate TorchScript models"
            " (GATLAB_TORCHSCRIPT); upload safetensors weights of a lab architecture instead"
        )
    result = job.evaluate_model(
        model_file,
        config,
        rec,
        device=device,
        out_dir=run_dir,
        isolate=torchscript and settings.sandbox == "bwrap",
        time_limit_s=beat.time_left(),
        memory_bytes=settings.eval_memory_mb << 20,
        should_stop=lambda: beat.stop,
        scratch=settings.runs_path.parent / "scratch",
    )
    return "succeeded", {"summary": {"panel": result["panel"], "model": model_file.name}}


def _hand_back(fence: Fence) -> None:
    """Back to the queue at once, for another worker (or this one, restarted) to resume: no retry spent."""
    with fence.write() as s:
        lifecycle.hand_back(s.get(Run, fence.run_id))
    _send([fence.run_id])
    log.info("run %s handed back to the queue", fence.run_id)


def _send(run_ids: list[int]) -> None:
    """Put runs on the broker and record it. Sending a run twice is harmless: a claim is idempotent."""
    for run_id in run_ids:
        app.send_task(TRAIN_TASK, args=[run_id])
        with session_scope() as s:
            crud.mark_enqueued(s, run_ids=[run_id])


def send_unsent(older_than_s: float = 30.0) -> int:
    """The sweeper: runs committed as queued but never put on the broker (the API died between its
    commit and its send, or the broker was down then) are sent now."""
    with session_scope() as s:
        ids = crud.unsent_runs(s, older_than_s=older_than_s)
    for run_id in ids:
        log.warning("run %s was queued but never sent to the broker; sending it", run_id)
    _send(ids)
    return len(ids)


def resend_lost() -> int:
    """The sweeper, again: runs queued long after they were sent, held by no worker, are sent again
    (each at most once per RESEND_AFTER_S: sending records the time)."""
    with session_scope() as s:
        ids = crud.lost_runs(s, older_than_s=get_settings().resend_after_s)
    for run_id in ids:
        log.warning("run %s has waited in the queue since it was sent, unclaimed; sending it again", run_id)
    _send(ids)
    return len(ids)


def requeue_stale() -> int:
    """Runs whose heartbeat stopped: requeue within the retry budget, else mark failed."""
    settings = get_settings()
    resend = []
    with session_scope() as s:
        for run in crud.stale_runs(s, older_than_s=settings.stale_after_s):
            if run.retry_count < settings.max_retries:
                lifecycle.requeue(run)
                resend.append(run.id)
            else:
                lifecycle.give_up(
                    run, f"worker lost (no heartbeat for {settings.stale_after_s:.0f} s), retries exhausted"
                )
    for run_id in resend:
        log.warning("run %s lost its worker; requeued", run_id)
    _send(resend)
    return len(resend)


def prune_uploads() -> int:
    """Uploaded models no run references, older than GATLAB_UPLOAD_KEEP_S, are removed."""
    with session_scope() as s:
        gone = uploads.prune(s, keep_s=get_settings().upload_keep_s)
    for name in gone:
        log.info("upload %s: no run uses it; removed", name)
    return len(gone)


def _reaper() -> None:
    period = max(1.0, get_settings().stale_after_s / 2)
    while True:
        try:
            requeue_stale()
            send_unsent()
            resend_lost()
            prune_uploads()
        except Exception:  # the reaper must outlive a database or broker hiccup
            log.exception("reaper failed")
        time.sleep(period)


def _alive(path: Path) -> None:
    """Touch this worker's liveness file for as long as the process lives (`gatlab health --worker`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            path.touch()
        except OSError:
            log.exception("cannot write the liveness file %s", path)
        time.sleep(ALIVE_EVERY_S)


# The consumer's own check: a broker stall during an ack (Redis paused while a run finished) left
# the worker alive, heartbeating, and never consuming again. While idle, the worker sends itself a
# ping through the broker on a queue of its own; one not consumed within PING_TIMEOUT_S means the
# consumer is stuck, and the process exits (non-zero) so that its supervisor restarts it (compose's
# `restart: unless-stopped`); its liveness file goes stale with it (`gatlab health --worker` fails).
PING_TASK, PING_EVERY_S, PING_TIMEOUT_S = "gatlab.ping", 5.0, 30.0
_consumer = {"busy": False, "pong": time.monotonic()}


def ping_queue(name: str) -> str:
    return f"{get_settings().queue}.ping.{name}.{socket.gethostname()}"


@app.task(name=PING_TASK, ignore_result=True)
def ping() -> None:
    _consumer["pong"] = time.monotonic()


@task_prerun.connect
def _busy(sender=None, **_) -> None:
    _consumer["busy"] = sender is not None and sender.name == TRAIN_TASK


@task_postrun.connect
def _idle(**_) -> None:
    _consumer["busy"], _consumer["pong"] = False, time.monotonic()


def _watch_consumer(queue: str, exit=os._exit) -> None:
    sent = None
    while True:
        time.sleep(PING_EVERY_S)
        if _consumer["busy"]:
            sent = None
            continue
        if sent is not None and _consumer["pong"] < sent:
            if time.monotonic() - sent > PING_TIMEOUT_S:
                log.critical(
                    "this worker has stopped consuming from the broker: its ping of %.0f s ago is still"
                    " queued; exiting so that it is restarted",
                    time.monotonic() - sent,
                )
                logging.shutdown()
                exit(75)
            continue
        try:
            app.send_task(PING_TASK, queue=queue, expires=PING_TIMEOUT_S)
            sent = time.monotonic()
        except Exception:  # a broker that is down: Celery reconnects; ping again later
            log.warning("could not ping this worker through the broker", exc_info=True)


@worker_ready.connect
def _start_background_threads(sender=None, **_) -> None:
    threading.Thread(target=_reaper, name="gatlab-reaper", daemon=True).start()
    name = sender.hostname.split("@")[0]  # `gatlab worker --name NAME` runs as NAME@host
    if get_settings().broker.startswith("redis"):
        threading.Thread(
            target=_watch_consumer, args=(ping_queue(name),), name="gatlab-ping", daemon=True
        ).start()
    alive = alive_file(get_settings(), name)
    threading.Thread(target=_alive, args=(alive,), name="gatlab-alive", daemon=True).start()
