"""Users, tokens and the limits of a shared server, against a lab stack (API process with auth on,
as the compose file runs it, over PostgreSQL and Redis). No worker: runs stay queued."""

from __future__ import annotations

import re
import uuid

import httpx
import psycopg
import pytest
from sqlalchemy.engine import make_url

from .conftest import make_stack, tiny_config

WRITE = ("post", "put", "patch", "delete")
PUBLIC = {("get", "/api/health"), ("get", "/api/auth/me")}


@pytest.fixture(scope="module")
def lab(tmp_path_factory, pg_database):
    s = make_stack(
        tmp_path_factory.mktemp("auth"),
        "lab",
        pg_database,
        GATLAB_MAX_QUEUED_PER_USER="3",
        GATLAB_MAX_EPOCHS="50",
        GATLAB_MAX_BATCH_SIZE="256",
        GATLAB_MAX_REQUEST_BYTES="20000",
    )
    s.seen: list[str] = []  # every response body of these tests: no token may appear in one
    s.http.event_hooks["response"] = [lambda r: (r.read(), s.seen.append(r.text))]
    yield s
    s.stop()


def user(lab, admin: bool = False) -> tuple[str, httpx.Client]:
    """A new user from `gatlab users create`, and a client signed in with the token it printed once."""
    name = f"u{uuid.uuid4().hex[:8]}"
    out = lab.cli("users", "create", name, *(["--admin"] if admin else []))
    token = out.strip().splitlines()[-1]
    assert re.fullmatch(r"gat_[\w-]{40,}", token), out
    client = httpx.Client(
        base_url=lab.base,
        timeout=30,
        headers={"Authorization": f"Bearer {token}"},
        event_hooks=lab.http.event_hooks,
    )
    client.token = token
    return name, client


def routes(lab) -> list[tuple[str, str]]:
    spec = lab.http.get("/openapi.json").json()
    return [(m, path) for path, item in spec["paths"].items() for m in item if m in ("get", *WRITE)]


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", lambda m: "x" if m.group(0) == "{name}" else "1", path)


def test_every_write_endpoint_needs_a_token_and_every_read_but_health_too(lab):
    anon = httpx.Client(base_url=lab.base, timeout=30)
    found = routes(lab)
    writes = [(m, p) for m, p in found if m in WRITE]
    assert len(writes) >= 10 and ("post", "/api/runs") in writes  # the enumeration sees the API
    for method, path in found:
        if (method, path) in PUBLIC:
            continue
        r = anon.request(
            method.upper(), concrete(path), json={} if method in ("post", "put", "patch") else None
        )
        assert r.status_code == 401, (method, path, r.status_code, r.text)
        assert r.headers.get("www-authenticate") == "Bearer", (method, path)
    bad = httpx.Client(base_url=lab.base, timeout=30, headers={"Authorization": "Bearer gat_not-a-token"})
    assert bad.post("/api/runs", json={"config": tiny_config()}).status_code == 401
    assert anon.get("/api/auth/me").json() == {"auth": True, "user": None}
    assert anon.get("/api/health").json()["auth"] is True


def test_runs_record_their_owner_others_read_but_only_owner_or_admin_change(lab):
    alice, a = user(lab)
    bob, b = user(lab)
    _, admin = user(lab, admin=True)
    run = a.post("/api/runs", json={"config": tiny_config()}).json()
    assert run["owner"] == alice and run["status"] == "queued"
    assert b.get(f"/api/runs/{run['id']}").json()["owner"] == alice  # read access for signed-in users
    assert any(r["id"] == run["id"] for r in b.get("/api/runs").json()["items"])
    for method, path, body in [
        ("POST", "cancel", None),
        ("DELETE", "", None),
        ("PATCH", "", {"name": "mine now"}),
    ]:
        r = b.request(method, f"/api/runs/{run['id']}/{path}".rstrip("/"), json=body)
        assert r.status_code == 403 and "another user" in r.json()["detail"], (method, path, r.text)
    assert a.patch(f"/api/runs/{run['id']}", json={"notes": "owner may"}).status_code == 200
    retried = b.post(f"/api/runs/{run['id']}/retry").json()  # a retry is a new run, owned by who asked
    assert retried["owner"] == bob
    assert admin.post(f"/api/runs/{run['id']}/cancel").json()["status"] == "cancelled"  # admin may
    assert b.delete(f"/api/runs/{retried['id']}").status_code == 204
    assert a.get(f"/api/runs/{run['id']}").json()["status"] == "cancelled"


def test_revoked_tokens_stop_working_from_the_cli_and_the_api(lab):
    name, c = user(lab)
    assert c.get("/api/auth/me").json()["user"]["name"] == name
    listed = lab.cli("users", "tokens", name)
    token_id = listed.split()[0]
    assert c.token not in listed and c.token[:12] in listed  # listings show a prefix, never the secret
    lab.cli("users", "revoke", token_id)
    assert c.get("/api/runs").status_code == 401
    assert c.post("/api/runs", json={"config": tiny_config()}).status_code == 401

    name2, d = user(lab)
    made = d.post("/api/tokens", json={"label": "laptop"}).json()  # a second token, shown once
    second = httpx.Client(base_url=lab.base, timeout=30, headers={"Authorization": f"Bearer {made['token']}"})
    assert second.get("/api/auth/me").json()["user"]["name"] == name2
    tokens = d.get("/api/tokens").json()
    assert {t["label"] for t in tokens} == {"", "laptop"} and all("token" not in t for t in tokens)
    _, other = user(lab)
    assert other.delete(f"/api/tokens/{made['id']}").status_code == 404  # not theirs to revoke
    assert d.delete(f"/api/tokens/{made['id']}").status_code == 204
    assert second.get("/api/auth/me").status_code == 401
    assert d.get("/api/auth/me").status_code == 200  # the first token still works


def test_browser_session_cookie_is_httponly_samesite_and_ends_with_its_token(lab):
    name, c = user(lab)
    browser = httpx.Client(base_url=lab.base, timeout=30)
    assert browser.post("/api/auth/login", json={"token": "gat_wrong"}).status_code == 401
    assert browser.post("/api/auth/login", json={}).status_code == 401
    r = browser.post("/api/auth/login", json={"token": c.token})
    assert r.status_code == 200 and r.json()["user"]["name"] == name
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and c.token.lower() not in cookie
    assert browser.post("/api/runs", json={"config": tiny_config()}).status_code == 201  # the cookie signs in
    token_id = lab.cli("users", "tokens", name).split()[0]
    lab.cli("users", "revoke", token_id)
    assert browser.get("/api/runs").status_code == 401  # revoking the token ends its sessions
    lab.cli("users", "password", name, stdin="correct horse battery\n")
    pw = httpx.Client(base_url=lab.base, timeout=30)
    assert (
        pw.post("/api/auth/login", json={"username": name, "password": "wrong password"}).status_code == 401
    )
    assert (
        pw.post("/api/auth/login", json={"username": name, "password": "correct horse battery"}).status_code
        == 200
    )
    assert pw.get("/api/auth/me").json()["user"]["name"] == name
    assert pw.post("/api/auth/logout").status_code == 204
    assert pw.get("/api/runs").status_code == 401


@pytest.mark.parametrize(
    "dataset,field",
    [
        ({"name": "npz", "path": "/etc/passwd"}, "path"),
        ({"name": "npz", "path": "../../outside.npz"}, "path"),
        ({"name": "npz", "path": "sub/../../x.npz"}, "path"),
        ({"name": "mnist", "data_dir": "/tmp"}, "data_dir"),
    ],
)
def test_dataset_paths_outside_the_data_root_are_refused(lab, dataset, field):
    _, c = user(lab)
    r = c.post("/api/runs", json={"config": tiny_config(dataset=dataset)})
    assert r.status_code == 422, r.text
    assert ["config", "dataset", field] in [d["loc"] for d in r.json()["detail"]]


def test_paths_inside_the_data_root_and_teacher_dirs_outside_it(lab):
    _, c = user(lab)
    inside = c.post(
        "/api/runs", json={"config": tiny_config(dataset={"name": "npz", "path": "sets/mine.npz"})}
    )
    assert inside.status_code == 201, inside.text
    cfg = tiny_config(scenario="distill", method="student", params={"teacher_dir": "/"})
    r = c.post("/api/runs", json={"config": cfg})
    assert r.status_code == 422 and ["config", "params", "teacher_dir"] in [
        d["loc"] for d in r.json()["detail"]
    ]


def test_server_limits_epochs_batch_size_queue_and_request_size(lab):
    _, c = user(lab)
    r = c.post("/api/runs", json={"config": tiny_config(train={"epochs": 51})})
    assert r.status_code == 422 and ["config", "train", "epochs"] in [d["loc"] for d in r.json()["detail"]]
    assert "GATLAB_MAX_EPOCHS" in r.text
    r = c.post("/api/runs", json={"config": tiny_config(train={"batch_size": 512})})
    assert r.status_code == 422 and ["config", "train", "batch_size"] in [
        d["loc"] for d in r.json()["detail"]
    ]
    sweep = {
        "config": tiny_config(),
        "grid": {"params.lam": [0.1, 0.2]},
        "seeds": [0, 1],
        "experiment": "cap",
    }
    r = c.post("/api/sweeps", json=sweep)  # 4 runs > the cap of 3 queued
    assert r.status_code == 429 and "cap of 3" in r.json()["detail"]
    for _ in range(3):
        assert c.post("/api/runs", json={"config": tiny_config()}).status_code == 201
    assert c.post("/api/runs", json={"config": tiny_config()}).status_code == 429
    _, other = user(lab)  # the cap is per user
    assert other.post("/api/runs", json={"config": tiny_config()}).status_code == 201
    big = c.post("/api/runs", json={"config": {**tiny_config(), "notes": "x" * 30000}})
    assert big.status_code == 413 and "GATLAB_MAX_REQUEST_BYTES" in big.text
    streamed = c.post(
        "/api/runs",
        content=iter([b"{" + b" " * 15000, b" " * 15000 + b"}"]),
        headers={"content-type": "application/json"},
    )  # chunked: no Content-Length
    assert streamed.status_code == 413


def test_tokens_never_appear_in_logs_responses_or_the_database(lab, pg_database):
    name, c = user(lab)
    c.post("/api/runs", json={"config": tiny_config()})
    c.get("/api/runs")
    c.get("/api/auth/me")
    httpx.post(f"{lab.base}/api/auth/login", json={"token": c.token})
    made = c.post("/api/tokens", json={"label": "once"}).json()["token"]
    c.get("/api/tokens")
    shown_once = [t for t in lab.seen if made in t]
    assert len(shown_once) == 1  # the creation response, and nothing after it
    logs = "".join(p.read_text(errors="replace") for p in lab.home.rglob("*.log"))
    assert "POST /api/runs" in logs and "/api/auth/login" in logs  # the access log is there, without secrets
    for secret in (c.token, made):
        assert secret not in logs
        assert not any(secret in t for t in lab.seen if t is not shown_once[0])
    url = make_url(pg_database).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url) as db:
        dump = str(db.execute("select * from api_tokens").fetchall()) + str(
            db.execute("select * from web_sessions").fetchall()
        )
    assert c.token not in dump and made not in dump and c.token[:12] in dump  # hashes and prefixes only
