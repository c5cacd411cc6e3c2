"""The README's one command: `gatlab up` on a bare directory, then `gatlab submit` to it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import yaml

from bench._common import free_port

from .conftest import tiny_config

EMBEDDED_ENV = {
    k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "BROKER_URL", "GATLAB_HOME")
}


def gatlab_up(cwd, port: int) -> tuple[subprocess.Popen, str]:
    """`gatlab up` in a bare directory, as a user starts it; returns the process and its first line
    once the API answers."""
    up = subprocess.Popen(
        [sys.executable, "-m", "labcore.cli", "up", "--port", str(port)],
        cwd=cwd,
        env=EMBEDDED_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    line = up.stdout.readline()
    deadline = time.monotonic() + 120  # a bound for a hang, not a speed test: a loaded machine is slow
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health").status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return up, line


def test_gatlab_up_runs_a_submitted_job_on_the_embedded_default(tmp_path):
    port = free_port()
    env = EMBEDDED_ENV
    up, line = gatlab_up(tmp_path, port)
    try:
        assert f"http://127.0.0.1:{port}" in line and "auth off" in line and "sqlite" in line, line
        base = f"http://127.0.0.1:{port}"
        cfg = tmp_path / "run.yaml"
        cfg.write_text(yaml.safe_dump(tiny_config(eval={"panel": "none"})))
        r = subprocess.run(
            [sys.executable, "-m", "labcore.cli", "submit", str(cfg), "--server", base],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert r.returncode == 0 and r.stdout.startswith("run 1 queued"), r.stdout + r.stderr
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            run = httpx.get(f"{base}/api/runs/1").json()
            if run["status"] in ("succeeded", "failed"):
                break
            time.sleep(0.3)
        assert run["status"] == "succeeded", run
        assert (tmp_path / ".gatlab" / "gatlab.db").exists() and (
            tmp_path / ".gatlab" / "runs" / "1" / "model.pt"
        ).exists()
        bad = tmp_path / "bad.yaml"
        bad.write_text(yaml.safe_dump(tiny_config(params={"lam": -1})))
        r = subprocess.run(
            [sys.executable, "-m", "labcore.cli", "submit", str(bad), "--server", base],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert r.returncode == 2 and "params.lam" in r.stderr
    finally:
        os.killpg(up.pid, signal.SIGTERM)
        try:
            up.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)


def test_gatlab_up_never_serves_a_public_address_without_auth(tmp_path):
    env = {**os.environ, "GATLAB_AUTH": "false"}
    r = subprocess.run(
        [sys.executable, "-m", "labcore.cli", "up", "--host", "0.0.0.0"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "refusing to serve 0.0.0.0 with GATLAB_AUTH=false" in r.stderr


def test_gatlab_up_stopped_with_sigterm_stops_its_worker(tmp_path):
    up, line = gatlab_up(tmp_path, free_port())
    try:
        worker_pid = int(line.split("worker pid ")[1].split(";")[0])
        up.send_signal(signal.SIGTERM)  # `kill PID`, a service manager's stop
        assert up.wait(timeout=60) == 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(worker_pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"worker {worker_pid} still running after `gatlab up` got SIGTERM")
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
