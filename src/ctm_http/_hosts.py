"""The Host check: a request whose ``Host`` header names a host the server does not answer to
gets 400 before any route runs, so a DNS-rebinding page (evil.example resolving to 127.0.0.1)
cannot read or drive a ctm on the loopback. Starlette's ``TrustedHostMiddleware`` answers in
plain text; this one answers in the contract's JSON error shape."""

from __future__ import annotations

from collections.abc import Iterable

from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from ctm_adapters.settings import Settings

LOOPBACK = ("localhost", "127.0.0.1", "[::1]")
INVALID_HOST = "Invalid Host header"
ANY = "*"


def host_name(value: str) -> str:
    """The host part of a ``Host`` header or of a configured name, lower case, without the
    port; an IPv6 address in brackets (``[::1]:8000`` and ``::1`` both give ``[::1]``)."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[: end + 1] if end != -1 else value
    if value.count(":") > 1:  # a bare IPv6 address (a bind address such as ``::1``)
        return f"[{value}]"
    return value.partition(":")[0]


def allowed_hosts(settings: Settings) -> frozenset[str]:
    """``CTM_ALLOWED_HOSTS``, or else the bind address and the loopback names."""
    names = settings.allowed_hosts
    if names is None:
        names = (settings.host, *LOOPBACK)
    return frozenset(host_name(n) for n in names)


class HostCheck:
    """ASGI middleware: HTTP requests for a host outside ``allowed`` get 400 JSON (``*``
    allows any)."""

    def __init__(self, app: ASGIApp, allowed: Iterable[str]) -> None:
        self.app = app
        self.allowed = frozenset(allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or ANY in self.allowed:
            await self.app(scope, receive, send)
            return
        raw = Headers(scope=scope).get("host")
        host = host_name(raw) if raw else ""
        if host and host in self.allowed:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":  # no route takes one; refuse it all the same
            await send({"type": "websocket.close", "code": 1008})
            return
        shown = f"Host {host[:100]!r} is" if host else "A request without a Host header is"
        body = {
            "success": False,
            "message": INVALID_HOST,
            "error": f"{shown} not served here; the server's CTM_ALLOWED_HOSTS lists the "
            "names it answers to",
        }
        await JSONResponse(body, status_code=400)(scope, receive, send)


def middleware(settings: Settings) -> Middleware:
    """The Host check for ``create_app``, over the names ``settings`` allow."""
    return Middleware(HostCheck, allowed=allowed_hosts(settings))
