"""What the services refuse, and why: one exception the HTTP layer turns into its status and detail.

The detail is FastAPI's: a string, or for bad input a list of {loc, msg, type}, each naming its field.
"""

from __future__ import annotations

from typing import Any

Loc = list[str | int]


class Refused(Exception):
    """A request the lab will not carry out: `http_status` is the status the API answers with."""

    def __init__(self, status: int, detail: Any):
        super().__init__(detail)
        self.http_status, self.detail = status, detail


def invalid(*errors: tuple[Loc, str]) -> Refused:
    """A 422 naming each field: `raise invalid((["config", "train", "epochs"], "at most 100"), ...)`."""
    return Refused(422, [{"loc": loc, "msg": msg, "type": "value_error"} for loc, msg in errors])


def conflict(what: str) -> Refused:
    return Refused(409, what)


def check_owner(owner_id: int | None, user, what: str, action: str) -> None:
    """Only the owner of a run or study, or an admin, may change it (auth off, `user` None: anyone)."""
    if user is None or user.is_admin or owner_id == user.id:
        return
    raise Refused(403, f"{what} belongs to another user: only its owner or an admin may {action} it")
