"""Configuration: every option is a ``CTM_*`` environment variable; the main ones are also
command-line flags of ``ctm serve`` (--host, --port, --data-dir, --backend, --conda-exe)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import attrs

from ctm_core.models import RunPolicy


def default_data_dir(environ: Mapping[str, str]) -> str:
    base = environ.get("XDG_DATA_HOME") or os.path.join(
        environ.get("HOME") or os.path.expanduser("~"), ".local", "share"
    )
    return os.path.join(base, "ctm")


def _bool(value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {value!r}")


def _sandbox_mode(value: str) -> str:
    v = value.strip().lower()
    if v not in ("auto", "required", "off"):
        raise ValueError(f"not one of auto, required, off: {value!r}")
    return v


def _uid_range(value: str) -> tuple[int, int]:
    """``FIRST-LAST`` (inclusive), both above 999 (never a system account)."""
    first, sep, last = value.partition("-")
    if not sep or not first.strip().isdigit() or not last.strip().isdigit():
        raise ValueError(f"not a range FIRST-LAST: {value!r}")
    lo, hi = int(first), int(last)
    if not 1000 <= lo <= hi < 2**32 - 1:
        raise ValueError(f"need 1000 <= FIRST <= LAST < 4294967295: {value!r}")
    return lo, hi


def _positive_float(value: str) -> float:
    number = float(value)
    if not (number > 0 and math.isfinite(number)):
        raise ValueError(f"must be a finite number > 0: {value!r}")
    return number


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError(f"must be >= 1: {value!r}")
    return number


def _total_memory_mb() -> float:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return 4096.0


def _roots(value: str) -> tuple[str, ...]:
    return tuple(p for p in value.split(os.pathsep) if p)


def _hosts(value: str) -> tuple[str, ...]:
    hosts = tuple(h.strip().lower() for h in value.split(",") if h.strip())
    if not hosts:
        raise ValueError(f"no host name in {value!r}")
    return hosts


@attrs.frozen(kw_only=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: str = attrs.field(factory=lambda: default_data_dir(os.environ))
    backend: str = attrs.field(
        default="auto", validator=attrs.validators.in_(("auto", "conda", "venv"))
    )
    conda_exe: str | None = None
    admin_password: str | None = attrs.field(default=None, repr=False)
    timezone: str | None = None
    max_concurrent_runs: int = attrs.field(factory=lambda: os.cpu_count() or 2)
    sample_interval: float = 0.5
    log_max_bytes: int = 10 * 1024 * 1024
    stop_grace_seconds: float = 10.0
    retention_days: int = 30
    script_roots: tuple[str, ...] = ()
    secure_cookies: bool = False
    allowed_hosts: tuple[str, ...] | None = None
    """Host names (``Host`` header, port ignored) the server answers; None: ``host`` and the
    loopback names (``ctm_http._hosts``)."""
    session_idle_minutes: float = 15.0
    session_max_hours: float = 12.0
    max_sessions_per_user: int = 20
    """Live sessions one user may have; a new login ends the oldest beyond it."""
    login_checks: int = attrs.field(factory=lambda: os.cpu_count() or 2)
    """Password checks (argon2, one core each) that may run at once; more logins wait."""
    default_python: str | None = None
    supervised_runs: bool = True
    max_body_bytes: int = 2 * 1024 * 1024
    header_timeout_seconds: float = 10.0
    """A connection's request line and headers must arrive within this (slowloris)."""
    # Contained runs (docs/security.md).
    sandbox: str = attrs.field(
        default="auto", validator=attrs.validators.in_(("auto", "required", "off"))
    )
    run_network: bool = True
    homes_dir: str | None = None
    """Per-user HOME folders of runs; default ``<data dir>-homes`` (outside the data dir)."""
    run_uids: tuple[int, int] = (200000, 265535)
    """Under root: user ``id`` runs as uid ``first + id`` (no passwd entry needed)."""
    install_only_binary: bool = True
    """Wheels only: installs are not sandboxed yet, so no package's build code may run."""
    install_timeout_seconds: float = 3600.0
    """How long one conda, venv, pip or uv command may run before its process group is killed."""
    default_memory_limit_mb: float | None = 2048.0
    max_memory_limit_mb: float | None = attrs.field(
        factory=lambda: float(int(_total_memory_mb() / 2))
    )
    default_max_processes: int | None = 256
    max_processes: int | None = 4096
    default_cpu_limit: float | None = None
    max_cpu_limit: float | None = attrs.field(factory=lambda: float(os.cpu_count() or 1))
    default_timeout_seconds: float | None = 24 * 3600.0
    max_runs_per_user: int | None = None
    """None: half of ``max_concurrent_runs``, at least 1."""
    max_tasks_per_user: int | None = 200

    @property
    def effective_homes_dir(self) -> str:
        return self.homes_dir or os.path.abspath(self.data_dir).rstrip("/") + "-homes"

    @property
    def effective_max_runs_per_user(self) -> int:
        if self.max_runs_per_user is not None:
            return self.max_runs_per_user
        return max(1, self.max_concurrent_runs // 2)


# CTM_<NAME> -> (field, parser). docs/configuration.md lists every one (checked by a test).
ENV_VARS: dict[str, tuple[str, Any]] = {
    "CTM_HOST": ("host", str),
    "CTM_PORT": ("port", int),
    "CTM_DATA_DIR": ("data_dir", str),
    "CTM_BACKEND": ("backend", str),
    "CTM_CONDA_EXE": ("conda_exe", str),
    "CTM_ADMIN_PASSWORD": ("admin_password", str),
    "CTM_TIMEZONE": ("timezone", str),
    "CTM_MAX_CONCURRENT_RUNS": ("max_concurrent_runs", int),
    "CTM_SAMPLE_INTERVAL": ("sample_interval", float),
    "CTM_LOG_MAX_BYTES": ("log_max_bytes", int),
    "CTM_STOP_GRACE_SECONDS": ("stop_grace_seconds", float),
    "CTM_RETENTION_DAYS": ("retention_days", int),
    "CTM_SCRIPT_ROOTS": ("script_roots", _roots),
    "CTM_COOKIE_SECURE": ("secure_cookies", _bool),
    "CTM_SECURE_COOKIES": ("secure_cookies", _bool),
    "CTM_ALLOWED_HOSTS": ("allowed_hosts", _hosts),
    "CTM_SESSION_IDLE_MINUTES": ("session_idle_minutes", float),
    "CTM_SESSION_MAX_HOURS": ("session_max_hours", float),
    "CTM_MAX_SESSIONS_PER_USER": ("max_sessions_per_user", _positive_int),
    "CTM_LOGIN_CHECKS": ("login_checks", _positive_int),
    "CTM_DEFAULT_PYTHON": ("default_python", str),
    "CTM_SUPERVISED_RUNS": ("supervised_runs", _bool),
    "CTM_MAX_BODY_BYTES": ("max_body_bytes", int),
    "CTM_SANDBOX": ("sandbox", _sandbox_mode),
    "CTM_RUN_NETWORK": ("run_network", _bool),
    "CTM_HOMES_DIR": ("homes_dir", str),
    "CTM_RUN_UIDS": ("run_uids", _uid_range),
    "CTM_INSTALL_ONLY_BINARY": ("install_only_binary", _bool),
    "CTM_INSTALL_TIMEOUT_SECONDS": ("install_timeout_seconds", _positive_float),
    "CTM_HEADER_TIMEOUT_SECONDS": ("header_timeout_seconds", _positive_float),
    "CTM_DEFAULT_MEMORY_LIMIT_MB": ("default_memory_limit_mb", _positive_float),
    "CTM_MAX_MEMORY_LIMIT_MB": ("max_memory_limit_mb", _positive_float),
    "CTM_DEFAULT_MAX_PROCESSES": ("default_max_processes", _positive_int),
    "CTM_MAX_PROCESSES": ("max_processes", _positive_int),
    "CTM_DEFAULT_CPU_LIMIT": ("default_cpu_limit", _positive_float),
    "CTM_MAX_CPU_LIMIT": ("max_cpu_limit", _positive_float),
    "CTM_DEFAULT_TIMEOUT_SECONDS": ("default_timeout_seconds", _positive_float),
    "CTM_MAX_RUNS_PER_USER": ("max_runs_per_user", _positive_int),
    "CTM_MAX_TASKS_PER_USER": ("max_tasks_per_user", _positive_int),
}


def settings_from_env(environ: Mapping[str, str], **overrides: Any) -> Settings:
    """Settings from ``CTM_*`` variables; ``overrides`` (command-line flags) win when not None."""
    values: dict[str, Any] = {}
    for var, (field, parse) in ENV_VARS.items():
        raw = environ.get(var)
        if raw is not None and raw != "":
            try:
                values[field] = parse(raw)
            except ValueError as exc:
                raise ValueError(f"{var}: {exc}") from None
    if "data_dir" not in values:
        values["data_dir"] = default_data_dir(environ)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Settings(**values)


def run_policy(settings: Settings) -> RunPolicy:
    """The per-run limits the core applies, from the settings."""
    return RunPolicy(
        default_memory_limit_mb=settings.default_memory_limit_mb,
        max_memory_limit_mb=settings.max_memory_limit_mb,
        default_max_processes=settings.default_max_processes,
        max_max_processes=settings.max_processes,
        default_cpu_limit=settings.default_cpu_limit,
        max_cpu_limit=settings.max_cpu_limit,
        default_timeout_seconds=settings.default_timeout_seconds,
        network=settings.run_network,
        max_runs_per_user=settings.effective_max_runs_per_user,
        max_tasks_per_user=settings.max_tasks_per_user,
    )
