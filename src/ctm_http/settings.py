"""Configuration: every option is a ``CTM_*`` environment variable; the main ones are also
command-line flags of ``ctm serve`` (--host, --port, --data-dir, --backend, --conda-exe)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import attrs


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


def _roots(value: str) -> tuple[str, ...]:
    return tuple(p for p in value.split(os.pathsep) if p)


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
    session_idle_minutes: float = 15.0
    session_max_hours: float = 12.0
    default_python: str | None = None
    run_as_user: str | None = None
    supervised_runs: bool = True
    max_body_bytes: int = 2 * 1024 * 1024


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
    "CTM_SECURE_COOKIES": ("secure_cookies", _bool),
    "CTM_SESSION_IDLE_MINUTES": ("session_idle_minutes", float),
    "CTM_SESSION_MAX_HOURS": ("session_max_hours", float),
    "CTM_DEFAULT_PYTHON": ("default_python", str),
    "CTM_RUN_AS_USER": ("run_as_user", str),
    "CTM_SUPERVISED_RUNS": ("supervised_runs", _bool),
    "CTM_MAX_BODY_BYTES": ("max_body_bytes", int),
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
