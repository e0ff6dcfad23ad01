"""What PsutilProcessRunner costs: start latency and the CPU of memory monitoring.

1. Start latency: from the call that starts a run to its first output line, through the runner
   (line visible in the log file) and through a bare ``subprocess.Popen`` of the same interpreter
   (line read from its pipe); p50 and p95 over ``--runs`` runs each, and their ratio. The child
   also prints ``time.monotonic()`` (one clock for all processes), which splits each figure into
   "the program reached its first line" and "the line reached the reader".
   The supervised runner (the server's default) is measured twice: supervisors forked from its
   fork server, and (``fork_server=False``) a new supervisor interpreter per run; for each, and
   for the bare Popen, the CPU time per run of the processes it started (programs and
   supervisors, not this process).
2. Monitoring cost: N tasks sleeping, sampled every 0.5 s; this process's own CPU time (every
   thread: monitor, output readers, waiters) over ``--seconds``, less an idle baseline, as a
   percentage of one core, in total and per task.

Run: .venv/bin/python benchmarks/bench_run_start.py [--runs 50] [--seconds 10] [--tasks 10 50]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

from ctm_adapters._proctree import scan
from ctm_adapters.process import PsutilProcessRunner
from ctm_adapters.supervised import SupervisedProcessRunner
from ctm_core.ports import RunSpec

CHILD = "import time; print(time.monotonic(), flush=True)"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def show(name: str, values: list[float]) -> None:
    p50, p95 = pct(values, 0.5) * 1000, pct(values, 0.95) * 1000
    print(f"  {name:<42} p50 {p50:7.2f} ms   p95 {p95:7.2f} ms")


def bench_bare(runs: int) -> tuple[list[float], list[float]]:
    total, child = [], []
    for _ in range(runs):
        t0 = time.monotonic()
        p = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE)
        assert p.stdout is not None
        line = p.stdout.readline()
        t1 = time.monotonic()
        p.wait()
        p.stdout.close()
        total.append(t1 - t0)
        child.append(float(line) - t0)
    return total, child


def bench_runner(
    runs: int, workdir: str, runner: Any = None
) -> tuple[list[float], list[float], list[float]]:
    runner = runner or PsutilProcessRunner()
    total, child, call = [], [], []
    try:
        for i in range(runs):
            log_path = os.path.join(workdir, f"start-{i}.log")
            spec = RunSpec(
                argv=(sys.executable, "-c", CHILD), cwd=workdir, log_path=log_path, env_add={}
            )
            t0 = time.monotonic()
            handle = runner.start(spec)
            t_call = time.monotonic()
            with open(log_path, "rb") as f:
                while True:
                    data = f.read()
                    if data.endswith(b"\n"):
                        break
                    f.seek(0)
                    time.sleep(0.0002)
            t1 = time.monotonic()
            runner.wait(handle)
            total.append(t1 - t0)
            child.append(float(data) - t0)
            call.append(t_call - t0)
    finally:
        runner.close()
    return total, child, call


def children_cpu() -> float:
    """CPU seconds of this process's reaped children (and theirs)."""
    t = os.times()
    return t.children_user + t.children_system


def bench_supervised(
    runs: int, workdir: str, fork_server: bool
) -> tuple[list[float], list[float], list[float], float]:
    """``bench_runner`` with a supervised runner, and the CPU seconds per run of every process
    it started (supervisors, programs, the fork server's own start: all reaped by the end)."""
    before = children_cpu()
    runner = SupervisedProcessRunner(instance_id="bench", fork_server=fork_server)
    total, child, call = bench_runner(runs, workdir, runner)  # close() reaps the fork server
    return total, child, call, (children_cpu() - before) / runs


def cpu_over(seconds: float) -> float:
    """Fraction of one core this process used over ``seconds`` of wall time."""
    c0, t0 = time.process_time(), time.monotonic()
    time.sleep(seconds)
    return (time.process_time() - c0) / (time.monotonic() - t0)


def bench_monitoring(tasks: int, seconds: float, workdir: str) -> float:
    runner = PsutilProcessRunner(sample_interval=0.5)
    sleep = shutil.which("sleep") or "/bin/sleep"
    handles = []
    try:
        for i in range(tasks):
            spec = RunSpec(
                argv=(sleep, "3600"),
                cwd=workdir,
                log_path=os.path.join(workdir, f"sleep-{i}.log"),
                env_add={},
            )
            handles.append(runner.start(spec))
        time.sleep(1.0)  # let start-up settle before measuring
        used = cpu_over(seconds)
    finally:
        for handle in handles:
            runner.stop(handle, 1.0)
        runner.close()
    return used


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--tasks", type=int, nargs="+", default=[10, 50])
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, {len(scan())} processes")

    with tempfile.TemporaryDirectory() as workdir:
        print(f"\nStart latency over {args.runs} runs each (child: python -c print)")
        bench_bare(5)  # warm the page cache
        bare_total, bare_child = bench_bare(args.runs)
        run_total, run_child, run_call = bench_runner(args.runs, workdir)
        show("bare Popen: first line read from pipe", bare_total)
        show("bare Popen: child reached its first line", bare_child)
        show("runner: first line in the log file", run_total)
        show("runner: child reached its first line", run_child)
        show("runner: start() returned", run_call)
        print(
            f"  ratio runner/bare (first line delivered): p50 "
            f"{pct(run_total, 0.5) / pct(bare_total, 0.5):.2f}x, "
            f"p95 {pct(run_total, 0.95) / pct(bare_total, 0.95):.2f}x"
        )
        # What the server uses: a supervisor process per run, so runs survive a restart;
        # forked from the runner's fork server, or a new interpreter each (fork_server=False).
        c0 = children_cpu()
        bench_bare(args.runs)
        bare_cpu = (children_cpu() - c0) / args.runs
        print(f"  bare Popen: CPU per run (the program){'':<14} {bare_cpu * 1000:7.2f} ms")
        for fork_server, name in ((True, "fork server"), (False, "interpreter")):
            sup_total, sup_child, sup_call, cpu = bench_supervised(args.runs, workdir, fork_server)
            print(f"  supervised runner, supervisor from: {name}")
            show("  first line in the log", sup_total)
            show("  child's first line", sup_child)
            show("  start() returned", sup_call)
            print(
                f"    CPU per run (supervisor + program): {cpu * 1000:7.2f} ms, "
                f"{(cpu - bare_cpu) * 1000:+.2f} ms over the bare program"
            )
            print(
                f"    ratio supervised/bare (first line delivered): p50 "
                f"{pct(sup_total, 0.5) / pct(bare_total, 0.5):.2f}x, "
                f"p95 {pct(sup_total, 0.95) / pct(bare_total, 0.95):.2f}x"
            )

        t0 = time.perf_counter()
        for _ in range(20):
            scan()
        print(f"\nOne /proc scan of the machine: {(time.perf_counter() - t0) / 20 * 1000:.2f} ms")

        print(f"\nMonitoring CPU, 0.5 s sampling, over {args.seconds:g} s")
        idle = cpu_over(min(args.seconds, 3.0))
        print(f"  idle baseline (no runs): {idle * 100:.3f} % of one core")
        for n in args.tasks:
            used = bench_monitoring(n, args.seconds, workdir)
            net = max(0.0, used - idle)
            print(
                f"  {n:3d} sleeping tasks: {used * 100:.3f} % of one core in total, "
                f"{net / n * 100:.4f} % per task"
            )


if __name__ == "__main__":
    main()
