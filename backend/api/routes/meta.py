from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import text

from backend.db import engine
from backend.methods import methods_table
from backend.schemas import run_config_schema

router = APIRouter(prefix="/api", tags=["meta"])


@router.get("/health")
def health() -> dict:
    with engine().connect() as c:
        c.execute(text("select 1"))
    return {"status": "ok", "database": engine().dialect.name}


@router.get("/methods")
def methods() -> dict:
    """Scenarios, methods and knobs with defaults, and the run config's JSON schema for forms."""
    return {"methods": methods_table(), "config_schema": run_config_schema()}
