"""The FastAPI app factory."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from labcore.config import get_settings
from labcore.db import session_scope
from labcore.errors import Refused
from labcore.models import User
from labcore.run_config import run_config_schema

from .api.routes import auth, meta, runs, studies
from .guard import SameOrigin

FRONTEND = Path(__file__).resolve().parents[1] / "frontend"


@asynccontextmanager
async def _startup_line(app: FastAPI):
    """Say on start-up whether this server needs sign-in, and how to make its first user."""
    log = logging.getLogger("uvicorn.error")
    if not get_settings().auth:
        log.info("GAT Lab API: auth off (GATLAB_AUTH=false): anyone who reaches this port can use it")
    else:
        try:
            with session_scope() as s:
                users = s.scalar(select(func.count()).select_from(User))
        except SQLAlchemyError as e:
            log.error(
                "GAT Lab API: auth on, but the users table cannot be read (run `gatlab db upgrade`): %s", e
            )
            users = 0
        log.info(
            "GAT Lab API: auth on, %d user(s)%s",
            users,
            "" if users else ": create the first admin with `gatlab setup NAME`",
        )
    yield


def create_app() -> FastAPI:
    app = FastAPI(
        title="GAT Lab",
        version="0.1.0",
        docs_url="/docs",
        openapi_url="/openapi.json",
        lifespan=_startup_line,
    )
    app.include_router(meta.router)
    app.include_router(auth.router)
    app.include_router(runs.router)
    app.include_router(studies.router)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Refused, _refused)
    app.mount("/", StaticFiles(directory=FRONTEND, html=True), name="frontend")  # last: API routes win
    app.add_middleware(BodyLimit, max_bytes=get_settings().max_request_bytes)
    app.add_middleware(
        SameOrigin, allowed_hosts=get_settings().host_names
    )  # outermost: first to see a request
    app.openapi = lambda: _openapi_with_run_config(app)
    return app


def _openapi_with_run_config(app: FastAPI) -> dict:
    """The OpenAPI document with the real run config: the routes take `config` as a plain object (so
    their 422s can name `config.<field>`), but clients and fuzzers get the discriminated union of
    every scenario:method model, each knob with its type, default, bounds and description."""
    if app.openapi_schema is None:
        doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
        config = run_config_schema(ref_template="#/components/schemas/{model}")
        components = doc.setdefault("components", {}).setdefault("schemas", {})
        components.update(config.pop("$defs", {}))
        components["RunConfig"] = config
        for body in ("RunCreate", "SweepCreate"):
            components[body]["properties"]["config"] = {"$ref": "#/components/schemas/RunConfig"}
        app.openapi_schema = doc
    return app.openapi_schema


class BodyLimit:
    """413 for a request body over `max_bytes`, by its Content-Length or, for a chunked upload, as
    it arrives (read here, at most `max_bytes`, then handed on): a shared server never buffers an
    unbounded upload."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return await self._reject(send, 400, "invalid Content-Length")
            if int(declared) > self.max_bytes:
                return await self._reject(send, 413, self._too_large())
            return await self.app(scope, receive, send)
        if b"chunked" not in headers.get(b"transfer-encoding", b""):
            return await self.app(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await self._reject(send, 413, self._too_large())
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    def _too_large(self) -> str:
        return f"request body over {self.max_bytes} bytes (GATLAB_MAX_REQUEST_BYTES)"

    async def _reject(self, send, status: int, detail: str):
        await JSONResponse(status_code=status, content={"detail": detail})({"type": "http"}, None, send)


async def _refused(request: Request, exc: Refused) -> JSONResponse:
    """What a service refused: its status, and its detail in FastAPI's shape (a string, or the fields)."""
    return JSONResponse(status_code=exc.http_status, content={"detail": exc.detail})


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming the field, without echoing large inputs back."""
    detail = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()]
    return JSONResponse(status_code=422, content={"detail": detail})


app = create_app()
