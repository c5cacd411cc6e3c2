from __future__ import annotations

from fastapi import Depends, HTTPException
from sqlalchemy.orm import Session

from backend.db import get_session
from backend.models import Run


def run_or_404(run_id: int, s: Session = Depends(get_session)) -> Run:
    run = s.get(Run, run_id)
    if run is None:
        raise HTTPException(404, detail=f"run {run_id} not found")
    return run
