"""Time the venv backend: pip against uv for creating and installing, and listing 50 envs.

Offline: the packages come from a folder of tiny wheels built here (PIP_NO_INDEX=1,
PIP_FIND_LINKS). uv is used when found on PATH or as the ``uv`` Python package; else its rows
say so. Run from the repository root:

    .venv/bin/python benchmarks/bench_venv_pip_vs_uv.py [--rounds 5] [--envs 50]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tests.integration.venv_fixtures import build_wheel_folder, find_uv  # noqa: E402

from ctm_adapters.venv import VenvEnvironmentBackend  # noqa: E402
from ctm_core.errors import PackageOperationFailed  # noqa: E402


def timed(fn: Callable[[], object], rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def show(label: str, times: list[float]) -> None:
    med = statistics.median(times)
    unit, scale = ("ms", 1000.0) if med < 1 else ("s", 1.0)
    print(
        f"  {label:<44} median {med * scale:8.2f} {unit}"
        f"   min {min(times) * scale:8.2f} {unit}   (n={len(times)})"
    )


def bench_tool(tool: str, uv: str | None, workdir: str, rounds: int) -> None:
    root = os.path.join(workdir, f"envs-{tool}")
    if tool == "uv":
        backend = VenvEnvironmentBackend(root, uv_executable=uv)
    else:
        backend = VenvEnvironmentBackend(root, use_uv=False)
    print(f"\n{tool}: {uv if tool == 'uv' else 'the environment’s own pip'}")
    counter = iter(range(10_000))
    show(
        "create (venv + pip, no packages)",
        timed(lambda: backend.create(f"c{next(counter)}", None, []), max(2, rounds // 2)),
    )
    backend.create("bench", None, [])
    versions = iter(["1.0", "2.0"] * rounds)
    show(
        "install tiny-pkg (alternating 1.0 / 2.0)",
        timed(lambda: backend.install("bench", [f"tiny-pkg=={next(versions)}"]), rounds),
    )
    show(
        "install already satisfied (no-op)",
        timed(lambda: backend.install("bench", ["tiny-pkg"]), rounds),
    )

    def not_found() -> None:
        try:
            backend.install("bench", ["no-such-package"])
        except PackageOperationFailed:
            return
        raise AssertionError("expected a failure")

    show("install not found (failure parsed)", timed(not_found, rounds))

    def remove_and_reinstall() -> None:
        backend.remove("bench", ["tiny-pkg"])
        backend.install("bench", ["tiny-pkg==1.0"])

    show("remove + install again", timed(remove_and_reinstall, rounds))


def bench_listing(workdir: str, count: int, rounds: int) -> None:
    root = os.path.join(workdir, "envs-list")
    backend = VenvEnvironmentBackend(root, use_uv=False)
    template = backend.create("env000", None, ["tiny-pkg==1.0", "needs-old"])
    for i in range(1, count):
        # Listing reads files only, so plain copies are fine here (not a rename).
        shutil.copytree(template.prefix, os.path.join(root, f"env{i:03d}"), symlinks=True)
    envs = backend.list_environments()
    assert len(envs) == count, len(envs)
    packages = sum(len(e.packages) for e in envs)
    print(f"\nreads over {count} environments ({packages} packages in all)")
    show(f"list_environments() of {count}", timed(backend.list_environments, rounds * 4))
    show("get_environment() of one", timed(lambda: backend.get_environment("env007"), rounds * 4))

    def cold_usage() -> None:
        VenvEnvironmentBackend(root, use_uv=False).disk_usage()

    show("disk_usage() cold (walks every file)", timed(cold_usage, rounds))
    backend.disk_usage()
    show("disk_usage() cached", timed(backend.disk_usage, rounds * 4))
    pip_list = [template.prefix + "/bin/python", "-m", "pip", "list", "--disable-pip-version-check"]
    one = timed(lambda: subprocess.run(pip_list, capture_output=True, check=True), 3)
    print(
        f"  for scale: one `pip list` takes {statistics.median(one) * 1000:.0f} ms, "
        f"so {count} of them ~{statistics.median(one) * count:.1f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--envs", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ctm-bench-venv-") as workdir:
        wheels = build_wheel_folder(os.path.join(workdir, "wheels"))
        os.environ.update(
            PIP_NO_INDEX="1",
            PIP_FIND_LINKS=wheels,
            PIP_CONFIG_FILE=os.devnull,
            UV_CACHE_DIR=os.path.join(workdir, "uv-cache"),
        )
        print(f"python {sys.version.split()[0]} on {os.cpu_count()} cpu(s); offline wheels only")
        uv = find_uv()
        bench_tool("pip", None, workdir, args.rounds)
        if uv is None:
            print("\nuv: not installed (pip install uv, or put uv on PATH, to compare)")
        else:
            version = subprocess.run([uv, "--version"], capture_output=True, text=True).stdout
            print(f"\n({version.strip()})", end="")
            bench_tool("uv", uv, workdir, args.rounds)
        bench_listing(workdir, args.envs, args.rounds)


if __name__ == "__main__":
    main()
