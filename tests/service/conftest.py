"""Real services for the service tests: the API and worker run as processes, exactly as
`gatlab up` / docker compose start them, over Redis + PostgreSQL or the embedded SQLite broker."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from bench._common import Stack

DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def _new_pg_database():
    """A fresh PostgreSQL database on the server of DATABASE_URL, dropped afterwards."""
    url = make_url(DATABASE_URL)
    name = f"gatlab_t_{uuid.uuid4().hex[:8]}"
    admin = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    yield url.set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


pg_database = pytest.fixture(scope="session")(_new_pg_database)  # shared by the service tests
empty_pg_database = pytest.fixture(_new_pg_database)  # one test's own: e.g. no admin yet


def make_stack(tmp: Path, kind: str, pg_url: str | None = None, **extra) -> Stack:
    return Stack.create(
        tmp,
        pg_url if kind == "lab" else None,
        REDIS_URL if kind == "lab" else None,
        HEARTBEAT_S="0.5",
        STALE_AFTER_S="6",
        **extra,
    )


@pytest.fixture(params=["embedded", "lab"])
def stack(request, tmp_path, pg_database):
    s = make_stack(tmp_path, request.param, pg_database)
    yield s
    s.stop()


def tiny_config(**over) -> dict:
    cfg = {
        "name": "tiny",
        "scenario": "defense",
        "method": "great",
        "dataset": {"name": "digits"},
        "model": {"arch": "cnn", "width": 4},
        "train": {"epochs": 2, "batch_size": 64, "stats_every": 5},
        "eval": {"panel": "quick", "n": 20},
    }
    for k, v in over.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
    if cfg["scenario"] == "distill":
        cfg["params"] = {"teacher_width": 4, "teacher_epochs": 1, **cfg.get("params", {})}
    return cfg
