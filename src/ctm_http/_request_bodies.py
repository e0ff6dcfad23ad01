"""The JSON bodies the server reads (``REQUESTS``: one schema per request body, by component
name), declared once like the ones it writes (``_bodies``). The rules behind them are the
commands' (``ctm_core.commands``); the patterns and bounds here are built from the same
constants and regexes."""

from __future__ import annotations

from ctm_core.commands import (
    DEFAULT_TOKEN_DAYS,
    MAX_CPU_LIMIT,
    MAX_MEMORY_LIMIT_MB,
    MAX_PROCESSES,
    MAX_REQUIREMENTS_BYTES,
    MAX_SCRIPT_BYTES,
    MAX_TASK_NAME,
    MAX_TIMEOUT,
    MAX_TOKEN_DAYS,
    MAX_ZONE_NAME,
    ZONE_NAME_RE,
)
from ctm_core.schedule import MAX_CRON_LENGTH, MAX_DELAY_SECONDS
from ctm_core.validation import USERNAME_RE
from ctm_http._schema import (
    BOOL,
    ENV_NAME,
    INT,
    NUM,
    PACKAGE_NAMES,
    SPECS,
    STR,
    Schema,
    null,
    obj,
    pattern,
)

REQUESTS: dict[str, Schema] = {
    "LoginRequest": obj({"username": STR, "password": STR}),
    "CreateUserRequest": obj(
        {
            "username": {"type": "string", "pattern": pattern(USERNAME_RE.pattern)},
            "password": {"type": "string", "minLength": 8, "maxLength": 1024},
        },
        {"is_admin": {**BOOL, "default": False}},
    ),
    "UpdateUserRequest": obj(
        {},
        {
            "is_admin": BOOL,
            "disabled": {**BOOL, "description": "true: no login, every session ended"},
            "password": {
                "type": "string",
                "minLength": 8,
                "maxLength": 1024,
                "description": "A new password; every session of the user ends",
            },
        },
        minProperties=1,
        additionalProperties=False,
    ),
    "CreateTokenRequest": obj(
        {"name": {"type": "string", "minLength": 1, "maxLength": 100}},
        {
            "expires_in_days": {
                **INT,
                "minimum": 1,
                "maximum": MAX_TOKEN_DAYS,
                "default": DEFAULT_TOKEN_DAYS,
            }
        },
    ),
    "ChangePasswordRequest": obj(
        {
            "current_password": {"type": "string", "minLength": 1},
            "new_password": {"type": "string", "minLength": 8, "maxLength": 1024},
        }
    ),
    "CreateEnvironmentRequest": obj(
        {"name": ENV_NAME},
        {
            "python_version": null(
                {"type": "string", "pattern": r"^\d+(\.\d+)*$", "maxLength": 16}
            ),
            "packages": null(SPECS),
        },
    ),
    "CreateTaskRequest": obj(
        {
            "script": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_SCRIPT_BYTES,
                "description": "A single line ending in .py is an absolute path to a file to "
                "run; anything else is the script's content (at most 1 MiB)",
            },
            "conda_env": ENV_NAME,
        },
        {
            "task_name": null(
                {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": MAX_TASK_NAME,
                    "description": "Unique; defaults to the script's file name. One line of "
                    "printable characters (no control, format or line-separator character: "
                    "Unicode Cc, Cf, Zl, Zp), compared and stored in NFC",
                }
            ),
            "requirements": null(
                {
                    "type": "string",
                    "maxLength": MAX_REQUIREMENTS_BYTES,
                    "description": "requirements.txt text (at most 64 KiB)",
                }
            ),
            "reuse_env": null({**BOOL, "default": False}),
            "cron_expression": null(
                {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": MAX_CRON_LENGTH,
                    "description": "5 fields, an @hourly-style macro, or 6 fields with seconds "
                    "last, in the server's time zone. Not together with delay_seconds",
                }
            ),
            "delay_seconds": null({**NUM, "minimum": 0, "maximum": MAX_DELAY_SECONDS}),
            "timeout_seconds": null(
                {
                    **NUM,
                    "exclusiveMinimum": 0,
                    "maximum": MAX_TIMEOUT,
                    "description": "Absent: the server's default",
                }
            ),
            "memory_limit_mb": null(
                {
                    **NUM,
                    "exclusiveMinimum": 0,
                    "maximum": MAX_MEMORY_LIMIT_MB,
                    "description": "Memory limit of each run's whole process tree, MB (at most the "
                    "server's maximum). Absent: the server's default",
                }
            ),
            "max_processes": null(
                {
                    **INT,
                    "minimum": 1,
                    "maximum": MAX_PROCESSES,
                    "description": "Processes each run may have at once (at most the server's "
                    "maximum). Absent: the server's default",
                }
            ),
            "cpu_limit": null(
                {
                    **NUM,
                    "exclusiveMinimum": 0,
                    "maximum": MAX_CPU_LIMIT,
                    "description": "CPU cores each run may use (at most the server's maximum). "
                    "Absent: the server's default",
                }
            ),
            "network": null(
                {
                    **BOOL,
                    "description": "false cuts the runs' network; absent or "
                    "true: the server's setting",
                }
            ),
            "timezone": null(
                {
                    "type": "string",
                    "maxLength": MAX_ZONE_NAME,
                    "pattern": pattern(ZONE_NAME_RE.pattern),
                    "description": "An IANA time zone name (Asia/Shanghai) to read "
                    "cron_expression in, daylight saving included; absent: the server's zone. "
                    "An unknown zone is 400",
                }
            ),
        },
    ),
    "RenameEnvironmentRequest": obj({"new_name": ENV_NAME}),
    "PackagesRequest": obj({"packages": SPECS}),
    "RemovePackagesRequest": obj({"packages": PACKAGE_NAMES}),
}
