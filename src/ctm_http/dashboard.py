"""The web dashboard: static files shipped inside the package, served at ``/``.

The page and its files hold no data and are public; everything the dashboard shows comes
from the JSON API, which enforces the session. The HTML carries a strict
Content-Security-Policy: scripts, styles, images and requests from this origin only, no
inline script or style, no framing.
"""

from __future__ import annotations

from importlib.resources import files

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "font-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def _index_html() -> bytes:
    return files("ctm_http").joinpath("static", "index.html").read_bytes()


async def index(request: Request) -> Response:
    headers = {
        **SECURITY_HEADERS,
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "Cache-Control": "no-cache",
    }
    return Response(_index_html(), media_type="text/html; charset=utf-8", headers=headers)


class _StaticFiles(StaticFiles):
    """StaticFiles with ``nosniff`` and revalidation, so a new release shows at once."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        response.headers.setdefault("Cache-Control", "no-cache")
        return response


def routes() -> list[BaseRoute]:
    return [
        Route("/", index, methods=["GET"]),
        Mount("/static", app=_StaticFiles(packages=[("ctm_http", "static")]), name="static"),
    ]
