"""Listing environments: the conda adapter's conda-meta reads against one ``conda list`` per env.

Builds, in a temporary directory, a fake conda installation (tests/fakes/fake_conda.py) with
``--envs`` environments of ``--packages`` packages each (conda-meta records of realistic size:
files lists, paths_data). Then times:

1. ``CondaEnvironmentBackend.list_environments()``: every env with its packages, python version
   and creation time, read from conda-meta. "cold" clears the adapter's record cache first (a
   fresh server); "warm" is every later listing.
2. ``conda list -p PREFIX --json`` once per environment, through the fake conda, in real
   subprocesses: what an adapter that asked the tool would pay. The fake starts faster than real
   conda (about 0.34 s a call in shared/conda-cli-samples), so the figure is also extrapolated.

Run from the repository root:

    .venv/bin/python benchmarks/bench_conda_list.py [--envs 50] [--packages 100] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tests.fakes.fake_conda import install_fake_conda  # noqa: E402

import ctm_adapters.conda as conda_adapter  # noqa: E402
from ctm_adapters.conda import CondaEnvironmentBackend  # noqa: E402

REAL_CONDA_LIST_SECONDS = 0.34  # measured on the recording machine (shared/conda-cli-samples)


def record(name: str, version: str, files: int) -> dict[str, object]:
    paths = [f"lib/python3.11/site-packages/{name}/mod_{i}.py" for i in range(files)]
    return {
        "name": name,
        "version": version,
        "build": "pyh_0",
        "build_number": 0,
        "channel": "https://conda.anaconda.org/conda-forge/noarch",
        "subdir": "noarch",
        "fn": f"{name}-{version}-pyh_0.conda",
        "md5": "0" * 32,
        "sha256": "0" * 64,
        "url": f"https://conda.anaconda.org/conda-forge/noarch/{name}-{version}-pyh_0.conda",
        "depends": ["python >=3.8"],
        "constrains": [],
        "license": "MIT",
        "timestamp": 1795492658000,
        "size": 123456,
        "requested_spec": "",
        "files": paths,
        "paths_data": {
            "paths_version": 1,
            "paths": [
                {"_path": p, "path_type": "hardlink", "sha256": "0" * 64, "size_in_bytes": 1000}
                for p in paths
            ],
        },
        "link": {"source": f"/opt/conda/pkgs/{name}-{version}-pyh_0", "type": 1},
    }


def build(root: str, envs: int, packages: int) -> list[str]:
    prefixes = []
    for e in range(envs):
        prefix = os.path.join(root, "envs", f"env{e:03d}")
        meta = os.path.join(prefix, "conda-meta")
        os.makedirs(meta)
        records = [record("python", "3.11.7", 400)] + [
            record(f"pkg-{p:03d}", f"1.{p}.0", 30) for p in range(packages - 1)
        ]
        for r in records:
            with open(os.path.join(meta, f"{r['name']}-{r['version']}-pyh_0.json"), "w") as fh:
                json.dump(r, fh)
        with open(os.path.join(meta, "history"), "w") as fh:
            fh.write("==> 2026-01-01 00:00:00 <==\n# cmd: conda create\n")
        with open(os.path.join(meta, "created_at"), "w") as fh:
            fh.write(str(time.time()))
        prefixes.append(prefix)
    return prefixes


def timed(fn: Callable[[], object], rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", type=int, default=50)
    parser.add_argument("--packages", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ctm-bench-conda-") as tmp:
        root = os.path.join(tmp, "root")
        started = time.perf_counter()
        prefixes = build(root, args.envs, args.packages)
        exe = install_fake_conda(os.path.join(tmp, "bin"), "conda")
        extra = {"FAKE_CONDA_ROOT": root}
        backend = CondaEnvironmentBackend(exe, extra_env=extra)
        env = {**os.environ, **extra}
        print(
            f"fixture: {args.envs} envs x {args.packages} packages "
            f"built in {time.perf_counter() - started:.1f} s"
        )

        listed = backend.list_environments()
        assert len(listed) == args.envs
        assert all(len(e.packages) == args.packages for e in listed)

        def cold() -> object:
            conda_adapter._record_cache.clear()
            return backend.list_environments()

        cold_times = timed(cold, args.rounds)
        warm_times = timed(backend.list_environments, args.rounds)

        def cli() -> object:
            for prefix in prefixes:
                done = subprocess.run(
                    [exe, "list", "-p", prefix, "--json"],
                    env=env,
                    capture_output=True,
                    check=True,
                )
                assert len(json.loads(done.stdout)) == args.packages
            return None

        cli_times = timed(cli, max(1, min(args.rounds, 3)))

    cold_s, warm_s, cli_s = (statistics.median(t) for t in (cold_times, warm_times, cli_times))
    real_s = args.envs * REAL_CONDA_LIST_SECONDS
    print(f"adapter list_environments, cold (conda-meta reads): {cold_s * 1000:8.1f} ms")
    print(f"adapter list_environments, warm (record cache)    : {warm_s * 1000:8.1f} ms")
    print(f"{args.envs} x `conda list --json` via the fake conda  : {cli_s * 1000:8.1f} ms")
    print(f"ratio fake CLI / adapter: cold {cli_s / cold_s:6.1f}x, warm {cli_s / warm_s:6.1f}x")
    print(
        f"with real conda ({REAL_CONDA_LIST_SECONDS} s a call, recorded): ~{real_s:.1f} s, "
        f"ratio cold {real_s / cold_s:.0f}x, warm {real_s / warm_s:.0f}x"
    )


if __name__ == "__main__":
    main()
