"""Load: ``--clients`` concurrent clients against a real ``ctm serve``, next to a bare endpoint.

Bounded and loopback only: it starts its own servers on free ports of 127.0.0.1, runs for
``--seconds`` (plus a short baseline phase and a bounded drain), stops them and removes its
temporary data directory.

1. Baseline: a bare Starlette app with one JSON endpoint on uvicorn (same uvicorn settings as
   ``ctm serve``), hit by the same number of clients for ``--baseline-seconds``: half before the
   ctm phase, half after (so a machine busy with something else shows).
2. ctm (venv backend, temporary data dir, pip offline): every client logs in with its own session,
   then loops over a weighted mix of reads (GET /api/tasks, /api/tasks/stats,
   /api/conda/environments, /api/conda/stats, /api/tasks/<id>) and writes (POST /api/tasks with a
   short inline script into one pre-made environment, DELETE /api/tasks/<id>, POST /create_user),
   while ``--background`` short tasks (one-shots, 2 s of work each, spread over the window) run.
3. Report: req/s, p50 and p99 per route group beside the bare endpoint's (ratio), errors, and
   the executions check: every task created and not deleted has run exactly once and finished;
   none is left scheduled in the past (lost), queued or running (stuck).

Run from the repository root (CPU is shared: client and servers on the same machine):

    .venv/bin/python benchmarks/load.py [--seconds 60] [--clients 100] [--background 20]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

ADMIN_PASSWORD = "load-admin-password"
ENV = "loadenv"
WORK_SCRIPT = (
    "import time\nblock = bytearray(20 * 1024 * 1024)\nend = time.time() + 2\n"
    "while time.time() < end:\n    sum(range(1000))\n    time.sleep(0.01)\nprint('done')\n"
)
FINISHED = {"completed", "failed", "stopped"}


# --- servers -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_baseline(port: int) -> None:
    """The bare endpoint: one Starlette JSON route, uvicorn as ``ctm serve`` runs it."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def hello(request: Request) -> JSONResponse:
        return JSONResponse({"success": True, "message": "hello"})

    app = Starlette(routes=[Route("/hello", hello)])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="info", proxy_headers=False)


@contextmanager
def process(
    argv: list[str], env: dict[str, str], log_path: str, ready_url: str, timeout: float = 60.0
) -> Iterator[subprocess.Popen[bytes]]:
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{argv} exited; see {log_path}")
            try:
                httpx.get(ready_url, timeout=1.0)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{argv} did not start; see {log_path}") from None
                time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# --- measurement -------------------------------------------------------------------------------


@dataclass
class Recorder:
    latencies: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    error_samples: dict[str, str] = field(default_factory=dict)

    def add(self, group: str, seconds: float, ok: bool, detail: str = "") -> None:
        self.latencies[group].append(seconds)
        if not ok:
            self.errors[group] += 1
            self.error_samples.setdefault(group, detail[:300])


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def timed(
    rec: Recorder,
    group: str,
    expected: int,
    call: Any,
    also_ok: Callable[[httpx.Response], bool] = lambda r: False,
) -> httpx.Response | None:
    start = time.perf_counter()
    try:
        r: httpx.Response = await call
    except httpx.HTTPError as exc:
        rec.add(group, time.perf_counter() - start, False, f"{type(exc).__name__}: {exc}")
        return None
    rec.add(
        group,
        time.perf_counter() - start,
        r.status_code == expected or also_ok(r),
        f"{r.status_code} {r.text}",
    )
    return r


def client(base: str, clients: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    return httpx.AsyncClient(base_url=base, timeout=60.0, limits=limits, trust_env=False)


async def baseline_phase(base: str, clients: int, seconds: float) -> Recorder:
    """The same clients as the ctm phase (one connection pool each), on the bare endpoint."""
    rec = Recorder()
    sessions = [client(base, 4) for _ in range(clients)]
    deadline = time.monotonic() + seconds

    async def loop(http: httpx.AsyncClient) -> None:
        while time.monotonic() < deadline:
            await timed(rec, "bare endpoint", 200, http.get("/hello"))

    try:
        await asyncio.gather(*(loop(s) for s in sessions))
    finally:
        await asyncio.gather(*(s.aclose() for s in sessions))
    return rec


@dataclass
class LoadState:
    created: list[int] = field(default_factory=list)
    deleted: set[int] = field(default_factory=set)
    users: int = 0


Mix = list[tuple[str, float]]
DEFAULT_MIX: Mix = [
    ("GET /api/tasks", 15),
    ("GET /api/tasks/stats", 15),
    ("GET /api/conda/environments", 15),
    ("GET /api/conda/stats", 15),
    ("GET /api/tasks/<id>", 25),
    ("POST /api/tasks", 8),
    ("DELETE /api/tasks/<id>", 2),
    ("POST /create_user", 1),
]


async def ctm_phase(
    base: str, clients: int, seconds: float, max_tasks: int, seed: int, state: LoadState, mix: Mix
) -> Recorder:
    rec = Recorder()
    groups, weights = zip(*mix, strict=True)
    sem = asyncio.Semaphore(8)

    async def session(i: int) -> httpx.AsyncClient:
        http = client(base, 4)
        async with sem:
            r = await http.post("/login", json={"username": "admin", "password": ADMIN_PASSWORD})
        r.raise_for_status()
        return http

    sessions = await asyncio.gather(*(session(i) for i in range(clients)))
    deadline = time.monotonic() + seconds

    async def loop(i: int, http: httpx.AsyncClient) -> None:
        rng = random.Random(seed * 1000 + i)
        while time.monotonic() < deadline:
            group = rng.choices(groups, weights)[0]
            live = [t for t in state.created[-200:] if t not in state.deleted]
            if group == "POST /api/tasks" and len(state.created) >= max_tasks:
                group = "GET /api/tasks/<id>"
            if group.endswith("<id>") and not live:
                group = "GET /api/tasks"
            if group == "GET /api/tasks/<id>":
                tid = rng.choice(live)

                # Another client may delete it meanwhile: then 404 is the right answer.
                def deleted_meanwhile(r: httpx.Response, tid: int = tid) -> bool:
                    return r.status_code == 404 and tid in state.deleted

                await timed(rec, group, 200, http.get(f"/api/tasks/{tid}"), deleted_meanwhile)
            elif group == "DELETE /api/tasks/<id>":
                victim = rng.choice(live)
                state.deleted.add(victim)
                await timed(rec, group, 204, http.delete(f"/api/tasks/{victim}"))
            elif group == "POST /api/tasks":
                n = rng.randrange(10**9)
                r = await timed(
                    rec,
                    group,
                    201,
                    http.post(
                        "/api/tasks",
                        json={"script": f"print({n})", "conda_env": ENV, "reuse_env": True},
                    ),
                )
                if r is not None and r.status_code == 201:
                    state.created.append(r.json()["task"]["task_id"])
            elif group == "POST /create_user":
                state.users += 1
                name = f"load-{i}-{state.users}-{rng.randrange(10**6)}"
                await timed(
                    rec,
                    group,
                    201,
                    http.post(
                        "/create_user", json={"username": name, "password": "load-user-password"}
                    ),
                )
            else:
                await timed(rec, group, 200, http.get(group.split(" ", 1)[1]))

    try:
        await asyncio.gather(*(loop(i, s) for i, s in enumerate(sessions)))
    finally:
        await asyncio.gather(*(s.aclose() for s in sessions))
    return rec


# --- the executions check ----------------------------------------------------------------------


async def check_executions(
    base: str, state: LoadState, drain: float, background: list[int]
) -> dict[str, Any]:
    """Wait (at most ``drain`` s) until no task is due, queued or running; then judge each."""
    async with client(base, 8) as http:
        r = await http.post("/login", json={"username": "admin", "password": ADMIN_PASSWORD})
        r.raise_for_status()
        wanted = [t for t in state.created + background if t not in state.deleted]
        deadline = time.monotonic() + drain
        while True:
            tasks = {t["task_id"]: t for t in (await http.get("/api/tasks")).json()}
            pending = [
                t for t in wanted if tasks.get(t, {}).get("status") in ("scheduled", "running")
            ]
            if not pending or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        sem = asyncio.Semaphore(8)

        async def detail(tid: int) -> dict[str, Any]:
            async with sem:
                return (await http.get(f"/api/tasks/{tid}")).json()  # type: ignore[no-any-return]

        details = await asyncio.gather(*(detail(t) for t in wanted))
        stats = (await http.get("/api/tasks/stats")).json()
    lost, stuck, reran, missing, failed = [], [], [], [], []
    for tid, d in zip(wanted, details, strict=True):
        if not d.get("success"):
            missing.append(tid)
            continue
        runs = d["execution_history"]
        if not runs:
            lost.append(tid)
        elif any(e["status"] not in FINISHED for e in runs):
            stuck.append(tid)
        elif len(runs) > 1:
            reran.append(tid)
        elif runs[0]["status"] != "completed":
            failed.append((tid, runs[0]["status"], runs[0]["exit_code"]))
    return {
        "checked": len(wanted),
        "lost": lost,
        "stuck": stuck,
        "ran_twice": reran,
        "missing": missing,
        "not_completed": failed,
        "stats": stats,
        "drain_left": max(0.0, deadline - time.monotonic()),
    }


# --- main --------------------------------------------------------------------------------------


def report(base: Recorder, load: Recorder, seconds: float, base_seconds: float) -> None:
    b = base.latencies["bare endpoint"]
    b_rps, b50, b99 = len(b) / base_seconds, percentile(b, 0.5), percentile(b, 0.99)
    print(
        f"\n{'route group':32} {'requests':>9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'p50 x':>7} {'p99 x':>7} {'errors':>7}"
    )
    print(
        f"{'bare endpoint (baseline)':32} {len(b):9d} {b_rps:8.1f} {b50 * 1e3:8.1f} "
        f"{b99 * 1e3:8.1f} {1:7.1f} {1:7.1f} {base.errors['bare endpoint']:7d}"
    )
    total = 0
    for group, _ in DEFAULT_MIX:
        values = load.latencies.get(group, [])
        total += len(values)
        p50, p99 = percentile(values, 0.5), percentile(values, 0.99)
        print(
            f"{group:32} {len(values):9d} {len(values) / seconds:8.1f} {p50 * 1e3:8.1f} "
            f"{p99 * 1e3:8.1f} {p50 / b50:7.1f} {p99 / b99:7.1f} {load.errors[group]:7d}"
        )
    every = [v for values in load.latencies.values() for v in values]
    print(
        f"{'all ctm routes':32} {total:9d} {total / seconds:8.1f} "
        f"{percentile(every, 0.5) * 1e3:8.1f} {percentile(every, 0.99) * 1e3:8.1f} "
        f"{percentile(every, 0.5) / b50:7.1f} {percentile(every, 0.99) / b99:7.1f} "
        f"{sum(load.errors.values()):7d}"
    )
    print(
        f"throughput: ctm {total / seconds:.0f} req/s = {total / seconds / b_rps:.2f} x the bare "
        f"endpoint's {b_rps:.0f} req/s"
    )
    for group, sample in load.error_samples.items():
        print(f"first error of {group}: {sample}")


async def setup(base: str, count: int, window: float) -> list[int]:
    """Admin session, the environment, and the background tasks spread over the window."""
    async with client(base, 4) as http:
        r = await http.post("/login", json={"username": "admin", "password": ADMIN_PASSWORD})
        r.raise_for_status()
        r = await http.post("/api/conda/environment", json={"name": ENV})
        assert r.status_code == 201, r.text
        ids = []
        for i in range(count):
            r = await http.post(
                "/api/tasks",
                json={
                    "script": WORK_SCRIPT,
                    "conda_env": ENV,
                    "task_name": f"background-{i}",
                    "delay_seconds": round(2 + i * max(0.0, window - 5) / max(count, 1), 2),
                },
            )
            assert r.status_code == 201, r.text
            ids.append(r.json()["task"]["task_id"])
        return ids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the ctm phase")
    parser.add_argument("--clients", type=int, default=100, help="concurrent clients")
    parser.add_argument("--background", type=int, default=20, help="short tasks run meanwhile")
    parser.add_argument(
        "--baseline-seconds",
        type=float,
        default=None,
        help="length of the bare-endpoint phase (default: min(15, --seconds))",
    )
    parser.add_argument(
        "--max-tasks", type=int, default=3000, help="at most this many tasks created by the load"
    )
    parser.add_argument(
        "--drain",
        type=float,
        default=180.0,
        help="seconds to wait at the end for queued runs to finish",
    )
    parser.add_argument(
        "--max-runs",
        type=int,
        default=None,
        help="CTM_MAX_CONCURRENT_RUNS (default: the server's, the CPU count)",
    )
    parser.add_argument(
        "--delete-weight",
        type=float,
        default=2.0,
        help="weight of DELETE /api/tasks/<id> in the mix (0: no deletes)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the data directory and logs")
    parser.add_argument("--serve-baseline", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_baseline:
        serve_baseline(args.serve_baseline)
        return 0
    base_seconds = args.baseline_seconds or min(15.0, args.seconds)

    tmp = tempfile.mkdtemp(prefix="ctm-load-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CTM_")}
    env.update(
        {
            "CTM_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "CTM_BACKEND": "venv",
            "CTM_TIMEZONE": "UTC",
            "PIP_NO_INDEX": "1",
            "PIP_CONFIG_FILE": os.devnull,
        }
    )
    if args.max_runs:
        env["CTM_MAX_CONCURRENT_RUNS"] = str(args.max_runs)
    bport, cport = free_port(), free_port()
    bare, ctm = f"http://127.0.0.1:{bport}", f"http://127.0.0.1:{cport}"
    try:
        print(
            f"data directory {tmp}; {args.clients} clients; ctm phase {args.seconds:.0f} s, "
            f"baseline {base_seconds:.0f} s; cpus {os.cpu_count()}",
            flush=True,
        )
        baseline_argv = [sys.executable, os.path.abspath(__file__), "--serve-baseline", str(bport)]
        with process(baseline_argv, env, os.path.join(tmp, "baseline.log"), bare + "/hello"):
            base = asyncio.run(baseline_phase(bare, args.clients, base_seconds / 2))
        with process(
            [
                sys.executable,
                "-m",
                "ctm_http.cli",
                "serve",
                "--port",
                str(cport),
                "--data-dir",
                os.path.join(tmp, "data"),
            ],
            env,
            os.path.join(tmp, "ctm.log"),
            ctm + "/openapi.json",
        ):
            background = asyncio.run(setup(ctm, args.background, args.seconds))
            state = LoadState()
            started = time.monotonic()
            mix = [(g, args.delete_weight if g.startswith("DELETE") else w) for g, w in DEFAULT_MIX]
            load = asyncio.run(
                ctm_phase(
                    ctm,
                    args.clients,
                    args.seconds,
                    args.max_tasks,
                    args.seed,
                    state,
                    [(g, w) for g, w in mix if w > 0],
                )
            )
            elapsed = time.monotonic() - started
            check = asyncio.run(check_executions(ctm, state, args.drain, background))
        # The second half of the baseline after the ctm phase: a machine busy with something
        # else shows as a difference between the halves (printed), not as a wrong ratio.
        with process(baseline_argv, env, os.path.join(tmp, "baseline.log"), bare + "/hello"):
            after = asyncio.run(baseline_phase(bare, args.clients, base_seconds / 2))
        first, second = (
            len(r.latencies["bare endpoint"]) / (base_seconds / 2) for r in (base, after)
        )
        print(f"bare endpoint: {first:.0f} req/s before the ctm phase, {second:.0f} after")
        base.latencies["bare endpoint"] += after.latencies["bare endpoint"]
        base.errors.update(after.errors)
        report(base, load, elapsed, base_seconds)
        s = check["stats"]
        print(
            f"\ntasks created by the load: {len(state.created)} ({len(state.deleted)} deleted "
            f"again) + {len(background)} background; users created: {state.users}"
        )
        print(
            f"executions check over {check['checked']} tasks: lost {len(check['lost'])}, "
            f"stuck {len(check['stuck'])}, ran twice {len(check['ran_twice'])}, "
            f"missing {len(check['missing'])}, not completed {len(check['not_completed'])}"
        )
        print(
            f"server stats: completed {s['completed']}, failed {s['failed']}, running "
            f"{s['running']}, scheduled {s['scheduled']}; avg run {s['avg_duration']} s, "
            f"max {s['max_duration']} s"
        )
        for key in ("lost", "stuck", "ran_twice", "missing", "not_completed"):
            if check[key]:
                print(f"  {key}: {check[key][:20]}")
        bad = sum(len(check[k]) for k in ("lost", "stuck", "ran_twice", "missing"))
        return 1 if bad else 0
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
