"""The conda adapter's parsers fed with real recorded conda 26.7.1 output (tests/data/conda/).

mamba 2 / micromamba samples are written here from the shapes in ADAPTER-NOTES (no recording of
them exists). No process is started.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ctm_adapters.conda import (
    child_environment,
    classify_cli_result,
    detect_tool,
    matchspec_name,
    parse_cli_json,
    parse_created_at,
    parse_history_created,
    parse_pip_failures,
    requirement_names,
)
from ctm_core.errors import BackendFailure

DATA = Path(__file__).resolve().parents[1] / "data" / "conda"


def case(name: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of recorded case ``name``."""
    rc = int((DATA / f"{name}.rc").read_text().strip())
    return rc, (DATA / f"{name}.out").read_text(), (DATA / f"{name}.err").read_text()


@pytest.fixture
def tokyo_time(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process's local time zone is UTC+9 for the test."""
    monkeypatch.setenv("TZ", "JST-9")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


# --- success ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "create_ok",
        "create_exists",
        "create_prefix",
        "create_clone",
        "create_empty",
        "install_ok",
        "install_two",
        "install_versioned",
        "install_pipstyle_spec",
        "install_already",
        "install_revision",
        "remove_ok",
        "remove_all_prefix",
        "env_remove_ok",
        "env_remove_empty",
        "rename_ok",
    ],
)
def test_recorded_successes_are_successes(name: str) -> None:
    """Every recorded exit-0 call, including the empty stdout of env_remove_empty, is a success."""
    rc, out, err = case(name)
    assert classify_cli_result(rc, out, err, ["six"]) is None


def test_progress_records_before_the_result_are_skipped() -> None:
    """With NUL-separated progress records in front, the final JSON document is the result."""
    _, out, _ = case("install_ok")
    noisy = '{"fetch": "six", "finished": false, "maxval": 1, "progress": 0.5}\n\0' + out
    assert parse_cli_json(noisy)["success"] is True
    assert classify_cli_result(0, noisy, "", ["six"]) is None


def test_text_before_a_json_document_is_skipped() -> None:
    """A warning line printed before the JSON does not hide the result."""
    assert parse_cli_json('warning: something\n{"success": false}\n') == {"success": False}


def test_exit_zero_with_success_false_is_a_failure() -> None:
    """A JSON result that says success false fails even with exit status 0."""
    failure = classify_cli_result(0, '{"success": false}', "", ["six"])
    assert failure is not None
    assert failure.failed_packages == ["six"]


# --- conda's failures ------------------------------------------------------------------------


def test_not_found_names_the_requested_spec_only() -> None:
    """install_notfound: of 'nosuchpkg six' only nosuchpkg failed, with one sentence."""
    rc, out, err = case("install_notfound")
    failure = classify_cli_result(rc, out, err, ["nosuchpkg", "six"])
    assert failure is not None
    assert failure.kind == "packages_not_found"
    assert failure.failed_packages == ["nosuchpkg"]
    assert failure.error_details == ["Package 'nosuchpkg' not found in available channels"]
    assert "PackagesNotFoundInChannelsError" in failure.output


def test_two_missing_packages_keep_the_requested_order() -> None:
    """install_notfound2: both missing specs fail, in the order the user gave them."""
    rc, out, err = case("install_notfound2")
    failure = classify_cli_result(rc, out, err, ["nosuchpkg", "anothermissing"])
    assert failure is not None
    assert failure.failed_packages == ["nosuchpkg", "anothermissing"]
    assert len(failure.error_details) == 2


def test_missing_package_at_create_is_reported_as_requested() -> None:
    """create_bad_pkg: python=3.11 is fine, nosuchpkg is the failed spec."""
    rc, out, err = case("create_bad_pkg")
    failure = classify_cli_result(rc, out, err, ["python=3.11", "nosuchpkg"])
    assert failure is not None
    assert failure.failed_packages == ["nosuchpkg"]


def test_unavailable_python_version_names_the_python_spec() -> None:
    """create_py_missing: python=3.99 is the failed spec."""
    rc, out, err = case("create_py_missing")
    failure = classify_cli_result(rc, out, err, ["python=3.99", "six"])
    assert failure is not None
    assert failure.failed_packages == ["python=3.99"]
    assert failure.error_details == ["Package 'python=3.99' not found in available channels"]


def test_missing_versioned_spec_matches_by_name() -> None:
    """conda prints attrs>=99 as attrs[version='>=99']; the user's own spec is reported."""
    body = {
        "exception_name": "PackagesNotFoundInChannelsError",
        "message": "The following packages are not available",
        "packages": ["attrs[version='>=99']"],
    }
    failure = classify_cli_result(1, json.dumps(body), "", ["six", "attrs>=99"])
    assert failure is not None
    assert failure.failed_packages == ["attrs>=99"]


def test_conflict_names_the_spec_in_the_explanation() -> None:
    """install_conflict: UnsatisfiableError has no package list; needs-py2 is named in it."""
    rc, out, err = case("install_conflict")
    failure = classify_cli_result(rc, out, err, ["six", "needs-py2"])
    assert failure is not None
    assert failure.kind == "unsatisfiable"
    assert failure.failed_packages == ["needs-py2"]
    assert failure.error_details == ["Package 'needs-py2' has conflicts with existing packages"]


def test_conflict_naming_no_requested_spec_fails_them_all() -> None:
    """An unsatisfiable solve that names none of the specs fails every requested spec."""
    body = {"exception_name": "UnsatisfiableError", "message": "nothing fits together"}
    failure = classify_cli_result(1, json.dumps(body), "", ["a", "b"])
    assert failure is not None
    assert failure.failed_packages == ["a", "b"]


def test_unparsable_spec_traceback_fails_that_spec() -> None:
    """install_badspec: no JSON, a traceback on stderr; six>>=1 fails and the output is kept."""
    rc, out, err = case("install_badspec")
    assert out.strip() == ""
    failure = classify_cli_result(rc, out, err, ["attrs", "six>>=1"])
    assert failure is not None
    assert failure.kind == "invalid_spec"
    assert failure.failed_packages == ["six>>=1"]
    assert "InvalidVersionSpec" in failure.output


def test_remove_of_a_package_not_installed() -> None:
    """remove_notinstalled: PackagesNotFoundInPrefixError names six under package_name."""
    rc, out, err = case("remove_notinstalled")
    failure = classify_cli_result(rc, out, err, ["six"], removing=True)
    assert failure is not None
    assert failure.kind == "not_in_prefix"
    assert failure.failed_packages == ["six"]
    assert failure.error_details == ["Package 'six' is not installed in the environment"]


@pytest.mark.parametrize(
    "name",
    ["install_missing_env", "list_missing_env", "env_remove_missing", "rename_missing"],
)
def test_missing_environment_is_recognised(name: str) -> None:
    """EnvironmentLocationNotFound, with its location, from every command that can give it."""
    rc, out, err = case(name)
    failure = classify_cli_result(rc, out, err, ["six"])
    assert failure is not None
    assert failure.kind == "environment_not_found"
    assert failure.location == "<ENVS_DIR>/nosuchenv"


def test_rename_onto_an_existing_environment() -> None:
    """rename_exists: conda's CondaEnvException 'already exists' is recognised."""
    rc, out, err = case("rename_exists")
    failure = classify_cli_result(rc, out, err)
    assert failure is not None
    assert failure.kind == "environment_exists"


@pytest.mark.parametrize("name", ["create_bad_name", "create_base"])
def test_conda_refuses_the_name(name: str) -> None:
    """create_bad_name / create_base: conda's own CondaValueError about the name."""
    rc, out, err = case(name)
    failure = classify_cli_result(rc, out, err, [])
    assert failure is not None
    assert failure.kind == "invalid_name"


def test_unknown_conda_error_fails_every_requested_spec_with_the_reason() -> None:
    """A network error fails all requested specs, each sentence carrying conda's reason."""
    body = {"exception_name": "CondaHTTPError", "message": "HTTP 000 CONNECTION FAILED"}
    failure = classify_cli_result(1, json.dumps(body), "", ["six", "idna"])
    assert failure is not None
    assert failure.kind == "other"
    assert failure.failed_packages == ["six", "idna"]
    assert "HTTP 000 CONNECTION FAILED" in failure.error_details[0]


# --- mamba 2 / micromamba --------------------------------------------------------------------

MAMBA_NOT_FOUND_ERR = (
    "error    libmamba Could not solve for environment specs\n"
    "    The following package could not be installed\n"
    "    └─ nosuchpkg =* * does not exist (perhaps a typo or a missing channel).\n"
    "critical libmamba Could not solve for environment specs\n"
)


def test_mamba_missing_package_from_solver_problems() -> None:
    """mamba 2: 'nothing provides requested X' in solver_problems is a not-found X."""
    out = json.dumps(
        {"success": False, "solver_problems": ["nothing provides requested nosuchpkg"]}
    )
    failure = classify_cli_result(1, out, MAMBA_NOT_FOUND_ERR, ["six", "nosuchpkg"])
    assert failure is not None
    assert failure.kind == "packages_not_found"
    assert failure.failed_packages == ["nosuchpkg"]
    assert "does not exist" in failure.output


def test_mamba_missing_package_from_stderr_alone() -> None:
    """Only the stderr explanation (no solver_problems) still names the missing package."""
    failure = classify_cli_result(1, "{}", MAMBA_NOT_FOUND_ERR, ["nosuchpkg"])
    assert failure is not None
    assert failure.failed_packages == ["nosuchpkg"]


def test_mamba_conflict_from_solver_problems() -> None:
    """mamba 2: a 'package X requires ...' problem makes X the conflicting spec."""
    out = json.dumps(
        {
            "success": False,
            "solver_problems": [
                "package needs-py2-1.0-pyh_0 requires python <3, but none of the providers "
                "can be installed"
            ],
        }
    )
    err = "critical libmamba Could not solve for environment specs\n"
    failure = classify_cli_result(1, out, err, ["six", "needs-py2"])
    assert failure is not None
    assert failure.kind == "unsatisfiable"
    assert failure.failed_packages == ["needs-py2"]


def test_mamba_missing_prefix_from_stderr() -> None:
    """mamba 2: 'No prefix found at' on stderr means the environment is gone."""
    err = "error    libmamba No prefix found at: /x/envs/gone\ncritical libmamba Aborting.\n"
    failure = classify_cli_result(1, "{}", err, ["six"])
    assert failure is not None
    assert failure.kind == "environment_not_found"


def test_mamba_log_history_is_read() -> None:
    """Newer mamba puts its log in log_history; a not-found there is found."""
    out = json.dumps(
        {
            "success": False,
            "log_history": [
                {
                    "level": "error",
                    "message": "nosuchpkg does not exist (perhaps a typo or a missing channel).",
                    "source": "libmamba",
                }
            ],
        }
    )
    failure = classify_cli_result(1, out, "", ["nosuchpkg"])
    assert failure is not None
    assert failure.failed_packages == ["nosuchpkg"]


# --- which tool ------------------------------------------------------------------------------


def test_conda_is_detected_from_recorded_info() -> None:
    """info_json: conda_version means conda; envs_dirs and root_prefix are taken as they are."""
    _, out, _ = case("info_json")
    tool = detect_tool("/opt/conda/bin/conda", "conda 26.7.1", json.loads(out))
    assert tool.kind == "conda"
    assert not tool.mamba2
    assert tool.version == "26.7.1"
    assert tool.root_prefix == "<ROOT_PREFIX>"
    assert tool.envs_dirs == ("<ENVS_DIR>", "<HOME>/.conda/envs", "<ROOT_PREFIX>/envs")


def test_mamba1_is_conda_underneath() -> None:
    """mamba 1.x (a wrapper of conda) answers conda's info: kind mamba, conda's command line."""
    _, out, _ = case("info_json")
    tool = detect_tool("/opt/conda/bin/mamba", "mamba 1.5.8\nconda 24.1.2", json.loads(out))
    assert tool.kind == "mamba"
    assert not tool.mamba2
    assert tool.version == "1.5.8"


@pytest.mark.parametrize(
    ("exe", "version_key", "kind"),
    [
        ("/usr/bin/micromamba", "micromamba version", "micromamba"),
        ("/x/mamba", "mamba version", "mamba"),
    ],
)
def test_mamba2_and_micromamba_are_detected_from_keys_with_spaces(
    exe: str, version_key: str, kind: str
) -> None:
    """mamba 2/micromamba: 'base environment' and 'envs directories' give root and envs dirs."""
    info = {
        "base environment": "/home/u/micromamba",
        "envs directories": ["/home/u/micromamba/envs"],
        "libmamba version": "2.8.1",
        version_key: "2.8.1",
    }
    tool = detect_tool(exe, "2.8.1", info)
    assert tool.kind == kind
    assert tool.mamba2
    assert tool.root_prefix == "/home/u/micromamba"
    assert tool.envs_dirs == ("/home/u/micromamba/envs",)


def test_unknown_tool_is_a_backend_failure() -> None:
    """An executable whose info has neither conda's nor mamba's keys is refused."""
    with pytest.raises(BackendFailure):
        detect_tool("/usr/bin/python", "Python 3.11", {"platform": "linux"})


# --- conda-meta ------------------------------------------------------------------------------


def test_created_at_file_is_a_unix_timestamp() -> None:
    """conda-meta/created_at holds seconds since the epoch."""
    text = (DATA / "conda-meta-created_at.txt").read_text()
    assert parse_created_at(text) == datetime.fromtimestamp(1795492691.385512, UTC)
    assert parse_created_at("not a number") is None


@pytest.mark.usefixtures("tokyo_time")
def test_history_time_is_local_time() -> None:
    """The first history header is the machine's local time: 03:58 in UTC+9 is 18:58 UTC."""
    text = (DATA / "conda-meta-history.txt").read_text()
    assert parse_history_created(text) == datetime(2026, 11, 23, 18, 58, 11, tzinfo=UTC)
    assert parse_history_created("# no header\n") is None


# --- small parsers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "name"),
    [
        ("six", "six"),
        ("attrs>=24", "attrs"),
        ("python=3.99", "python"),
        ("attrs[version='>=99']", "attrs"),
        ("conda-forge::NumPy==1.2", "numpy"),
        ("needs-py2 -> python[version='<3']", "needs-py2"),
    ],
)
def test_matchspec_name(spec: str, name: str) -> None:
    """The package name of a user's spec or a conda MatchSpec string."""
    assert matchspec_name(spec) == name


def test_pip_not_found_names_the_requirement() -> None:
    """pip's 'No matching distribution found for X' makes X a failed requirement, once."""
    output = (
        "Collecting nosuchpkg==1.0\n"
        "ERROR: Could not find a version that satisfies the requirement nosuchpkg==1.0 "
        "(from versions: none)\n"
        "ERROR: No matching distribution found for nosuchpkg==1.0\n"
    )
    assert parse_pip_failures(output) == [
        ("nosuchpkg==1.0", "No matching distribution found for 'nosuchpkg==1.0'")
    ]


def test_pip_conflict_and_invalid_requirement() -> None:
    """pip's conflict line names both packages; an invalid requirement is named too."""
    output = (
        "ERROR: Cannot install a==1 and b==2 because these package versions have conflicting "
        "dependencies.\nERROR: Invalid requirement: 'x y'\n"
    )
    assert [r for r, _ in parse_pip_failures(output)] == ["x y", "a==1", "b==2"]


def test_requirement_names_skip_comments_and_options() -> None:
    """Comments, blank lines and option lines are not requirements."""
    text = "# tools\nrequests>=2  # http\n\n--index-url https://example.invalid\ntomli\n"
    assert requirement_names(text) == ["requests>=2", "tomli"]


def test_child_environment_drops_activation_and_ctm_variables() -> None:
    """CONDA_PREFIX & co., stacked CONDA_PREFIX_1 and every CTM_* never reach conda."""
    base = {
        "PATH": "/usr/bin",
        "HOME": "/root",
        "CONDA_PREFIX": "/opt/conda/envs/ctm",
        "CONDA_PREFIX_1": "/opt/conda",
        "CONDA_SHLVL": "2",
        "CONDA_DEFAULT_ENV": "ctm",
        "CONDA_PROMPT_MODIFIER": "(ctm) ",
        "CTM_ADMIN_PASSWORD": "secret",
        "CTM_DATA_DIR": "/srv/ctm",
        "CONDA_EXE": "/opt/conda/bin/conda",
    }
    assert child_environment(base, {"EXTRA": "1"}) == {
        "PATH": "/usr/bin",
        "HOME": "/root",
        "CONDA_EXE": "/opt/conda/bin/conda",
        "EXTRA": "1",
    }
