"""Reads at scale (issue 11): every GET route with 1,000 / 10,000 / 100,000 executions.

The issue's bar: 200 tasks with 1,000 / 10,000 / 100,000 executions; every GET route's p50 at
most 20 ms at 100,000, and at most 1.5x its own figure at 1,000.

1. Seed, per size N, a fresh temporary data directory through the repository
   (``SqliteRepository``: one ``add_execution`` per row, a skipped one as the record the
   scheduler stores when the task's latest is not a skip; each task row updated once at the
   end. The repository has no batch insert: ~0.2-0.5 ms a row on this machine, 100,000 rows
   in 20-45 s. Only ``add_user``, ``add_task``, ``add_execution``, ``update_execution`` and
   ``update_task`` are used, so it runs against older code too): an admin and a second user,
   200 tasks (a third on a cron that never comes due, the rest one-shots already run) in one
   venv environment, and N executions over the last 10 days, spread over the tasks Zipf-like
   (the busiest task has ~17% of them, as a task on an every-minute cron would). Statuses: ~83%
   completed, ~10% failed, ~2% stopped, ~5% skipped records, the newest 5 running (the server
   marks them failed on start: no process to adopt). The latest execution of 12 tasks (the
   busiest and the median one among them) has a log file.
2. Start one real ``ctm serve`` per size (venv backend, UTC, pip offline), create the
   environment through the API, log in (one keep-alive client per server).
3. Time every GET route the app declares (read from ``create_app``'s routes, so none is
   missed; static files aside): ``--warmup`` calls, then up to ``--requests`` sequential calls,
   the sizes interleaved call by call so that the machine's load falls on all of them alike.
   A size stops early once its calls of a route have taken ``--route-budget`` / (number of
   sizes) seconds (after at least 5 calls): the slow routes of the code before issue 11 would
   otherwise take minutes. A task's detail is timed for the busiest task and for the median
   one. When a default answer carries a pagination cursor (``next_before``, ``cursor``, ... or
   a ``Link: rel=next``), the page after it is timed too (``?limit=500&before=<cursor>``);
   otherwise that row says n/a.
4. Print a table per size and the verdict per route: p50 at each size, the ratio of the largest
   size to the smallest, the answer's size at the largest, PASS when p50 <= 20 ms at the largest
   size and <= 1.5x its figure at the smallest.

Run from the repository root (client and servers share the CPU):

    .venv/bin/python benchmarks/bench_reads.py [--sizes 1000,10000,100000] [--requests 50]
"""

from __future__ import annotations

import argparse
import math
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx

ADMIN_PASSWORD = "bench-admin-password"
USER_PASSWORD = "bench-user-password"
ENV = "benchenv"
TASKS = 200
DAYS = 10
RUNNING = 5
LOGGED_TASKS = 12
NEVER_DUE_CRON = "0 3 29 2 *"  # 29 February, 03:00: not due while the bench runs
BAR_MS = 20.0
BAR_RATIO = 1.5
PAGE = 500


# --- seeding -----------------------------------------------------------------------------------


@dataclass
class Seeded:
    size: int
    data_dir: str
    rows: int
    seconds: float
    busiest_task: int
    busiest_runs: int
    median_task: int
    median_runs: int
    busiest_latest_execution: str


def _zipf_weights(n: int) -> list[float]:
    return [1.0 / (rank + 1) for rank in range(n)]


def _log_text(execution_id: str, size: int) -> str:
    line = f"[{execution_id}] step done, value=0123456789abcdef\n"
    return line * max(1, size // len(line))


def seed(data_dir: str, size: int, rng: random.Random) -> Seeded:
    """Users, tasks and ``size`` executions written through the repository."""
    from ctm_adapters.files import LocalFileStore
    from ctm_adapters.passwords import Argon2PasswordHasher
    from ctm_adapters.sqlite import SqliteRepository
    from ctm_core.models import Execution, ExecutionStatus, Task, TaskStatus
    from ctm_core.schedule import next_cron_time
    from ctm_core.tasks import new_execution_id

    started = time.perf_counter()
    now = datetime.now(UTC)
    files = LocalFileStore(data_dir)
    hasher = Argon2PasswordHasher()
    repo = SqliteRepository(os.path.join(data_dir, "ctm.sqlite3"))
    try:
        admin = repo.add_user(
            username="admin",
            password_hash=hasher.hash(ADMIN_PASSWORD),
            is_admin=True,
            created_at=now - timedelta(days=DAYS + 5),
        )
        user = repo.add_user(
            username="bench-user",
            password_hash=hasher.hash(USER_PASSWORD),
            is_admin=False,
            created_at=now - timedelta(days=DAYS + 5),
        )
        tasks: list[Task] = []
        for i in range(TASKS):
            cron = NEVER_DUE_CRON if i % 3 == 0 else None
            tasks.append(
                repo.add_task(
                    Task(
                        id=0,
                        name=f"bench-task-{i:03d}",
                        owner_id=admin.id if i % 2 else user.id,
                        script_path=files.store_script(f"bench_task_{i:03d}.py", f"print({i})\n"),
                        script_stored=True,
                        conda_env=ENV,
                        requirements=None,
                        cron_expression=cron,
                        delay_seconds=None if cron else 0.0,
                        timeout_seconds=None,
                        status=TaskStatus.SCHEDULED,
                        created_at=now - timedelta(days=DAYS + 1),
                        next_run_at=next_cron_time(cron, now, UTC) if cron else None,
                    )
                )
            )
        # Task i has weight 1/(i+1) in a shuffled order: the busiest is not always task 1.
        order = list(range(TASKS))
        rng.shuffle(order)
        weights = [0.0] * TASKS
        for rank, index in enumerate(order):
            weights[index] = _zipf_weights(TASKS)[rank]
        owners = rng.choices(range(TASKS), weights, k=size)
        span = DAYS * 86400.0
        offsets = sorted(rng.uniform(0, span) for _ in range(size))
        runs = [0] * TASKS
        last_status: list[ExecutionStatus | None] = [None] * TASKS
        latest: list[Execution | None] = [None] * TASKS
        rows = 0
        for k, (index, offset) in enumerate(zip(owners, offsets, strict=True)):
            task = tasks[index]
            start = now - timedelta(seconds=span - offset)
            due = start - timedelta(seconds=rng.uniform(0.005, 0.2))
            roll = rng.random()
            if k >= size - RUNNING:
                status = ExecutionStatus.RUNNING
            elif roll < 0.05 and last_status[index] is not ExecutionStatus.SKIPPED:
                status = ExecutionStatus.SKIPPED
            elif roll < 0.07:
                status = ExecutionStatus.STOPPED
            elif roll < 0.17:
                status = ExecutionStatus.FAILED
            else:
                status = ExecutionStatus.COMPLETED
            execution = Execution(
                id=new_execution_id(),
                task_id=task.id,
                status=status,
                scheduled_for=due,
            )
            if status is ExecutionStatus.SKIPPED:
                execution.start_time = execution.end_time = start
                execution.skip_count = 1
                execution.first_skipped_at = execution.last_skipped_at = due
                execution.note = "skipped: the previous run was still going on"
                # The record the scheduler stores for a skip when the task's latest is not one.
                repo.add_execution(execution)
            else:
                execution.start_time = start
                if status is ExecutionStatus.RUNNING:
                    execution.pid = 4_000_000 + k  # no such process: nothing to adopt
                else:
                    duration = min(3600.0, rng.lognormvariate(1.0, 1.2))
                    execution.duration = round(duration, 2)
                    execution.end_time = min(now, start + timedelta(seconds=duration))
                    execution.exit_code = {
                        ExecutionStatus.COMPLETED: 0,
                        ExecutionStatus.FAILED: 1,
                        ExecutionStatus.STOPPED: -15,
                    }[status]
                    peak = rng.uniform(15.0, 600.0)
                    execution.peak_memory_mb = round(peak, 1)
                    execution.avg_memory_mb = round(peak * rng.uniform(0.4, 0.9), 1)
                task.status = TaskStatus(status.value)
                task.last_run_at = start
                task.last_run_duration = execution.duration
                task.last_execution_id = execution.id
                repo.add_execution(execution)
                latest[index] = execution
            runs[index] += 1
            last_status[index] = status
            rows += 1
        ranked = sorted(
            (i for i in range(TASKS) if latest[i] is not None), key=lambda i: runs[i], reverse=True
        )
        busiest, median = ranked[0], ranked[len(ranked) // 2]
        logged = {*ranked[:: max(1, len(ranked) // LOGGED_TASKS)][:LOGGED_TASKS], busiest, median}
        for index in logged:
            execution = latest[index]
            assert execution is not None
            execution.log_path = files.log_path(execution.id)
            with open(execution.log_path, "w", encoding="utf-8") as f:
                f.write(_log_text(execution.id, 64 * 1024 if index == busiest else 8 * 1024))
            repo.update_execution(execution)
        for task in tasks:  # once each, not once a row: what the runs would have left
            repo.update_task(task)
        busiest_latest = latest[busiest]
        assert busiest_latest is not None
    finally:
        repo.close()
    return Seeded(
        size=size,
        data_dir=data_dir,
        rows=rows,
        seconds=time.perf_counter() - started,
        busiest_task=tasks[busiest].id,
        busiest_runs=runs[busiest],
        median_task=tasks[median].id,
        median_runs=runs[median],
        busiest_latest_execution=busiest_latest.id,
    )


# --- servers -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server(data_dir: str, log_path: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A real ``ctm serve`` on a free loopback port, stopped with SIGTERM at the end."""
    port = free_port()
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
    argv = [
        sys.executable,
        "-m",
        "ctm_http.cli",
        "serve",
        "--port",
        str(port),
        "--data-dir",
        data_dir,
    ]
    base = f"http://127.0.0.1:{port}"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"ctm serve exited ({proc.returncode}); see {log_path}")
            try:
                httpx.get(base + "/openapi.json", timeout=2.0, trust_env=False)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"ctm serve did not start; see {log_path}") from None
                time.sleep(0.1)
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def rss_mb(pid: int) -> float:
    try:
        import psutil

        return float(psutil.Process(pid).memory_info().rss) / 2**20
    except Exception:  # noqa: BLE001 - a figure on the side, never a failure
        return float("nan")


# --- the routes --------------------------------------------------------------------------------


def get_routes() -> tuple[list[str], list[str]]:
    """The GET routes the app declares (paths with their parameters), and the mounts left out.
    ``create_app`` builds nothing before its lifespan, so no data directory is touched."""
    from starlette.routing import Mount, Route

    from ctm_adapters.settings import Settings
    from ctm_http.app import create_app

    app = create_app(Settings(data_dir=os.devnull))
    paths, skipped = [], []
    for route in app.routes:
        if isinstance(route, Route) and route.methods and "GET" in route.methods:
            if route.path not in paths:
                paths.append(route.path)
        elif isinstance(route, Mount):
            skipped.append(route.path)
    return paths, skipped


_PARAM = re.compile(r"\{(\w+)(?::\w+)?\}")


@dataclass(frozen=True)
class Probe:
    """One timed call: a label (the same at every size) and the URL at each size."""

    label: str
    urls: dict[int, str]
    paged: bool = False
    """Meant to be paged: its row of the page after says n/a when no cursor comes. Any other
    route's answer is searched for a cursor too, and gets that row only when one comes."""


def probes(paths: list[str], seeded: dict[int, Seeded]) -> tuple[list[Probe], list[str]]:
    out, untimed = [], []
    for path in paths:
        params = _PARAM.findall(path)
        if not params:
            paged = path == "/api/tasks/history"
            out.append(Probe(f"GET {path}", {n: path for n in seeded}, paged))
            continue
        if params == ["task_id"]:
            for which in ("busiest", "median"):
                urls = {
                    n: _PARAM.sub(str(getattr(s, f"{which}_task")), path) for n, s in seeded.items()
                }
                out.append(Probe(f"GET {_PARAM.sub(f'<{which}>', path)}", urls, True))
            continue
        if not set(params) <= {"name", "env_name", "task_id", "execution_id"}:
            untimed.append(f"{path} (unknown parameter)")
            continue
        urls = {n: _PARAM.sub(partial(_fill, s), path) for n, s in seeded.items()}
        label = _PARAM.sub(
            lambda m: "<busiest>" if m.group(1) == "task_id" else f"<{m.group(1)}>", path
        )
        out.append(Probe(f"GET {label}", urls, "task_id" in params))
    return out, untimed


def _fill(s: Seeded, match: re.Match[str]) -> str:
    name = match.group(1)
    if name == "task_id":
        return str(s.busiest_task)
    if name == "execution_id":
        return s.busiest_latest_execution
    return ENV


_CURSOR_KEYS = (
    "next_before",
    "next_cursor",
    "before",
    "cursor",
    "next",
    "next_page",
    "next_url",
    "next_link",
)


def find_cursor(response: httpx.Response) -> tuple[str, str] | None:
    """(where it was found, the cursor) from a ``Link: rel=next`` header or a JSON key."""
    link = response.headers.get("link", "")
    match = re.search(r"<([^>]+)>\s*;\s*rel=\"?next\"?", link)
    if match:
        before = parse_qs(urlsplit(match.group(1)).query).get("before")
        if before:
            return "Link header", before[0]
    try:
        body = response.json()
    except ValueError:
        return None
    containers: list[tuple[str, Any]] = [("", body)]
    if isinstance(body, dict):
        containers += [(f"{k}.", v) for k, v in body.items() if isinstance(v, dict)]
    for prefix, container in containers:
        if not isinstance(container, dict):
            continue
        # The known names first, then any ``<list>_next_before`` / ``<list>_cursor``.
        keys = [k for k in _CURSOR_KEYS if k in container] + [
            k for k in container if isinstance(k, str) and k.endswith(("_next_before", "_cursor"))
        ]
        for key in keys:
            value = container.get(key)
            if isinstance(value, str | int) and not isinstance(value, bool) and value != "":
                text = str(value)
                if "before=" in text:
                    text = parse_qs(urlsplit(text).query).get("before", [text])[0]
                return f"{prefix}{key}", text
    return None


# --- timing ------------------------------------------------------------------------------------


@dataclass
class Figures:
    times: list[float] = field(default_factory=list)
    size_bytes: int | None = None
    statuses: dict[int, int] = field(default_factory=dict)
    error: str | None = None
    note: str = ""

    @property
    def p50(self) -> float:
        return statistics.median(self.times) * 1e3 if self.times else math.nan

    @property
    def p99(self) -> float:
        if not self.times:
            return math.nan
        ordered = sorted(self.times)
        return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)] * 1e3


def timed_get(http: httpx.Client, url: str, figures: Figures, record: bool) -> httpx.Response:
    start = time.perf_counter()
    response = http.get(url)
    body = response.content
    elapsed = time.perf_counter() - start
    figures.statuses[response.status_code] = figures.statuses.get(response.status_code, 0) + 1
    if response.status_code != 200 and figures.error is None:
        figures.error = f"{response.status_code} {response.text[:200]}"
    if record:
        figures.times.append(elapsed)
        figures.size_bytes = len(body)
    return response


def measure(
    probe: Probe,
    clients: dict[int, httpx.Client],
    args: argparse.Namespace,
    results: dict[str, dict[int, Figures]],
) -> None:
    """The sizes interleaved call by call; the paged variant right after, the same way."""
    main = results.setdefault(probe.label, {n: Figures() for n in clients})
    first: dict[int, httpx.Response] = {}
    for _ in range(max(1, args.warmup)):  # the last warm-up's answer is searched for a cursor
        for n, http in clients.items():
            first[n] = timed_get(http, probe.urls[n], main[n], record=False)
    _loop(probe.urls, clients, args, main)
    label = f"{probe.label} ?limit={PAGE}&before=<cursor>"
    paged = results.setdefault(label, {n: Figures() for n in clients})
    urls: dict[int, str] = {}
    for n, response in first.items():
        found = find_cursor(response) if response.status_code == 200 else None
        if found is None:
            paged[n].note = "n/a"
            continue
        where, cursor = found
        paged[n].note = f"cursor from {where}"
        sep = "&" if "?" in probe.urls[n] else "?"
        urls[n] = f"{probe.urls[n]}{sep}{urlencode({'limit': PAGE, 'before': cursor})}"
    if not urls:
        if not probe.paged:
            del results[label]
        return
    some = {n: clients[n] for n in urls}
    for _ in range(args.warmup):
        for n, http in some.items():
            timed_get(http, urls[n], paged[n], record=False)
    _loop(urls, some, args, paged)


def _loop(
    urls: dict[int, str],
    clients: dict[int, httpx.Client],
    args: argparse.Namespace,
    figures: dict[int, Figures],
) -> None:
    """Round after round over the sizes; a size leaves the rounds once it has had 5 calls and
    its share of ``--route-budget``, so a slow size does not cut the fast ones short."""
    share = args.route_budget / len(clients)
    for i in range(args.requests):
        going = {n: http for n, http in clients.items() if i < 5 or sum(figures[n].times) <= share}
        if not going:
            break
        for n, http in going.items():
            timed_get(http, urls[n], figures[n], record=True)


# --- report ------------------------------------------------------------------------------------


def _ms(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.1f}"


def _bytes(value: int | None) -> str:
    return "n/a" if value is None else f"{value:,}"


def report(results: dict[str, dict[int, Figures]], sizes: list[int]) -> int:
    width = max(len(label) for label in results) + 2
    for n in sizes:
        print(f"\n{n:,} executions")
        print(f"{'route':{width}} {'calls':>5} {'p50 ms':>9} {'p99 ms':>9} {'bytes':>12}  status")
        for label, per_size in results.items():
            f = per_size[n]
            status = ", ".join(f"{code}x{count}" for code, count in sorted(f.statuses.items()))
            extra = "; ".join(part for part in (status, f.note) if part)
            print(
                f"{label:{width}} {len(f.times):5d} {_ms(f.p50):>9} {_ms(f.p99):>9} "
                f"{_bytes(f.size_bytes):>12}  {extra}"
            )
    lo, hi = sizes[0], sizes[-1]
    print(f"\nverdict: p50 <= {BAR_MS:g} ms at {hi:,} and <= {BAR_RATIO:g}x the {lo:,} figure")
    head = "".join(f" {f'p50 {n:,}':>12}" for n in sizes)
    print(f"{'route':{width}}{head} {f'{hi:,}/{lo:,}':>14} {f'bytes {hi:,}':>14}  verdict")
    failed = 0
    for label, per_size in results.items():
        p50s = [per_size[n].p50 for n in sizes]
        high = p50s[-1]
        # A paged call has no page 2 where there are fewer rows than a page: its smallest
        # figure is then at a larger size, which the verdict names.
        measured = [(n, v) for n, v in zip(sizes, p50s, strict=True) if not math.isnan(v)]
        if math.isnan(high):
            verdict, ratio = "n/a", math.nan
        else:
            base, low = measured[0]
            ratio = high / low if base != hi else math.nan
            errors = any(code != 200 for n in sizes for code in per_size[n].statuses)
            slow, grew = high > BAR_MS, not ratio <= BAR_RATIO and base != hi
            verdict = "FAIL" if slow or grew or errors else "PASS"
            notes = ["non-200 answers"] if errors else []
            if base != lo:
                notes.append(f"ratio vs {base:,}" if base != hi else "no smaller figure")
            elif grew and not slow and high < 5.0:
                notes.append("ratio only, under 5 ms: noise?")
            if notes:
                verdict += f" ({'; '.join(notes)})"
        failed += verdict.startswith("FAIL")
        cells = "".join(f" {_ms(v):>12}" for v in p50s)
        ratio_text = "n/a" if math.isnan(ratio) else f"{ratio:.2f}x"
        print(
            f"{label:{width}}{cells} {ratio_text:>14} "
            f"{_bytes(per_size[hi].size_bytes):>14}  {verdict}"
        )
    return failed


# --- main --------------------------------------------------------------------------------------


def _sizes(text: str) -> list[int]:
    sizes = sorted({int(part.replace("_", "")) for part in text.split(",") if part.strip()})
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError("sizes are whole numbers >= 1")
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument(
        "--sizes",
        type=_sizes,
        default=[1_000, 10_000, 100_000],
        help="executions per data directory, comma-separated",
    )
    parser.add_argument("--requests", type=int, default=50, help="timed calls per route and size")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls first")
    parser.add_argument(
        "--route-budget",
        type=float,
        default=20.0,
        help="seconds per route (all sizes) after which it stops, >= 5 calls",
    )
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--keep", action="store_true", help="keep the data directories")
    args = parser.parse_args(argv)
    sizes: list[int] = args.sizes

    paths, mounts = get_routes()
    tmp = tempfile.mkdtemp(prefix="ctm-reads-")
    import ctm_http

    code = os.path.dirname(os.path.dirname(os.path.abspath(ctm_http.__file__)))
    print(
        f"code {code}; temporary directory {tmp}; cpus {os.cpu_count()}; load average "
        f"{os.getloadavg()[0]:.2f}; GET routes: {', '.join(paths)}; not timed: "
        f"{', '.join(m + ' (static mount)' for m in mounts) or 'none'}",
        flush=True,
    )
    try:
        seeded: dict[int, Seeded] = {}
        for n in sizes:
            data_dir = os.path.join(tmp, f"data-{n}")
            s = seed(data_dir, n, random.Random(args.seed))
            seeded[n] = s
            print(
                f"seeded {n:,}: {s.rows:,} rows through the repository in {s.seconds:.1f} s "
                f"({s.seconds / s.rows * 1e6:.0f} us a row); busiest task {s.busiest_task} "
                f"({s.busiest_runs:,} rows), median task {s.median_task} "
                f"({s.median_runs:,} rows)",
                flush=True,
            )
        timed, untimed = probes(paths, seeded)
        if untimed:
            print(f"GET routes NOT timed: {', '.join(untimed)}")
        results: dict[str, dict[int, Figures]] = {}
        with ExitStack() as stack:
            clients: dict[int, httpx.Client] = {}
            procs: dict[int, subprocess.Popen[bytes]] = {}
            for n in sizes:
                start = time.perf_counter()
                base, proc = stack.enter_context(
                    server(seeded[n].data_dir, os.path.join(tmp, f"ctm-{n}.log"))
                )
                up = time.perf_counter() - start
                http = stack.enter_context(
                    httpx.Client(base_url=base, timeout=300.0, trust_env=False)
                )
                r = http.post("/login", json={"username": "admin", "password": ADMIN_PASSWORD})
                r.raise_for_status()
                start = time.perf_counter()
                r = http.post("/api/conda/environment", json={"name": ENV}, timeout=600.0)
                if r.status_code != 201:
                    print(f"  {n:,}: creating {ENV} answered {r.status_code} {r.text[:300]}")
                print(
                    f"server for {n:,} up in {up:.1f} s; {ENV} created in "
                    f"{time.perf_counter() - start:.1f} s",
                    flush=True,
                )
                clients[n], procs[n] = http, proc
            for probe in timed:
                start = time.perf_counter()
                measure(probe, clients, args, results)
                print(f"timed {probe.label} in {time.perf_counter() - start:.1f} s", flush=True)
            print(
                "\nserver RSS after timing: "
                + ", ".join(f"{n:,}: {rss_mb(p.pid):.0f} MB" for n, p in procs.items())
            )
        failed = report(results, sizes)
        for n in sizes:
            with open(os.path.join(tmp, f"ctm-{n}.log"), encoding="utf-8", errors="replace") as f:
                log = f.read()
            bad = [
                line
                for line in log.splitlines()
                if "Traceback" in line or " 500 " in line or "ERROR" in line
            ]
            if bad:
                print(f"server log {n:,}: {len(bad)} suspicious lines, first: {bad[0][:200]}")
        return 1 if failed else 0
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
