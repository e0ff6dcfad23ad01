"""Every adapter and fake assigned to its port, for mypy to check (``mypy`` covers tests/fakes).

Nothing here is ever called: each function only states "this class is that port", so an adapter
or a fake whose signatures drift from its port fails the type check, not a test at run time.
"""

from __future__ import annotations

from ctm_adapters.clock import FakeClock, SystemClock
from ctm_adapters.conda import CondaEnvironmentBackend
from ctm_adapters.fakes import (
    FakeEnvironmentBackend,
    FakeHandle,
    FakePasswordHasher,
    FakeProcessRunner,
    InMemoryFileStore,
)
from ctm_adapters.files import LocalFileStore
from ctm_adapters.memory import InMemoryRepository
from ctm_adapters.passwords import Argon2PasswordHasher
from ctm_adapters.process import PsutilProcessRunner, PsutilRunHandle
from ctm_adapters.sqlite import SqliteRepository
from ctm_adapters.supervised import SupervisedProcessRunner, SupervisedRunHandle
from ctm_adapters.venv import VenvEnvironmentBackend
from ctm_core.ports import (
    Clock,
    EnvironmentBackend,
    FileStore,
    PasswordHasher,
    ProcessRunner,
    Repository,
    RunHandle,
)

# --- Repository


def _in_memory_repository(r: InMemoryRepository) -> Repository:
    return r


def _sqlite_repository(r: SqliteRepository) -> Repository:
    return r


# --- EnvironmentBackend


def _fake_backend(b: FakeEnvironmentBackend) -> EnvironmentBackend:
    return b


def _conda_backend(b: CondaEnvironmentBackend) -> EnvironmentBackend:
    return b


def _venv_backend(b: VenvEnvironmentBackend) -> EnvironmentBackend:
    return b


# --- ProcessRunner


def _fake_runner(r: FakeProcessRunner) -> ProcessRunner:
    return r


def _psutil_runner(r: PsutilProcessRunner) -> ProcessRunner:
    return r


def _supervised_runner(r: SupervisedProcessRunner) -> ProcessRunner:
    return r


def _fake_handle(h: FakeHandle) -> RunHandle:
    return h


def _psutil_handle(h: PsutilRunHandle) -> RunHandle:
    return h


def _supervised_handle(h: SupervisedRunHandle) -> RunHandle:
    return h


# --- Clock


def _fake_clock(c: FakeClock) -> Clock:
    return c


def _system_clock(c: SystemClock) -> Clock:
    return c


# --- FileStore


def _in_memory_files(f: InMemoryFileStore) -> FileStore:
    return f


def _local_files(f: LocalFileStore) -> FileStore:
    return f


# --- PasswordHasher


def _fake_hasher(h: FakePasswordHasher) -> PasswordHasher:
    return h


def _argon2_hasher(h: Argon2PasswordHasher) -> PasswordHasher:
    return h
