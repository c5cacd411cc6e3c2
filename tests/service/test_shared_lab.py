"""Hardening v2 (issue 27): a shared lab where no user reaches another's files or results, exceeds
the quota, or stalls a worker. Each test names the finding it closes; all run against real
processes (API, workers) on both databases where the behaviour differs."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from bench._common import Stack

from .conftest import make_stack, tiny_config

FINAL = ("succeeded", "failed", "cancelled")


@pytest.fixture(params=["embedded", "lab"])
def shared(request, tmp_path, pg_database):
    """A lab with sign-in on, on SQLite (embedded broker) or PostgreSQL + Redis, and a small cap."""
    s = make_stack(tmp_path, request.param, pg_database, GATLAB_AUTH="true", GATLAB_MAX_QUEUED_PER_USER="12")
    yield s
    s.stop()


def member(lab: Stack, name: str) -> httpx.Client:
    """An ordinary (non-admin) user of the lab, signed in with a token."""
    token = lab.cli("users", "create", name).strip().splitlines()[-1]
    return httpx.Client(base_url=lab.base, headers={"Authorization": f"Bearer {token}"}, timeout=60)


def _queued(lab: Stack, who: str) -> int:
    items = lab.http.get("/api/runs", params={"status": "queued", "limit": 1000}).json()["items"]
    return sum(i["owner"] == who for i in items)


def test_the_queue_cap_holds_under_concurrent_submissions(shared):
    """Finding 2: count-then-insert without a lock let 54 of 200 concurrent runs in against a cap of
    50, and 30 concurrent studies queue 1,500. Here: 40 runs and 8 studies of 4 at once, cap 12."""
    mallory = member(shared, "mallory")
    with ThreadPoolExecutor(40) as pool:
        posts = [pool.submit(mallory.post, "/api/runs", json={"config": tiny_config()}) for _ in range(40)]
        codes = [p.result().status_code for p in posts]
    assert set(codes) <= {201, 429} and codes.count(201) == 12, codes
    assert _queued(shared, "mallory") == 12

    eve = member(shared, "eve")
    design = lambda i: {  # noqa: E731
        "name": f"race-{i}",
        "scenario": "defense",
        "dataset": {"name": "digits"},
        "model": {"arch": "cnn", "width": 4},
        "train": {"epochs": 1},
        "eval": {"panel": "none"},
        "methods": [{"method": "erm"}, {"method": "great"}],
        "seeds": [0, 1],
        "baseline": "erm",
    }
    with ThreadPoolExecutor(8) as pool:
        posts = [pool.submit(eve.post, "/api/studies", json=design(i)) for i in range(8)]
        answers = [p.result() for p in posts]
    accepted = [a for a in answers if a.status_code == 201]
    assert {a.status_code for a in answers} <= {201, 429} and len(accepted) == 3, [a.text for a in answers]
    assert _queued(shared, "eve") == 12
