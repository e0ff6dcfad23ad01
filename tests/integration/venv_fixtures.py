"""Helpers for the venv backend's tests: tiny wheels built offline, and where uv is."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import zipfile
from collections.abc import Mapping, Sequence


def make_wheel(
    folder: str,
    name: str,
    version: str,
    files: Mapping[str, str],
    *,
    requires: Sequence[str] = (),
    scripts: Mapping[str, str] | None = None,
) -> str:
    """Write a pure-python ``.whl`` (PEP 427) into ``folder``; return its path.

    Built by hand, so the tests need neither setuptools nor a network.
    """
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    entries = dict(files)
    entries[f"{info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        + "".join(f"Requires-Dist: {r}\n" for r in requires)
        + "\nA long description.\nName: not-a-header\n"
    )
    entries[f"{info}/WHEEL"] = (
        "Wheel-Version: 1.0\nGenerator: ctm-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    if scripts:
        entries[f"{info}/entry_points.txt"] = "[console_scripts]\n" + "".join(
            f"{k} = {v}\n" for k, v in scripts.items()
        )
    path = os.path.join(folder, f"{dist}-{version}-py3-none-any.whl")
    record: list[str] = []
    with zipfile.ZipFile(path, "w") as whl:
        for arcname, text in entries.items():
            data = text.encode()
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.append(f"{arcname},sha256={digest.decode()},{len(data)}")
            whl.writestr(arcname, data)
        record.append(f"{info}/RECORD,,")
        whl.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return path


def build_wheel_folder(folder: str) -> str:
    """The offline index of the tests.

    ``Tiny_Pkg`` 1.0 and 2.0 (module ``tinypkg``, script ``tiny``), ``needs-old`` (wants
    tiny-pkg==1.0) and ``needs-new`` (wants tiny-pkg==2.0): the last two conflict. The folder
    is readable by everyone: under root, sandboxed installs run as an unprivileged uid.
    """
    os.makedirs(folder, exist_ok=True)
    os.chmod(folder, 0o755)
    for version in ("1.0", "2.0"):
        make_wheel(
            folder,
            "Tiny_Pkg",
            version,
            {
                "tinypkg/__init__.py": (
                    f"VERSION = {version!r}\n\ndef main():\n    print('tiny', VERSION)\n"
                )
            },
            scripts={"tiny": "tinypkg:main"},
        )
    make_wheel(
        folder, "needs-old", "1.0", {"needs_old/__init__.py": ""}, requires=["tiny-pkg==1.0"]
    )
    make_wheel(
        folder, "needs-new", "1.0", {"needs_new/__init__.py": ""}, requires=["tiny-pkg==2.0"]
    )
    return folder


def find_uv() -> str | None:
    """``uv`` on PATH, or the one the ``uv`` package put in this virtualenv, else None."""
    found = shutil.which("uv")
    if found:
        return found
    try:
        import uv  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        return str(uv.find_uv_bin())
    except FileNotFoundError:
        return None
