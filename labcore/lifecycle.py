"""A run's status, and every change of it: the one module that writes `Run.status`.

    queued --start--> running --finish--> succeeded | failed | cancelled
      |  ^                |  \\--hand_back / requeue (worker gone, retries left)--> queued
      |  \\---------------+--- give_up (worker gone, no retries left) --> failed
      \\--cancel / refuse_unsent (broker down) --> cancelled | failed

The API (through labcore.services) and the worker (worker/tasks.py) both call these; a test of the
house style keeps every other module from assigning a status.
"""

from __future__ import annotations

from .models import Run, now

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
FINAL = (SUCCEEDED, FAILED, CANCELLED)
ACTIVE = (QUEUED, RUNNING, SUCCEEDED)  # a study's run in one of these is not queued again


def queued(run: Run) -> Run:
    """A new run, waiting for the broker to hand it to a worker."""
    run.status = QUEUED
    return run


def request_cancel(run: Run) -> None:
    """A queued run is cancelled at once; a running one is asked to stop (its worker reads the flag)."""
    if run.status == QUEUED:
        run.status, run.finished_at = CANCELLED, now()
    elif run.status == RUNNING:
        run.cancel_requested = True


def start(run: Run, host: str) -> None:
    """A worker claims the run (the caller holds its row lock)."""
    run.status, run.worker_host, run.heartbeat_at = RUNNING, host, now()
    run.started_at = run.started_at or now()
    run.attempt += 1


def cancelled_before_start(run: Run) -> None:
    run.status, run.finished_at = CANCELLED, now()


def finish(run: Run, status: str, **fields) -> None:
    """The final status of an attempt, with what it leaves (summary, error, ...)."""
    if status not in FINAL:
        raise ValueError(f"{status!r} is not a final status")
    run.status, run.finished_at, run.cancel_requested = status, now(), False
    for k, v in fields.items():
        setattr(run, k, v)


def hand_back(run: Run) -> None:
    """Back to the queue for another worker (a worker shutting down): no retry spent."""
    run.status, run.worker_host, run.heartbeat_at, run.enqueued_at = QUEUED, None, None, None


def requeue(run: Run) -> None:
    """The run's worker stopped beating: queued again, one retry spent."""
    run.status, run.retry_count, run.enqueued_at = QUEUED, run.retry_count + 1, None


def give_up(run: Run, error: str) -> None:
    """Failed without finishing: its worker was lost with no retries left, or it never reached the broker."""
    run.status, run.finished_at, run.error = FAILED, now(), error
