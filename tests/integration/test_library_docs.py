"""docs/library.md's examples, run as they are written: the real one against real adapters in
a temporary data directory, the one on fakes as the test it shows."""

from __future__ import annotations

import ast
import contextlib
import io
import pathlib
import re

import pytest

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "library.md"
MARK = "<!-- the test suite runs this block: tests/integration/test_library_docs.py -->"


def examples() -> list[str]:
    text = DOC.read_text()
    return re.findall(re.escape(MARK) + r"\n```python\n(.*?)```", text, flags=re.S)


def imports(code: str) -> int:
    return sum(isinstance(n, ast.Import | ast.ImportFrom) for n in ast.walk(ast.parse(code)))


def test_the_doc_has_both_examples_within_the_promised_size() -> None:
    """A complete program in at most 15 lines with at most 5 imports, and one on fakes."""
    real, fake = examples()
    assert len([line for line in real.splitlines() if line.strip()]) <= 15
    assert imports(real) <= 5
    assert "Ctm.open(" in real and "Ctm.in_memory(" in fake


@pytest.mark.slow
def test_the_complete_program_runs_a_script_and_reports_its_figures() -> None:
    """Real SQLite, a real venv (uv), a real (sandboxed when bwrap is there) run."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(examples()[0], str(DOC), "exec"), {"__name__": "library_example"})  # noqa: S102
    lines = out.getvalue().splitlines()
    status, exit_code, seconds, _s, megabytes, _mb = lines[0].split()
    assert (status, exit_code) == ("completed", "0")
    assert float(seconds) > 0
    assert float(megabytes) >= 50  # the script's 50 MB buffer: peak memory is the tree's own
    assert "499999500000" in lines[1:]


def test_the_example_on_fakes_is_a_passing_test() -> None:
    namespace: dict[str, object] = {"__name__": "library_fake_example"}
    exec(compile(examples()[1], str(DOC), "exec"), namespace)  # noqa: S102
    test = namespace["test_a_delayed_task_runs_when_its_time_comes"]
    assert callable(test)
    test()
