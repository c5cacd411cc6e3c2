"""FastAPI dependencies and their `Annotated` aliases (as in the FastAPI full-stack template):
a route says `s: SessionDep, user: CurrentUser, run: RunDep` and gets a session, the signed-in
user and the run of its path."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request
from sqlalchemy.orm import Session

from labcore import auth
from labcore.config import get_settings
from labcore.db import get_session
from labcore.models import Run, User

SessionDep = Annotated[Session, Depends(get_session)]
# Ids are 32-bit in the database: a larger one is a 422, never a driver overflow (500).
RunId = Annotated[int, Path(ge=1, le=2**31 - 1)]
BEARER = {"WWW-Authenticate": "Bearer"}


def current_user(request: Request, s: SessionDep) -> User | None:
    """The signed-in user from `Authorization: Bearer <token>` or the session cookie; None if neither
    (and always None with auth off)."""
    if not get_settings().auth:
        return None
    header = request.headers.get("authorization", "")
    if header:
        scheme, _, secret = header.partition(" ")
        found = auth.user_for_token(s, secret.strip()) if scheme.lower() == "bearer" else None
        if found is None:
            raise HTTPException(401, detail="invalid or revoked token", headers=BEARER)
        s.commit()
        return found[0]
    sid = request.cookies.get(auth.COOKIE)
    return auth.user_for_session(s, sid) if sid else None


MaybeUser = Annotated[User | None, Depends(current_user)]


def require_user(user: MaybeUser) -> User | None:
    """Every API route but health and sign-in: a user when auth is on; None (anyone) when it is off."""
    if user is None and get_settings().auth:
        raise HTTPException(
            401, detail="sign in: send 'Authorization: Bearer <token>' or use the dashboard", headers=BEARER
        )
    return user


CurrentUser = Annotated[User | None, Depends(require_user)]


def run_or_404(run_id: RunId, s: SessionDep) -> Run:
    run = s.get(Run, run_id)
    if run is None:
        raise HTTPException(404, detail=f"run {run_id} not found")
    return run


RunDep = Annotated[Run, Depends(run_or_404)]
