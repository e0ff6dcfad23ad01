#!/usr/bin/env python3
"""A fake ``conda`` (or mamba 2 / micromamba) that keeps real prefixes on disk.

Our own code, reproducing the output shapes recorded from conda 26.7.1 in
``tests/data/conda/`` (copied from ``shared/conda-cli-samples``) and the mamba 2.x shapes
described in its ADAPTER-NOTES. Every environment it makes is real: ``conda-meta/`` records (one
JSON per package, ``history``, ``created_at``), package files hard-linked from a package cache,
and ``bin/python`` a symlink to the interpreter running this script with a ``pyvenv.cfg`` beside
it, so a script run with ``PREFIX/bin/python`` really runs inside the env. Its ``pip`` package is
a small fake pip that "installs" a few known names from requirements files.

Knobs (environment variables):

- ``FAKE_CONDA_ROOT`` (required): the root (base) prefix; envs live in ``ROOT/envs``.
- ``FAKE_CONDA_ENVS_DIRS``: envs directories (``os.pathsep``-separated) instead of ``ROOT/envs``.
- ``FAKE_CONDA_FLAVOR``: ``conda`` (default), ``mamba`` or ``micromamba``: answer like mamba 2 /
  micromamba (bare ``--version``, ``info`` keys with spaces, ``list`` as an array,
  ``solver_problems``, errors on stderr only with ``--log-level error``, no ``rename``,
  ``remove --all`` keeps the directory). Without it, a wrapper named ``micromamba``/``mamba``
  answers as that flavor.
- ``FAKE_CONDA_DELAY``: seconds to sleep in each changing command (create, install, remove,
  rename, env remove) before it changes anything.
- ``FAKE_CONDA_FAIL``: comma-separated commands to fail (``create``, ``install``, ``remove``,
  ``rename``, ``env-remove``, ``pip``) or ``all``; a failing create leaves a half-made prefix
  behind, as an interrupted real one can.
- ``FAKE_CONDA_PROGRESS``: ``1`` to write ``\\0``-terminated progress records before the result
  (what conda does when stdout is a TTY).
- ``FAKE_CONDA_LOG``: a file to which each call appends one JSON line: ``argv``, and ``env``,
  the sorted names (never values) of the variables it saw. The fake pip logs there too.

Run it through a wrapper: ``install_fake_conda(bin_dir, "conda")`` writes one that uses the
running interpreter; ``tests/fakes/conda`` is a static one using ``python3`` from PATH.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

CONDA_VERSION = "26.7.1"
MAMBA_VERSION = "2.8.1"
CHANNEL = "file:///srv/channel"
CHANNEL_URLS = [f"{CHANNEL}/linux-64", f"{CHANNEL}/noarch"]
HOST_PY = f"{sys.version_info.major}.{sys.version_info.minor}"
THIS_FILE = os.path.abspath(__file__)

# name -> [(version, build, subdir, depends, payload bytes)]
CHANNEL_PACKAGES: dict[str, list[tuple[str, str, str, list[str], int]]] = {
    "python": [("3.11.7", "shim_0", "linux-64", ["pip"], 0)],
    "pip": [("24.3.1", "pyh_0", "noarch", ["python >=3.8"], 0)],
    "six": [("1.16.0", "pyh_0", "noarch", ["python >=3.8"], 256 * 1024)],
    "attrs": [
        ("23.2.0", "pyh_0", "noarch", ["python >=3.8"], 48 * 1024),
        ("24.2.0", "pyh_0", "noarch", ["python >=3.8"], 64 * 1024),
    ],
    "packaging": [("24.2", "pyh_0", "noarch", ["python >=3.8"], 32 * 1024)],
    "idna": [("3.10", "pyh_0", "noarch", ["python >=3.8"], 16 * 1024)],
    "needs-py2": [("1.0", "pyh_0", "noarch", ["python <3"], 4 * 1024)],
}

PIP_INDEX = {
    "requests": "2.32.3",
    "tomli": "2.0.1",
    "colorama": "0.4.6",
    "six": "1.16.0",
    "attrs": "24.2.0",
    "idna": "3.10",
    "packaging": "24.2",
}

FAKE_PIP_MAIN = r'''
"""A fake pip for ctm's tests: installs names it knows from requirements files."""
import json, os, re, sys, sysconfig, time

INDEX = __INDEX__

def log(argv):
    path = os.environ.get("FAKE_CONDA_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            entry = {"pid": os.getpid(), "argv": ["pip", *argv], "env": sorted(os.environ),
                     "start": time.time()}
            fh.write(json.dumps(entry) + "\n")

def main(argv):
    log(argv)
    if not argv or argv[0] != "install":
        print("ERROR: unknown command", file=sys.stderr)
        return 1
    fail = os.environ.get("FAKE_CONDA_FAIL", "")
    if "pip" in fail.split(",") or fail == "all":
        print("ERROR: Could not install packages due to an OSError: "
              "[Errno 28] No space left on device", file=sys.stderr)
        return 1
    lines = []
    args = iter(argv[1:])
    for arg in args:
        if arg in ("-r", "--requirement"):
            with open(next(args), encoding="utf-8") as fh:
                lines.extend(fh.read().splitlines())
        elif not arg.startswith("-"):
            lines.append(arg)
    wanted = []
    for raw in lines:
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")):
            continue
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*([<>=!~].*)?$", line)
        if m is None:
            print(f"ERROR: Invalid requirement: '{line}'", file=sys.stderr)
            return 1
        wanted.append((m.group(1), line))
    for name, line in wanted:
        print(f"Collecting {line}")
        if name.lower() not in INDEX:
            print(f"ERROR: Could not find a version that satisfies the requirement {line} "
                  "(from versions: none)", file=sys.stderr)
            print(f"ERROR: No matching distribution found for {line}", file=sys.stderr)
            return 1
    site = sysconfig.get_paths()["purelib"]
    done = []
    for name, _line in wanted:
        version = INDEX[name.lower()]
        module = name.lower().replace("-", "_")
        os.makedirs(os.path.join(site, module), exist_ok=True)
        with open(os.path.join(site, module, "__init__.py"), "w") as fh:
            fh.write(f"__version__ = {version!r}\n")
        info = os.path.join(site, f"{module}-{version}.dist-info")
        os.makedirs(info, exist_ok=True)
        with open(os.path.join(info, "METADATA"), "w") as fh:
            fh.write(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        with open(os.path.join(info, "INSTALLER"), "w") as fh:
            fh.write("pip\n")
        done.append(f"{name}-{version}")
    if done:
        print("Successfully installed " + " ".join(done))
    return 0

sys.exit(main(sys.argv[1:]))
'''.replace("__INDEX__", repr(PIP_INDEX))


# --- plumbing ---------------------------------------------------------------------------------


class Exit(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


def env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def flavor() -> str:
    chosen = env("FAKE_CONDA_FLAVOR")
    if chosen:
        return chosen
    invoked = os.path.basename(str(globals().get("INVOKED_AS") or sys.argv[0]))
    if invoked.startswith("micromamba"):
        return "micromamba"
    if invoked.startswith("mamba"):
        return "mamba"
    return "conda"


def is_mamba() -> bool:
    return flavor() in ("mamba", "micromamba")


def failing(command: str) -> bool:
    wanted = [w.strip() for w in env("FAKE_CONDA_FAIL").split(",") if w.strip()]
    return "all" in wanted or command in wanted


def delay() -> None:
    seconds = float(env("FAKE_CONDA_DELAY", "0") or 0)
    if seconds > 0:
        time.sleep(seconds)


def out(data: Any, indent: int = 2, sort_keys: bool = False) -> None:
    sys.stdout.write(json.dumps(data, indent=indent, sort_keys=sort_keys) + "\n")


class Opts:
    def __init__(self) -> None:
        self.positionals: list[str] = []
        self.name: str | None = None
        self.prefix: str | None = None
        self.root: str | None = None
        self.log_level = "critical"
        self.clone: str | None = None
        self.json = False
        self.yes = False
        self.all = False
        self.flags: set[str] = set()


VALUE_OPTS = {
    "-n": "name",
    "--name": "name",
    "-p": "prefix",
    "--prefix": "prefix",
    "-r": "root",
    "--root-prefix": "root",
    "--log-level": "log_level",
    "--clone": "clone",
    "-c": "channel",
    "--channel": "channel",
    "--revision": "revision",
}
FLAG_OPTS = {
    "--json": "json",
    "-y": "yes",
    "--yes": "yes",
    "--all": "all",
    "-d": "dry-run",
    "--dry-run": "dry-run",
    "--revisions": "revisions",
    "--explicit": "explicit",
    "--md5": "md5",
    "-q": "quiet",
    "--quiet": "quiet",
    "--envs": "envs",
    "-e": "envs",
    "--base": "base",
    "--force": "force",
    "-V": "version",
    "--version": "version",
}


def usage_error(message: str) -> Exit:
    if is_mamba():
        sys.stderr.write(f"{message}\nRun with --help for more information.\n")
        return Exit(109)
    sys.stderr.write(
        f"usage: conda [-h] [-v] [--no-plugins] [-V] COMMAND ...\nconda: error: {message}\n"
    )
    return Exit(2)


def parse(argv: list[str]) -> Opts:
    opts = Opts()
    items = iter(argv)
    for arg in items:
        if arg == "--":
            opts.positionals.extend(items)
            break
        key, _, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if key in VALUE_OPTS:
            value = inline if inline else next(items, None)
            if value is None:
                raise usage_error(f"argument {key}: expected one argument")
            attr = VALUE_OPTS[key]
            if hasattr(opts, attr):
                setattr(opts, attr, value)
        elif arg in FLAG_OPTS:
            attr = FLAG_OPTS[arg]
            if attr in ("json", "yes", "all"):
                setattr(opts, attr, True)
            opts.flags.add(attr)
        elif arg.startswith("-") and arg != "-":
            if is_mamba():
                raise usage_error(f"The following argument was not expected: {arg}")
            raise usage_error(f"unrecognized arguments: {arg}")
        else:
            opts.positionals.append(arg)
    return opts


def log_call(argv: list[str] | None) -> None:
    """One line when a call starts (argv, variable names, time) and one when it ends."""
    path = env("FAKE_CONDA_LOG")
    if not path:
        return
    if argv is None:
        entry: dict[str, Any] = {"pid": os.getpid(), "end": time.time()}
    else:
        entry = {
            "pid": os.getpid(),
            "argv": [flavor(), *argv],
            "env": sorted(os.environ),
            "start": time.time(),
        }
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry) + "\n")


def refuse_active(prefix: str, what: str) -> None:
    """conda refuses to remove or rename the environment named by CONDA_PREFIX."""
    if not is_mamba() and os.path.realpath(env("CONDA_PREFIX") or "/nonexistent") == (
        os.path.realpath(prefix)
    ):
        raise Exit(
            conda_error(
                "CondaEnvironmentError",
                f"Cannot {what} current environment. Deactivate and run conda {what} again.",
            )
        )


# --- the installation ----------------------------------------------------------------------


class Install:
    def __init__(self, opts: Opts) -> None:
        root = opts.root if (opts.root and is_mamba()) else env("FAKE_CONDA_ROOT")
        if not root:
            sys.stderr.write("fake conda: FAKE_CONDA_ROOT is not set\n")
            raise Exit(2)
        self.root = os.path.abspath(root)
        dirs = env("FAKE_CONDA_ENVS_DIRS")
        self.envs_dirs = [os.path.abspath(d) for d in dirs.split(os.pathsep) if d] or [
            os.path.join(self.root, "envs")
        ]
        self.pkgs_dir = os.path.join(self.root, "pkgs")
        os.makedirs(os.path.join(self.root, "conda-meta"), exist_ok=True)
        os.makedirs(self.pkgs_dir, exist_ok=True)
        for d in self.envs_dirs:
            with contextlib.suppress(OSError):
                os.makedirs(d, exist_ok=True)

    def first_writable(self) -> str:
        for d in self.envs_dirs:
            if os.access(d, os.W_OK):
                return d
        return self.envs_dirs[0]

    def by_name(self, name: str) -> str:
        for d in self.envs_dirs:
            if is_env(os.path.join(d, name)):
                return os.path.join(d, name)
        return os.path.join(self.first_writable(), name)

    def envs(self) -> list[str]:
        found: list[str] = []
        for d in self.envs_dirs:
            try:
                names = sorted(os.listdir(d))
            except OSError:
                continue
            found.extend(os.path.join(d, n) for n in names if is_env(os.path.join(d, n)))
        return found


def is_env(prefix: str) -> bool:
    return os.path.isdir(os.path.join(prefix, "conda-meta"))


def check_name(name: str) -> None:
    if "/" in name or os.sep in name:
        raise Exit(
            conda_error("CondaValueError", "Environment names cannot contain path separators")
        )
    if name in ("base", "root"):
        raise Exit(conda_error("CondaValueError", f"'{name}' is a reserved environment name"))
    if not name or " " in name or ":" in name or "#" in name:
        raise Exit(conda_error("CondaValueError", f"Invalid environment name: '{name}'"))


def target(inst: Install, opts: Opts, *, creating: bool = False) -> str:
    if opts.prefix:
        return os.path.abspath(opts.prefix)
    if opts.name:
        if not is_mamba():
            check_name(opts.name)
        elif "/" in opts.name:
            mamba_fail("Invalid environment name", rc=1)
        return inst.by_name(opts.name)
    if is_mamba():
        mamba_fail("No active target prefix", rc=1)
    raise Exit(
        conda_error(
            "CondaValueError",
            'either -n NAME or -p PREFIX option required,\ntry "conda create -h" for more details',
        )
    )


# --- errors in conda's and mamba's shapes --------------------------------------------------


def conda_error(exception_name: str, message: str, **extra: Any) -> int:
    body = {
        "caused_by": "None",
        "error": f"{exception_name}: {message}",
        "exception_name": exception_name,
        "exception_type": f"<class 'conda.exceptions.{exception_name}'>",
        "message": message,
        **extra,
    }
    sys.stdout.write(json.dumps(body, indent=2, sort_keys=True) + "\n\n\n")
    return 1


def mamba_log(level: str, message: str) -> None:
    order = ["trace", "debug", "info", "warning", "error", "critical", "off"]
    threshold = OPTS.log_level if OPTS is not None else "critical"
    if threshold not in order:
        threshold = "critical"
    if order.index(level) >= order.index(threshold) and threshold != "off":
        sys.stderr.write(f"{level:<8} libmamba {message}\n")


def mamba_fail(message: str, rc: int = 1, stdout: Any = None) -> None:
    mamba_log("error", message)
    mamba_log("critical", message.splitlines()[0])
    if OPTS is not None and OPTS.json:
        out(stdout if stdout is not None else {}, indent=4)
    raise Exit(rc)


def env_not_found(prefix: str) -> None:
    if is_mamba():
        mamba_fail(
            f"No prefix found at: {prefix}\nEnvironment must first be created with "
            '"micromamba create -n {env_name} ..."'
        )
    raise Exit(
        conda_error(
            "EnvironmentLocationNotFound", f"Not a conda environment: {prefix}", location=prefix
        )
    )


def traceback_for(spec: str, version: str) -> None:
    sys.stderr.write(
        "Traceback (most recent call last):\n"
        '  File "<ROOT_PREFIX>/lib/python3.11/site-packages/conda/models/version.py", '
        "line 44, in __call__\n"
        "    return cls._cache_[arg]\n"
        f"KeyError: '{version}'\n\n"
        "During handling of the above exception, another exception occurred:\n\n"
        "Traceback (most recent call last):\n"
        '  File "<ROOT_PREFIX>/lib/python3.11/site-packages/conda/models/version.py", '
        "line 553, in get_matcher\n"
        '    raise InvalidVersionSpec(vspec_str, "invalid operator")\n'
        f"conda.exceptions.InvalidVersionSpec: Invalid version '{version}': invalid operator\n\n"
        "The above exception was the direct cause of the following exception:\n\n"
        "Traceback (most recent call last):\n"
        '  File "<HOST_PYTHON>/lib/python3.11/json/encoder.py", line 180, in default\n'
        "    raise TypeError(f'Object of type {o.__class__.__name__} '\n"
        "TypeError: Object of type InvalidVersionSpec is not JSON serializable\n"
    )
    raise Exit(1)


# --- specs and the channel -----------------------------------------------------------------

SPEC = re.compile(r"^([A-Za-z0-9_][A-Za-z0-9_.\-]*)\s*(.*)$")
TERM = re.compile(r"^(==|!=|>=|<=|~=|>|<|=)?\s*([A-Za-z0-9_.*+!]+)$")


class Spec:
    def __init__(self, text: str) -> None:
        self.text = text
        match = SPEC.match(text.strip())
        if match is None:
            if is_mamba():
                mamba_fail(f"Invalid spec '{text}'")
            traceback_for(text, text)
        assert match is not None
        self.name = match.group(1).lower()
        self.constraint = match.group(2).strip()
        for alternative in self.constraint.split("|") if self.constraint else []:
            for term in alternative.split(","):
                if TERM.match(term.strip()) is None:
                    if is_mamba():
                        mamba_fail(f"Invalid spec '{text}': bad version '{self.constraint}'")
                    traceback_for(text, self.constraint)

    def matches(self, version: str) -> bool:
        if not self.constraint:
            return True
        return any(
            all(term_matches(term.strip(), version) for term in alt.split(","))
            for alt in self.constraint.split("|")
        )

    def match_spec(self) -> str:
        """How conda prints it: ``python=3.99``, ``attrs[version='>=99']``."""
        c = self.constraint
        if not c:
            return self.name
        if c.startswith("=") or c[0].isdigit():
            return f"{self.name}{c if c.startswith('=') else '=' + c}"
        return f"{self.name}[version='{c}']"


def vkey(version: str) -> tuple[Any, ...]:
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in version.split("."))


def term_matches(term: str, version: str) -> bool:
    match = TERM.match(term)
    if match is None:
        return False
    op, wanted = match.group(1) or "", match.group(2)
    if "*" in wanted:
        return fnmatch.fnmatch(version, wanted) and op in ("", "=", "==")
    if op in ("", "="):
        return version == wanted or version.startswith(wanted + ".")
    if op == "==":
        return version == wanted
    if op == "!=":
        return version != wanted
    if op == "~=":
        head = wanted.rsplit(".", 1)[0]
        return vkey(version) >= vkey(wanted) and (version == head or version.startswith(head + "."))
    a, b = vkey(version), vkey(wanted)
    return {">=": a >= b, "<=": a <= b, ">": a > b, "<": a < b}[op]


class Record:
    def __init__(
        self, name: str, version: str, build: str, subdir: str, depends: list[str], size: int
    ) -> None:
        self.name, self.version, self.build, self.subdir = name, version, build, subdir
        self.depends, self.size = depends, size

    @property
    def dist(self) -> str:
        return f"{self.name}-{self.version}-{self.build}"

    @property
    def fn(self) -> str:
        return f"{self.dist}.tar.bz2"

    @property
    def url(self) -> str:
        return f"{CHANNEL}/{self.subdir}/{self.fn}"

    def md5(self) -> str:
        import hashlib

        return hashlib.md5(self.dist.encode()).hexdigest()

    def sha256(self) -> str:
        import hashlib

        return hashlib.sha256(self.dist.encode()).hexdigest()

    def link_item(self) -> dict[str, Any]:
        return {
            "base_url": CHANNEL,
            "build_number": 0,
            "build_string": self.build,
            "channel": "channel",
            "dist_name": self.dist,
            "name": self.name,
            "platform": self.subdir,
            "version": self.version,
        }

    def full(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "build": self.build,
            "build_number": 0,
            "channel": f"{CHANNEL}/{self.subdir}",
            "subdir": self.subdir,
            "fn": self.fn,
            "md5": self.md5(),
            "url": self.url,
            "sha256": self.sha256(),
            "arch": None,
            "platform": None,
            "depends": self.depends,
            "constrains": [],
            **(
                {"noarch": "python", "package_type": "noarch_python"}
                if self.subdir == "noarch"
                else {}
            ),
            "license": "PSF-2.0" if self.name == "python" else "MIT",
            "timestamp": 1795492658000,
            "size": self.size + 742,
        }


def channel(name: str) -> list[Record]:
    return [Record(name, *entry) for entry in CHANNEL_PACKAGES.get(name, [])]


def best(spec: Spec) -> Record | None:
    matching = [r for r in channel(spec.name) if spec.matches(r.version)]
    return max(matching, key=lambda r: vkey(r.version)) if matching else None


def installed(prefix: str) -> dict[str, dict[str, Any]]:
    records = {}
    meta = os.path.join(prefix, "conda-meta")
    for fn in sorted(os.listdir(meta)) if os.path.isdir(meta) else []:
        if fn.endswith(".json"):
            with open(os.path.join(meta, fn), encoding="utf-8") as fh:
                data = json.load(fh)
            records[data["name"]] = data
    return records


def check_available(specs: list[Spec]) -> None:
    missing = sorted({s.match_spec() for s in specs if best(s) is None})
    if not missing:
        return
    if is_mamba():
        problems = [f"nothing provides requested {m}" for m in missing]
        lines = "\n".join(
            f"    └─ {m} does not exist (perhaps a typo or a missing channel)." for m in missing
        )
        mamba_log(
            "error",
            "Could not solve for environment specs\n"
            f"    The following package could not be installed\n{lines}",
        )
        mamba_log("critical", "Could not solve for environment specs")
        out({"success": False, "solver_problems": problems}, indent=4)
        raise Exit(1)
    listed = "".join(f"\n  - {m}" for m in missing)
    channels = "".join(f"\n  - {u}" for u in CHANNEL_URLS)
    message = (
        f"The following packages are not available from current channels:\n{listed}\n\n"
        f"Current channels:\n{channels}\n\n"
        "To search for alternate channels that may provide the conda package you're\n"
        "looking for, navigate to\n\n    https://anaconda.org\n\n"
        "and use the search bar at the top of the page.\n"
    )
    raise Exit(
        conda_error(
            "PackagesNotFoundInChannelsError",
            message,
            channel_urls=CHANNEL_URLS,
            channels_formatted=channels,
            packages=missing,
            packages_formatted=listed,
        )
    )


def resolve(specs: list[Spec], have: dict[str, dict[str, Any]]) -> list[Record]:
    """What to link: the best match of each spec not already satisfied, and their dependencies."""
    chosen: dict[str, Record] = {}
    queue = list(specs)
    while queue:
        spec = queue.pop(0)
        if spec.name in chosen:
            continue
        current = have.get(spec.name)
        if current is not None and spec.matches(current["version"]):
            continue
        record = best(spec)
        if record is None:
            continue
        chosen[spec.name] = record
        for dep in record.depends:
            dep_spec = Spec(dep)
            if best(dep_spec) is None:
                unsatisfiable(record, dep_spec)
            queue.append(dep_spec)
    return list(chosen.values())


def unsatisfiable(record: Record, dep: Spec) -> None:
    if is_mamba():
        problem = (
            f"package {record.dist} requires {dep.name} {dep.constraint}, "
            "but none of the providers can be installed"
        )
        mamba_log(
            "error",
            "Could not solve for environment specs\n"
            "    The following packages are incompatible\n"
            f"    ├─ {record.name} =* is installable and it requires\n"
            f"    │  └─ {dep.name} {dep.constraint} , which can be installed;\n"
            f"    └─ {dep.name} 3.11.* is not installable because it conflicts with "
            "any installable versions previously reported.",
        )
        mamba_log("critical", "Could not solve for environment specs")
        out({"success": False, "solver_problems": [problem]}, indent=4)
        raise Exit(1)
    message = (
        "The following specifications were found\nto be incompatible with the existing python "
        "installation in your environment:\n\nSpecifications:\n\n"
        f"  - {record.name} -> {dep.name}[version='{dep.constraint}']\n\n"
        "Your python: python=3.11\n\n"
        "If python is on the left-most side of the chain, that's the version you've asked for.\n"
        "When python appears to the right, that indicates that the thing on the left is somehow\n"
        "not available for the python version you are constrained to. Note that conda will not\n"
        "change your python version to a different minor version unless you explicitly specify\n"
        "that.\n\nNote that strict channel priority may have removed packages required for "
        "satisfiability."
    )
    raise Exit(
        conda_error(
            "UnsatisfiableError",
            message,
            guidance={
                "cause": "Some packages are incompatible with the current Python version",
                "summary": "Conda could not find a compatible set of packages to satisfy the "
                "requested specifications.",
            },
            unsatisfiable=[],
        )
    )


# --- linking -------------------------------------------------------------------------------


def host_python() -> str:
    return os.path.realpath(sys.executable)


def payload(record: Record) -> dict[str, str]:
    """relative path -> content of the package's files (python's symlinks are made apart)."""
    site = f"lib/python{HOST_PY}/site-packages"
    if record.name == "python":
        home = os.path.dirname(host_python())
        return {
            "pyvenv.cfg": f"home = {home}\ninclude-system-site-packages = false\n"
            f"version = {record.version}\n",
            f"{site}/_ctm_shim.pth": "",
        }
    if record.name == "pip":
        return {
            f"{site}/pip/__init__.py": '__version__ = "24.3.1"\n',
            f"{site}/pip/__main__.py": FAKE_PIP_MAIN,
            f"{site}/pip-24.3.1.dist-info/INSTALLER": "conda\n",
            f"{site}/pip-24.3.1.dist-info/METADATA": "Name: pip\nVersion: 24.3.1\n",
        }
    module = record.name.replace("-", "_")
    padding = "#" * 79 + "\n"
    body = f"__version__ = {record.version!r}\n" + padding * (record.size // 80)
    return {
        f"{site}/{module}/__init__.py": body,
        f"{site}/{module}-{record.version}.dist-info/INSTALLER": "conda\n",
        f"{site}/{module}-{record.version}.dist-info/METADATA": (
            f"Name: {record.name}\nVersion: {record.version}\n"
        ),
    }


def extract(inst: Install, record: Record) -> tuple[str, bool]:
    """The package's directory in the package cache; True when it was fetched just now."""
    cache = os.path.join(inst.pkgs_dir, record.dist)
    if os.path.isdir(cache):
        return cache, False
    tmp = cache + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    for rel, content in payload(record).items():
        path = os.path.join(tmp, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(content)
    os.makedirs(tmp, exist_ok=True)
    os.replace(tmp, cache)
    return cache, True


def link(inst: Install, prefix: str, record: Record, requested: str | None) -> bool:
    cache, fetched = extract(inst, record)
    files = []
    for dirpath, _dirs, names in os.walk(cache):
        for n in names:
            src = os.path.join(dirpath, n)
            rel = os.path.relpath(src, cache)
            dst = os.path.join(prefix, rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            if os.path.lexists(dst):
                os.unlink(dst)
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)
            files.append(rel)
    if record.name == "python":
        bin_dir = os.path.join(prefix, "bin")
        os.makedirs(bin_dir, exist_ok=True)
        for n, to in (
            ("python", host_python()),
            ("python3", "python"),
            (f"python{HOST_PY}", "python"),
        ):
            path = os.path.join(bin_dir, n)
            if os.path.lexists(path):
                os.unlink(path)
            os.symlink(to, path)
            files.append(f"bin/{n}")
        os.makedirs(os.path.join(prefix, f"lib/python{HOST_PY}/site-packages"), exist_ok=True)
    data = record.full()
    data.update(
        {
            "requested_spec": requested or "",
            "package_tarball_full_path": os.path.join(inst.pkgs_dir, record.fn),
            "extracted_package_dir": cache,
            "files": sorted(files),
            "paths_data": {
                "paths_version": 1,
                "paths": [{"_path": f, "path_type": "hardlink"} for f in sorted(files)],
            },
            "link": {"source": cache, "type": 1},
            "requested_specs": [requested] if requested else [],
        }
    )
    meta = os.path.join(prefix, "conda-meta")
    with open(os.path.join(meta, f"{record.dist}.json"), "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2)
    return fetched


def unlink(prefix: str, data: dict[str, Any]) -> None:
    for rel in data.get("files", []):
        path = os.path.join(prefix, rel)
        if os.path.lexists(path):
            os.unlink(path)
    dist = f"{data['name']}-{data['version']}-{data['build']}"
    os.unlink(os.path.join(prefix, "conda-meta", f"{dist}.json"))
    for dirpath, _dirs, _files in os.walk(prefix, topdown=False):
        if dirpath not in (prefix, os.path.join(prefix, "conda-meta")):
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)  # only succeeds when empty


def history(prefix: str, argv: list[str], plus: list[str], minus: list[str], specs: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
    lines = [
        f"==> {stamp} <==",
        f"# cmd: {inst_exe()} {' '.join(argv)}",
        f"# conda version: {CONDA_VERSION}",
    ]
    lines += [f"-{CHANNEL}/{d}" for d in minus] + [f"+{CHANNEL}/{d}" for d in plus]
    lines.append(specs)
    with open(os.path.join(prefix, "conda-meta", "history"), "a", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")


def inst_exe() -> str:
    return "<ROOT_PREFIX>/bin/conda"


def data_item(data: dict[str, Any]) -> dict[str, Any]:
    return Record(data["name"], data["version"], data["build"], data["subdir"], [], 0).link_item()


def progress(names: list[str]) -> None:
    if env("FAKE_CONDA_PROGRESS") == "1" and not is_mamba():
        for n in names:
            for fraction in (0.0, 1.0):
                record = {
                    "fetch": n,
                    "finished": fraction == 1.0,
                    "maxval": 1,
                    "progress": fraction,
                }
                sys.stdout.write(json.dumps(record) + "\n\0")


def success(prefix: str, fetch: list[Record], link_: list[Any], unlink_: list[Any]) -> None:
    if is_mamba():
        actions: dict[str, Any] = {"PREFIX": prefix, "FETCH": [r.full() for r in fetch]}
        if link_:
            actions["LINK"] = [r.full() if isinstance(r, Record) else r for r in link_]
        if unlink_:
            actions["UNLINK"] = unlink_
        out({"success": True, "dry_run": False, "prefix": prefix, "actions": actions}, indent=4)
        return
    progress([r.name for r in fetch])
    actions = {"FETCH": [r.full() for r in fetch], "PREFIX": prefix}
    if unlink_:
        actions["UNLINK"] = [data_item(d) if "files" in d else d for d in unlink_]
    if link_:
        actions["LINK"] = [r.link_item() for r in link_]
    out({"success": True, "actions": actions, "prefix": prefix})


# --- commands ------------------------------------------------------------------------------


def cmd_create(inst: Install, opts: Opts, argv: list[str]) -> int:
    prefix = target(inst, opts, creating=True)
    specs = [Spec(s) for s in opts.positionals]
    source = None
    if opts.clone:
        source = opts.clone if os.sep in opts.clone else inst.by_name(opts.clone)
        source = os.path.abspath(source)
        if not is_env(source):
            env_not_found(source)
    check_available(specs)
    plan = resolve(specs, {})
    delay()
    if failing("create"):
        os.makedirs(os.path.join(prefix, "conda-meta"), exist_ok=True)
        Path(prefix, "conda-meta", "history").write_text("==> 2000-01-01 00:00:00 <==\n")
        Path(prefix, "half-written.txt").write_text("x" * 1000)
        if is_mamba():
            mamba_fail("Download error (28) Timeout was reached [file:///srv/channel]")
        return conda_error(
            "CondaHTTPError",
            f"HTTP 000 CONNECTION FAILED for url <{CHANNEL}/noarch/repodata.json>",
            url=f"{CHANNEL}/noarch/repodata.json",
        )
    if is_env(prefix) or os.path.lexists(prefix):
        # what real conda does with --json/--yes: the old environment is replaced
        shutil.rmtree(prefix, ignore_errors=True)
    if source is not None:
        shutil.copytree(source, prefix, symlinks=True, copy_function=_hardlink_or_copy)
        if is_mamba():
            success(prefix, [], list(installed(prefix).values()), [])
        else:
            out(
                {"success": True, "untracked_files": [], "src_prefix": source, "dst_prefix": prefix}
            )
        return 0
    os.makedirs(os.path.join(prefix, "conda-meta"), exist_ok=True)
    fetched = []
    requested = {s.name: s.text for s in specs}
    for record in plan:
        if link(inst, prefix, record, requested.get(record.name)):
            fetched.append(record)
    history(
        prefix,
        argv,
        [f"{r.subdir}::{r.dist}" for r in plan],
        [],
        f"# update specs: {[s.text for s in specs]!r}",
    )
    Path(prefix, "conda-meta", "created_at").write_text(repr(time.time()))
    success(prefix, fetched, plan, [])
    return 0


def _hardlink_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def cmd_install(inst: Install, opts: Opts, argv: list[str]) -> int:
    prefix = target(inst, opts)
    specs = [Spec(s) for s in opts.positionals]
    if not specs:
        raise usage_error("too few arguments, must supply command line package specs or --file")
    if not is_env(prefix):
        env_not_found(prefix)
    check_available(specs)
    have = installed(prefix)
    plan = resolve(specs, have)
    if not plan:
        out(
            {"success": True, "message": "All requested packages already installed."},
            indent=4 if is_mamba() else 2,
        )
        return 0
    delay()
    if failing("install"):
        if is_mamba():
            mamba_fail("Download error (28) Timeout was reached [file:///srv/channel]")
        return conda_error(
            "CondaHTTPError", f"HTTP 000 CONNECTION FAILED for url <{CHANNEL}/noarch/repodata.json>"
        )
    removed = [have[r.name] for r in plan if r.name in have]
    for data in removed:
        unlink(prefix, data)
    fetched = []
    requested = {s.name: s.text for s in specs}
    for record in plan:
        if link(inst, prefix, record, requested.get(record.name)):
            fetched.append(record)
    history(
        prefix,
        argv,
        [f"{r.subdir}::{r.dist}" for r in plan],
        [f"{d['subdir']}::{d['name']}-{d['version']}-{d['build']}" for d in removed],
        f"# update specs: {[s.text for s in specs]!r}",
    )
    success(prefix, fetched, plan, removed)
    return 0


def cmd_remove(inst: Install, opts: Opts, argv: list[str], *, whole: bool) -> int:
    prefix = target(inst, opts)
    if not is_env(prefix):
        env_not_found(prefix)
    if whole:
        return remove_env(prefix, keep_dir=is_mamba())
    names = [Spec(s).name for s in opts.positionals]
    if not names:
        raise usage_error("too few arguments, must supply command line package specs")
    have = installed(prefix)
    missing = [n for n in names if n not in have]
    if missing and not is_mamba():
        listed = "".join(f"\n  - {m}" for m in missing)
        return conda_error(
            "PackagesNotFoundInPrefixError",
            "The following packages are missing from the target environment:\n"
            f"  prefix: {prefix}\n{listed}\n",
            package_name=missing,
            packages_formatted=listed,
            prefix=prefix,
        )
    delay()
    if failing("remove"):
        if is_mamba():
            mamba_fail("Could not remove packages: Permission denied")
        return conda_error("CondaError", f"Unable to remove files from {prefix}: Permission denied")
    removed = [have[n] for n in names if n in have]
    for data in removed:
        unlink(prefix, data)
    history(
        prefix,
        argv,
        [],
        [f"{d['subdir']}::{d['name']}-{d['version']}-{d['build']}" for d in removed],
        f"# remove specs: {names!r}",
    )
    success(
        prefix,
        [],
        [],
        [data_item(d) for d in removed]
        if not is_mamba()
        else [
            Record(d["name"], d["version"], d["build"], d["subdir"], [], 0).full() for d in removed
        ],
    )
    return 0


def remove_env(prefix: str, *, keep_dir: bool) -> int:
    refuse_active(prefix, "remove")
    delay()
    if failing("env-remove"):
        if is_mamba():
            mamba_fail(f"Could not remove {prefix}: Permission denied")
        return conda_error("CondaError", f"Unable to remove {prefix}: Permission denied")
    have = installed(prefix)
    if keep_dir:
        # mamba 2's `remove --all`: packages go, the directory stays
        for data in have.values():
            unlink(prefix, data)
    else:
        shutil.rmtree(prefix)
    if not have and not is_mamba():
        return 0  # conda prints nothing at all for an env without packages
    items = list(have.values())
    if is_mamba():
        success(
            prefix,
            [],
            [],
            [Record(d["name"], d["version"], d["build"], d["subdir"], [], 0).full() for d in items],
        )
    else:
        success(prefix, [], [], [data_item(d) for d in items])
    return 0


def cmd_env_remove(inst: Install, opts: Opts) -> int:
    prefix = target(inst, opts)
    if not is_env(prefix):
        env_not_found(prefix)
    if is_mamba():
        delay()
        if failing("env-remove"):
            mamba_fail(f"Could not remove {prefix}: Permission denied")
        shutil.rmtree(prefix)
        if opts.json:
            out({"success": True, "prefix": prefix}, indent=4)
        else:
            sys.stdout.write(f"Environment removed at prefix: {prefix}\n")
        return 0
    return remove_env(prefix, keep_dir=False)


def cmd_rename(inst: Install, opts: Opts) -> int:
    if is_mamba():
        raise usage_error("The following argument was not expected: rename")
    source = target(inst, opts)
    if not opts.positionals:
        raise usage_error("the following arguments are required: destination")
    if not is_env(source):
        env_not_found(source)
    refuse_active(source, "rename")
    dest_arg = opts.positionals[0]
    if os.sep in dest_arg:
        dest = os.path.abspath(dest_arg)
    else:
        check_name(dest_arg)
        dest = os.path.join(inst.first_writable(), dest_arg)
    if os.path.exists(dest) and not opts.yes:
        return conda_error(
            "CondaEnvException",
            f"The environment '{dest}' already exists. Override with --yes.",
        )
    delay()
    if failing("rename"):
        return conda_error("CondaError", f"Unable to rename {source}: Permission denied")
    if os.path.exists(dest):
        shutil.rmtree(dest)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    os.rename(source, dest)
    out({"success": True, "untracked_files": [], "src_prefix": source, "dst_prefix": dest})
    return 0


def pip_packages(prefix: str) -> list[tuple[str, str]]:
    found = []
    site = os.path.join(prefix, f"lib/python{HOST_PY}/site-packages")
    for entry in sorted(os.listdir(site)) if os.path.isdir(site) else []:
        if entry.endswith(".dist-info"):
            installer = Path(site, entry, "INSTALLER")
            if installer.exists() and installer.read_text().strip() == "pip":
                name, _, version = entry[: -len(".dist-info")].partition("-")
                found.append((name, version))
    return found


def cmd_list(inst: Install, opts: Opts) -> int:
    prefix = target(inst, opts) if (opts.prefix or opts.name) else inst.root
    if not is_env(prefix):
        env_not_found(prefix)
    items = [data_item(d) for d in installed(prefix).values()]
    for name, version in pip_packages(prefix):
        items.append(
            {
                "base_url": "https://conda.anaconda.org/pypi",
                "build_number": 0,
                "build_string": "pypi_0",
                "channel": "pypi",
                "dist_name": f"{name}-{version}-pypi_0",
                "name": name,
                "platform": "pypi",
                "version": version,
            }
        )
    items.sort(key=lambda i: i["name"])
    if opts.json:
        out(items, indent=4 if is_mamba() else 2)
    else:
        for i in items:
            sys.stdout.write(f"{i['name']:<24}{i['version']:<12}{i['build_string']:<10}\n")
    return 0


def cmd_env_list(inst: Install) -> int:
    prefixes = [inst.root, *inst.envs()]
    if is_mamba():
        out({"envs": prefixes}, indent=4)
        return 0
    details = {}
    for p in prefixes:
        created = None
        stamp = Path(p, "conda-meta", "created_at")
        if p != inst.root and stamp.exists():
            created = time.strftime(
                "%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(float(stamp.read_text()))
            )
        details[p] = {
            "name": "base" if p == inst.root else os.path.basename(p),
            "created": created,
            "last_modified": created,
            "active": False,
            "base": p == inst.root,
            "frozen": False,
            "writable": None if p == inst.root else True,
        }
    out({"envs": prefixes, "envs_details": details})
    return 0


def cmd_info(inst: Install, opts: Opts) -> int:
    if "envs" in opts.flags:
        return cmd_env_list(inst)
    if is_mamba():
        version_key = "micromamba version" if flavor() == "micromamba" else "mamba version"
        out(
            {
                "base environment": inst.root,
                "channels": CHANNEL_URLS,
                "env location": "-",
                "environment": "None (not found)",
                "envs directories": inst.envs_dirs,
                "libmamba version": MAMBA_VERSION,
                version_key: MAMBA_VERSION,
                "package cache": [inst.pkgs_dir],
                "platform": "linux-64",
                "populated config files": [],
                "user config files": [os.path.expanduser("~/.mambarc")],
                "virtual packages": [
                    "__unix=0=0",
                    "__linux=6.18.44=0",
                    "__glibc=2.36=0",
                    "__archspec=1=x86_64",
                ],
            },
            indent=4,
        )
        return 0
    out(
        {
            "platform": "linux-64",
            "conda_version": CONDA_VERSION,
            "conda_env_version": CONDA_VERSION,
            "conda_build_version": "not installed",
            "root_prefix": inst.root,
            "conda_prefix": inst.root,
            "av_data_dir": os.path.join(inst.root, "etc/conda"),
            "root_writable": True,
            "pkgs_dirs": [inst.pkgs_dir],
            "envs_dirs": inst.envs_dirs,
            "default_prefix": inst.root,
            "active_prefix": None,
            "active_prefix_name": None,
            "conda_shlvl": -1,
            "channels": CHANNEL_URLS,
            "offline": False,
            "envs": [inst.root, *inst.envs()],
            "python_version": "3.11.7.final.0",
            "solver": {"name": "classic", "user_agent": "solver/classic", "default": False},
            "sys.prefix": inst.root,
            "sys.executable": os.path.join(inst.root, "bin/python"),
        }
    )
    return 0


OPTS: Opts | None = None


def main(argv: list[str]) -> int:
    log_call(argv)
    try:
        return dispatch(argv)
    finally:
        log_call(None)


def dispatch(argv: list[str]) -> int:
    global OPTS
    try:
        if argv[:1] in (["--version"], ["-V"]):
            sys.stdout.write(MAMBA_VERSION + "\n" if is_mamba() else f"conda {CONDA_VERSION}\n")
            return 0
        opts = parse(argv)
        OPTS = opts
        if not opts.positionals:
            raise usage_error("the following arguments are required: COMMAND")
        command = opts.positionals.pop(0)
        if command == "env":
            sub = opts.positionals.pop(0) if opts.positionals else ""
            command = f"env-{sub}"
        inst = Install(opts)
        if command == "info":
            return cmd_info(inst, opts)
        if command in ("env-list",):
            return cmd_env_list(inst)
        if command == "create":
            return cmd_create(inst, opts, argv)
        if command in ("install", "update"):
            return cmd_install(inst, opts, argv)
        if command in ("remove", "uninstall"):
            return cmd_remove(inst, opts, argv, whole=opts.all)
        if command == "env-remove":
            return cmd_env_remove(inst, opts)
        if command == "rename":
            return cmd_rename(inst, opts)
        if command == "list":
            return cmd_list(inst, opts)
        if is_mamba():
            raise usage_error(f"The following argument was not expected: {command}")
        raise usage_error(f"argument COMMAND: invalid choice: '{command}'")
    except Exit as exc:
        return exc.code


def install_fake_conda(bin_dir: str | os.PathLike[str], name: str = "conda") -> str:
    """Write an executable ``bin_dir/name`` that runs this fake with the current interpreter;
    return its path. A name starting with ``mamba``/``micromamba`` answers as that flavor."""
    os.makedirs(bin_dir, exist_ok=True)
    path = os.path.join(os.fspath(bin_dir), name)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(
            f"#!{sys.executable} -S\n"
            "import runpy\n"
            f"runpy.run_path({THIS_FILE!r}, init_globals={{'INVOKED_AS': {path!r}}}, "
            "run_name='__main__')\n"
        )
    os.chmod(path, 0o755)
    return path


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
