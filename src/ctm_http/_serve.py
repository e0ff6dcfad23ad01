"""Running the app under uvicorn with bounds that slow clients cannot exhaust.

uvicorn (written against 0.54.0) bounds none of this by itself: ``timeout_keep_alive`` is armed
only after a response, and every received byte disarms it, so a client that sends half a request
line holds its connection for ever; ``limit_concurrency`` counts those half-open connections too
and answers 503 to everyone else once they fill it. So ``ctm serve`` runs uvicorn's h11 protocol
with three additions (``bounded_protocol``):

- the request line and headers must arrive within ``header_timeout`` seconds of the connection
  (or, on a kept-alive connection, of the request's first byte), else the connection is closed;
- a request body that sends nothing for ``body_timeout`` seconds is ended (closed), unless the
  server itself stopped reading (flow control, ``Expect: 100-continue`` not yet answered);
- at most ``max_connections`` connections: beyond it the oldest connection that is between
  requests or still sending its headers is closed to make room, so half-open connections can
  never lock out a client that sends its request at once; only when every connection is in the
  middle of a request is the new one refused.

``serve`` also raises the open files limit to the hard limit and sizes the cap from it.

At shutdown, an event stream under way (``Accept: text/event-stream``: a live log) is closed
rather than waited for: uvicorn waits for every response under way, and a stream lasts as long
as its run.

What it relies on in uvicorn beyond the protocol interface: ``H11Protocol`` and its constructor,
its ``conn`` (the ``h11.Connection``), ``transport`` and ``cycle`` attributes (the cycle's
``scope``, ``response_started``, ``response_complete``), its ``shutdown``,
``Config(http=<class>)`` and ``Server.run(sockets=...)``; in asyncio, that a server accepts up
to ``backlog`` connections per event loop turn. ``tests/integration/test_slow_clients.py``
checks them (the shutdown: ``tests/integration/test_log_stream.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import socket
import sys
from typing import Any, ClassVar

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

UVICORN_WRITTEN_AGAINST = "0.54.0"
"""The uvicorn release whose ``H11Protocol`` ``BoundedH11Protocol`` was written against."""

HEADER_TIMEOUT_SECONDS = 10.0
"""Default time a client has to send its request line and headers."""
BODY_TIMEOUT_SECONDS = 30.0
"""Default longest pause between two pieces of a request body."""
MAX_CONNECTIONS = 10_000
"""Ceiling on open connections whatever the file limit (each costs a few kB of memory)."""
LISTEN_QUEUE = 2048
"""Connections the kernel holds for ``accept()`` (uvicorn's default backlog)."""
FD_RESERVE = 256
"""File descriptors kept for everything but client connections: the database, logs, the fork
server, installers' and runs' pipes."""
_STARTUP_FAILURE = 3  # uvicorn.run's exit status when the server did not start

logger = logging.getLogger("ctm")


def raise_nofile_limit() -> int:
    """Raise this process's soft ``RLIMIT_NOFILE`` to its hard limit; return the soft limit now.

    systemd starts services with a soft limit of 1,024 open files (and a hard limit of 524,288);
    each client connection costs one. Logs the old and the new value; when the limit cannot be
    raised, logs a warning and returns the old one.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1_048_576  # Linux's default nr_open
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            logger.warning("ctm: open files limit stays at %d: %s", soft, exc)
            return soft
        logger.info("ctm: open files limit (nofile) raised from %d to %d", soft, target)
        return target
    logger.info("ctm: open files limit (nofile) is %d", soft)
    return soft


def accept_batch(nofile: int) -> int:
    """How many connections asyncio may accept in one go under a soft file limit of ``nofile``.

    asyncio takes this number from the ``backlog`` it is given; ``_WideListener`` keeps the
    kernel's listen queue at ``LISTEN_QUEUE`` all the same.
    """
    return max(16, min(LISTEN_QUEUE, nofile // 16))


def connection_cap(nofile: int) -> int:
    """Most client connections to keep open under a soft file limit of ``nofile``.

    A new connection reaches the protocol, which makes room, two event loop turns after its
    ``accept()``, and asyncio accepts up to ``accept_batch`` connections each turn: the cap
    leaves four batches of descriptors free besides ``FD_RESERVE``, so that a flood does not run
    the process out of descriptors (asyncio then stops accepting for a second).
    """
    spare = FD_RESERVE + 4 * accept_batch(nofile)
    return min(MAX_CONNECTIONS, max(nofile - spare, nofile // 4))


class _WideListener(socket.socket):
    """A listening socket whose kernel queue is ``LISTEN_QUEUE`` whatever backlog asyncio asks.

    A short queue drops connects when the server falls a few milliseconds behind (TCP retries
    them a second later); asyncio's small accept batch must not shorten it.
    """

    def listen(self, backlog: int = LISTEN_QUEUE) -> None:
        super().listen(LISTEN_QUEUE)


class _Connections:
    """The open connections of one server, oldest first, and the cap on their number."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._open: dict[BoundedH11Protocol, None] = {}
        self._refused = 0

    def admit(self, new: BoundedH11Protocol) -> None:
        self._open[new] = None
        if len(self._open) <= self.cap:
            return
        # The oldest connection without a request under way; ``new`` itself is the newest.
        victim = next(conn for conn in self._open if conn.between_requests())
        if victim is new:
            self._refused += 1
            if self._refused in (1, 10, 100) or self._refused % 1000 == 0:
                logger.warning(
                    "ctm: %d connections, all with a request under way: refused %d new ones",
                    self.cap,
                    self._refused,
                )
        else:
            logger.debug("ctm: at %d connections: closed the oldest idle one", self.cap)
        self.forget(victim)
        victim.transport.close()

    def forget(self, conn: BoundedH11Protocol) -> None:
        self._open.pop(conn, None)


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header timeout, a body timeout and a connection cap.

    Use ``bounded_protocol()`` to get a subclass with the bounds set.
    """

    header_timeout: ClassVar[float] = HEADER_TIMEOUT_SECONDS
    body_timeout: ClassVar[float] = BODY_TIMEOUT_SECONDS
    connections_open: ClassVar[_Connections] = _Connections(MAX_CONNECTIONS)

    _header_timer: asyncio.TimerHandle | None = None
    _body_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer = asyncio.get_running_loop().call_later(
            self.header_timeout, self._headers_too_slow
        )
        self.connections_open.admit(self)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        state = self.conn.their_state
        if state is h11.IDLE:  # the request line and headers are not complete yet
            if self._header_timer is None:  # a kept-alive connection's next request began
                self._header_timer = asyncio.get_running_loop().call_later(
                    self.header_timeout, self._headers_too_slow
                )
            return
        self._cancel_header_timer()
        self._cancel_body_timer()
        if state is h11.SEND_BODY:  # each piece of the body restarts the wait for the next
            self._body_timer = asyncio.get_running_loop().call_later(
                self.body_timeout, self._body_too_slow
            )

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        self._cancel_body_timer()
        self.connections_open.forget(self)
        super().connection_lost(exc)

    def shutdown(self) -> None:
        """As uvicorn's, except that an event stream under way (a live log) is closed at once:
        it would otherwise hold the server's shutdown until its run ends (uvicorn waits for
        every response under way, with no time limit)."""
        cycle = self.cycle
        if (
            cycle is not None
            and cycle.response_started
            and not cycle.response_complete
            and _wants_events(cycle.scope)
        ):
            self.transport.close()
            return
        super().shutdown()

    def between_requests(self) -> bool:
        """True when no request is under way: its headers are incomplete, or none was sent."""
        return bool(self.conn.their_state is h11.IDLE)

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            logger.debug("ctm: closed a connection that sent no complete request headers")
            self.transport.close()

    def _body_too_slow(self) -> None:
        self._body_timer = None
        if self.conn.their_state is not h11.SEND_BODY or self.transport.is_closing():
            return
        if not self.transport.is_reading() or self.conn.they_are_waiting_for_100_continue:
            # The wait is ours (the app has not taken the body yet): do not count it.
            self._body_timer = asyncio.get_running_loop().call_later(
                self.body_timeout, self._body_too_slow
            )
            return
        logger.info("ctm: ended a request whose body stalled for %ss", self.body_timeout)
        self.transport.close()

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None


def _wants_events(scope: Any) -> bool:
    """Whether a request asked for ``text/event-stream``."""
    return any(
        name == b"accept" and b"text/event-stream" in value for name, value in scope["headers"]
    )


def bounded_protocol(
    *, header_timeout: float, body_timeout: float, max_connections: int
) -> type[BoundedH11Protocol]:
    """A ``BoundedH11Protocol`` subclass with these bounds, for one server (``Config(http=…)``)."""

    class Bounded(BoundedH11Protocol):
        pass

    Bounded.header_timeout = header_timeout
    Bounded.body_timeout = body_timeout
    Bounded.connections_open = _Connections(max_connections)
    return Bounded


def build_server(
    app: Any,
    *,
    host: str,
    port: int,
    header_timeout: float = HEADER_TIMEOUT_SECONDS,
    body_timeout: float = BODY_TIMEOUT_SECONDS,
    max_connections: int = MAX_CONNECTIONS,
    backlog: int = LISTEN_QUEUE,
    **options: Any,
) -> uvicorn.Server:
    """A uvicorn server for ``app`` whose connections are bounded; ``options`` go to its Config.

    ``backlog`` is also the most connections asyncio accepts at once (see ``accept_batch``).
    """
    protocol = bounded_protocol(
        header_timeout=header_timeout, body_timeout=body_timeout, max_connections=max_connections
    )
    config = uvicorn.Config(app, host=host, port=port, http=protocol, backlog=backlog, **options)
    return uvicorn.Server(config)


def serve(
    app: Any,
    *,
    host: str,
    port: int,
    header_timeout: float = HEADER_TIMEOUT_SECONDS,
    body_timeout: float = BODY_TIMEOUT_SECONDS,
) -> None:
    """Serve ``app`` until SIGINT/SIGTERM, as ``uvicorn.run`` would, with bounded connections.

    Raises the open files limit first and sizes the connection cap and the accept batch from
    it. Binds the socket before the app starts (uvicorn's ``bind_socket``).
    Exits with status 3 (uvicorn's) when the server could not start.
    """
    nofile = raise_nofile_limit()
    server = build_server(
        app,
        host=host,
        port=port,
        header_timeout=header_timeout,
        body_timeout=body_timeout,
        max_connections=connection_cap(nofile),
        backlog=accept_batch(nofile),
        log_level="info",
        proxy_headers=False,
        lifespan="on",
        ws="none",  # no route takes one, and an upgrade would swap the protocol out
    )
    listener = _WideListener(fileno=server.config.bind_socket().detach())
    with contextlib.suppress(KeyboardInterrupt):  # SIGINT, after a graceful shutdown
        server.run(sockets=[listener])
    if not server.started:
        sys.exit(_STARTUP_FAILURE)
