"""docs/configuration.md names every CTM_* variable the code reads, and no other."""

from __future__ import annotations

import re
from pathlib import Path

from ctm_adapters.settings import ENV_VARS

ROOT = Path(__file__).resolve().parents[2]
VARIABLE = re.compile(r"CTM_[A-Z][A-Z0-9_]*[A-Z0-9]")


def variables_in_source() -> set[str]:
    found: set[str] = set()
    for path in (ROOT / "src").rglob("*.py"):
        found |= set(VARIABLE.findall(path.read_text(encoding="utf-8")))
    return found


def variables_in_docs() -> set[str]:
    return set(VARIABLE.findall((ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")))


def test_every_variable_the_code_reads_is_documented() -> None:
    """Each CTM_* name in src/ appears in docs/configuration.md."""
    missing = variables_in_source() - variables_in_docs()
    assert not missing, f"document these in docs/configuration.md: {sorted(missing)}"


def test_the_docs_name_no_variable_the_code_does_not_know() -> None:
    """Each CTM_* name in docs/configuration.md exists in src/ (no stale or misspelt ones)."""
    unknown = variables_in_docs() - variables_in_source()
    assert not unknown, f"not read anywhere in src/: {sorted(unknown)}"


def test_every_setting_has_its_own_row() -> None:
    """Each variable of settings.ENV_VARS opens a row of the settings table."""
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    for name in ENV_VARS:
        assert f"\n| `{name}` |" in text, name


def test_the_pattern_sees_what_a_grep_sees() -> None:
    """The scan finds the settings table's names in settings.py (a guard on the regex)."""
    assert set(ENV_VARS) <= variables_in_source()
