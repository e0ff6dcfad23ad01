"""Invariants of the core checked over generated inputs (hypothesis).

Already covered elsewhere: spec strings never read as options (test_validation), integer shares
add up to 100 (test_environments), cron fidelity over 12 hours (test_scheduler), repository
round trips (test_repository_contract). Here: every use case answers arbitrary JSON with a
domain error or a result (never a crash, which would be a 500), the spec's patterns say exactly
what the validators accept, cron arithmetic in zones with DST, and the stats arithmetic.
"""

from __future__ import annotations

import contextlib
import re
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ctm_core.commands import (
    Credentials,
    NewEnvironment,
    NewTask,
    NewUser,
    PackageChange,
    RenameEnvironment,
)
from ctm_core.errors import CtmError, InvalidCronExpression, InvalidInput
from ctm_core.models import TaskStatus
from ctm_core.schedule import (
    MAX_DELAY_SECONDS,
    first_run_time,
    following_run_time,
    next_cron_time,
    validate_cron,
    validate_delay,
)
from ctm_core.validation import (
    RESERVED_ENV_NAMES,
    normalize_package_name,
    spec_name,
    validate_environment_name,
    validate_specs,
    validate_username,
)
from ctm_http import openapi
from tests.unit.conftest import make_world

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Anything json.loads can hand a route: NaN and +/-Infinity included (Python's json accepts them).
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)

# Cron-looking text: real field syntax, names, out-of-range numbers and junk.
_cron_atoms = st.sampled_from(
    [
        "*",
        "*/5",
        "*/0",
        "0",
        "1",
        "7",
        "12",
        "23",
        "59",
        "60",
        "99",
        "1-5",
        "5-1",
        "0-59/15",
        "1,2,3",
        "L",
        "W",
        "15W",
        "5#2",
        "?",
        "jan",
        "MON",
        "sun-sat",
        "feb",
        "-1",
        "*/",
        ",",
        "",
    ]
)
cron_like = st.one_of(
    st.lists(_cron_atoms, min_size=1, max_size=7).map(" ".join),
    st.sampled_from(
        [
            "@hourly",
            "@daily",
            "@weekly",
            "@monthly",
            "@yearly",
            "@annually",
            "@midnight",
            "@reboot",
            "@every",
            "@",
            "0 0 31 2 *",
            "0 0 30 2 *",
            "* * * * * *",
            "0 0 29 2 *",
        ]
    ),
    st.text(max_size=30),
)
# Mostly valid cron expressions, with edges: month ends, leap days, nth weekday, DST hours.
_fields = [
    st.sampled_from(["*", "*/5", "0", "15,45", "10-20", "59", "0-59/15", "30"]),
    st.sampled_from(["*", "0", "2", "3", "9-17", "*/3", "23", "1-3"]),
    st.sampled_from(["*", "1", "15", "L", "29", "30", "31", "1-7", "*/10"]),
    st.sampled_from(["*", "1", "2", "*/3", "jan", "2-3", "3", "10", "11"]),
    st.sampled_from(["*", "1-5", "0", "sun", "5#2", "6", "mon-fri", "7"]),
]
valid_crons = st.one_of(
    st.tuples(*_fields, st.sampled_from(["", " 0", " */20", " 59"])).map(
        lambda f: " ".join(f[:5]) + f[5]
    ),
    st.sampled_from(["@hourly", "@daily", "@weekly", "@monthly", "@yearly", "@midnight"]),
    cron_like,
)
zones = st.sampled_from(
    [
        "UTC",
        "Europe/Berlin",
        "America/New_York",
        "Australia/Lord_Howe",
        "Asia/Kolkata",
        "America/Santiago",
    ]
)
moments = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2090, 1, 1), timezones=st.just(UTC)
)


def _matches(schema_pattern: str, value: str) -> bool:
    return re.search(schema_pattern, value) is not None


# --- the spec's patterns and the validators agree ----------------------------------------------


@FAST
@given(st.text(max_size=70) | st.from_regex(r"[A-Za-z0-9_.\-]{1,66}", fullmatch=True))
def test_spec_env_name_pattern_is_the_validator(name: str) -> None:
    """A name fits /openapi.json's pattern (and is not reserved) exactly when the core takes it."""
    pattern = openapi.ENV_NAME["pattern"]
    try:
        validate_environment_name(name)
        accepted = True
    except InvalidInput:
        accepted = False
    assert accepted == (_matches(pattern, name) and name.lower() not in RESERVED_ENV_NAMES)


@FAST
@given(st.text(max_size=70) | st.from_regex(r"[A-Za-z0-9_.\-]{1,66}", fullmatch=True))
def test_spec_username_pattern_is_the_validator(name: str) -> None:
    """The spec's username pattern accepts exactly the usernames the core accepts."""
    pattern = openapi.COMPONENT_SCHEMAS["CreateUserRequest"]["properties"]["username"]["pattern"]
    try:
        validate_username(name)
        accepted = True
    except InvalidInput:
        accepted = False
    assert accepted == _matches(pattern, name)


@FAST
@given(
    st.text(max_size=40)
    | st.from_regex(r"[a-z][a-z0-9_.\-]{0,10}([<>=!~]{1,2}[0-9.*]{1,6})?", fullmatch=True)
    | st.from_regex(
        r"[a-z][a-z.]{0,6}\.([Ww][Hh][Ll]|[Tt]ar(\.[gx]z)?|zip|tgz|conda|egg)"
        r"[a-z0-9.\-]{0,3}(==[0-9.]{1,4}(\.zip|\.tar\.bz2)?)?",
        fullmatch=True,
    )
)
def test_spec_package_spec_pattern_is_the_validator(spec: str) -> None:
    """One spec fits the spec's item pattern (and length) exactly when the core accepts it."""
    items = openapi.SPECS["items"]
    try:
        validate_specs("packages", [spec])
        accepted = True
    except InvalidInput:
        accepted = False
    fits = _matches(items["pattern"], spec) and len(spec) <= items["maxLength"]
    assert accepted == fits


@FAST
@given(
    st.lists(
        st.from_regex(r"[a-z][a-z0-9]{0,5}(==[0-9]{1,3})?", fullmatch=True), min_size=1, max_size=30
    )
)
def test_accepted_specs_keep_order_drop_duplicates_and_name_a_package(specs: list[str]) -> None:
    """validate_specs is order-preserving deduplication; each spec names its package."""
    out = validate_specs("packages", specs)
    assert out == list(dict.fromkeys(specs))
    assert validate_specs("packages", out) == out
    for s in out:
        assert s.startswith(spec_name(s))
        assert normalize_package_name(normalize_package_name(s)) == normalize_package_name(s)


# --- schedules ---------------------------------------------------------------------------------


@FAST
@given(cron_like)
def test_cron_validation_never_raises_anything_else(expr: str) -> None:
    """Whatever the text, validate_cron returns it or raises InvalidCronExpression (a 400)."""
    with contextlib.suppress(InvalidCronExpression):
        validate_cron(expr)


@settings(FAST, suppress_health_check=list(HealthCheck))
@given(valid_crons, moments, zones)
def test_accepted_cron_always_has_a_next_time_after_now(
    expr: str, now: datetime, zone: str
) -> None:
    """An accepted expression yields an aware time strictly after any 'now', in any zone."""
    try:
        expr = validate_cron(expr)
    except InvalidCronExpression:
        assume(False)
    nxt = next_cron_time(expr, now, ZoneInfo(zone))
    assert nxt.tzinfo is not None
    assert nxt > now


@settings(FAST, suppress_health_check=list(HealthCheck))
@given(valid_crons, moments, st.integers(0, 10 * 24 * 3600), zones)
def test_following_run_is_after_now_and_folds_missed_runs(
    expr: str, due: datetime, late: int, zone: str
) -> None:
    """After a run that fired ``late`` seconds after its due time, the next run is in the
    future (missed occurrences folded into that one run); one-shots never run again."""
    try:
        expr = validate_cron(expr)
    except InvalidCronExpression:
        assume(False)
    tz = ZoneInfo(zone)
    now = due + timedelta(seconds=late)
    nxt = following_run_time(expr, due, now, tz)
    assert nxt is not None
    assert nxt > now
    assert nxt == next_cron_time(expr, now, tz)
    assert following_run_time(None, due, now, tz) is None


@FAST
@given(st.floats(0, MAX_DELAY_SECONDS) | st.integers(0, MAX_DELAY_SECONDS), moments, zones)
def test_delays_are_exact_offsets(delay: float, now: datetime, zone: str) -> None:
    """A valid delay is kept as a float and the first run is now + delay."""
    value = validate_delay(delay)
    assert value == float(delay)
    assert first_run_time(now, None, value, ZoneInfo(zone)) == now + timedelta(seconds=value)


@FAST
@given(json_values.filter(lambda v: not (isinstance(v, int) and abs(v) > 2**53)))
def test_any_json_delay_is_accepted_or_refused_cleanly(delay: Any) -> None:
    """Whatever JSON value delay_seconds holds: a float in range, or a domain error."""
    try:
        value = validate_delay(delay)
    except CtmError:
        return
    assert 0 <= value <= MAX_DELAY_SECONDS


def test_huge_integer_delay_is_a_domain_error() -> None:
    """{"delay_seconds": 1000...0 (400 digits)}: a 400, not an OverflowError (a 500)."""
    with pytest.raises(CtmError):
        validate_delay(10**400)


# --- use cases answer arbitrary JSON with a result or a domain error ---------------------------

_task_fields = {
    "script": json_values | st.sampled_from(["print(1)", "/srv/x.py", "x.py", " ", "a\nb.py"]),
    "conda_env": json_values | st.sampled_from(["env", "base", "-x", "a" * 65]),
    "task_name": json_values | st.sampled_from(["t", "", "a\nb", "x" * 200]),
    "requirements": json_values | st.sampled_from(["six", "-r /etc/passwd", "six==1\n# c"]),
    "reuse_env": json_values,
    "cron_expression": json_values | cron_like,
    "delay_seconds": json_values.filter(lambda v: not (isinstance(v, int) and abs(v) > 2**53)),
    "timeout_seconds": json_values,
}


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.fixed_dictionaries({}, optional=_task_fields))
def test_create_task_answers_any_body_with_a_task_or_a_domain_error(body: dict[str, Any]) -> None:
    """POST /api/tasks bodies: success, or a CtmError (a 4xx), never another exception."""
    world = make_world(auto_exit_code=0)
    try:
        created = world.tasks.create_task(world.alice, NewTask.from_json(body))
    except CtmError:
        return
    finally:
        world.coordinator.wait_idle(5)
    task = created.task
    assert task.status is TaskStatus.SCHEDULED
    assert task.next_run_at is not None
    assert task.next_run_at >= task.created_at
    assert world.repo.get_task(task.id).name == task.name


@FAST
@given(json_values, json_values, json_values)
def test_environment_create_answers_any_json(name: Any, python: Any, packages: Any) -> None:
    """POST /api/conda/environment: an environment or a CtmError, whatever the JSON."""
    world = make_world()
    try:
        env = world.envs.create(
            world.alice,
            NewEnvironment.from_json(
                {"name": name, "python_version": python, "packages": packages}
            ),
        )
    except CtmError:
        return
    assert world.backend.exists(env.name)
    assert world.repo.get_environment_owner(env.name) == world.alice.user_id


@FAST
@given(json_values, json_values)
def test_package_changes_and_rename_answer_any_json(packages: Any, new_name: Any) -> None:
    """Install, remove and rename: a result or a CtmError, whatever the JSON."""
    world = make_world()
    world.envs.create(world.alice, NewEnvironment(name="env"))
    for change in (
        lambda: world.envs.install(
            world.alice, PackageChange.from_json("env", {"packages": packages})
        ),
        lambda: world.envs.remove(
            world.alice, PackageChange.from_json("env", {"packages": packages}, names_only=True)
        ),
        lambda: world.envs.rename(
            world.alice, RenameEnvironment.from_json("env", {"new_name": new_name})
        ),
    ):
        with contextlib.suppress(CtmError):
            change()


@FAST
@given(json_values, json_values, json_values)
def test_user_creation_and_login_answer_any_json(
    username: Any, password: Any, is_admin: Any
) -> None:
    """create_user and login take any JSON values: a result or a CtmError."""
    world = make_world()
    try:
        user = world.auth.create_user(
            world.admin,
            NewUser.from_json({"username": username, "password": password, "is_admin": is_admin}),
        )
    except CtmError:
        user = None
    try:
        token, who = world.auth.login(
            Credentials.from_json({"username": username, "password": password}), "127.0.0.1"
        )
    except CtmError:
        return
    assert user is not None
    assert who.username == user.username
    assert world.auth.authenticate(token).user_id == user.id


# --- stats arithmetic --------------------------------------------------------------------------


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.lists(
        st.tuples(st.sampled_from([0, 0, 1, 2, -9]), st.floats(0.01, 500)), min_size=1, max_size=8
    )
)
def test_task_stats_follow_the_runs(runs: list[tuple[int, float]]) -> None:
    """Counts add up, min <= avg <= max, success rate = completed / (completed + failed)."""
    world = make_world(max_concurrent=len(runs))
    ids = [
        world.tasks.create_task(
            world.admin,
            NewTask.from_json({"script": "print(1)", "conda_env": "env", "task_name": f"t{i}"}),
        ).task.id
        for i in range(len(runs))
    ]
    world.scheduler.tick()
    handles = {h.spec.argv[-1]: h for h in world.runner.wait_started(len(runs))}
    for tid, (code, duration) in zip(ids, runs, strict=True):
        world.runner.finish(handles[world.repo.get_task(tid).script_path], code, duration=duration)
    assert world.coordinator.wait_idle(5)
    stats = world.tasks.stats()
    completed = sum(1 for code, _ in runs if code == 0)
    failed = len(runs) - completed
    assert stats.total == len(runs) == sum(stats.counts.values())
    assert stats.counts["completed"] == completed
    assert stats.counts["failed"] == failed
    assert stats.success_rate == round(100 * completed / len(runs), 1)
    assert stats.min_duration <= stats.avg_duration <= stats.max_duration
    assert sum(stats.success_counts) == completed
    assert sum(stats.failed_counts) == failed
    assert len(stats.dates) == 7 and stats.dates == sorted(stats.dates)
    assert len(stats.recent) == min(5, len(runs))


# --- the scheduler survives what happens while it ticks -----------------------------------------


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.booleans(), min_size=1, max_size=6))
def test_tasks_deleted_during_a_tick_do_not_stop_the_scheduler(deleted: list[bool]) -> None:
    """Due tasks deleted between the listing and their firing are skipped; the others run."""
    world = make_world(auto_exit_code=0, max_concurrent=8)
    ids = [
        world.tasks.create_task(
            world.admin,
            NewTask.from_json({"script": "print(1)", "conda_env": "env", "task_name": f"t{i}"}),
        ).task.id
        for i in range(len(deleted))
    ]
    listing = world.repo.list_tasks

    def racing() -> list[Any]:
        tasks = listing()
        for tid, gone in zip(ids, deleted, strict=True):
            if gone:
                world.tasks.delete_task(world.admin, tid)  # a DELETE lands mid-tick
        return tasks

    world.repo.list_tasks = racing  # type: ignore[method-assign]
    world.scheduler.tick()
    world.repo.list_tasks = listing  # type: ignore[method-assign]
    assert world.coordinator.wait_idle(5)
    for tid, gone in zip(ids, deleted, strict=True):
        if not gone:
            assert world.repo.get_task(tid).status is TaskStatus.COMPLETED
