"""The memory of a real ``ctm serve`` under ``load.py``: RSS, peak, threads and malloc arenas.

Runs ``benchmarks/load.py`` unchanged (same options) and watches the ``ctm serve`` process it
starts: every 0.5 s its ``VmRSS`` and thread count, and at the end of the load (after the drain,
just before the server is stopped) its RSS, its peak (``VmHWM``), its threads and the glibc
arenas it made (64 MiB-aligned heap reservations in ``/proc/<pid>/maps``).

``--threads N`` starts the server with anyio's default thread limiter set to N tokens (what
``create_app``'s lifespan would do with ``current_default_thread_limiter().total_tokens = N``),
to measure that change without making it. ``MALLOC_ARENA_MAX`` in the environment reaches the
server as usual (``MALLOC_ARENA_MAX=16`` is glibc's own default on 2 cores: the "before").

    .venv/bin/python benchmarks/bench_serve_memory.py [--threads N] [load.py options...]
    .venv/bin/python benchmarks/bench_serve_memory.py --seconds 30
"""

from __future__ import annotations

import sys


def _serve(threads: int, argv: list[str]) -> int:
    """The server side: ``ctm serve`` with the thread limiter bounded first (when asked)."""
    from ctm_http import cli

    if threads > 0:
        import contextlib
        from collections.abc import AsyncIterator

        import anyio.to_thread
        from starlette.applications import Starlette

        from ctm_http import app as app_module

        create_app = app_module.create_app

        def bounded(*args: object, **kwargs: object) -> Starlette:
            app = create_app(*args, **kwargs)  # type: ignore[arg-type]
            inner = app.router.lifespan_context

            @contextlib.asynccontextmanager
            async def lifespan(a: Starlette) -> AsyncIterator[None]:
                anyio.to_thread.current_default_thread_limiter().total_tokens = threads
                async with inner(a):
                    yield

            app.router.lifespan_context = lifespan
            return app

        app_module.create_app = bounded
    return cli.main(argv)


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--serve-ctm":
    # Nothing else imported first: the server process starts as ``ctm serve`` does.
    raise SystemExit(_serve(int(sys.argv[2]), sys.argv[3:]))

import argparse  # noqa: E402
import os  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from typing import Any  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import load  # noqa: E402

HEAP_MAX = 64 * 1024 * 1024  # glibc's HEAP_MAX_SIZE on 64-bit: one reservation per arena heap


def status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (kB) and Threads of ``pid``; empty when it is gone."""
    values: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM", "Threads"):
                    values[key] = int(rest.split()[0])
    except OSError:
        pass
    return values


def arena_heaps(pid: int) -> int:
    """Non-main malloc arena heaps: anonymous mappings that start on a 64 MiB boundary and,
    with the reserved (``---p``) rest right after, span exactly 64 MiB."""
    regions: list[tuple[int, int, str, bool]] = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split()
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            regions.append((lo, hi, parts[1], len(parts) < 6))
    count = 0
    for i, (lo, hi, perms, anon) in enumerate(regions):
        if not anon or lo % HEAP_MAX or not perms.startswith("rw"):
            continue
        end = hi
        if i + 1 < len(regions) and regions[i + 1][0] == hi and regions[i + 1][2] == "---p":
            end = regions[i + 1][1]
        if end - lo == HEAP_MAX:
            count += 1
    return count


class Watcher:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.max_rss = 0
        self.max_threads = 0
        self.final: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            s = status(self.pid)
            self.max_rss = max(self.max_rss, s.get("VmRSS", 0))
            self.max_threads = max(self.max_threads, s.get("Threads", 0))

    def finish(self) -> None:
        self._stop.set()
        self._thread.join()
        s = status(self.pid)
        self.final = {
            "rss_kb": s.get("VmRSS", 0),
            "hwm_kb": s.get("VmHWM", 0),
            "threads": s.get("Threads", 0),
            "arenas": 1 + arena_heaps(self.pid),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=False)
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="anyio default thread limiter tokens in the server (0: as is)",
    )
    args, rest = parser.parse_known_args()
    watchers: list[Watcher] = []
    original = load.process

    @contextmanager
    def process(
        argv: list[str], env: dict[str, str], log_path: str, ready_url: str, timeout: float = 60.0
    ) -> Iterator[Any]:
        serving = "ctm_http.cli" in argv
        if serving:
            at = argv.index("ctm_http.cli")
            argv = [
                argv[0],
                os.path.abspath(__file__),
                "--serve-ctm",
                str(args.threads),
                *argv[at + 1 :],
            ]
        with original(argv, env, log_path, ready_url, timeout) as proc:
            watcher = Watcher(proc.pid) if serving else None
            try:
                yield proc
            finally:
                if watcher is not None:
                    watcher.finish()
                    watchers.append(watcher)

    load.process = process  # type: ignore[assignment]
    started = time.monotonic()
    code = load.main(rest)
    arena_max = os.environ.get("MALLOC_ARENA_MAX", "unset")
    for w in watchers:
        f = w.final
        print(
            f"\nctm serve memory (MALLOC_ARENA_MAX={arena_max}, thread limiter "
            f"{args.threads or 'default'}; {time.monotonic() - started:.0f} s in all):\n"
            f"  after the load: RSS {f['rss_kb'] / 1024:.0f} MB, threads {f['threads']}, "
            f"malloc arenas {f['arenas']}\n"
            f"  during the load: peak RSS {f['hwm_kb'] / 1024:.0f} MB (VmHWM), "
            f"most threads seen {w.max_threads}"
        )
    return code


if __name__ == "__main__":
    raise SystemExit(main())
