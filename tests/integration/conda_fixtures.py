"""Helpers for the conda adapter's tests: a fake conda installation in a temporary directory."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from ctm_adapters.conda import CondaEnvironmentBackend
from tests.fakes.fake_conda import install_fake_conda


@attrs.define
class FakeConda:
    """One fake installation: its root prefix, the executable, and the log of every call."""

    flavor: str
    root: str
    exe: str
    log: str

    @property
    def envs_dir(self) -> str:
        return os.path.join(self.root, "envs")

    def extra_env(self, **knobs: str) -> dict[str, str]:
        return {
            "FAKE_CONDA_ROOT": self.root,
            "FAKE_CONDA_LOG": self.log,
            "FAKE_CONDA_FLAVOR": self.flavor,
            **knobs,
        }

    def backend(
        self, *, default_python: str | None = "3.11", timeout: float | None = 60.0, **knobs: str
    ) -> CondaEnvironmentBackend:
        """A backend on this installation; ``knobs`` are FAKE_CONDA_* variables for its calls."""
        return CondaEnvironmentBackend(
            self.exe,
            default_python=default_python,
            extra_env=self.extra_env(**knobs),
            command_timeout=timeout,
        )

    def run(self, *args: str, **knobs: str) -> subprocess.CompletedProcess[str]:
        """Call the fake directly, as someone at a shell would."""
        env = {**os.environ, **self.extra_env(**knobs)}
        return subprocess.run(
            [self.exe, *args], env=env, capture_output=True, text=True, check=False
        )

    def calls(self) -> list[dict[str, Any]]:
        """Every call so far: argv, the names of the variables it saw, start and end times."""
        if not os.path.exists(self.log):
            return []
        started: dict[int, dict[str, Any]] = {}
        order: list[dict[str, Any]] = []
        with open(self.log, encoding="utf-8") as fh:
            for line in fh:
                entry = json.loads(line)
                if "argv" in entry:
                    started[entry["pid"]] = entry
                    order.append(entry)
                elif entry["pid"] in started:
                    started.pop(entry["pid"])["end"] = entry["end"]
        return order

    def commands(self) -> list[list[str]]:
        """The argv of every call of the fake conda (not pip), without the probes."""
        return [
            c["argv"][1:]
            for c in self.calls()
            if c["argv"][0] != "pip" and c["argv"][1:2] not in (["--version"], ["info"])
        ]

    def clear_log(self) -> None:
        if os.path.exists(self.log):
            os.unlink(self.log)


def make_fake_conda(folder: str, flavor: str = "conda") -> FakeConda:
    """A fake ``conda``/``mamba``/``micromamba`` (named after its flavor) with its root in
    ``folder/root``."""
    exe = install_fake_conda(os.path.join(folder, "bin"), flavor)
    root = os.path.join(folder, "root")
    os.makedirs(os.path.join(root, "envs"), exist_ok=True)
    return FakeConda(flavor=flavor, root=root, exe=exe, log=os.path.join(folder, "calls.jsonl"))


def make_prefix(
    prefix: str,
    packages: Iterable[tuple[str, str]],
    *,
    created_at: str | None = None,
    history: str | None = None,
    records: Sequence[dict[str, Any]] = (),
) -> str:
    """An environment written by hand: one ``conda-meta`` record per (name, version), plus
    ``records`` as given, and optional ``created_at`` and ``history`` files."""
    meta = os.path.join(prefix, "conda-meta")
    os.makedirs(meta, exist_ok=True)
    every = [{"name": n, "version": v, "build": "h0_0"} for n, v in packages]
    for record in [*every, *records]:
        fn = f"{record['name']}-{record['version']}-{record.get('build', 'h0_0')}.json"
        with open(os.path.join(meta, fn), "w", encoding="utf-8") as fh:
            json.dump(record, fh)
    if created_at is not None:
        with open(os.path.join(meta, "created_at"), "w", encoding="utf-8") as fh:
            fh.write(created_at)
    if history is not None:
        with open(os.path.join(meta, "history"), "w", encoding="utf-8") as fh:
            fh.write(history)
    return prefix
