"""Sign-in for the dashboard (a session cookie, HttpOnly and SameSite) and a user's own API tokens."""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi import Path as FPath
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from backend.api.deps import BEARER, CurrentUser, MaybeUser, SessionDep
from labcore import auth
from labcore.config import get_settings
from labcore.models import ApiToken, User

router = APIRouter(prefix="/api", tags=["auth"])


class Login(BaseModel):
    """Either a token, or a user name and password."""

    model_config = ConfigDict(extra="forbid")
    token: str | None = Field(None, max_length=200)
    username: str | None = Field(None, max_length=64)
    password: str | None = Field(None, max_length=1000)


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str = Field("", max_length=100, pattern=r"^[^\x00]*$")


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    name: str
    is_admin: bool


def token_out(t: ApiToken) -> dict:
    """A token as listed: its prefix, never the secret or its hash."""
    return {
        "id": t.id,
        "label": t.label,
        "prefix": t.prefix,
        "created_at": t.created_at,
        "last_used_at": t.last_used_at,
        "revoked": t.revoked_at is not None,
    }


class FailedSignIns:
    """Failed sign-ins in a sliding window, per user name and client address together, and per client
    address (this API process's memory: the lab server runs one). Past a key's limit, sign-in is a
    429 until the oldest failure leaves the window, right password or not."""

    def __init__(self, window_s: float = 900.0):
        self.window_s, self.fails, self.lock = window_s, defaultdict(deque), threading.Lock()

    def _limit(self, key: str) -> int:
        settings = get_settings()
        return (
            settings.max_failed_sign_ins_user
            if key.startswith("user:")
            else settings.max_failed_sign_ins_address
        )

    def check(self, *keys: str) -> None:
        with self.lock:
            for key in keys:
                q = self.fails[key]
                while q and q[0] < time.monotonic() - self.window_s:
                    q.popleft()
                if len(q) >= self._limit(key):
                    wait = int(q[0] + self.window_s - time.monotonic()) + 1
                    raise HTTPException(
                        429,
                        detail=f"too many failed sign-ins for this {key.split(':')[0]}; "
                        f"try again in {wait} s",
                        headers={"Retry-After": str(wait)},
                    )

    def failed(self, *keys: str) -> None:
        with self.lock:
            for key in keys:
                self.fails[key].append(time.monotonic())


FAILED_SIGN_INS = FailedSignIns()


@router.get("/auth/me")
def me(user: MaybeUser) -> dict:
    """Whether this server needs sign-in, and who is signed in (null if nobody)."""
    return {"auth": get_settings().auth, "user": UserOut.model_validate(user).model_dump() if user else None}


@router.post("/auth/login")
def login(body: Login, request: Request, response: Response, s: SessionDep) -> dict:
    if not get_settings().auth:
        raise HTTPException(409, detail="auth is off on this server (embedded mode): no sign-in needed")
    token, address = None, request.client.host if request.client else "unknown"
    if body.token:
        FAILED_SIGN_INS.check(f"address:{address}")
        found = auth.user_for_token(s, body.token.strip())
        if found is None:
            FAILED_SIGN_INS.failed(f"address:{address}")
            raise HTTPException(401, detail="invalid or revoked token", headers=BEARER)
        user, token = found
    elif body.username and body.password:
        # The per-account limit counts per account *and* address: failures from elsewhere never lock
        # a user out of signing in from their own machine (the per-address limit still holds).
        keys = (f"user:{body.username}@{address}", f"address:{address}")
        FAILED_SIGN_INS.check(*keys)
        user = s.scalar(select(User).where(User.name == body.username))
        ok = auth.verify_password(
            body.password, user.password_hash if user else None
        )  # one scrypt either way
        if user is None or user.disabled or not ok:
            FAILED_SIGN_INS.failed(*keys)
            raise HTTPException(401, detail="wrong user name or password", headers=BEARER)
    else:
        raise HTTPException(401, detail="send a token, or a username and password", headers=BEARER)
    sid = auth.open_session(s, user=user, token=token)
    s.commit()
    settings = get_settings()
    response.set_cookie(
        auth.COOKIE,
        sid,
        max_age=int(settings.session_hours * 3600),
        httponly=True,
        samesite="strict",
        secure=settings.cookie_secure,
        path="/",
    )
    return {"user": UserOut.model_validate(user).model_dump()}


@router.post("/auth/logout", status_code=204)
def logout(request: Request, s: SessionDep, _: CurrentUser) -> Response:
    sid = request.cookies.get(auth.COOKIE)
    if sid:
        auth.close_session(s, sid)
        s.commit()
    response = Response(status_code=204)
    response.delete_cookie(auth.COOKIE, path="/", httponly=True, samesite="strict")
    return response


def _signed_in(user: CurrentUser) -> User:
    if user is None:
        raise HTTPException(409, detail="auth is off on this server (embedded mode): there are no users")
    return user


SignedIn = Annotated[User, Depends(_signed_in)]


@router.get("/tokens")
def list_tokens(user: SignedIn, s: SessionDep) -> list[dict]:
    return [
        token_out(t)
        for t in s.scalars(select(ApiToken).where(ApiToken.user_id == user.id).order_by(ApiToken.id))
    ]


@router.post("/tokens", status_code=201)
def create_token(body: TokenCreate, user: SignedIn, s: SessionDep) -> dict:
    """A new token for the signed-in user; the secret is in this response and never again."""
    row, secret = auth.create_token(s, user=user, label=body.label)
    s.commit()
    return {**token_out(row), "token": secret}


@router.delete("/tokens/{token_id}", status_code=204)
def revoke_token(
    token_id: Annotated[int, FPath(ge=1, le=2**31 - 1)], user: SignedIn, s: SessionDep
) -> Response:
    try:
        auth.revoke_token(s, token_id=token_id, by=user)
    except auth.AuthError as e:
        raise HTTPException(404, detail=str(e)) from e
    s.commit()
    return Response(status_code=204)
