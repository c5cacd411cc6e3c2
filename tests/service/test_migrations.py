"""Migrations: they build exactly the tables the models describe (SQLite and PostgreSQL), and the
SQLite table rebuild of 0004 keeps every run's metrics."""

from __future__ import annotations

import sqlite3

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from labcore.db import Base
from labcore.migrate import alembic_config, upgrade


def drift(url: str) -> list:
    engine = create_engine(url)
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    return diffs


def test_migrations_match_the_models_on_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path}/g.db"
    upgrade(url)
    assert drift(url) == []
    ddl = (
        sqlite3.connect(tmp_path / "g.db")
        .execute("select sql from sqlite_master where name = 'runs'")
        .fetchone()[0]
    )
    assert "AUTOINCREMENT" in ddl


def test_migrations_match_the_models_on_postgresql(empty_pg_database):
    upgrade(empty_pg_database)
    assert drift(empty_pg_database) == []


def test_the_0004_rebuild_keeps_metrics_and_never_reuses_a_deleted_id(tmp_path):
    url = f"sqlite:///{tmp_path}/g.db"
    command.upgrade(alembic_config(url), "0003")
    db = sqlite3.connect(tmp_path / "g.db")
    for i in (1, 2):
        db.execute(
            "insert into runs (id, name, kind, scenario, method, dataset, config, tags, notes, status, "
            "cancel_requested, step, created_at, retry_count) values (?, 'r', 'train', 'defense', 'erm', "
            "'digits', '{}', '[]', '', 'succeeded', 0, 0, '2026-01-01', 0)",
            (i,),
        )
        db.execute(
            "insert into metrics (run_id, key, step, value, wall_time) values (?, 'loss', 1, 0.5, 0)", (i,)
        )
    db.commit()
    db.close()
    upgrade(url)
    db = sqlite3.connect(tmp_path / "g.db")
    assert db.execute("select count(*) from metrics").fetchone()[0] == 2  # the rebuild cascaded into nothing
    db.execute("pragma foreign_keys = on")
    db.execute("delete from runs where id = 2")
    db.execute(
        "insert into runs (name, kind, scenario, method, dataset, config, tags, notes, status, "
        "cancel_requested, step, created_at, retry_count) values ('new', 'train', 'defense', 'erm', "
        "'digits', '{}', '[]', '', 'queued', 0, 0, '2026-01-01', 0)"
    )
    assert db.execute("select id from runs where name = 'new'").fetchone()[0] == 3
