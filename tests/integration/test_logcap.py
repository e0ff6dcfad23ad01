"""read_log_tail: the end of a log file for the API, read without loading the whole file."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctm_adapters.process import read_log_tail


def test_small_log_is_returned_whole(tmp_path: Path) -> None:
    """A log shorter than the limit comes back as it is, no marker."""
    path = tmp_path / "run.log"
    path.write_bytes(b"hello\nworld\n")
    assert read_log_tail(str(path), 1000) == "hello\nworld\n"


def test_large_log_returns_its_end_with_a_marker(tmp_path: Path) -> None:
    """A long log comes back as its last bytes, preceded by a line saying it was cut."""
    path = tmp_path / "run.log"
    path.write_bytes(b"".join(f"line {i}\n".encode() for i in range(100_000)))
    text = read_log_tail(str(path), 200)
    first, rest = text.split("\n", 1)
    assert first.startswith("[ctm: log truncated, showing its last 200 of ")
    assert rest.endswith("line 99999\n")
    assert len(rest.encode()) == 200


def test_cut_inside_a_utf8_character_is_clean(tmp_path: Path) -> None:
    """A cut in the middle of a multi-byte character does not show a broken character."""
    path = tmp_path / "run.log"
    path.write_bytes("é".encode() * 1000)  # 2 bytes each
    text = read_log_tail(str(path), 101)
    assert text.split("\n", 1)[1] == "é" * 50


def test_invalid_bytes_are_replaced(tmp_path: Path) -> None:
    """Binary garbage in a log does not make reading it fail."""
    path = tmp_path / "run.log"
    path.write_bytes(b"ok \xff\xfe end\n")
    assert read_log_tail(str(path), 100) == "ok \ufffd\ufffd end\n"


def test_missing_log_reads_as_empty(tmp_path: Path) -> None:
    """A log that does not exist (not started, or pruned) reads as empty text."""
    assert read_log_tail(str(tmp_path / "nope.log"), 100) == ""


def test_limit_must_be_positive(tmp_path: Path) -> None:
    """Asking for zero bytes is a programming error."""
    with pytest.raises(ValueError, match="positive"):
        read_log_tail(str(tmp_path / "x.log"), 0)
