"""``VenvEnvironmentBackend``: environments as ``python -m venv`` directories, changed with pip.

The embedded default when no conda is installed. Each environment is one directory under
``root``; reads come from the files (``pyvenv.cfg``, ``*.dist-info/METADATA``), changes from the
environment's own pip (or ``uv pip`` when uv is found), always with argument lists, never a shell,
each with a timeout (``_subprocess.run_tool``) and the installers' environment (``_child_env``).

Beside it: ``_venv_tools`` (interpreters, which uv), ``_venv_files`` (what an environment's files
say; moving one), ``_venv_failures`` (what pip and uv said).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime

from ctm_adapters._child_env import environment_for_installer
from ctm_adapters._disk import tree_usage
from ctm_adapters._sandbox import Installer, Sandbox, interpreter_roots
from ctm_adapters._subprocess import run_tool
from ctm_adapters._venv_failures import (
    MISSING_REASONS,
    Failure,
    operation_failed,
    parse_failures,
    python_from_specs,
    refuse_python,
    requirement_lines,
    to_pip_spec,
)
from ctm_adapters._venv_files import (
    METADATA_FILE,
    check_new_name,
    has_pip,
    host_has_pip,
    installed_packages,
    is_env,
    python_path,
    pyvenv_version,
    read_metadata,
    relocate,
    valid_name,
)
from ctm_adapters._venv_tools import (
    PythonInterpreter,
    choose_uv,
    discover,
    find_links,
    own_interpreter,
    probe_interpreter,
    uv_index_flags,
)
from ctm_core.errors import EnvironmentExists, EnvironmentNotFound, PackageOperationFailed
from ctm_core.models import DiskUsage, Environment, RunEnvironment
from ctm_core.validation import normalize_package_name, spec_name

__all__ = ["METADATA_FILE", "PythonInterpreter", "VenvEnvironmentBackend"]

_TMP_PREFIX = ".ctm-new-"
_TRASH_PREFIX = ".ctm-trash-"
_PIP_FLAGS = ("--disable-pip-version-check", "--no-input")
_PROBE_LIMIT = 10
"""At most this many extra specs are probed one by one after pip reports one as not found."""
_BUNDLED_WHEELS = (
    "import ensurepip, glob, os; "
    "print('\\n'.join(glob.glob(os.path.join(os.path.dirname(ensurepip.__file__), "
    "'_bundled', '*.whl'))))"
)
_VERSION_RE = re.compile(r"\d+(?:\.\d+){0,2}")


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
    ``command_timeout``: seconds a venv, pip or uv command may run (None: no limit); then it is
    killed with every process it started, and the change fails with ``BackendFailure`` (the
    environment's lock released, a half-made environment removed).
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
        command_timeout: float | None = 3600.0,
    ) -> None:
        self.root = os.path.abspath(root)
        self._timeout = command_timeout
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
            self.uv, self.tool = choose_uv(uv_executable)
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
        return valid_name(name) and is_env(os.path.join(self.root, name))

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
                self._interpreters = discover(self._extra_interpreters)
            return list(self._interpreters)

    # --- changes ---------------------------------------------------------------------------

    def create(self, name: str, python_version: str | None, specs: Sequence[str]) -> Environment:
        check_new_name(name)
        final = os.path.join(self.root, name)
        with self._name_locks.hold(name):
            if os.path.lexists(final):
                if is_env(final):
                    raise EnvironmentExists(name)
                raise EnvironmentExists(name, f"'{final}' already exists and is not an environment")
            specs, python_version = python_from_specs(specs, python_version)
            refuse_python(specs, "Failed to create environment")
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
                relocate(work, final, old_name=name, new_name=name)
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
            wanted = requirement_lines(requirements)
            fd, path = tempfile.mkstemp(prefix="ctm-requirements-", suffix=".txt")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    fh.write(requirements if requirements.endswith("\n") else requirements + "\n")
                os.chmod(path, 0o644)  # the installer's uid reads it
                rc, output = self._run(
                    self._install_argv(prefix, "-r", path), prefix, readonly=(path,)
                )
                if rc != 0:
                    failures = parse_failures(output, wanted) or [
                        Failure(s, "unknown") for s in wanted
                    ]
                    failures = self._wheel_reasons(failures)
                    raise operation_failed("Failed to install requirements", failures, output)
            finally:
                os.unlink(path)
                self._changed()

    def remove(self, name: str, packages: Sequence[str]) -> None:
        if not packages:
            return
        with self._name_locks.hold(name):
            prefix = self._existing_dir(name)
            installed = {normalize_package_name(p.name) for p in installed_packages(prefix)}
            missing = [p for p in packages if normalize_package_name(spec_name(p)) not in installed]
            if missing:
                raise operation_failed(
                    "Failed to remove packages",
                    [Failure(p, "remove_missing") for p in missing],
                    "\n".join(f"Package '{p}' is not installed in {prefix}" for p in missing),
                )
            names = [spec_name(p) for p in packages]
            if self.uv is not None:
                argv = [self.uv, "pip", "uninstall", "--python", python_path(prefix), "--", *names]
            else:
                argv = [*self._pip(prefix), "uninstall", "-y", *_PIP_FLAGS, "--", *names]
            try:
                rc, output = self._run(argv, prefix)
            finally:
                self._changed()
            if rc != 0:
                raise operation_failed(
                    "Failed to remove packages",
                    [Failure(p, "remove_unknown") for p in packages],
                    output,
                )

    def rename(self, old: str, new: str) -> None:
        check_new_name(new)
        with self._name_locks.hold(old, new):
            source = self._existing_dir(old)
            target = os.path.join(self.root, new)
            if os.path.lexists(target):
                raise EnvironmentExists(new, "Cannot rename environment to an existing name")
            try:
                relocate(source, target, old_name=old, new_name=new)
                self._give(source, recursive=True)
                try:
                    os.rename(source, target)
                except BaseException:
                    relocate(source, source, old_name=new, new_name=old, old_prefix=target)
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
        return sorted(e.name for e in entries if not e.name.startswith(".") and is_env(e.path))

    def _existing_dir(self, name: str) -> str:
        path = os.path.join(self.root, name)
        if not valid_name(name) or not is_env(path):
            raise EnvironmentNotFound(name)
        return path

    def _read(self, name: str, prefix: str) -> Environment:
        meta = read_metadata(prefix)
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
            python_version=pyvenv_version(prefix),
            packages=tuple(installed_packages(prefix)),
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
                return own_interpreter()
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
        own = own_interpreter()
        return own if own in matches else matches[0]

    def _default_path_interpreter(self, executable: str) -> PythonInterpreter:
        with self._discover_lock:
            if self._default_probed is None:
                self._default_probed = probe_interpreter(executable)
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
        if rc != 0 or not os.path.exists(python_path(work)):
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
        python = python_path(prefix)
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
        refuse_python(specs, message)
        pip_specs = [to_pip_spec(s) for s in specs]
        rc, output = self._run(self._install_argv(prefix, "--", *pip_specs), prefix)
        if rc == 0:
            return
        failures = parse_failures(output, specs)
        if failures and all(f.reason in MISSING_REASONS for f in failures):
            more, probed = self._probe_missing(prefix, specs, failures)
            failures = sorted([*failures, *more], key=lambda f: specs.index(f.spec))
            output += probed
        if not failures:
            failures = [Failure(s, "unknown") for s in specs]
        raise operation_failed(message, self._wheel_reasons(failures), output)

    def _wheel_reasons(self, failures: list[Failure]) -> list[Failure]:
        """With ``only_binary``, pip reports a package that has only an sdist as not found:
        say that only wheels were looked for."""
        if not self.only_binary:
            return failures
        return [
            Failure(f.spec, "not_found_wheel") if f.reason == "not_found" else f for f in failures
        ]

    def _probe_missing(
        self, prefix: str, specs: list[str], known: list[Failure]
    ) -> tuple[list[Failure], str]:
        """pip stops at the first spec it cannot find (uv with ``only_binary`` also at the
        first with no wheel): ask about each other spec alone.

        Returns the specs found missing too and the output of those probes.
        """
        seen = {f.spec for f in known}
        found: list[Failure] = []
        outputs: list[str] = []
        for spec in [s for s in specs if s not in seen][:_PROBE_LIMIT]:
            argv = self._install_argv(prefix, "--dry-run", "--no-deps", "--", to_pip_spec(spec))
            rc, output = self._run(argv, prefix)
            missing = [f for f in parse_failures(output, [spec]) if f.reason in MISSING_REASONS]
            if rc != 0 and missing:
                found.append(missing[0])
                outputs.append(f"\n--- '{spec}' on its own (dry run) ---\n{output}")
        return found, "".join(outputs)

    def _install_argv(self, prefix: str, *args: str) -> list[str]:
        # ``args`` may hold ``--`` (specs follow): every option goes before them.
        only_binary = ["--only-binary", ":all:"] if self.only_binary else []
        if self.uv is not None:
            flags = [*uv_index_flags(os.environ), *only_binary]
            return [self.uv, "pip", "install", "--python", python_path(prefix), *flags, *args]
        pip_flags = [*_PIP_FLAGS, "--progress-bar", "off", *only_binary]
        return [*self._pip(prefix), "install", *pip_flags, *args]

    def _pip(self, prefix: str) -> list[str]:
        if has_pip(prefix) or not host_has_pip():
            return [python_path(prefix), "-m", "pip"]
        # The environment lost its pip: the server's pip can still work on it (pip >= 22.3).
        return [sys.executable, "-m", "pip", "--python", python_path(prefix)]

    def _run(self, argv: list[str], prefix: str, readonly: Sequence[str] = ()) -> tuple[int, str]:
        """One pip/uv/venv command on ``prefix``: in the sandbox when there is one, as the
        installer, able to write ``prefix`` and the installer's cache only. Raises
        ``BackendFailure`` when it runs longer than ``command_timeout``."""
        env = environment_for_installer(os.environ)
        if self._sandbox is None:
            return _run(argv, env, self._timeout)
        installer = self._installer
        writable = [prefix]
        if installer is not None:
            env.update(installer.environment())
        if self.uv is not None and argv and argv[0] == self.uv:
            argv = [os.path.realpath(self.uv), *argv[1:]]  # only its real folder is bound
        ro = [
            *readonly,
            *self._interpreter_paths(python_path(prefix)),
            *self._tool_paths(),
            *find_links(env),
        ]
        command = self._sandbox.command(
            argv,
            cwd=prefix,
            readonly=ro,
            writable=writable,
            network=True,
            uid=None if installer is None else installer.uid,
            gid=None if installer is None else installer.gid,
        )
        return _run(command, env, self._timeout, label=argv)

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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _run(
    argv: list[str],
    env: Mapping[str, str],
    timeout: float | None,
    label: Sequence[str] | None = None,
) -> tuple[int, str]:
    """One installer command through ``run_tool``: stdout and stderr merged in order. A program
    that cannot be started answers 127 and why; one that runs out of time raises
    ``BackendFailure``, after its process group is killed. ``label``: the command a sandbox runs."""
    try:
        done = run_tool(argv, env=env, timeout=timeout, merge_stderr=True, label=label)
    except OSError as exc:
        return 127, f"Could not run {argv[0]}: {exc}\n"
    return done.rc, done.stdout
