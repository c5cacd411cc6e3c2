"""Shared by the service benchmarks and tests: fresh databases at head, and a lab stack of real
processes (migrations, API, workers) started as `gatlab up` and docker compose start them."""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psycopg
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from labcore.db import make_engine
from labcore.migrate import upgrade
from labcore.stats import t_quantile_975

PG = os.environ.get("DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def interleaved_step_cost(runs: dict, x, y, rounds: int = 7) -> dict[str, float]:
    """Median seconds per training step of each (model, method, opt, aux_opt) in `runs`, stepped in
    turn on the same batch, so load on the machine hits every method alike."""
    from worker.gat.train import train_step  # here: the query and ingest benchmarks need no torch

    def one(method, opt, aux_opt, i):
        t = time.perf_counter()
        train_step(method, opt, aux_opt, x, y, 0.5, i)
        return time.perf_counter() - t

    for _, method, opt, aux_opt in runs.values():  # warm-up
        one(method, opt, aux_opt, 0)
    times: dict[str, list] = {name: [] for name in runs}
    for r in range(rounds):
        for name, (_, method, opt, aux_opt) in runs.items():
            times[name].append(one(method, opt, aux_opt, r))
    return {name: statistics.median(t) for name, t in times.items()}


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    """One lab: migrations, an API process and worker processes sharing one environment."""

    @classmethod
    def create(cls, home: Path, database_url: str | None, redis_url: str | None, **extra: str) -> Stack:
        """Embedded (SQLite + SQLAlchemy broker) when both URLs are None; a fresh queue name each time."""
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "BROKER_URL")}
        env.update(
            GATLAB_HOME=str(home / ".gatlab"),
            PYTHONUNBUFFERED="1",
            QUEUE=f"gatlab-test-{uuid.uuid4().hex[:8]}",
            PYTHONPATH=str(Path(__file__).parents[1]),
        )
        if database_url:
            env["DATABASE_URL"] = database_url
        if redis_url:
            env["REDIS_URL"] = redis_url
        # The embedded stack is `gatlab up` on 127.0.0.1 (auth off); a lab stack has auth on, as the
        # compose file runs it, and its client signs in as the first admin.
        env["GATLAB_AUTH"] = "false" if database_url is None else "true"
        env.update(extra)
        return cls(env, home).start()

    def __init__(self, env: dict, home: Path):
        self.env, self.home = env, home
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.api: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.http = httpx.Client(base_url=self.base, timeout=30)
        self.token: str | None = None

    def _spawn(self, *args, log: str, prefix: tuple[str, ...] = ()) -> subprocess.Popen:
        out = open(self.home / log, "ab")
        return subprocess.Popen(
            [*prefix, sys.executable, *args],
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=self.home,
        )

    def start(self) -> Stack:
        subprocess.run(
            [sys.executable, "-m", "labcore.cli", "db", "upgrade"],
            env=self.env,
            check=True,
            cwd=self.home,
            capture_output=True,
        )
        if self.env["GATLAB_AUTH"] == "true":
            # A fresh admin per stack: tests may share one database.
            self.token = (
                self.cli("users", "create", f"admin-{uuid.uuid4().hex[:6]}", "--admin")
                .strip()
                .splitlines()[-1]
            )
            self.http.headers["Authorization"] = f"Bearer {self.token}"
        self.api = self._spawn(
            "-m",
            "uvicorn",
            "backend.main:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            log="api.log",
            prefix=tuple(self.env.get("GATLAB_API_PREFIX", "").split()),  # e.g. a resource limit
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if self.http.get("/api/health").status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("API did not come up:\n" + (self.home / "api.log").read_text())

    def cli(self, *args: str, stdin: str | None = None) -> str:
        """`gatlab ARGS` in this lab's environment; its stdout."""
        return subprocess.run(
            [sys.executable, "-m", "labcore.cli", *args],
            env=self.env,
            check=True,
            cwd=self.home,
            capture_output=True,
            text=True,
            input=stdin,
        ).stdout

    def start_worker(self) -> subprocess.Popen:
        w = self._spawn("-m", "labcore.cli", "worker", log="worker.log")
        self.workers.append(w)
        return w

    def kill_worker(self, w: subprocess.Popen) -> None:
        os.killpg(w.pid, signal.SIGKILL)
        w.wait()

    def stop(self) -> None:
        for p in [*self.workers, self.api]:
            if p and p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self.http.close()

    def wait_for(self, run_id: int, pred, timeout: float = 240, what: str = "", poll: float = 0.2) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.http.get(f"/api/runs/{run_id}").json()
            if pred(run):
                return run
            time.sleep(poll)
        logs = "\n".join(
            (self.home / f).read_text()[-3000:] for f in ("api.log", "worker.log") if (self.home / f).exists()
        )
        raise AssertionError(f"run {run_id} never {what}: {run}\n{logs}")


def spread(values: list[float], scale: float = 1.0, digits: int = 1, sign: str = "", ci: bool = False) -> str:
    """'mean ± std' over seeds (with `ci`, then the mean's 95 % t interval in brackets); with one
    seed the mean alone, marked, never a made-up ± 0."""
    mean = scale * statistics.mean(values)
    if len(values) < 2:
        return f"{mean:{sign}.{digits}f} (1 seed)"
    sd = scale * statistics.stdev(values)
    text = f"{mean:{sign}.{digits}f} ± {sd:.{digits}f}"
    if ci:
        half = t_quantile_975(len(values) - 1) * sd / len(values) ** 0.5
        text += f" [{mean - half:.{digits}f}, {mean + half:.{digits}f}]"
    return text
