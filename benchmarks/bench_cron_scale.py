"""Many cron tasks at once: 1,000 tasks on ``* * * * *`` for some minutes.

The real core (scheduler loop on the system clock, SQLite file, the server's default supervised
runner with its fork server, optionally the bubblewrap sandbox), composed as
``bench_scheduling.py`` composes it. Every task's script is ``pass``; every minute all of them
are due at once. Printed: per minute, how many occurrences were fired, run and skipped (a task
still running at its next occurrence), and the lateness of the runs' starts (recorded start -
due, and "up": when the process existed), p50 / p99 / max; and first the floor: the same number
of bare ``python -c pass`` runs from as many threads as the limit.

    .venv/bin/python benchmarks/bench_cron_scale.py [--tasks 1000] [--minutes 5]
        [--limit 32] [--sandbox] [--in-process]

``--limit``: runs at once (``CTM_MAX_CONCURRENT_RUNS``; the server's default is the number of
cores).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from ctm_core.commands import NewTask

sys.path.insert(0, os.path.dirname(__file__))

from bench_scheduling import HostPython, Services, make_runner, pct, sandbox_setup  # noqa: E402


async def run(svc: Services, tasks: int, minutes: int) -> None:
    for _ in range(tasks):
        svc.tasks.create_task(
            svc.actor,
            NewTask.from_json(
                {"script": "pass", "conda_env": "env", "cron_expression": "* * * * *"}
            ),
        )
    # The tasks are due at the next minute; the loop sleeps until then, and stops just before
    # the minute after the last one measured.
    loop_task = asyncio.create_task(svc.sched.run())
    await asyncio.sleep(60 - time.time() % 60 + (minutes - 1) * 60 + 50)
    loop_task.cancel()
    await asyncio.to_thread(svc.coord.wait_idle, 120)


def report(svc: Services) -> None:
    by_minute: dict[datetime, dict[str, list[float] | int]] = {}
    for ex in svc.repo.execution_page(limit=10**7):
        if ex.scheduled_for is None:
            continue
        minute = ex.scheduled_for.replace(second=0, microsecond=0)
        row = by_minute.setdefault(minute, {"late": [], "up": [], "ran": 0, "skipped": 0})
        if ex.status.value == "skipped":
            row["skipped"] = int(row["skipped"]) + ex.skip_count
            continue
        row["ran"] = int(row["ran"]) + 1
        if ex.start_time is not None:
            late = row["late"]
            assert isinstance(late, list)
            late.append((ex.start_time - ex.scheduled_for).total_seconds())
            up = row["up"]
            assert isinstance(up, list)
            when = svc.runner.up.get(ex.log_path or "")
            if when is not None:
                up.append((when - ex.scheduled_for).total_seconds())
    all_late: list[float] = []
    all_up: list[float] = []
    skipped = 0
    print(f"  {'minute':<8} {'ran':>5} {'skipped':>8}   start late p50 / p99 / max   up p50 / p99")
    for minute in sorted(by_minute):
        row = by_minute[minute]
        late, up = row["late"], row["up"]
        assert isinstance(late, list) and isinstance(up, list)
        skipped += int(row["skipped"])
        all_late += late
        all_up += up
        if late:
            print(
                f"  {minute:%H:%M}    {row['ran']:>5} {row['skipped']:>8}   "
                f"{pct(late, 0.5):6.2f} / {pct(late, 0.99):6.2f} / {max(late):6.2f} s   "
                + (f"{pct(up, 0.5):6.2f} / {pct(up, 0.99):6.2f} s" if up else "n/a")
            )
    if all_late:
        print(
            f"  all: {len(all_late)} runs, {skipped} skipped; start lateness p50 "
            f"{pct(all_late, 0.5):.2f} s, p99 {pct(all_late, 0.99):.2f} s, "
            f"max {max(all_late):.2f} s"
            + (
                f"; up p50 {pct(all_up, 0.5):.2f} s, p99 {pct(all_up, 0.99):.2f} s"
                if all_up
                else ""
            )
        )


def floor(tasks: int, limit: int, python: str) -> None:
    """The same burst without ctm: ``tasks`` bare ``python -c pass`` runs from ``limit``
    threads at once (Popen and wait), lateness = when each Popen returned."""
    t0 = time.monotonic()
    starts: list[float] = []

    def one(_i: int) -> None:
        proc = subprocess.Popen([python, "-c", "pass"])
        starts.append(time.monotonic() - t0)
        proc.wait()

    with ThreadPoolExecutor(limit) as pool:
        list(pool.map(one, range(tasks)))
    print(
        f"  floor: {tasks} bare runs of python -c pass from {limit} threads: up p50 "
        f"{pct(starts, 0.5):.2f} s, p99 {pct(starts, 0.99):.2f} s, all ended after "
        f"{time.monotonic() - t0:.2f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--minutes", type=int, default=5)
    parser.add_argument("--limit", type=int, default=32)
    parser.add_argument("--sandbox", action="store_true", help="runs in the bubblewrap sandbox")
    parser.add_argument("--in-process", action="store_true", help="PsutilProcessRunner")
    parser.add_argument("--floor-only", action="store_true", help="only the bare-Popen floor")
    args = parser.parse_args()
    kind = "in-process" if args.in_process else "supervised"
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} cores, load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; {args.tasks} tasks on * * * * *, "
        f"{args.minutes} min, runner {kind}, limit {args.limit}, "
        f"sandbox {'on' if args.sandbox else 'off'}; started {datetime.now(UTC):%H:%M:%S} UTC"
    )
    floor(args.tasks, args.limit, sys.executable)
    if args.floor_only:
        return
    with tempfile.TemporaryDirectory(prefix="ctm-bench-cron-") as top:
        options = {}
        backend = HostPython()
        if args.sandbox:
            found = sandbox_setup(top)
            if found is None:
                raise SystemExit("no sandbox here")
            box, ids, backend = found
            options = {"sandbox": box, "identities": ids}
        svc = Services(Path(top), make_runner(kind, "bench-cron", **options), args.limit, backend)
        try:
            asyncio.run(run(svc, args.tasks, args.minutes))
            report(svc)
        finally:
            svc.close()
    print(f"  load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
