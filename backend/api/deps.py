from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Path
from sqlalchemy.orm import Session

from backend.db import get_session
from backend.models import Run

# Ids are 32-bit in the database: a larger one is a 422, never a driver overflow (500).
RunId = Annotated[int, Path(ge=1, le=2**31 - 1)]


def run_or_404(run_id: RunId, s: Session = Depends(get_session)) -> Run:
    run = s.get(Run, run_id)
    if run is None:
        raise HTTPException(404, detail=f"run {run_id} not found")
    return run
