"""Files in the data directory: stored scripts, per-execution working folders and logs."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil

from ctm_adapters._logcap import read_log_tail
from ctm_core.errors import StorageUnavailable

_UNWRITABLE = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EIO: "I/O error",
}


class LocalFileStore:
    """``scripts/`` (stored scripts), ``runs/<execution>`` (working folders, made the run's own
    by the runner) and ``logs/`` (written by the server only).

    ``crossable``: runs have uids of their own (server as root): they may cross the data
    directory and ``scripts/`` and ``runs/`` (not list them) to reach what the sandbox binds.
    """

    def __init__(self, data_dir: str, crossable: bool = False) -> None:
        self.data_dir = os.path.abspath(data_dir)
        self.scripts_dir = os.path.join(self.data_dir, "scripts")
        self.logs_dir = os.path.join(self.data_dir, "logs")
        self.runs_dir = os.path.join(self.data_dir, "runs")
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        os.chmod(self.data_dir, 0o711 if crossable else 0o700)
        for d, mode in ((self.scripts_dir, 0o711), (self.logs_dir, 0o700), (self.runs_dir, 0o711)):
            os.makedirs(d, mode=mode, exist_ok=True)
            os.chmod(d, mode)

    def store_script(self, name: str, content: str) -> str:
        """Raises ``StorageUnavailable`` when the disk cannot take it (full, read-only, I/O
        error)."""
        base = os.path.basename(name)
        path = os.path.join(self.scripts_dir, base)
        tmp = path + ".tmp"
        try:
            with open(tmp, "w", encoding="utf-8", errors="surrogateescape", newline="") as f:
                f.write(content)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            if exc.errno in _UNWRITABLE:
                raise StorageUnavailable(_UNWRITABLE[exc.errno]) from exc
            raise
        return path

    def is_file(self, path: str) -> bool:
        return os.path.isfile(path)

    def resolve(self, path: str) -> str:
        return os.path.realpath(path)

    def run_dir(self, execution_id: str) -> str:
        path = os.path.join(self.runs_dir, os.path.basename(execution_id))
        os.makedirs(path, mode=0o700, exist_ok=True)
        return path

    def log_path(self, execution_id: str) -> str:
        return os.path.join(self.logs_dir, os.path.basename(execution_id) + ".log")

    def read_log(self, path: str, max_bytes: int) -> str:
        try:
            return read_log_tail(path, max_bytes)
        except OSError:
            return ""

    def read_log_bytes(self, path: str, offset: int, max_bytes: int) -> bytes:
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                return f.read(max_bytes)
        except OSError:
            return b""

    def append_log(self, path: str, line: str) -> None:
        with contextlib.suppress(OSError), open(path, "a", encoding="utf-8") as f:
            f.write(("\n" if f.tell() else "") + line + "\n")

    def delete(self, paths: list[str]) -> None:
        for path in paths:
            if not path:
                continue
            real = os.path.realpath(path)
            if not real.startswith(self.data_dir + os.sep):
                continue  # never delete outside the data directory (user script paths)
            if os.path.isdir(real):
                shutil.rmtree(real, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(real)
                # a run's supervisor files, next to its log (ctm_adapters.supervised)
                shutil.rmtree(real + ".run", ignore_errors=True)
            run_dir = os.path.join(self.runs_dir, os.path.basename(real).removesuffix(".log"))
            if real.startswith(self.logs_dir) and os.path.isdir(run_dir):
                shutil.rmtree(run_dir, ignore_errors=True)
