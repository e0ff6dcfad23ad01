"""What every route uses: the services, thread pools for blocking use cases, the JSON body,
the session cookie, the cross-site check and the ``authenticated`` wrapper."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ctm_adapters.bootstrap import Services
from ctm_core.errors import CrossSiteRequest, CtmError, TaskNotFound
from ctm_core.models import Principal
from ctm_http._errors import RequestError, ctm_error_handler, request_error_handler

T = TypeVar("T")
COOKIE = "session"
SECURE_COOKIE = "__Host-session"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


# --- request helpers ---------------------------------------------------------------------------


def services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


async def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a quick blocking use case (a read, a login) off the event loop."""
    return await anyio.to_thread.run_sync(partial(fn, *args, **kwargs))


SLOW_CALLS = 32
QUICK_CALLS = 16
"""Threads for quick calls (``call``: reads, logins, each request's authentication) instead of
anyio's default 40: more only queue for the GIL and SQLite, and each holds a stack and malloc
memory (benchmarks/bench_serve_memory.py: ~38 threads at most under load.py instead of ~76)."""


async def call_login(request: Request, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a use case that checks a password (argon2id: ~50 ms of one core) with threads of
    their own, as many as ``settings.login_checks`` (the cores): logins run in parallel, and
    a storm of them queues here, holding no thread that reads and other requests need."""
    limiter: anyio.CapacityLimiter = request.app.state.login_limiter
    return await anyio.to_thread.run_sync(partial(fn, *args, **kwargs), limiter=limiter)


def client_of(request: Request) -> str:
    """The client's address as the server sees it (the TCP peer: behind a proxy, the
    proxy's; docs/operations.md)."""
    return request.client.host if request.client else "unknown"


def session_token(request: Request) -> str | None:
    # Only the name in use is read: with __Host-session, a plain ``session`` cookie tossed in
    # by another port or a subdomain is ignored.
    return request.cookies.get(cookie_name(services(request).settings.secure_cookies))


def task_id_of(request: Request) -> int:
    """The ``{task_id:int}`` of the path: digits only (so /api/tasks/stats is never an id);
    a huge one exists nowhere (``TaskNotFound``, not an overflow in SQLite)."""
    value: int = request.path_params["task_id"]
    if value >= 2**63:
        raise TaskNotFound(value)
    return value


async def call_slow(request: Request, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a use case that may take long (conda, pip, stopping a run) with threads of its own
    budget, so that however many are waiting, reads and logins still get a thread."""
    limiter: anyio.CapacityLimiter = request.app.state.slow_limiter
    return await anyio.to_thread.run_sync(partial(fn, *args, **kwargs), limiter=limiter)


async def read_json(request: Request, *, required: bool = True) -> dict[str, Any]:
    """The request body as a JSON object, or a 400/413/415 ``RequestError``."""
    limit = services(request).settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, "Request body too large", f"At most {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, "Request body too large", f"At most {limit} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        if not required:
            return {}
        raise RequestError(400, "Request body must be a JSON object", "The body is empty")
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise RequestError(
            415,
            "Request body must be sent as application/json",
            f"Content-Type was {ctype or 'missing'!r}",
        )
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise RequestError(
            400, "Request body must be a JSON object", f"Invalid JSON: {exc}"[:300]
        ) from None
    if not isinstance(data, dict):
        raise RequestError(
            400, "Request body must be a JSON object", f"Got a JSON {type(data).__name__}"
        )
    try:  # JSON admits lone surrogates ("\ud800"), which no file, database or tool takes
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise RequestError(
            400, "Request body must be a JSON object", "Strings must be valid Unicode text"
        ) from None
    return data


def cookie_name(secure: bool) -> str:
    """``__Host-session`` over HTTPS: browsers take it only with Secure, Path=/ and no Domain,
    so no other port, scheme or subdomain can set it; ``session`` otherwise (the contract's)."""
    return SECURE_COOKIE if secure else COOKIE


def cookie_header(token: str, max_age: int, secure: bool) -> str:
    parts = [
        f"{cookie_name(secure)}={token}",
        "Path=/",
        "HttpOnly",
        "SameSite=Lax",
        f"Max-Age={max_age}",
    ]
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


def set_session_cookie(response: Response, request: Request, token: str) -> None:
    s = services(request).settings
    max_age = int(s.session_idle_minutes * 60)
    response.headers.append("set-cookie", cookie_header(token, max_age, s.secure_cookies))


def check_same_site(request: Request) -> None:
    """Refuse a state-changing request that a browser marks as cross-site."""
    if request.method in SAFE_METHODS:
        return
    if request.headers.get("sec-fetch-site", "").lower() == "cross-site":
        raise CrossSiteRequest()
    origin = request.headers.get("origin")
    if origin is not None:
        host = request.headers.get("host", "")
        if origin.lower() not in {f"http://{host}".lower(), f"https://{host}".lower()}:
            raise CrossSiteRequest()


Handler = Callable[[Request, Principal], Awaitable[Response]]


def bearer_token(request: Request) -> str | None:
    """The API token of an ``Authorization: Bearer <token>`` header, else None."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


def authenticated(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Require a valid session or API token and hand the caller to the route. A session is
    renewed (its cookie set again); a bearer request needs no cross-site check (a browser
    never adds the header by itself) and gets no cookie."""

    async def route(request: Request) -> Response:
        svc = services(request)
        bearer = bearer_token(request)
        if bearer is not None:
            principal = await call(svc.tokens.authenticate, bearer, client_of(request))
            return await _answer(handler, request, principal)
        check_same_site(request)
        token = session_token(request)
        principal = await call(svc.auth.authenticate, token, client_of(request))
        response = await _answer(handler, request, principal)
        assert token is not None
        set_session_cookie(response, request, token)
        return response

    route.__name__ = handler.__name__
    route.__module__ = handler.__module__
    return route


async def _answer(handler: Handler, request: Request, principal: Principal) -> Response:
    try:
        return await handler(request, principal)
    except CtmError as exc:  # an error answer renews the session too
        return await ctm_error_handler(request, exc)
    except RequestError as exc:
        return await request_error_handler(request, exc)


def ok(body: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status)
