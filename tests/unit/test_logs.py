"""ctm_core.logs: following a log line by line, on a log held in memory."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ctm_adapters.memory import InMemoryRepository
from ctm_core import logs
from ctm_core.errors import ExecutionNotFound, TaskNotFound
from ctm_core.logs import LogFollower, LogLine, find_execution
from ctm_core.models import Execution, ExecutionStatus, Task, TaskStatus

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
PATH = "/data/logs/e1.log"


class BytesFiles:
    """The two log reads of the FileStore port over byte strings the test writes."""

    def __init__(self) -> None:
        self.logs: dict[str, bytes] = {}

    def read_log_bytes(self, path: str, offset: int, max_bytes: int) -> bytes:
        return self.logs.get(path, b"")[offset : offset + max_bytes]

    def read_log(self, path: str, max_bytes: int) -> str:
        return self.logs.get(path, b"")[-max_bytes:].decode("utf-8", errors="replace")

    def append(self, data: bytes) -> None:
        self.logs[PATH] = self.logs.get(PATH, b"") + data


def world(
    status: ExecutionStatus = ExecutionStatus.RUNNING, log_path: str | None = PATH
) -> tuple[InMemoryRepository, BytesFiles, Execution]:
    repo = InMemoryRepository()
    task = repo.add_task(
        Task(
            id=0,
            name="t",
            owner_id=1,
            script_path="/s/t.py",
            script_stored=True,
            conda_env="demo",
            requirements=None,
            cron_expression=None,
            delay_seconds=None,
            timeout_seconds=None,
            status=TaskStatus.RUNNING,
            created_at=T0,
        )
    )
    execution = Execution(id="e1", task_id=task.id, status=status, start_time=T0, log_path=log_path)
    repo.add_execution(execution)
    return repo, BytesFiles(), execution


def follower(repo: InMemoryRepository, files: BytesFiles, offset: int = 0) -> LogFollower:
    execution = repo.get_execution("e1")
    assert execution is not None
    return LogFollower(files, repo, execution, offset)  # type: ignore[arg-type]


def texts(lines: list[LogLine]) -> list[str]:
    return [line.text for line in lines]


def test_lines_come_once_ended_in_order_with_their_offsets() -> None:
    """Each read hands out the lines ended since the last one; an unended line waits, and
    ``finish`` hands it out at the end."""
    repo, files, _ = world()
    f = follower(repo, files)
    assert f.read().lines == []
    files.append(b"one\ntw")
    read = f.read()
    assert read.lines == [LogLine("one", 4)] and read.caught_up
    files.append(b"o\r\nthree")
    assert f.read().lines == [LogLine("two", 9)]
    assert f.finish() == [LogLine("three", 14)]
    assert f.finish() == []


def test_a_character_split_between_writes_is_whole() -> None:
    """A UTF-8 character whose bytes arrive in two writes is never a replacement character."""
    repo, files, _ = world()
    f = follower(repo, files)
    files.append("é".encode()[:1])
    assert f.read().lines == []
    files.append("é".encode()[1:] + b"\n")
    assert texts(f.read().lines) == ["é"]


def test_reads_are_bounded_and_long_lines_come_in_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    """A read takes at most ``max_bytes``; a line longer than LINE_BYTES is cut at a character
    boundary into pieces that add up to it."""
    monkeypatch.setattr(logs, "LINE_BYTES", 10)
    repo, files, _ = world()
    f = follower(repo, files)
    line = "abcdefghé" * 3  # 'é' is 2 bytes: 30 bytes, cuts land inside one
    files.append(line.encode() + b"\nshort\n")
    first = f.read(max_bytes=16)
    assert not first.caught_up
    rest: list[LogLine] = []
    while True:
        read = f.read(max_bytes=16)
        rest += read.lines
        if read.caught_up:
            break
    pieces = texts(first.lines + rest)
    assert pieces[-1] == "short"
    assert "".join(pieces[:-1]) == line
    assert all(len(p.encode()) <= 10 for p in pieces[:-1])


def test_a_rewritten_log_stops_the_lines() -> None:
    """When the bytes read last are no longer there (the log passed its cap and was
    rewritten), nothing more is handed out; ``tail_lines`` reads the log's end instead."""
    repo, files, _ = world()
    f = follower(repo, files)
    files.append(b"a" * 100 + b"\nline 2\n")
    assert texts(f.read().lines) == ["a" * 100, "line 2"]
    files.logs[PATH] = b"a" * 50 + b"\n[ctm: 99 bytes of output omitted]\nlast\nmore\n"
    assert f.read().lines == [] and f.rewritten
    files.append(b"even more\n")
    assert f.read().lines == []
    assert f.tail_lines()[-2:] == ["more", "even more"]


def test_resuming_from_an_offset_skips_what_was_read() -> None:
    """A follower started at a line's end offset hands out the lines after it."""
    repo, files, _ = world()
    files.append(b"one\ntwo\nthree\n")
    f = follower(repo, files, offset=4)
    assert texts(f.read().lines) == ["two", "three"]
    past_the_end = follower(repo, files, offset=1000)
    assert past_the_end.read().lines == [] and past_the_end.rewritten


def test_a_queued_run_has_no_log_until_it_starts() -> None:
    """Without a log path nothing is read; ``refresh`` finds the path and the status."""
    repo, files, execution = world(ExecutionStatus.QUEUED, log_path=None)
    f = follower(repo, files)
    assert f.read().lines == [] and not f.final
    files.append(b"hello\n")
    execution.status = ExecutionStatus.COMPLETED
    execution.log_path = PATH
    repo.update_execution(execution)
    assert f.refresh() is not None and f.final
    assert texts(f.read().lines) == ["hello"]


def test_a_deleted_execution_is_final() -> None:
    """An execution deleted while followed: refresh gives None, and the follower is final."""
    repo, files, _ = world()
    f = follower(repo, files)
    repo.delete_task(f.execution.task_id if f.execution else 0)
    assert f.refresh() is None and f.final


def test_find_execution_wants_the_tasks_own() -> None:
    """TaskNotFound for an unknown task, ExecutionNotFound for an unknown or another task's."""
    repo, _, execution = world()
    assert find_execution(repo, execution.task_id, "e1").id == "e1"
    with pytest.raises(TaskNotFound):
        find_execution(repo, 999, "e1")
    with pytest.raises(ExecutionNotFound):
        find_execution(repo, execution.task_id, "nope")


def test_a_rewrite_during_a_read_discards_what_was_read() -> None:
    """The runner rewrites a capped log in order: a read that the rewrite overtook is caught by
    checking the bytes before it once more, and its lines are not handed out."""
    repo, files, _ = world()
    f = follower(repo, files)
    files.append(b"old line\n")
    assert texts(f.read().lines) == ["old line"]
    files.append(b"torn line\n")
    real_read = files.read_log_bytes
    reads: list[int] = []

    def read_then_rewrite(path: str, offset: int, max_bytes: int) -> bytes:
        data = real_read(path, offset, max_bytes)
        reads.append(offset)
        if len(reads) == 1:  # the writer passes over what was just read
            files.logs[PATH] = b"[ctm: 9 bytes of output omitted]\nnew tail\n"
        return data

    files.read_log_bytes = read_then_rewrite  # type: ignore[method-assign]
    assert f.read().lines == [] and f.rewritten
    assert len(reads) == 2
