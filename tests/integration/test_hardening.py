"""The server wipes its admin password from its environment and becomes non-dumpable."""

from __future__ import annotations

import os
import subprocess
import sys

CHILD = """
import sys
from ctm_adapters._hardening import is_dumpable, make_undumpable, scrub_environment
print(scrub_environment(["CTM_ADMIN_PASSWORD", "CTM_NOT_SET"]), make_undumpable(), is_dumpable())
sys.stdout.flush()
sys.stdin.read()
"""


def test_secret_is_gone_from_proc_environ_and_process_is_not_dumpable() -> None:
    """After scrubbing, /proc/<pid>/environ no longer holds the password; dumpable is off."""
    env = {**os.environ, "CTM_ADMIN_PASSWORD": "a-very-secret-password"}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline().decode()
        assert line.strip() == "['CTM_ADMIN_PASSWORD'] True False"
        with open(f"/proc/{child.pid}/environ", "rb") as f:
            environ = f.read()
        assert b"a-very-secret-password" not in environ
        assert b"CTM_ADMIN_PASSWORD=" + b"*" * len("a-very-secret-password") in environ
    finally:
        child.communicate(b"")
