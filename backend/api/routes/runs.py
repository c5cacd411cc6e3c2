"""Runs, evaluations, sweeps, uploads, panels and exports: each route reads its request and hands it
to a service (labcore.services); what the service refuses becomes its status in backend.main."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi import Path as FPath
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from sqlalchemy import select

from backend.api.bodies import (
    EvalCreate,
    EvaluationCreate,
    RunCreate,
    RunExport,
    RunList,
    RunOut,
    RunPatch,
    SweepCreate,
    UploadOut,
)
from backend.api.deps import CurrentUser, RunDep, SessionDep, require_user
from labcore import crud
from labcore.errors import invalid
from labcore.models import Artifact, Histogram, Metric, Run
from labcore.run_config import NO_NUL
from labcore.services import panels, runs

router = APIRouter(prefix="/api", tags=["runs"], dependencies=[Depends(require_user)])
QText = Annotated[str | None, Query(max_length=200, pattern=NO_NUL)]
SORTS = Literal["created_at", "-created_at", "name", "-name", "status", "-status", "id", "-id"]
JobQuery = Annotated[
    int | None,
    Query(
        ge=1,
        le=2**31 - 1,
        description="A panel job's id, or the run's own id for its own panel (default: the latest)",
    ),
]


@router.post("/runs", status_code=201, response_model=RunOut)
def create_run(body: RunCreate, user: CurrentUser, s: SessionDep) -> Run:
    return runs.submit(s, user, body.config, experiment=body.experiment, tags=body.tags)


@router.post(
    "/models",
    status_code=201,
    response_model=UploadOut,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
    responses={422: {"description": "Not a TorchScript or safetensors model"}},
)
async def upload_model(request: Request, user: CurrentUser) -> dict:
    """Upload a model to evaluate: the request body is the file itself (TorchScript, or safetensors
    weights of a lab architecture), at most GATLAB_MAX_REQUEST_BYTES; larger ones go under the data
    root (eval.model_path). Answers the name to give as `eval.model_upload`."""
    return await run_in_threadpool(runs.store_upload, await request.body(), user)


@router.post("/evaluations", status_code=201, response_model=RunOut)
def create_evaluation(body: EvaluationCreate, user: CurrentUser, s: SessionDep) -> Run:
    """Queue the robustness panel on a model trained elsewhere: a file under the data root or an
    upload (TorchScript: images in [0, 1] -> logits; or safetensors weights of a lab architecture),
    judged on `dataset` like any run. Its page shows the panel."""
    fields = body.model_dump(include={"dataset", "eval", "model", "name", "experiment", "tags"})
    return runs.submit_evaluation(s, user, **fields)


@router.post("/sweeps", status_code=201, response_model=RunList)
def create_sweep(body: SweepCreate, user: CurrentUser, s: SessionDep) -> dict:
    """A grid over knob values x seeds, expanded into queued runs under one experiment."""
    made = runs.submit_sweep(
        s, user, body.config, body.grid, body.seeds, experiment=body.experiment, tags=body.tags
    )
    return {"total": len(made), "items": made}


@router.get("/runs", response_model=RunList)
def list_runs(
    s: SessionDep,
    status: QText = None,
    scenario: QText = None,
    method: QText = None,
    experiment: QText = None,
    tag: QText = None,
    q: QText = None,
    sort: SORTS = "-created_at",
    limit: int = Query(50, ge=1, le=1000),
    offset: int = Query(0, ge=0, le=2**31 - 1),
) -> dict:
    filters = {"status": status, "scenario": scenario, "method": method, "experiment": experiment, "tag": tag}
    items, total = crud.list_runs(s, **filters, q=q, sort=sort, limit=limit, offset=offset)
    return {"total": total, "items": items}


@router.get("/runs/{run_id}", response_model=RunOut)
def get_run(run: RunDep) -> Run:
    return run


@router.patch("/runs/{run_id}", response_model=RunOut)
def patch_run(body: RunPatch, user: CurrentUser, run: RunDep, s: SessionDep) -> Run:
    return runs.edit(s, user, run, body.model_dump(exclude_none=True))


@router.post("/runs/{run_id}/cancel", response_model=RunOut)
def cancel_run(user: CurrentUser, run: RunDep, s: SessionDep) -> Run:
    return runs.cancel(s, user, run)


@router.post("/runs/{run_id}/retry", status_code=201, response_model=RunOut)
def retry_run(user: CurrentUser, run: RunDep, s: SessionDep) -> Run:
    """A new run with the same config, owned by whoever retries it (the original is kept as it is).
    A panel job on a run is queued again only by that run's owner or an admin, as `POST /runs/{id}/eval`."""
    return runs.retry(s, user, run)


@router.delete("/runs/{run_id}", status_code=204)
def delete_run(user: CurrentUser, run: RunDep, s: SessionDep) -> Response:
    runs.delete(s, user, run)
    return Response(status_code=204)


@router.get("/runs/{run_id}/metrics")
def metrics(
    run: RunDep,
    s: SessionDep,
    keys: str | None = Query(
        None, max_length=2000, pattern=NO_NUL, description="Comma-separated keys; all if unset"
    ),
    max_points: int = Query(1000, ge=2, le=100_000),
    after_step: int = Query(-1, ge=-1, le=2**31 - 1),
    before_step: int | None = Query(None, ge=0, le=2**31 - 1, description="Upper bound (zoom)"),
) -> dict:
    """Chart-ready columns; long series come as min/max/last buckets. Poll with after_step, zoom with both."""
    key_list = [k for k in keys.split(",") if k] if keys else None
    window = {"max_points": max_points, "after_step": after_step, "before_step": before_step}
    return {"run_id": run.id, "series": crud.metric_columns(s, run_id=run.id, keys=key_list, **window)}


@router.get("/runs/{run_id}/histograms")
def histograms(
    run: RunDep, s: SessionDep, key: QText = "input_grad", limit: int = Query(200, ge=1, le=10_000)
) -> dict:
    q = select(Histogram).where(Histogram.run_id == run.id, Histogram.key == key).order_by(Histogram.step)
    rows = s.scalars(q.limit(limit)).all()
    edges = rows[0].edges if rows else []
    return {"key": key, "edges": edges, "step": [r.step for r in rows], "counts": [r.counts for r in rows]}


@router.get("/runs/{run_id}/eval")
def eval_results(run: RunDep, s: SessionDep, job: JobQuery = None) -> dict:
    """One panel's results (the latest, or `job`); `panels` lists every panel kept for this run."""
    return panels.view(s, run, job)


@router.post("/runs/{run_id}/eval", status_code=201, response_model=RunOut)
def queue_eval(body: EvalCreate, user: CurrentUser, run: RunDep, s: SessionDep) -> Run:
    """Queue the robustness panel on a finished defense run, as its own job (owner or admin)."""
    return panels.queue(s, user, run, body.panel, body.n)


@router.get("/runs/{run_id}/gallery")
def gallery(run: RunDep, s: SessionDep, job: JobQuery = None) -> Response:
    """Clean, adversarial and perturbation images of one panel (the latest, or `job`)."""
    return Response(panels.gallery(s, run, job).read_text(), media_type="application/json")


@router.get("/runs/{run_id}/artifacts")
def artifacts(run: RunDep, s: SessionDep) -> list[dict]:
    rows = s.scalars(select(Artifact).where(Artifact.run_id == run.id).order_by(Artifact.name)).all()
    url = f"/api/runs/{run.id}/artifacts/"
    return [{"name": a.name, "kind": a.kind, "size": a.size, "url": url + a.name} for a in rows]


@router.get("/runs/{run_id}/artifacts/{name}")
def artifact(
    name: Annotated[str, FPath(max_length=200, pattern=NO_NUL)], run: RunDep, s: SessionDep
) -> FileResponse:
    a = s.scalar(select(Artifact).where(Artifact.run_id == run.id, Artifact.name == name))
    if a is None or not Path(a.path).is_file():
        raise HTTPException(404, detail=f"run {run.id} has no artifact {name!r}")
    return FileResponse(a.path, filename=a.name)


def _csv(header, rows, filename: str) -> Response:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    disposition = {"Content-Disposition": f'attachment; filename="{filename}"'}
    return Response(buf.getvalue(), media_type="text/csv", headers=disposition)


def _run_ids(ids: str) -> list[int]:
    try:
        id_list = [int(i) for i in ids.split(",") if i]
        if all(1 <= i < 2**31 for i in id_list):
            return id_list
    except ValueError:
        pass
    raise invalid((["query", "ids"], "ids must be comma-separated run ids (positive 32-bit integers)"))


@router.get("/export")
def export(
    s: SessionDep,
    ids: str = Query(..., max_length=4000, description="Comma-separated run ids"),
    format: Literal["csv", "json"] = "csv",
    what: Literal["metrics", "eval"] = "metrics",
) -> Response:
    """Metrics of a selection of runs, long format: run_id, key, step, value; or with `what=eval`
    every robustness row of their panels, with its 95 % interval and number of examples."""
    id_list = _run_ids(ids)
    if what == "eval":
        rows = panels.export_rows(s, id_list)
        if format == "json":
            body = json.dumps({"columns": panels.EXPORT_COLUMNS, "rows": [list(r) for r in rows]})
            return Response(body, media_type="application/json")
        return _csv(panels.EXPORT_COLUMNS, rows, "gatlab-robustness.csv")
    rows = s.execute(
        select(Metric.run_id, Metric.key, Metric.step, Metric.value)
        .where(Metric.run_id.in_(id_list))
        .order_by(Metric.run_id, Metric.key, Metric.step)
    ).all()
    if format == "json":
        found = s.scalars(select(Run).where(Run.id.in_(id_list))).all()
        out = RunExport(runs=[RunOut.model_validate(r) for r in found], metrics=[list(r) for r in rows])
        return Response(out.model_dump_json(), media_type="application/json")
    return _csv(["run_id", "key", "step", "value"], rows, "gatlab-export.csv")
