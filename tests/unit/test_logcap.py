"""The log cap: what a capped log holds, fed chunk by chunk, without processes or disk."""

from __future__ import annotations

import errno
import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ctm_adapters._logcap import MARKER_RESERVE, LogCapper, omission_marker, stopped_marker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Sink(io.BytesIO):
    """A BytesIO that keeps its content readable after the capper closes it."""

    final = b""

    def close(self) -> None:
        self.final = self.getvalue()
        super().close()


def capped(chunks: list[bytes], cap: int, notes: tuple[str, ...] = ()) -> bytes:
    sink = Sink()
    capper = LogCapper(sink, cap)
    for chunk in chunks:
        capper.feed(chunk)
    capper.close(notes)
    return sink.final


def expected(data: bytes, cap: int) -> bytes:
    if len(data) <= cap:
        return data
    head = cap // 2
    tail = cap - head - MARKER_RESERVE
    return data[:head] + omission_marker(len(data) - head - tail) + data[-tail:]


def test_output_within_the_cap_is_copied_unchanged() -> None:
    """Output up to the cap, even exactly the cap, is kept byte for byte."""
    data = bytes(range(256)) * 4
    assert capped([data[:100], data[100:]], cap=1024) == data


def test_output_over_the_cap_keeps_head_marker_and_tail() -> None:
    """Past the cap the log holds the first half, a marker with the count, then the last bytes."""
    lines = [f"line {i}\n".encode() for i in range(10_000)]
    data = b"".join(lines)
    out = capped(lines, cap=4096)
    assert out == expected(data, 4096)
    assert out.startswith(b"line 0\nline 1\n")
    assert out.endswith(b"line 9999\n")
    assert b"bytes of output omitted]\n" in out
    assert len(out) <= 4096


def test_marker_states_how_many_bytes_are_missing() -> None:
    """The marker's number plus the bytes kept adds up to everything printed."""
    data = b"x" * 100_000
    out = capped([data], cap=1000)
    omitted = int(out.split(b"[ctm: ")[1].split(b" bytes")[0])
    marker = omission_marker(omitted)
    assert omitted + len(out) - len(marker) == len(data)


def test_notes_are_appended_after_the_output_on_their_own_line() -> None:
    """A note (timeout, leftovers) comes last, on its own line, even after a partial line."""
    out = capped([b"no newline at the end"], cap=1024, notes=("[ctm: run timed out]",))
    assert out == b"no newline at the end\n[ctm: run timed out]\n"


def test_notes_follow_a_capped_tail() -> None:
    """Notes survive the cap: they are written after the tail, not cut away."""
    out = capped([b"y" * 50_000 + b"\n"], cap=1000, notes=("[ctm: note]",))
    assert out.endswith(b"y\n[ctm: note]\n")


def test_tail_on_disk_follows_the_output_while_it_runs() -> None:
    """Past the cap, the file shows recent output at most one flush interval late."""
    clock = Clock()
    sink = Sink()
    capper = LogCapper(sink, 1000, flush_interval=1.0, clock=clock)
    capper.feed(b"a" * 5000)
    assert sink.getvalue().endswith(b"a" * 10)  # first cut: written at once
    clock.now += 0.5
    capper.feed(b"b" * 100)
    assert not sink.getvalue().endswith(b"b")  # rate limited
    assert capper.seconds_until_flush() == pytest.approx(0.5)
    clock.now += 0.5
    capper.flush_if_due()
    assert sink.getvalue().endswith(b"b" * 100)
    assert capper.seconds_until_flush() is None
    assert len(sink.getvalue()) <= 1000
    capper.close()


def test_memory_held_stays_near_half_the_cap() -> None:
    """However much is fed, the capper holds no more than the tail plus one chunk."""
    capper = LogCapper(Sink(), 10_000)
    chunk = b"z" * 4096
    for _ in range(2_000):
        capper.feed(chunk)
    assert capper._ring_bytes <= 10_000 // 2
    assert capper.omitted_bytes == 2_000 * 4096 - 5_000 - capper._ring_bytes
    capper.close()


def test_too_small_cap_is_refused() -> None:
    """A cap without room for head, marker and tail is a configuration error."""
    with pytest.raises(ValueError, match="at least"):
        LogCapper(Sink(), 100)


def test_write_errors_do_not_stop_consumption() -> None:
    """A failing disk is reported, and the capper keeps taking output (the program never blocks)."""

    class Full(Sink):
        def write(self, data: object) -> int:
            raise OSError(28, "No space left on device")

    capper = LogCapper(Full(), 1000)
    capper.feed(b"x" * 10_000)
    capper.feed(b"more")
    assert isinstance(capper.error, OSError)
    capper.close(["note"])


class SmallDisk(Sink):
    """A file on a disk with room for ``room`` bytes: a write past them takes what fits (as
    an unbuffered file does), then fails with ENOSPC."""

    def __init__(self, room: int) -> None:
        super().__init__()
        self.room = room

    def write(self, data: object) -> int:
        chunk = bytes(data)  # type: ignore[call-overload]
        fits = max(0, self.room - self.tell())
        if not fits and chunk:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(chunk[:fits])


FULL = stopped_marker(OSError(errno.ENOSPC, "No space left on device"))


def test_a_full_disk_ends_the_log_with_a_line_written_over_its_last_bytes() -> None:
    """The line needs no new space: the log keeps its size, the output up to the line is a
    copy, and what follows is read but not written (not even the notes)."""
    disk = SmallDisk(room=1000)
    capper = LogCapper(disk, 1_000_000)
    data = bytes(range(48, 58)) * 300
    capper.feed(data)
    capper.feed(b"later output")
    assert isinstance(capper.error, OSError) and capper.total_bytes == len(data) + 12
    capper.close(["[ctm: run timed out after 1 s, stopped]"])
    assert disk.final.endswith(FULL) and len(disk.final) == 1000
    assert disk.final[: 1000 - len(FULL)] == data[: 1000 - len(FULL)]
    assert (
        FULL
        == b"\n[ctm: log stopped: No space left on device; the output that followed was not kept]\n"
    )


def test_a_full_disk_while_the_tail_is_rewritten_also_ends_with_the_line() -> None:
    """Past the cap, a refresh of the tail that fails leaves head, part of the tail, line."""
    clock = Clock()
    disk = SmallDisk(room=700)
    capper = LogCapper(disk, 1000, flush_interval=1.0, clock=clock)
    capper.feed(b"h" * 500 + b"t" * 2000)
    clock.now += 2
    capper.flush_if_due()
    capper.close()
    assert disk.final.startswith(b"h" * 500) and disk.final.endswith(FULL)
    assert len(disk.final) == 700


def test_a_log_too_short_for_the_line_gets_it_at_close_when_room_came_back() -> None:
    """A disk full from the start: nothing fits, the line is written at close if it can be."""
    disk = SmallDisk(room=0)
    capper = LogCapper(disk, 10_000)
    capper.feed(b"output")
    assert capper.error is not None
    disk.room = 10_000
    capper.close()
    assert disk.final == FULL


@settings(max_examples=300, deadline=None)
@given(
    chunks=st.lists(st.binary(min_size=0, max_size=700), max_size=30),
    cap=st.integers(min_value=256, max_value=3000),
)
def test_capped_log_is_always_head_marker_tail(chunks: list[bytes], cap: int) -> None:
    """For any output cut into any chunks: a plain copy within the cap, else head+marker+tail."""
    data = b"".join(chunks)
    out = capped(chunks, cap)
    assert out == expected(data, cap)
    assert len(out) <= cap
