"""Browser-facing safety (docs/design.md section 7): the Host allow-list against DNS rebinding, state-changing
requests only from the app's own origin, and headers that keep the dashboard out of other pages.

A request that carries `Authorization` is not a cross-site risk: a page on another origin cannot
add that header without a CORS preflight, which this app never grants. Every other state-changing
request (a signed-in cookie, or anything at all in auth-off embedded mode) must come from this
origin: `Sec-Fetch-Site` same-origin (or none: typed by the user), or else an `Origin` whose host
is this request's `Host`. Clients that send neither (curl, the CLI) are not browsers."""

from __future__ import annotations

from urllib.parse import urlsplit

from fastapi.responses import JSONResponse

SAFE_METHODS = {b"GET", b"HEAD", b"OPTIONS"}
# Scripts only from this origin; inline style attributes stay allowed (progress bars, chart sizes).
CSP = (
    b"default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; "
    b"base-uri 'none'; form-action 'self'"
)
# FastAPI's /docs page is Swagger UI from a CDN with an inline script: it keeps only frame-ancestors.
DOCS_CSP = b"frame-ancestors 'none'"
HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
]


def host_name(host: str) -> str:
    """`example.org:8000` -> `example.org`; `[::1]:8000` -> `::1`."""
    return (urlsplit(f"//{host}").hostname or "").lower()


def refusal(headers: dict[bytes, bytes], method: bytes, allowed: frozenset[str] | None) -> str | None:
    """Why this request is refused, or None."""
    host = headers.get(b"host", b"").decode("latin-1")
    if allowed is not None and host_name(host) not in allowed:
        return f"Host {host!r} is not one this server answers to (GATLAB_ALLOWED_HOSTS)"
    if method in SAFE_METHODS or b"authorization" in headers:
        return None
    site = headers.get(b"sec-fetch-site")
    if site is not None:
        return (
            None
            if site in (b"same-origin", b"none")
            else f"cross-site request refused (Sec-Fetch-Site: {site.decode()})"
        )
    origin = headers.get(b"origin")
    if origin is not None and urlsplit(origin.decode("latin-1")).netloc.lower() != host.lower():
        return f"cross-origin request refused (Origin {origin.decode('latin-1')!r} is not this server)"
    return None


class SameOrigin:
    """ASGI middleware: 403 (400 for a Host) before any route runs; security headers on every answer."""

    def __init__(self, app, allowed_hosts: frozenset[str] | None):
        self.app, self.allowed = app, allowed_hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        why = refusal(dict(scope["headers"]), scope["method"].encode(), self.allowed)

        csp = DOCS_CSP if scope["path"] in ("/docs", "/redoc") else CSP

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", []),
                    (b"content-security-policy", csp),
                    *HEADERS,
                ]
            await send(message)

        if why is not None:
            status = 400 if why.startswith("Host") else 403
            return await JSONResponse(status_code=status, content={"detail": why})(
                scope, receive, send_with_headers
            )
        await self.app(scope, receive, send_with_headers)
