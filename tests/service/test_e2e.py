"""End to end through a real worker process: submit, train, read back, cancel, crash and resume."""

from __future__ import annotations

import pytest

from .conftest import make_stack, tiny_config

FINAL = ("succeeded", "failed", "cancelled")


def test_run_succeeds_and_its_results_are_readable(stack):
    stack.start_worker()
    r = stack.http.post("/api/runs", json={"config": tiny_config(), "experiment": "e2e", "tags": ["smoke"]})
    assert r.status_code == 201, r.text
    run_id = r.json()["id"]
    assert r.json()["status"] == "queued"
    run = stack.wait_for(run_id, lambda r: r["status"] in FINAL, what="finished")
    assert run["status"] == "succeeded", run
    assert run["step"] == run["total_steps"] == 2 * 21  # 1797 digits -> 1294 train, batches of 64
    assert run["worker_host"] and run["device"] == "cpu" and run["started_at"] and run["finished_at"]

    series = stack.http.get(
        f"/api/runs/{run_id}/metrics", params={"keys": "train/loss,val/acc,train/aux_acc"}
    ).json()["series"]
    assert series["train/loss"]["step"] == list(range(1, 43))
    assert len(series["val/acc"]["step"]) == 2
    aux = series["train/aux_acc"]  # A's accuracy on each batch: per epoch 20 batches of 64, one of 14
    sizes = ([64] * 20 + [14]) * 2
    assert aux["step"] == list(range(1, 43)) and sum(aux["value"]) > 0
    odd = [
        (i + 1, v, n)
        for i, (v, n) in enumerate(zip(aux["value"], sizes, strict=True))
        if abs(v * n - round(v * n)) > 1e-4
    ]
    assert not odd, odd
    small = stack.http.get(
        f"/api/runs/{run_id}/metrics", params={"keys": "train/loss", "max_points": 10}
    ).json()["series"]["train/loss"]
    assert len(small["step"]) <= 10 and max(small["max"]) == max(
        series["train/loss"]["value"]
    )  # spikes survive
    after = stack.http.get(
        f"/api/runs/{run_id}/metrics", params={"keys": "train/loss", "after_step": 40}
    ).json()
    assert after["series"]["train/loss"]["step"] == [41, 42]

    ev = stack.http.get(f"/api/runs/{run_id}/eval").json()
    attacks = {row["attack"] for row in ev["rows"]}
    assert {"fgsm", "pgd", "autoattack", "square", "transfer", "fab", "apgd_t", "worst_case"} <= attacks
    assert len(ev["checks"]) == 10 and all(row["n"] == 20 for row in ev["rows"])
    for row in ev["rows"]:  # each accuracy is k of 20 examples, with the interval around it
        k = round(row["accuracy"] * 20)
        assert row["accuracy"] == k / 20 and row["ci"][0] <= k / 20 <= row["ci"][1]
    summary = ev["summary"]
    assert (
        summary["n"] == 20 and summary["probe"]["n_test"] == 359 and len(summary["min_norm"]["norms"]) == 20
    )
    gal = stack.http.get(f"/api/runs/{run_id}/gallery").json()
    assert len(gal["clean"]) == len(gal["adv"]) == 6 and gal["eps"] == 0.1
    hist = stack.http.get(f"/api/runs/{run_id}/histograms").json()
    assert hist["step"] and len(hist["counts"][0]) == len(hist["edges"]) - 1

    names = {a["name"] for a in stack.http.get(f"/api/runs/{run_id}/artifacts").json()}
    assert {"model.pt", "checkpoint.pt", "config.json", "run.log"} <= names
    log = stack.http.get(f"/api/runs/{run_id}/artifacts/run.log").text
    assert "epoch 2/2" in log and "panel quick on 20 examples" in log
    assert stack.http.get(f"/api/runs/{run_id}/artifacts/model.pt").content[:2] == b"PK"  # torch zip
    csv = stack.http.get("/api/export", params={"ids": str(run_id)}).text.splitlines()
    assert csv[0] == "run_id,key,step,value" and len(csv) > 42

    listed = stack.http.get(
        "/api/runs", params={"experiment": "e2e", "tag": "smoke", "status": "succeeded"}
    ).json()
    assert [i["id"] for i in listed["items"]] == [run_id]


def test_cancel_stops_a_running_run_and_frees_the_worker(stack):
    # On events, not time: the cancel lands while the run is running with >4000 steps to go; the run
    # ends cancelled long before its last step, its stored points stop where its progress stopped,
    # and the worker takes the next run. (A wall-clock bound on how soon failed under load.)
    cfg = tiny_config(train={"epochs": 200}, eval={"panel": "none"})
    run_id = stack.http.post("/api/runs", json={"config": cfg}).json()["id"]
    stack.start_worker()
    stack.wait_for(run_id, lambda r: r["status"] == "running" and r["step"] >= 5, what="started")
    assert stack.http.post(f"/api/runs/{run_id}/cancel").status_code == 200
    run = stack.wait_for(run_id, lambda r: r["status"] in FINAL, timeout=60, what="cancelled", poll=0.05)
    assert run["status"] == "cancelled" and 5 <= run["step"] < run["total_steps"] == 200 * 21, run
    loss = stack.http.get(
        f"/api/runs/{run_id}/metrics", params={"keys": "train/loss", "max_points": 10_000}
    ).json()["series"]["train/loss"]
    trained = len(loss["step"])  # progress is stored once a second, so it may trail the points
    assert loss["step"] == list(range(1, trained + 1)) and run["step"] <= trained < run["total_steps"]
    assert stack.http.post(f"/api/runs/{run_id}/cancel").status_code == 409
    nxt = stack.http.post("/api/runs", json={"config": tiny_config(eval={"panel": "none"})}).json()["id"]
    assert stack.wait_for(nxt, lambda r: r["status"] in FINAL, what="the next run")["status"] == "succeeded"


def test_kill_9_mid_run_resumes_from_checkpoint_without_losing_or_duplicating_points(stack):
    # Killed on an event (epoch 2's checkpoint written), with 28 epochs still to go: the run cannot
    # finish between the event and the kill, however fast the machine (6 epochs sometimes did).
    epochs = 30
    cfg = tiny_config(train={"epochs": epochs, "batch_size": 32}, eval={"panel": "none"})
    run_id = stack.http.post("/api/runs", json={"config": cfg}).json()["id"]
    w = stack.start_worker()
    total = epochs * 41
    stack.wait_for(run_id, lambda r: r["step"] >= 41 * 2 + 5, what="passed epoch 2")
    stack.kill_worker(w)
    killed_at = stack.http.get(f"/api/runs/{run_id}").json()
    assert killed_at["status"] == "running"
    stack.start_worker()
    run = stack.wait_for(run_id, lambda r: r["status"] in FINAL, what="finished after the crash")
    assert run["status"] == "succeeded" and run["retry_count"] == 1, run
    series = stack.http.get(
        f"/api/runs/{run_id}/metrics", params={"keys": "train/loss,epoch", "max_points": 10_000}
    ).json()["series"]
    assert series["train/loss"]["step"] == list(range(1, total + 1))  # none missing, none twice
    assert series["epoch"]["value"] == list(range(1, epochs + 1))
    log = (stack.home / "worker.log").read_text()
    assert f"run {run_id} resumes from its checkpoint at step" in log


def test_failing_run_stores_its_traceback(stack):
    stack.start_worker()
    cfg = tiny_config(dataset={"name": "npz", "path": "nonexistent/data.npz"})  # inside the data root
    run_id = stack.http.post("/api/runs", json={"config": cfg}).json()["id"]
    run = stack.wait_for(run_id, lambda r: r["status"] in FINAL, what="finished")
    assert run["status"] == "failed"
    assert "dataset.path: no such file" in run["error"]
    assert "Traceback" in run["traceback"] and "DataError" in run["traceback"]
    log = stack.http.get(f"/api/runs/{run_id}/artifacts/run.log").text
    assert "failed" in log and "DataError" in log  # the log of a failed run is kept too


def test_broker_down_at_submit_is_a_clear_error_and_leaves_no_queued_run(tmp_path, pg_database):
    s = make_stack(
        tmp_path, "lab", pg_database, REDIS_URL="redis://127.0.0.1:6399/0"
    )  # nothing listens there
    try:
        # No wall-clock bound: the client's own 30 s timeout fails the test if the API hangs.
        r = s.http.post("/api/runs", json={"config": tiny_config(), "experiment": "broker-down"})
        assert r.status_code == 503 and "broker" in r.json()["detail"]
        runs = s.http.get("/api/runs", params={"experiment": "broker-down"}).json()["items"]
        assert len(runs) == 1 and runs[0]["status"] == "failed" and "broker" in runs[0]["error"]
    finally:
        s.stop()


def test_distillation_from_a_teacher_run_of_the_lab(stack):
    stack.start_worker()
    teacher = stack.http.post("/api/runs", json={"config": tiny_config(eval={"panel": "none"})}).json()["id"]
    bad = stack.http.post(
        "/api/runs",
        json={
            "config": tiny_config(
                scenario="distill", method="student", params={"teacher_run": teacher}, eval={"panel": "none"}
            )
        },
    )
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["config", "params", "teacher_run"]
    stack.wait_for(teacher, lambda r: r["status"] == "succeeded", what="succeeded")
    cfg = tiny_config(
        scenario="distill",
        method="great+soft_targets",
        params={"teacher_run": teacher},
        dataset={"fraction": 0.2},
        eval={"panel": "none"},
    )
    run_id = stack.http.post("/api/runs", json={"config": cfg}).json()["id"]
    run = stack.wait_for(run_id, lambda r: r["status"] in FINAL, what="finished")
    assert run["status"] == "succeeded", run
    agreement = run["summary"]["test"]["agreement"]  # k of the 359 test digits, stored as a metric too
    assert abs(agreement * 359 - round(agreement * 359)) < 1e-6
    stored = stack.http.get(f"/api/runs/{run_id}/metrics", params={"keys": "test/agreement"}).json()
    assert stored["series"]["test/agreement"]["value"] == [pytest.approx(agreement)]
    game = run["summary"]["game"]  # the game's fresh probe, stored with the run and its test metrics
    assert game["played"] and game["of"].startswith("teacher vs student") and game["chance"] == 0.5
    assert run["summary"]["test"]["probe"] == game["accuracy"] and game["ci"][0] <= game["accuracy"]
    keys = stack.http.get(
        f"/api/runs/{run_id}/metrics", params={"keys": "train/st_cos,train/aux_acc"}
    ).json()["series"]
    every_step = list(range(1, run["total_steps"] + 1))  # one point per training step, the last included
    assert keys["train/st_cos"]["step"] == every_step and keys["train/aux_acc"]["step"] == every_step
    missing = stack.http.post("/api/runs", json={"config": {**cfg, "params": {"teacher_run": 99999}}})
    assert missing.status_code == 422 and "does not exist" in missing.json()["detail"][0]["msg"]
