"""Domain objects to the JSON of api.md (times in the server's zone, MB, GB, seconds).

Each serializer names the body it renders (``@renders``), declared once in ``_bodies``: the
description is derived from the declaration, and ``tests/unit/test_openapi.py`` holds each
serializer's keys equal to its declaration's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, tzinfo
from typing import Any, TypeVar

from ctm_core.environments import EnvironmentDetail, EnvironmentStats
from ctm_core.models import (
    ApiToken,
    AuditEvent,
    Environment,
    Execution,
    ExecutionStatus,
    Principal,
    RunPolicy,
    Task,
    TaskStatus,
    User,
)
from ctm_core.tasks import CreatedTask, HistoryPage, TaskDetail, TaskStats
from ctm_core.users import UserView
from ctm_http import _bodies as b
from ctm_http._schema import Body

GB = 1024**3
F = TypeVar("F", bound=Callable[..., Any])

SERIALIZERS: dict[Callable[..., Any], Body] = {}
"""Each serializer and the body it renders."""


def renders(declaration: Body) -> Callable[[F], F]:
    """Record that the decorated function renders ``declaration`` (nothing changes at run
    time: the test checks it)."""

    def register(fn: F) -> F:
        SERIALIZERS[fn] = declaration
        return fn

    return register


def fmt_time(value: datetime | None, tz: tzinfo) -> str | None:
    if value is None:
        return None
    # ``YYYY-MM-DD HH:MM:SS``; isoformat is several times faster than strftime (pages of 500).
    return value.astimezone(tz).replace(tzinfo=None).isoformat(" ", "seconds")


def gb(n: int) -> float:
    return round(n / GB, 2)


@renders(b.ENVIRONMENT_SUMMARY)
def environment_summary(env: Environment, disk_bytes: int | None, tz: tzinfo) -> dict[str, Any]:
    return {
        "name": env.name,
        "python_version": env.python_version,
        "packages": [p.name for p in env.packages],
        "package_count": len(env.packages),
        "created_at": fmt_time(env.created_at, tz),
        "disk_usage": gb(disk_bytes) if disk_bytes is not None else None,
    }


@renders(b.ENVIRONMENT_DETAIL)
def environment_detail(detail: EnvironmentDetail, tz: tzinfo) -> dict[str, Any]:
    env, usage = detail.environment, detail.usage
    return {
        "name": env.name,
        "python_version": env.python_version,
        "created_at": fmt_time(env.created_at, tz),
        "usage_stats": {
            "total_tasks": usage.total_tasks,
            "success_rate": usage.success_rate,
            "avg_execution_time": usage.avg_execution_time,
            "disk_usage": gb(usage.disk_usage_bytes),
        },
        "packages": [{"name": p.name, "version": p.version} for p in env.packages],
    }


@renders(b.ENVIRONMENT_STATS)
def environment_stats(stats: EnvironmentStats, tz: tzinfo) -> dict[str, Any]:
    latest = stats.latest_created
    return {
        "total_environments": stats.total_environments,
        "active_environments": stats.active_environments,
        "total_disk_usage": gb(stats.total_disk_usage_bytes),
        "latest_created": (
            {"name": latest.name, "created_at": fmt_time(latest.created_at, tz)}
            if latest is not None
            else None
        ),
        "environment_usage": [{"name": n, "usage_percent": p} for n, p in stats.environment_usage],
        "package_stats": [{"name": n, "package_count": c} for n, c in stats.package_stats],
    }


@renders(b.TASK)
def task_body(task: Task, tz: tzinfo, policy: RunPolicy) -> dict[str, Any]:
    """The task object of POST /api/tasks (and the base of the others). The run limits shown
    are the effective ones: the task's own, or the server's default (null: no limit)."""
    return {
        "task_id": task.id,
        "task_name": task.name,
        "script_path": task.script_path,
        "conda_env": task.conda_env,
        "status": task.status.value,
        "created_at": fmt_time(task.created_at, tz),
        "cron_expression": task.cron_expression,
        "delay_seconds": task.delay_seconds,
        "timeout_seconds": task.timeout_seconds,
        "next_run_time": fmt_time(task.next_run_at, tz),
        "last_run_time": fmt_time(task.last_run_at, tz),
        "last_run_duration": task.last_run_duration,
        "requirements": task.requirements,
        "owner_id": task.owner_id,
        "memory_limit_mb": policy.memory_limit_for(task),
        "max_processes": policy.max_processes_for(task),
        "cpu_limit": policy.cpu_limit_for(task),
        "network": policy.network_for(task),
        "timezone": task.timezone,
        "paused": task.paused,
    }


@renders(b.TASK_LIST_ITEM)
def task_list_item(
    task: Task, last: Execution | None, tz: tzinfo, policy: RunPolicy
) -> dict[str, Any]:
    body = task_body(task, tz, policy)
    body.update(
        next_run_time_formatted=body["next_run_time"],
        last_run_time_formatted=body["last_run_time"],
        last_run_duration_formatted=task.last_run_duration,
    )
    if last is not None and last.status.finished:
        body["completed_at"] = fmt_time(last.end_time, tz)
    return body


@renders(b.EXECUTION)
def execution_body(ex: Execution, tz: tzinfo) -> dict[str, Any]:
    """One execution; a ``skipped`` record also says how many consecutive occurrences it
    stands for, and the first and last of them."""
    body = {
        "execution_id": ex.id,
        "start_time": fmt_time(ex.start_time, tz),
        "end_time": fmt_time(ex.end_time, tz),
        "status": ex.status.value,
        "duration": ex.duration,
        "peak_memory": ex.peak_memory_mb,
        "avg_memory": ex.avg_memory_mb,
        "exit_code": ex.exit_code,
        "scheduled_time": fmt_time(ex.scheduled_for, tz),
        "note": ex.note,
    }
    if ex.status is ExecutionStatus.SKIPPED:
        body.update(
            skip_count=ex.skip_count,
            first_skipped_at=fmt_time(ex.first_skipped_at, tz),
            last_skipped_at=fmt_time(ex.last_skipped_at, tz),
        )
    return body


@renders(b.TASK_DETAIL)
def task_detail(detail: TaskDetail, tz: tzinfo, policy: RunPolicy) -> dict[str, Any]:
    task = task_body(detail.task, tz, policy)
    task["last_execution_id"] = detail.task.last_execution_id
    task["executions"] = [e.id for e in detail.executions]
    finished = [e for e in reversed(detail.executions) if e.status.finished]
    latest = None
    if detail.latest is not None:
        latest = execution_body(detail.latest, tz)
        latest["logs"] = detail.latest_log
    return {
        "success": True,
        "task": task,
        # api.md shows a "logs" key here too; the full log is only in latest_execution.
        "execution_history": [{**execution_body(e, tz), "logs": None} for e in detail.executions],
        "execution_history_next_before": detail.next_before,
        "performance_metrics": {
            "durations": [e.duration for e in finished],
            "timestamps": [fmt_time(e.start_time, tz) for e in finished],
            "peak_memories": [e.peak_memory_mb for e in finished],
            "avg_memories": [e.avg_memory_mb for e in finished],
        },
        "latest_execution": latest,
    }


@renders(b.TASK_STATS)
def task_stats(stats: TaskStats, tz: tzinfo) -> dict[str, Any]:
    return {
        "total": stats.total,
        **stats.counts,
        "avg_duration": stats.avg_duration,
        "min_duration": stats.min_duration,
        "max_duration": stats.max_duration,
        "success_rate": stats.success_rate,
        "last_7_days": {
            "dates": stats.dates,
            "success_counts": stats.success_counts,
            "failed_counts": stats.failed_counts,
        },
        "recent_tasks": [
            {
                "task_id": e.task_id,
                "name": name,
                "status": e.status.value,
                "start_time": fmt_time(e.start_time, tz),
                "end_time": fmt_time(e.end_time, tz),
                "duration": e.duration,
                "execution_id": e.id,
            }
            for e, name in stats.recent
        ],
    }


@renders(b.HISTORY_ITEM)
def history_item(ex: Execution, name: str, tz: tzinfo) -> dict[str, Any]:
    return {
        "task_id": ex.task_id,
        "task_name": name,
        "status": ex.status.value,
        "execution_time": fmt_time(ex.start_time, tz),
        "end_time": fmt_time(ex.end_time, tz),
        "duration": ex.duration,
        "peak_memory": ex.peak_memory_mb,
        "avg_memory": ex.avg_memory_mb,
        "exit_code": ex.exit_code,
        "execution_id": ex.id,
    }


# --- the answers of single routes ------------------------------------------------------------


@renders(b.USER)
def user_body(user: User | Principal) -> dict[str, Any]:
    return {"username": user.username, "is_admin": user.is_admin}


@renders(b.LOGGED_IN)
def logged_in(user: User | Principal) -> dict[str, Any]:
    return {"success": True, "message": "Login successful", "user": user_body(user)}


@renders(b.LOGGED_OUT)
def logged_out() -> dict[str, Any]:
    return {"success": True, "message": "Logout successful"}


@renders(b.USER_CREATED)
def user_created(user: User) -> dict[str, Any]:
    return {"success": True, "message": "User created successfully", "user": user_body(user)}


@renders(b.USER_RECORD)
def user_record(view: UserView, tz: tzinfo) -> dict[str, Any]:
    user = view.user
    return {
        "id": user.id,
        "username": user.username,
        "is_admin": user.is_admin,
        "disabled": user.disabled,
        "created_at": fmt_time(user.created_at, tz),
        "sessions": view.sessions,
    }


@renders(b.USERS)
def users(views: list[UserView], tz: tzinfo) -> dict[str, Any]:
    return {"success": True, "users": [user_record(v, tz) for v in views]}


@renders(b.USER_UPDATED)
def user_updated(view: UserView, ended: int, tz: tzinfo) -> dict[str, Any]:
    return {
        "success": True,
        "message": "User updated",
        "user": user_record(view, tz),
        "sessions_ended": ended,
    }


@renders(b.USER_DELETED)
def user_deleted() -> dict[str, Any]:
    return {"success": True, "message": "User deleted"}


@renders(b.PASSWORD_CHANGED)
def password_changed(ended: int) -> dict[str, Any]:
    return {"success": True, "message": "Password changed", "sessions_ended": ended}


@renders(b.TOKEN_INFO)
def token_info(token: ApiToken, username: str, tz: tzinfo) -> dict[str, Any]:
    return {
        "id": token.id,
        "name": token.name,
        "username": username,
        "created_at": fmt_time(token.created_at, tz),
        "expires_at": fmt_time(token.expires_at, tz),
        "last_used_at": fmt_time(token.last_used_at, tz),
    }


@renders(b.TOKEN_CREATED)
def token_created(secret: str, token: ApiToken, username: str, tz: tzinfo) -> dict[str, Any]:
    return {
        "success": True,
        "message": "Token created",
        "token": secret,
        "token_info": token_info(token, username, tz),
    }


@renders(b.TOKENS)
def tokens(items: list[tuple[ApiToken, str]], tz: tzinfo) -> dict[str, Any]:
    return {"success": True, "tokens": [token_info(t, name, tz) for t, name in items]}


@renders(b.TOKEN_DELETED)
def token_deleted() -> dict[str, Any]:
    return {"success": True, "message": "Token deleted"}


@renders(b.AUDIT_EVENT)
def audit_event(event: AuditEvent, tz: tzinfo) -> dict[str, Any]:
    return {
        "id": event.id,
        "at": fmt_time(event.at, tz),
        "actor": event.actor,
        "address": event.address,
        "action": event.action,
        "target": event.target,
        "outcome": event.outcome,
        "detail": event.detail,
    }


@renders(b.AUDIT_PAGE)
def audit_page(events: list[AuditEvent], next_before: str | None, tz: tzinfo) -> dict[str, Any]:
    return {
        "success": True,
        "events": [audit_event(e, tz) for e in events],
        "next_before": next_before,
    }


@renders(b.ME)
def me(actor: Principal, containment: Mapping[str, object] | None) -> dict[str, Any]:
    """``containment``: how runs are contained, shown to admins only."""
    body: dict[str, Any] = {"success": True, "user": user_body(actor)}
    if actor.is_admin and containment is not None:
        body["containment"] = dict(containment)
    return body


@renders(b.ENVIRONMENT_CREATED)
def environment_created(env: Environment, tz: tzinfo) -> dict[str, Any]:
    return {
        "success": True,
        "message": "Environment created successfully",
        "environment": {
            "name": env.name,
            "created_at": fmt_time(env.created_at, tz),
            "python_version": env.python_version,
        },
    }


@renders(b.ENVIRONMENT_RENAMED)
def environment_renamed(old_name: str, new_name: str, updated_tasks: int) -> dict[str, Any]:
    return {
        "success": True,
        "message": "Environment renamed successfully",
        "old_name": old_name,
        "new_name": new_name,
        "updated_tasks_count": updated_tasks,
    }


@renders(b.PACKAGES_INSTALLED)
def packages_installed(environment: str, specs: list[str]) -> dict[str, Any]:
    return {
        "success": True,
        "message": "Packages installed successfully",
        "environment": environment,
        "installed_packages": specs,
    }


@renders(b.PACKAGES_REMOVED)
def packages_removed(environment: str, names: list[str]) -> dict[str, Any]:
    return {
        "success": True,
        "message": "Packages removed successfully",
        "environment": environment,
        "removed_packages": names,
    }


@renders(b.TASK_CREATED)
def task_created(created: CreatedTask, tz: tzinfo, policy: RunPolicy) -> dict[str, Any]:
    return {
        "success": True,
        "message": "Task scheduled successfully",
        "task": task_body(created.task, tz, policy),
        "environment_message": created.environment_message,
    }


@renders(b.TASK_PAUSED)
def task_paused(task: Task, tz: tzinfo, policy: RunPolicy) -> dict[str, Any]:
    return {
        "success": True,
        "message": "Task paused" if task.paused else "Task resumed",
        "task": task_body(task, tz, policy),
    }


@renders(b.RUN_QUEUED)
def run_queued(execution: Execution) -> dict[str, Any]:
    return {
        "success": True,
        "message": "Run queued",
        "task_id": execution.task_id,
        "execution_id": execution.id,
    }


@renders(b.TASK_STOPPED)
def task_stopped(task: Task, previous: TaskStatus) -> dict[str, Any]:
    return {
        "success": True,
        "message": "Task stopped successfully",
        "task": {
            "task_id": task.id,
            "task_name": task.name,
            "status": task.status.value,
            "previous_status": previous.value,
        },
    }


@renders(b.HISTORY_PAGE)
def history_page(page: HistoryPage, tz: tzinfo) -> dict[str, Any]:
    return {
        "status": "success",
        "data": [history_item(e, n, tz) for e, n in page.items],
        "next_before": page.next_before,
    }
