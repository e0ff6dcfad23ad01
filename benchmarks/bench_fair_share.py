"""Fair share under a noisy neighbour: how late another user's run-now starts, and how many
"skipped" rows a stuck cron load writes.

Starts a real ``ctm serve`` (venv backend, temporary data dir, supervised runs, sandbox as the
machine allows), creates users alice and bob and one environment. alice creates ``--tasks``
tasks on ``* * * * * *`` (every second) whose runs sleep ``--sleep`` seconds, so most of their
occurrences come while they still run. After ``--warm`` seconds bob creates ``--probes`` run-now
tasks one after another; each prints ``time.time()`` first thing, and its lateness is that time
minus the moment bob's POST returned. At the end it counts the execution rows in the database
(skipped ones apart). The issue's figure before fair share: 30 such tasks delayed bob by 19.8 s
and wrote 1,111 skipped rows in 50 s.

Run: .venv/bin/python benchmarks/bench_fair_share.py [--tasks 30] [--warm 20] [--probes 5]
(``PYTHONPATH=<other checkout>/src`` runs another version of the server: a baseline.)
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time

import httpx

ADMIN_PASSWORD = "bench-admin-password"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


def login(url: str, user: str, password: str) -> httpx.Client:
    client = httpx.Client(base_url=url, timeout=300)
    r = client.post("/login", json={"username": user, "password": password})
    r.raise_for_status()
    return client


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=30)
    parser.add_argument("--sleep", type=float, default=5.0)
    parser.add_argument("--warm", type=float, default=20.0)
    parser.add_argument("--probes", type=int, default=5)
    args = parser.parse_args()
    top = tempfile.mkdtemp(prefix="ctm-bench-fair-")
    os.chmod(top, 0o755)
    data = os.path.join(top, "data")
    port = free_port()
    env = {
        **os.environ,
        "CTM_DATA_DIR": data,
        "CTM_PORT": str(port),
        "CTM_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "CTM_BACKEND": "venv",
        "CTM_MAX_TASKS_PER_USER": str(args.tasks + args.probes + 5),
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "ctm_http.cli", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(os.path.join(top, "server.log"), "wb"),  # noqa: SIM115
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _up(url), 60, "the server")
        admin = login(url, "admin", ADMIN_PASSWORD)
        for name in ("alice", "bob"):
            admin.post(
                "/create_user",
                json={"username": name, "password": f"{name}-password", "is_admin": False},
            ).raise_for_status()
        alice = login(url, "alice", "alice-password")
        bob = login(url, "bob", "bob-password")
        alice.post("/api/conda/environment", json={"name": "shared"}).raise_for_status()
        noisy = f"import time\ntime.sleep({args.sleep})\n"
        for i in range(args.tasks):
            alice.post(
                "/api/tasks",
                json={
                    "script": noisy,
                    "conda_env": "shared",
                    "reuse_env": True,
                    "task_name": f"noisy-{i}",
                    "cron_expression": "* * * * * *",
                },
            ).raise_for_status()
        started = time.monotonic()
        time.sleep(args.warm)
        lateness = []
        for i in range(args.probes):
            r = bob.post(
                "/api/tasks",
                json={
                    "script": "import time\nprint(repr(time.time()), flush=True)\n",
                    "conda_env": "shared",
                    "reuse_env": True,
                    "task_name": f"probe-{i}",
                },
            )
            posted = time.time()
            r.raise_for_status()
            tid = r.json()["task"]["task_id"]

            def printed(tid: int = tid) -> float | None:
                latest = bob.get(f"/api/tasks/{tid}").json()["latest_execution"] or {}
                words = (latest.get("logs") or "").split()
                return float(words[0]) if words else None

            lateness.append(wait_for(printed, 120, f"probe {i}") - posted)
        elapsed = time.monotonic() - started
        db = sqlite3.connect(os.path.join(data, "ctm.sqlite3"))
        rows = dict(db.execute("SELECT status, COUNT(*) FROM executions GROUP BY status"))
        try:
            skipped_occurrences = db.execute(
                "SELECT COALESCE(SUM(skip_count), 0) FROM executions WHERE status = 'skipped'"
            ).fetchone()[0]
        except sqlite3.OperationalError:  # a ctm from before skip counts: one row each
            skipped_occurrences = rows.get("skipped", 0)
        db.close()
        contained = admin.get("/api/me").json().get("containment", {}).get("contained")
    finally:
        server.terminate()
        server.wait(30)
    lateness.sort()
    print(f"{os.cpu_count()} cores, uid {os.geteuid()}, runs contained: {contained}")
    print(
        f"alice: {args.tasks} tasks every second, runs of {args.sleep:g} s; "
        f"bob: {args.probes} run-now probes after {args.warm:g} s"
    )
    print(
        f"  bob's lateness (printed start - POST returned): min {lateness[0]:.2f} s, "
        f"median {lateness[len(lateness) // 2]:.2f} s, max {lateness[-1]:.2f} s"
    )
    print(f"  execution rows after {elapsed:.0f} s: {rows}")
    print(f"  skipped occurrences: {skipped_occurrences} in {rows.get('skipped', 0)} rows")
    shutil.rmtree(top, ignore_errors=True)
    shutil.rmtree(data + "-homes", ignore_errors=True)


def _up(url: str) -> bool:
    try:
        httpx.get(url + "/api/me", timeout=1)
    except httpx.HTTPError:
        return False
    return True


if __name__ == "__main__":
    main()
