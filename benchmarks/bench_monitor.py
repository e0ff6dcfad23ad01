"""CPU of following and sampling running tasks, per run, at the default 0.5 s sampling.

``--runs`` sleeping runs (``sleep 3600``: the program itself uses no CPU) are started with each
runner, followed as the server follows them (one thread per run in ``runner.wait``), and over
``--seconds`` the CPU time is read from the kernel:

* ``SupervisedProcessRunner`` (the server's default): every run's supervisor process
  (user + system, from ``/proc/<pid>/stat``; per thread too: main loop, output copier, waiter,
  memory monitor, in the order the supervisor starts them), plus this process (the server's
  side: its waiting threads), less this process's idle baseline.
* ``PsutilProcessRunner`` (in-process runs): this process, and its ``ctm-run-monitor`` thread.

Each figure is a percentage of one core; "per run" divides by ``--runs``. The bar (issue 11) is
under 1 % of a core per run with 50 runs going.

The cost of one monitoring tick (one memory sample of every run) is printed too, as CPU
milliseconds of the monitor thread(s) per tick (``--seconds`` / ``--interval`` ticks): for the
supervised runner summed over the N supervisors' monitor threads (each samples its one run) and
per run; for the in-process runner the one monitor thread that samples all N runs. CPU times are
read from ``/proc/<pid>/task/<tid>/schedstat`` (nanoseconds) where the kernel has it, else from
``stat`` (clock ticks).

    .venv/bin/python benchmarks/bench_monitor.py [--runs 50] [--seconds 20] [--interval 0.5]
        [--only supervised|in-process]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import psutil  # type: ignore[import-untyped,unused-ignore]

from ctm_adapters.process import PsutilProcessRunner
from ctm_adapters.supervised import SupervisedProcessRunner
from ctm_core.ports import RunSpec

TICKS = os.sysconf("SC_CLK_TCK")
NS = 1e9
"""Counters are CPU nanoseconds (schedstat), or clock ticks scaled to nanoseconds."""
SUPERVISOR_THREADS = ("main loop", "output copier", "waiter", "memory monitor")


def ticks(path: str, *, precise: bool = True) -> float:
    """CPU time of ``path`` (``/proc/<pid>/task/<tid>``, or ``/proc/<pid>``: every thread's,
    those ended included) in nanoseconds: the first field of a thread's ``schedstat`` when
    ``precise``, else utime + stime of its ``stat`` (0 when gone)."""
    if precise:
        try:
            with open(f"{path}/schedstat", "rb") as f:
                return float(f.read().split()[0])
        except (OSError, IndexError, ValueError):
            pass
    try:
        with open(f"{path}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return 0.0
    fields = data[data.rfind(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS * NS


def thread_ticks(pid: int) -> dict[int, float]:
    """CPU nanoseconds of each thread of ``pid``, by thread id."""
    try:
        tids = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return {}
    return {tid: ticks(f"/proc/{pid}/task/{tid}") for tid in tids}


def named_thread(name: str) -> int | None:
    """The kernel thread id of this process's Python thread ``name``."""
    for thread in threading.enumerate():
        if thread.name == name:
            return thread.native_id
    return None


def pct(ns_used: float, seconds: float) -> float:
    return ns_used / NS / seconds * 100


def ms_per_tick(percent: float, interval: float) -> float:
    """A share of one core (%) as CPU milliseconds per monitoring tick of ``interval`` s."""
    return percent / 100 * interval * 1000


def start_runs(runner: Any, count: int, workdir: str, tag: str) -> list[Any]:
    sleep = shutil.which("sleep") or "/bin/sleep"
    handles = []
    for i in range(count):
        spec = RunSpec(
            argv=(sleep, "3600"),
            cwd=workdir,
            log_path=os.path.join(workdir, f"{tag}-{i}.log"),
            env_add={},
        )
        handles.append(runner.start(spec))
    for handle in handles:  # as the server does: one thread per run waits for its end
        threading.Thread(target=runner.wait, args=(handle,), daemon=True).start()
    return handles


def stop_runs(runner: Any, handles: list[Any]) -> None:
    threads = [threading.Thread(target=runner.stop, args=(h, 1.0)) for h in handles]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    runner.close()


def measure(seconds: float, read: Callable[[], dict[str, float]]) -> dict[str, float]:
    """Differences of ``read()``'s counters over ``seconds`` of wall time, as % of one core."""
    before, t0 = read(), time.monotonic()
    time.sleep(seconds)
    after, elapsed = read(), time.monotonic() - t0
    return {key: pct(after[key] - before.get(key, 0), elapsed) for key in after}


def own_ticks() -> float:
    return ticks(f"/proc/{os.getpid()}", precise=False)  # a process's schedstat: one thread


def bench_supervised(
    count: int, seconds: float, workdir: str, idle: float, interval: float
) -> None:
    runner = SupervisedProcessRunner(instance_id="bench-monitor", sample_interval=interval)
    handles = start_runs(runner, count, workdir, "sup")
    try:
        supervisors = [h.supervisor_pid for h in handles]
        time.sleep(2.0)  # start-up settled, first samples taken

        def read() -> dict[str, float]:
            counters: dict[str, float] = {"server": own_ticks()}
            for pid in supervisors:
                per_thread = list(thread_ticks(pid).values())
                counters[f"sup{pid}"] = sum(per_thread)
                if len(per_thread) == len(SUPERVISOR_THREADS):
                    for name, value in zip(SUPERVISOR_THREADS, per_thread, strict=True):
                        counters[name] = counters.get(name, 0) + value
            return counters

        used = measure(seconds, read)
        procs = len(psutil.pids())
    finally:
        stop_runs(runner, handles)
    sup_total = sum(v for k, v in used.items() if k.startswith("sup"))
    server = max(0.0, used["server"] - idle)
    print(
        f"\nSupervisedProcessRunner, {count} sleeping runs, {seconds:g} s "
        f"({procs} processes on the machine):"
    )
    print(f"  supervisors, all {count}:      {sup_total:7.2f} % of a core")
    for name in SUPERVISOR_THREADS:
        if name in used:
            print(
                f"    of which {name:<16} {used[name]:7.2f} %  ({used[name] / count:.3f} % per run)"
            )
    print(f"  server side (waiting threads): {server:7.2f} % of a core (less idle {idle:.2f} %)")
    total = sup_total + server
    verdict = "under" if total / count < 1.0 else "OVER"
    print(f"  per run: {total / count:.3f} % of one core ({verdict} the 1 % bar)")
    if "memory monitor" in used:
        tick = ms_per_tick(used["memory monitor"], interval)
        print(
            f"  monitor tick ({interval:g} s): {tick:.3f} ms CPU for {count} runs "
            f"= {tick / count * 1000:.1f} us per run per tick (memory monitor threads)"
        )
    print(
        f"  everything per tick: {ms_per_tick(total, interval) / count * 1000:.1f} us per run "
        "(supervisors + server side)"
    )


def bench_in_process(
    count: int, seconds: float, workdir: str, idle: float, interval: float
) -> None:
    runner = PsutilProcessRunner(sample_interval=interval)
    handles = start_runs(runner, count, workdir, "inproc")
    try:
        time.sleep(2.0)
        monitor = named_thread("ctm-run-monitor")

        def read() -> dict[str, float]:
            counters = {"process": own_ticks()}
            if monitor is not None:
                counters["monitor"] = ticks(f"/proc/{os.getpid()}/task/{monitor}")
            return counters

        used = measure(seconds, read)
        procs = len(psutil.pids())
    finally:
        stop_runs(runner, handles)
    total = max(0.0, used["process"] - idle)
    print(
        f"\nPsutilProcessRunner (in-process), {count} sleeping runs, {seconds:g} s "
        f"({procs} processes on the machine):"
    )
    print(f"  this process, less idle:  {total:7.2f} % of a core")
    if "monitor" in used:
        print(f"    of which the monitor thread {used['monitor']:7.2f} %")
    verdict = "under" if total / count < 1.0 else "OVER"
    print(f"  per run: {total / count:.3f} % of one core ({verdict} the 1 % bar)")
    if "monitor" in used:
        tick = ms_per_tick(used["monitor"], interval)
        print(
            f"  monitor tick ({interval:g} s): {tick:.3f} ms CPU for {count} runs "
            f"= {tick / count * 1000:.1f} us per run per tick (one scan of the machine)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--interval", type=float, default=0.5, help="sample_interval")
    parser.add_argument("--only", choices=("supervised", "in-process"))
    args = parser.parse_args()
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} cores, {len(psutil.pids())} processes, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    with tempfile.TemporaryDirectory(prefix="ctm-bench-monitor-") as workdir:
        idle = measure(min(args.seconds, 5.0), lambda: {"p": own_ticks()})["p"]
        print(f"idle baseline of this process: {idle:.3f} % of a core")
        if args.only != "in-process":
            bench_supervised(args.runs, args.seconds, workdir, idle, args.interval)
        if args.only != "supervised":
            bench_in_process(args.runs, args.seconds, workdir, idle, args.interval)


if __name__ == "__main__":
    main()
