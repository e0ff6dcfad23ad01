"""Clocks: the system clock, and a fake clock that tests (and library users) move by hand."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime, timedelta


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep_until(self, when: datetime) -> None:
        # Sleep in bounded steps so a wall-clock jump (NTP, suspend) is noticed within a minute.
        while True:
            remaining = (when - self.now()).total_seconds()
            if remaining <= 0:
                return
            await asyncio.sleep(min(remaining, 60.0))


class FakeClock:
    """A clock that only moves when ``advance`` or ``set`` is called (like twisted's task.Clock).

    ``sleep_until`` waiters are woken, in their own event loops, when the clock passes their time.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
        if self._now.tzinfo is None:
            raise ValueError("start must be aware")
        self._mono = 1000.0
        self._lock = threading.Lock()
        self._waiters: list[tuple[datetime, asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += timedelta(seconds=seconds)
            self._mono += seconds
        self._release()

    def set(self, when: datetime) -> None:
        with self._lock:
            delta = (when - self._now).total_seconds()
            if delta < 0:
                raise ValueError("a FakeClock never goes backwards")
            self._now = when
            self._mono += delta
        self._release()

    def pending(self) -> list[datetime]:
        """The times sleepers are waiting for, earliest first."""
        with self._lock:
            return sorted(w for w, _, f in self._waiters if not f.done())

    async def sleep_until(self, when: datetime) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if when <= self._now:
                return
            self._waiters.append((when, loop, fut))
        await fut

    def _release(self) -> None:
        with self._lock:
            due = [(lp, f) for w, lp, f in self._waiters if w <= self._now]
            self._waiters = [(w, lp, f) for w, lp, f in self._waiters if w > self._now]
        for loop, fut in due:
            if not loop.is_closed():
                loop.call_soon_threadsafe(_resolve, fut)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
