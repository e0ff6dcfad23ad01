"""``VenvEnvironmentBackend``: environments as ``python -m venv`` directories, changed with pip.

The embedded default when no conda is installed. Each environment is one directory under
``root``; reads come from the files (``pyvenv.cfg``, ``*.dist-info/METADATA``), changes from the
environment's own pip (or ``uv pip`` when uv is found), always with argument lists, never a shell.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import TextIO

import attrs

from ctm_adapters._disk import tree_usage
from ctm_adapters._sandbox import Installer, Sandbox, interpreter_roots
from ctm_core.errors import (
    EnvironmentExists,
    EnvironmentNotFound,
    InvalidEnvironmentName,
    PackageOperationFailed,
)
from ctm_core.models import DiskUsage, Environment, Package, RunEnvironment
from ctm_core.validation import normalize_package_name, spec_name

__all__ = ["PythonInterpreter", "VenvEnvironmentBackend"]

METADATA_FILE = "ctm-env.json"
_TMP_PREFIX = ".ctm-new-"
_TRASH_PREFIX = ".ctm-trash-"
_PIP_FLAGS = ("--disable-pip-version-check", "--no-input")
_PROBE_LIMIT = 10
"""At most this many extra specs are probed one by one after pip reports one as not found."""
_SCRIPT_MAX_BYTES = 1 << 20
_PY_SCRIPT = (
    "import sys, os; print(os.path.abspath(sys.executable)); "
    "print('.'.join(map(str, sys.version_info[:3])))"
)
_BUNDLED_WHEELS = (
    "import ensurepip, glob, os; "
    "print('\\n'.join(glob.glob(os.path.join(os.path.dirname(ensurepip.__file__), "
    "'_bundled', '*.whl'))))"
)
_PYTHON_ON_PATH = re.compile(r"python3(?:\.\d+)?")
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_VERSION_RE = re.compile(r"\d+(?:\.\d+){0,2}")


@attrs.frozen
class PythonInterpreter:
    """An interpreter environments can be made from: its version ``3.11.7`` and its path."""

    version: str
    executable: str

    @property
    def version_tuple(self) -> tuple[int, ...]:
        return tuple(int(p) for p in self.version.split("."))


@attrs.frozen
class _Failure:
    spec: str
    reason: str  # not_found | no_wheel | conflict | invalid | build | python | unknown


_SENTENCES = {
    "not_found": "Package '{}' not found in available channels",
    "no_wheel": "Package '{}' has no wheel, and only wheels are installed here "
    "(install_only_binary): its build code is never run",
    "not_found_wheel": "Package '{}' not found in available channels as a wheel "
    "(only wheels are installed here: install_only_binary)",
    "conflict": "Package '{}' has conflicts with existing packages",
    "invalid": "Package specification '{}' is not valid for pip",
    "build": "Package '{}' could not be built",
    "python": "Package '{}' cannot be installed with pip: Python is fixed when a venv environment "
    "is created (create a new environment with the python_version you need)",
    "unknown": "Package '{}' could not be installed (see the error output)",
    "remove_missing": "Package '{}' is not installed",
    "remove_unknown": "Package '{}' could not be removed (see the error output)",
}


class VenvEnvironmentBackend:
    """Environments that are venvs under ``root``, one directory per name.

    ``default_python``: the interpreter used when ``create`` gets no ``python_version``; a path,
    or a version resolved among the interpreters found. Default: the server's own interpreter.
    ``interpreters``: extra interpreters (label -> executable) beyond ``python3.X`` on ``PATH``.
    ``use_uv``: ``None`` uses ``uv pip`` when a uv that runs is found (the one installed with
    ctm, the ``uv`` package, whatever the server's ``PATH``; else beside the server's
    interpreter; else on ``PATH``) and pip otherwise, ``True`` requires it, ``False`` always
    uses the environment's pip. ``uv_executable`` names uv explicitly. ``tool`` says which
    serves and why, for the server's start line.
    ``sandbox`` and ``installer``: run every package change (venv creation, pip, uv) in a
    bubblewrap sandbox as the installer's unprivileged identity, with write access to the
    environment and the installer's cache only.
    ``only_binary``: install wheels only (``--only-binary :all:`` to pip and to uv, which does
    not read ``PIP_ONLY_BINARY``), so no package's build code runs at install time; a package
    with no wheel fails as not found. Every install path: create, install, requirements.
    """

    kind = "venv"

    def __init__(
        self,
        root: str,
        *,
        default_python: str | None = None,
        interpreters: Mapping[str, str] | None = None,
        use_uv: bool | None = None,
        uv_executable: str | None = None,
        only_binary: bool = False,
        sandbox: Sandbox | None = None,
        installer: Installer | None = None,
    ) -> None:
        self.root = os.path.abspath(root)
        self.only_binary = only_binary
        self._sandbox = sandbox
        self._installer = installer
        self._default_python = default_python
        self._extra_interpreters = dict(interpreters or {})
        self._interpreters: list[PythonInterpreter] | None = None
        self._default_probed: PythonInterpreter | None = None
        self._discover_lock = threading.Lock()
        self._name_locks = _NameLocks()
        self._usage_lock = threading.Lock()
        self._usage_generation = 0
        self._usage: tuple[int, tuple[str, ...], DiskUsage] | None = None
        self.uv: str | None = None
        self.tool = "pip: use_uv=False"
        """What makes and changes the environments, for the operator: ``uv 0.9.2 at <path>``, or
        ``pip: <why not uv>``."""
        if use_uv is not False:
            self.uv, self.tool = _choose_uv(uv_executable)
            if use_uv and self.uv is None:
                raise ValueError(f"use_uv=True but uv cannot serve: {self.tool}")
        self._remove_stale_temporaries()

    # --- reads -----------------------------------------------------------------------------

    def list_environments(self) -> list[Environment]:
        """Every venv under ``root`` (hidden work directories left out), sorted by name."""
        return [self._read(name, os.path.join(self.root, name)) for name in self._names()]

    def get_environment(self, name: str) -> Environment:
        return self._read(name, self._existing_dir(name))

    def exists(self, name: str) -> bool:
        return _valid_name(name) and _is_env(os.path.join(self.root, name))

    def run_environment(self, name: str) -> RunEnvironment:
        prefix = self._existing_dir(name)
        bindir = os.path.join(prefix, "bin")
        return RunEnvironment(
            python=os.path.join(bindir, "python"),
            prefix=prefix,
            variables={"VIRTUAL_ENV": prefix, "CONDA_PREFIX": prefix, "CONDA_DEFAULT_ENV": name},
            path_prepend=(bindir,),
        )

    def disk_usage(self) -> DiskUsage:
        """Bytes per environment (``tree_usage``), cached until a change made through here."""
        names = tuple(self._names())
        with self._usage_lock:
            generation = self._usage_generation
            cached = self._usage
        if cached is not None and cached[0] == generation and cached[1] == names:
            return cached[2]
        per_env, total = tree_usage((n, os.path.join(self.root, n)) for n in names)
        usage = DiskUsage(per_environment=per_env, total=total)
        with self._usage_lock:
            if self._usage_generation == generation:
                self._usage = (generation, names, usage)
        return usage

    def available_pythons(self) -> list[PythonInterpreter]:
        """The interpreters found (once, then remembered), newest version first."""
        with self._discover_lock:
            if self._interpreters is None:
                self._interpreters = _discover(self._extra_interpreters)
            return list(self._interpreters)

    # --- changes ---------------------------------------------------------------------------

    def create(self, name: str, python_version: str | None, specs: Sequence[str]) -> Environment:
        _check_new_name(name)
        final = os.path.join(self.root, name)
        with self._name_locks.hold(name):
            if os.path.lexists(final):
                if _is_env(final):
                    raise EnvironmentExists(name)
                raise EnvironmentExists(name, f"'{final}' already exists and is not an environment")
            specs, python_version = _python_from_specs(specs, python_version)
            _refuse_python(specs, "Failed to create environment")
            interpreter = self._choose_python(python_version)
            os.makedirs(self.root, exist_ok=True)
            work = os.path.join(
                self.root, f"{_TMP_PREFIX}{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            )
            try:
                if self._sandbox is not None:
                    os.mkdir(work, 0o755)
                    self._give(work)
                self._build(name, work, interpreter, specs)
                _relocate(work, final, old_name=name, new_name=name)
                self._give(work, recursive=True)
                os.rename(work, final)
            except BaseException:
                shutil.rmtree(work, ignore_errors=True)
                raise
            finally:
                self._changed()
            return self._read(name, final)

    def install(self, name: str, specs: Sequence[str]) -> None:
        if not specs:
            return
        with self._name_locks.hold(name):
            prefix = self._existing_dir(name)
            try:
                self._pip_install(prefix, list(specs), "Failed to install packages")
            finally:
                self._changed()

    def install_requirements(self, name: str, requirements: str) -> None:
        with self._name_locks.hold(name):
            prefix = self._existing_dir(name)
            wanted = _requirement_lines(requirements)
            fd, path = tempfile.mkstemp(prefix="ctm-requirements-", suffix=".txt")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    fh.write(requirements if requirements.endswith("\n") else requirements + "\n")
                os.chmod(path, 0o644)  # the installer's uid reads it
                rc, output = self._run(
                    self._install_argv(prefix, "-r", path), prefix, readonly=(path,)
                )
                if rc != 0:
                    failures = _parse_failures(output, wanted) or [
                        _Failure(s, "unknown") for s in wanted
                    ]
                    failures = self._wheel_reasons(failures)
                    raise _failed("Failed to install requirements", failures, output)
            finally:
                os.unlink(path)
                self._changed()

    def remove(self, name: str, packages: Sequence[str]) -> None:
        if not packages:
            return
        with self._name_locks.hold(name):
            prefix = self._existing_dir(name)
            installed = {normalize_package_name(p.name) for p in _packages(prefix)}
            missing = [p for p in packages if normalize_package_name(spec_name(p)) not in installed]
            if missing:
                raise _failed(
                    "Failed to remove packages",
                    [_Failure(p, "remove_missing") for p in missing],
                    "\n".join(f"Package '{p}' is not installed in {prefix}" for p in missing),
                )
            names = [spec_name(p) for p in packages]
            if self.uv is not None:
                argv = [self.uv, "pip", "uninstall", "--python", _python(prefix), "--", *names]
            else:
                argv = [*self._pip(prefix), "uninstall", "-y", *_PIP_FLAGS, "--", *names]
            try:
                rc, output = self._run(argv, prefix)
            finally:
                self._changed()
            if rc != 0:
                raise _failed(
                    "Failed to remove packages",
                    [_Failure(p, "remove_unknown") for p in packages],
                    output,
                )

    def rename(self, old: str, new: str) -> None:
        _check_new_name(new)
        with self._name_locks.hold(old, new):
            source = self._existing_dir(old)
            target = os.path.join(self.root, new)
            if os.path.lexists(target):
                raise EnvironmentExists(new, "Cannot rename environment to an existing name")
            try:
                _relocate(source, target, old_name=old, new_name=new)
                self._give(source, recursive=True)
                try:
                    os.rename(source, target)
                except BaseException:
                    _relocate(source, source, old_name=new, new_name=old, old_prefix=target)
                    raise
            finally:
                self._changed()

    def delete(self, name: str) -> None:
        with self._name_locks.hold(name):
            prefix = self._existing_dir(name)
            trash = os.path.join(
                self.root, f"{_TRASH_PREFIX}{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            )
            # One atomic rename first: a listing never shows a half-deleted environment.
            os.rename(prefix, trash)
            try:
                shutil.rmtree(trash, ignore_errors=True)
            finally:
                self._changed()

    # --- helpers ---------------------------------------------------------------------------

    def _names(self) -> list[str]:
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return []
        return sorted(e.name for e in entries if not e.name.startswith(".") and _is_env(e.path))

    def _existing_dir(self, name: str) -> str:
        path = os.path.join(self.root, name)
        if not _valid_name(name) or not _is_env(path):
            raise EnvironmentNotFound(name)
        return path

    def _read(self, name: str, prefix: str) -> Environment:
        meta = _read_metadata(prefix)
        stamp = meta.get("created_at")
        created: float | None = None
        if isinstance(stamp, int | float):
            created = float(stamp)
        else:
            with contextlib.suppress(OSError):
                created = os.stat(os.path.join(prefix, "pyvenv.cfg")).st_mtime
        return Environment(
            name=name,
            prefix=prefix,
            python_version=_pyvenv_version(prefix),
            packages=tuple(_packages(prefix)),
            created_at=None if created is None else datetime.fromtimestamp(created, tz=UTC),
        )

    def _changed(self) -> None:
        with self._usage_lock:
            self._usage_generation += 1
            self._usage = None

    def _choose_python(self, wanted: str | None) -> PythonInterpreter:
        """The interpreter for ``wanted`` (``3``, ``3.11``, ``3.11.7``: a prefix of the version).

        Among several matches the server's own interpreter wins, then the newest.
        """
        if wanted is None:
            wanted = self._default_python
            if wanted is None:
                return _own_interpreter()
            if os.sep in wanted:
                return self._default_path_interpreter(wanted)
        wanted = wanted.strip().removeprefix("==").removeprefix("=").removesuffix(".*")
        parts = tuple(int(p) for p in wanted.split(".")) if _VERSION_RE.fullmatch(wanted) else ()
        available = self.available_pythons()
        matches = [i for i in available if parts and i.version_tuple[: len(parts)] == parts]
        if not matches:
            shown = ", ".join(i.version for i in available) or "none"
            sentence = f"Python {wanted} is not installed on this machine (available: {shown})"
            found = "".join(f"  {i.version}: {i.executable}\n" for i in available)
            raise PackageOperationFailed(
                "Failed to create environment",
                failed_packages=[f"python={wanted}"],
                error_details=[sentence],
                output=f"{sentence}\nInterpreters found:\n{found or '  (none)'}\n",
            )
        own = _own_interpreter()
        return own if own in matches else matches[0]

    def _default_path_interpreter(self, executable: str) -> PythonInterpreter:
        with self._discover_lock:
            if self._default_probed is None:
                self._default_probed = _probe(executable)
            probed = self._default_probed
        if probed is None:
            sentence = f"The default interpreter '{executable}' does not run"
            raise PackageOperationFailed(
                "Failed to create environment",
                failed_packages=["python"],
                error_details=[sentence],
                output=f"{sentence}: check the default_python setting\n",
            )
        return probed

    def _build(
        self, name: str, work: str, interpreter: PythonInterpreter, specs: list[str]
    ) -> None:
        seed_with_uv = self.uv is not None
        argv = [interpreter.executable, "-m", "venv", "--prompt", name, work]
        if seed_with_uv:
            argv.insert(3, "--without-pip")
        rc, output = self._run(argv, work, readonly=self._interpreter_paths(interpreter.executable))
        if rc == 0 and seed_with_uv:
            rc, seeded = self._seed_pip(work)
            output += seeded
        if rc != 0 or not os.path.exists(_python(work)):
            sentence = f"Could not create a venv with Python {interpreter.version}"
            raise PackageOperationFailed(
                "Failed to create environment",
                failed_packages=[f"python={interpreter.version}"],
                error_details=[sentence],
                output=output,
            )
        with open(os.path.join(work, METADATA_FILE), "w", encoding="utf-8") as fh:
            json.dump(
                {
                    "created_at": time.time(),
                    "python_version": interpreter.version,
                    "python": interpreter.executable,
                    "created_by": "ctm",
                },
                fh,
            )
        if specs:
            self._pip_install(work, specs, "Failed to create environment")

    def _seed_pip(self, prefix: str) -> tuple[int, str]:
        """Put pip in a new venv: uv installs the interpreter's own bundled wheels (0.2 s)
        where ``ensurepip`` takes about 3 s; ``ensurepip`` when they cannot be found."""
        python = _python(prefix)
        rc, listing = self._run([python, "-c", _BUNDLED_WHEELS], prefix)
        wheels = [w for w in listing.splitlines() if w.endswith(".whl") and os.path.isabs(w)]
        if rc == 0 and any(os.path.basename(w).startswith("pip-") for w in wheels):
            assert self.uv is not None
            argv = [self.uv, "pip", "install", "--python", python, "--no-index", "--", *wheels]
            rc, output = self._run(argv, prefix)
            if rc == 0:
                return rc, output
        return self._run([python, "-m", "ensurepip", "--default-pip"], prefix)

    def _pip_install(self, prefix: str, specs: list[str], message: str) -> None:
        _refuse_python(specs, message)
        pip_specs = [_to_pip_spec(s) for s in specs]
        rc, output = self._run(self._install_argv(prefix, "--", *pip_specs), prefix)
        if rc == 0:
            return
        failures = _parse_failures(output, specs)
        if failures and all(f.reason in _MISSING for f in failures):
            more, probed = self._probe_missing(prefix, specs, failures)
            failures = sorted([*failures, *more], key=lambda f: specs.index(f.spec))
            output += probed
        if not failures:
            failures = [_Failure(s, "unknown") for s in specs]
        raise _failed(message, self._wheel_reasons(failures), output)

    def _wheel_reasons(self, failures: list[_Failure]) -> list[_Failure]:
        """With ``only_binary``, pip reports a package that has only an sdist as not found:
        say that only wheels were looked for."""
        if not self.only_binary:
            return failures
        return [
            _Failure(f.spec, "not_found_wheel") if f.reason == "not_found" else f
            for f in failures
        ]

    def _probe_missing(
        self, prefix: str, specs: list[str], known: list[_Failure]
    ) -> tuple[list[_Failure], str]:
        """pip stops at the first spec it cannot find (uv with ``only_binary`` also at the
        first with no wheel): ask about each other spec alone.

        Returns the specs found missing too and the output of those probes.
        """
        seen = {f.spec for f in known}
        found: list[_Failure] = []
        outputs: list[str] = []
        for spec in [s for s in specs if s not in seen][:_PROBE_LIMIT]:
            argv = self._install_argv(prefix, "--dry-run", "--no-deps", "--", _to_pip_spec(spec))
            rc, output = self._run(argv, prefix)
            missing = [f for f in _parse_failures(output, [spec]) if f.reason in _MISSING]
            if rc != 0 and missing:
                found.append(missing[0])
                outputs.append(f"\n--- '{spec}' on its own (dry run) ---\n{output}")
        return found, "".join(outputs)

    def _install_argv(self, prefix: str, *args: str) -> list[str]:
        # ``args`` may hold ``--`` (specs follow): every option goes before them.
        only_binary = ["--only-binary", ":all:"] if self.only_binary else []
        if self.uv is not None:
            flags = [*_uv_index_flags(os.environ), *only_binary]
            return [self.uv, "pip", "install", "--python", _python(prefix), *flags, *args]
        pip_flags = [*_PIP_FLAGS, "--progress-bar", "off", *only_binary]
        return [*self._pip(prefix), "install", *pip_flags, *args]

    def _pip(self, prefix: str) -> list[str]:
        if _has_pip(prefix) or not _host_has_pip():
            return [_python(prefix), "-m", "pip"]
        # The environment lost its pip: the server's pip can still work on it (pip >= 22.3).
        return [sys.executable, "-m", "pip", "--python", _python(prefix)]

    def _run(
        self, argv: list[str], prefix: str, readonly: Sequence[str] = ()
    ) -> tuple[int, str]:
        """One pip/uv/venv command on ``prefix``: in the sandbox when there is one, as the
        installer, able to write ``prefix`` and the installer's cache only."""
        if self._sandbox is None:
            return _run(argv)
        installer = self._installer
        env = _child_env()
        writable = [prefix]
        if installer is not None:
            env.update(installer.environment())
        if self.uv is not None and argv and argv[0] == self.uv:
            argv = [os.path.realpath(self.uv), *argv[1:]]  # only its real folder is bound
        ro = [
            *readonly,
            *self._interpreter_paths(_python(prefix)),
            *self._tool_paths(),
            *_find_links(env),
        ]
        command = self._sandbox.command(
            argv, cwd=prefix, readonly=ro, writable=writable, network=True,
            uid=None if installer is None else installer.uid,
            gid=None if installer is None else installer.gid,
        )
        return _run(command, env=env)

    def _interpreter_paths(self, python: str) -> list[str]:
        """What an interpreter needs to start: its venv's base installation, its real file."""
        prefix = os.path.dirname(os.path.dirname(python))
        hidden = self._sandbox.hidden if self._sandbox is not None else ()
        return [prefix, *interpreter_roots(prefix, python, hidden)]

    def _tool_paths(self) -> list[str]:
        """uv, and the server's own interpreter (its pip works on a venv that lost its own)."""
        paths = [os.path.dirname(os.path.realpath(self.uv))] if self.uv else []
        paths += [sys.prefix, sys.base_prefix]
        return paths

    def _give(self, path: str, *, recursive: bool = False) -> None:
        """Make ``path`` the installer's (under root), so later changes can write it."""
        installer = self._installer
        if self._sandbox is None or installer is None or installer.uid is None:
            return
        uid, gid = installer.uid, installer.gid if installer.gid is not None else installer.uid
        os.lchown(path, uid, gid)
        if recursive:
            for top, dirs, files in os.walk(path):
                for name in dirs + files:
                    with contextlib.suppress(FileNotFoundError):
                        os.lchown(os.path.join(top, name), uid, gid)

    def _remove_stale_temporaries(self) -> None:
        """Remove work directories a killed process left behind (its pid is gone)."""
        try:
            entries = list(os.scandir(self.root))
        except OSError:
            return
        for entry in entries:
            if not entry.name.startswith((_TMP_PREFIX, _TRASH_PREFIX)):
                continue
            parts = entry.name.rsplit("-", 2)
            if len(parts) == 3 and parts[1].isdigit() and not _pid_alive(int(parts[1])):
                shutil.rmtree(entry.path, ignore_errors=True)


# --- locks -----------------------------------------------------------------------------------


class _NameLocks:
    """One lock per environment name: changes to one environment are serialized, others not."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.RLock] = {}

    @contextlib.contextmanager
    def hold(self, *names: str) -> Iterator[None]:
        with self._guard:
            locks = [self._locks.setdefault(n, threading.RLock()) for n in sorted(set(names))]
        with contextlib.ExitStack() as stack:
            for lock in locks:
                stack.enter_context(lock)
            yield


# --- names and files -------------------------------------------------------------------------


def _valid_name(name: str) -> bool:
    return (
        bool(name)
        and "/" not in name
        and os.sep not in name
        and "\0" not in name
        and not name.startswith(".")
    )


def _check_new_name(name: str) -> None:
    if not _valid_name(name):
        raise InvalidEnvironmentName(name, "Environment name must not hold '/' or start with '.'")


def _is_env(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "pyvenv.cfg")) and not os.path.islink(path)


def _python(prefix: str) -> str:
    return os.path.join(prefix, "bin", "python")


def _site_packages(prefix: str) -> list[str]:
    lib = os.path.join(prefix, "lib")
    try:
        names = sorted(n for n in os.listdir(lib) if n.startswith("python"))
    except OSError:
        return []
    return [os.path.join(lib, n, "site-packages") for n in names]


def _has_pip(prefix: str) -> bool:
    return any(
        os.path.isfile(os.path.join(sp, "pip", "__init__.py")) for sp in _site_packages(prefix)
    )


@functools.cache
def _host_has_pip() -> bool:
    return importlib.util.find_spec("pip") is not None


def _packages(prefix: str) -> list[Package]:
    """Installed distributions from ``*.dist-info/METADATA`` (and legacy ``*.egg-info``)."""
    found: dict[str, Package] = {}
    for sp in _site_packages(prefix):
        try:
            entries = list(os.scandir(sp))
        except OSError:
            continue
        for entry in entries:
            if entry.name.endswith(".dist-info"):
                meta = os.path.join(entry.path, "METADATA")
            elif entry.name.endswith(".egg-info"):
                meta = os.path.join(entry.path, "PKG-INFO") if entry.is_dir() else entry.path
            else:
                continue
            package = _read_headers(meta)
            if package is not None:
                found.setdefault(normalize_package_name(package.name), package)
    return [found[k] for k in sorted(found)]


def _open_own(path: str) -> TextIO:
    """A text file of an environment, opened without following a symlink: installs (package
    code) may have written the tree, and the server reads it with its own rights."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"not a regular file: {path}")
        return open(fd, encoding="utf-8", errors="replace")  # noqa: SIM115 - caller closes
    except BaseException:
        os.close(fd)
        raise


def _read_headers(path: str) -> Package | None:
    name = version = None
    try:
        with _open_own(path) as fh:
            for line in fh:
                if not line.strip():
                    break  # the headers end at the first blank line; the long description follows
                if line.startswith("Name:"):
                    name = line[5:].strip()
                elif line.startswith("Version:"):
                    version = line[8:].strip()
                if name and version:
                    break
    except OSError:
        return None
    return Package(name, version) if name and version else None


def _pyvenv_cfg(prefix: str) -> dict[str, str]:
    values: dict[str, str] = {}
    try:
        with _open_own(os.path.join(prefix, "pyvenv.cfg")) as fh:
            for line in fh:
                key, sep, value = line.partition("=")
                if sep:
                    values[key.strip().lower()] = value.strip()
    except OSError:
        pass
    return values


def _pyvenv_version(prefix: str) -> str | None:
    cfg = _pyvenv_cfg(prefix)
    raw = cfg.get("version_info") or cfg.get("version") or ""
    match = re.match(r"\d+(?:\.\d+){0,2}", raw)
    return match.group(0) if match else None


def _read_metadata(prefix: str) -> dict[str, object]:
    try:
        with _open_own(os.path.join(prefix, METADATA_FILE)) as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _relocate(
    prefix: str,
    target: str,
    *,
    old_name: str,
    new_name: str,
    old_prefix: str | None = None,
) -> None:
    """Rewrite the absolute paths a venv holds so that it works once moved to ``target``.

    A venv is not relocatable: pip's scripts in ``bin/`` carry ``#!<prefix>/bin/python``,
    ``activate*`` set ``VIRTUAL_ENV=<prefix>`` and show the name in the prompt. The files are
    read at ``prefix`` (where the venv is now); the path written in them was ``old_prefix``.

    The server does this with its own rights in a tree that installs (package code) could
    write: no symlink is ever followed (``O_NOFOLLOW`` on every open, the new file created
    exclusively, mode and times set on its descriptor), and only regular files are touched.
    """
    old = os.fsencode(old_prefix or prefix)
    new = os.fsencode(target)
    path_re = re.compile(re.escape(old) + rb"(?=[/\"'\s]|$)", re.MULTILINE)
    prompt_re = None
    if old_name != new_name:
        prompt_re = re.compile(rb"(\(|\"|')" + re.escape(old_name.encode()) + rb"(\)|\"|')")
    bindir = os.path.join(prefix, "bin")
    candidates = [os.path.join(prefix, "pyvenv.cfg")]
    with contextlib.suppress(OSError):
        candidates += [e.path for e in os.scandir(bindir) if e.is_file(follow_symlinks=False)]
    for path in candidates:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            continue  # a symlink, gone, or unreadable: never followed, never rewritten
        with open(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_size > _SCRIPT_MAX_BYTES:
                continue
            data = fh.read()
        if data.startswith(b"\x7fELF") or b"\0" in data[:1024]:
            continue
        changed = _long_shebang(path_re.sub(lambda _: new, data))
        base = os.path.basename(path)
        if prompt_re is not None and (base.startswith("activate") or base == "pyvenv.cfg"):
            changed = b"\n".join(
                prompt_re.sub(lambda m: m.group(1) + new_name.encode() + m.group(2), line)
                if re.search(rb"prompt|PROMPT|PS1|printf", line)
                else line
                for line in changed.split(b"\n")
            )
        if changed == data:
            continue
        # A new file, not a rewrite in place: never a half-written script, and a hard link
        # (uv links from its cache) is not changed under another environment.
        tmp = f"{path}.ctm-tmp-{uuid.uuid4().hex[:8]}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        out = os.open(tmp, flags, 0o600)
        try:
            with open(out, "wb", closefd=False) as fh:
                fh.write(changed)
            # No set-id bits: the server must never hand out a set-uid file it wrote.
            os.fchmod(out, st.st_mode & 0o777)
            os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
        finally:
            os.close(out)
        os.replace(tmp, path)


_SH_EXEC = b"#!/bin/sh\n'''exec' \"%s\" \"$0\" \"$@\"\n' '''"


def _long_shebang(script: bytes) -> bytes:
    """A ``#!`` line the kernel may cut (over 127 bytes) in the ``/bin/sh`` form pip uses."""
    first, sep, rest = script.partition(b"\n")
    if not first.startswith(b"#!") or len(first) <= 127 or b" " in first or b'"' in first:
        return script
    return _SH_EXEC % first[2:].strip() + sep + rest


# --- interpreters ----------------------------------------------------------------------------


def _own_interpreter() -> PythonInterpreter:
    return PythonInterpreter(
        ".".join(map(str, sys.version_info[:3])), os.path.abspath(sys.executable)
    )


def _ask(argv: list[str]) -> subprocess.CompletedProcess[str] | None:
    """Run a short question to a tool (a Python's version, uv's), with the children's
    environment and a timeout; None when it could not run or took too long."""
    try:
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=20,
            stdin=subprocess.DEVNULL,
            env=_child_env(),
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None


def _probe(executable: str) -> PythonInterpreter | None:
    proc = _ask([executable, "-c", _PY_SCRIPT])
    if proc is None:
        return None
    lines = proc.stdout.splitlines()
    if proc.returncode != 0 or len(lines) != 2 or not re.fullmatch(r"\d+\.\d+\.\d+", lines[1]):
        return None
    # A pyenv shim is a script whose choice depends on the current directory: keep the real
    # interpreter it led to, so the same version is used every time.
    return PythonInterpreter(lines[1], lines[0])


def _discover(extra: Mapping[str, str]) -> list[PythonInterpreter]:
    """``sys.executable``, the configured ones, then ``python3``/``python3.X`` on PATH."""
    candidates: list[str] = list(extra.values())
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        try:
            names = sorted(os.listdir(directory or "."))
        except OSError:
            continue
        candidates += [os.path.join(directory, n) for n in names if _PYTHON_ON_PATH.fullmatch(n)]
    found = [_own_interpreter()]
    seen = {os.path.realpath(sys.executable)}
    for candidate in candidates:
        real = os.path.realpath(candidate)
        if real in seen or not os.access(candidate, os.X_OK):
            continue
        seen.add(real)
        probed = _probe(candidate)
        if probed is None:
            continue
        real_exe = os.path.realpath(probed.executable)
        if real_exe in seen and real_exe != real:
            continue
        seen.add(real_exe)
        found.append(probed)
    found.sort(key=lambda i: i.version_tuple, reverse=True)
    return found


def _uv_candidates() -> list[str]:
    """Where uv may be, best first: the one installed with ctm (the ``uv`` package, a
    dependency: ``uv.find_uv_bin()``, found whatever the server's PATH), the one beside the
    server's interpreter, then uv on PATH."""
    found: list[str] = []
    try:
        from uv import find_uv_bin

        found.append(find_uv_bin())
    except (ImportError, FileNotFoundError):
        pass
    beside = os.path.join(os.path.dirname(sys.executable), "uv")
    if os.access(beside, os.X_OK):
        found.append(beside)
    on_path = shutil.which("uv")
    if on_path is not None:
        found.append(on_path)
    return list(dict.fromkeys(os.path.abspath(f) for f in found))


def _uv_version(uv: str) -> str | None:
    """``uv 0.9.2`` when ``uv --version`` runs and says so; None when uv cannot serve."""
    proc = _ask([uv, "--version"])
    if proc is None:
        return None
    words = proc.stdout.split()
    if proc.returncode != 0 or len(words) < 2 or words[0] != "uv":
        return None
    return f"uv {words[1]}"


def _choose_uv(explicit: str | None) -> tuple[str | None, str]:
    """The first uv that runs (``explicit`` alone when given) and how to name the installer;
    ``(None, "pip: <why>")`` when none does."""
    candidates = [explicit] if explicit else _uv_candidates()
    for candidate in candidates:
        version = _uv_version(candidate)
        if version is not None:
            return candidate, f"{version} at {candidate}"
    if not candidates:
        return None, "pip: no uv was found"
    return None, f"pip: uv does not run ({', '.join(candidates)})"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- running pip -----------------------------------------------------------------------------


def _child_env() -> dict[str, str]:
    """The server's environment less ctm's own settings (PIP_* stay: offline installs)."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CTM_") and k not in ("PYTHONPATH", "PYTHONHOME", "__PYVENV_LAUNCHER__")
    }


def _uv_index_flags(env: Mapping[str, str]) -> list[str]:
    """uv does not read ``PIP_*``: carry the index settings users set for pip over to uv."""
    flags: list[str] = []
    if env.get("PIP_NO_INDEX", "").strip().lower() in ("1", "true", "yes", "on"):
        flags.append("--no-index")
    if env.get("PIP_INDEX_URL") and not env.get("UV_INDEX_URL"):
        flags += ["--index-url", env["PIP_INDEX_URL"]]
    for url in env.get("PIP_EXTRA_INDEX_URL", "").split():
        flags += ["--extra-index-url", url]
    for link in env.get("PIP_FIND_LINKS", "").split():
        flags += ["--find-links", link]
    return flags


def _find_links(env: Mapping[str, str]) -> list[str]:
    """Local folders pip or uv are told to find packages in (offline installs)."""
    found = []
    for key in ("PIP_FIND_LINKS", "UV_FIND_LINKS"):
        for link in env.get(key, "").replace(",", " ").split():
            path = link.removeprefix("file://")
            if os.path.isabs(path) and os.path.exists(path):
                found.append(path)
    return found


def _run(argv: list[str], env: Mapping[str, str] | None = None) -> tuple[int, str]:
    """Run one pip/uv command: no shell, no input, stdout and stderr merged in order."""
    try:
        proc = subprocess.run(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else _child_env(),
            check=False,
        )
    except OSError as exc:
        return 127, f"Could not run {argv[0]}: {exc}\n"
    return proc.returncode, proc.stdout.decode("utf-8", errors="replace")


def _failed(message: str, failures: list[_Failure], output: str) -> PackageOperationFailed:
    specs = list(dict.fromkeys(f.spec for f in failures))
    reasons: dict[str, str] = {}
    for f in failures:
        reasons.setdefault(f.spec, f.reason)
    return PackageOperationFailed(
        message,
        failed_packages=specs,
        error_details=[_SENTENCES[reasons[s]].format(s) for s in specs],
        output=output,
    )


def _to_pip_spec(spec: str) -> str:
    """conda's ``name=1.2`` (meaning 1.2.*) as pip's ``name==1.2.*``; other specs unchanged."""
    match = re.fullmatch(rf"({_NAME})=([^=<>!~,]+)", spec.strip())
    if match is None:
        return spec
    name, version = match.groups()
    return f"{name}=={version if version.endswith('*') else version + '.*'}"


def _python_from_specs(
    specs: Sequence[str], python_version: str | None
) -> tuple[list[str], str | None]:
    """A ``python=3.11`` spec at create chooses the interpreter (when no version was given)."""
    rest: list[str] = []
    for spec in specs:
        match = re.fullmatch(r"python\s*={1,2}\s*(\d+(?:\.\d+)*)(?:\.\*)?", spec.strip(), re.I)
        if match is not None and python_version in (None, match.group(1)):
            python_version = match.group(1)
            continue
        rest.append(spec)
    return rest, python_version


def _refuse_python(specs: Sequence[str], message: str) -> None:
    pythonish = [s for s in specs if normalize_package_name(spec_name(s)) == "python"]
    if pythonish:
        raise _failed(
            message,
            [_Failure(s, "python") for s in pythonish],
            "Python itself is not a pip package: a venv's Python is chosen when it is created.\n",
        )


def _requirement_lines(requirements: str) -> list[str]:
    """The requirements of a requirements.txt text, as written (options and comments out)."""
    lines: list[str] = []
    for raw in requirements.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if line and not line.startswith("-"):
            lines.append(line)
    return lines


_MISSING = ("not_found", "no_wheel")
"""Reasons a resolver stops at the first such spec: the others are probed one by one."""
_NOT_FOUND = [
    re.compile(r"No matching distribution found for (\S+)"),
    re.compile(r"Could not find a version that satisfies the requirement (\S+)"),
    # uv
    re.compile(r"(\S+) was not found in the (?:package registry|provided package locations)"),
    re.compile(r"there is no version of (\S+?)(?:,|\s|$)"),
]
# uv with --only-binary :all: (pip only says "No matching distribution found")
_NO_WHEEL = [
    re.compile(r"Wheels are required for `([^`]+)`"),
    re.compile(r"(\S+) has no usable wheels"),
]
_INVALID = [
    re.compile(r"Invalid requirement: '([^']*)'"),
    re.compile(r"Failed to parse: `([^`]*)`"),
]
_BUILD = [
    re.compile(r"Failed building wheel for (\S+)"),
    re.compile(r"Could not build wheels for (\S+?),"),
    re.compile(r"Failed to build `?([A-Za-z0-9][A-Za-z0-9._-]*)"),
]
# pip: "Cannot install a==1 and b==2 because these package versions have conflicting
# dependencies." then "The user requested x==1" and "a 1.0 depends on c==2".
_PIP_CONFLICT = re.compile(r"Cannot install (.+?) because these package versions have conflicting")
_PIP_CONFLICT_CAUSE = re.compile(
    rf"^\s+(?:The user requested ({_NAME})|({_NAME}) \S+ depends on ({_NAME}))", re.MULTILINE
)
# uv: "Because all versions of a depend on c==2 and ... you require a and b, we can conclude..."
_UV_CONFLICT = re.compile(r"No solution found when resolving")
_UV_NAMED = re.compile(rf"(?:require|requires|depends? on|versions? of|and|,)\s+({_NAME}\S*)")


def _spec_key(spec: str) -> tuple[str, frozenset[str]]:
    """A spec compared by meaning: normalized name and its set of version clauses."""
    pip_spec = _to_pip_spec(spec.strip())
    name = spec_name(pip_spec)
    clauses = re.sub(r"\s+", "", pip_spec[len(name) :])
    return normalize_package_name(name), frozenset(c for c in clauses.split(",") if c)


def _parse_failures(output: str, requested: Sequence[str]) -> list[_Failure]:
    """Which of the requested specs pip (or uv) could not install, and why."""
    by_name: dict[str, list[str]] = {}
    for spec in requested:
        by_name.setdefault(normalize_package_name(spec_name(spec)), []).append(spec)
    failures: dict[str, str] = {}

    def mark(text: str, reason: str) -> None:
        # The spec as pip/uv print it: the very spec asked for when one matches exactly
        # (``x==9.9`` when ``x`` and ``x==9.9`` were both asked), else every spec of that name.
        text = text.strip("'`\".,")
        candidates = by_name.get(normalize_package_name(spec_name(text)), [])
        exact = [spec for spec in candidates if _spec_key(spec) == _spec_key(text)]
        for spec in exact or candidates:
            failures.setdefault(spec, reason)

    for pattern in _INVALID:
        for m in pattern.finditer(output):
            for spec in requested:
                if spec.strip() == m.group(1).strip():
                    failures.setdefault(spec, "invalid")
    for pattern in _NO_WHEEL:
        for m in pattern.finditer(output):
            mark(m.group(1), "no_wheel")
    for pattern in _NOT_FOUND:
        for m in pattern.finditer(output):
            mark(m.group(1), "not_found")
    for pattern in _BUILD:
        for m in pattern.finditer(output):
            mark(m.group(1), "build")
    for m in _PIP_CONFLICT.finditer(output):
        for part in re.split(r",\s*|\s+and\s+", m.group(1)):
            mark(part, "conflict")
    for m in _PIP_CONFLICT_CAUSE.finditer(output):
        for group in m.groups():
            if group:
                mark(group, "conflict")
    uv_conflict = _UV_CONFLICT.search(output)
    if uv_conflict is not None:
        for m in _UV_NAMED.finditer(output, uv_conflict.end()):
            mark(m.group(1), "conflict")
    return [_Failure(spec, failures[spec]) for spec in requested if spec in failures]
