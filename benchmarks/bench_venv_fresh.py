"""A fresh ``pip install`` of ctm creates venv environments with uv: its create time against pip's.

1. A new venv in a temporary folder and ``pip install`` of this project into it: not editable,
   no extras, from a copy of ``pyproject.toml``, ``README.md`` and ``src/`` (so the build writes
   nothing into the work tree). Its dependencies come from the configured package index.
2. With that venv's python, in a child whose PATH holds neither that venv's ``bin`` nor any uv
   and which cannot see this checkout: ``VenvEnvironmentBackend`` built as the server builds it
   (it must find the uv that came with ctm by itself) and one with ``use_uv=False`` (pip);
   ``--rounds`` empty environments each, interleaved pip / uv, in a fresh uv cache.

Done when the uv create takes at most 0.2x the pip create (medians of the same run).

    .venv/bin/python benchmarks/bench_venv_fresh.py [--rounds 5] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import json, os, sys, time
import ctm_adapters
from ctm_adapters.venv import VenvEnvironmentBackend

rounds, work = int(sys.argv[1]), sys.argv[2]
served = VenvEnvironmentBackend(os.path.join(work, "envs-default"))
pip = VenvEnvironmentBackend(os.path.join(work, "envs-pip"), use_uv=False)
times = {"pip": [], "default": []}
for i in range(rounds):
    for label, backend in (("pip", pip), ("default", served)):
        start = time.perf_counter()
        env = backend.create(f"e{i}", None, [])
        times[label].append(time.perf_counter() - start)
        names = {p.name.lower() for p in env.packages}
        assert "pip" in names, (label, env.packages)
print(json.dumps({
    "ctm_from": os.path.dirname(ctm_adapters.__file__),
    "uv": served.uv,
    "tool": served.tool,
    "times": times,
}))
"""


def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=True, text=True, capture_output=True, **kwargs)


def copy_project(target: str) -> str:
    """pyproject.toml, README.md and src/ (no caches, no egg-info) into ``target``."""
    os.makedirs(target)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(os.path.join(ROOT, name), target)
    shutil.copytree(
        os.path.join(ROOT, "src"),
        os.path.join(target, "src"),
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc"),
    )
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="environments made per installer")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="ctm-bench-fresh-")
    try:
        fresh = os.path.join(work, "fresh")
        python = os.path.join(fresh, "bin", "python")
        t0 = time.perf_counter()
        run([sys.executable, "-m", "venv", fresh])
        source = copy_project(os.path.join(work, "project"))
        t1 = time.perf_counter()
        run([python, "-m", "pip", "install", "--disable-pip-version-check", "-q", source])
        t2 = time.perf_counter()
        listed = run([python, "-m", "pip", "list", "--format=json"]).stdout
        versions = {p["name"].lower(): p["version"] for p in json.loads(listed)}
        print(
            f"python {sys.version.split()[0]} on {os.cpu_count()} cpu(s); load average "
            f"{os.getloadavg()[0]:.2f}\nfresh venv {t1 - t0:.1f} s, `pip install <copy of "
            f"{ROOT}>` {t2 - t1:.1f} s: ctm {versions.get('ctm')}, uv {versions.get('uv')}"
        )
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("CTM_", "PYTHON", "VIRTUAL_ENV", "UV_"))
        }
        env["PATH"] = os.pathsep.join(
            d for d in ("/usr/local/bin", "/usr/bin", "/bin") if not os.path.exists(f"{d}/uv")
        )
        env["UV_CACHE_DIR"] = os.path.join(work, "uv-cache")
        child = run(
            [python, "-I", "-c", CHILD, str(args.rounds), work], env=env, cwd=work, timeout=1800
        )
        result = json.loads(child.stdout.strip().splitlines()[-1])
        print(f"ctm imported from {result['ctm_from']}")
        print(f"the backend as the server builds it uses: {result['tool']}")
        print(f"child PATH (no uv on it): {env['PATH']}\n")
        medians = {}
        for label, name in (("pip", "pip (use_uv=False)"), ("default", "default (uv)")):
            times = result["times"][label]
            medians[label] = statistics.median(times)
            shown = " ".join(f"{t:.2f}" for t in times)
            print(
                f"  create, {name:<20} median {medians[label]:6.2f} s   "
                f"min {min(times):6.2f} s   each: {shown}"
            )
        ratio = medians["default"] / medians["pip"]
        verdict = "met" if result["uv"] and ratio <= 0.2 else "NOT met"
        print(f"\nratio default/pip (medians): {ratio:.3f}  (bar: <= 0.2, {verdict})")
        return 0 if verdict == "met" else 1
    except subprocess.CalledProcessError as exc:
        print(f"failed: {exc.cmd}\n{exc.stdout}\n{exc.stderr}", file=sys.stderr)
        return 2
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
