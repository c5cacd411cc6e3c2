"""Users, API tokens and browser sessions (docs/design.md section 7).

Tokens and session ids are 32 random bytes; the database keeps only their SHA-256 (a fast hash is
right for high-entropy secrets), so a leaked database row signs nobody in. Passwords, which are low
entropy, use scrypt from the standard library. A token is shown once, when it is created.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from .config import get_settings
from .models import ApiToken, User, WebSession, aware, now

TOKEN_PREFIX = "gat_"
COOKIE = "gatlab_session"
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}


class AuthError(ValueError):
    """A user-management error (unknown user, name taken, ...): a CLI message or a 4xx."""


def sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, **_SCRYPT)
    return f"scrypt${salt.hex()}${digest.hex()}"


# Checked against when the user is unknown or has no password, so every refusal costs one scrypt:
# the answer's timing does not tell which user names exist.
_NOBODY = "scrypt$" + "00" * 16 + "$" + "00" * 32


def verify_password(password: str, stored: str | None) -> bool:
    real = bool(stored) and stored.startswith("scrypt$")
    _, salt, digest = (stored if real else _NOBODY).split("$")
    got = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), **_SCRYPT)
    return hmac.compare_digest(got.hex(), digest) and real


def set_password(s: Session, *, user: User, password: str) -> None:
    """A new password ends every browser session of the user (a stolen session dies with the old password)."""
    user.password_hash = hash_password(password)
    s.execute(delete(WebSession).where(WebSession.user_id == user.id))


# --- user management (the CLI and the API call these) ---------------------------------------------


def create_user(s: Session, *, name: str, admin: bool = False, password: str | None = None) -> User:
    if not name or len(name) > 64 or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise AuthError("a user name is 1-64 letters, digits, '-', '_' or '.'")
    if s.scalar(select(User).where(User.name == name)) is not None:
        raise AuthError(f"user {name!r} already exists")
    user = User(name=name, is_admin=admin, password_hash=hash_password(password) if password else None)
    s.add(user)
    s.flush()
    return user


def get_user(s: Session, name: str) -> User:
    user = s.scalar(select(User).where(User.name == name))
    if user is None:
        raise AuthError(f"no user named {name!r}")
    return user


def create_token(s: Session, *, user: User, label: str = "") -> tuple[ApiToken, str]:
    """A new token for `user`: returns the row and the secret, which is never stored."""
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(user_id=user.id, label=label[:100], prefix=secret[:12], token_hash=sha256(secret))
    s.add(row)
    s.flush()
    return row, secret


def revoke_token(s: Session, *, token_id: int, by: User | None = None) -> ApiToken:
    """Revoke a token (its sessions end with it). `by`: only its owner or an admin may; None: the CLI."""
    row = s.get(ApiToken, token_id)
    if row is None or (by is not None and not by.is_admin and row.user_id != by.id):
        raise AuthError(f"no token {token_id}")
    if row.revoked_at is None:
        row.revoked_at = now()
    for sess in s.scalars(select(WebSession).where(WebSession.token_id == row.id)):
        s.delete(sess)
    return row


def user_for_token(s: Session, secret: str) -> tuple[User, ApiToken] | None:
    row = s.scalar(select(ApiToken).where(ApiToken.token_hash == sha256(secret)))
    if row is None or row.revoked_at is not None:
        return None
    user = s.get(User, row.user_id)
    if user is None or user.disabled:
        return None
    stamp = now()
    if row.last_used_at is None or aware(row.last_used_at) < stamp - timedelta(minutes=1):
        row.last_used_at = stamp  # at most once a minute: reads stay reads
    return user, row


def open_session(s: Session, *, user: User, token: ApiToken | None) -> str:
    sid = secrets.token_urlsafe(32)
    s.add(
        WebSession(
            user_id=user.id,
            token_id=token.id if token else None,
            session_hash=sha256(sid),
            expires_at=now() + timedelta(hours=get_settings().session_hours),
        )
    )
    return sid


def user_for_session(s: Session, sid: str) -> User | None:
    row = s.scalar(select(WebSession).where(WebSession.session_hash == sha256(sid)))
    if row is None or aware(row.expires_at) < now():
        return None
    user = s.get(User, row.user_id)
    return None if user is None or user.disabled else user


def close_session(s: Session, sid: str) -> None:
    row = s.scalar(select(WebSession).where(WebSession.session_hash == sha256(sid)))
    if row is not None:
        s.delete(row)
