"""The OpenAPI description cannot drift from the routes, the serializers, the error classes
and their table, or docs/api.md."""

from __future__ import annotations

import ast
import functools
import inspect
import pkgutil
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import jsonschema
import pytest
from openapi_spec_validator import validate as validate_openapi
from starlette.routing import Route
from starlette.testclient import TestClient

import ctm_adapters
import ctm_core
from ctm_adapters.settings import Settings
from ctm_core import errors
from ctm_core.environments import EnvironmentDetail, EnvironmentStats, UsageStats
from ctm_core.models import (
    ApiToken,
    AuditEvent,
    Environment,
    Execution,
    ExecutionStatus,
    Package,
    Principal,
    RunPolicy,
    Task,
    TaskStatus,
    User,
)
from ctm_core.tasks import CreatedTask, HistoryPage, TaskDetail, TaskStats
from ctm_core.users import UserView
from ctm_http import (
    _bodies,
    _errors,
    _log_routes,
    _request,
    _serialize,
    _user_routes,
    app,
    dashboard,
    openapi,
)
from ctm_http._schema import Body, to_schema

SPEC = openapi.spec()
GENERIC_STATUSES = {500}  # any route: an unhandled exception (internal_error_handler)
CHANGE_STATUSES = {503}  # any change: the store cannot be written (a full disk)
ROUTING_STATUSES = {404, 405}  # a path parameter holding '/' can reach another route


def _template(route: Any) -> str:
    """The OpenAPI path template of a route: ``{task_id:int}`` is written ``{task_id}``."""
    return re.sub(r":\w+}", "}", str(route.path))


def spec_operations() -> set[tuple[str, str]]:
    return {(m.upper(), p) for p, ops in SPEC["paths"].items() for m in ops}


def app_operations() -> set[tuple[str, str]]:
    routes = [*app.ROUTES, *openapi.routes(), *dashboard.routes()]
    return {
        (m, _template(r))
        for r in routes
        if isinstance(r, Route)
        for m in (r.methods or ())
        if m != "HEAD"
    }


# --- which domain errors can each route raise? -----------------------------------------------
#
# Not knowable from declarations: a call graph over ctm_http.app, ctm_core and the real
# adapters, resolved by name: module functions, ``self.method``, ``Class.method``, and
# ``<x>.<field>.<method>`` where ``<field>`` is an annotated attribute of some class
# (``repo: Repository``, ``tasks: TaskService``...). A port method raises what its docstring
# names plus what every adapter implementing it raises. It over-approximates (no except
# clauses), which is the safe side: a status found here must be documented.

_ERROR_NAMES = {
    name
    for name, obj in vars(errors).items()
    if inspect.isclass(obj) and issubclass(obj, errors.CtmError)
}
_HTTP = "RequestError"


def _modules() -> dict[str, ast.Module]:
    out: dict[str, ast.Module] = {
        m.__name__: ast.parse(inspect.getsource(m))
        for m in (app, _request, _user_routes, _log_routes)
    }
    for pkg in (ctm_core, ctm_adapters):
        for info in pkgutil.iter_modules(pkg.__path__, pkg.__name__ + "."):
            if info.name.endswith(".fakes"):  # test doubles, not what the server runs
                continue
            path = Path(pkg.__path__[0]) / (info.name.rsplit(".", 1)[1] + ".py")
            if path.exists():  # read, not imported: no adapter needs to load here
                out[info.name] = ast.parse(path.read_text(encoding="utf-8"))
    return out


def _annotation_name(node: ast.expr | None) -> set[str]:
    if node is None:
        return set()
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        node = ast.parse(node.value, mode="eval").body
    if isinstance(node, ast.Name):
        return {node.id}
    if isinstance(node, ast.Attribute):
        return {node.attr}
    if isinstance(node, ast.BinOp):  # X | None
        return _annotation_name(node.left) | _annotation_name(node.right)
    if isinstance(node, ast.Subscript):  # Optional[X]
        return _annotation_name(node.slice)
    return set()


class CallGraph:
    def __init__(self) -> None:
        self.modules = _modules()
        self.functions: dict[tuple[str, str], ast.AST] = {}
        self.classes: dict[str, tuple[str, ast.ClassDef]] = {}
        self.imports: dict[str, dict[str, tuple[str, str]]] = {}
        self.fields: dict[str, set[str]] = {}
        for mod, tree in self.modules.items():
            self.imports[mod] = {}
            for node in tree.body:
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    self.functions[(mod, node.name)] = node
                elif isinstance(node, ast.ClassDef):
                    self.classes[node.name] = (mod, node)
                    self._collect_fields(node)
                elif isinstance(node, ast.ImportFrom) and node.module:
                    for alias in node.names:
                        self.imports[mod][alias.asname or alias.name] = (node.module, alias.name)

    def _collect_fields(self, cls: ast.ClassDef) -> None:
        for node in cls.body:
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                self.fields.setdefault(node.target.id, set()).update(
                    _annotation_name(node.annotation)
                )
            if isinstance(node, ast.FunctionDef) and node.name == "__init__":
                params = {
                    a.arg: _annotation_name(a.annotation)
                    for a in node.args.args + node.args.kwonlyargs
                }
                for sub in ast.walk(node):
                    if isinstance(sub, ast.AnnAssign) and isinstance(sub.target, ast.Attribute):
                        self.fields.setdefault(sub.target.attr, set()).update(
                            _annotation_name(sub.annotation)
                        )
                    elif isinstance(sub, ast.Assign) and isinstance(sub.value, ast.Name):
                        for t in sub.targets:
                            if isinstance(t, ast.Attribute) and sub.value.id in params:
                                self.fields.setdefault(t.attr, set()).update(params[sub.value.id])

    def _methods(self, cls_name: str) -> dict[str, ast.AST]:
        """The class's methods, with those it inherits from classes of the graph."""
        if cls_name not in self.classes:
            return {}
        _, cls = self.classes[cls_name]
        found: dict[str, ast.AST] = {}
        for base in cls.bases:
            if isinstance(base, ast.Name) and base.id != cls_name:
                found.update(self._methods(base.id))
        found.update(
            {n.name: n for n in cls.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
        )
        return found

    def _is_port(self, cls_name: str) -> bool:
        return self.classes.get(cls_name, ("",))[0] == "ctm_core.ports"

    def _implementations(self, port: str) -> list[str]:
        wanted = {m for m in self._methods(port) if not m.startswith("_")}
        return [
            name
            for name, (mod, _) in self.classes.items()
            if mod.startswith("ctm_adapters.") and wanted <= set(self._methods(name))
        ]

    def _method_raises(self, cls_name: str, method: str) -> set[Any]:
        node = self._methods(cls_name).get(method)
        if node is None:
            return set()
        if self._is_port(cls_name):
            doc = ast.get_docstring(node) or ""  # type: ignore[arg-type]
            found: set[Any] = set(re.findall(r"``(\w+)", doc)) & _ERROR_NAMES
            for impl in self._implementations(cls_name):
                found |= self._method_raises(impl, method)
            return found
        return self.raises(self.classes[cls_name][0], cls_name, method)

    @functools.cache  # noqa: B019 - one graph per test session
    def raises(self, module: str, cls_name: str | None, name: str) -> frozenset[Any]:
        node = self._methods(cls_name).get(name) if cls_name else self.functions.get((module, name))
        if node is None:
            return frozenset()
        self._visiting = getattr(self, "_visiting", set())
        key = (module, cls_name, name)
        if key in self._visiting:
            return frozenset()
        self._visiting.add(key)
        found: set[Any] = set()
        try:
            for sub in ast.walk(node):
                found |= self._reference(sub, module, cls_name)
        finally:
            self._visiting.discard(key)
        return frozenset(found)

    def _reference(self, node: ast.AST, module: str, cls_name: str | None) -> set[Any]:
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id in _ERROR_NAMES:
                return {node.func.id}
            if node.func.id == _HTTP and node.args and isinstance(node.args[0], ast.Constant):
                return {(_HTTP, node.args[0].value)}
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            if (module, node.id) in self.functions:
                return set(self.raises(module, None, node.id))
            target = self.imports[module].get(node.id)
            if target and (target[0], target[1]) in self.functions:
                return set(self.raises(target[0], None, target[1]))
        if isinstance(node, ast.Attribute):
            value = node.value
            if isinstance(value, ast.Name) and value.id == "self" and cls_name:
                return self._method_raises(cls_name, node.attr)
            if isinstance(value, ast.Name) and value.id in self.classes:  # NewTask.from_json
                return self._method_raises(value.id, node.attr)
            if isinstance(value, ast.Attribute) and value.attr in self.fields:
                out: set[Any] = set()
                for type_name in self.fields[value.attr]:
                    out |= self._method_raises(type_name, node.attr)
                return out
        return set()


@functools.cache
def graph() -> CallGraph:
    return CallGraph()


def _status(item: Any) -> int:
    if isinstance(item, tuple):
        return int(item[1])
    return _errors.status_of(getattr(errors, item))


# What the over-approximating graph finds but cannot happen through the API, and why.
NOT_REACHABLE = {
    (
        "POST",
        "/api/conda/environment",
        "EnvironmentNotFound",
    ): "the backend reads the new environment back while the service holds its lock: only a "
    "deletion outside ctm could make it vanish",
    (
        "POST",
        "/api/tasks",
        "TaskNotFound",
    ): "set_task_script follows add_task at once, before the new task's id is answered to "
    "anyone who could delete it",
    ("POST", "/api/me/password", "LastAdmin"): "a password change sets neither is_admin nor "
    "disabled",
    ("POST", "/api/tasks/{task_id}/resume", "InvalidInput"): "running_zone catches the zone "
    "lookup's InvalidInput (a zone gone from the database) and uses the server's",
}


def _method(route: Route) -> str:
    [method] = (route.methods or set()) - {"HEAD"}
    return method


def reachable_statuses(route: Route) -> dict[int, set[str]]:
    """Status -> the errors (by name) that the route's handler can end in."""
    found = graph().raises(route.endpoint.__module__, None, route.endpoint.__name__)
    method = _method(route)
    out: dict[int, set[str]] = {}
    for item in found:
        if method == "GET" and item == "CrossSiteRequest":
            continue  # check_same_site returns at once for safe methods
        if (method, _template(route), item) in NOT_REACHABLE:
            continue
        out.setdefault(_status(item), set()).add(str(item))
    return out


def documented(method: str, path: str) -> set[int]:
    return {int(s) for s in openapi.operation(method, path)["responses"]}


def _routes() -> Iterator[Route]:
    for r in app.ROUTES:
        assert isinstance(r, Route)
        yield r


_ROUTE_IDS = {"ids": lambda r: f"{r.methods} {_template(r)}"}


# --- the description and the routes ----------------------------------------------------------


def test_spec_is_valid_openapi_3_1() -> None:
    """openapi-spec-validator accepts the document as OpenAPI 3.1."""
    assert SPEC["openapi"].startswith("3.1")
    validate_openapi(SPEC)


def test_every_route_is_described_and_nothing_else() -> None:
    """Each (method, path) of app.ROUTES and the description routes is in the spec, and back."""
    assert spec_operations() == app_operations()


def test_operation_ids_are_unique() -> None:
    """Client generators need one name per operation."""
    ids = [op["operationId"] for ops in SPEC["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("route", list(_routes()), **_ROUTE_IDS)
def test_every_reachable_error_status_is_documented(route: Route) -> None:
    """Whatever domain error the handler's call graph can raise, its status is in the spec."""
    method = _method(route)
    reachable = reachable_statuses(route)
    documented_here = documented(method, _template(route))
    missing = {s: names for s, names in reachable.items() if s not in documented_here}
    assert not missing, f"{method} {_template(route)}: undocumented statuses {missing}"


@pytest.mark.parametrize("route", list(_routes()), **_ROUTE_IDS)
def test_no_documented_error_status_is_unreachable(route: Route) -> None:
    """Each documented error status is one the handler can really answer (or routing/500)."""
    method = _method(route)
    ok = {200, 201, 204}
    extra = GENERIC_STATUSES | (ROUTING_STATUSES if "{" in _template(route) else set())
    if method != "GET":
        extra |= CHANGE_STATUSES
    spurious = documented(method, _template(route)) - ok - set(reachable_statuses(route)) - extra
    assert not spurious, f"{method} {_template(route)}: documented but unreachable {spurious}"


def _query_names(route: Route) -> set[str]:
    """``request.query_params.get("x")`` and ``request.query_params["x"]`` in the handler."""
    node = graph().functions[(route.endpoint.__module__, route.endpoint.__name__)]
    names = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Attribute):
            target, key = sub.func.value, (sub.args or [None])[0]
        elif isinstance(sub, ast.Subscript):
            target, key = sub.value, sub.slice
        else:
            continue
        if (
            isinstance(target, ast.Attribute)
            and target.attr == "query_params"
            and isinstance(key, ast.Constant)
        ):
            names.add(key.value)
    return names


@pytest.mark.parametrize("route", list(_routes()), **_ROUTE_IDS)
def test_query_parameters_read_by_a_handler_are_documented(route: Route) -> None:
    """The query parameters a handler reads are exactly the ones its operation lists."""
    op = openapi.operation(_method(route), _template(route))
    listed = {p["name"] for p in op.get("parameters", []) if p["in"] == "query"}
    assert _query_names(route) == listed


def test_analysis_finds_known_errors() -> None:
    """The call graph is not empty-handed: known raises are found through ports and helpers."""
    by_path = {(_method(r), _template(r)): r for r in _routes()}
    get_task = reachable_statuses(by_path[("GET", "/api/tasks/{task_id}")])
    assert "TaskNotFound" in get_task[404]  # via _task_id and Repository.get_task
    assert "AuthenticationRequired" in get_task[401]  # via @authenticated
    install = reachable_statuses(by_path[("POST", "/api/conda/environment/{name}/packages")])
    assert "PackageOperationFailed" in install[400]  # via EnvironmentBackend.install
    assert "InvalidPackageSpec" in install[400]  # via PackageChange.from_json
    assert {"NotOwner", "CrossSiteRequest"} <= install[403]
    assert {413, 415} <= set(install)  # via read_json
    login = reachable_statuses(by_path[("POST", "/login")])
    assert "TooManyLoginAttempts" in login[429]


def test_not_reachable_entries_are_still_found_by_the_graph() -> None:
    """Each allowance above names something the graph really finds (no stale entries)."""
    by_path = {(_method(r), _template(r)): r for r in _routes()}
    for method, path, name in NOT_REACHABLE:
        route = by_path[(method, path)]
        assert name in graph().raises(route.endpoint.__module__, None, route.endpoint.__name__)


def test_protected_operations_require_the_session_cookie() -> None:
    """Global security is the session cookie or a bearer token; only login, logout, the
    description and the dashboard page differ."""
    assert SPEC["security"] == [{"session": []}, {"bearer": []}]
    scheme = SPEC["components"]["securitySchemes"]["session"]
    assert scheme == {**scheme, "type": "apiKey", "in": "cookie", "name": "session"}
    bearer = SPEC["components"]["securitySchemes"]["bearer"]
    assert bearer == {**bearer, "type": "http", "scheme": "bearer"}
    open_ops = {
        (m.upper(), p)
        for p, ops in SPEC["paths"].items()
        for m, op in ops.items()
        if "security" in op
    }
    assert open_ops == {
        ("POST", "/login"),
        ("POST", "/logout"),
        ("GET", "/openapi.json"),
        ("GET", "/docs"),
        ("GET", "/"),
    }
    for method, path in spec_operations() - open_ops:
        assert 401 in documented(method, path), (method, path)


# --- bodies: each one the server writes is its declaration -----------------------------------


def _check(spec: Any, value: Any, seen: dict[Body, set[str]]) -> None:
    """``value`` has no key its declaration lacks, every required one, at every depth; the
    keys met are added to ``seen``."""
    if isinstance(spec, Body):
        assert isinstance(value, dict), value
        keys = spec.keys
        assert set(value) <= set(keys), f"undeclared keys {set(value) - set(keys)}"
        assert spec.required <= set(value), f"missing keys {spec.required - set(value)}"
        for part in (spec, spec.base):
            if part is not None:
                seen.setdefault(part, set()).update(set(value) & set(part.fields))
        for key, item in value.items():
            _check(keys[key], item, seen)
    elif isinstance(spec, dict) and value is not None:
        if isinstance(value, list) and "items" in spec:
            for item in value:
                _check(spec["items"], item, seen)
        for alternative in spec.get("anyOf", []):
            _check(alternative, value, seen)


def _validate(declaration: Any, value: Any) -> None:
    schema = {**to_schema(declaration), "components": SPEC["components"]}
    jsonschema.Draft202012Validator(schema).validate(value)


T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
S = timedelta(seconds=1)


def _samples() -> dict[Any, list[tuple[Any, ...]]]:
    """Arguments for each serializer, covering every optional key."""
    env = Environment(
        name="demo",
        prefix="/envs/demo",
        python_version="3.12.1",
        packages=(Package("six", "1.16.0"),),
        created_at=T0,
    )
    task = Task(
        id=1,
        name="t",
        owner_id=2,
        script_path="/s/t.py",
        script_stored=True,
        conda_env="demo",
        requirements=None,
        cron_expression="* * * * *",
        delay_seconds=None,
        timeout_seconds=None,
        status=TaskStatus.SCHEDULED,
        created_at=T0,
        next_run_at=T0 + S,
        last_execution_id="e1",
    )
    done = Execution(
        id="e1",
        task_id=1,
        status=ExecutionStatus.COMPLETED,
        start_time=T0,
        end_time=T0 + S,
        duration=1.0,
        exit_code=0,
        scheduled_for=T0,
    )
    skipped = Execution(
        id="e2",
        task_id=1,
        status=ExecutionStatus.SKIPPED,
        scheduled_for=T0,
        start_time=T0,
        end_time=T0 + 2 * S,
        skip_count=2,
        first_skipped_at=T0,
        last_skipped_at=T0 + 2 * S,
    )
    policy = RunPolicy()
    user = User(id=1, username="admin", password_hash="x", is_admin=True, created_at=T0)
    admin = Principal(user_id=1, username="admin", is_admin=True)
    view = UserView(user=user, sessions=2)
    token = ApiToken(id=3, user_id=1, name="ci", token_hash="h", created_at=T0, expires_at=None)
    event = AuditEvent(
        id=3,
        at=T0,
        actor=None,
        address="127.0.0.1",
        action="login",
        target="admin",
        outcome="refused",
        detail={"n": 1},
    )
    containment = {"contained": False, "mode": "off", "reason": "r", "identity": "i", "limits": "l"}
    ser = _serialize
    return {
        ser.environment_summary: [(env, 10, UTC), (env, None, UTC)],
        ser.environment_detail: [
            (
                EnvironmentDetail(
                    environment=env,
                    usage=UsageStats(
                        total_tasks=1,
                        success_rate=100.0,
                        avg_execution_time=1.0,
                        disk_usage_bytes=1,
                    ),
                ),
                UTC,
            )
        ],
        ser.environment_stats: [
            (
                EnvironmentStats(
                    total_environments=1,
                    active_environments=1,
                    total_disk_usage_bytes=1,
                    latest_created=env,
                    environment_usage=[("demo", 100)],
                    package_stats=[("demo", 1)],
                ),
                UTC,
            )
        ],
        ser.task_body: [(task, UTC, policy)],
        ser.task_list_item: [(task, done, UTC, policy), (task, None, UTC, policy)],
        ser.execution_body: [(done, UTC), (skipped, UTC)],
        ser.task_detail: [
            (
                TaskDetail(task=task, executions=[done], latest=done, latest_log="hello\n"),
                UTC,
                policy,
            )
        ],
        ser.task_stats: [
            (
                TaskStats(
                    counts={s.value: 0 for s in TaskStatus},
                    total=0,
                    avg_duration=0.0,
                    min_duration=0.0,
                    max_duration=0.0,
                    success_rate=0.0,
                    dates=[f"2026-05-0{d}" for d in range(1, 8)],
                    success_counts=[0] * 7,
                    failed_counts=[0] * 7,
                    recent=[(done, "t")],
                ),
                UTC,
            )
        ],
        ser.history_item: [(done, "t", UTC)],
        ser.user_body: [(user,), (admin,)],
        ser.logged_in: [(user,)],
        ser.logged_out: [()],
        ser.user_created: [(user,)],
        ser.me: [(admin, containment)],
        ser.environment_created: [(env, UTC)],
        ser.environment_renamed: [("a", "b", 2)],
        ser.packages_installed: [("demo", ["six"])],
        ser.packages_removed: [("demo", ["six"])],
        ser.task_created: [(CreatedTask(task=task, environment_message="m"), UTC, policy)],
        ser.task_stopped: [(task, TaskStatus.RUNNING)],
        ser.history_page: [(HistoryPage(items=[(done, "t")], next_before=None), UTC)],
        ser.user_record: [(view, UTC)],
        ser.users: [([view], UTC)],
        ser.user_updated: [(view, 2, UTC)],
        ser.user_deleted: [()],
        ser.password_changed: [(1,)],
        ser.audit_event: [(event, UTC)],
        ser.token_info: [(token, "admin", UTC)],
        ser.token_created: [("ctm_secret", token, "admin", UTC)],
        ser.tokens: [([(token, "admin")], UTC)],
        ser.token_deleted: [()],
        ser.task_paused: [(task, UTC, policy), (attrs.evolve(task, paused=True), UTC, policy)],
        ser.run_queued: [(done,)],
        ser.audit_page: [([event], "3", UTC), ([], None, UTC)],
    }


def test_each_serializer_writes_exactly_the_keys_of_its_declaration() -> None:
    """Every key a serializer writes is declared in _bodies, and every declared key is written
    (by some sample), at every depth; the bodies fit their schemas."""
    samples = _samples()
    assert set(samples) == set(_serialize.SERIALIZERS), "a serializer without samples"
    seen: dict[Body, set[str]] = {}
    for fn, declaration in _serialize.SERIALIZERS.items():
        for args in samples[fn]:
            value = fn(*args)
            _check(declaration, value, seen)
            _validate(declaration, value)
    for declaration, keys in seen.items():
        assert keys == set(declaration.fields), (declaration.name, set(declaration.fields) - keys)


def test_every_serializer_names_its_body() -> None:
    """Each public function of _serialize that renders a body is registered with @renders."""
    helpers = {"fmt_time", "gb", "renders"}
    public = {
        name
        for name, fn in vars(_serialize).items()
        if inspect.isfunction(fn)
        and fn.__module__ == _serialize.__name__
        and not name.startswith("_")
    }
    assert public - helpers == {fn.__name__ for fn in _serialize.SERIALIZERS}


def test_every_success_body_of_the_description_is_a_declared_body() -> None:
    """The JSON success answers of the API routes come from _bodies declarations."""
    declared = set(_serialize.SERIALIZERS.values()) | {
        _bodies.ENVIRONMENTS["items"],
        _bodies.TASKS["items"],
    }
    api = ("/api", "/login", "/logout", "/create_user")
    for op in openapi.OPERATIONS:
        if op.path.startswith(api) and op.ok_status != 204 and not op.ok_media:
            body = op.ok["items"] if isinstance(op.ok, dict) else op.ok
            assert body in declared, (op.method, op.path)


# --- errors: bodies from the classes, statuses from the table --------------------------------


def test_every_error_class_has_a_body_and_a_status() -> None:
    """Each CtmError subclass renders into a documented body, with a status from the table."""
    for name in _ERROR_NAMES - {"CtmError"}:
        cls = getattr(errors, name)
        assert _bodies.error_body_of(cls).name in SPEC["components"]["schemas"]
        assert _errors.status_of(cls) != 500, f"{name} is missing from _errors.STATUS"


def test_every_status_of_the_error_table_appears_in_the_spec() -> None:
    """No status of _errors.STATUS is left out of every operation."""
    used = {
        int(s) for ops in SPEC["paths"].values() for op in ops.values() for s in op["responses"]
    }
    assert set(_errors.STATUS.values()) <= used


def test_error_bodies_rendered_by_the_handler_are_their_declarations() -> None:
    """Every domain error, rendered as the handler renders it, has exactly its declared keys
    and fits its schema (message and error as worded on the class)."""
    samples: list[errors.CtmError] = [
        errors.InvalidInput("reuse_env", "'reuse_env' must be true or false"),
        errors.InvalidEnvironmentName("-x", "bad"),
        errors.InvalidPackageSpec("packages", ["-c evil"]),
        errors.InvalidCredentialsFormat("password", "short"),
        errors.ScheduleConflict(),
        errors.InvalidCronExpression("bad"),
        errors.InvalidDelay(),
        errors.AuthenticationRequired(),
        errors.InvalidCredentials(),
        errors.TooManyLoginAttempts(30),
        errors.AdminRequired(),
        errors.NotOwner("stop this task"),
        errors.CrossSiteRequest(),
        errors.ScriptOutsideRoots("/etc/x.py"),
        errors.UserExists("bob"),
        errors.EnvironmentNotFound("x"),
        errors.EnvironmentExists("x"),
        errors.EnvironmentInUse(errors.EnvironmentInUse.DELETE, ["/a"]),
        errors.PackageOperationFailed(
            "Failed to install packages", failed_packages=["x"], error_details=["no"], output="out"
        ),
        errors.BackendFailure("conda exploded"),
        errors.TaskNotFound(7),
        errors.ExecutionNotFound(7, "0123456789abcdef"),
        errors.TaskExists("t"),
        errors.ReuseMissingEnvironment("e"),
        errors.ScriptNotFound("/x.py"),
        errors.RequirementsFailed(
            new_environment=False,
            failed_packages=["x"],
            error_details=["no"],
            output="o",
            environment_state="s",
        ),
        errors.TaskNotRunning("completed"),
        errors.TaskLimitReached(200),
        errors.UserNotFound("bob"),
        errors.LastAdmin("admin"),
        errors.UserOwnsTasks("bob", 3),
        errors.WrongPassword(),
        errors.TokenNotFound(3),
        errors.TaskAlreadyActive(1),
        errors.StorageUnavailable("database or disk is full"),
    ]
    assert {type(s).__name__ for s in samples} == _ERROR_NAMES - {"CtmError"}
    for exc in samples:
        declaration = _bodies.error_body_of(type(exc))
        body = _errors.error_body(exc)
        _check(declaration, body, {})
        _validate(declaration, body)


def test_messages_chosen_by_the_raiser_are_listed_on_the_class() -> None:
    """A literal message given to an error class with ``messages`` is one of them (the
    description lists exactly those)."""
    choosers = {n for n in _ERROR_NAMES if getattr(errors, n).messages}
    for module, tree in graph().modules.items():
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in choosers
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                assert node.args[0].value in getattr(errors, node.func.id).messages, (
                    module,
                    node.lineno,
                    node.args[0].value,
                )


# --- examples --------------------------------------------------------------------------------


def _examples() -> Iterator[tuple[str, str, str, Any]]:
    for path, ops in SPEC["paths"].items():
        for method, op in ops.items():
            for status, response in op["responses"].items():
                media = response.get("content", {}).get("application/json", {})
                for name, ex in media.get("examples", {}).items():
                    yield method, path, status, (name, ex["value"])


@pytest.mark.parametrize(("method", "path", "status", "example"), list(_examples()))
def test_every_response_example_fits_its_schema(
    method: str, path: str, status: str, example: tuple[str, Any]
) -> None:
    """The api.md bodies used as examples validate against the response schemas."""
    schema = openapi.response_schema(method, path, int(status))
    assert schema is not None
    jsonschema.Draft202012Validator(schema).validate(example[1])


def test_request_examples_fit_their_schemas() -> None:
    """Request body examples are valid requests."""
    for ops in SPEC["paths"].values():
        for op in ops.values():
            media = op.get("requestBody", {}).get("content", {}).get("application/json")
            if not media:
                continue
            schema = {**media["schema"], "components": SPEC["components"]}
            for ex in media.get("examples", {}).values():
                jsonschema.Draft202012Validator(schema).validate(ex["value"])


# --- served ----------------------------------------------------------------------------------


@pytest.fixture
def client() -> Iterator[TestClient]:
    from ctm_adapters.clock import FakeClock
    from ctm_adapters.fakes import (
        FakeEnvironmentBackend,
        FakePasswordHasher,
        FakeProcessRunner,
        InMemoryFileStore,
    )
    from ctm_adapters.memory import InMemoryRepository

    settings = Settings(
        data_dir="/nonexistent/ctm",
        admin_password="admin-password",
        timezone="UTC",
        allowed_hosts=("testserver",),  # TestClient's Host (the default allows loopback only)
    )
    application = app.create_app(
        settings,
        repo=InMemoryRepository(),
        clock=FakeClock(),
        backend=FakeEnvironmentBackend(),
        runner=FakeProcessRunner(auto_exit_code=0),
        files=InMemoryFileStore(),
        hasher=FakePasswordHasher(),
    )
    with TestClient(application, base_url="http://testserver") as c:
        yield c


def test_openapi_json_is_served_without_a_session(client: TestClient) -> None:
    """GET /openapi.json: 200, the same document, no cookie needed."""
    r = client.get("/openapi.json")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    assert r.json() == SPEC


def test_docs_page_lists_every_operation_and_loads_nothing(client: TestClient) -> None:
    """GET /docs: one HTML page naming every route; no script, no external resource."""
    r = client.get("/docs")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in r.headers["content-security-policy"]
    page = r.text
    for _, path in spec_operations():
        assert f"<code>{path}</code>" in page
    for forbidden in ("<script", "http://", "https://"):
        assert forbidden not in page


def test_routing_errors_match_their_schemas(client: TestClient) -> None:
    """An unknown route and a wrong method answer the documented 404/405 bodies."""
    client.post("/login", json={"username": "admin", "password": "admin-password"})
    r = client.get("/api/conda/environment/a/b")
    jsonschema.validate(
        r.json(), openapi.response_schema("GET", "/api/conda/environment/{name}", 404)
    )
    r = client.get("/api/tasks/1/stop")
    assert r.status_code == 405
    jsonschema.validate(r.json(), openapi.response_schema("GET", "/api/tasks/{task_id}", 405))
    assert r.headers["allow"]


def test_docs_api_md_is_generated_from_the_spec() -> None:
    """docs/api.md is exactly what `python -m ctm_http.openapi markdown` prints."""
    path = Path(__file__).resolve().parents[2] / "docs" / "api.md"
    assert path.read_text(encoding="utf-8") == openapi.render_markdown(SPEC), (
        "docs/api.md is stale: run .venv/bin/python -m ctm_http.openapi markdown > docs/api.md"
    )


def test_405_allow_header_lists_every_method_of_the_path(client: TestClient) -> None:
    """RFC 9110: a 405's Allow names every method the path supports."""
    for path, ops in SPEC["paths"].items():
        concrete = path.replace("{name}", "env").replace("{task_id}", "1")
        concrete = concrete.replace("{username}", "alice").replace("{token_id}", "1")
        r = client.request("TRACE", concrete)
        assert r.status_code == 405, path
        allowed = {m.strip() for m in r.headers["allow"].split(",")}
        expected = {m.upper() for m in ops} | ({"HEAD"} if "get" in ops else set())
        assert allowed == expected, (path, allowed, expected)
