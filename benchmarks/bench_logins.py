"""Logins under load (issue 15): parallel password checks, and other users' requests meanwhile.

Against a real ``ctm serve`` (argon2id, the production hasher) on a free loopback port:

1. ``--parallel`` logins one after another, then the same number at once, interleaved round
   by round: the ratio of the two wall times (``1 / cores`` is ideal; the issue's finding,
   one check at a time server-wide, is 1.0);
2. another user's ``GET /api/me`` latency while ``--storm`` logins run at once, against the same
   with no logins (interleaved runs);
3. how many sessions the storming user has afterwards (the cap, ``CTM_MAX_SESSIONS_PER_USER``).

    .venv/bin/python benchmarks/bench_logins.py [--parallel 20] [--storm 60] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_reads import ADMIN_PASSWORD, server  # noqa: E402

USER_PASSWORD = "bench-user-password"


async def login(c: httpx.AsyncClient, name: str, password: str) -> float:
    start = time.perf_counter()
    r = await c.post("/login", json={"username": name, "password": password})
    took = time.perf_counter() - start
    r.raise_for_status()
    return took


def pool(base: str, connections: int) -> httpx.AsyncClient:
    """One client, its connections opened once (a client per login would spend the cores
    this measures on TLS contexts and handshakes of its own)."""
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(base_url=base, trust_env=False, timeout=120, limits=limits)


async def parallel_logins(c: httpx.AsyncClient, n: int) -> float:
    start = time.perf_counter()
    await asyncio.gather(*(login(c, "storm", USER_PASSWORD) for _ in range(n)))
    return time.perf_counter() - start


async def me_latencies(base: str, probe: httpx.AsyncClient, seconds: float) -> list[float]:
    out = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        (await probe.get("/api/me")).raise_for_status()
        out.append(time.perf_counter() - start)
        await asyncio.sleep(0.01)
    return out


async def storm_phase(
    stormer: httpx.AsyncClient, probe: httpx.AsyncClient, storm: int
) -> tuple[list[float], float]:
    """/api/me latencies while ``storm`` logins run; and how long the storm took."""
    task = asyncio.create_task(parallel_logins(stormer, storm))
    samples: list[float] = []
    while not task.done():
        start = time.perf_counter()
        (await probe.get("/api/me")).raise_for_status()
        samples.append(time.perf_counter() - start)
        await asyncio.sleep(0.01)
    return samples, await task


def ms(values: list[float], q: float) -> float:
    values = sorted(values)
    return 1000 * values[min(len(values) - 1, int(q * len(values)))]


def session(base: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base, trust_env=False, timeout=60)


async def run(base: str, args: argparse.Namespace) -> None:
    async with session(base) as admin:
        await login(admin, "admin", ADMIN_PASSWORD)
        for name in ("storm", "probe"):
            r = await admin.post("/create_user", json={"username": name, "password": USER_PASSWORD})
            r.raise_for_status()
    cores = os.cpu_count() or 1
    stormer = pool(base, max(args.parallel, args.storm))
    await parallel_logins(stormer, max(args.parallel, args.storm))  # connections opened
    for _ in range(args.rounds):  # interleaved: the machine's load moves both alike
        start = time.perf_counter()
        for _ in range(args.parallel):
            await login(stormer, "storm", USER_PASSWORD)
        serial = time.perf_counter() - start
        wall = await parallel_logins(stormer, args.parallel)
        print(
            f"{args.parallel} logins: one after another {serial:.2f} s, all at once "
            f"{wall:.2f} s: {wall / serial:.2f}x (1/{cores} cores = {1 / cores:.2f} is ideal; "
            f"1.00 is one check at a time)"
        )
    async with session(base) as probe:
        await login(probe, "probe", USER_PASSWORD)
        for _ in range(args.rounds):
            quiet = await me_latencies(base, probe, 2.0)
            loud, took = await storm_phase(stormer, probe, args.storm)
            print(
                f"GET /api/me of another user: idle p50 {ms(quiet, 0.5):.1f} ms p99 "
                f"{ms(quiet, 0.99):.1f} ms; during {args.storm} logins at once ({took:.1f} s) "
                f"p50 {ms(loud, 0.5):.1f} ms p99 {ms(loud, 0.99):.1f} ms "
                f"({ms(loud, 0.5) / ms(quiet, 0.5):.1f}x p50)"
            )
    async with session(base) as admin:
        await login(admin, "admin", ADMIN_PASSWORD)
        r = await admin.get("/api/users")
        if r.status_code == 404:  # a tree from before user administration
            print("sessions of the storming user: not shown (no GET /api/users in this tree)")
        else:
            sessions = {u["username"]: u["sessions"] for u in r.json()["users"]}
            print(f"sessions of the storming user afterwards: {sessions['storm']} (cap 20)")
    await stormer.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parallel", type=int, default=20)
    parser.add_argument("--storm", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ctm-bench-logins-") as tmp:
        log = os.path.join(tmp, "serve.log")
        with server(os.path.join(tmp, "data"), log) as (base, _proc):
            asyncio.run(run(base, args))


if __name__ == "__main__":
    main()
