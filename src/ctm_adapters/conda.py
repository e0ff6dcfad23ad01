"""conda / mamba / micromamba as an ``EnvironmentBackend``.

Reads (list, packages, python version, creation time) come from each prefix's ``conda-meta/``
files: a ``conda list`` costs a third of a second, reading the files costs microseconds.
Changes go through the tool's command line as argument lists (never a shell), always with
``--json --yes``, targeting environments by prefix, each spec behind ``--`` so none can be read
as an option, each with a timeout (``_subprocess.run_tool``) and the installers' environment
(``_child_env``). See ``docs/conda.md`` for the flavors and the traps handled here.

Beside it: ``_conda_cli`` (what the command line said, read) and ``_conda_meta`` (what a prefix's
files say). Their public names stay importable from here.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence

from ctm_adapters._child_env import environment_for_installer
from ctm_adapters._conda_cli import (
    CliFailure,
    FailureKind,
    ToolInfo,
    classify_cli_result,
    detect_tool,
    full_output,
    last_line,
    matchspec_name,
    parse_cli_json,
    parse_pip_failures,
    requirement_names,
)
from ctm_adapters._conda_meta import (
    _record_cache as _record_cache,  # cleared by benchmarks/bench_conda_list.py
)
from ctm_adapters._conda_meta import parse_created_at, parse_history_created, read_environment
from ctm_adapters._disk import tree_usage
from ctm_adapters._subprocess import Completed, run_tool
from ctm_core.errors import (
    BackendFailure,
    EnvironmentExists,
    EnvironmentNotFound,
    InvalidEnvironmentName,
    InvalidPackageSpec,
    PackageOperationFailed,
)
from ctm_core.models import DiskUsage, Environment, RunEnvironment
from ctm_core.validation import normalize_package_name

__all__ = [
    "CliFailure",
    "CondaEnvironmentBackend",
    "FailureKind",
    "ToolInfo",
    "child_environment",
    "classify_cli_result",
    "detect_tool",
    "find_conda_executable",
    "matchspec_name",
    "parse_cli_json",
    "parse_created_at",
    "parse_history_created",
    "parse_pip_failures",
    "read_environment",
    "requirement_names",
]

child_environment = environment_for_installer
"""What conda, mamba, micromamba and the env's pip see (the policy is ``_child_env``'s)."""

# Mutating calls of every backend in this process go one at a time: conda has no lock per
# environment and the package cache (pkgs_dirs) is shared by all of them.
_MUTATION_LOCK = threading.RLock()

_RESERVED_NAMES = frozenset({"base", "root"})
_ENV_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")

_PROBE_TIMEOUT = 120.0


def find_conda_executable(explicit: str | None, environ: Mapping[str, str]) -> str | None:
    """The conda-like executable to use, as an absolute path, or None when there is none.

    ``explicit`` (a path or a command name) wins; when it is given but cannot be found the
    answer is None rather than some other tool. Else ``$CONDA_EXE``, ``$MAMBA_EXE``, then
    ``conda``, ``mamba`` and ``micromamba`` on ``environ["PATH"]``.
    """
    search_path = environ.get("PATH", os.defpath)
    if explicit:
        return _resolve_command(explicit, search_path)
    for variable in ("CONDA_EXE", "MAMBA_EXE"):
        value = environ.get(variable)
        if value:
            found = _resolve_command(value, search_path)
            if found:
                return found
    for command in ("conda", "mamba", "micromamba"):
        found = shutil.which(command, path=search_path)
        if found:
            return os.path.abspath(found)
    return None


def _resolve_command(command: str, search_path: str) -> str | None:
    if os.sep in command:
        path = os.path.abspath(os.path.expanduser(command))
        return path if os.path.isfile(path) and os.access(path, os.X_OK) else None
    found = shutil.which(command, path=search_path)
    return os.path.abspath(found) if found else None


# --- the backend ----------------------------------------------------------------------------
class CondaEnvironmentBackend:
    """Environments of one conda, mamba or micromamba installation, addressed by name.

    ``executable``: the tool (see ``find_conda_executable``). ``default_python``: the python
    version for ``create`` when none is given (``None``: the newest the channels offer).
    ``extra_env``: variables added to every child's environment. ``command_timeout``: seconds
    before a tool call is killed. ``usage_ttl``: seconds a disk usage figure is reused (any
    change through this backend drops it at once). ``only_binary``: requirements go through
    the environment's pip with ``--only-binary :all:``, so no sdist is built (conda itself
    installs built packages only).

    Runs the tool twice at construction (``--version``, ``info --json``); raises
    ``BackendFailure`` when it cannot.
    """

    kind: str

    def __init__(
        self,
        executable: str,
        *,
        default_python: str | None = None,
        extra_env: Mapping[str, str] | None = None,
        command_timeout: float | None = 3600.0,
        usage_ttl: float = 300.0,
        only_binary: bool = False,
    ) -> None:
        self.executable = executable
        self.only_binary = only_binary
        self.default_python = default_python
        self._extra_env = dict(extra_env or {})
        self._timeout = command_timeout
        self._usage_ttl = usage_ttl
        self._usage: tuple[float, DiskUsage] | None = None
        self._usage_generation = 0
        self._usage_lock = threading.Lock()
        version = self._probe(["--version"])
        info_text = self._probe(["info", "--json"])
        info = parse_cli_json(info_text)
        if not isinstance(info, dict):
            raise BackendFailure(
                "Environment backend failure",
                f"{executable} info --json gave no JSON object: {info_text[:500]}",
            )
        self.tool = detect_tool(executable, version, info)
        self.kind = self.tool.kind

    # --- reads ---

    def list_environments(self) -> list[Environment]:
        """Every environment except base/root, sorted by name."""
        return [read_environment(n, p) for n, p in sorted(self._scan().items())]

    def get_environment(self, name: str) -> Environment:
        """One environment with every installed package. Raises ``EnvironmentNotFound``."""
        return read_environment(name, self._require(name))

    def exists(self, name: str) -> bool:
        """True when an environment of that name exists."""
        return self._locate(name) is not None

    def disk_usage(self) -> DiskUsage:
        """Bytes on disk per environment and in total, a hard-linked file counted once."""
        with self._usage_lock:
            cached, generation = self._usage, self._usage_generation
        if cached is not None and time.monotonic() - cached[0] < self._usage_ttl:
            return cached[1]
        per_env, total = tree_usage(sorted(self._scan().items()))
        usage = DiskUsage(per_environment=per_env, total=total)
        with self._usage_lock:
            if generation == self._usage_generation:
                self._usage = (time.monotonic(), usage)
        return usage

    def run_environment(self, name: str) -> RunEnvironment:
        """The interpreter and variables for running a script in ``name``.
        Raises ``EnvironmentNotFound``."""
        prefix = self._require(name)
        bin_dir = os.path.join(prefix, "bin")
        return RunEnvironment(
            python=os.path.join(bin_dir, "python"),
            prefix=prefix,
            variables={"CONDA_PREFIX": prefix, "CONDA_DEFAULT_ENV": name},
            path_prepend=(bin_dir,),
        )

    # --- changes ---

    def create(self, name: str, python_version: str | None, specs: Sequence[str]) -> Environment:
        """Create an environment with python (``python_version`` or the default) and ``specs``.

        Raises ``EnvironmentExists`` (checked first: conda would replace an existing one) and
        ``PackageOperationFailed("Failed to create environment", ...)``; after a failure nothing
        of the new environment is left behind.
        """
        _check_name(name)
        wanted = _checked_specs(specs)
        version = python_version or self.default_python
        if version:
            python_spec = f"python={version}" if version[0].isdigit() else f"python{version}"
            wanted = [python_spec, *wanted]
        elif not any(matchspec_name(s) == "python" for s in wanted):
            wanted = ["python", *wanted]
        with _MUTATION_LOCK:
            if self._locate(name) is not None:
                raise EnvironmentExists(name)
            prefix = self._new_prefix(name)
            if os.path.lexists(prefix):
                raise EnvironmentExists(name, f"'{prefix}' exists but is not a conda environment")
            try:
                done = self._call(["create", "-p", prefix, *self._flags(), "--", *wanted])
                failure = classify_cli_result(done.rc, done.stdout, done.stderr, wanted)
                if failure is not None:
                    self._raise(failure, "Failed to create environment", name)
                if not os.path.isdir(os.path.join(prefix, "conda-meta")):
                    raise PackageOperationFailed(
                        "Failed to create environment",
                        failed_packages=[],
                        error_details=[f"{self.kind} reported success but made no environment"],
                        output=full_output(done.stdout, done.stderr),
                    )
            except BaseException:
                _remove_tree(prefix)
                raise
            finally:
                self._invalidate()
        return read_environment(name, prefix)

    def install(self, name: str, specs: Sequence[str]) -> None:
        """Install ``specs``. Raises ``EnvironmentNotFound`` and
        ``PackageOperationFailed("Failed to install packages", ...)``."""
        wanted = _checked_specs(specs)
        with _MUTATION_LOCK:
            prefix = self._require(name)
            if not wanted:
                return
            try:
                done = self._call(["install", "-p", prefix, *self._flags(), "--", *wanted])
            finally:
                self._invalidate()
            failure = classify_cli_result(done.rc, done.stdout, done.stderr, wanted)
            if failure is not None:
                self._raise(failure, "Failed to install packages", name)

    def remove(self, name: str, packages: Sequence[str]) -> None:
        """Remove installed packages by name. Raises ``EnvironmentNotFound`` and
        ``PackageOperationFailed("Failed to remove packages", ...)`` (e.g. not installed)."""
        wanted = _checked_specs(packages)
        with _MUTATION_LOCK:
            prefix = self._require(name)
            if not wanted:
                return
            if self.tool.mamba2:
                # mamba 2 / micromamba say nothing useful about a package that is not there
                installed = {
                    normalize_package_name(p.name) for p in read_environment(name, prefix).packages
                }
                absent = [
                    p for p in wanted if normalize_package_name(matchspec_name(p)) not in installed
                ]
                if absent:
                    raise PackageOperationFailed(
                        "Failed to remove packages",
                        failed_packages=absent,
                        error_details=[
                            f"Package '{p}' is not installed in the environment" for p in absent
                        ],
                        output=f"Not installed in {prefix}: {', '.join(absent)}",
                    )
            try:
                done = self._call(["remove", "-p", prefix, *self._flags(), "--", *wanted])
            finally:
                self._invalidate()
            failure = classify_cli_result(done.rc, done.stdout, done.stderr, wanted, removing=True)
            if failure is not None:
                self._raise(failure, "Failed to remove packages", name)

    def rename(self, old: str, new: str) -> None:
        """Rename an environment. Raises ``EnvironmentNotFound`` and ``EnvironmentExists``
        (checked first: ``rename --yes`` would overwrite)."""
        _check_name(new)
        with _MUTATION_LOCK:
            source = self._require(old)
            if self._locate(new) is not None:
                raise EnvironmentExists(new)
            target = os.path.join(os.path.dirname(source), new)
            if os.path.lexists(target):
                raise EnvironmentExists(new, f"'{target}' exists but is not a conda environment")
            try:
                if self.kind == "conda":
                    # without --yes conda itself refuses an existing destination; a destination
                    # with a path separator is taken as a path (kept in the source's envs dir)
                    done = self._call(["rename", "-p", source, target, "--json"])
                    failure = classify_cli_result(done.rc, done.stdout, done.stderr)
                    if failure is not None:
                        if failure.kind == "environment_exists":
                            raise EnvironmentExists(new, failure.message)
                        self._raise(failure, "Failed to rename environment", old, backend=True)
                else:
                    self._clone_then_remove(old, source, new, target)
            finally:
                self._invalidate()

    def delete(self, name: str) -> None:
        """Delete an environment and its directory. Raises ``EnvironmentNotFound``."""
        with _MUTATION_LOCK:
            prefix = self._require(name)
            try:
                done = self._call(self._env_remove_args(prefix))
                failure = classify_cli_result(done.rc, done.stdout, done.stderr)
                if failure is not None:
                    self._raise(failure, "Failed to delete environment", name, backend=True)
                _remove_tree(prefix)
            finally:
                self._invalidate()

    def install_requirements(self, name: str, requirements: str) -> None:
        """Install requirements.txt text with the environment's own pip. Raises
        ``EnvironmentNotFound`` and ``PackageOperationFailed("Failed to install requirements",
        ...)`` with the failed requirement names."""
        prefix = self._require(name)
        names = requirement_names(requirements)
        python = os.path.join(prefix, "bin", "python")
        if not os.path.exists(python):
            raise PackageOperationFailed(
                "Failed to install requirements",
                failed_packages=names,
                error_details=[f"Environment '{name}' has no Python interpreter"],
                output="",
            )
        env = environment_for_installer(os.environ, self._extra_env)
        env["CONDA_PREFIX"] = prefix
        env["PATH"] = os.pathsep.join([os.path.join(prefix, "bin"), env.get("PATH", "")])
        env["PIP_NO_INPUT"] = "1"
        env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
        with tempfile.TemporaryDirectory(prefix="ctm-pip-") as workdir:
            path = os.path.join(workdir, "requirements.txt")
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(requirements)
                if not requirements.endswith("\n"):
                    fh.write("\n")
            try:
                done = _run(
                    [python, "-m", "pip", "install", *self._pip_binary_flags(), "-r", path],
                    env=env,
                    timeout=self._timeout,
                    cwd=workdir,
                )
            finally:
                self._invalidate()
        if done.rc == 0:
            return
        output = full_output(done.stdout, done.stderr)
        failures = parse_pip_failures(output)
        if not failures:
            reason = last_line(done.stderr) or last_line(done.stdout) or f"exit {done.rc}"
            if "No module named pip" in output:
                reason = f"pip is not installed in environment '{name}'"
            failures = [(n, f"Requirement '{n}' could not be installed: {reason}") for n in names]
            if not failures:
                failures = [("", reason)]
        raise PackageOperationFailed(
            "Failed to install requirements",
            failed_packages=[req for req, _ in failures if req],
            error_details=[sentence for _, sentence in failures],
            output=output,
        )

    # --- helpers ---

    def _pip_binary_flags(self) -> list[str]:
        return ["--only-binary=:all:"] if self.only_binary else []

    def _flags(self) -> list[str]:
        flags = ["--json", "--yes"]
        if self.tool.mamba2:
            flags += self._mamba2_flags()
        return flags

    def _mamba2_flags(self) -> list[str]:
        # --json lowers mamba 2's log level to critical, hiding the errors worth reporting
        root = ["-r", self.tool.root_prefix] if self.tool.root_prefix else []
        return [*root, "--log-level", "error"]

    def _env_remove_args(self, prefix: str) -> list[str]:
        if self.tool.mamba2:
            # mamba 2's `remove --all` keeps the directory; `env remove` deletes it
            return ["env", "remove", "-p", prefix, "--yes", *self._mamba2_flags()]
        return ["env", "remove", "-p", prefix, "--yes", "--json"]

    def _clone_then_remove(self, old: str, source: str, new: str, target: str) -> None:
        try:
            done = self._call(["create", "-p", target, "--clone", source, *self._flags()])
            failure = classify_cli_result(done.rc, done.stdout, done.stderr)
            if failure is not None:
                self._raise(failure, "Failed to rename environment", old, backend=True)
            if not os.path.isdir(os.path.join(target, "conda-meta")):
                raise BackendFailure(
                    "Failed to rename environment",
                    full_output(done.stdout, done.stderr) or "the clone made no environment",
                )
        except BaseException:
            _remove_tree(target)
            raise
        done = self._call(self._env_remove_args(source))
        failure = classify_cli_result(done.rc, done.stdout, done.stderr)
        if failure is not None:
            raise BackendFailure(
                "Failed to rename environment",
                f"'{new}' was created as a copy but '{old}' could not be removed: "
                + failure.output,
            )
        _remove_tree(source)

    def _raise(
        self, failure: CliFailure, message: str, name: str, *, backend: bool = False
    ) -> None:
        if failure.kind == "environment_not_found":
            raise EnvironmentNotFound(name)
        if failure.kind == "environment_exists":
            raise EnvironmentExists(name, failure.message)
        if failure.kind == "invalid_name":
            raise InvalidEnvironmentName(name, failure.message)
        if backend:
            raise BackendFailure(message, failure.output or failure.message)
        raise PackageOperationFailed(
            message,
            failed_packages=failure.failed_packages,
            error_details=failure.error_details,
            output=failure.output,
        )

    def _call(self, args: list[str]) -> Completed:
        return _run(
            [self.executable, *args],
            env=environment_for_installer(os.environ, self._extra_env),
            timeout=self._timeout,
        )

    def _probe(self, args: list[str]) -> str:
        done = _run(
            [self.executable, *args],
            env=environment_for_installer(os.environ, self._extra_env),
            timeout=_PROBE_TIMEOUT,
        )
        if done.rc != 0:
            raise BackendFailure(
                "Environment backend failure",
                f"{self.executable} {' '.join(args)} failed: "
                + full_output(done.stdout, done.stderr),
            )
        return done.stdout if done.stdout.strip() else done.stderr

    def _invalidate(self) -> None:
        with self._usage_lock:
            self._usage = None
            self._usage_generation += 1

    def _scan(self) -> dict[str, str]:
        """name -> prefix of every environment in the envs directories (first one wins)."""
        root = _real(self.tool.root_prefix)
        found: dict[str, str] = {}
        for envs_dir in self.tool.envs_dirs:
            try:
                entries = list(os.scandir(envs_dir))
            except OSError:
                continue
            for entry in entries:
                name = entry.name
                if name in found or name in _RESERVED_NAMES or name.startswith("."):
                    continue
                if not os.path.isdir(os.path.join(entry.path, "conda-meta")):
                    continue
                if _real(entry.path) == root:
                    continue
                found[name] = entry.path
        return found

    def _locate(self, name: str) -> str | None:
        if not _valid_name(name):
            return None
        for envs_dir in self.tool.envs_dirs:
            prefix = os.path.join(envs_dir, name)
            if os.path.isdir(os.path.join(prefix, "conda-meta")):
                if _real(prefix) == _real(self.tool.root_prefix):
                    return None
                return prefix
        return None

    def _require(self, name: str) -> str:
        prefix = self._locate(name)
        if prefix is None:
            raise EnvironmentNotFound(name)
        return prefix

    def _new_prefix(self, name: str) -> str:
        """Where conda would put a new named env: the first writable envs directory."""
        for envs_dir in self.tool.envs_dirs:
            if os.path.isdir(envs_dir):
                if os.access(envs_dir, os.W_OK | os.X_OK):
                    return os.path.join(envs_dir, name)
                continue
            try:
                os.makedirs(envs_dir, exist_ok=True)
            except OSError:
                continue
            return os.path.join(envs_dir, name)
        raise BackendFailure(
            "Failed to create environment",
            "No writable envs directory among " + ", ".join(self.tool.envs_dirs),
        )


def _valid_name(name: str) -> bool:
    return bool(_ENV_NAME.match(name)) and name not in _RESERVED_NAMES


def _check_name(name: str) -> None:
    if not _valid_name(name):
        raise InvalidEnvironmentName(
            name, "1-64 characters of A-Z a-z 0-9 _ . -, not starting with - or ., not base/root"
        )


def _checked_specs(specs: Sequence[str]) -> list[str]:
    """The specs as given; refuses any that a command line could read as an option."""
    bad = [s for s in specs if not s or s.startswith("-") or any(c in s for c in "\0\n\r")]
    if bad:
        raise InvalidPackageSpec("packages", bad)
    return list(specs)


def _real(path: str) -> str:
    return os.path.realpath(path) if path else ""


def _remove_tree(path: str) -> None:
    if os.path.islink(path):
        os.unlink(path)
    elif os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)


def _run(
    argv: list[str], *, env: Mapping[str, str], timeout: float | None, cwd: str | None = None
) -> Completed:
    """One tool call through ``run_tool`` (its own session, killed with it on timeout: a
    ``BackendFailure``); a program that cannot be started is a ``BackendFailure`` too."""
    try:
        return run_tool(argv, env=env, timeout=timeout, cwd=cwd)
    except OSError as exc:
        raise BackendFailure("Environment backend failure", f"cannot run {argv[0]}: {exc}") from exc
