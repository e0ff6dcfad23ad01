"""The user administration, password and audit routes as the description shows them."""

from __future__ import annotations

from ctm_core import errors as e
from ctm_core.commands import DEFAULT_PAGE, MAX_PAGE
from ctm_http import _bodies as b
from ctm_http._op import Op

_ALICE = {
    "id": 2,
    "username": "alice",
    "is_admin": False,
    "disabled": True,
    "created_at": "2026-11-20 09:12:44",
    "sessions": 0,
}

AUDIT_QUERY = (
    {
        "name": "limit",
        "in": "query",
        "required": False,
        "description": f"Events per page, newest first (default {DEFAULT_PAGE})",
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE},
    },
    {
        "name": "before",
        "in": "query",
        "required": False,
        "description": "The previous page's `next_before` (an event id)",
        "schema": {"type": "string"},
    },
)

USER_OPERATIONS: tuple[Op, ...] = (
    Op(
        method="GET",
        path="/api/users",
        operation_id="listUsers",
        summary="List users (admins only)",
        tag="auth",
        ok=b.USERS,
        ok_examples=(("users", {"success": True, "users": [_ALICE]}),),
        errors=(e.AdminRequired,),
        description="Every user by name, with how many live sessions each has.",
    ),
    Op(
        method="PATCH",
        path="/api/users/{username}",
        operation_id="updateUser",
        summary="Change a user (admins only)",
        tag="auth",
        body="UpdateUserRequest",
        body_examples=(("disable", {"disabled": True}), ("new password", {"password": "x" * 12})),
        ok=b.USER_UPDATED,
        ok_examples=(
            (
                "disabled",
                {"success": True, "message": "User updated", "user": _ALICE, "sessions_ended": 2},
            ),
        ),
        errors=(
            e.AdminRequired,
            e.InvalidInput,
            e.InvalidCredentialsFormat,
            e.UserNotFound,
            e.LastAdmin,
        ),
        error_examples=(
            (
                409,
                "last admin",
                {
                    "success": False,
                    "message": "Cannot remove the last admin",
                    "error": "'admin' is the only enabled admin: make another user admin first",
                },
            ),
        ),
        description="Any of `is_admin`, `disabled`, `password`. Disabling or a new password "
        "ends every session of the user at once; a disabled user cannot log in, and their "
        "scheduled tasks fire nothing (each occurrence is recorded as skipped) until enabled. "
        "The last enabled admin cannot be demoted or disabled: 409.",
    ),
    Op(
        method="DELETE",
        path="/api/users/{username}",
        operation_id="deleteUser",
        summary="Delete a user (admins only)",
        tag="auth",
        ok=b.USER_DELETED,
        ok_examples=(("deleted", {"success": True, "message": "User deleted"}),),
        errors=(e.AdminRequired, e.UserNotFound, e.LastAdmin, e.UserOwnsTasks),
        error_examples=(
            (
                409,
                "owns tasks",
                {
                    "success": False,
                    "message": "User still owns tasks",
                    "error": "'alice' owns 3 task(s): delete them first, or disable the user",
                    "tasks": 3,
                },
            ),
        ),
        description="Deletes the user and their sessions. Environments they own become "
        "owned by no one (admins manage them). A user who owns tasks is not deleted (409): "
        "delete the tasks first, or disable the user, which keeps their history. The last "
        "enabled admin cannot be deleted.",
    ),
    Op(
        method="POST",
        path="/api/me/password",
        operation_id="changePassword",
        summary="Change your own password",
        tag="auth",
        body="ChangePasswordRequest",
        body_examples=(
            ("change", {"current_password": "old-password", "new_password": "a-new-one-1"}),
        ),
        ok=b.PASSWORD_CHANGED,
        ok_examples=(
            ("changed", {"success": True, "message": "Password changed", "sessions_ended": 1}),
        ),
        errors=(
            e.InvalidInput,
            e.InvalidCredentialsFormat,
            e.WrongPassword,
            e.TooManyLoginAttempts,
            e.UserNotFound,
        ),
        description="The current password is checked as a login is, and a wrong one counts "
        "as a failed login (so a stolen session cannot guess it). Every other session of "
        "yours ends; this one stays. 404 when your user was deleted meanwhile.",
    ),
    Op(
        method="GET",
        path="/api/audit",
        operation_id="auditLog",
        summary="The audit log (admins only)",
        tag="auth",
        query=AUDIT_QUERY,
        ok=b.AUDIT_PAGE,
        ok_examples=(
            (
                "page",
                {
                    "success": True,
                    "events": [
                        {
                            "id": 41,
                            "at": "2026-11-26 10:02:11",
                            "actor": "admin",
                            "address": "127.0.0.1",
                            "action": "user.update",
                            "target": "alice",
                            "outcome": "ok",
                            "detail": {"disabled": True, "sessions_ended": 2},
                        }
                    ],
                    "next_before": "41",
                },
            ),
        ),
        errors=(e.AdminRequired, e.InvalidInput),
        description="Every login (accepted, or refused after a password check), user change, "
        "environment change and task change, with who, from which address, when and on what; "
        "newest first. Kept as long as run history (`CTM_RETENTION_DAYS`).",
    ),
)

_TOKEN_INFO = {
    "id": 3,
    "name": "ci",
    "username": "alice",
    "created_at": "2026-11-26 10:00:00",
    "expires_at": "2027-02-24 10:00:00",
    "last_used_at": None,
}

TOKEN_OPERATIONS: tuple[Op, ...] = (
    Op(
        method="POST",
        path="/api/tokens",
        operation_id="createToken",
        summary="Create an API token",
        tag="auth",
        ok_status=201,
        body="CreateTokenRequest",
        body_examples=(("ci", {"name": "ci", "expires_in_days": 90}),),
        ok=b.TOKEN_CREATED,
        ok_examples=(
            (
                "created",
                {
                    "success": True,
                    "message": "Token created",
                    "token": "ctm_3q2-7yF0cVn0W1dPpXk9Zr5gHqT8aLmE4sUu6bYwJxA",
                    "token_info": _TOKEN_INFO,
                },
            ),
        ),
        errors=(e.InvalidInput,),
        description="A token for scripts: 256 random bits, shown once in this answer and "
        "stored only as a hash. Send it as `Authorization: Bearer <token>` to any /api route: "
        "it acts with your permissions, needs no cross-site check and sets no cookie. It "
        "stops working when deleted, after `expires_in_days` (default 90, at most 3650), or "
        "when you are disabled, given a new password or deleted. At most 100 per user.",
    ),
    Op(
        method="GET",
        path="/api/tokens",
        operation_id="listTokens",
        summary="List API tokens",
        tag="auth",
        ok=b.TOKENS,
        ok_examples=(("mine", {"success": True, "tokens": [_TOKEN_INFO]}),),
        description="Your own tokens; an admin's answer lists every user's. Never the secret.",
    ),
    Op(
        method="DELETE",
        path="/api/tokens/{token_id}",
        operation_id="deleteToken",
        summary="Delete an API token",
        tag="auth",
        ok=b.TOKEN_DELETED,
        ok_examples=(("deleted", {"success": True, "message": "Token deleted"}),),
        errors=(e.TokenNotFound,),
        description="Your own token, or any as an admin; another user's is 404 to you.",
    ),
)
