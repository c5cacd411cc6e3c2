"""Models uploaded for evaluation (POST /api/models): stored once, named by the SHA-256 of their
bytes, in the shared runs directory so that every worker reads them. The format is read from the
bytes; nothing is unpickled here, and the worker loads them as TorchScript or safetensors only."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
import zipfile
from pathlib import Path

from backend.config import get_settings


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


def model_format(body: bytes) -> str:
    """'torchscript' or 'safetensors', read from the bytes; ValueError saying why it is neither."""
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
    if 2 <= size <= len(body) - 8:
        try:
            if isinstance(json.loads(body[8 : 8 + size]), dict):
                return "safetensors"
        except ValueError:
            pass
    raise ValueError("neither TorchScript (a zip archive, as `gatlab export` writes) nor safetensors weights")


def store(body: bytes) -> dict:
    """Keep an uploaded model (once per content); its name, format and size."""
    fmt = model_format(body)
    name = f"{hashlib.sha256(body).hexdigest()}.{'safetensors' if fmt == 'safetensors' else 'pt'}"
    path = upload_path(name)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".part")
        with os.fdopen(fd, "wb") as f:
            f.write(body)
        os.replace(tmp, path)  # a reader never sees half a file
    return {"upload": name, "format": fmt, "bytes": len(body)}
