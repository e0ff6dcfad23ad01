"""Typed commands: what a caller asks a use case to do.

A library caller builds them directly (``NewTask(script="print(1)", conda_env="ml")``); the
HTTP edge builds them from a JSON body with ``from_json``. Every rule a command's fields obey is
checked by ``from_json``, once, and the use cases call ``checked()`` (which applies the same
``from_json`` to the command's own fields), so a hand-built command meets the same rules as a
request body and raises the same ``InvalidInput`` family. Rules that depend on the server
(its maxima for per-run limits, who owns what) stay in the use cases.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import attrs

from ctm_core.errors import InvalidInput
from ctm_core.schedule import validate_schedule
from ctm_core.validation import (
    printable_line,
    validate_environment_name,
    validate_password,
    validate_requirements,
    validate_specs,
    validate_username,
)

MAX_SCRIPT_BYTES = 1024 * 1024
MAX_REQUIREMENTS_BYTES = 64 * 1024
MAX_TASK_NAME = 128
MAX_TIMEOUT = 30 * 24 * 3600
# Hard ceilings of the per-run limits a task may ask for (the server's maxima may be lower).
MAX_MEMORY_LIMIT_MB = 16 * 1024 * 1024
MAX_PROCESSES = 4 * 1024 * 1024
MAX_CPU_LIMIT = 4096
PYTHON_VERSION_MAX = 16
MAX_ZONE_NAME = 64
ZONE_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_+\-]*(/[A-Za-z0-9_+\-]+)*")
"""The shape of an IANA zone name (``UTC``, ``Asia/Shanghai``, ``Etc/GMT+8``): no dots, so no
path can be named through it."""

DEFAULT_PAGE = 500
MAX_PAGE = 5000
"""Executions per page of the history and of a task's detail: by default, and at most."""


def _fields(command: Any) -> dict[str, object]:
    return attrs.asdict(command, recurse=False)


def _flag(field: str, value: object, default: bool | None) -> bool | None:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidInput(field, f"'{field}' must be true or false")
    return value


def _optional_str(field: str, value: object, limit: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput(field, f"'{field}' must be a string")
    if len(value.encode("utf-8", "surrogatepass")) > limit:
        raise InvalidInput(field, f"'{field}' must be at most {limit} bytes")
    return value


def check_limit(
    field: str, value: object, maximum: float | None, ceiling: float, *, whole: bool = False
) -> float | None:
    """A per-run limit: None, or a number > 0 (``whole``: an integer >= 1) at most
    ``maximum`` (the server's, when set) and ``ceiling``."""
    if value is None:
        return None
    kind = "a whole number >= 1" if whole else "a number > 0"
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (isinstance(value, float) and not math.isfinite(value))
        or (whole and isinstance(value, float) and not value.is_integer())
        or not (value >= 1 if whole else value > 0)
    ):
        raise InvalidInput(field, f"'{field}' must be {kind}")
    limit = ceiling if maximum is None else min(maximum, ceiling)
    if value > limit:
        shown = int(limit) if float(limit).is_integer() else limit
        raise InvalidInput(field, f"'{field}' must be at most {shown}")
    return float(value)


def _python_version(value: object) -> str | None:
    if value is None:
        return None
    if (
        not isinstance(value, str)
        or not 0 < len(value) <= PYTHON_VERSION_MAX
        or not all(part.isdigit() for part in value.split("."))
    ):
        raise InvalidInput("python_version", "'python_version' must be a version like \"3.11\"")
    return value


# --- tasks -------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class NewTask:
    """A task to create: a script (a path to a ``.py`` file or the code itself) to run in the
    environment ``conda_env``, now, after ``delay_seconds`` or on ``cron_expression``.

    Absent per-run limits (None) take the server's defaults at run time.
    """

    script: str
    conda_env: str
    task_name: str | None = None
    requirements: str | None = None
    """pip requirements installed into the environment before the task is stored."""
    reuse_env: bool = False
    """Refuse to create the environment when it does not exist."""
    cron_expression: str | None = None
    delay_seconds: float | None = None
    timeout_seconds: float | None = None
    memory_limit_mb: float | None = None
    max_processes: int | None = None
    cpu_limit: float | None = None
    network: bool | None = None
    timezone: str | None = None
    """An IANA name (``Asia/Shanghai``) the cron expression is read in; None: the server's.
    Whether the zone exists is checked by the use case (it needs the zone database)."""

    def checked(self) -> NewTask:
        """This command with every rule of ``from_json`` applied (raises as it does)."""
        return NewTask.from_json(_fields(self))

    @classmethod
    def from_json(cls, body: Mapping[str, object]) -> NewTask:
        """Raises the ``InvalidInput`` family, ``ScheduleConflict``, ``InvalidCronExpression``
        and ``InvalidDelay``, checking the fields in the order api.md lists them."""
        script = body.get("script")
        if not isinstance(script, str) or not script.strip():
            raise InvalidInput("script", "'script' is required: a path to a .py file or code")
        if len(script.encode("utf-8", "surrogatepass")) > MAX_SCRIPT_BYTES:
            raise InvalidInput("script", f"'script' must be at most {MAX_SCRIPT_BYTES} bytes")
        if body.get("conda_env") is None:
            raise InvalidInput("conda_env", "'conda_env' is required")
        env_name = validate_environment_name(body.get("conda_env"))
        task_name = _optional_str("task_name", body.get("task_name"), MAX_TASK_NAME)
        if task_name is not None:
            if not task_name.strip():
                raise InvalidInput("task_name", "'task_name' must be a non-empty single line")
            # Stored in NFC, so the uniqueness check sees "Cafe\u0301" and "Caf\u00e9" as one.
            task_name = _optional_str(
                "task_name", printable_line("task_name", task_name), MAX_TASK_NAME
            )
        requirements = _optional_str(
            "requirements", body.get("requirements"), MAX_REQUIREMENTS_BYTES
        )
        if requirements is not None:
            validate_requirements(requirements)
        reuse_env = bool(_flag("reuse_env", body.get("reuse_env"), False))
        timeout = body.get("timeout_seconds")
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not 0 < timeout <= MAX_TIMEOUT
        ):
            raise InvalidInput(
                "timeout_seconds", f"'timeout_seconds' must be in (0, {MAX_TIMEOUT}]"
            )
        memory = check_limit(
            "memory_limit_mb", body.get("memory_limit_mb"), None, MAX_MEMORY_LIMIT_MB
        )
        processes = check_limit(
            "max_processes", body.get("max_processes"), None, MAX_PROCESSES, whole=True
        )
        cpu = check_limit("cpu_limit", body.get("cpu_limit"), None, MAX_CPU_LIMIT)
        network = _flag("network", body.get("network"), None)
        cron, delay = validate_schedule(body.get("cron_expression"), body.get("delay_seconds"))
        zone = _optional_str("timezone", body.get("timezone"), MAX_ZONE_NAME)
        if zone is not None and not ZONE_NAME_RE.fullmatch(zone):
            raise InvalidInput("timezone", "'timezone' must be an IANA time zone name")
        return cls(
            script=script,
            conda_env=env_name,
            task_name=task_name,
            requirements=requirements,
            reuse_env=reuse_env,
            cron_expression=cron,
            delay_seconds=delay,
            timeout_seconds=float(timeout) if timeout is not None else None,
            memory_limit_mb=memory,
            max_processes=int(processes) if processes is not None else None,
            cpu_limit=cpu,
            network=network,
            timezone=zone,
        )


@attrs.frozen(kw_only=True)
class Page:
    """Which executions to read: ``limit`` of them, newest first, after the one ``before``."""

    limit: int = DEFAULT_PAGE
    before: str | None = None

    @classmethod
    def from_query(cls, limit: str | None, before: str | None, *, name: str = "limit") -> Page:
        """A page from query parameters (``name`` is the parameter ``limit`` came as)."""
        if limit is None:
            return cls(before=before)
        if not limit.isdigit() or not 1 <= int(limit) <= MAX_PAGE:
            raise _bad_page(name)
        return cls(limit=int(limit), before=before)

    def checked(self) -> Page:
        if (
            isinstance(self.limit, bool)
            or not isinstance(self.limit, int)
            or not 1 <= self.limit <= MAX_PAGE
        ):
            raise _bad_page("limit")
        return self


def _bad_page(name: str) -> InvalidInput:
    return InvalidInput(name, f"'{name}' must be a whole number from 1 to {MAX_PAGE}")


# --- environments ------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class NewEnvironment:
    """An environment to create, with an optional Python version and packages to install."""

    name: str
    python_version: str | None = None
    packages: tuple[str, ...] = ()

    def checked(self) -> NewEnvironment:
        return NewEnvironment.from_json({**_fields(self), "packages": list(self.packages) or None})

    @classmethod
    def from_json(cls, body: Mapping[str, object]) -> NewEnvironment:
        """Raises ``InvalidEnvironmentName``, ``InvalidInput`` and ``InvalidPackageSpec``."""
        name = validate_environment_name(body.get("name"))
        version = _python_version(body.get("python_version"))
        packages = body.get("packages")
        specs = [] if packages is None or packages == [] else validate_specs("packages", packages)
        return cls(name=name, python_version=version, packages=tuple(specs))


@attrs.frozen(kw_only=True)
class PackageChange:
    """Packages to install in (specs: ``numpy>=1.2``) or remove from (names) an environment."""

    environment: str
    packages: tuple[str, ...]

    def checked(self, *, names_only: bool = False) -> PackageChange:
        return PackageChange.from_json(
            self.environment, {"packages": list(self.packages)}, names_only=names_only
        )

    @classmethod
    def from_json(
        cls, environment: str, body: Mapping[str, object], *, names_only: bool = False
    ) -> PackageChange:
        """Raises ``InvalidEnvironmentName`` and ``InvalidPackageSpec``."""
        name = validate_environment_name(environment)
        specs = validate_specs("packages", body.get("packages"), names_only=names_only)
        return cls(environment=name, packages=tuple(specs))


@attrs.frozen(kw_only=True)
class RenameEnvironment:
    environment: str
    new_name: str

    def checked(self) -> RenameEnvironment:
        return RenameEnvironment.from_json(self.environment, {"new_name": self.new_name})

    @classmethod
    def from_json(cls, environment: str, body: Mapping[str, object]) -> RenameEnvironment:
        """Raises ``InvalidInput`` (no ``new_name``) and ``InvalidEnvironmentName``."""
        if "new_name" not in body:
            raise InvalidInput("new_name", "'new_name' is required")
        return cls(
            environment=validate_environment_name(environment),
            new_name=validate_environment_name(body.get("new_name")),
        )


# --- users -------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class NewUser:
    username: str
    password: str = attrs.field(repr=False)
    is_admin: bool = False

    def checked(self) -> NewUser:
        return NewUser.from_json(_fields(self))

    @classmethod
    def from_json(cls, body: Mapping[str, object]) -> NewUser:
        """Raises ``InvalidCredentialsFormat`` and ``InvalidInput`` (``is_admin``)."""
        name = validate_username(body.get("username"))
        secret = validate_password(body.get("password"))
        is_admin = body.get("is_admin", False)
        if not isinstance(is_admin, bool):
            raise InvalidInput("is_admin", "'is_admin' must be true or false")
        return cls(username=name, password=secret, is_admin=is_admin)


@attrs.frozen(kw_only=True)
class Credentials:
    """A login attempt. Any text is an attempt (a wrong-looking one simply fails as wrong)."""

    username: str
    password: str = attrs.field(repr=False)

    @classmethod
    def from_json(cls, body: Mapping[str, object]) -> Credentials:
        username, password = body.get("username"), body.get("password")
        return cls(
            username=username if isinstance(username, str) else "",
            password=password if isinstance(password, str) else "",
        )


@attrs.frozen(kw_only=True)
class PasswordChange:
    """A user's change of their own password."""

    current_password: str = attrs.field(repr=False)
    new_password: str = attrs.field(repr=False)

    def checked(self) -> PasswordChange:
        return PasswordChange.from_json(_fields(self))

    @classmethod
    def from_json(cls, body: Mapping[str, object]) -> PasswordChange:
        """Raises ``InvalidInput`` (``current_password`` missing) and
        ``InvalidCredentialsFormat`` (``new_password`` out of bounds)."""
        current = body.get("current_password")
        if not isinstance(current, str) or not current:
            raise InvalidInput("current_password", "'current_password' must be a string")
        return cls(
            current_password=current[:1025],
            new_password=validate_password(body.get("new_password"), field="new_password"),
        )


USER_FIELDS = ("is_admin", "disabled", "password")


@attrs.frozen(kw_only=True)
class UserUpdate:
    """An admin's change to a user: any of ``is_admin``, ``disabled``, ``password``."""

    is_admin: bool | None = None
    disabled: bool | None = None
    password: str | None = attrs.field(default=None, repr=False)

    def checked(self) -> UserUpdate:
        return UserUpdate.from_json({k: v for k, v in _fields(self).items() if v is not None})

    @classmethod
    def from_json(cls, body: Mapping[str, object]) -> UserUpdate:
        """Raises ``InvalidInput`` for an unknown field, none at all, or a wrong type, and
        ``InvalidCredentialsFormat`` for a password out of bounds."""
        unknown = sorted(set(body) - set(USER_FIELDS))
        if unknown:
            raise InvalidInput(
                unknown[0][:64],
                f"Unknown field '{unknown[0][:64]}': expected {', '.join(USER_FIELDS)}",
            )
        if not any(body.get(k) is not None for k in USER_FIELDS):
            raise InvalidInput(
                "is_admin", f"Nothing to change: give any of {', '.join(USER_FIELDS)}"
            )
        password = body.get("password")
        return cls(
            is_admin=_flag("is_admin", body.get("is_admin"), None),
            disabled=_flag("disabled", body.get("disabled"), None),
            password=None if password is None else validate_password(password),
        )


MAX_TOKEN_DAYS = 3650
DEFAULT_TOKEN_DAYS = 90


@attrs.frozen(kw_only=True)
class NewToken:
    """An API token to create: a name (one printable line) and a lifetime in days."""

    name: str
    expires_in_days: int = DEFAULT_TOKEN_DAYS

    def checked(self) -> NewToken:
        return NewToken.from_json(_fields(self))

    @classmethod
    def from_json(cls, body: Mapping[str, object]) -> NewToken:
        """Raises ``InvalidInput`` (``name``, ``expires_in_days``)."""
        name = body.get("name")
        if not isinstance(name, str) or not name.strip() or len(name) > 100:
            raise InvalidInput("name", "'name' must be a string of 1-100 characters")
        days = body.get("expires_in_days", DEFAULT_TOKEN_DAYS)
        if days is None:
            days = DEFAULT_TOKEN_DAYS
        if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_TOKEN_DAYS:
            raise InvalidInput(
                "expires_in_days",
                f"'expires_in_days' must be a whole number from 1 to {MAX_TOKEN_DAYS}",
            )
        return cls(name=printable_line("name", name.strip()), expires_in_days=days)
