"""Schemathesis against a live ``ctm serve``: every route, logged in as admin.

Each operation of /openapi.json gets ``CTM_FUZZ_EXAMPLES`` generated requests that fit its
schema (positive) and as many that break it (negative). Every answer must be no 5xx, a
documented status with a documented content type and headers, and a body that fits the schema.

    # CI (default 4 + 4 per operation: about 120 requests, about 30 s):
    .venv/bin/pytest tests/fuzz
    # The long run (about 1,800 requests, under a minute here; prints the counts at the end):
    CTM_FUZZ_EXAMPLES=60 CTM_FUZZ_SEED=12345 .venv/bin/pytest tests/fuzz -q

``CTM_FUZZ_SEED=<int>`` fixes the generation (default: derandomized, the same cases each run).

The server is kept off the network: pip sees only a local folder of wheels (PIP_NO_INDEX) and
every proxy variable points at a closed loopback port, so no generated package name or URL ever
leaves the machine. Task bodies are sent with ``conda_env`` set to one pre-made environment
(creating a venv takes seconds); environment creation itself is fuzzed, at its real cost.
"""

from __future__ import annotations

import collections
import copy
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from ctm_core.validation import ENV_NAME_RE, USERNAME_RE
from ctm_http import openapi
from tests.integration.conftest import Server
from tests.integration.test_openapi_responses import offline_env
from tests.integration.venv_fixtures import build_wheel_folder

EXAMPLES = int(os.environ.get("CTM_FUZZ_EXAMPLES", "4"))
SEED = os.environ.get("CTM_FUZZ_SEED")
FUZZ_ENV = "fuzzenv-q7x"
FUZZ_USER = "fuzzuser"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# CTM_FUZZ_STRICT=1 adds the checks that judge the API's strictness rather than its safety:
# valid data accepted, invalid data refused, undocumented methods answered 405. They also flag
# what only the state explains (a name already taken), so they are for reading, not for CI.
if os.environ.get("CTM_FUZZ_STRICT"):
    CHECKS += [negative_data_rejection, positive_data_acceptance, unsupported_method]
# Any URL a generated requirement or package could name goes to a closed loopback port.
NO_NETWORK = {
    name: "http://127.0.0.1:9"
    for name in (
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "all_proxy",
        "PIP_PROXY",
    )
} | {"NO_PROXY": "", "no_proxy": ""}

SCHEMA = schemathesis.openapi.from_dict(copy.deepcopy(openapi.spec()))
OPERATIONS = [
    (op.method.upper(), op.path) for op in (result.ok() for result in SCHEMA.get_all_operations())
]


def _has_input(method: str, path: str) -> bool:
    op = openapi.operation(method, path)
    return bool(op.get("parameters") or op.get("requestBody"))


# Negative cases need something to break: a path parameter or a body.
CASES = [
    pytest.param(method, path, mode, id=f"{method} {path} {mode.value}")
    for method, path in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or _has_input(method, path)
]


@attrs.define
class Live:
    server: Server
    token: str
    requests: collections.Counter[tuple[str, str, str]] = attrs.Factory(collections.Counter)
    statuses: collections.Counter[int] = attrs.Factory(collections.Counter)
    seconds: float = 0.0


@pytest.fixture(scope="module")
def live(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("fuzz")
    wheels = build_wheel_folder(str(tmp / "wheels"))
    srv = Server(
        tmp / "data",
        extra_env={
            **offline_env(wheels),
            **NO_NETWORK,
            "CTM_STOP_GRACE_SECONDS": "1",
            "CTM_MAX_CONCURRENT_RUNS": "2",
            "CTM_LOG_MAX_BYTES": "65536",
        },
    )
    srv.start()
    try:
        with srv.client() as c:
            srv.login(c)
            token = c.cookies.get("session")
            assert token
            r = c.post("/api/conda/environment", json={"name": FUZZ_ENV})
            assert r.status_code == 201, r.text
            r = c.post("/create_user", json={"username": FUZZ_USER, "password": "fuzz-password"})
            assert r.status_code == 201, r.text
        state = Live(srv, token)
        yield state
        _report(request, state)
    finally:
        srv.stop()
    # After the stop: a background task that died (the scheduler) shows only at shutdown.
    assert "Traceback" not in srv.output(), srv.output()[-5000:]


def _report(request: pytest.FixtureRequest, state: Live) -> None:
    total = sum(state.requests.values())
    lines = [
        f"fuzz: {total} requests in {state.seconds:.0f} s "
        f"(up to {EXAMPLES} positive and {EXAMPLES} negative per operation, "
        f"seed {SEED or 'derandomized'})",
        "fuzz: statuses " + ", ".join(f"{s}: {n}" for s, n in sorted(state.statuses.items())),
    ]
    per_op: collections.Counter[str] = collections.Counter()
    for (method, path, _), n in state.requests.items():
        per_op[f"{method} {path}"] += n
    lines += [f"fuzz:   {n:5d}  {op}" for op, n in sorted(per_op.items())]
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print("\n" + "\n".join(lines))


def _prepare(case: Any, token: str) -> None:
    """Send the admin's session; keep task runs in the one pre-made environment; point user
    changes that name a valid username at the one pre-made user (random names are all 404)."""
    cookies = dict(case.cookies or {})
    if case.operation.path == "/logout":
        cookies.pop("session", None)  # fuzzing logout with our cookie would end the session
    else:
        cookies["session"] = token
    case.cookies = cookies
    name = (case.path_parameters or {}).get("username")
    if isinstance(name, str) and USERNAME_RE.fullmatch(name):
        case.path_parameters["username"] = FUZZ_USER
    body = case.body
    if case.operation.path == "/api/tasks" and isinstance(body, dict):
        env = body.get("conda_env")
        if isinstance(env, str) and ENV_NAME_RE.fullmatch(env):
            body["conda_env"] = FUZZ_ENV


def _fuzz(state: Live, method: str, path: str, mode: GenerationMode) -> None:
    operation = SCHEMA[path][method]
    base_url = state.server.base

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=SEED is None,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        _prepare(case, state.token)
        response = case.call(base_url=base_url, timeout=120)
        state.requests[(method, path, mode.value)] += 1
        state.statuses[response.status_code] += 1
        case.validate_response(response, checks=CHECKS)

    if SEED is not None:
        run = seed(int(SEED))(run)
    started = time.monotonic()
    try:
        run()
    finally:
        state.seconds += time.monotonic() - started


@pytest.mark.slow
@pytest.mark.parametrize(("method", "path", "mode"), CASES)
def test_generated_requests_get_documented_answers(
    live: Live, method: str, path: str, mode: GenerationMode
) -> None:
    """No 5xx, and status, content type, headers and body as /openapi.json describes them."""
    _fuzz(live, method, path, mode)


def test_operations_cover_the_whole_description() -> None:
    """The fuzz stage sees every operation the spec describes."""
    described = {(m.upper(), p) for p, ops in openapi.spec()["paths"].items() for m in ops}
    assert set(OPERATIONS) == described


def test_fuzz_server_stays_on_loopback() -> None:
    """Every proxy variable of the fuzzed server points at loopback, and pip has no index."""
    assert all(
        v.startswith("http://127.0.0.1:")
        for k, v in NO_NETWORK.items()
        if "proxy" in k.lower() and "no_" not in k.lower()
    )
    assert offline_env(str(Path("/x")))["PIP_NO_INDEX"] == "1"
