"""A run's log as readers see it: whole, or followed line by line while the run goes on.

``LogFollower`` reads through the ``FileStore`` port only; the HTTP layer turns what it hands
out into server-sent events. A log is a plain copy of the output up to its cap; past it, the
runner rewrites its second half in place (head, marker, tail: docs/runs.md). A follower
notices that (the bytes it read last are no longer where it read them) and stops following;
what the log holds at the run's end is then read as a tail (``tail_lines``).
"""

from __future__ import annotations

import attrs

from ctm_core.errors import ExecutionNotFound
from ctm_core.models import Execution, ExecutionStatus
from ctm_core.ports import FileStore, Repository

READ_BYTES = 256 * 1024
"""The most one ``read`` takes from the file (call it again until ``caught_up``)."""
LINE_BYTES = 64 * 1024
"""A line longer than this is handed out in pieces, so a reader holds a bounded amount."""
CHECK_BYTES = 64
"""How many of the bytes read last are checked again before reading on."""
TAIL_BYTES = 256 * 1024
"""What ``tail_lines`` reads of a log that was rewritten while it was followed."""


@attrs.frozen
class LogLine:
    """One line of a log, without its line end (``\\n`` or ``\\r\\n``)."""

    text: str
    end: int
    """The byte offset just after the line in the log: where a reader resumes after it."""


@attrs.frozen
class LogRead:
    lines: list[LogLine]
    caught_up: bool
    """Nothing more was in the file (a next ``read`` now would find nothing new)."""


def find_execution(repo: Repository, task_id: int, execution_id: str) -> Execution:
    """The execution ``execution_id`` of task ``task_id``. Raises ``TaskNotFound`` (no such
    task) and ``ExecutionNotFound`` (no such execution, or another task's)."""
    repo.get_task(task_id)
    execution = repo.get_execution(execution_id)
    if execution is None or execution.task_id != task_id:
        raise ExecutionNotFound(task_id, execution_id)
    return execution


def is_final(execution: Execution | None) -> bool:
    """Whether nothing more will be written to the log of ``execution`` (None: deleted).

    Every line ctm adds of its own is written before the end is recorded."""
    if execution is None:
        return True
    status = ExecutionStatus(execution.status)
    return status.finished or status is ExecutionStatus.SKIPPED


class LogFollower:
    """Follows one execution's log from byte ``offset`` (0: its start; a ``LogLine.end``
    handed out earlier: resume after that line). Not thread-safe: one reader at a time.

    ``read`` hands out the complete lines written since the last call, in order; a line not
    yet ended waits for its end, or for ``finish``. Nothing here sleeps: the caller decides
    how often to call ``read`` and ``refresh``.
    """

    def __init__(
        self, files: FileStore, repo: Repository, execution: Execution, offset: int = 0
    ) -> None:
        self.files = files
        self.repo = repo
        self.execution: Execution | None = execution
        self.offset = max(0, offset)
        """Bytes of the log consumed (complete lines and the pending one)."""
        self.rewritten = False
        """The log no longer holds what was read (it passed its cap, or a write error ended it
        over its last bytes): ``read`` hands out nothing more; see ``tail_lines``."""
        self._check: bytes | None = None if self.offset else b""
        self._pending = b""

    @property
    def path(self) -> str | None:
        return self.execution.log_path if self.execution is not None else None

    def refresh(self) -> Execution | None:
        """Read the execution's record again (its status; its log path once it starts).
        None when it was deleted meanwhile."""
        assert self.execution is not None, "refresh after the execution was deleted"
        self.execution = self.repo.get_execution(self.execution.id)
        return self.execution

    @property
    def final(self) -> bool:
        """The execution has ended (or was deleted): its log will not change any more."""
        return is_final(self.execution)

    def read(self, max_bytes: int = READ_BYTES) -> LogRead:
        """The lines completed since the last call, each with the offset just after it."""
        path = self.path
        if path is None or self.rewritten:
            return LogRead([], caught_up=True)
        check = self._check
        if check is None:  # resuming: the bytes before the offset are taken as they are now
            start = max(0, self.offset - CHECK_BYTES)
            check = self.files.read_log_bytes(path, start, self.offset - start)
            if len(check) < self.offset - start:
                return self._was_rewritten()
        start = self.offset - len(check)
        data = self.files.read_log_bytes(path, start, len(check) + max_bytes)
        if data[: len(check)] != check:
            return self._was_rewritten()
        new = data[len(check) :]
        # The runner rewrites a capped log from its middle onwards, in order: had it passed over
        # what was just read, it would have changed the checked bytes before it.
        if new and check and self.files.read_log_bytes(path, start, len(check)) != check:
            return self._was_rewritten()
        self._check = (check + new)[-CHECK_BYTES:]
        lines = self._split(new)
        return LogRead(lines, caught_up=len(new) < max_bytes)

    def finish(self) -> list[LogLine]:
        """The last line, when the log does not end with a line end (call once the run has
        ended and ``read`` is caught up)."""
        if not self._pending:
            return []
        line = LogLine(_decode(self._pending), self.offset)
        self._pending = b""
        return [line]

    def tail_lines(self, max_bytes: int = TAIL_BYTES) -> list[str]:
        """The end of the log as it is now, as lines (for a log ``rewritten`` while it was
        followed: call once the run has ended); the first says so when it had to cut."""
        path = self.path
        if path is None:
            return []
        text = self.files.read_log(path, max_bytes)
        return [line.removesuffix("\r") for line in text.removesuffix("\n").split("\n")]

    def _was_rewritten(self) -> LogRead:
        self.rewritten = True
        self._pending = b""
        return LogRead([], caught_up=True)

    def _split(self, new: bytes) -> list[LogLine]:
        lines: list[LogLine] = []
        begin = self.offset - len(self._pending)
        buffer = self._pending + new
        self.offset += len(new)
        pos = 0
        while True:
            newline = buffer.find(b"\n", pos)
            if newline < 0 or newline - pos > LINE_BYTES:
                if len(buffer) - pos <= LINE_BYTES:
                    break
                cut = _char_boundary(buffer, pos + LINE_BYTES)
                lines.append(LogLine(_decode(buffer[pos:cut]), begin + cut))
                pos = cut
                continue
            raw = buffer[pos:newline].removesuffix(b"\r")
            lines.append(LogLine(_decode(raw), begin + newline + 1))
            pos = newline + 1
        self._pending = buffer[pos:]
        return lines


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def _char_boundary(data: bytes, cut: int) -> int:
    """``cut``, moved back to the start of the UTF-8 character it falls in (at most 3 bytes)."""
    for back in range(4):
        if cut - back <= 0 or not 0x80 <= data[cut - back] <= 0xBF:
            return cut - back if cut - back > 0 else cut
    return cut
