"""A whole ctm core wired to fakes: no disk, no processes, time moved by hand."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import attrs
import pytest

from ctm_adapters.bootstrap import build_services
from ctm_adapters.clock import FakeClock
from ctm_adapters.fakes import (
    FakeEnvironmentBackend,
    FakePasswordHasher,
    FakeProcessRunner,
    InMemoryFileStore,
)
from ctm_adapters.memory import InMemoryRepository
from ctm_adapters.settings import Settings
from ctm_core.audit import AuditLog
from ctm_core.auth import Authenticator
from ctm_core.commands import NewUser
from ctm_core.environments import EnvironmentService
from ctm_core.models import Principal, RunPolicy
from ctm_core.ports import Repository
from ctm_core.runs import RunCoordinator
from ctm_core.scheduler import Scheduler
from ctm_core.tasks import TaskService
from ctm_core.users import UserAdmin


@attrs.define
class World:
    clock: FakeClock
    repo: Repository
    backend: FakeEnvironmentBackend
    runner: FakeProcessRunner
    files: InMemoryFileStore
    auth: Authenticator
    envs: EnvironmentService
    coordinator: RunCoordinator
    scheduler: Scheduler
    tasks: TaskService
    users: UserAdmin
    audit: AuditLog
    admin: Principal
    alice: Principal
    bob: Principal


def make_world(
    *,
    start: datetime | None = None,
    tz: str = "UTC",
    max_concurrent: int = 4,
    auto_exit_code: int | None = None,
    policy: RunPolicy | None = None,
    repo: Repository | None = None,
    runner: FakeProcessRunner | None = None,
) -> World:
    """The core on fakes; ``repo`` (an in-memory one by default) and ``runner`` may be given."""
    clock = FakeClock(start or datetime(2026, 5, 1, 12, 0, tzinfo=UTC))
    backend = FakeEnvironmentBackend()
    runner = runner if runner is not None else FakeProcessRunner(auto_exit_code=auto_exit_code)
    files = InMemoryFileStore()
    settings = Settings(
        data_dir="/nonexistent/ctm-unit-tests",
        timezone=tz,
        max_concurrent_runs=max_concurrent,
        stop_grace_seconds=0.1,
    )
    svc = build_services(
        settings,
        repo=repo if repo is not None else InMemoryRepository(),
        clock=clock,
        backend=backend,
        runner=runner,
        files=files,
        hasher=FakePasswordHasher(),
    )
    # The core's own defaults (no limits) unless a test gives a policy, not the server's.
    svc.coordinator.policy = svc.tasks.policy = policy or RunPolicy()
    repo, auth, envs, coordinator = svc.repo, svc.auth, svc.environments, svc.coordinator
    scheduler, tasks = svc.scheduler, svc.tasks
    users = []
    for name, admin in (("admin", True), ("alice", False), ("bob", False)):
        u = auth.add_user(NewUser(username=name, password="password-" + name, is_admin=admin))
        users.append(Principal(user_id=u.id, username=u.username, is_admin=u.is_admin))
    return World(
        clock,
        repo,
        backend,
        runner,
        files,
        auth,
        envs,
        coordinator,
        scheduler,
        tasks,
        svc.users,
        svc.audit,
        *users,
    )


@pytest.fixture
def world() -> Iterator[World]:
    w = make_world()
    yield w
    for h in w.runner.running():
        w.runner.finish(h, 0)


def fake_ports() -> dict[str, Any]:
    """Every port of the HTTP app on fakes (runs end at once with exit code 0)."""
    return {
        "repo": InMemoryRepository(),
        "clock": FakeClock(),
        "backend": FakeEnvironmentBackend(),
        "runner": FakeProcessRunner(auto_exit_code=0),
        "files": InMemoryFileStore(),
        "hasher": FakePasswordHasher(),
    }
