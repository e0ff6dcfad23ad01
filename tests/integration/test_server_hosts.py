"""The Host check over a real ``ctm serve`` (uvicorn): DNS rebinding is refused, loopback and
configured names work."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.integration.conftest import ADMIN_PASSWORD, Server

LOGIN = {"username": "admin", "password": ADMIN_PASSWORD}


def test_a_rebound_host_is_refused_and_loopback_names_work(server: Server) -> None:
    """Host evil.example:PORT with its Origin: 400 JSON; Host localhost:PORT logs in."""
    port = server.port
    with server.client() as c:
        evil = f"evil.example:{port}"
        r = c.post("/login", json=LOGIN, headers={"host": evil, "origin": f"http://{evil}"})
        assert r.status_code == 400
        assert r.json()["message"] == "Invalid Host header"
        assert "set-cookie" not in r.headers
        assert c.get("/openapi.json", headers={"host": evil}).status_code == 400
        local = f"localhost:{port}"
        r = c.post("/login", json=LOGIN, headers={"host": local, "origin": f"http://{local}"})
        assert r.status_code == 200, r.text


def test_configured_names_work(tmp_path: Path) -> None:
    """CTM_ALLOWED_HOSTS=ctm.example.org: that Host works, localhost is refused."""
    srv = Server(tmp_path / "data", extra_env={"CTM_ALLOWED_HOSTS": "ctm.example.org"})
    srv.start()  # its readiness probe (Host 127.0.0.1) gets a 400: an answer all the same
    try:
        with httpx.Client(base_url=srv.base, timeout=60.0) as c:
            named = f"ctm.example.org:{srv.port}"
            r = c.post("/login", json=LOGIN, headers={"host": named, "origin": f"http://{named}"})
            assert r.status_code == 200, r.text
            assert c.get("/api/me", headers={"host": named}).status_code == 200
            r = c.get("/openapi.json", headers={"host": f"localhost:{srv.port}"})
            assert r.status_code == 400
    finally:
        srv.stop()
