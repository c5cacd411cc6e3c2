"""Models uploaded for evaluation (POST /api/models): stored once, named by the SHA-256 of their
bytes, in the shared runs directory so that every worker reads them. The format is read from the
bytes; nothing is unpickled here, and the worker loads them as TorchScript or safetensors only."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import tempfile
import zipfile
from datetime import timedelta
from pathlib import Path

import safetensors
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from labcore.config import get_settings
from labcore.models import Run, Upload, now


def uploads_path() -> Path:
    return get_settings().runs_path / "uploads"


NAME = re.compile(r"[0-9a-f]{64}\.(pt|safetensors)")


def upload_path(name: str) -> Path:
    """Where the upload `name` (what `store` answered) lives; checked again at use, not only by the
    config's pattern at submit: nothing else can name a file here."""
    if not NAME.fullmatch(name):
        raise ValueError(f"eval.model_upload: {name!r} is not an upload's name")
    return uploads_path() / name


def is_torchscript(eval_cfg: dict) -> bool:
    """Whether a config's model from elsewhere is TorchScript (a program) rather than safetensors
    weights: the worker reads a file as safetensors exactly when its name ends so."""
    name = eval_cfg.get("model_upload") or eval_cfg.get("model_path")
    return name is not None and not str(name).endswith(".safetensors")


class StorageFull(OSError):
    """The disk (or a file size limit) refused the write; nothing partial was left behind."""


STORAGE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def model_format(body: bytes) -> str:
    """'torchscript' or 'safetensors', read from the bytes; ValueError saying why it is neither.
    Safetensors are checked whole (every tensor's dtype, shape and bytes, the file covered exactly,
    and the lab's own metadata when present); the worker then checks them against the architecture."""
    if body[:4] == b"PK\x03\x04":
        try:
            names = zipfile.ZipFile(io.BytesIO(body)).namelist()  # the directory only: nothing unpacked
        except zipfile.BadZipFile:
            raise ValueError("a damaged zip archive") from None
        if any("/code/" in n for n in names):
            return "torchscript"
        raise ValueError(
            "a zip archive without TorchScript code: a pickled model (torch.save)? Loading one would run"
            " its code; export TorchScript (`gatlab export`, torch.jit.script/trace) or safetensors weights"
        )
    size = int.from_bytes(body[:8], "little") if len(body) >= 8 else 0
    header = None
    if 2 <= size <= len(body) - 8:
        try:
            header = json.loads(body[8 : 8 + size])
        except ValueError:
            pass
    if not isinstance(header, dict):
        raise ValueError(
            "neither TorchScript (a zip archive, as `gatlab export` writes) nor safetensors weights"
        )
    try:
        tensors = safetensors.deserialize(body)
    except safetensors.SafetensorError as e:
        raise ValueError(f"damaged safetensors weights: {e}") from None
    if not tensors:
        raise ValueError("safetensors weights without a tensor")
    meta = header.get("__metadata__") or {}
    if "gatlab" in meta:
        try:
            spec = json.loads(meta["gatlab"])
            ok = isinstance(spec, dict) and isinstance(spec.get("model_config"), dict)
        except ValueError:
            ok = False
        if not ok:
            raise ValueError("safetensors weights whose 'gatlab' metadata is not what `gatlab export` writes")
    return "safetensors"


def store(body: bytes) -> dict:
    """Keep an uploaded model (once per content); its name, format and size. A full disk is a
    StorageFull, with no partial file left."""
    fmt = model_format(body)
    name = f"{hashlib.sha256(body).hexdigest()}.{'safetensors' if fmt == 'safetensors' else 'pt'}"
    path = upload_path(name)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(body)
            os.replace(tmp, path)  # a reader never sees half a file
        except OSError as e:
            Path(tmp).unlink(missing_ok=True)
            if e.errno in STORAGE_ERRORS:
                raise StorageFull(e.errno, f"the server could not store the upload: {e.strerror}") from None
            raise
    return {"upload": name, "format": fmt, "bytes": len(body)}


def referenced(s: Session) -> set[str]:
    """Uploads some run still names (an evaluation of a model from elsewhere)."""
    configs = s.scalars(select(Run.config).where(Run.kind == "eval", Run.parent_id.is_(None))).all()
    return {c["eval"].get("model_upload") for c in configs if c and c.get("eval")} - {None}


def prune(s: Session, *, keep_s: float, owner_id: int | None = None, everyone: bool = True) -> list[str]:
    """Forget uploads older than `keep_s` that no run references (one user's, or everyone's), and
    delete each file no upload record names any more. The files removed."""
    cutoff = now() - timedelta(seconds=keep_s)
    used = referenced(s)
    q = select(Upload).where(Upload.created_at < cutoff)
    if not everyone:
        q = q.where(Upload.owner_id.is_(None) if owner_id is None else Upload.owner_id == owner_id)
    gone = [u for u in s.scalars(q) if u.name not in used]
    for u in gone:
        s.delete(u)
    s.flush()
    removed = []
    for name in sorted({u.name for u in gone}):
        if s.scalar(select(func.count()).select_from(Upload).where(Upload.name == name)) == 0:
            upload_path(name).unlink(missing_ok=True)
            removed.append(name)
    return removed


def used_bytes(s: Session, owner_id: int | None) -> int:
    where = Upload.owner_id.is_(None) if owner_id is None else Upload.owner_id == owner_id
    return int(s.scalar(select(func.coalesce(func.sum(Upload.bytes), 0)).where(where)))  # PostgreSQL: numeric


def record(s: Session, *, name: str, size: int, owner_id: int | None) -> None:
    """The uploader's record of a file (again: its time renewed, counted once)."""
    where = Upload.owner_id.is_(None) if owner_id is None else Upload.owner_id == owner_id
    row = s.scalar(select(Upload).where(Upload.name == name, where))
    if row is None:
        s.add(Upload(name=name, owner_id=owner_id, bytes=size))
    else:
        row.created_at = now()
