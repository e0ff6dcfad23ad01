"""Contained runs (issue 10): bob's scripts attack the server, its data and alice's runs.

Each test runs a real server (``CTM_SANDBOX=required``, venv backend) twice: as root, and as
an unprivileged system account. A bob task performs the attack and prints ``PWNED:<what>`` for
every step that worked and ``blocked:<what>`` for every step that did not; the test then checks
the log and the server's state. Against a server that does not contain its runs, the attacks
work and these tests fail.
"""

from __future__ import annotations

import errno
import glob
import os
import re
import secrets
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import ADMIN_PASSWORD
from tests.integration.containment_fixtures import (
    Deployment,
    create_task,
    deployment,
    detail,
    kill_marked_processes,
    logs_of,
    pids_with_marker,
    run_to_end,
    status,
    wait_for,
)

ALICE_ENV = "alice-env"
BOB_ENV = "bob-env"


@pytest.fixture(scope="module", params=["root", "unprivileged"])
def dep(request: pytest.FixtureRequest) -> Iterator[Deployment]:
    """A contained server run as root or as an unprivileged account, with alice and bob."""
    with deployment(request.param) as d:
        yield d


def script(body: str) -> str:
    return textwrap.dedent(body).lstrip()


def assert_blocked(logs: str, *steps: str) -> None:
    """No step of the attack worked, and the script got as far as trying each one."""
    worked = [line for line in logs.splitlines() if "PWNED" in line]
    assert not worked, "attack steps that worked:\n" + "\n".join(worked)
    for step in steps:
        assert f"blocked:{step}" in logs, f"the script did not try {step!r}:\n{logs}"


def me_is_admin(client: Any) -> bool:
    r = client.get("/api/me")
    assert r.status_code == 200, r.text
    return bool(r.json()["user"]["is_admin"])


def assert_server_answers(dep: Deployment) -> None:
    r = dep.admin.get("/api/me")
    assert r.status_code == 200, r.text


# --- 1. the database ---------------------------------------------------------------------------


def test_run_cannot_open_or_change_the_database(dep: Deployment) -> None:
    """bob's script can neither read nor write ctm.sqlite3, so cannot make himself admin."""
    db = str(dep.data_dir / "ctm.sqlite3")
    assert os.path.exists(db)
    latest = run_to_end(
        dep.bob,
        script(f"""
        import sqlite3
        DB = {db!r}
        try:
            with open(DB, "rb") as f:
                print("PWNED:read-db", f.read(16))
        except OSError as e:
            print("blocked:read-db", e)
        try:
            with open(DB, "r+b") as f:
                print("PWNED:write-db opened for writing")
        except OSError as e:
            print("blocked:write-db", e)
        try:
            con = sqlite3.connect("file:" + DB + "?mode=rw", uri=True, timeout=5)
            con.execute("UPDATE users SET is_admin=1 WHERE username='bob'")
            con.commit()
            print("PWNED:sqlite-update changes", con.total_changes)
        except Exception as e:
            print("blocked:sqlite-update", type(e).__name__, e)
    """),
        BOB_ENV,
    )
    logs = latest["logs"] or ""
    r = dep.bob.post(
        "/create_user",
        json={
            "username": f"mallory{secrets.token_hex(3)}",
            "password": "mallory-password",
            "is_admin": True,
        },
    )
    assert r.status_code == 403, f"bob made himself admin: {r.text}\n{logs}"
    assert not me_is_admin(dep.bob)
    assert_blocked(logs, "read-db", "write-db", "sqlite-update")


# --- 2. the server's environment ---------------------------------------------------------------


def test_run_cannot_read_the_server_environment(dep: Deployment) -> None:
    """bob's script cannot read /proc/<server>/environ nor find the admin password in /proc."""
    latest = run_to_end(
        dep.bob,
        script(f"""
        import os
        SERVER = {dep.server.pid}
        SECRET = bytes.fromhex({ADMIN_PASSWORD.encode().hex()!r})
        try:
            with open(f"/proc/{{SERVER}}/environ", "rb") as f:
                data = f.read()
            print("PWNED:server-environ", len(data), "bytes, password in it:", SECRET in data)
        except OSError as e:
            print("blocked:server-environ", e)
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{{entry}}/environ", "rb") as f:
                        if SECRET in f.read():
                            found.append(int(entry))
                except OSError:
                    pass
        if found:
            print("PWNED:password-in-environ of pids", found)
        else:
            print("blocked:password-scan")
    """),
        BOB_ENV,
    )
    assert_blocked(latest["logs"] or "", "server-environ", "password-scan")


# --- 3. the data directory ---------------------------------------------------------------------


def test_run_cannot_list_the_data_directory(dep: Deployment) -> None:
    """Listing the data dir shows no database, logs or sessions, and below it nothing but the
    run's own script, working folder and environment (the mount points of what it was given)."""
    data = str(dep.data_dir)
    latest = run_to_end(
        dep.bob,
        script(f"""
        import os
        try:
            names = os.listdir({data!r})
        except OSError as e:
            print("blocked:listdir", e)
        else:
            seen = sorted(set(names) - {{"scripts", "runs", "envs"}})
            inside = {{d: os.listdir(os.path.join({data!r}, d))
                      for d in ("scripts", "runs", "envs") if d in names}}
            crowded = {{d: n for d, n in inside.items() if len(n) > 1}}
            bad = seen or crowded
            print(("PWNED:listdir " + str(bad)) if bad else "blocked:listdir", names, inside)
    """),
        BOB_ENV,
    )
    assert_blocked(latest["logs"] or "", "listdir")


# --- 4. alice's files --------------------------------------------------------------------------


def _files_containing(root: Path, needle: bytes) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root and "envs" in dirnames:
            dirnames.remove("envs")
        for name in filenames:
            path = Path(dirpath) / name
            try:
                if needle in path.read_bytes():
                    found.append(path)
            except OSError:
                pass
    return found


def test_run_cannot_read_another_users_log_script_or_folder(dep: Deployment) -> None:
    """bob cannot read alice's log or stored script, nor list or read her run folder."""
    secret = f"alice-secret-{secrets.token_hex(8)}"
    folder_file = f"alice-file-{secrets.token_hex(4)}.txt"
    alice_run = run_to_end(
        dep.alice,
        script(f"""
        print({secret!r})
        with open({folder_file!r}, "w") as f:
            f.write({secret!r})
    """),
        ALICE_ENV,
    )
    assert alice_run["status"] == "completed", alice_run["logs"]
    script_path = Path(detail(dep.alice, alice_run["task_id"])["task"]["script_path"])
    assert script_path.is_file()
    # What the test (root, outside any sandbox) finds of alice's run in the data directory.
    files = set(_files_containing(dep.data_dir, secret.encode()))
    files.add(script_path)
    logs = [p for p in files if p.suffix == ".log" or "log" in p.parent.name]
    assert logs, f"alice's log not found among {sorted(files)}"
    run_files = set(dep.data_dir.rglob(folder_file))
    files |= run_files
    # A folder leaks when bob's listing of it shows one of alice's entries (bob's own
    # script may legitimately appear at its usual place inside his sandbox).
    folders: dict[str, list[str]] = {}
    for p in files:
        folders.setdefault(str(p.parent), []).append(p.name)
    targets = sorted(str(p) for p in files) + sorted(folders)
    attack = run_to_end(
        dep.bob,
        script(f"""
        import os
        FOLDERS = {folders!r}
        for path in {sorted(str(p) for p in files)!r}:
            try:
                with open(path, "rb") as f:
                    data = f.read(4096)
                print(("PWNED:" if data else "blocked:") + path, "reads", data[:200])
            except OSError as e:
                print("blocked:" + path, e)
        for path, alices in FOLDERS.items():
            try:
                names = os.listdir(path)
            except OSError as e:
                print("blocked:" + path, e)
            else:
                seen = sorted(set(names) & set(alices))
                print(("PWNED:" if seen else "blocked:") + path, "lists", names)
    """),
        BOB_ENV,
    )
    bob_logs = attack["logs"] or ""
    assert secret not in bob_logs, bob_logs
    assert_blocked(bob_logs, *targets)


# --- 5. environment prefixes -------------------------------------------------------------------


def _site_packages(prefix: Path) -> Path:
    found = glob.glob(str(prefix / "lib" / "python3.*" / "site-packages"))
    assert len(found) == 1, f"site-packages of {prefix}: {found}"
    return Path(found[0])


def test_run_cannot_write_into_any_environment(dep: Deployment) -> None:
    """bob cannot plant a .pth in alice's env or his own; alice's next run runs no bob code."""
    mark = f"BOB-CODE-{secrets.token_hex(6)}"
    targets = []
    for env in (ALICE_ENV, BOB_ENV):
        prefix = dep.env_prefix(env)
        assert prefix.is_dir(), prefix
        targets += [str(_site_packages(prefix) / "evil.pth"), str(prefix / "evil.txt")]
    pth = f"import sys; print({mark!r}, file=sys.stderr)\n"
    try:
        attack = run_to_end(
            dep.bob,
            script(f"""
            for path in {targets!r}:
                try:
                    with open(path, "w") as f:
                        f.write({pth!r})
                    print("PWNED:" + path, "written")
                except OSError as e:
                    print("blocked:" + path, e)
        """),
            BOB_ENV,
        )
        assert_blocked(attack["logs"] or "", *targets)
        assert [t for t in targets if os.path.exists(t)] == []
        victim = run_to_end(dep.alice, "print('alice runs clean')\n", ALICE_ENV)
        assert "alice runs clean" in (victim["logs"] or "")
        assert mark not in (victim["logs"] or ""), victim["logs"]
    finally:
        for t in targets:  # the attack worked: do not poison the other tests' runs
            if os.path.exists(t):
                os.remove(t)


# --- 6. signals to another user's run ----------------------------------------------------------


def test_run_cannot_signal_another_users_run(dep: Deployment) -> None:
    """bob's os.kill(alice's pid, SIGKILL) fails and alice's run keeps beating."""
    marker = f"alice-heartbeat-{secrets.token_hex(6)}"
    beat = (
        "import time\nfor i in range(120):\n    print('heartbeat', i, flush=True)\n"
        "    time.sleep(0.25)\n"
    )
    alice_tid = create_task(
        dep.alice,
        script(f"""
        import os, sys
        os.execv(sys.executable, [sys.executable, "-c", {beat!r}, {marker!r}])
    """),
        ALICE_ENV,
    )
    try:
        pids = wait_for(lambda: pids_with_marker(marker), timeout=30, what="alice's run")
        wait_for(lambda: "heartbeat" in logs_of(dep.alice, alice_tid), what="a heartbeat")
        attack = run_to_end(
            dep.bob,
            script(f"""
            import os, signal
            for pid in {pids!r}:
                try:
                    os.kill(pid, signal.SIGKILL)
                    print("PWNED:kill", pid)
                except OSError as e:
                    print("blocked:kill", pid, e)
        """),
            BOB_ENV,
        )
        assert_blocked(attack["logs"] or "", "kill")
        assert status(dep.alice, alice_tid) == "running"
        assert set(pids_with_marker(marker)) == set(pids)
        beats = logs_of(dep.alice, alice_tid).count("heartbeat")
        wait_for(
            lambda: logs_of(dep.alice, alice_tid).count("heartbeat") > beats + 2,
            timeout=10,
            what="alice's run to keep beating",
        )
    finally:
        if status(dep.alice, alice_tid) == "running":
            dep.alice.post(f"/api/tasks/{alice_tid}/stop")
        kill_marked_processes(marker)


# --- 7. double-fork escape ---------------------------------------------------------------------


@pytest.mark.parametrize("how", ["stop", "delete", "timeout"])
def test_double_fork_escape_dies_with_the_run(dep: Deployment, how: str) -> None:
    """A setsid'd grandchild with an empty environment is gone after stop, delete or timeout."""
    marker = f"escapee-{how}-{secrets.token_hex(6)}"
    extra = {"timeout_seconds": 3} if how == "timeout" else {}
    tid = create_task(
        dep.bob,
        script(f"""
        import os, sys, time
        child = os.fork()
        if child == 0:
            os.setsid()
            if os.fork() == 0:
                os.execve(sys.executable,
                          [sys.executable, "-c", "import time; time.sleep(600)", {marker!r}], {{}})
            os._exit(0)
        os.waitpid(child, 0)
        print("grandchild started", flush=True)
        time.sleep(600)
    """),
        BOB_ENV,
        **extra,
    )
    try:
        wait_for(lambda: pids_with_marker(marker), timeout=30, what="the escaped grandchild")
        if how == "stop":
            r = dep.bob.post(f"/api/tasks/{tid}/stop")
            assert r.status_code == 200, r.text
        elif how == "delete":
            r = dep.bob.delete(f"/api/tasks/{tid}")
            assert r.status_code == 204, r.text
        else:
            wait_for(lambda: status(dep.bob, tid) == "failed", timeout=30, what="the timeout")
        try:
            wait_for(
                lambda: not pids_with_marker(marker),
                timeout=5,
                what="the escaped grandchild to be gone",
            )
        except AssertionError:
            raise AssertionError(
                f"after {how}, escaped processes {pids_with_marker(marker)} still run"
            ) from None
    finally:
        kill_marked_processes(marker)
        if how != "delete":
            dep.bob.delete(f"/api/tasks/{tid}")


# --- 8. process limit --------------------------------------------------------------------------


def test_fork_bomb_stops_at_max_processes(dep: Deployment) -> None:
    """300 forks under max_processes 64: fork fails with EAGAIN below 65; the server answers."""
    latest = run_to_end(
        dep.bob,
        script("""
        import os, time
        children, error = [], None
        for i in range(300):
            try:
                pid = os.fork()
            except OSError as e:
                error = e.errno
                break
            if pid == 0:
                time.sleep(5)
                os._exit(0)
            children.append(pid)
        print("forked", len(children), "errno", error, flush=True)
        for pid in children:
            os.waitpid(pid, 0)
    """),
        BOB_ENV,
        timeout=60,
        max_processes=64,
    )
    logs = latest["logs"] or ""
    found = re.search(r"forked (\d+) errno (\S+)", logs)
    assert found, logs
    assert int(found.group(1)) < 65, logs
    assert found.group(2) == str(errno.EAGAIN), logs
    assert_server_answers(dep)


# --- 9. memory limit ---------------------------------------------------------------------------


def test_memory_limit_ends_the_run_with_a_note(dep: Deployment) -> None:
    """1 GiB under memory_limit_mb 256: failed within seconds, note says the limit was hit."""
    latest = run_to_end(
        dep.bob,
        script("""
        data = b"x" * (1 << 30)
        print("PWNED:allocated", len(data), flush=True)
    """),
        BOB_ENV,
        timeout=30,
        memory_limit_mb=256,
    )
    logs = latest["logs"] or ""
    assert "PWNED" not in logs, logs
    assert latest["status"] == "failed", latest
    notes = " ".join(
        str(e.get("note") or "")
        for e in [latest, *detail(dep.bob, latest["task_id"])["execution_history"]]
    )
    assert "memory limit 256 MB exceeded" in notes + logs, (latest, notes)
    assert latest["duration"] is not None and latest["duration"] < 10, latest
    assert_server_answers(dep)


# --- 10. separate uids -------------------------------------------------------------------------


def test_users_run_as_distinct_unprivileged_uids(dep: Deployment) -> None:
    """As root: alice's and bob's runs have different uids, neither 0 nor the server's."""
    if dep.mode != "root":
        pytest.skip("per-user uids need a server running as root")
    uids = []
    for client, env in ((dep.alice, ALICE_ENV), (dep.bob, BOB_ENV)):
        latest = run_to_end(client, "import os\nprint('uid', os.getuid())\n", env)
        found = re.search(r"uid (\d+)", latest["logs"] or "")
        assert found, latest
        uids.append(int(found.group(1)))
    alice_uid, bob_uid = uids
    assert alice_uid != bob_uid, uids
    assert 0 not in uids and dep.server.uid not in uids, uids
    assert all(200000 <= u <= 265535 for u in uids), uids


# --- 11. the admin sees it ---------------------------------------------------------------------


def test_admin_sees_runs_are_contained(dep: Deployment) -> None:
    """GET /api/me as admin carries containment.contained = true."""
    body = dep.admin.get("/api/me").json()
    containment = body.get("containment") or body.get("user", {}).get("containment")
    assert isinstance(containment, dict), body
    assert containment.get("contained") is True, body
