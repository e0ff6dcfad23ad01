"""What the bubblewrap sandbox adds to a run's start: the same runner with and without it.

For each runner (in-process ``PsutilProcessRunner`` and the server's default
``SupervisedProcessRunner``) it starts ``--runs`` runs of a venv's ``python -c print``, one
uncontained and one contained in turn (interleaved, so machine noise hits both alike), and
measures from the ``start`` call to the child's first line in the log file. Prints p50/p99 of
each, their ratio and the difference at p50 (the issue's bar: at most 15 ms at p50).

Run: .venv/bin/python benchmarks/bench_sandbox.py [--runs 100]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

from ctm_adapters._sandbox import Identities, Sandbox
from ctm_adapters.process import PsutilProcessRunner
from ctm_adapters.supervised import SupervisedProcessRunner
from ctm_core.ports import RunLimits, RunSpec

CHILD = "print('ready', flush=True)"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def first_line_latency(runner: Any, spec: RunSpec) -> float:
    t0 = time.monotonic()
    handle = runner.start(spec)
    with open(spec.log_path, "rb") as f:
        while not f.read().endswith(b"\n"):
            f.seek(0)
            time.sleep(0.0002)
    elapsed = time.monotonic() - t0
    runner.wait(handle)
    return elapsed


def spec_for(work: str, venv: str, i: int, tag: str) -> RunSpec:
    cwd = os.path.join(work, "runs", f"{tag}-{i}")
    os.makedirs(cwd)
    return RunSpec(
        argv=(os.path.join(venv, "bin", "python"), "-c", CHILD),
        cwd=cwd,
        log_path=os.path.join(work, "logs", f"{tag}-{i}.log"),
        env_add={},
        owner="bench",
        owner_id=1,
        prefix=venv,
        limits=RunLimits(memory_mb=2048, max_processes=256),
    )


def compare(name: str, plain: Any, boxed: Any, runs: int, work: str, venv: str) -> None:
    bare, contained = [], []
    try:
        for i in range(3):  # warm caches
            first_line_latency(plain, spec_for(work, venv, i, f"{name}-warm-p"))
            first_line_latency(boxed, spec_for(work, venv, i, f"{name}-warm-b"))
        for i in range(runs):
            bare.append(first_line_latency(plain, spec_for(work, venv, i, f"{name}-p")))
            contained.append(first_line_latency(boxed, spec_for(work, venv, i, f"{name}-b")))
    finally:
        plain.close()
        boxed.close()
    b50, b99 = pct(bare, 0.5) * 1000, pct(bare, 0.99) * 1000
    c50, c99 = pct(contained, 0.5) * 1000, pct(contained, 0.99) * 1000
    print(f"{name}")
    print(f"  uncontained  p50 {b50:7.2f} ms   p99 {b99:7.2f} ms")
    print(f"  sandboxed    p50 {c50:7.2f} ms   p99 {c99:7.2f} ms")
    print(
        f"  ratio sandboxed/uncontained: p50 {c50 / b50:.2f}x, p99 {c99 / b99:.2f}x; "
        f"added at p50 {c50 - b50:+.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ctm-bench-sandbox-") as work:
        os.chmod(work, 0o755)
        venv = os.path.join(work, "env")
        python = "/usr/bin/python3" if os.geteuid() == 0 else sys.executable
        subprocess.run([python, "-m", "venv", "--without-pip", venv], check=True)
        for d in ("runs", "logs"):
            os.makedirs(os.path.join(work, d))
        box = Sandbox.find(hidden=(os.path.join(work, "logs"),))
        if box is None:
            raise SystemExit("bubblewrap (bwrap) is not installed")
        ids = Identities(homes_dir=os.path.join(work, "homes"))
        print(
            f"python {sys.version.split()[0]}, {os.cpu_count()} cores, uid {os.geteuid()}, "
            f"venv from {python}, {args.runs} runs each, interleaved"
        )
        compare(
            "in-process runner",
            PsutilProcessRunner(identities=ids),
            PsutilProcessRunner(identities=ids, sandbox=box),
            args.runs,
            work,
            venv,
        )
        compare(
            "supervised runner (the server's default)",
            SupervisedProcessRunner(instance_id="bench-plain", identities=ids),
            SupervisedProcessRunner(instance_id="bench-box", identities=ids, sandbox=box),
            args.runs,
            work,
            venv,
        )


if __name__ == "__main__":
    main()
