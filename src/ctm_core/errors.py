"""The one domain error hierarchy.

Every error carries what an API body needs: a short ``message``, an optional longer ``error``
and any ``details`` (failed specs, referencing tasks, ...). The core knows no status codes: the
HTTP layer maps each class to one in a single table.

The wording lives on the classes, so that the API's description is derived from it rather than
typed again: ``message`` (the default short message, ``{field}`` style placeholders standing for
what the raiser fills in), ``messages`` (when the raiser picks one of several) and
``error_format`` (the template of ``error``; empty when the raiser words it).
"""

from __future__ import annotations

from typing import Any, ClassVar


class CtmError(Exception):
    """Base of every error ctm raises on purpose."""

    message: str = "Error"
    messages: ClassVar[tuple[str, ...]] = ()
    error_format: ClassVar[str] = ""

    def __init__(self, message: str | None = None, error: str | None = None, **details: Any):
        self.message = message if message is not None else type(self).message
        self.error = error
        self.details: dict[str, Any] = details
        super().__init__(self.message if error is None else f"{self.message}: {error}")


# --- input -------------------------------------------------------------------------------------


class InvalidInput(CtmError, ValueError):
    """A request field is missing, of the wrong type, out of range or malformed."""

    message = "Invalid value for '{field}'"

    def __init__(self, field: str, error: str, message: str | None = None, **details: Any):
        self.field = field
        message = message or type(self).message.format(field=field)
        super().__init__(message, error, field=field, **details)


class InvalidEnvironmentName(InvalidInput):
    message = "Invalid environment name"

    def __init__(self, name: object, error: str):
        super().__init__("name", error)
        self.name = name


class InvalidPackageSpec(InvalidInput):
    message = "Invalid package specification"
    error_format = "Invalid package specification: {shown}"

    def __init__(self, field: str, bad_specs: list[str], error: str | None = None):
        shown = ", ".join(repr(s) for s in bad_specs[:10])
        super().__init__(
            field, error or self.error_format.format(shown=shown), invalid_packages=bad_specs
        )


class InvalidCredentialsFormat(InvalidInput):
    """Username or password does not meet the rules (create_user)."""

    message = "Invalid username or password format"


class ScheduleConflict(CtmError, ValueError):
    message = "Please specify either cron expression or delay seconds, not both"
    error_format = "Cannot specify both cron_expression and delay_seconds"

    def __init__(self) -> None:
        super().__init__(error=self.error_format)


class InvalidCronExpression(CtmError, ValueError):
    message = "The provided cron expression is invalid"
    error_format = "Invalid cron expression: {detail}"

    def __init__(self, detail: str):
        super().__init__(error=self.error_format.format(detail=detail), field="cron_expression")


class InvalidDelay(CtmError, ValueError):
    message = "Please provide a non-negative delay value"

    error_format = "Delay seconds must be non-negative"

    def __init__(self) -> None:
        super().__init__(error=self.error_format, field="delay_seconds")


# --- authentication and permission -------------------------------------------------------------


class AuthenticationRequired(CtmError, PermissionError):
    message = "Authentication required"
    error_format = "Please log in to perform this operation"

    def __init__(self) -> None:
        super().__init__(error=self.error_format)


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
    error_format = "You do not have permission to {action}"

    def __init__(self, action: str):
        super().__init__(error=self.error_format.format(action=action))


class CrossSiteRequest(CtmError, PermissionError):
    message = "Cross-site request refused"
    error_format = "State-changing requests must come from this site"

    def __init__(self) -> None:
        super().__init__(error=self.error_format)


class ScriptOutsideRoots(CtmError, PermissionError):
    message = "Unauthorized - Insufficient privileges"
    error_format = "Script path '{path}' is outside the allowed script roots"

    def __init__(self, path: str):
        super().__init__(error=self.error_format.format(path=path))


# --- users -------------------------------------------------------------------------------------


class UserExists(CtmError, ValueError):
    message = "User already exists"
    error_format = "User '{username}' already exists"

    def __init__(self, username: str):
        super().__init__(error=self.error_format.format(username=username), field="username")


class UserNotFound(CtmError, LookupError):
    message = "User not found"
    error_format = "No user named '{username}'"

    def __init__(self, username: str):
        super().__init__(error=self.error_format.format(username=username))


class LastAdmin(CtmError, ValueError):
    """The change would leave no enabled admin."""

    message = "Cannot remove the last admin"
    error_format = "'{username}' is the only enabled admin: make another user admin first"

    def __init__(self, username: str):
        super().__init__(error=self.error_format.format(username=username))


class UserOwnsTasks(CtmError, ValueError):
    """A user who still owns tasks cannot be deleted (disable them, or delete the tasks)."""

    message = "User still owns tasks"
    error_format = "'{username}' owns {count} task(s): delete them first, or disable the user"

    def __init__(self, username: str, count: int):
        super().__init__(
            error=self.error_format.format(username=username, count=count), tasks=count
        )


class WrongPassword(CtmError, PermissionError):
    """A password change whose ``current_password`` is not the user's password."""

    message = "Current password is incorrect"

    def __init__(self) -> None:
        super().__init__(field="current_password")


class TokenNotFound(CtmError, LookupError):
    message = "Token not found"
    error_format = "No token with id {token_id} of yours"

    def __init__(self, token_id: object):
        super().__init__(error=self.error_format.format(token_id=token_id))


# --- storage -----------------------------------------------------------------------------------


class StorageUnavailable(CtmError, RuntimeError):
    """The store cannot be written just now (disk full, read-only filesystem, I/O error): the
    change was not made; reads still work."""

    message = "Storage unavailable"
    error_format = "The server cannot save changes right now ({reason}); try again later"

    def __init__(self, reason: str):
        super().__init__(error=self.error_format.format(reason=reason))
        self.reason = reason


# --- environments ------------------------------------------------------------------------------


class EnvironmentNotFound(CtmError, LookupError):
    message = "Environment not found"
    error_format = "Environment '{name}' not found"

    def __init__(self, name: str):
        super().__init__(error=self.error_format.format(name=name))
        self.name = name


class EnvironmentExists(CtmError, ValueError):
    message = "Environment with this name already exists"
    error_format = "Environment '{name}' already exists"

    def __init__(self, name: str, error: str | None = None):
        super().__init__(error=error or self.error_format.format(name=name))
        self.name = name


class EnvironmentInUse(CtmError, ValueError):
    """The environment is used by tasks (running ones for changes, any for delete)."""

    RENAME = "Cannot rename environment that is used by running tasks"
    MODIFY = "Cannot modify packages in environment that is referenced by running tasks"
    REMOVE = "Cannot remove packages from environment that is referenced by running tasks"
    DELETE = "Cannot delete environment that is referenced by tasks"
    messages = (RENAME, MODIFY, REMOVE, DELETE)
    error_format = "Environment is in use by tasks"

    def __init__(self, message: str, referencing_tasks: list[str]):
        super().__init__(message, self.error_format, referencing_tasks=referencing_tasks)
        self.referencing_tasks = referencing_tasks


class PackageOperationFailed(CtmError, ValueError):
    """conda/pip refused or failed: carries the failed specs and the tool's full output (as
    ``error``)."""

    CREATE = "Failed to create environment"
    INSTALL = "Failed to install packages"
    REMOVE = "Failed to remove packages"
    REQUIREMENTS = "Failed to install requirements"
    messages = (CREATE, INSTALL, REMOVE, REQUIREMENTS)

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
    message = "Task with ID {task_id} not found"

    def __init__(self, task_id: object):
        super().__init__(self.message.format(task_id=task_id))
        self.task_id = task_id


class ExecutionNotFound(CtmError, LookupError):
    """No execution with this id belongs to the task: unknown, pruned, or another task's."""

    message = "Execution not found"
    error_format = "Task {task_id} has no execution '{execution_id}'"

    def __init__(self, task_id: object, execution_id: str):
        super().__init__(error=self.error_format.format(task_id=task_id, execution_id=execution_id))
        self.task_id = task_id
        self.execution_id = execution_id


class TaskExists(CtmError, ValueError):
    message = "Task with this name already exists"
    error_format = "Task with name '{name}' already exists"

    def __init__(self, name: str):
        super().__init__(error=self.error_format.format(name=name), field="task_name")


class ReuseMissingEnvironment(CtmError, ValueError):
    message = "Cannot reuse non-existing environment"
    error_format = "Environment '{name}' not found"

    def __init__(self, name: str):
        super().__init__(error=self.error_format.format(name=name), field="conda_env")


class ScriptNotFound(CtmError, ValueError):
    message = "Script file not found"
    error_format = "No such file: '{path}'"

    def __init__(self, path: str):
        super().__init__(error=self.error_format.format(path=path), field="script")


class RequirementsFailed(CtmError, ValueError):
    """Requirements did not install; ``error`` is the tool's full output."""

    NEW_ENVIRONMENT = "Failed to install requirements in new environment"
    EXISTING_ENVIRONMENT = "Failed to install requirements in existing environment"
    messages = (NEW_ENVIRONMENT, EXISTING_ENVIRONMENT)

    def __init__(
        self,
        *,
        new_environment: bool,
        failed_packages: list[str],
        error_details: list[str],
        output: str,
        environment_state: str | None = None,
    ):
        message = self.NEW_ENVIRONMENT if new_environment else self.EXISTING_ENVIRONMENT
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
    error_format = "Cannot stop a task with status: '{status}'"

    def __init__(self, status: str):
        super().__init__(error=self.error_format.format(status=status), current_status=status)


class TaskAlreadyActive(CtmError, ValueError):
    """A run now was asked while a run of the task is queued or running."""

    message = "Task is already running"
    error_format = "A run of task {task_id} is queued or running: stop it or wait for it to end"

    def __init__(self, task_id: int):
        super().__init__(error=self.error_format.format(task_id=task_id))


class TaskLimitReached(CtmError, PermissionError):
    """A non-admin already owns the most tasks one user may have."""

    message = "Task limit reached"
    error_format = "At most {limit} tasks per user"

    def __init__(self, limit: int):
        super().__init__(error=self.error_format.format(limit=limit))
        self.limit = limit
