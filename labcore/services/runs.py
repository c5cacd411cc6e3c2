"""Runs: submit one, a model to evaluate, a sweep; retry, cancel, edit, delete; keep an uploaded model.

Every submission is checked the same way (the config's schema, this server's limits, who may run
TorchScript, the references it names, the owner's queue cap) and then committed before it is put on
the broker, so a run the broker never got is still there for the workers' sweeper to send.
"""

from __future__ import annotations

import copy
import itertools
import shutil
from pathlib import PurePath

from pydantic import ValidationError
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from labcore import crud, lifecycle, uploads
from labcore.config import get_settings
from labcore.db import session_scope
from labcore.errors import Refused, check_owner, conflict, invalid
from labcore.models import Run, User
from labcore.queue import BrokerUnavailable, enqueue
from labcore.run_config import PATH_FIELDS, config_errors, parse_run_config

MAX_SWEEP = 1000


def checked(config: dict, prefix: str = "config", evaluation: bool = False) -> dict:
    """The validated config (defaults filled in), or a 422 naming each bad field under `prefix`."""
    try:
        cfg = parse_run_config(config).model_dump(mode="json")
    except ValidationError as e:
        raise Refused(422, [{**d, "loc": [prefix, *d["loc"]]} for d in config_errors(e)]) from e
    return within_limits(cfg, prefix, evaluation)


def within_limits(cfg: dict, prefix: str = "config", evaluation: bool = False) -> dict:
    """A validated config against this server's limits and what a run or an evaluation may name."""
    errors = limit_errors(cfg)
    named = [k for k in ("model_path", "model_upload") if cfg["eval"][k] is not None]
    if evaluation and len(named) != 1:
        errors.append(
            (
                ["eval", "model_path"],
                "name the model to evaluate: model_path (a file under the data root) or model_upload"
                " (what POST /api/models answered), one of them",
            )
        )
    upload = cfg["eval"]["model_upload"]
    if evaluation and upload and not uploads.upload_path(upload).is_file():
        errors.append(
            (["eval", "model_upload"], "no such upload on this server; upload with POST /api/models")
        )
    for key in named if not evaluation else []:
        errors.append(
            (["eval", key], "a run trains its own model; evaluate a file with POST /api/evaluations")
        )
    if errors:
        raise invalid(*(([prefix, *loc], msg) for loc, msg in errors))
    return cfg


def limit_errors(cfg: dict) -> list[tuple[list[str], str]]:
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
    for section, key in PATH_FIELDS if root is not None else ():
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


def check_torchscript(user: User | None, eval_cfg: dict, loc: list) -> None:
    """TorchScript is a program: who may have one evaluated is the lab's rule (GATLAB_TORCHSCRIPT)."""
    settings = get_settings()
    if uploads.is_torchscript(eval_cfg) and not settings.may_run_torchscript(
        user.is_admin if user is not None else None
    ):
        msg = (
            f"this lab lets {settings.torchscript_policy} evaluate TorchScript models (GATLAB_TORCHSCRIPT);"
            " upload safetensors weights of a lab architecture instead (`gatlab export -o model.safetensors`)"
        )
        raise Refused(403, [{"loc": loc, "msg": msg, "type": "permission"}])


def lock_user(s: Session, user: User) -> None:
    """Take the user's row lock until this transaction commits (PostgreSQL's row lock, SQLite's write
    lock) with a no-op UPDATE, so two requests of one user count-then-insert one after the other."""
    s.execute(update(User).where(User.id == user.id).values(disabled=User.disabled))


def check_quota(s: Session, user: User | None, new: int) -> None:
    """A per-user cap on queued runs, so one sweep cannot fill a shared server's queue."""
    if user is None:
        return
    cap = get_settings().max_queued_per_user
    lock_user(s, user)  # READ COMMITTED: a second submission waits, then sees the first's runs
    queued = s.scalar(
        select(func.count()).select_from(Run).where(Run.owner_id == user.id, Run.status == lifecycle.QUEUED)
    )
    if queued + new > cap:
        raise Refused(
            429,
            f"{user.name} has {queued} queued runs; this would make {queued + new}, "
            f"over the cap of {cap} per user (GATLAB_MAX_QUEUED_PER_USER)",
        )


def check_references(s: Session, config: dict, prefix: str = "config") -> None:
    """A teacher named by run id must be a succeeded training run of this lab."""
    teacher = config.get("params", {}).get("teacher_run")
    if teacher is None:
        return
    run = s.get(Run, teacher)
    if run is None or run.status != lifecycle.SUCCEEDED or run.kind != "train":
        state = (
            "does not exist"
            if run is None
            else f"is {run.status}"
            if run.status != lifecycle.SUCCEEDED
            else "is not a training run"
        )
        raise invalid(
            (
                [prefix, "params", "teacher_run"],
                f"teacher run {teacher} {state}; it must be a succeeded training run",
            )
        )


def commit_and_enqueue(s: Session, runs: list[Run]) -> list[Run]:
    """The house rule: commit the runs, then put them on the broker, then read back their state. A
    broker that is down fails the runs it did not get with a clear error (503); a run committed but
    never sent (the API died in between) is sent by the workers' sweeper."""
    s.commit()
    ids, sent = [r.id for r in runs], []
    try:
        for run_id in ids:
            enqueue(run_id)
            sent.append(run_id)
    except BrokerUnavailable as e:
        with session_scope() as s2:
            unsent = select(Run).where(Run.id.in_(ids), Run.id.not_in(sent), Run.status == lifecycle.QUEUED)
            for run in s2.scalars(unsent):
                lifecycle.give_up(run, str(e))
        raise Refused(503, str(e)) from e
    finally:
        with session_scope() as s2:
            crud.mark_enqueued(s2, run_ids=sent)
    for r in runs:
        s.refresh(r)
    return runs


def submit(s: Session, user: User | None, config: dict, *, experiment=None, tags=None) -> Run:
    """One training run."""
    config = checked(config)
    check_references(s, config)
    check_quota(s, user, 1)
    run = crud.create_run(s, config=config, experiment=experiment, tags=tags, owner=user)
    return commit_and_enqueue(s, [run])[0]


def submit_evaluation(
    s: Session,
    user: User | None,
    *,
    dataset: dict,
    eval: dict,
    model=None,
    name=None,
    experiment=None,
    tags=None,
) -> Run:
    """The robustness panel on a model trained elsewhere: a file under the data root or an upload."""
    if eval.get("panel") == "none":
        raise invalid((["body", "eval", "panel"], "an evaluation runs a panel: quick or standard"))
    source = eval.get("model_path") or f"upload {str(eval.get('model_upload'))[:12]}"
    raw = {"name": name or f"eval {PurePath(str(source)).name}", "scenario": "defense", "method": "erm"}
    raw |= {"dataset": dataset, "eval": eval} | ({"model": model} if model is not None else {})
    config = checked(raw, prefix="body", evaluation=True)
    check_torchscript(user, config["eval"], ["body", "eval", _model_key(eval)])
    check_quota(s, user, 1)
    run = crud.create_run(s, config=config, experiment=experiment, tags=tags, kind="eval", owner=user)
    run.method = "external model"
    return commit_and_enqueue(s, [run])[0]


def _model_key(eval_cfg: dict) -> str:
    return "model_upload" if eval_cfg.get("model_upload") else "model_path"


def _set_path(cfg: dict, path: str, value) -> None:
    *parents, leaf = path.split(".")
    node = cfg
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise invalid((["body", "grid", path], f"{p} is not a section"))
    node[leaf] = value


def submit_sweep(
    s: Session, user: User | None, config: dict, grid: dict, seeds: list[int], *, experiment=None, tags=None
) -> list[Run]:
    """A grid over knob values x seeds, expanded into queued runs under one experiment."""
    keys = list(grid)
    combos = list(itertools.product(*grid.values(), seeds))
    if len(combos) > MAX_SWEEP:
        raise invalid((["body", "grid"], f"a sweep may expand to at most {MAX_SWEEP} runs"))
    configs = []
    for combo in combos:
        cfg = copy.deepcopy(config)
        for k, v in zip(keys, combo[:-1], strict=False):
            _set_path(cfg, k, v)
        _set_path(cfg, "train.seed", combo[-1])
        label = ",".join(f"{k.split('.')[-1]}={v}" for k, v in zip(keys, combo[:-1], strict=False))
        cfg["name"] = f"{cfg.get('name', 'run')}[{label + ',' if label else ''}seed={combo[-1]}]"[:200]
        configs.append(checked(cfg))
        check_references(s, configs[-1])
    check_quota(s, user, len(configs))
    runs = crud.create_runs(s, configs=configs, experiment=experiment, tags=tags, owner=user)
    return commit_and_enqueue(s, runs)


def retry(s: Session, user: User | None, run: Run) -> Run:
    """A new run with the same config, owned by whoever retries it (the original is kept as it is);
    today's limits apply to yesterday's config. A panel job on a run is queued again only by that
    run's owner or an admin, as a new panel is."""
    if run.parent_id is not None:
        parent = s.get(Run, run.parent_id)
        if parent is None:
            raise conflict(f"run {run.id} is a panel job on run {run.parent_id}, which is gone")
        check_owner(parent.owner_id, user, f"run {parent.id}", "evaluate")
    evaluation = run.kind == "eval" and run.parent_id is None  # a model from elsewhere: a file or an upload
    config = checked(run.config, evaluation=evaluation)
    if evaluation:
        check_torchscript(user, run.config["eval"], ["eval", _model_key(run.config["eval"])])
    check_quota(s, user, 1)
    new = crud.create_run(s, config=config, tags=run.tags, kind=run.kind, parent_id=run.parent_id, owner=user)
    new.experiment_id, new.method = run.experiment_id, run.method
    return commit_and_enqueue(s, [new])[0]


def edit(s: Session, user: User | None, run: Run, fields: dict) -> Run:
    check_owner(run.owner_id, user, f"run {run.id}", "edit")
    for k, v in fields.items():
        setattr(run, k, v)
    s.commit()
    return run


def cancel(s: Session, user: User | None, run: Run) -> Run:
    check_owner(run.owner_id, user, f"run {run.id}", "cancel")
    if run.status in lifecycle.FINAL:
        raise conflict(f"run {run.id} is already {run.status}")
    lifecycle.request_cancel(run)
    s.commit()
    return run


def delete(s: Session, user: User | None, run: Run) -> None:
    """The run, its rows and its files."""
    check_owner(run.owner_id, user, f"run {run.id}", "delete")
    if run.status == lifecycle.RUNNING:
        raise conflict(f"run {run.id} is running: cancel it first")
    s.delete(run)
    s.commit()
    shutil.rmtree(get_settings().runs_path / str(run.id), ignore_errors=True)


def store_upload(body: bytes, user: User | None) -> dict:
    """Check the file, the lab's TorchScript rule and the uploader's allowance (under the user's
    lock), keep it, and record it against the uploader; a full disk is a 507 with nothing partial left."""
    if not body:
        raise invalid((["body"], "empty: send the model file itself as the request body"))
    settings = get_settings()
    try:
        fmt = uploads.model_format(body)
    except ValueError as e:
        raise invalid((["body"], str(e))) from None
    if fmt == "torchscript":
        check_torchscript(user, {"model_upload": "upload.pt"}, ["body"])
    owner = user.id if user is not None else None
    with session_scope() as s:
        if user is not None:
            lock_user(s, user)
        uploads.prune(s, keep_s=settings.upload_keep_s, owner_id=owner, everyone=False)
        cap, used = settings.max_upload_mb_per_user << 20, uploads.used_bytes(s, owner)
        if user is not None and used + len(body) > cap:
            raise Refused(
                413,
                f"{user.name} has {used >> 20} MiB of uploaded models; this one ({len(body) >> 20} MiB)"
                f" would pass the allowance of {cap >> 20} MiB per user (GATLAB_MAX_UPLOAD_MB_PER_USER)."
                " Uploads no run uses are removed after GATLAB_UPLOAD_KEEP_S; delete runs you no longer need",
            )
        try:
            out = uploads.store(body)
        except uploads.StorageFull as e:
            raise Refused(
                507, f"{e.strerror}; nothing was kept. Ask the lab's admin to free disk space"
            ) from None
        uploads.record(s, name=out["upload"], size=len(body), owner_id=owner)
    return out
