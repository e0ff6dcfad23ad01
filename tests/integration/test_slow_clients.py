"""Slow clients: half-sent requests neither starve ``ctm serve`` nor stay open."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import selectors
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import h11
import httpx
import psutil  # type: ignore[import-untyped,unused-ignore]
import pytest
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from ctm_http import _serve
from tests.integration.conftest import ADMIN_PASSWORD, Server, free_port

HALF_OPEN = 2000
PARTIAL_REQUEST = b"GET /api/me HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


class LimitedServer(Server):
    """``ctm serve`` started with the open files limit ``nofile`` = (soft, hard)."""

    def __init__(
        self, data_dir: Path, nofile: tuple[int, int], extra_env: dict[str, str] | None = None
    ) -> None:
        super().__init__(data_dir, extra_env)
        self.nofile = nofile

    def start(self, timeout: float = 30.0) -> None:
        env = {
            **os.environ,
            "CTM_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "CTM_BACKEND": "venv",
            "CTM_TIMEZONE": "UTC",
            **self.extra_env,
        }
        env.pop("CONDA_EXE", None)
        argv = [sys.executable, "-m", "ctm_http.cli", "serve", "--port", str(self.port)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*argv, "--data-dir", str(self.data_dir)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, self.nofile),
            )
        self.wait_up(timeout)

    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


@contextlib.contextmanager
def own_nofile_at_least(needed: int) -> Iterator[None]:
    """Raise this test process's soft file limit to ``needed`` for the block (skip if it can't)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        yield
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"needs {needed} open files, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def open_half_requests(port: int, count: int, into: list[socket.socket]) -> None:
    """Open ``count`` connections into ``into``, each sending half a request and then nothing.

    Up to 32 connects are under way at once, as a flood would be; the kernel's listen queue
    may overflow, and a dropped connect is retried by TCP after a second.
    """
    with selectors.DefaultSelector() as sel:
        started = 0
        while started < count or sel.get_map():
            while started < count and len(sel.get_map()) < 32:
                sock = socket.socket()
                into.append(sock)
                sock.setblocking(False)
                sock.connect_ex(("127.0.0.1", port))
                sel.register(sock, selectors.EVENT_WRITE)
                started += 1
            events = sel.select(timeout=10.0)
            assert events, "connects stalled for 10 s"
            for key, _ in events:
                ready = key.fileobj
                assert isinstance(ready, socket.socket)
                sel.unregister(ready)
                assert ready.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
                ready.send(PARTIAL_REQUEST)


def closed_by_server(
    socks: list[socket.socket], until: Callable[[int], bool], deadline: float
) -> int:
    """Wait until ``until(number closed by the server)`` or the deadline; return the number."""
    closed = 0
    with selectors.DefaultSelector() as sel:
        for each in socks:
            sel.register(each, selectors.EVENT_READ)
        while not until(closed) and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=max(0.0, deadline - time.monotonic())):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(4096)
                except ConnectionResetError:
                    data = b""
                except BlockingIOError:
                    continue
                assert data == b"", data  # no answer to half a request, only the close
                sel.unregister(sock)
                closed += 1
    return closed


def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def fresh_client_seconds(base: str) -> float:
    """Time a new client's ``GET /api/me`` (401 without a session) takes, at most 1 s."""
    started = time.monotonic()
    response = httpx.get(base + "/api/me", timeout=1.0)
    assert response.status_code == 401
    return time.monotonic() - started


@pytest.mark.slow
def test_half_sent_requests_do_not_starve_new_clients_and_are_closed(tmp_path: Path) -> None:
    """2,000 half-sent requests: a new client is served within 1 s; all are closed at the timeout.

    The server starts with systemd's soft limit of 1,024 open files (hard 4,096): it must raise
    it to hold them.
    """
    header_timeout = 5.0
    srv = LimitedServer(
        tmp_path / "data",
        nofile=(1024, 4096),
        extra_env={"CTM_HEADER_TIMEOUT_SECONDS": str(header_timeout)},
    )
    socks: list[socket.socket] = []
    with own_nofile_at_least(HALF_OPEN + 256):
        try:
            srv.start()
            server = psutil.Process(srv.pid())
            assert server.rlimit(psutil.RLIMIT_NOFILE) == (4096, 4096)
            assert "nofile) raised from 1024 to 4096" in srv.output()
            opened_at = time.monotonic()
            open_half_requests(srv.port, HALF_OPEN, socks)
            opening = time.monotonic() - opened_at

            seconds = fresh_client_seconds(srv.base)
            assert wait_for(lambda: server.num_fds() >= HALF_OPEN, timeout=2.0), server.num_fds()
            held = server.num_fds()
            closed = closed_by_server(
                socks, until=lambda n: n == HALF_OPEN, deadline=opened_at + header_timeout + 10
            )
            all_closed_after = time.monotonic() - opened_at
            print(
                f"\n{HALF_OPEN} half-open connections opened in {opening:.2f} s; server fds "
                f"{held}; fresh GET /api/me in {seconds * 1000:.0f} ms; all closed "
                f"{all_closed_after:.1f} s after the first (header timeout {header_timeout} s)"
            )
            assert closed == HALF_OPEN
            assert all_closed_after >= header_timeout
        finally:
            for sock in socks:
                sock.close()
            srv.stop()


@pytest.mark.slow
def test_connection_cap_makes_room_by_closing_the_oldest_half_open(tmp_path: Path) -> None:
    """At a hard limit of 1,024 files, 2,000 half-sent requests: the oldest are closed for room.

    A new client is still served within 1 s, and the server never runs out of descriptors
    (asyncio would then stop accepting for a second).
    """
    srv = LimitedServer(
        tmp_path / "data", nofile=(1024, 1024), extra_env={"CTM_HEADER_TIMEOUT_SECONDS": "60"}
    )
    cap = _serve.connection_cap(1024)
    socks: list[socket.socket] = []
    with own_nofile_at_least(HALF_OPEN + 256):
        try:
            srv.start()
            opened_at = time.monotonic()
            open_half_requests(srv.port, HALF_OPEN, socks)
            seconds = fresh_client_seconds(srv.base)
            closed = closed_by_server(
                socks, until=lambda n: n >= HALF_OPEN - cap, deadline=opened_at + 10
            )
            print(
                f"\ncap {cap}: {closed} of {HALF_OPEN} half-open closed to make room; "
                f"fresh GET /api/me in {seconds * 1000:.0f} ms"
            )
            assert closed >= HALF_OPEN - cap
            assert "out of system resource" not in srv.output()
            assert psutil.Process(srv.pid()).num_fds() <= 1024
        finally:
            for sock in socks:
                sock.close()
            srv.stop()


# In-process: the timers themselves, with short timeouts.


class EchoApp:
    """A tiny ASGI app: answers with the request body once complete (after 0.6 s on /slow)."""

    def __init__(self) -> None:
        self.disconnects = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnects += 1
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["path"] == "/slow":
            await asyncio.sleep(0.6)
        headers = [(b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _run_with_server(
    scenario: Callable[[uvicorn.Server, int], Awaitable[None]], **bounds: Any
) -> EchoApp:
    """Run ``scenario(server, port)`` against an in-process bounded server; return its app."""
    app = EchoApp()
    port = free_port()
    server = _serve.build_server(
        app, host="127.0.0.1", port=port, log_config=None, lifespan="on", **bounds
    )

    async def main() -> None:
        serving = asyncio.create_task(server.serve())
        while not server.started:
            assert not serving.done()
            await asyncio.sleep(0.01)
        try:
            await scenario(server, port)
        finally:
            server.should_exit = True
            await serving

    asyncio.run(main())
    return app


@contextlib.asynccontextmanager
async def connected(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """What the server sends until it closes the connection (a reset counts as a close)."""
    try:
        return await asyncio.wait_for(reader.read(), seconds)
    except ConnectionResetError:
        return b""


def test_header_deadline_counts_from_the_connection_not_from_the_last_byte() -> None:
    """A client trickling its headers a byte at a time is closed at the header timeout."""
    closed_after: list[float] = []

    async def scenario(server: uvicorn.Server, port: int) -> None:
        async with connected(port) as (reader, writer):
            started = time.monotonic()

            async def trickle() -> None:
                for byte in PARTIAL_REQUEST * 3:  # 2.6 s of headers, never complete
                    if writer.is_closing():
                        return
                    writer.write(bytes([byte]))
                    await asyncio.sleep(0.02)

            dripping = asyncio.create_task(trickle())
            try:
                assert await _closed_within(reader, 2.0) == b""
            finally:
                dripping.cancel()
            closed_after.append(time.monotonic() - started)

    _run_with_server(scenario, header_timeout=0.4, body_timeout=5.0)
    assert 0.35 < closed_after[0] < 1.0


def test_stalled_body_is_ended_and_a_moving_body_is_not() -> None:
    """A body silent for the body timeout is ended; one whose pieces keep coming is served."""
    head = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n"

    async def scenario(server: uvicorn.Server, port: int) -> None:
        async with connected(port) as (reader, writer):
            writer.write(head + b"abc")
            assert await _closed_within(reader, 2.0) == b""
        async with connected(port) as (reader, writer):
            writer.write(head)
            for piece in (b"ab", b"cd", b"ef", b"gh", b"ij"):
                await asyncio.sleep(0.2)  # 1 s in all: longer than either timeout
                writer.write(piece)
            answer = await asyncio.wait_for(reader.readuntil(b"abcdefghij"), 2.0)
            assert answer.startswith(b"HTTP/1.1 200 ")

    app = _run_with_server(scenario, header_timeout=0.5, body_timeout=0.3)
    assert app.disconnects == 1


def test_timeouts_spare_slow_responses_and_bound_the_next_request_on_a_kept_connection() -> None:
    """A response slower than both timeouts arrives; a half-sent next request is then closed."""

    async def scenario(server: uvicorn.Server, port: int) -> None:
        async with connected(port) as (reader, writer):
            writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2.0)
            assert answer.startswith(b"HTTP/1.1 200 ")
            writer.write(PARTIAL_REQUEST)  # uvicorn's keep-alive timer stops at this first byte
            assert await _closed_within(reader, 2.0) == b""

    _run_with_server(scenario, header_timeout=0.3, body_timeout=0.3)


def test_uvicorn_internals_the_protocol_relies_on_are_there() -> None:
    """H11Protocol still has ``conn`` (an h11.Connection) and ``transport``; Config takes a class.

    If this fails after a uvicorn upgrade, re-read ``_serve.BoundedH11Protocol`` against the new
    ``uvicorn/protocols/http/h11_impl.py``.
    """
    found: list[object] = []

    async def scenario(server: uvicorn.Server, port: int) -> None:
        async with connected(port) as (_, writer):
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
            await asyncio.sleep(0.1)
            for protocol in server.server_state.connections:
                found.append(protocol)
                assert isinstance(protocol, H11Protocol)
                found.append(protocol.conn.their_state)

    _run_with_server(scenario)
    message = f"uvicorn {uvicorn.__version__}, written against {_serve.UVICORN_WRITTEN_AGAINST}"
    assert len(found) == 2, message
    protocol, state = found
    assert isinstance(protocol, _serve.BoundedH11Protocol), message
    assert isinstance(protocol, H11Protocol), message
    assert isinstance(protocol.conn, h11.Connection), message
    assert state is h11.IDLE, message
    assert isinstance(protocol.transport, asyncio.Transport), message
