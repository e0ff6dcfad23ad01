"""CTM_SANDBOX modes at start: auto falls back loudly, required refuses, off never contains."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from ctm_adapters.bootstrap import containment_of
from ctm_adapters.settings import Settings

REQUIRED = os.environ.get("CTM_REQUIRE_SANDBOX") == "1"


def settings(tmp_path: Path, mode: str) -> Settings:
    return Settings(data_dir=str(tmp_path / "data"), sandbox=mode)


def test_auto_without_bubblewrap_runs_uncontained_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No bwrap on PATH: auto gives no sandbox and a reason naming bubblewrap."""
    monkeypatch.setenv("PATH", str(tmp_path))
    sandbox, _ids, found = containment_of(settings(tmp_path, "auto"))
    assert sandbox is None
    assert not found.contained and "bubblewrap" in found.reason


def test_required_without_bubblewrap_refuses_to_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No bwrap on PATH: required stops the start with the reason."""
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SystemExit, match="CTM_SANDBOX=required but runs cannot be contained"):
        containment_of(settings(tmp_path, "required"))


def test_off_never_contains(tmp_path: Path) -> None:
    """off: no sandbox even where bubblewrap works, and the reason says it was turned off."""
    sandbox, _ids, found = containment_of(settings(tmp_path, "off"))
    assert sandbox is None and found.reason == "CTM_SANDBOX=off"


def test_auto_with_working_bubblewrap_contains(tmp_path: Path) -> None:
    """With a working bwrap, auto passes its trial run and contains every run."""
    if shutil.which("bwrap") is None and not REQUIRED:
        pytest.skip("bubblewrap (bwrap) is not installed")
    sandbox, _ids, found = containment_of(settings(tmp_path, "auto"))
    assert sandbox is not None and found.contained, found.reason
