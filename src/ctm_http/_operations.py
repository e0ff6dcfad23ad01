"""The routes as the description shows them: one ``Op`` per route of ``app.ROUTES`` (and the
description's and the dashboard's own), naming its bodies (declared in ``_bodies``), the domain
errors it can raise, its query parameters and the api.md examples."""

from __future__ import annotations

from ctm_core import errors as e
from ctm_http import _bodies as b
from ctm_http._log_operations import LOG_OPERATIONS
from ctm_http._op import OPENAPI_DOCUMENT, Op
from ctm_http._task_operations import TASK_OPERATIONS
from ctm_http._user_operations import TOKEN_OPERATIONS, USER_OPERATIONS

_ENV = ("environments",)
_TASKS = ("tasks",)
_ENV_PARAM_ERRORS = (e.InvalidEnvironmentName, e.EnvironmentNotFound)

_IN_USE = {
    "success": False,
    "message": "Cannot delete environment that is referenced by tasks",
    "error": "Environment is in use by tasks",
    "referencing_tasks": ["/srv/ctm/scripts/task_1.py"],
}

OPERATIONS: tuple[Op, ...] = (
    Op(
        method="POST",
        path="/login",
        operation_id="login",
        summary="Log in",
        tag="auth",
        auth="none",
        body="LoginRequest",
        sets_cookie=True,
        body_examples=(("admin", {"username": "admin", "password": "choose-a-long-one"}),),
        ok=b.LOGGED_IN,
        ok_examples=(
            (
                "ok",
                {
                    "success": True,
                    "message": "Login successful",
                    "user": {"username": "admin", "is_admin": True},
                },
            ),
        ),
        errors=(e.InvalidCredentials, e.TooManyLoginAttempts),
        error_examples=(
            (401, "wrong", {"success": False, "message": "Invalid username or password"}),
            (
                429,
                "throttled",
                {"success": False, "message": "Too many failed login attempts", "retry_after": 840},
            ),
        ),
        description="Opens a server-side session and sets the `session` cookie "
        "(HttpOnly; SameSite=Lax; Max-Age=900). An unknown user, a disabled one and a wrong "
        "password get the same 401. Failures are counted per (username, client address) pair "
        "and per address, never per username alone: 5 failures of one pair within 15 minutes "
        "lock that pair out, 20 from one address (any usernames) lock the address out; either "
        "answers 429 with `retry_after` (seconds; also a Retry-After header) without checking "
        "the password. Each further lockout within a day lasts twice as long (15, 30, 60 "
        "minutes... at most 24 hours). The right password from an address without recent "
        "failures always works. An IPv6 client counts by its /64 network. A user keeps at "
        "most `CTM_MAX_SESSIONS_PER_USER` sessions (20): a login beyond it ends their oldest.",
    ),
    Op(
        method="POST",
        path="/logout",
        operation_id="logout",
        summary="Log out",
        tag="auth",
        auth="optional",
        sets_cookie=True,
        ok=b.LOGGED_OUT,
        ok_examples=(("ok", {"success": True, "message": "Logout successful"}),),
        description="Ends the session and clears the cookie (Max-Age=0). Idempotent: 200 "
        "with or without a session.",
    ),
    Op(
        method="POST",
        path="/create_user",
        operation_id="createUser",
        summary="Create a user (admins only)",
        tag="auth",
        ok_status=201,
        body="CreateUserRequest",
        body_examples=(
            ("user", {"username": "alice", "password": "alice-password", "is_admin": False}),
        ),
        ok=b.USER_CREATED,
        ok_examples=(
            (
                "created",
                {
                    "success": True,
                    "message": "User created successfully",
                    "user": {"username": "alice", "is_admin": False},
                },
            ),
        ),
        errors=(e.AdminRequired, e.InvalidCredentialsFormat, e.InvalidInput, e.UserExists),
        error_examples=(
            (
                400,
                "exists",
                {
                    "success": False,
                    "message": "User already exists",
                    "error": "User 'alice' already exists",
                },
            ),
            (
                403,
                "not admin",
                {"success": False, "message": "Unauthorized - Admin privileges required"},
            ),
        ),
        description="Usernames: 1-64 characters of A-Z a-z 0-9 _ . -; passwords: 8-1024 "
        "characters.",
    ),
    Op(
        method="GET",
        path="/api/me",
        operation_id="whoAmI",
        summary="The logged-in user",
        tag="auth",
        ok=b.ME,
        ok_examples=(("me", {"success": True, "user": {"username": "admin", "is_admin": True}}),),
        description="Not in the original api.md; used by the dashboard.",
    ),
    *USER_OPERATIONS,
    *TOKEN_OPERATIONS,
    Op(
        method="GET",
        path="/api/conda/environments",
        operation_id="listEnvironments",
        summary="List environments",
        tag="environments",
        ok=b.ENVIRONMENTS,
        ok_examples=(
            (
                "list",
                [
                    {
                        "name": "demo",
                        "python_version": "3.11.7",
                        "packages": ["pip", "six"],
                        "package_count": 2,
                        "created_at": "2025-05-01 14:30:00",
                    }
                ],
            ),
        ),
        description="Every environment the backend knows except base/root.",
    ),
    Op(
        method="GET",
        path="/api/conda/stats",
        operation_id="environmentStats",
        summary="Environment statistics",
        tag="environments",
        ok=b.ENVIRONMENT_STATS,
        ok_examples=(
            (
                "stats",
                {
                    "total_environments": 2,
                    "active_environments": 1,
                    "total_disk_usage": 0.05,
                    "latest_created": {"name": "demo", "created_at": "2025-05-01 14:30:00"},
                    "environment_usage": [{"name": "demo", "usage_percent": 100}],
                    "package_stats": [
                        {"name": "demo", "package_count": 2},
                        {"name": "other", "package_count": 1},
                    ],
                },
            ),
        ),
    ),
    Op(
        method="POST",
        path="/api/conda/environment",
        operation_id="createEnvironment",
        summary="Create an environment",
        tag="environments",
        ok_status=201,
        body="CreateEnvironmentRequest",
        body_examples=(("plain", {"name": "demo"}),),
        ok=b.ENVIRONMENT_CREATED,
        ok_examples=(
            (
                "created",
                {
                    "success": True,
                    "message": "Environment created successfully",
                    "environment": {
                        "name": "demo",
                        "created_at": "2025-05-01 14:30:00",
                        "python_version": "3.11.7",
                    },
                },
            ),
        ),
        errors=(
            e.InvalidEnvironmentName,
            e.InvalidPackageSpec,
            e.InvalidInput,
            e.EnvironmentExists,
            e.PackageOperationFailed,
            e.BackendFailure,
        ),
        error_examples=(
            (
                400,
                "exists",
                {
                    "success": False,
                    "message": "Environment with this name already exists",
                    "error": "Environment 'demo' already exists",
                },
            ),
        ),
        description="The environment belongs to the caller. A failed creation leaves nothing "
        "behind.",
    ),
    Op(
        method="GET",
        path="/api/conda/environment/{name}",
        operation_id="getEnvironment",
        summary="Environment detail",
        tag="environments",
        ok=b.ENVIRONMENT_DETAIL,
        ok_examples=(
            (
                "detail",
                {
                    "name": "demo",
                    "python_version": "3.11.7",
                    "created_at": "2025-04-15 10:00:00",
                    "usage_stats": {
                        "total_tasks": 24,
                        "success_rate": 92.0,
                        "avg_execution_time": 45.0,
                        "disk_usage": 1.2,
                    },
                    "packages": [{"name": "numpy", "version": "1.24.3"}],
                },
            ),
        ),
        errors=_ENV_PARAM_ERRORS,
        error_examples=(
            (
                404,
                "missing",
                {
                    "success": False,
                    "message": "Environment not found",
                    "error": "Environment 'demo' not found",
                },
            ),
        ),
    ),
    Op(
        method="PUT",
        path="/api/conda/environment/{name}",
        operation_id="renameEnvironment",
        summary="Rename an environment",
        tag="environments",
        body="RenameEnvironmentRequest",
        body_examples=(("rename", {"new_name": "demo2"}),),
        ok=b.ENVIRONMENT_RENAMED,
        ok_examples=(
            (
                "renamed",
                {
                    "success": True,
                    "message": "Environment renamed successfully",
                    "old_name": "demo",
                    "new_name": "demo2",
                    "updated_tasks_count": 2,
                },
            ),
        ),
        errors=(
            *_ENV_PARAM_ERRORS,
            e.InvalidInput,
            e.NotOwner,
            e.EnvironmentInUse,
            e.EnvironmentExists,
            e.BackendFailure,
        ),
        error_examples=(
            (
                400,
                "exists",
                {
                    "success": False,
                    "message": "Environment with this name already exists",
                    "error": "Cannot rename environment to an existing name",
                },
            ),
            (
                403,
                "not owner",
                {
                    "success": False,
                    "message": "Unauthorized - Insufficient privileges",
                    "error": "You do not have permission to modify this environment",
                },
            ),
        ),
        description="Every task using the old name moves to the new one. 400 while a running "
        "task uses the environment.",
    ),
    Op(
        method="DELETE",
        path="/api/conda/environment/{name}",
        operation_id="deleteEnvironment",
        summary="Delete an environment",
        tag="environments",
        ok_status=204,
        ok_description="Deleted",
        errors=(*_ENV_PARAM_ERRORS, e.NotOwner, e.EnvironmentInUse, e.BackendFailure),
        error_examples=((400, "in use", _IN_USE),),
        description="Its owner or an admin may delete it. 400 while one of its tasks has a run "
        "queued or running (`referencing_tasks` names them); otherwise the tasks that use it "
        "stay, with their history, and their later runs fail with a note that the "
        "environment was deleted.",
    ),
    Op(
        method="POST",
        path="/api/conda/environment/{name}/packages",
        operation_id="installPackages",
        summary="Install packages",
        tag="environments",
        body="PackagesRequest",
        body_examples=(("specs", {"packages": ["six", "attrs>=23.1"]}),),
        ok=b.PACKAGES_INSTALLED,
        ok_examples=(
            (
                "installed",
                {
                    "success": True,
                    "message": "Packages installed successfully",
                    "environment": "demo",
                    "installed_packages": ["six", "attrs>=23.1"],
                },
            ),
        ),
        errors=(
            *_ENV_PARAM_ERRORS,
            e.InvalidPackageSpec,
            e.NotOwner,
            e.EnvironmentInUse,
            e.PackageOperationFailed,
            e.BackendFailure,
        ),
        error_examples=(
            (
                400,
                "failed",
                {
                    "success": False,
                    "message": "Failed to install packages",
                    "failed_packages": ["nope-pkg"],
                    "error_details": ["Package 'nope-pkg' not found in available channels"],
                    "error": "ERROR: No matching distribution found for nope-pkg",
                },
            ),
        ),
    ),
    Op(
        method="DELETE",
        path="/api/conda/environment/{name}/packages",
        operation_id="removePackages",
        summary="Remove packages",
        tag="environments",
        body="RemovePackagesRequest",
        body_examples=(("names", {"packages": ["six"]}),),
        ok=b.PACKAGES_REMOVED,
        ok_examples=(
            (
                "removed",
                {
                    "success": True,
                    "message": "Packages removed successfully",
                    "environment": "demo",
                    "removed_packages": ["six"],
                },
            ),
        ),
        errors=(
            *_ENV_PARAM_ERRORS,
            e.InvalidPackageSpec,
            e.NotOwner,
            e.EnvironmentInUse,
            e.PackageOperationFailed,
            e.BackendFailure,
        ),
        description='Package names only. A package that is not installed: 400 "Failed to '
        'remove packages" with failed_packages.',
    ),
    *TASK_OPERATIONS,
    *LOG_OPERATIONS,
    Op(
        method="GET",
        path="/openapi.json",
        operation_id="openapi",
        summary="This description",
        tag="meta",
        auth="none",
        ok=OPENAPI_DOCUMENT,
        description="Public: the description is the API's published contract and holds no data.",
    ),
    Op(
        method="GET",
        path="/docs",
        operation_id="docs",
        summary="The routes as an HTML page",
        tag="meta",
        auth="none",
    ),
    Op(
        method="GET",
        path="/",
        operation_id="dashboard",
        summary="The web dashboard (HTML)",
        tag="meta",
        auth="none",
        description="Public: the page and its files under /static hold no data; everything it "
        "shows comes from the JSON API, which needs the session.",
    ),
)
HTML_OPS = frozenset({"/docs", "/"})
