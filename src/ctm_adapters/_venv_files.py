"""A venv as its files say, and the files ctm itself writes: names, ``pyvenv.cfg``, the installed
distributions (``*.dist-info/METADATA``, legacy ``*.egg-info``), ctm's own metadata, and the
rewrite of absolute paths that moves a venv (rename).

No process is started here. Installs (package code) may have written these trees and the server
reads them with its own rights: no symlink is ever followed.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import re
import stat
import uuid
from typing import TextIO

from ctm_core.errors import InvalidEnvironmentName
from ctm_core.models import Package
from ctm_core.validation import normalize_package_name

__all__ = [
    "METADATA_FILE",
    "check_new_name",
    "has_pip",
    "host_has_pip",
    "installed_packages",
    "is_env",
    "python_path",
    "pyvenv_version",
    "read_metadata",
    "relocate",
    "site_packages",
    "valid_name",
]

METADATA_FILE = "ctm-env.json"
"""ctm's own record in each environment: created_at, python_version, python, created_by."""
_SCRIPT_MAX_BYTES = 1 << 20


def valid_name(name: str) -> bool:
    return (
        bool(name)
        and "/" not in name
        and os.sep not in name
        and "\0" not in name
        and not name.startswith(".")
    )


def check_new_name(name: str) -> None:
    if not valid_name(name):
        raise InvalidEnvironmentName(name, "Environment name must not hold '/' or start with '.'")


def is_env(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "pyvenv.cfg")) and not os.path.islink(path)


def python_path(prefix: str) -> str:
    return os.path.join(prefix, "bin", "python")


def site_packages(prefix: str) -> list[str]:
    lib = os.path.join(prefix, "lib")
    try:
        names = sorted(n for n in os.listdir(lib) if n.startswith("python"))
    except OSError:
        return []
    return [os.path.join(lib, n, "site-packages") for n in names]


def has_pip(prefix: str) -> bool:
    return any(
        os.path.isfile(os.path.join(sp, "pip", "__init__.py")) for sp in site_packages(prefix)
    )


@functools.cache
def host_has_pip() -> bool:
    return importlib.util.find_spec("pip") is not None


def installed_packages(prefix: str) -> list[Package]:
    """Installed distributions from ``*.dist-info/METADATA`` (and legacy ``*.egg-info``)."""
    found: dict[str, Package] = {}
    for sp in site_packages(prefix):
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


def pyvenv_version(prefix: str) -> str | None:
    cfg = _pyvenv_cfg(prefix)
    raw = cfg.get("version_info") or cfg.get("version") or ""
    match = re.match(r"\d+(?:\.\d+){0,2}", raw)
    return match.group(0) if match else None


def read_metadata(prefix: str) -> dict[str, object]:
    try:
        with _open_own(os.path.join(prefix, METADATA_FILE)) as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def relocate(
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
