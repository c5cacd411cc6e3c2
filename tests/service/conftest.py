"""Real services for the service tests: the API and worker run as processes, exactly as
`gatlab up` / docker compose start them, over Redis + PostgreSQL or the embedded SQLite broker."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import psycopg
import pytest
from sqlalchemy.engine import make_url

DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def pg_database():
    """A fresh PostgreSQL database on the server of DATABASE_URL, dropped afterwards."""
    url = make_url(DATABASE_URL)
    name = f"gatlab_t_{uuid.uuid4().hex[:8]}"
    admin = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    yield url.set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


class Stack:
    """One lab: migrations, an API process and worker processes sharing one environment."""

    def __init__(self, env: dict, home: Path):
        self.env, self.home = env, home
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.api: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.http = httpx.Client(base_url=self.base, timeout=30)

    def _spawn(self, *args, log: str) -> subprocess.Popen:
        out = open(self.home / log, "ab")
        return subprocess.Popen([sys.executable, *args], env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=self.home)

    def start(self) -> "Stack":
        subprocess.run([sys.executable, "-m", "worker.cli", "db", "upgrade"], env=self.env, check=True,
                       cwd=self.home, capture_output=True)
        self.api = self._spawn("-m", "uvicorn", "backend.main:app", "--host", "127.0.0.1", "--port",
                               str(self.port), log="api.log")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if self.http.get("/api/health").status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("API did not come up:\n" + (self.home / "api.log").read_text())

    def start_worker(self) -> subprocess.Popen:
        w = self._spawn("-m", "worker.cli", "worker", log="worker.log")
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

    def wait_for(self, run_id: int, pred, timeout: float = 240, what: str = "") -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.http.get(f"/api/runs/{run_id}").json()
            if pred(run):
                return run
            time.sleep(0.2)
        logs = "\n".join((self.home / f).read_text()[-3000:] for f in ("api.log", "worker.log") if (self.home / f).exists())
        raise AssertionError(f"run {run_id} never {what}: {run}\n{logs}")


def make_stack(tmp: Path, kind: str, pg_url: str | None = None, **extra) -> Stack:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "BROKER_URL")}
    env.update(GATLAB_HOME=str(tmp / ".gatlab"), HEARTBEAT_S="0.5", STALE_AFTER_S="6", PYTHONUNBUFFERED="1",
               QUEUE=f"gatlab-test-{uuid.uuid4().hex[:8]}", PYTHONPATH=str(Path(__file__).parents[2]))
    if kind == "lab":
        env.update(DATABASE_URL=pg_url, REDIS_URL=REDIS_URL)
    env.update(extra)
    return Stack(env, tmp).start()


@pytest.fixture(params=["embedded", "lab"])
def stack(request, tmp_path, pg_database):
    s = make_stack(tmp_path, request.param, pg_database)
    yield s
    s.stop()


def tiny_config(**over) -> dict:
    cfg = {"name": "tiny", "scenario": "defense", "method": "great",
           "dataset": {"name": "digits"}, "model": {"arch": "cnn", "width": 4},
           "train": {"epochs": 2, "batch_size": 64, "stats_every": 5}, "eval": {"panel": "quick", "n": 20}}
    for k, v in over.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
    return cfg
