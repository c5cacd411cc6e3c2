"""Studies (a design expanded into queued runs of one experiment, its progress, its report) and the
robustness leaderboard; the work is labcore.services.studies'."""

from __future__ import annotations

import csv
import io
import json
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Response
from fastapi import Path as FPath
from pydantic import BaseModel, ConfigDict, Field

from backend.api.deps import CurrentUser, SessionDep, require_user
from labcore.run_config import NO_NUL
from labcore.services import studies
from labcore.study import EXPORTS, StudyDesign, csv_cell

router = APIRouter(prefix="/api", tags=["studies"], dependencies=[Depends(require_user)])
StudyId = Annotated[int, FPath(ge=1, le=2**31 - 1)]
QText = Annotated[str | None, Query(max_length=200, pattern=NO_NUL)]
SUFFIX = {"md": "md", "latex": "tex", "csv": "csv", "json": "json"}
LEADERBOARD_COLUMNS = (
    "rank run_id name method dataset norm eps autoattack ci n clean flagged failed_checks".split()
)


class Extend(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seeds: list[Annotated[int, Field(ge=0, le=2**31 - 1)]] = Field(min_length=1, max_length=100)


@router.post("/studies", status_code=201)
def create_study(design: StudyDesign, user: CurrentUser, s: SessionDep) -> dict:
    """A study from its design (as `gatlab study run FILE` reads it): its runs are queued at once."""
    return studies.create(s, user, design)


@router.get("/studies")
def list_studies(s: SessionDep) -> list[dict]:
    return studies.listing(s)


@router.get("/studies/{study_id}")
def get_study(study_id: StudyId, s: SessionDep) -> dict:
    return studies.view(s, studies.get(s, study_id))


@router.post("/studies/{study_id}/extend")
def extend_study(study_id: StudyId, body: Extend, user: CurrentUser, s: SessionDep) -> dict:
    """More seeds: the new ones' runs are queued; finished runs stay as they are."""
    return studies.extend(s, user, study_id, body.seeds)


@router.post("/studies/{study_id}/retry")
def retry_study(study_id: StudyId, user: CurrentUser, s: SessionDep) -> dict:
    """The failed and cancelled runs again (new runs with the same key); nothing else is rerun."""
    return studies.retry(s, user, study_id)


@router.get("/studies/{study_id}/report")
def study_report(
    study_id: StudyId,
    s: SessionDep,
    format: Annotated[Literal["json", "md", "latex", "csv"], Query()] = "json",
) -> Response:
    """The study's table, computed from its runs as they finish: mean ± std over seeds with a 95 %
    interval, the best per column, a paired test against the baseline, failed checks per method."""
    design, rep = studies.study_report(s, study_id)
    fn, media = EXPORTS[format]
    disposition = f'attachment; filename="{design.name}.{SUFFIX[format]}"'
    return Response(
        fn(rep), media_type=media, headers={} if format == "json" else {"Content-Disposition": disposition}
    )


@router.get("/leaderboard")
def leaderboard(
    s: SessionDep,
    dataset: QText = None,
    norm: Literal["linf", "l2"] = "linf",
    eps: Annotated[float | None, Query(ge=0, le=100)] = None,
    panel: Literal["standard", "quick"] = "standard",
    experiment: QText = None,
    method: QText = None,
    format: Literal["json", "csv"] = "json",
) -> Response:
    """Every run judged by `panel` (standard: AutoAttack on every example), ranked by AutoAttack
    accuracy at `eps` (default: the panel's standard radius) with its interval, then clean accuracy.
    A run with a failed masking check is flagged and ranked after every unflagged one, never above (a
    check that only found one attack weaker than another leaves AutoAttack's number standing)."""
    filters = {"dataset": dataset, "method": method, "experiment": experiment}
    entries = studies.leaderboard(s, panel=panel, norm=norm, eps=eps, **filters)
    if format == "json":
        return Response(
            json.dumps({"panel": panel, "norm": norm, "entries": entries}), media_type="application/json"
        )
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(LEADERBOARD_COLUMNS)
    for e in entries:
        w.writerow(
            [
                csv_cell(";".join(map(str, e[c])) if isinstance(e[c], list) else e[c])
                for c in LEADERBOARD_COLUMNS
            ]
        )
    disposition = {"Content-Disposition": 'attachment; filename="gatlab-leaderboard.csv"'}
    return Response(buf.getvalue(), media_type="text/csv", headers=disposition)
