"""Helpers for the service benchmarks: fresh SQLite and PostgreSQL databases at head."""
from __future__ import annotations

import os
import tempfile
import uuid
from contextlib import contextmanager
from typing import Iterator

import psycopg
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from backend.db import make_engine
from backend.migrate import upgrade

PG = os.environ.get("DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@contextmanager
def database(kind: str) -> Iterator[Session]:
    """A session on an empty, migrated database: a temp SQLite file or a temp PostgreSQL database."""
    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as d:
            url = f"sqlite:///{d}/bench.db"
            upgrade(url)
            engine = make_engine(url)
            with Session(engine) as s:
                yield s
            engine.dispose()
        return
    base = make_url(PG)
    name = f"gatlab_bench_{uuid.uuid4().hex[:8]}"
    admin = base.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    url = base.set(database=name).render_as_string(hide_password=False)
    try:
        upgrade(url)
        engine = make_engine(url)
        with Session(engine) as s:
            yield s
        engine.dispose()
    finally:
        with psycopg.connect(admin, autocommit=True) as c:
            c.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
