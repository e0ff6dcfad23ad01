"""The web dashboard: static files shipped inside the package, served at ``/``."""

from __future__ import annotations

from starlette.routing import BaseRoute


def routes() -> list[BaseRoute]:
    return []
