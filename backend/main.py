"""The FastAPI app factory."""
from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from .api.routes import meta, runs


FRONTEND = Path(__file__).resolve().parents[1] / "frontend"


def create_app() -> FastAPI:
    app = FastAPI(title="GAT Lab", version="0.1.0", docs_url="/docs", openapi_url="/openapi.json")
    app.include_router(meta.router)
    app.include_router(runs.router)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.mount("/", StaticFiles(directory=FRONTEND, html=True), name="frontend")  # last: API routes win
    return app


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming the field, without echoing large inputs back."""
    detail = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()]
    return JSONResponse(status_code=422, content={"detail": detail})


app = create_app()
