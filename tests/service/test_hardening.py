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


@pytest.fixture
def lab(tmp_path, empty_pg_database):
    s = Stack.create(tmp_path, empty_pg_database, None, GATLAB_AUTH="true", HEARTBEAT_S="0.5", STALE_AFTER_S="6")
    yield s
    s.stop()


def user(lab: Stack, name: str) -> httpx.Client:
    token = lab.cli("users", "create", name).strip().splitlines()[-1]
    return httpx.Client(base_url=lab.base, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def test_panels_are_kept_per_job_and_only_the_owner_may_queue_one(lab):
    alice, bob = user(lab, "alice"), user(lab, "bob")
    lab.start_worker()
    run_id = alice.post("/api/runs", json={"config": tiny_config(eval={"panel": "quick", "n": 20})}).json()["id"]
    lab.wait_for(run_id, lambda r: r["status"] in FINAL, what="finished")
    own = alice.get(f"/api/runs/{run_id}/eval").json()
    assert own["job_id"] == run_id and {r["n"] for r in own["rows"]} == {20}
    gallery = alice.get(f"/api/runs/{run_id}/gallery").text

    r = bob.post(f"/api/runs/{run_id}/eval", json={"panel": "quick", "n": 1})
    assert r.status_code == 403 and "belongs to another user" in r.json()["detail"]
    job = alice.post(f"/api/runs/{run_id}/eval", json={"panel": "quick", "n": 10}).json()["id"]
    lab.wait_for(job, lambda r: r["status"] in FINAL, what="panel job finished")

    latest = alice.get(f"/api/runs/{run_id}/eval").json()
    assert latest["job_id"] == job and {r["n"] for r in latest["rows"]} == {10} and len(latest["checks"]) == 7
    assert [(p["job_id"], p["n"]) for p in latest["panels"]] == [(run_id, 20), (job, 10)]
    again = alice.get(f"/api/runs/{run_id}/eval", params={"job": run_id}).json()  # the first panel is still there
    assert again["rows"] == own["rows"] and again["checks"] == own["checks"]
    assert alice.get(f"/api/runs/{run_id}/gallery", params={"job": run_id}).text == gallery  # not rewritten
    assert alice.get(f"/api/runs/{run_id}/gallery").status_code == 200
    assert alice.get(f"/api/runs/{run_id}/eval", params={"job": 999_999}).status_code == 404
