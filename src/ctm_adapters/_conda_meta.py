"""An environment as its prefix's files say, without running conda: packages from the
``conda-meta/*.json`` records (and what pip put in site-packages), python's version, and the
creation time from ``conda-meta/created_at`` or the first entry of ``conda-meta/history``.

A ``conda list`` costs a third of a second; reading the files costs microseconds, and they are
the same for conda, mamba and micromamba.
"""

from __future__ import annotations

import json
import os
import re
import time
from datetime import UTC, datetime

from ctm_core.models import Environment, Package
from ctm_core.validation import normalize_package_name

__all__ = ["parse_created_at", "parse_history_created", "read_environment"]

_HISTORY_HEADER = re.compile(r"^==> (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) <==", re.MULTILINE)


def parse_created_at(text: str) -> datetime | None:
    """``conda-meta/created_at``: a Unix timestamp, as an aware UTC datetime."""
    try:
        stamp = float(text.strip())
    except ValueError:
        return None
    try:
        return datetime.fromtimestamp(stamp, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def parse_history_created(text: str) -> datetime | None:
    """The first ``==> YYYY-MM-DD HH:MM:SS <==`` of ``conda-meta/history`` (the machine's local
    time, as conda writes it) as an aware UTC datetime."""
    match = _HISTORY_HEADER.search(text)
    if match is None:
        return None
    try:
        local = time.strptime(match.group(1), "%Y-%m-%d %H:%M:%S")
        return datetime.fromtimestamp(time.mktime(local), UTC)
    except (ValueError, OverflowError):
        return None


_RecordKey = tuple[str, int, int]
_record_cache: dict[_RecordKey, tuple[str, str]] = {}


def _read_record(path: str, stat: os.stat_result) -> tuple[str, str] | None:
    """(name, version) of one ``conda-meta/*.json`` record; cached while the file is unchanged
    (records are written once and replaced, never edited in place)."""
    key = (path, stat.st_mtime_ns, stat.st_size)
    cached = _record_cache.get(key)
    if cached is not None:
        return cached
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        data = None
    name = version = None
    if isinstance(data, dict):
        name, version = data.get("name"), data.get("version")
    if not (isinstance(name, str) and isinstance(version, str)):
        # a record being written right now, or a damaged one: fall back on the file name,
        # which conda always makes NAME-VERSION-BUILD.json
        parts = os.path.basename(path)[: -len(".json")].rsplit("-", 2)
        if len(parts) != 3 or not all(parts):
            return None
        name, version = parts[0], parts[1]
    if len(_record_cache) > 100_000:
        _record_cache.clear()
    _record_cache[key] = (name, version)
    return name, version


def _pip_packages(prefix: str, conda_names: set[str]) -> list[Package]:
    """Packages pip put in the env's site-packages (conda does not record them in conda-meta)."""
    found: list[Package] = []
    lib = os.path.join(prefix, "lib")
    try:
        libs = [e.path for e in os.scandir(lib) if e.name.startswith("python") and e.is_dir()]
    except OSError:
        return found
    for libdir in libs:
        site = os.path.join(libdir, "site-packages")
        try:
            entries = list(os.scandir(site))
        except OSError:
            continue
        for entry in entries:
            for suffix in (".dist-info", ".egg-info"):
                if not entry.name.endswith(suffix):
                    continue
                stem = entry.name[: -len(suffix)]
                name, _, version = stem.partition("-")
                version = version.split("-")[0]
                if not name or normalize_package_name(name) in conda_names:
                    continue
                if _installer(entry.path) == "conda":
                    continue
                found.append(Package(name, version))
    return found


def _installer(dist_info: str) -> str:
    try:
        with open(os.path.join(dist_info, "INSTALLER"), encoding="utf-8") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return None


def read_environment(name: str, prefix: str) -> Environment:
    """An environment as its ``conda-meta/`` says: packages of every record (and what pip
    installed), python's version, and ``created_at`` from ``conda-meta/created_at``, else the
    first entry of ``conda-meta/history``, else None."""
    meta = os.path.join(prefix, "conda-meta")
    packages: dict[str, Package] = {}
    try:
        entries = list(os.scandir(meta))
    except OSError:
        entries = []
    for entry in entries:
        if not entry.name.endswith(".json"):
            continue
        try:
            stat = entry.stat()
        except OSError:
            continue
        record = _read_record(entry.path, stat)
        if record is not None:
            packages[record[0]] = Package(*record)
    python = packages.get("python")
    conda_names = {normalize_package_name(n) for n in packages}
    every = list(packages.values())
    if python is not None:
        every.extend(_pip_packages(prefix, conda_names))
    created: datetime | None = None
    stamp = _read_text(os.path.join(meta, "created_at"))
    if stamp is not None:
        created = parse_created_at(stamp)
    if created is None:
        history = _read_text(os.path.join(meta, "history"))
        if history is not None:
            created = parse_history_created(history)
    return Environment(
        name=name,
        prefix=prefix,
        python_version=python.version if python is not None else None,
        packages=tuple(sorted(every, key=lambda p: (p.name.lower(), p.name))),
        created_at=created,
    )
