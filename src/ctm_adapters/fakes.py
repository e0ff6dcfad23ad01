"""Hand-written fakes of the ports that record what happened, for fast tests and for trying ctm
as a library without conda or child processes."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence
from datetime import UTC, datetime

import attrs

from ctm_core.errors import EnvironmentExists, EnvironmentNotFound, PackageOperationFailed
from ctm_core.models import DiskUsage, Environment, Package, RunEnvironment
from ctm_core.ports import RunHandle, RunResult, RunSpec
from ctm_core.validation import normalize_package_name, spec_name

AVAILABLE = {
    "python": "3.11.7",
    "pip": "24.0",
    "six": "1.16.0",
    "attrs": "23.2.0",
    "packaging": "24.0",
    "idna": "3.6",
    "numpy": "1.26.4",
    "requests": "2.31.0",
}


class FakeEnvironmentBackend:
    """Environments in a dict. Packages in ``AVAILABLE`` install; others fail as not found."""

    kind = "fake"

    def __init__(self, created_at: datetime | None = None) -> None:
        self.envs: dict[str, dict[str, str]] = {}
        self.created: dict[str, datetime] = {}
        self.calls: list[tuple[str, ...]] = []
        self._created_at = created_at or datetime(2026, 1, 1, tzinfo=UTC)
        self._lock = threading.Lock()

    def _env(self, name: str) -> Environment:
        pkgs = self.envs[name]
        return Environment(
            name=name,
            prefix=f"/fake/envs/{name}",
            python_version=pkgs.get("python"),
            packages=tuple(Package(n, v) for n, v in sorted(pkgs.items())),
            created_at=self.created[name],
        )

    def list_environments(self) -> list[Environment]:
        with self._lock:
            return [self._env(n) for n in sorted(self.envs)]

    def get_environment(self, name: str) -> Environment:
        with self._lock:
            if name not in self.envs:
                raise EnvironmentNotFound(name)
            return self._env(name)

    def exists(self, name: str) -> bool:
        return name in self.envs

    def _resolve(self, specs: Sequence[str], message: str) -> dict[str, str]:
        missing = [s for s in specs if normalize_package_name(spec_name(s)) not in AVAILABLE]
        if missing:
            raise PackageOperationFailed(
                message,
                failed_packages=missing,
                error_details=[f"Package '{s}' not found in available channels" for s in missing],
                output="PackagesNotFoundError: " + ", ".join(missing),
            )
        return {normalize_package_name(spec_name(s)): AVAILABLE[spec_name(s)] for s in specs}

    def create(self, name: str, python_version: str | None, specs: Sequence[str]) -> Environment:
        self.calls.append(("create", name, *specs))
        with self._lock:
            if name in self.envs:
                raise EnvironmentExists(name)
            if python_version and not AVAILABLE["python"].startswith(python_version):
                raise PackageOperationFailed(
                    "Failed to create environment",
                    failed_packages=[f"python={python_version}"],
                    error_details=[f"Package 'python={python_version}' not found"],
                    output="PackagesNotFoundError",
                )
            pkgs = {"python": AVAILABLE["python"], "pip": AVAILABLE["pip"]}
            pkgs.update(self._resolve(specs, "Failed to create environment"))
            self.envs[name] = pkgs
            self.created[name] = self._created_at
            return self._env(name)

    def install(self, name: str, specs: Sequence[str]) -> None:
        self.calls.append(("install", name, *specs))
        with self._lock:
            if name not in self.envs:
                raise EnvironmentNotFound(name)
            self.envs[name].update(self._resolve(specs, "Failed to install packages"))

    def remove(self, name: str, packages: Sequence[str]) -> None:
        self.calls.append(("remove", name, *packages))
        with self._lock:
            if name not in self.envs:
                raise EnvironmentNotFound(name)
            missing = [p for p in packages if normalize_package_name(p) not in self.envs[name]]
            if missing:
                raise PackageOperationFailed(
                    "Failed to remove packages",
                    failed_packages=missing,
                    error_details=[f"Package '{p}' is not installed" for p in missing],
                    output="PackagesNotFoundInPrefixError",
                )
            for p in packages:
                del self.envs[name][normalize_package_name(p)]

    def rename(self, old: str, new: str) -> None:
        self.calls.append(("rename", old, new))
        with self._lock:
            if old not in self.envs:
                raise EnvironmentNotFound(old)
            if new in self.envs:
                raise EnvironmentExists(new)
            self.envs[new] = self.envs.pop(old)
            self.created[new] = self.created.pop(old)

    def delete(self, name: str) -> None:
        self.calls.append(("delete", name))
        with self._lock:
            if name not in self.envs:
                raise EnvironmentNotFound(name)
            del self.envs[name]
            del self.created[name]

    def disk_usage(self) -> DiskUsage:
        per = {n: 1_000_000 * len(p) for n, p in self.envs.items()}
        return DiskUsage(per_environment=per, total=sum(per.values()))

    def run_environment(self, name: str) -> RunEnvironment:
        if name not in self.envs:
            raise EnvironmentNotFound(name)
        prefix = f"/fake/envs/{name}"
        return RunEnvironment(
            python=f"{prefix}/bin/python",
            prefix=prefix,
            variables={"CONDA_PREFIX": prefix, "CONDA_DEFAULT_ENV": name},
            path_prepend=(f"{prefix}/bin",),
        )

    def install_requirements(self, name: str, requirements: str) -> None:
        specs = [
            line.split("#")[0].strip()
            for line in requirements.splitlines()
            if line.split("#")[0].strip()
        ]
        self.calls.append(("requirements", name, *specs))
        with self._lock:
            if name not in self.envs:
                raise EnvironmentNotFound(name)
            self.envs[name].update(self._resolve(specs, "Failed to install requirements"))


@attrs.define(eq=False)
class FakeHandle:
    pid: int
    spec: RunSpec
    done: threading.Event = attrs.field(factory=threading.Event)
    result: RunResult | None = None


class FakeProcessRunner:
    """Runs nothing. Each started run waits until ``finish`` (or ``stop``) ends it, unless
    ``auto_exit_code`` is set, in which case runs end at once with that code."""

    def __init__(self, auto_exit_code: int | None = None) -> None:
        self.auto_exit_code = auto_exit_code
        self.started: list[FakeHandle] = []
        self.stopped: list[int] = []
        self._pids = itertools.count(1000)
        self._lock = threading.Lock()
        self.fail_start: str | None = None
        self.started_event = threading.Condition()
        self.runs_survive_restart = False
        self.adoptable: dict[int, RunSpec] = {}
        self.adopted: list[FakeHandle] = []

    def start(self, spec: RunSpec) -> FakeHandle:
        if self.fail_start:
            raise OSError(self.fail_start)
        handle = FakeHandle(pid=next(self._pids), spec=spec)
        if self.auto_exit_code is not None:
            self._end(handle, self.auto_exit_code)
        with self.started_event:
            self.started.append(handle)
            self.started_event.notify_all()
        return handle

    def running(self) -> list[FakeHandle]:
        with self._lock:
            return [h for h in self.started if not h.done.is_set()]

    def wait_started(self, count: int, timeout: float = 5.0) -> list[FakeHandle]:
        with self.started_event:
            if not self.started_event.wait_for(lambda: len(self.started) >= count, timeout):
                raise TimeoutError(f"only {len(self.started)} of {count} runs started")
            return list(self.started)

    def finish(
        self,
        handle: FakeHandle,
        exit_code: int = 0,
        *,
        duration: float = 1.0,
        peak: int = 50 * 1024 * 1024,
        avg: int = 40 * 1024 * 1024,
        timed_out: bool = False,
        limit_exceeded: str | None = None,
    ) -> None:
        self._end(
            handle,
            exit_code,
            duration=duration,
            peak=peak,
            avg=avg,
            timed_out=timed_out,
            limit_exceeded=limit_exceeded,
        )

    def _end(
        self,
        handle: FakeHandle,
        exit_code: int,
        *,
        duration: float = 1.0,
        peak: int = 50 * 1024 * 1024,
        avg: int = 40 * 1024 * 1024,
        timed_out: bool = False,
        limit_exceeded: str | None = None,
    ) -> None:
        with self._lock:
            if handle.result is None:
                handle.result = RunResult(
                    exit_code=exit_code,
                    duration=duration,
                    peak_memory=peak,
                    avg_memory=avg,
                    timed_out=timed_out,
                    limit_exceeded=limit_exceeded,
                )
        handle.done.set()

    def wait(self, handle: RunHandle) -> RunResult:
        run = _own(handle)
        run.done.wait()
        assert run.result is not None
        return run.result

    def stop(self, handle: RunHandle, grace_seconds: float) -> None:
        run = _own(handle)
        self.stopped.append(run.pid)
        self._end(run, -15)

    def adopt(self, pid: int, log_path: str) -> FakeHandle | None:
        """A handle for a run listed in ``adoptable`` (by pid), as if left by an earlier server;
        it ends like any other (``finish``/``stop``)."""
        spec = self.adoptable.pop(pid, None)
        if spec is None:
            return None
        handle = FakeHandle(pid=pid, spec=spec)
        with self.started_event:
            self.adopted.append(handle)
            self.started_event.notify_all()
        return handle

    def kill_stale_runs(self, grace_seconds: float) -> int:
        return 0

    def close(self) -> None:
        """Nothing to release."""


def _own(handle: RunHandle) -> FakeHandle:
    """The port hands back a ``RunHandle``; only this fake's own handles can be waited on."""
    if not isinstance(handle, FakeHandle):
        raise TypeError(f"not a FakeProcessRunner handle: {handle!r}")
    return handle


class InMemoryFileStore:
    """Files in a dict: scripts, logs and run folders that exist only for the test."""

    def __init__(self, existing: Sequence[str] = ()) -> None:
        self.files: dict[str, str] = dict.fromkeys(existing, "")
        self.deleted: list[str] = []

    def store_script(self, name: str, content: str) -> str:
        path = f"/data/scripts/{name}"
        self.files[path] = content
        return path

    def is_file(self, path: str) -> bool:
        return path in self.files

    def resolve(self, path: str) -> str:
        return path

    def run_dir(self, execution_id: str) -> str:
        return f"/data/runs/{execution_id}"

    def log_path(self, execution_id: str) -> str:
        return f"/data/logs/{execution_id}.log"

    def read_log(self, path: str, max_bytes: int) -> str:
        return self.files.get(path, "")[-max_bytes:]

    def read_log_bytes(self, path: str, offset: int, max_bytes: int) -> bytes:
        return self.files.get(path, "").encode()[offset : offset + max_bytes]

    def append_log(self, path: str, line: str) -> None:
        self.files[path] = self.files.get(path, "") + line + "\n"

    def delete(self, paths: list[str]) -> None:
        for p in paths:
            self.deleted.append(p)
            self.files.pop(p, None)


class FakePasswordHasher:
    """A fast stand-in for argon2 in unit tests: salted SHA-256, never for production."""

    def hash(self, password: str) -> str:
        import hashlib
        import secrets

        salt = secrets.token_hex(8)
        digest = hashlib.sha256((salt + password).encode("utf-8", "surrogatepass")).hexdigest()
        return f"fake${salt}${digest}"

    def verify(self, password_hash: str, password: str) -> bool:
        import hashlib
        import hmac

        try:
            _, salt, digest = password_hash.split("$")
        except ValueError:
            return False
        mine = hashlib.sha256((salt + password).encode("utf-8", "surrogatepass")).hexdigest()
        return hmac.compare_digest(mine, digest)

    def dummy_verify(self, password: str) -> None:
        self.verify("fake$00$00", password)
