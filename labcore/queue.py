"""The Celery app both tiers share: configuration, and enqueue by task name only (the API never
imports the worker or torch)."""

from __future__ import annotations

import time
from functools import lru_cache
from pathlib import Path

from celery import Celery

from .config import Settings, get_settings

TRAIN_TASK = "gatlab.train_run"
BROKER_TIMEOUT_S = 3.0
DOWN_FOR_S = 10.0  # after a failed send, answer at once for this long instead of waiting on the broker again
ALIVE_EVERY_S = 10.0  # a worker touches its liveness file this often, busy or idle
ALIVE_STALE_S = 3 * ALIVE_EVERY_S  # `gatlab health --worker` calls a file older than this dead


class BrokerUnavailable(RuntimeError):
    pass


def make_celery(settings: Settings) -> Celery:
    app = Celery("gatlab", broker=settings.broker)
    app.conf.update(
        task_acks_late=True,  # a task is acknowledged when it ends, so a lost worker's task is redelivered
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,  # the database is the source of truth, not a result backend
        task_default_queue=settings.queue,
        # The SQLAlchemy transport hands its options to create_engine, so only Redis gets them.
        # Every Redis call is bounded: a broker that accepts and never answers must not hang a request.
        broker_transport_options=(
            {
                "visibility_timeout": settings.visibility_timeout_s,
                "socket_timeout": BROKER_TIMEOUT_S,
                "socket_connect_timeout": BROKER_TIMEOUT_S,
            }
            if settings.broker.startswith("redis")
            else {}
        ),
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=3,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


def alive_file(settings: Settings, name: str) -> Path:
    """The liveness file of the worker started as `gatlab worker --name NAME` with these settings.
    A thread of the worker process touches it every ALIVE_EVERY_S, also while a run trains: the solo
    pool cannot answer a Celery ping then, so a ping would call every busy worker dead."""
    return settings.home.resolve() / "workers" / f"{name}.alive"


def worker_alive(settings: Settings, name: str) -> bool:
    try:
        return time.time() - alive_file(settings, name).stat().st_mtime < ALIVE_STALE_S
    except FileNotFoundError:
        return False


@lru_cache
def celery() -> Celery:
    return make_celery(get_settings())


_down = {"until": 0.0, "why": ""}


def enqueue(run_id: int) -> None:
    """Publish the run; fail fast with BrokerUnavailable rather than hang. Within DOWN_FOR_S of a
    failure it fails at once, so many requests cannot all wait on a dead broker and fill the
    server's thread pool."""
    if time.monotonic() < _down["until"]:
        raise BrokerUnavailable(_down["why"])
    try:
        celery().send_task(TRAIN_TASK, args=[run_id], retry=False)
    except Exception as e:  # kombu raises many connection error types
        _down.update(
            until=time.monotonic() + DOWN_FOR_S,
            why=f"the job queue (broker) is unavailable: {e.__class__.__name__}: {e}",
        )
        raise BrokerUnavailable(_down["why"]) from e
