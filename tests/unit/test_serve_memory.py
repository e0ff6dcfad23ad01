"""``ctm serve`` bounds glibc's malloc arenas at start, unless the user chose a bound."""

from __future__ import annotations

import ctypes
import os
import threading
from typing import Any

import pytest

from ctm_http import cli


class FakeLibc:
    """Records ``mallopt`` calls; answers ``result`` (glibc: 1 on success)."""

    def __init__(self, result: int = 1) -> None:
        self.result = result
        self.calls: list[tuple[int, int]] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return self.result


@pytest.fixture
def libc(monkeypatch: pytest.MonkeyPatch) -> FakeLibc:
    fake = FakeLibc()
    monkeypatch.setattr(os, "confstr", lambda name: "glibc 2.36")
    monkeypatch.setattr(ctypes, "CDLL", lambda *a, **k: fake)
    return fake


def test_arenas_are_bounded_with_mallopt(libc: FakeLibc) -> None:
    """On glibc with no MALLOC_ARENA_MAX: mallopt(M_ARENA_MAX, 2), and the bound is returned."""
    assert cli.bound_malloc_arenas({}) == cli.MALLOC_ARENAS == 2
    assert libc.calls == [(-8, 2)]


def test_the_users_malloc_arena_max_wins(libc: FakeLibc) -> None:
    """MALLOC_ARENA_MAX set by the user: glibc applies it, ctm calls nothing."""
    assert cli.bound_malloc_arenas({"MALLOC_ARENA_MAX": "8"}) is None
    assert libc.calls == []


def test_a_refused_mallopt_reports_no_bound(libc: FakeLibc) -> None:
    """mallopt answering 0 (refused) is not reported as a bound."""
    libc.result = 0
    assert cli.bound_malloc_arenas({}) is None


@pytest.mark.parametrize("confstr", [None, ValueError], ids=["no-glibc-version", "no-confstr"])
def test_nothing_is_done_off_glibc(monkeypatch: pytest.MonkeyPatch, confstr: Any) -> None:
    """musl or another libc: no libc is loaded, nothing is bounded."""

    def fake_confstr(name: str) -> str | None:
        if confstr is ValueError:
            raise ValueError(name)
        return None

    def no_cdll(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("no libc may be loaded off glibc")

    monkeypatch.setattr(os, "confstr", fake_confstr)
    monkeypatch.setattr(ctypes, "CDLL", no_cdll)
    assert cli.bound_malloc_arenas({}) is None


def test_serve_bounds_arenas_before_the_server_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """``ctm serve`` bounds the arenas first, before it starts any thread or serves."""
    from ctm_adapters import _hardening
    from ctm_http import _serve

    events: list[tuple[str, int]] = []
    monkeypatch.setattr(
        cli,
        "bound_malloc_arenas",
        lambda environ: events.append(("bound", threading.active_count())) or 2,
    )
    monkeypatch.setattr(_serve, "serve", lambda *a, **k: events.append(("run", 0)))
    monkeypatch.setattr(_hardening, "make_undumpable", lambda: True)
    monkeypatch.setattr(_hardening, "scrub_environment", lambda names: None)
    threads = threading.active_count()
    assert cli.main(["serve", "--data-dir", "/nonexistent/ctm-unit", "--backend", "venv"]) == 0
    assert events == [("bound", threads), ("run", 0)]
