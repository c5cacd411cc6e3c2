"""The REST API's contract, against a real API process (embedded stack, no worker needed)."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from .conftest import make_stack, tiny_config


@pytest.fixture(scope="module", params=["embedded", "lab"])
def api(request, tmp_path_factory, pg_database):
    s = make_stack(tmp_path_factory.mktemp("api"), request.param, pg_database)
    yield s
    s.stop()


BAD = [
    ({"method": "magic"}, ["config", "method"]),
    ({"dataset": {"name": "digits", "fraction": 0}}, ["config", "dataset", "fraction"]),
    ({"params": {"lam": -1}}, ["config", "params", "lam"]),
    ({"params": {"nope": 1}}, ["config", "params", "nope"]),
    ({"train": {"batch_size": "big"}}, ["config", "train", "batch_size"]),
    ({"eval": {"panel": "huge"}}, ["config", "eval", "panel"]),
]


@pytest.mark.parametrize("change,loc", BAD)
def test_invalid_config_is_a_422_naming_the_field(api, change, loc):
    r = api.http.post("/api/runs", json={"config": tiny_config(**change)})
    assert r.status_code == 422, r.text
    assert loc in [d["loc"] for d in r.json()["detail"]], r.json()


def test_malformed_bodies_are_422(api):
    assert (
        api.http.post(
            "/api/runs", content=b"{not json", headers={"content-type": "application/json"}
        ).status_code
        == 422
    )
    assert api.http.post("/api/runs", json={"cfg": {}}).status_code == 422
    run_id = api.http.post("/api/runs", json={"config": tiny_config(), "experiment": "malformed"}).json()[
        "id"
    ]
    bad = api.http.patch(f"/api/runs/{run_id}", json={"name": ""})  # an existing run, an empty name
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][-1] == "name", bad.text
    assert api.http.patch("/api/runs/999999", json={"name": "x"}).status_code == 404  # no such run
    assert api.http.get("/api/runs", params={"limit": 0}).status_code == 422
    assert api.http.get("/api/export", params={"ids": "1,x"}).status_code == 422


def _model_files(tmp_path):
    """A TorchScript file, safetensors weights, and a pickled model (torch.save) of a tiny net."""
    import torch
    from safetensors.torch import save_file

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    torch.jit.trace(net, torch.rand(2, 1, 8, 8)).save(str(tmp_path / "m.pt"))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, tmp_path / "m.safetensors")
    torch.save(net, tmp_path / "pickled.pt")
    return {p.name: p.read_bytes() for p in tmp_path.iterdir()}


def test_a_model_upload_is_read_by_its_bytes_kept_once_and_named_by_an_evaluation(api, tmp_path):
    import hashlib

    files = _model_files(tmp_path)
    post = lambda body: api.http.post(
        "/api/models", content=body, headers={"content-type": "application/octet-stream"}
    )
    up = post(files["m.pt"])
    assert up.status_code == 201, up.text
    name = f"{hashlib.sha256(files['m.pt']).hexdigest()}.pt"
    assert up.json() == {"upload": name, "format": "torchscript", "bytes": len(files["m.pt"])}
    assert post(files["m.pt"]).json()["upload"] == name  # the same bytes, the same file
    stored = api.home / ".gatlab" / "runs" / "uploads" / name
    assert stored.read_bytes() == files["m.pt"]
    st = post(files["m.safetensors"]).json()
    assert st["format"] == "safetensors" and st["upload"].endswith(".safetensors")
    for body, why in (
        (files["pickled.pt"], "pickled model"),
        (b"\x00" * 100, "neither TorchScript"),
        (b"PK\x03\x04 not really a zip", "damaged zip"),
        (b"", "empty"),
    ):
        r = post(body)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body"], r.text
        assert why in r.json()["detail"][0]["msg"]
    assert post(b"PK" + b"\x00" * 1_000_000).status_code == 413  # over GATLAB_MAX_REQUEST_BYTES
    assert len(list(stored.parent.iterdir())) == 2  # nothing refused was kept

    body = {"dataset": {"name": "digits"}, "eval": {"panel": "quick", "model_upload": name}}
    run = api.http.post("/api/evaluations", json=body)
    assert run.status_code == 201, run.text
    assert run.json()["kind"] == "eval" and run.json()["name"] == f"eval upload {name[:12]}"
    assert run.json()["config"]["eval"]["model_upload"] == name
    for eval_section, loc in (
        ({"model_upload": "0" * 64 + ".pt"}, ["body", "eval", "model_upload"]),  # never uploaded
        ({"model_upload": "../../etc/passwd"}, ["body", "eval", "model_upload"]),
        ({"model_upload": name, "model_path": "m.pt"}, ["body", "eval", "model_path"]),  # one of them
        ({}, ["body", "eval", "model_path"]),
    ):
        r = api.http.post("/api/evaluations", json={**body, "eval": {"panel": "quick", **eval_section}})
        assert r.status_code == 422 and loc in [d["loc"] for d in r.json()["detail"]], r.text
    r = api.http.post("/api/runs", json={"config": tiny_config(eval={"model_upload": name})})
    assert r.status_code == 422 and ["config", "eval", "model_upload"] in [
        d["loc"] for d in r.json()["detail"]
    ]


@pytest.mark.parametrize(
    "method,path",
    [
        ("get", "/api/runs/999999"),
        ("patch", "/api/runs/999999"),
        ("post", "/api/runs/999999/cancel"),
        ("post", "/api/runs/999999/retry"),
        ("delete", "/api/runs/999999"),
        ("get", "/api/runs/999999/metrics"),
        ("get", "/api/runs/999999/eval"),
        ("post", "/api/runs/999999/eval"),
        ("get", "/api/runs/999999/artifacts"),
    ],
)
def test_unknown_ids_are_404(api, method, path):
    kw = {"json": {}} if method in ("patch", "post") else {}
    assert getattr(api.http, method)(path, **kw).status_code == 404


def test_methods_catalogue_and_schema(api):
    body = api.http.get("/api/methods").json()
    assert {(m["scenario"], m["method"]) for m in body["methods"]} >= {
        ("defense", "great"),
        ("defense", "pgd_at"),
    }
    assert "oneOf" in body["config_schema"] or "anyOf" in body["config_schema"]


def test_openapi_describes_the_real_run_config(api):
    """A generated client can build a valid run from the OpenAPI document alone: `config` is the
    union of every scenario:method model, and a body made of each one's required fields is a 201."""
    doc = api.http.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    assert schemas["RunCreate"]["properties"]["config"] == {"$ref": "#/components/schemas/RunConfig"}
    variants = [schemas[v["$ref"].split("/")[-1]] for v in schemas["RunConfig"]["oneOf"]]
    methods = api.http.get("/api/methods").json()["methods"]
    listed = {(m["scenario"], m["method"]) for m in methods}
    assert {
        (v["properties"]["scenario"]["const"], v["properties"]["method"]["const"]) for v in variants
    } == listed
    for v in variants:
        scenario, method = v["properties"]["scenario"]["const"], v["properties"]["method"]["const"]
        dataset = schemas[v["properties"]["dataset"]["$ref"].split("/")[-1]]["properties"]["name"]["enum"]
        assert set(v["required"]) == {"scenario", "method", "dataset"}
        body = {
            "scenario": scenario,
            "method": method,
            "dataset": {"name": "digits_mt" if scenario == "multitask" else dataset[0]},
        }
        if scenario == "distill":
            body["params"] = {"teacher_epochs": 1}
        r = api.http.post("/api/runs", json={"config": body})
        assert r.status_code == 201, (scenario, method, r.text)


def test_sweep_expands_grid_times_seeds_and_lifecycle_edits(api):
    r = api.http.post(
        "/api/sweeps",
        json={
            "config": tiny_config(),
            "grid": {"params.lam": [0.1, 1.0]},
            "seeds": [0, 1, 2],
            "experiment": "sweep-a",
        },
    )
    assert r.status_code == 201, r.text
    items = r.json()["items"]
    assert len(items) == 6
    assert sorted((i["config"]["params"]["lam"], i["config"]["train"]["seed"]) for i in items) == [
        (lam, s) for lam in (0.1, 1.0) for s in (0, 1, 2)
    ]
    listed = api.http.get("/api/runs", params={"experiment": "sweep-a", "limit": 4, "sort": "id"}).json()
    assert listed["total"] == 6 and len(listed["items"]) == 4
    first = items[0]["id"]
    patched = api.http.patch(
        f"/api/runs/{first}", json={"name": "renamed", "tags": ["x"], "notes": "hello"}
    ).json()
    assert (patched["name"], patched["tags"], patched["notes"]) == ("renamed", ["x"], "hello")
    assert api.http.get("/api/runs", params={"q": "renamed"}).json()["total"] == 1
    assert api.http.post(f"/api/runs/{first}/cancel").json()["status"] == "cancelled"  # queued: at once
    clone = api.http.post(f"/api/runs/{first}/retry").json()
    assert clone["id"] != first and clone["config"] == items[0]["config"] and clone["status"] == "queued"
    assert api.http.post(f"/api/runs/{first}/eval", json={}).status_code == 409  # not a succeeded run
    assert api.http.delete(f"/api/runs/{first}").status_code == 204
    assert api.http.get(f"/api/runs/{first}").status_code == 404
    bad = api.http.post(
        "/api/sweeps", json={"config": tiny_config(), "grid": {"params.lam": [-5]}, "experiment": "b"}
    )
    assert bad.status_code == 422 and ["config", "params", "lam"] in [d["loc"] for d in bad.json()["detail"]]


@pytest.fixture(scope="module")
def api_schema(api):
    return schemathesis.openapi.from_url(f"{api.base}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@pytest.mark.slow
def test_no_input_produces_a_server_error(case, api):
    """Signed in on the lab stack (auth on), so the inputs reach the handlers, not just the 401."""
    headers = {"Authorization": f"Bearer {api.token}"} if api.token else None
    case.call_and_validate(headers=headers, checks=[not_a_server_error])
