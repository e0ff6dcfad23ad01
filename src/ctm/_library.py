"""``Ctm``: one ctm as a Python object, over the composition root (``ctm_adapters.bootstrap``)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import threading
from types import TracebackType
from typing import Unpack

import attrs

from ctm_adapters.bootstrap import (
    Ports,
    Services,
    build_services,
    start_services,
    stop_services,
)
from ctm_adapters.settings import Settings
from ctm_core.audit import AuditLog
from ctm_core.auth import Authenticator, principal_of
from ctm_core.commands import NewUser
from ctm_core.environments import EnvironmentService
from ctm_core.errors import UserNotFound
from ctm_core.models import Execution, Principal
from ctm_core.ports import Clock, ProcessRunner, Repository
from ctm_core.scheduler import Scheduler
from ctm_core.tasks import TaskService
from ctm_core.tokens import TokenService
from ctm_core.users import UserAdmin

LOG_BYTES = 256 * 1024


class Ctm:
    """A whole ctm: its use cases (``tasks``, ``environments``, ``auth``, ``users``, ``audit``)
    and its adapters.

    ``with Ctm.open(data_dir) as app:`` recovers what an earlier process left, runs the
    scheduler in a thread of its own, and at the end stops every run and closes the store.
    Without ``with``, nothing is scheduled: call ``start()`` and ``close()`` yourself.
    """

    def __init__(self, services: Services) -> None:
        self.services = services
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduling: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None

    # --- opening -------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        data_dir: str | os.PathLike[str],
        *,
        settings: Settings | None = None,
        **ports: Unpack[Ports],
    ) -> Ctm:
        """ctm on ``data_dir`` (database, scripts, logs, environments) with the real adapters:
        SQLite, conda when one is found (else venvs made with uv), runs contained by
        bubblewrap when it is installed. ``settings`` gives every other option (its own
        ``data_dir`` is replaced); ``ports`` replace adapters (``repo=``, ``runner=``, …)."""
        chosen = attrs.evolve(settings or Settings(), data_dir=os.fspath(data_dir))
        return cls(build_services(chosen, **ports))

    @classmethod
    def in_memory(cls, *, settings: Settings | None = None, **ports: Unpack[Ports]) -> Ctm:
        """ctm on fakes, for tests and trials: an in-memory store, a fake backend whose
        environments exist only in memory, a fake runner whose runs end at once with exit code
        0, an in-memory file store, a fake clock (pass ``clock=FakeClock(...)`` to move time by
        hand) and a fast password hasher. Nothing touches the disk or starts a process."""
        from ctm_adapters.clock import FakeClock
        from ctm_adapters.fakes import (
            FakeEnvironmentBackend,
            FakePasswordHasher,
            FakeProcessRunner,
            InMemoryFileStore,
        )
        from ctm_adapters.memory import InMemoryRepository

        fakes: Ports = {
            "repo": InMemoryRepository(),
            "clock": FakeClock(),
            "backend": FakeEnvironmentBackend(),
            "runner": FakeProcessRunner(auto_exit_code=0),
            "files": InMemoryFileStore(),
            "hasher": FakePasswordHasher(),
        }
        fakes.update(ports)
        nowhere = os.path.join(tempfile.gettempdir(), "ctm-in-memory-never-written")
        chosen = attrs.evolve(settings or Settings(), data_dir=nowhere)
        return cls(build_services(chosen, **fakes))

    # --- the use cases and adapters ------------------------------------------------------------

    @property
    def tasks(self) -> TaskService:
        return self.services.tasks

    @property
    def environments(self) -> EnvironmentService:
        return self.services.environments

    @property
    def auth(self) -> Authenticator:
        return self.services.auth

    @property
    def users(self) -> UserAdmin:
        return self.services.users

    @property
    def audit(self) -> AuditLog:
        return self.services.audit

    @property
    def tokens(self) -> TokenService:
        return self.services.tokens

    @property
    def scheduler(self) -> Scheduler:
        return self.services.scheduler

    @property
    def repo(self) -> Repository:
        return self.services.repo

    @property
    def runner(self) -> ProcessRunner:
        return self.services.runner

    @property
    def clock(self) -> Clock:
        return self.services.clock

    # --- conveniences --------------------------------------------------------------------------

    def add_user(self, username: str, password: str, *, admin: bool = False) -> Principal:
        """Add a user (no permission check: the library caller is the operator)."""
        user = self.auth.add_user(NewUser(username=username, password=password, is_admin=admin))
        return principal_of(user)

    def user(self, username: str) -> Principal:
        """An existing, enabled user, to act as. Raises ``UserNotFound`` (a ``LookupError``)."""
        user = self.repo.get_user_by_name(username)
        if user is None or user.disabled:
            raise UserNotFound(username)
        return principal_of(user)

    def wait_for_run(self, task_id: int, timeout: float = 60.0) -> Execution:
        """The task's latest run once it has ended (skipped occurrences aside), waiting up to
        ``timeout`` seconds for one to end. Raises ``TimeoutError``."""

        def ended() -> Execution | None:
            page = self.repo.execution_page(task_id=task_id, limit=1, include_skipped=False)
            if (
                page
                and page[0].status.finished
                and not self.services.coordinator.is_active(task_id)
            ):
                return page[0]
            return None

        if not self.services.coordinator.wait_until(lambda: ended() is not None, timeout):
            raise TimeoutError(f"no run of task {task_id} ended within {timeout:g} s")
        found = ended()
        assert found is not None  # runs only end, and only a newer run could replace it
        return found

    def log(self, execution: Execution, max_bytes: int = LOG_BYTES) -> str:
        """The last ``max_bytes`` of a run's log."""
        if not execution.log_path:
            return ""
        return self.services.files.read_log(execution.log_path, max_bytes)

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Recover earlier runs and start the scheduler in a thread of its own."""
        if self._thread is not None:
            raise RuntimeError("this Ctm is started already")
        start_services(self.services)
        ready = threading.Event()

        async def schedule() -> None:
            self._loop = asyncio.get_running_loop()
            self._scheduling = asyncio.current_task()
            ready.set()
            with contextlib.suppress(asyncio.CancelledError):
                await self.scheduler.run()

        self._thread = threading.Thread(
            target=asyncio.run, args=(schedule(),), name="ctm-scheduler", daemon=True
        )
        self._thread.start()
        ready.wait()

    def close(self) -> None:
        """Stop the scheduler, then every run, then close the runner and the store."""
        loop, scheduling, thread = self._loop, self._scheduling, self._thread
        if loop is not None and scheduling is not None:
            with contextlib.suppress(RuntimeError):  # the loop ended already
                loop.call_soon_threadsafe(scheduling.cancel)
        if thread is not None:
            thread.join()
        self._loop = self._scheduling = self._thread = None
        stop_services(self.services)

    def __enter__(self) -> Ctm:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
