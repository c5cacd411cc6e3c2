"""Findings of the hardening review (issue 11), each against the real stack: ids never reused, a run
reads only files it wrote, panel results kept per job and written only by the owner, bounded
integers, literal text filters, sessions ended with a password change, rate-limited sign-in."""
from __future__ import annotations

import shutil
import time

import httpx
import pytest

from bench._common import Stack

from .conftest import tiny_config

FINAL = ("succeeded", "failed", "cancelled")


def test_a_deleted_runs_id_is_never_reused_and_its_files_go(stack):
    stack.start_worker()
    first = stack.http.post("/api/runs", json={"config": tiny_config(eval={"panel": "none"})}).json()["id"]
    stack.wait_for(first, lambda r: r["status"] in FINAL, what="finished")
    run_dir = stack.home / ".gatlab" / "runs" / str(first)
    assert (run_dir / "checkpoint.pt").exists()
    assert stack.http.delete(f"/api/runs/{first}").status_code == 204
    assert not run_dir.exists()
    second = stack.http.post("/api/runs", json={"config": tiny_config(eval={"panel": "none"})}).json()["id"]
    assert second > first  # SQLite's AUTOINCREMENT / PostgreSQL's sequence
    run = stack.wait_for(second, lambda r: r["status"] in FINAL, what="finished")
    assert run["status"] == "succeeded"


def test_a_new_run_never_reads_files_left_in_its_directory(stack, tmp_path):
    """A checkpoint planted where the next run will write (as a deleted run with the same id left
    one, before ids stopped being reused): the run starts from step 0 and the files are set aside."""
    stack.start_worker()
    donor = stack.http.post("/api/runs", json={"config": tiny_config(eval={"panel": "none"})}).json()["id"]
    stack.wait_for(donor, lambda r: r["status"] in FINAL, what="finished")
    runs = stack.home / ".gatlab" / "runs"
    shutil.copytree(runs / str(donor), tmp_path / "planted")
    for w in stack.workers:
        stack.kill_worker(w)
    stack.workers.clear()
    new = stack.http.post("/api/runs", json={"config": tiny_config(eval={"panel": "none"})}).json()["id"]
    shutil.copytree(tmp_path / "planted", runs / str(new))
    stack.start_worker()
    run = stack.wait_for(new, lambda r: r["status"] in FINAL, what="finished")
    assert run["status"] == "succeeded", run
    loss = stack.http.get(f"/api/runs/{new}/metrics", params={"keys": "train/loss", "max_points": 10_000}).json()
    assert loss["series"]["train/loss"]["step"][0] == 1  # trained from the start, not resumed
    assert any(p.name.startswith(f"{new}-") for p in (runs / ".set-aside").iterdir())
