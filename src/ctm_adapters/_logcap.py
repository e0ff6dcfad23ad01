"""A run's output log, capped in size: the head, a marker, a rolling tail.

``LogCapper`` takes the output in chunks as it comes and writes it to a seekable binary file. Up to
``cap_bytes`` it is a plain copy. Beyond that the file keeps the first half of the cap (the head,
written once), a marker line saying how many bytes were left out, and the last bytes of the output
(the tail), so that the file never exceeds the cap (notes appended at the end excepted). The tail is
kept in memory in a bounded ring of chunks and rewritten to the file at most every
``flush_interval`` seconds, so a reader of the file sees recent output while the run goes on and
memory stays at about half the cap however much the program prints.

When a write fails (disk full, I/O error), the log ends there with a line saying so, written over
the last bytes of output so that it needs no new space, and nothing more is written to it; the
output is still read to its end, so the program never blocks on it nor gets a broken pipe.
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Callable, Iterable
from typing import BinaryIO

MARKER_RESERVE = 64
"""Bytes kept free for the marker line; the longest possible marker is 53 bytes."""

MIN_CAP_BYTES = 4 * MARKER_RESERVE


def omission_marker(omitted: int) -> bytes:
    """The line written where output was cut out."""
    return f"\n[ctm: {omitted} bytes of output omitted]\n".encode()


def stopped_marker(error: OSError) -> bytes:
    """The line that ends a log after a write error: ``[ctm: log stopped: No space left on
    device; the output that followed was not kept]``."""
    reason = error.strerror or str(error)
    return f"\n[ctm: log stopped: {reason}; the output that followed was not kept]\n".encode()


class LogCapper:
    """Copy output into ``file``, keeping at most ``cap_bytes``: head, marker, tail.

    Not thread-safe: one reader thread feeds it. ``file`` must be seekable and opened for binary
    writing, positioned at 0 and empty; the capper closes it in ``close``. Give it an unbuffered
    file (``buffering=0``): a buffered one would retry, at its next seek or close, a write that
    failed, over the line that ends the log.
    """

    def __init__(
        self,
        file: BinaryIO,
        cap_bytes: int,
        *,
        flush_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.check_cap(cap_bytes)
        self._file = file
        self._cap = cap_bytes
        self._head_limit = cap_bytes // 2
        # Past the head: kept as a plain copy while everything fits, else the last ``_tail_keep``.
        self._after_head_limit = cap_bytes - self._head_limit
        self._tail_keep = self._after_head_limit - MARKER_RESERVE
        self._flush_interval = flush_interval
        self._clock = clock
        self._head_written = 0
        self._ring: collections.deque[bytes] = collections.deque()
        self._ring_bytes = 0
        self._dropped = 0  # bytes after the head that left the ring
        self._total = 0
        self._cutting = False  # the output outgrew the cap: the file has head + marker + tail
        self._dirty = False  # the tail on disk is older than the ring
        self._last_flush = 0.0
        self._broken: OSError | None = None
        self._stop_marked = False  # the line that ends a broken log is written
        self._closed = False
        self._last_byte = b"\n"

    @staticmethod
    def check_cap(cap_bytes: int) -> None:
        """Raise ``ValueError`` unless ``cap_bytes`` leaves room for head, marker and tail."""
        if cap_bytes < MIN_CAP_BYTES:
            raise ValueError(f"the log cap must be at least {MIN_CAP_BYTES} bytes")

    @property
    def total_bytes(self) -> int:
        """Bytes of output received so far."""
        return self._total

    @property
    def omitted_bytes(self) -> int:
        """Bytes of output that the file does not hold (0 while it all fits)."""
        return self._dropped

    @property
    def error(self) -> OSError | None:
        """The first write error; after one the output is still consumed but no longer written,
        and the log ends with ``stopped_marker``."""
        return self._broken

    def feed(self, data: bytes) -> None:
        """Take the next chunk of output."""
        if self._closed:
            raise ValueError("feed after close")
        if not data:
            return
        self._total += len(data)
        self._last_byte = data[-1:]
        room = self._head_limit - self._head_written
        if room > 0:
            head, data = data[:room], data[room:]
            self._write(head)
            self._head_written += len(head)
            if not data:
                return
        self._ring.append(data)
        self._ring_bytes += len(data)
        if not self._cutting and self._ring_bytes <= self._after_head_limit:
            self._write(data)  # still a plain copy: append as it comes
            return
        self._cutting = True
        self._trim()
        self._dirty = True
        self.flush_if_due()

    def _trim(self) -> None:
        """Drop the oldest bytes of the ring beyond what the tail keeps."""
        excess = self._ring_bytes - self._tail_keep
        while excess > 0:
            first = self._ring[0]
            if len(first) <= excess:
                self._ring.popleft()
                cut = len(first)
            else:
                self._ring[0] = first[excess:]
                cut = excess
            self._ring_bytes -= cut
            self._dropped += cut
            excess -= cut

    def seconds_until_flush(self) -> float | None:
        """How long until the tail on disk should be refreshed; None when it is up to date."""
        if not self._dirty:
            return None
        return max(0.0, self._last_flush + self._flush_interval - self._clock())

    def flush_if_due(self) -> None:
        """Rewrite the marker and tail on disk if they are stale and the interval has passed."""
        wait = self.seconds_until_flush()
        if wait is not None and wait <= 0.0:
            self._flush()

    def _flush(self) -> None:
        self._dirty = False
        self._last_flush = self._clock()
        if self._broken is not None:
            return
        try:
            self._file.seek(self._head_written)
            self._write_all(omission_marker(self.omitted_bytes))
            for chunk in self._ring:
                self._write_all(chunk)
            self._file.truncate()
            self._file.flush()
        except OSError as exc:
            self._stop_logging(exc)

    def _write(self, data: bytes) -> None:
        if self._broken is not None:
            return
        try:
            self._write_all(data)
            self._file.flush()
        except OSError as exc:
            self._stop_logging(exc)

    def _write_all(self, data: bytes) -> None:
        """Write ``data`` at the file's position (an unbuffered file may take part of it)."""
        view = memoryview(data)
        while view:
            written = self._file.write(view)
            if not written:
                raise OSError("the log took no bytes")
            view = view[written:]

    def _stop_logging(self, exc: OSError) -> None:
        """After a write error: write nothing more, and end the log with a line saying so."""
        self._broken = exc
        self._mark_stopped()

    def _mark_stopped(self) -> None:
        """End the log with ``stopped_marker``, over its last bytes: the file does not grow, so
        a full disk takes it (unless the log is shorter than the line). Tried again at close."""
        line = stopped_marker(self._broken or OSError("write error"))
        try:
            end = self._file.seek(0, os.SEEK_END)
            self._file.seek(max(0, end - len(line)))
            self._write_all(line)
            self._file.flush()
        except OSError:
            return
        self._stop_marked = True

    def close(self, notes: Iterable[str] = ()) -> None:
        """Write the final tail, then each note on a line of its own, and close the file."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._dirty:
                self._flush()
            if self._broken is not None and not self._stop_marked:
                self._mark_stopped()
            lines = [note.rstrip("\n") for note in notes]
            if lines and self._broken is None:
                try:
                    self._file.seek(0, os.SEEK_END)
                    prefix = b"" if self._last_byte == b"\n" else b"\n"
                    self._write_all(prefix + "".join(f"{line}\n" for line in lines).encode())
                    self._file.flush()
                except OSError as exc:
                    self._stop_logging(exc)
        finally:
            try:
                self._file.close()
            except OSError as exc:  # a buffered file's last flush: the run goes on regardless
                self._broken = self._broken or exc


TAIL_MARKER = "[ctm: log truncated, showing its last {shown} of {size} bytes]\n"


def read_log_tail(path: str, max_bytes: int) -> str:
    """The last ``max_bytes`` of the log at ``path`` as text, with a marker line first when cut.

    Reads only the end of the file, whatever its size. A cut never starts inside a UTF-8
    character; other undecodable bytes become U+FFFD. A missing file reads as ``""``.
    """
    if max_bytes <= 0:
        raise ValueError("max_bytes must be positive")
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            start = max(0, size - max_bytes)
            f.seek(start)
            data = f.read(max_bytes)
    except FileNotFoundError:
        return ""
    if start == 0:
        return data.decode("utf-8", errors="replace")
    skip = 0
    while skip < min(3, len(data)) and 0x80 <= data[skip] <= 0xBF:  # UTF-8 continuation bytes
        skip += 1
    data = data[skip:]
    return TAIL_MARKER.format(shown=len(data), size=size) + data.decode("utf-8", errors="replace")
