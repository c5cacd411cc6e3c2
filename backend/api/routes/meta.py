from __future__ import annotations

from pathlib import Path

import yaml
from fastapi import APIRouter, Depends
from sqlalchemy import text

from backend.api.deps import require_user
from labcore.config import get_settings
from labcore.db import engine
from labcore.methods import methods_table
from labcore.run_config import run_config_schema

router = APIRouter(prefix="/api", tags=["meta"])


@router.get("/health")
def health() -> dict:
    with engine().connect() as c:
        c.execute(text("select 1"))
    return {"status": "ok", "database": engine().dialect.name, "auth": get_settings().auth}


@router.get("/methods", dependencies=[Depends(require_user)])
def methods() -> dict:
    """Scenarios, methods and knobs with defaults, and the run config's JSON schema for forms."""
    return {"methods": methods_table(), "config_schema": run_config_schema()}


EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


@router.get("/examples", dependencies=[Depends(require_user)])
def examples() -> list[dict]:
    """The shipped example configs, as presets for the launch form."""
    return [
        {"name": p.stem, "config": yaml.safe_load(p.read_text())} for p in sorted(EXAMPLES.glob("*.yaml"))
    ]
