"""The one policy of what a child process sees of the server's environment
(``ctm_adapters._child_env``): installers and runs. No process is started."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ctm_adapters import conda
from ctm_adapters._child_env import environment_for_installer, environment_for_run

SERVER = {
    # what every child keeps
    "PATH": "/usr/local/bin:/usr/bin",
    "HOME": "/home/ctm",
    "LANG": "C.UTF-8",
    "TZ": "Europe/Paris",
    "https_proxy": "http://proxy:3128",
    "NO_PROXY": "localhost",
    "SSL_CERT_FILE": "/etc/ssl/cert.pem",
    # ctm's settings and secrets
    "CTM_ADMIN_PASSWORD": "hunter2",
    "CTM_DATA_DIR": "/srv/ctm",
    # the server's own conda activation
    "CONDA_PREFIX": "/opt/conda/envs/ctm",
    "CONDA_PREFIX_1": "/opt/conda",
    "CONDA_SHLVL": "2",
    "CONDA_DEFAULT_ENV": "ctm",
    "CONDA_PROMPT_MODIFIER": "(ctm) ",
    # the server's interpreter
    "PYTHONHOME": "/opt/py",
    "PYTHONPATH": "/srv/ctm/src",
    "VIRTUAL_ENV": "/srv/ctm/.venv",
    "__PYVENV_LAUNCHER__": "/srv/ctm/.venv/bin/python",
    # the dynamic loader
    "LD_PRELOAD": "/usr/lib/libjemalloc.so",
    "LD_LIBRARY_PATH": "/opt/py/lib",
    "LD_AUDIT": "/tmp/audit.so",
    "DYLD_INSERT_LIBRARIES": "/tmp/x.dylib",
    # the operator's ssh agent
    "SSH_AUTH_SOCK": "/run/user/0/agent.sock",
    "SSH_AGENT_PID": "4242",
    # package tools' configuration
    "PIP_INDEX_URL": "https://user:token@index.example/simple",
    "PIP_FIND_LINKS": "/opt/wheels",
    "PIP_REQUIRE_VIRTUALENV": "1",
    "UV_INDEX_URL": "https://user:token@index.example/simple",
    "CONDA_EXE": "/opt/conda/bin/conda",
    "CONDA_PKGS_DIRS": "/opt/conda/pkgs",
    "MAMBA_ROOT_PREFIX": "/opt/micromamba",
}

KEPT_BY_ALL = {"PATH", "HOME", "LANG", "TZ", "https_proxy", "NO_PROXY", "SSL_CERT_FILE"}
INSTALLER_CONFIG = {
    "PIP_INDEX_URL",
    "PIP_FIND_LINKS",
    "UV_INDEX_URL",
    "CONDA_EXE",
    "CONDA_PKGS_DIRS",
    "MAMBA_ROOT_PREFIX",
}


def test_installer_keeps_tool_configuration_and_drops_server_state() -> None:
    """An installer sees PATH, locale, proxies and PIP_*/UV_*/CONDA_*/MAMBA_* settings; no
    secret, activation, interpreter, loader or ssh-agent variable, no PIP_REQUIRE_VIRTUALENV."""
    env = environment_for_installer(SERVER)
    assert set(env) == KEPT_BY_ALL | INSTALLER_CONFIG
    assert all(env[name] == SERVER[name] for name in env)


def test_installer_extra_comes_last_and_may_set_a_dropped_name() -> None:
    """The backend's own variables are added after the policy: a conda env's pip gets its
    CONDA_PREFIX even though the server's is dropped."""
    extra = {"CONDA_PREFIX": "/envs/demo", "PATH": "/envs/demo/bin"}
    env = environment_for_installer(SERVER, extra)
    assert env["CONDA_PREFIX"] == "/envs/demo"
    assert env["PATH"] == "/envs/demo/bin"


def test_run_gets_no_installer_configuration() -> None:
    """A run keeps PATH, locale and proxies only: no index URL (it may hold a token), no conda or
    uv setting, and nothing an installer is denied either."""
    assert set(environment_for_run(SERVER)) == KEPT_BY_ALL


def test_run_drops_ctm_variables_even_with_no_secret_prefixes() -> None:
    """``CTM_*`` is always dropped; ``secret_prefixes`` adds more prefixes to it."""
    base = {"CTM_ADMIN_PASSWORD": "x", "AWS_SECRET_ACCESS_KEY": "y", "PATH": "/usr/bin"}
    assert environment_for_run(base, secret_prefixes=()) == {
        "AWS_SECRET_ACCESS_KEY": "y",
        "PATH": "/usr/bin",
    }
    assert environment_for_run(base, secret_prefixes=("AWS_",)) == {"PATH": "/usr/bin"}


def test_only_numbered_conda_prefixes_count_as_stacked_activations() -> None:
    """``CONDA_PREFIX_1`` is a nested activation (dropped); an installer keeps a conda setting
    whose name merely starts the same way."""
    env = environment_for_installer({"CONDA_PREFIX_12": "/a", "CONDA_PREFIX_ROOT": "/b"})
    assert env == {"CONDA_PREFIX_ROOT": "/b"}


def test_conda_adapter_uses_the_installer_policy() -> None:
    """``ctm_adapters.conda.child_environment`` is the installer policy itself, not a copy."""
    assert conda.child_environment is environment_for_installer


names = st.one_of(
    st.sampled_from(sorted(SERVER)),
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True),
)


@given(st.dictionaries(names, st.text(max_size=5), max_size=30))
def test_a_run_never_sees_more_than_an_installer(base: dict[str, str]) -> None:
    """For any server environment: a run's view is a part of an installer's, neither holds a
    CTM_* variable, and every value kept is the server's own."""
    installer = environment_for_installer(base)
    run = environment_for_run(base)
    assert set(run) <= set(installer) <= set(base)
    assert not any(name.startswith("CTM_") for name in installer)
    assert all(run[name] == base[name] for name in run)
