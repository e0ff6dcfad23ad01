"""The one domain error hierarchy.

Every error carries what an API body needs: a short ``message``, an optional longer ``error``
and any ``details`` (failed specs, referencing tasks, ...). The core knows no status codes: the
HTTP layer maps each class to one in a single table.
"""

from __future__ import annotations

from typing import Any


class CtmError(Exception):
    """Base of every error ctm raises on purpose."""

    message: str = "Error"

    def __init__(self, message: str | None = None, error: str | None = None, **details: Any):
        self.message = message if message is not None else type(self).message
        self.error = error
        self.details: dict[str, Any] = details
        super().__init__(self.message if error is None else f"{self.message}: {error}")


# --- input -------------------------------------------------------------------------------------


class InvalidInput(CtmError, ValueError):
    """A request field is missing, of the wrong type, out of range or malformed."""

    message = "Invalid input"

    def __init__(self, field: str, error: str, message: str | None = None, **details: Any):
        self.field = field
        super().__init__(message or f"Invalid value for '{field}'", error, field=field, **details)


class InvalidEnvironmentName(InvalidInput):
    def __init__(self, name: object, error: str):
        super().__init__("name", error, message="Invalid environment name")
        self.name = name


class InvalidPackageSpec(InvalidInput):
    def __init__(self, field: str, bad_specs: list[str], error: str | None = None):
        shown = ", ".join(repr(s) for s in bad_specs[:10])
        super().__init__(
            field,
            error or f"Invalid package specification: {shown}",
            message="Invalid package specification",
            invalid_packages=bad_specs,
        )


class InvalidCredentialsFormat(InvalidInput):
    """Username or password does not meet the rules (create_user)."""


class ScheduleConflict(CtmError, ValueError):
    message = "Please specify either cron expression or delay seconds, not both"

    def __init__(self) -> None:
        super().__init__(error="Cannot specify both cron_expression and delay_seconds")


class InvalidCronExpression(CtmError, ValueError):
    message = "The provided cron expression is invalid"

    def __init__(self, detail: str):
        super().__init__(error=f"Invalid cron expression: {detail}", field="cron_expression")


class InvalidDelay(CtmError, ValueError):
    message = "Please provide a non-negative delay value"

    def __init__(self) -> None:
        super().__init__(error="Delay seconds must be non-negative", field="delay_seconds")


# --- authentication and permission -------------------------------------------------------------


class AuthenticationRequired(CtmError, PermissionError):
    message = "Authentication required"

    def __init__(self) -> None:
        super().__init__(error="Please log in to perform this operation")


class InvalidCredentials(CtmError, PermissionError):
    message = "Invalid username or password"

    def __init__(self) -> None:
        super().__init__()


class TooManyLoginAttempts(CtmError, PermissionError):
    message = "Too many failed login attempts"

    def __init__(self, retry_after: int):
        super().__init__(retry_after=retry_after)
        self.retry_after = retry_after


class AdminRequired(CtmError, PermissionError):
    message = "Unauthorized - Admin privileges required"

    def __init__(self) -> None:
        super().__init__()


class NotOwner(CtmError, PermissionError):
    """The caller may not change this object: neither its owner nor an admin."""

    message = "Unauthorized - Insufficient privileges"

    def __init__(self, action: str):
        super().__init__(error=f"You do not have permission to {action}")


class CrossSiteRequest(CtmError, PermissionError):
    message = "Cross-site request refused"

    def __init__(self) -> None:
        super().__init__(error="State-changing requests must come from this site")


class ScriptOutsideRoots(CtmError, PermissionError):
    message = "Unauthorized - Insufficient privileges"

    def __init__(self, path: str):
        super().__init__(error=f"Script path '{path}' is outside the allowed script roots")


# --- users -------------------------------------------------------------------------------------


class UserExists(CtmError, ValueError):
    message = "User already exists"

    def __init__(self, username: str):
        super().__init__(error=f"User '{username}' already exists", field="username")


# --- environments ------------------------------------------------------------------------------


class EnvironmentNotFound(CtmError, LookupError):
    message = "Environment not found"

    def __init__(self, name: str):
        super().__init__(error=f"Environment '{name}' not found")
        self.name = name


class EnvironmentExists(CtmError, ValueError):
    message = "Environment with this name already exists"

    def __init__(self, name: str, error: str | None = None):
        super().__init__(error=error or f"Environment '{name}' already exists")
        self.name = name


class EnvironmentInUse(CtmError, ValueError):
    """The environment is used by tasks (running ones for changes, any for delete)."""

    def __init__(self, message: str, referencing_tasks: list[str]):
        super().__init__(
            message, "Environment is in use by tasks", referencing_tasks=referencing_tasks
        )
        self.referencing_tasks = referencing_tasks


class PackageOperationFailed(CtmError, ValueError):
    """conda/pip refused or failed: carries the failed specs and the tool's full output."""

    def __init__(
        self,
        message: str,
        *,
        failed_packages: list[str],
        error_details: list[str],
        output: str,
    ):
        super().__init__(
            message, output, failed_packages=failed_packages, error_details=error_details
        )
        self.failed_packages = failed_packages
        self.error_details = error_details
        self.output = output


class BackendFailure(CtmError, RuntimeError):
    """The environment tool failed in a way that is not the caller's fault."""

    message = "Environment backend failure"


# --- tasks -------------------------------------------------------------------------------------


class TaskNotFound(CtmError, LookupError):
    def __init__(self, task_id: object):
        super().__init__(f"Task with ID {task_id} not found")
        self.task_id = task_id


class TaskExists(CtmError, ValueError):
    message = "Task with this name already exists"

    def __init__(self, name: str):
        super().__init__(error=f"Task with name '{name}' already exists", field="task_name")


class ReuseMissingEnvironment(CtmError, ValueError):
    message = "Cannot reuse non-existing environment"

    def __init__(self, name: str):
        super().__init__(error=f"Environment '{name}' not found", field="conda_env")


class ScriptNotFound(CtmError, ValueError):
    message = "Script file not found"

    def __init__(self, path: str):
        super().__init__(error=f"No such file: '{path}'", field="script")


class RequirementsFailed(CtmError, ValueError):
    def __init__(
        self,
        *,
        new_environment: bool,
        failed_packages: list[str],
        error_details: list[str],
        output: str,
        environment_state: str | None = None,
    ):
        message = (
            "Failed to install requirements in new environment"
            if new_environment
            else "Failed to install requirements in existing environment"
        )
        details: dict[str, Any] = {
            "failed_packages": failed_packages,
            "error_details": error_details,
            "field": "requirements",
        }
        if environment_state is not None:
            details["environment_state"] = environment_state
        super().__init__(message, output, **details)


class TaskNotRunning(CtmError, ValueError):
    message = "Task is not in a running state"

    def __init__(self, status: str):
        super().__init__(
            error=f"Cannot stop a task with status: '{status}'", current_status=status
        )


class TaskLimitReached(CtmError, PermissionError):
    """A non-admin already owns the most tasks one user may have."""

    message = "Task limit reached"

    def __init__(self, limit: int):
        super().__init__(error=f"At most {limit} tasks per user")
        self.limit = limit
