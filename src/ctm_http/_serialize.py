"""Domain objects to the JSON of api.md (times in the server's zone, MB, GB, seconds)."""

from __future__ import annotations

from datetime import datetime, tzinfo
from typing import Any

from ctm_core.environments import EnvironmentDetail, EnvironmentStats
from ctm_core.models import Environment, Execution, ExecutionStatus, RunPolicy, Task
from ctm_core.tasks import TaskDetail, TaskStats

GB = 1024**3


def fmt_time(value: datetime | None, tz: tzinfo) -> str | None:
    if value is None:
        return None
    # ``YYYY-MM-DD HH:MM:SS``; isoformat is several times faster than strftime (pages of 500).
    return value.astimezone(tz).replace(tzinfo=None).isoformat(" ", "seconds")


def gb(n: int) -> float:
    return round(n / GB, 2)


def environment_summary(env: Environment, disk_bytes: int | None, tz: tzinfo) -> dict[str, Any]:
    return {
        "name": env.name,
        "python_version": env.python_version,
        "packages": [p.name for p in env.packages],
        "package_count": len(env.packages),
        "created_at": fmt_time(env.created_at, tz),
        "disk_usage": gb(disk_bytes) if disk_bytes is not None else None,
    }


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
        "environment_usage": [
            {"name": n, "usage_percent": p} for n, p in stats.environment_usage
        ],
        "package_stats": [{"name": n, "package_count": c} for n, c in stats.package_stats],
    }


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
    }


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
        "execution_history": [
            {**execution_body(e, tz), "logs": None} for e in detail.executions
        ],
        "execution_history_next_before": detail.next_before,
        "performance_metrics": {
            "durations": [e.duration for e in finished],
            "timestamps": [fmt_time(e.start_time, tz) for e in finished],
            "peak_memories": [e.peak_memory_mb for e in finished],
            "avg_memories": [e.avg_memory_mb for e in finished],
        },
        "latest_execution": latest,
    }


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
