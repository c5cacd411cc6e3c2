"""Hardening v2 (issue 27): a shared lab where no user reaches another's files or results, exceeds
the quota, or stalls a worker. Each test names the finding it closes; all run against real
processes (API, workers) on both databases where the behaviour differs."""

from __future__ import annotations

import time
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
    design = lambda i: {
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


OCTET = {"content-type": "application/octet-stream"}


def _scripted(tmp_path, model) -> bytes:
    from tests.gat import payloads

    return payloads.save(model, tmp_path / "model.pt").read_bytes()


@pytest.fixture
def lab(tmp_path, pg_database):
    """PostgreSQL + Redis, sign-in on (TorchScript: admins only, the default), a small upload allowance."""
    s = make_stack(tmp_path, "lab", pg_database, GATLAB_MAX_UPLOAD_MB_PER_USER="1", GATLAB_UPLOAD_KEEP_S="2")
    yield s
    s.stop()


def test_torchscript_is_for_admins_by_default_and_runs_in_the_sandbox_where_cancel_works(lab, tmp_path):
    """Findings 1 and 5: an ordinary user's TorchScript is refused at upload and at evaluation; an
    admin's model that never returns is evaluated in the sandbox, and cancel stops it at once."""
    from tests.gat import payloads

    trudy = member(lab, "trudy")  # user names are per database, which the service tests share
    forever = _scripted(tmp_path, payloads.Forever())
    r = trudy.post("/api/models", content=forever, headers=OCTET)
    assert r.status_code == 403 and "GATLAB_TORCHSCRIPT" in r.json()["detail"][0]["msg"], r.text
    name = lab.http.post("/api/models", content=forever, headers=OCTET).json()["upload"]  # the admin's
    body = {"dataset": {"name": "digits"}, "eval": {"panel": "quick", "n": 20, "model_upload": name}}
    r = trudy.post("/api/evaluations", json=body)
    assert r.status_code == 403 and r.json()["detail"][0]["loc"] == ["body", "eval", "model_upload"], r.text

    lab.start_worker()
    run_id = lab.http.post("/api/evaluations", json=body).json()["id"]
    lab.wait_for(run_id, lambda r: r["status"] == "running", what="running")
    time.sleep(3)  # in the model's endless loop
    assert lab.http.post(f"/api/runs/{run_id}/cancel").status_code == 200
    run = lab.wait_for(run_id, lambda r: r["status"] in FINAL, timeout=20, what="cancelled")
    assert run["status"] == "cancelled", run
    # The worker is free again: the next job runs.
    nxt = lab.http.post(
        "/api/runs", json={"config": tiny_config(eval={"panel": "none"}, train={"epochs": 1})}
    )
    assert (
        lab.wait_for(nxt.json()["id"], lambda r: r["status"] in FINAL, what="finished")["status"]
        == "succeeded"
    )


def test_retrying_follows_the_owner_rules_and_works_for_an_uploaded_model(lab, tmp_path):
    """Finding 7: retrying another user's panel job was a way round the owner-or-admin rule.
    Finding 11: retrying an evaluation of an uploaded model was always a 422."""
    import torch
    from safetensors.torch import save_file

    alice, bob = member(lab, "alice"), member(lab, "bob")
    run_id = alice.post("/api/runs", json={"config": tiny_config(eval={"panel": "none"})}).json()["id"]
    lab.start_worker()
    lab.wait_for(run_id, lambda r: r["status"] == "succeeded", what="succeeded")
    job = alice.post(f"/api/runs/{run_id}/eval", json={"panel": "quick", "n": 10}).json()["id"]
    r = bob.post(f"/api/runs/{job}/retry")
    assert r.status_code == 403 and "belongs to another user" in r.json()["detail"], r.text
    assert alice.post(f"/api/runs/{job}/retry").status_code == 201

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, tmp_path / "m.safetensors")
    name = bob.post("/api/models", content=(tmp_path / "m.safetensors").read_bytes(), headers=OCTET).json()[
        "upload"
    ]
    body = {"dataset": {"name": "digits"}, "eval": {"panel": "quick", "n": 10, "model_upload": name}}
    ev = bob.post("/api/evaluations", json=body).json()["id"]
    again = bob.post(f"/api/runs/{ev}/retry")
    assert again.status_code == 201 and again.json()["config"]["eval"]["model_upload"] == name, again.text


def test_uploads_are_checked_whole_counted_per_user_and_removed_when_no_run_uses_them(lab):
    """Finding 8: the safetensors check read only the header; uploads had no quota or cleanup."""
    import numpy as np
    from safetensors.numpy import save

    carol = member(lab, "carol")
    junk = (2).to_bytes(8, "little") + b"{}" + bytes(range(256)) * 4  # the finding's fake
    r = carol.post("/api/models", content=junk, headers=OCTET)
    assert r.status_code == 422 and "safetensors" in r.json()["detail"][0]["msg"], r.text

    def weights(seed: int) -> bytes:  # ~400 KiB each
        return save({"w": np.random.default_rng(seed).random((100, 1000), dtype=np.float32)})

    first = carol.post("/api/models", content=weights(0), headers=OCTET)
    assert first.status_code == 201, first.text
    assert carol.post("/api/models", content=weights(1), headers=OCTET).status_code == 201
    over = carol.post("/api/models", content=weights(2), headers=OCTET)  # 1.2 MiB > 1 MiB
    assert over.status_code == 413 and "GATLAB_MAX_UPLOAD_MB_PER_USER" in over.json()["detail"], over.text
    kept = lab.home / ".gatlab" / "runs" / "uploads" / first.json()["upload"]
    assert kept.exists()
    time.sleep(2.5)  # past GATLAB_UPLOAD_KEEP_S: no run uses either upload
    assert carol.post("/api/models", content=weights(2), headers=OCTET).status_code == 201
    assert not kept.exists() and len(list(kept.parent.iterdir())) == 1


def test_a_full_disk_is_a_507_and_leaves_no_partial_upload(tmp_path, pg_database):
    """Finding 8: on a full disk an upload was a 500 and left a tmp*.part behind. The API runs under a
    file size limit of 256 KiB (the same refusal, EFBIG instead of ENOSPC)."""
    import numpy as np
    from safetensors.numpy import save

    s = make_stack(tmp_path, "lab", pg_database, GATLAB_API_PREFIX="prlimit --fsize=262144 --")
    try:
        body = save({"w": np.ones((100, 1000), dtype=np.float32)})  # 400 KiB
        r = s.http.post("/api/models", content=body, headers=OCTET)
        assert r.status_code == 507 and "nothing was kept" in r.json()["detail"], r.text
        assert list((s.home / ".gatlab" / "runs" / "uploads").iterdir()) == []
    finally:
        s.stop()


def test_another_users_run_named_into_a_study_never_enters_its_report(lab):
    """Finding 3: user B posting a run named `<A's study>/erm/seed=0` in A's experiment replaced A's
    baseline in A's report. Only the study owner's runs count; an admin's retry acts for the owner."""
    alice, bob = member(lab, "amy"), member(lab, "ben")
    design = {
        "name": "alices-study", "scenario": "defense", "dataset": {"name": "digits"},
        "model": {"arch": "cnn", "width": 4}, "train": {"epochs": 1}, "eval": {"panel": "none"},
        "methods": [{"method": "erm"}], "seeds": [0], "baseline": "erm",
    }  # fmt: skip
    study = alice.post("/api/studies", json=design).json()
    lab.start_worker()
    own = study["runs"][0]["id"]
    lab.wait_for(own, lambda r: r["status"] == "succeeded", what="succeeded")
    before = alice.get(f"/api/studies/{study['id']}/report", params={"format": "csv"}).text

    poison = tiny_config(name="alices-study/erm/seed=0", method="erm", eval={"panel": "none"})
    r = bob.post("/api/runs", json={"config": poison, "experiment": "alices-study"})
    assert r.status_code == 201
    view = alice.get(f"/api/studies/{study['id']}").json()
    assert [(x["id"], x["status"]) for x in view["runs"]] == [(own, "succeeded")]
    assert alice.get(f"/api/studies/{study['id']}/report", params={"format": "csv"}).text == before
    extended = lab.http.post(f"/api/studies/{study['id']}/extend", json={"seeds": [1]}).json()  # the admin
    added = [x["id"] for x in extended["runs"] if x["key"].endswith("seed=1")][0]
    assert added is not None and lab.http.get(f"/api/runs/{added}").json()["owner"] == "amy"


def test_wrong_passwords_from_elsewhere_never_lock_a_user_out(lab):
    """Finding 13: anyone could lock a user out of password sign-in for 15 minutes with 10 wrong
    passwords. The per-account limit now counts per account and address."""
    lab.cli("users", "create", "frank", "--password-stdin", stdin="frank-password\n")

    def login(password: str, source: str) -> int:
        transport = httpx.HTTPTransport(local_address=source)
        with httpx.Client(base_url=lab.base, transport=transport, timeout=30) as c:
            return c.post("/api/auth/login", json={"username": "frank", "password": password}).status_code

    assert [login("wrong", "127.0.0.2") for _ in range(11)][-2:] == [401, 429]  # the attacker is stopped
    assert login("frank-password", "127.0.0.2") == 429  # from there, the right password waits too
    assert login("frank-password", "127.0.0.3") == 200  # frank, on his own machine, signs in


def test_a_run_whose_message_was_lost_is_sent_again(tmp_path, empty_pg_database):
    """Finding 6: runs whose queue messages were lost (Redis restarted without persistence) stayed
    queued forever and counted against the cap. The queue is emptied under a queued run here."""
    import subprocess

    s = make_stack(tmp_path, "lab", empty_pg_database, RESEND_AFTER_S="4")  # its own: no other test's runs
    try:
        run_id = s.http.post(
            "/api/runs", json={"config": tiny_config(eval={"panel": "none"}, train={"epochs": 1})}
        ).json()["id"]
        cli = lambda *a: subprocess.run(
            ["redis-cli", "-u", s.env["REDIS_URL"], *a], capture_output=True, text=True, check=True
        ).stdout.strip()
        assert cli("LLEN", s.env["QUEUE"]) == "1"
        cli("DEL", s.env["QUEUE"])  # the message is gone, the run is still queued
        s.start_worker()
        run = s.wait_for(run_id, lambda x: x["status"] in FINAL, timeout=120, what="sent again and finished")
        assert run["status"] == "succeeded", run
        assert (
            f"run {run_id} has waited in the queue since it was sent" in (s.home / "worker.log").read_text()
        )
    finally:
        s.stop()


def test_a_worker_stuck_after_a_broker_stall_exits_to_be_restarted(tmp_path, empty_pg_database):
    """Finding 4: Redis paused 14 s while a run finished ("Couldn't ack … TimeoutError") left the
    worker healthy-looking and never consuming again. Its own ping through the broker now finds it
    stuck: it exits non-zero (compose restarts it) and a restarted worker takes the next run."""
    import os
    import signal
    import subprocess

    from bench._common import free_port

    port = free_port()
    redis = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no", "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        s = Stack.create(
            tmp_path, empty_pg_database, f"redis://127.0.0.1:{port}/0", HEARTBEAT_S="0.5", STALE_AFTER_S="6"
        )
        try:
            w = s.start_worker()
            cfg = tiny_config(eval={"panel": "none"}, train={"epochs": 3})
            first = s.http.post("/api/runs", json={"config": cfg}).json()["id"]
            s.wait_for(first, lambda r: r["status"] == "running" and r["step"] >= 40, what="near its end")
            os.kill(redis.pid, signal.SIGSTOP)  # the broker stalls while the run finishes and acks
            try:  # however slow the machine, the ack falls inside the stall: the run ends first
                s.wait_for(first, lambda r: r["status"] in FINAL, what="finished during the stall")
                time.sleep(14)
            finally:
                os.kill(redis.pid, signal.SIGCONT)
            second = s.http.post("/api/runs", json={"config": cfg}).json()["id"]
            assert w.wait(timeout=120) == 75
            assert "this worker has stopped consuming from the broker" in (s.home / "worker.log").read_text()
            s.start_worker()  # what compose's restart policy does
            assert (
                s.wait_for(second, lambda r: r["status"] in FINAL, what="finished")["status"] == "succeeded"
            )
        finally:
            s.stop()
    finally:
        redis.kill()
        redis.wait()
