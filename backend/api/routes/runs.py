from __future__ import annotations

import copy
import csv
import io
import itertools
import json
import shutil
from pathlib import Path, PurePath
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi import Path as FPath
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from pydantic import ValidationError
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from backend import crud, uploads
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
from backend.api.deps import CurrentUser, RunDep, SessionDep, check_owner, require_user
from backend.config import get_settings
from backend.db import session_scope
from backend.models import (
    Artifact,
    EvalResult,
    EvalSummary,
    Histogram,
    Metric,
    Run,
    SanityCheck,
    User,
    now,
)
from backend.queue import BrokerUnavailable, enqueue
from backend.run_config import NO_NUL, PATH_FIELDS, config_errors, parse_run_config

router = APIRouter(prefix="/api", tags=["runs"], dependencies=[Depends(require_user)])
QText = Annotated[str | None, Query(max_length=200, pattern=NO_NUL)]
SORTS = Literal["created_at", "-created_at", "name", "-name", "status", "-status", "id", "-id"]


def unprocessable(*errors: tuple[list, str]) -> HTTPException:
    """A 422 in FastAPI's shape, each error naming its field: `raise unprocessable((loc, msg), ...)`."""
    return HTTPException(422, detail=[{"loc": loc, "msg": msg, "type": "value_error"} for loc, msg in errors])


def _validated(config: dict, prefix: str = "config", evaluation: bool = False) -> dict:
    try:
        cfg = parse_run_config(config).model_dump(mode="json")
    except ValidationError as e:
        raise HTTPException(422, detail=[{**d, "loc": [prefix, *d["loc"]]} for d in config_errors(e)]) from e
    errors = _limit_errors(cfg)
    named = [k for k in ("model_path", "model_upload") if cfg["eval"][k] is not None]
    if evaluation and len(named) != 1:
        errors.append(
            (
                ["eval", "model_path"],
                "name the model to evaluate: model_path (a file under the data root) or model_upload"
                " (what POST /api/models answered), one of them",
            )
        )
    if (
        evaluation
        and cfg["eval"]["model_upload"]
        and not uploads.upload_path(cfg["eval"]["model_upload"]).is_file()
    ):
        errors.append(
            (["eval", "model_upload"], "no such upload on this server; upload with POST /api/models")
        )
    for key in named if not evaluation else []:
        errors.append(
            (["eval", key], "a run trains its own model; evaluate a file with POST /api/evaluations")
        )
    if errors:
        raise unprocessable(*(([prefix, *loc], msg) for loc, msg in errors))
    return cfg


def _limit_errors(cfg: dict) -> list[tuple[list[str], str]]:
    """What this server allows: bounds on epochs and batch size, and file paths inside its data root."""
    settings, errors = get_settings(), []
    for section, key in (("train", "epochs"), ("params", "teacher_epochs")):
        if cfg.get(section, {}).get(key, 0) > settings.max_epochs:
            errors.append(
                ([section, key], f"at most {settings.max_epochs} on this server (GATLAB_MAX_EPOCHS)")
            )
    if cfg["train"]["batch_size"] > settings.max_batch_size:
        errors.append(
            (
                ["train", "batch_size"],
                f"at most {settings.max_batch_size} on this server (GATLAB_MAX_BATCH_SIZE)",
            )
        )
    root = settings.data_path
    if root is not None:
        for section, key in PATH_FIELDS:
            value = cfg.get(section, {}).get(key)
            if value is None:
                continue
            if ".." in PurePath(value).parts:
                errors.append(([section, key], "may not contain '..'"))
            elif not (root / value).resolve().is_relative_to(root):
                errors.append(
                    (
                        [section, key],
                        f"must lie inside the data root {root} (a path relative to it, or absolute inside it)",
                    )
                )
    return errors


def _check_torchscript(user: User | None, eval_cfg: dict, loc: list) -> None:
    """TorchScript is a program: who may have one evaluated is the lab's rule (GATLAB_TORCHSCRIPT)."""
    settings = get_settings()
    if uploads.is_torchscript(eval_cfg) and not settings.may_run_torchscript(
        user.is_admin if user is not None else None
    ):
        raise HTTPException(
            403,
            detail=[
                {
                    "loc": loc,
                    "msg": f"this lab lets {settings.torchscript_policy} evaluate TorchScript models"
                    " (GATLAB_TORCHSCRIPT); upload safetensors weights of a lab architecture instead"
                    " (`gatlab export -o model.safetensors`)",
                    "type": "permission",
                }
            ],
        )


def _check_quota(s: Session, user: User | None, new: int) -> None:
    """A per-user cap on queued runs, so one sweep cannot fill a shared server's queue."""
    if user is None:
        return
    cap = get_settings().max_queued_per_user
    # Count-then-insert holds only under a per-user lock: a no-op UPDATE of the user's row takes
    # PostgreSQL's row lock (SQLite's write lock) until this request commits, so two submissions of
    # one user are counted one after the other (READ COMMITTED: the second sees the first's runs).
    s.execute(update(User).where(User.id == user.id).values(disabled=User.disabled))
    queued = s.scalar(
        select(func.count()).select_from(Run).where(Run.owner_id == user.id, Run.status == "queued")
    )
    if queued + new > cap:
        raise HTTPException(
            429,
            detail=f"{user.name} has {queued} queued runs; this would make {queued + new}, "
            f"over the cap of {cap} per user (GATLAB_MAX_QUEUED_PER_USER)",
        )


def _check_references(s: Session, config: dict, prefix: str = "config") -> None:
    """A teacher named by run id must be a succeeded training run of this lab."""
    teacher = config.get("params", {}).get("teacher_run")
    if teacher is not None:
        run = s.get(Run, teacher)
        if run is None or run.status != "succeeded" or run.kind != "train":
            state = (
                "does not exist"
                if run is None
                else f"is {run.status}"
                if run.status != "succeeded"
                else "is not a training run"
            )
            raise unprocessable(
                (
                    [prefix, "params", "teacher_run"],
                    f"teacher run {teacher} {state}; it must be a succeeded training run",
                )
            )


def _commit_and_enqueue(s: Session, runs: list[Run]) -> None:
    """The house rule: commit the runs, then put them on the broker, then read back their state."""
    s.commit()
    _enqueue_all([r.id for r in runs])
    for r in runs:
        s.refresh(r)


def _enqueue_all(ids: list[int]) -> None:
    """Commit first, then enqueue, and record which runs reached the broker; a broker that is down
    fails the rest with a clear error (503). A run left queued but never sent (the API died in
    between) is sent by the workers' sweeper."""
    sent = []
    try:
        for run_id in ids:
            enqueue(run_id)
            sent.append(run_id)
    except BrokerUnavailable as e:
        with session_scope() as s:
            for run in s.scalars(
                select(Run).where(Run.id.in_(ids), Run.id.not_in(sent), Run.status == "queued")
            ):
                run.status, run.error, run.finished_at = "failed", str(e), now()
        raise HTTPException(503, detail=str(e)) from e
    finally:
        with session_scope() as s:
            crud.mark_enqueued(s, run_ids=sent)


@router.post("/runs", status_code=201, response_model=RunOut)
def create_run(body: RunCreate, user: CurrentUser, s: SessionDep) -> Run:
    config = _validated(body.config)
    _check_references(s, config)
    _check_quota(s, user, 1)
    run = crud.create_run(s, config=config, experiment=body.experiment, tags=body.tags, owner=user)
    _commit_and_enqueue(s, [run])
    return run


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
    body = await request.body()
    if not body:
        raise unprocessable((["body"], "empty: send the model file itself as the request body"))
    return await run_in_threadpool(_store_upload, body, user)


def _store_upload(body: bytes, user: User | None) -> dict:
    """Check the file, the lab's TorchScript rule and the uploader's quota (under the user's lock),
    keep it, and record it against the uploader; a full disk is a 507 with nothing partial left."""
    settings = get_settings()
    try:
        fmt = uploads.model_format(body)
    except ValueError as e:
        raise unprocessable((["body"], str(e))) from None
    if fmt == "torchscript":
        _check_torchscript(user, {"model_upload": "upload.pt"}, ["body"])
    owner = user.id if user is not None else None
    with session_scope() as s:
        if user is not None:
            s.execute(update(User).where(User.id == user.id).values(disabled=User.disabled))
        uploads.prune(s, keep_s=settings.upload_keep_s, owner_id=owner, everyone=False)
        cap, used = settings.max_upload_mb_per_user << 20, uploads.used_bytes(s, owner)
        if user is not None and used + len(body) > cap:
            raise HTTPException(
                413,
                detail=f"{user.name} has {used >> 20} MiB of uploaded models; this one ({len(body) >> 20} MiB)"
                f" would pass the allowance of {cap >> 20} MiB per user (GATLAB_MAX_UPLOAD_MB_PER_USER)."
                " Uploads no run uses are removed after GATLAB_UPLOAD_KEEP_S; delete runs you no longer need",
            )
        try:
            out = uploads.store(body)
        except uploads.StorageFull as e:
            raise HTTPException(
                507, detail=f"{e.strerror}; nothing was kept. Ask the lab's admin to free disk space"
            ) from None
        uploads.record(s, name=out["upload"], size=len(body), owner_id=owner)
    return out


@router.post("/evaluations", status_code=201, response_model=RunOut)
def create_evaluation(body: EvaluationCreate, user: CurrentUser, s: SessionDep) -> Run:
    """Queue the robustness panel on a model trained elsewhere: a file under the data root or an
    upload (TorchScript: images in [0, 1] -> logits; or safetensors weights of a lab architecture),
    judged on `dataset` like any run. Its page shows the panel."""
    if body.eval.get("panel") == "none":
        raise unprocessable((["body", "eval", "panel"], "an evaluation runs a panel: quick or standard"))
    source = body.eval.get("model_path") or f"upload {str(body.eval.get('model_upload'))[:12]}"
    name = body.name or f"eval {PurePath(str(source)).name}"
    raw = {"name": name, "scenario": "defense", "method": "erm", "dataset": body.dataset, "eval": body.eval}
    if body.model is not None:
        raw["model"] = body.model
    config = _validated(raw, prefix="body", evaluation=True)
    _check_torchscript(
        user,
        config["eval"],
        ["body", "eval", "model_upload" if body.eval.get("model_upload") else "model_path"],
    )
    _check_quota(s, user, 1)
    run = crud.create_run(
        s, config=config, experiment=body.experiment, tags=body.tags, kind="eval", owner=user
    )
    run.method = "external model"
    _commit_and_enqueue(s, [run])
    return run


def _set_path(cfg: dict, path: str, value) -> None:
    *parents, leaf = path.split(".")
    node = cfg
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise unprocessable((["body", "grid", path], f"{p} is not a section"))
    node[leaf] = value


@router.post("/sweeps", status_code=201, response_model=RunList)
def create_sweep(body: SweepCreate, user: CurrentUser, s: SessionDep) -> dict:
    """A grid over knob values x seeds, expanded into queued runs under one experiment."""
    keys = list(body.grid)
    combos = list(itertools.product(*body.grid.values(), body.seeds))
    if len(combos) > 1000:
        raise unprocessable((["body", "grid"], "a sweep may expand to at most 1000 runs"))
    configs = []
    for combo in combos:
        cfg = copy.deepcopy(body.config)
        for k, v in zip(keys, combo[:-1], strict=False):
            _set_path(cfg, k, v)
        _set_path(cfg, "train.seed", combo[-1])
        label = ",".join(f"{k.split('.')[-1]}={v}" for k, v in zip(keys, combo[:-1], strict=False))
        cfg["name"] = f"{cfg.get('name', 'run')}[{label + ',' if label else ''}seed={combo[-1]}]"[:200]
        configs.append(_validated(cfg))
        _check_references(s, configs[-1])
    _check_quota(s, user, len(configs))
    runs = [
        crud.create_run(s, config=c, experiment=body.experiment, tags=body.tags, owner=user) for c in configs
    ]
    _commit_and_enqueue(s, runs)
    return {"total": len(runs), "items": runs}


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
    items, total = crud.list_runs(
        s,
        status=status,
        scenario=scenario,
        method=method,
        experiment=experiment,
        tag=tag,
        q=q,
        sort=sort,
        limit=limit,
        offset=offset,
    )
    return {"total": total, "items": items}


@router.get("/runs/{run_id}", response_model=RunOut)
def get_run(run: RunDep) -> Run:
    return run


@router.patch("/runs/{run_id}", response_model=RunOut)
def patch_run(body: RunPatch, user: CurrentUser, run: RunDep, s: SessionDep) -> Run:
    check_owner(run, user, "edit")
    for k, v in body.model_dump(exclude_none=True).items():
        setattr(run, k, v)
    s.commit()
    return run


@router.post("/runs/{run_id}/cancel", response_model=RunOut)
def cancel_run(user: CurrentUser, run: RunDep, s: SessionDep) -> Run:
    check_owner(run, user, "cancel")
    if run.status in crud.FINAL:
        raise HTTPException(409, detail=f"run {run.id} is already {run.status}")
    crud.request_cancel(s, run=run)
    s.commit()
    return run


@router.post("/runs/{run_id}/retry", status_code=201, response_model=RunOut)
def retry_run(user: CurrentUser, run: RunDep, s: SessionDep) -> Run:
    """A new run with the same config, owned by whoever retries it (the original is kept as it is).
    A panel job on a run is queued again only by that run's owner or an admin, as `POST /runs/{id}/eval`."""
    if run.parent_id is not None:
        parent = s.get(Run, run.parent_id)
        if parent is None:
            raise HTTPException(
                409, detail=f"run {run.id} is a panel job on run {run.parent_id}, which is gone"
            )
        check_owner(parent, user, "evaluate")
    eval_cfg = run.config["eval"]
    evaluation = run.kind == "eval" and run.parent_id is None  # a model from elsewhere: a file or an upload
    config = _validated(run.config, evaluation=evaluation)  # today's limits apply to yesterday's config
    if evaluation:
        _check_torchscript(
            user, eval_cfg, ["eval", "model_upload" if eval_cfg.get("model_upload") else "model_path"]
        )
    _check_quota(s, user, 1)
    new = crud.create_run(s, config=config, tags=run.tags, kind=run.kind, parent_id=run.parent_id, owner=user)
    new.experiment_id, new.method = run.experiment_id, run.method
    _commit_and_enqueue(s, [new])
    return new


@router.delete("/runs/{run_id}", status_code=204)
def delete_run(user: CurrentUser, run: RunDep, s: SessionDep) -> Response:
    check_owner(run, user, "delete")
    if run.status == "running":
        raise HTTPException(409, detail=f"run {run.id} is running: cancel it first")
    s.delete(run)
    s.commit()
    shutil.rmtree(get_settings().runs_path / str(run.id), ignore_errors=True)  # its files go with it
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
    return {
        "run_id": run.id,
        "series": crud.metric_columns(
            s,
            run_id=run.id,
            keys=key_list,
            max_points=max_points,
            after_step=after_step,
            before_step=before_step,
        ),
    }


@router.get("/runs/{run_id}/histograms")
def histograms(
    run: RunDep, s: SessionDep, key: QText = "input_grad", limit: int = Query(200, ge=1, le=10_000)
) -> dict:
    rows = s.scalars(
        select(Histogram)
        .where(Histogram.run_id == run.id, Histogram.key == key)
        .order_by(Histogram.step)
        .limit(limit)
    ).all()
    return {
        "key": key,
        "edges": rows[0].edges if rows else [],
        "step": [r.step for r in rows],
        "counts": [r.counts for r in rows],
    }


def _panel_jobs(s: Session, run: Run) -> list[dict]:
    """The panels run on this run, oldest first. A panel job is named by its run id; the panel at
    the end of the run's own training by the run's id."""
    rows = s.execute(
        select(EvalResult.job_id, EvalResult.panel, func.max(EvalResult.n), func.min(EvalResult.id))
        .where(EvalResult.run_id == run.id)
        .group_by(EvalResult.job_id, EvalResult.panel)
        .order_by(func.min(EvalResult.id))
    ).all()
    return [{"job_id": job or run.id, "panel": panel, "n": n} for job, panel, n, _ in rows]


def _of_job(table, run: Run, job_id: int | None):
    """Rows of one panel: the run's own (stored with job_id NULL) or a panel job's."""
    return table.job_id.is_(None) if job_id in (None, run.id) else table.job_id == job_id


def _job_dir(run: Run, job_id: int | None) -> Path:
    return get_settings().runs_path / str(job_id or run.id)


JobQuery = Annotated[
    int | None,
    Query(
        ge=1,
        le=2**31 - 1,
        description="A panel job's id, or the run's own id for its own panel (default: the latest)",
    ),
]


def _pick_job(s: Session, run: Run, job: int | None) -> tuple[list[dict], int | None]:
    jobs = _panel_jobs(s, run)
    if job is not None and job not in [j["job_id"] for j in jobs]:
        raise HTTPException(404, detail=f"run {run.id} has no results of panel job {job}")
    return jobs, job if job is not None else (jobs[-1]["job_id"] if jobs else None)


@router.get("/runs/{run_id}/eval")
def eval_results(run: RunDep, s: SessionDep, job: JobQuery = None) -> dict:
    """One panel's results (the latest, or `job`); `panels` lists every panel kept for this run."""
    jobs, job_id = _pick_job(s, run, job)
    rows = s.scalars(
        select(EvalResult)
        .where(EvalResult.run_id == run.id, _of_job(EvalResult, run, job_id))
        .order_by(EvalResult.id)
    ).all()
    checks = s.scalars(
        select(SanityCheck)
        .where(SanityCheck.run_id == run.id, _of_job(SanityCheck, run, job_id))
        .order_by(SanityCheck.id)
    ).all()
    summary = s.scalar(
        select(EvalSummary.data)
        .where(EvalSummary.run_id == run.id, _of_job(EvalSummary, run, job_id))
        .order_by(EvalSummary.id.desc())
    )
    cols = ("panel", "attack", "norm", "eps", "steps", "restarts", "accuracy", "n", "info")
    return {
        "job_id": job_id,
        "panels": jobs,
        "summary": summary,
        "rows": [
            {**{c: getattr(r, c) for c in cols}, "ci": None if r.ci_low is None else [r.ci_low, r.ci_high]}
            for r in rows
        ],
        "checks": [
            {"panel": c.panel, "name": c.name, "passed": c.passed, "severity": c.severity, "detail": c.detail}
            for c in checks
        ],
        "all_passed": all(c.passed for c in checks) if checks else None,
        # masking suspected: a failed check says the numbers may be inflated; a failed check of
        # severity weaker_attack alone leaves the worst case standing
        "masking_suspected": any(not c.passed and c.severity == "masking" for c in checks)
        if checks
        else None,
        "gallery": (_job_dir(run, job_id) / "gallery.json").is_file(),
    }


@router.post("/runs/{run_id}/eval", status_code=201, response_model=RunOut)
def queue_eval(body: EvalCreate, user: CurrentUser, run: RunDep, s: SessionDep) -> Run:
    """Queue the robustness panel on a finished defense run, as its own job (owner or admin)."""
    check_owner(run, user, "evaluate")
    if run.kind != "train" or run.scenario != "defense" or run.status != "succeeded":
        raise HTTPException(409, detail="the panel runs on a succeeded defense training run")
    cfg = copy.deepcopy(run.config)
    cfg["eval"] = {**cfg["eval"], "panel": body.panel, "n": body.n}
    _check_quota(s, user, 1)
    job = crud.create_run(s, config=cfg, kind="eval", parent_id=run.id, owner=user)
    job.name = f"eval {body.panel}: {run.name}"[:200]
    _commit_and_enqueue(s, [job])
    return job


@router.get("/runs/{run_id}/gallery")
def gallery(run: RunDep, s: SessionDep, job: JobQuery = None) -> Response:
    """Clean, adversarial and perturbation images of one panel (the latest, or `job`)."""
    _, job_id = _pick_job(s, run, job)
    path = _job_dir(run, job_id) / "gallery.json"
    if not path.is_file():
        raise HTTPException(404, detail=f"run {run.id} has no robustness panel images yet")
    return Response(path.read_text(), media_type="application/json")


@router.get("/runs/{run_id}/artifacts")
def artifacts(run: RunDep, s: SessionDep) -> list[dict]:
    rows = s.scalars(select(Artifact).where(Artifact.run_id == run.id).order_by(Artifact.name)).all()
    return [
        {"name": a.name, "kind": a.kind, "size": a.size, "url": f"/api/runs/{run.id}/artifacts/{a.name}"}
        for a in rows
    ]


@router.get("/runs/{run_id}/artifacts/{name}")
def artifact(
    name: Annotated[str, FPath(max_length=200, pattern=NO_NUL)], run: RunDep, s: SessionDep
) -> FileResponse:
    a = s.scalar(select(Artifact).where(Artifact.run_id == run.id, Artifact.name == name))
    if a is None or not Path(a.path).is_file():
        raise HTTPException(404, detail=f"run {run.id} has no artifact {name!r}")
    return FileResponse(a.path, filename=a.name)


EVAL_COLUMNS = (
    "run_id",
    "job_id",
    "panel",
    "attack",
    "norm",
    "eps",
    "steps",
    "restarts",
    "n",
    "accuracy",
    "ci_low",
    "ci_high",
)


def _export_eval(s: Session, id_list: list[int], format: str) -> Response:
    rows = s.execute(
        select(*(getattr(EvalResult, c) for c in EVAL_COLUMNS))
        .where(EvalResult.run_id.in_(id_list))
        .order_by(EvalResult.run_id, EvalResult.id)
    ).all()
    if format == "json":
        return Response(
            json.dumps({"columns": EVAL_COLUMNS, "rows": [list(r) for r in rows]}),
            media_type="application/json",
        )
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(EVAL_COLUMNS)
    w.writerows(rows)
    return Response(
        buf.getvalue(),
        media_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="gatlab-robustness.csv"'},
    )


@router.get("/export")
def export(
    s: SessionDep,
    ids: str = Query(..., max_length=4000, description="Comma-separated run ids"),
    format: Literal["csv", "json"] = "csv",
    what: Literal["metrics", "eval"] = "metrics",
) -> Response:
    """Metrics of a selection of runs, long format: run_id, key, step, value; or with `what=eval`
    every robustness row of their panels, with its 95 % interval and number of examples."""
    try:
        id_list = [int(i) for i in ids.split(",") if i]
        if not all(1 <= i < 2**31 for i in id_list):
            raise ValueError
    except ValueError:
        raise unprocessable(
            (["query", "ids"], "ids must be comma-separated run ids (positive 32-bit integers)")
        ) from None
    if what == "eval":
        return _export_eval(s, id_list, format)
    rows = s.execute(
        select(Metric.run_id, Metric.key, Metric.step, Metric.value)
        .where(Metric.run_id.in_(id_list))
        .order_by(Metric.run_id, Metric.key, Metric.step)
    ).all()
    if format == "json":
        runs = s.scalars(select(Run).where(Run.id.in_(id_list))).all()
        return Response(
            RunExport(
                runs=[RunOut.model_validate(r) for r in runs], metrics=[list(r) for r in rows]
            ).model_dump_json(),
            media_type="application/json",
        )
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["run_id", "key", "step", "value"])
    w.writerows(rows)
    return Response(
        buf.getvalue(),
        media_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="gatlab-export.csv"'},
    )
