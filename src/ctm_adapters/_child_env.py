"""Which of the server's environment variables a child process may see: the one policy.

Two kinds of children, two functions:

- ``environment_for_installer``: conda/mamba/micromamba, ``python -m venv``, pip, uv and the
  short probes of a Python or of uv. They work for the server, on its configuration.
- ``environment_for_run``: a user's script. It works for a user, who must learn nothing of the
  server's configuration beyond what running a program needs.

Both start from the server's environment (``base``, normally ``os.environ``) and only remove;
what a child must have set (an environment's ``CONDA_PREFIX``, ``PATH``, HOME of an identity)
its caller adds afterwards, so a caller can always put back a name dropped here.

Dropped from every child:

- ctm's own settings and secrets: every ``CTM_*`` (``CTM_ADMIN_PASSWORD`` among them), and for
  runs any further ``secret_prefixes`` the runner was given;
- the server's conda activation: ``CONDA_PREFIX``, ``CONDA_SHLVL``, ``CONDA_DEFAULT_ENV``,
  ``CONDA_PROMPT_MODIFIER`` and the ``CONDA_PREFIX_<n>`` of nested activations. conda takes its
  default and active prefix from them: leaked, ``remove --all``/``rename`` on that env fail
  ("Cannot remove current environment") and a run's python looks like it is in the server's env;
- the server interpreter's settings: ``PYTHONHOME``, ``PYTHONPATH``, ``VIRTUAL_ENV`` and macOS's
  ``__PYVENV_LAUNCHER__``. They make another interpreter (conda's own python, an environment's
  python, its pip) load the server's packages or fail to start;
- dynamic-loader variables: every ``LD_*`` (``LD_PRELOAD``, ``LD_LIBRARY_PATH``, ``LD_AUDIT``...)
  and macOS's ``DYLD_*``. A preload or an audit module set for the server would run inside every
  installer and script, and a library path chosen for the server's binaries makes an
  environment's binaries load libraries of another ABI. Environments find their own libraries
  through their RPATH (conda) or the system's;
- the operator's ssh agent, ``SSH_AUTH_SOCK`` and ``SSH_AGENT_PID``: a key the server was started
  with is not a user's to use, and no installer ctm runs needs one (requirement lines that name
  a URL are refused before any installer runs).

Kept for every child: everything else: ``PATH``, ``HOME``, ``LANG``/``LC_*``, ``TZ``, ``TMPDIR``,
``SSL_CERT_FILE``/``REQUESTS_CA_BUNDLE``, and the proxies (``http_proxy``, ``HTTPS_PROXY``,
``NO_PROXY``...): installers download packages, and a run allowed network may need the same
proxy to reach anything.

Where installers and runs differ, deliberately:

- installers keep the package tools' configuration: ``PIP_*``, ``UV_*``, ``CONDA_*`` (less the
  activation above: ``CONDA_EXE``, ``CONDA_PKGS_DIRS``, ``CONDA_CHANNELS``...) and ``MAMBA_*``
  (``MAMBA_ROOT_PREFIX``). That is how an operator configures installs (offline wheels with
  ``PIP_NO_INDEX``/``PIP_FIND_LINKS``, a private index, a channel mirror), see
  ``docs/configuration.md``; except ``PIP_REQUIRE_VIRTUALENV``, which makes pip refuse a conda
  env (not a virtualenv) and serves nothing when every call names its environment;
- runs get none of that configuration. A run does not install (it cannot write its
  environment), and an index URL or a channel often carries a token
  (``https://user:token@index``) that is the server's, not the user's.

The old rules this replaces: conda's adapter kept ``VIRTUAL_ENV``, loader variables and the ssh
agent; the venv adapter also kept the server's conda activation and ``PIP_REQUIRE_VIRTUALENV``;
the process runner kept loader variables, the ssh agent and every installer setting for runs,
and dropped ``CTM_*`` only through its ``secret_env_prefixes`` (now always, plus those).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

__all__ = [
    "SECRET_PREFIXES",
    "environment_for_installer",
    "environment_for_run",
]

SECRET_PREFIXES = ("CTM_",)
"""ctm's settings and secrets: never seen by any child."""

_ACTIVATION = frozenset(
    {"CONDA_PREFIX", "CONDA_SHLVL", "CONDA_DEFAULT_ENV", "CONDA_PROMPT_MODIFIER"}
)
_STACKED_PREFIX = "CONDA_PREFIX_"
_SERVER_INTERPRETER = frozenset({"PYTHONHOME", "PYTHONPATH", "VIRTUAL_ENV", "__PYVENV_LAUNCHER__"})
_LOADER_PREFIXES = ("LD_", "DYLD_")
_AGENT = frozenset({"SSH_AUTH_SOCK", "SSH_AGENT_PID"})
_NEVER = _ACTIVATION | _SERVER_INTERPRETER | _AGENT

_INSTALLER_CONFIG_PREFIXES = ("PIP_", "UV_", "CONDA_", "MAMBA_")
"""The package tools' configuration: installers only."""
_INSTALLER_REFUSED = frozenset({"PIP_REQUIRE_VIRTUALENV"})


def _stacked_conda_prefix(name: str) -> bool:
    """``CONDA_PREFIX_1``, ``CONDA_PREFIX_2``...: what nested ``conda activate`` leaves."""
    return name.startswith(_STACKED_PREFIX) and name[len(_STACKED_PREFIX) :].isdigit()


def _dropped_from_every_child(name: str, secret_prefixes: tuple[str, ...]) -> bool:
    return (
        name in _NEVER
        or name.startswith(secret_prefixes)
        or name.startswith(_LOADER_PREFIXES)
        or _stacked_conda_prefix(name)
    )


def environment_for_installer(
    base: Mapping[str, str], extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """``base`` as an installer or tool probe may see it (conda, mamba, micromamba, venv, pip,
    uv): the policy above, then ``extra`` added (the backend's own variables)."""
    env = {
        name: value
        for name, value in base.items()
        if not _dropped_from_every_child(name, SECRET_PREFIXES) and name not in _INSTALLER_REFUSED
    }
    if extra:
        env.update(extra)
    return env


def environment_for_run(
    base: Mapping[str, str], *, secret_prefixes: Iterable[str] = ()
) -> dict[str, str]:
    """``base`` as a user's script may inherit it: the policy above, and also without every
    variable starting with one of ``secret_prefixes`` (``CTM_*`` is always dropped). The runner
    adds the run's own variables (``PYTHONUNBUFFERED``, HOME, the environment's
    ``CONDA_PREFIX``, ``PATH``) to the result."""
    prefixes = (*SECRET_PREFIXES, *secret_prefixes)
    return {
        name: value
        for name, value in base.items()
        if not _dropped_from_every_child(name, prefixes)
        and not name.startswith(_INSTALLER_CONFIG_PREFIXES)
    }
