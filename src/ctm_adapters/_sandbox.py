"""Contained runs: the bubblewrap (``bwrap``) command line around a run or an install, and who
a run is (uid, gid, HOME) on this machine.

A contained process sees its own pid, ipc, uts, user and mount namespaces: the system folders
read-only, the paths it was given (environment prefix, interpreter, script) read-only, the
folders it may write (its working folder, its HOME, for an install the prefix and a cache), a
private ``/tmp``, its own ``/proc`` and a minimal ``/dev`` — and nothing else: not the data
directory, not other users' HOMEs, not the server's or other runs' processes.

Two ways in, by who the server is:

- not root: bubblewrap runs unprivileged (as the server's uid) in a user namespace of its own;
- root: bubblewrap runs as root, so it can bind what the run's own uid could not reach (an
  interpreter under ``/root``, a data directory of mode 0700); inside, ``setpriv`` drops to the
  run's uid with no capabilities and no groups, then ``unshare --user`` gives it a user namespace
  of its own (mapping only that uid).

Either way the script's processes are alone in their user namespace, so a process limit set
inside (``prlimit --nproc``) counts the processes of that one run.

See docs/security.md.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Sequence

import attrs

__all__ = [
    "Identities",
    "Installer",
    "RunIdentity",
    "Sandbox",
    "SandboxUnavailable",
    "interpreter_roots",
]

# The system, visible read-only in every sandbox (those that exist on this machine).
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt")
# Read-only when present: name resolution behind a /etc/resolv.conf symlink.
OPTIONAL_SYSTEM_PATHS = ("/run/systemd/resolve", "/var/lib/ca-certificates")
INIT_PROCESSES = 1
"""bubblewrap's own init inside the pid namespace (pid 1), counted by ``prlimit --nproc``."""


class SandboxUnavailable(RuntimeError):
    """bubblewrap is missing or cannot create its namespaces here (the message says why)."""


@attrs.frozen(kw_only=True)
class RunIdentity:
    """Who a run is: ``uid``/``gid`` to switch to (None: the server's own), its HOME folder and
    the name it sees in ``USER``/``LOGNAME``."""

    uid: int | None
    gid: int | None
    home: str
    username: str


@attrs.define
class Identities:
    """Maps ctm users to identities on this machine.

    Under root, the ctm user with id N runs as uid and gid ``first + N`` of ``uid_range`` (no
    passwd entry needed): never root, never the server's uid, never shared by two ctm users.
    Otherwise runs keep the server's uid (the sandbox is what separates them from it). HOMEs are
    ``homes_dir/<username>``, created on first use, private to their uid.
    """

    homes_dir: str
    uid_range: tuple[int, int] = (200000, 265535)
    per_user_uids: bool = attrs.field(factory=lambda: os.geteuid() == 0)

    def for_user(self, owner: str | None, owner_id: int | None) -> RunIdentity:
        """The identity of a run of ``owner``; raises ``ValueError`` when it has none.

        A task without an owner runs as the range's last uid with HOME ``@ownerless``; the user
        names ``.`` and ``..`` get HOMEs ``@.`` and ``@..`` (``@`` is in no user name)."""
        name = owner if owner is not None else "@ownerless"
        if "/" in name or "\0" in name or not name:
            raise ValueError(f"not a user name for a HOME folder: {name!r}")
        folder = f"@{name}" if name in (".", "..") else name
        uid = gid = None
        if self.per_user_uids:
            first, last = self.uid_range
            uid = last if owner_id is None else first + owner_id
            if uid > last or uid == os.geteuid() or (owner_id is not None and owner_id < 1):
                raise ValueError(
                    f"user id {owner_id} is outside CTM_RUN_UIDS {first}-{last}: it cannot run"
                )
            gid = uid
        return RunIdentity(
            uid=uid, gid=gid, home=os.path.join(self.homes_dir, folder), username=name
        )

    def prepare_home(self, identity: RunIdentity) -> None:
        """Create the HOME folder (and its parent) owned by the run's uid, mode 0700."""
        os.makedirs(self.homes_dir, mode=0o711, exist_ok=True)
        os.chmod(self.homes_dir, 0o711)  # noqa: S103 - crossable, not listable: uids reach theirs
        with contextlib.suppress(FileExistsError):
            os.mkdir(identity.home, 0o700)
        if identity.uid is not None:
            st = os.lstat(identity.home)
            if st.st_uid != identity.uid:
                os.lchown(identity.home, identity.uid, identity.gid or identity.uid)

    def trial(self) -> RunIdentity | None:
        """Who the start-up trial runs as: under root the installer's uid (no run has it)."""
        if not self.per_user_uids:
            return None
        uid = self.uid_range[0]
        return RunIdentity(uid=uid, gid=uid, home="/", username="ctm-trial")

    def installer(self) -> Installer:
        """Who package changes run as: under root the first uid of the range (no ctm user has
        id 0, and ownerless tasks take the last), else the server's uid."""
        uid = self.uid_range[0] if self.per_user_uids else None
        return Installer(uid=uid, gid=uid)

    def give(self, identity: RunIdentity, path: str) -> None:
        """Make ``path`` (a run's own working folder) the run's: owned by its uid."""
        if identity.uid is not None:
            os.lchown(path, identity.uid, identity.gid or identity.uid)


@attrs.define
class Installer:
    """The identity of package changes: ``uid``/``gid`` (None: the server's).

    Its HOME and download caches are in the install sandbox's private ``/tmp``, new for every
    change: package code runs at install time (a ``.pth`` file runs at every interpreter start),
    and a cache kept between installs would let one user's package change what another user's
    install gets. The one thing an install may write that outlives it is its environment."""

    uid: int | None = None
    gid: int | None = None

    def environment(self) -> dict[str, str]:
        """Variables that point pip's, uv's and everything else's caches into ``/tmp``."""
        return {
            "HOME": "/tmp",  # noqa: S108 - the sandbox's own private /tmp
            "XDG_CACHE_HOME": "/tmp/cache",  # noqa: S108
            "UV_CACHE_DIR": "/tmp/cache/uv",  # noqa: S108
            "PIP_CACHE_DIR": "/tmp/cache/pip",  # noqa: S108
            "TMPDIR": "/tmp",  # noqa: S108
        }


def interpreter_roots(
    prefix: str, python: str | None = None, hidden: Sequence[str] = ()
) -> list[str]:
    """Folders outside ``prefix`` that its interpreter needs: for a venv the base installation
    named by ``pyvenv.cfg``'s ``home``, and wherever a symlinked ``python`` really lives.

    The prefix is written by installs (a wheel may replace ``pyvenv.cfg``), so what it names is
    not trusted: a root is kept only when it holds a ``bin/python*`` program and neither lies in
    nor contains one of ``hidden`` (the data directory, the HOMEs) or ``/``."""
    roots: list[str] = []
    cfg = os.path.join(prefix, "pyvenv.cfg")
    try:
        with open(cfg, encoding="utf-8") as f:
            for line in f:
                key, sep, value = line.partition("=")
                if sep and key.strip() == "home":
                    home = value.strip()
                    roots.append(os.path.dirname(home.rstrip("/")) or home)
    except OSError:
        pass
    if python is not None:
        real = os.path.realpath(python)
        if not _inside(real, prefix):
            roots.append(os.path.dirname(os.path.dirname(real)))
    out: list[str] = []
    for root in roots:
        real_root = os.path.realpath(root)
        if not _looks_like_python(real_root) or any(
            _inside(real_root, h) or _inside(os.path.realpath(h), real_root) for h in hidden
        ):
            continue
        for candidate in (root, real_root):
            if candidate not in out and not _inside(candidate, prefix) and candidate != "/":
                out.append(candidate)
    return out


def _looks_like_python(root: str) -> bool:
    """``root/bin`` holds an executable ``python...``."""
    try:
        names = os.listdir(os.path.join(root, "bin"))
    except OSError:
        return False
    return any(
        n.startswith("python") and os.access(os.path.join(root, "bin", n), os.X_OK) for n in names
    )


def _ancestors(path: str) -> list[str]:
    """``/a/b/c`` -> ``["/a", "/a/b"]``."""
    parts = [p for p in path.split("/") if p]
    return ["/" + "/".join(parts[:i]) for i in range(1, len(parts))]


def _inside(path: str, folder: str) -> bool:
    folder = folder.rstrip("/") or "/"
    return path == folder or path.startswith(folder + "/")


@attrs.define
class Sandbox:
    """Builds ``bwrap`` command lines.

    ``hidden``: folders never visible inside, even where they lie under a system path (the data
    directory and the HOMEs folder, e.g. when the data directory is under ``/opt``).
    """

    bwrap: str
    hidden: tuple[str, ...] = ()
    prlimit: str | None = attrs.field(factory=lambda: shutil.which("prlimit"))
    setpriv: str | None = attrs.field(factory=lambda: shutil.which("setpriv"))
    unshare: str | None = attrs.field(factory=lambda: shutil.which("unshare"))
    disable_userns: bool = False
    """bubblewrap >= 0.8 can forbid the sandbox to make user namespaces of its own."""

    @classmethod
    def find(cls, hidden: Sequence[str] = ()) -> Sandbox | None:
        """A sandbox over the ``bwrap`` on PATH, or None when there is none."""
        exe = shutil.which("bwrap")
        if exe is None:
            return None
        box = cls(bwrap=exe, hidden=tuple(os.path.abspath(h) for h in hidden))
        box.disable_userns = _supports(exe, "--disable-userns")
        return box

    def command(
        self,
        argv: Sequence[str],
        *,
        cwd: str,
        readonly: Sequence[str] = (),
        writable: Sequence[str] = (),
        network: bool = True,
        max_processes: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        tmpfs_bytes: int | None = None,
    ) -> list[str]:
        """``argv`` run inside a new sandbox, in ``cwd`` (which must be among ``writable`` or
        ``readonly``). Paths that do not exist are left out. ``uid``/``gid``: the server is
        root and the run switches to them inside (bubblewrap itself must then run as root)."""
        args = [
            self.bwrap,
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
            "--hostname",
            "ctm-run",
            "--die-with-parent",
            "--new-session",
        ]
        if uid is None:
            args += ["--unshare-user", "--cap-drop", "ALL"]
            if self.disable_userns:
                args.append("--disable-userns")
        if not network:
            args.append("--unshare-net")
        for path in SYSTEM_PATHS:
            args += _bind_system(path)
        # Writable by the run's uid (under root the mounts are root's), and each no larger than
        # the run's memory limit: files in them are memory no process's RSS shows.
        size = [] if tmpfs_bytes is None else ["--size", str(max(tmpfs_bytes, 1 << 20))]
        args += ["--proc", "/proc", "--dev", "/dev"]
        for path, cap in (("/tmp", size), ("/dev/shm", size), ("/run", ["--size", "16777216"])):  # noqa: S108
            args += ["--perms", "1777", *cap, "--tmpfs", path]
        for path in OPTIONAL_SYSTEM_PATHS:
            if os.path.isdir(path):
                args += ["--ro-bind-try", path, path]
        for path in self.hidden:
            if any(_inside(path, system) for system in SYSTEM_PATHS):
                args += ["--tmpfs", path]
        made: set[str] = set()
        binds = [("--ro-bind", p) for p in readonly] + [("--bind", p) for p in writable]
        for option, path in binds:
            if not os.path.exists(path):
                continue
            # Folders on the way are made 0755 (bubblewrap would copy a mode such as /root's
            # 0700, which the run's uid could not cross); they hold nothing but what is bound.
            for parent in _ancestors(path):
                if parent not in made and not any(_inside(parent, s) for s in SYSTEM_PATHS):
                    args += ["--perms", "0755", "--dir", parent]
                    made.add(parent)
            args += [option, path, path]
        args += ["--chdir", cwd, "--"]
        nproc = None if max_processes is None else max_processes + INIT_PROCESSES
        if uid is not None:
            if self.setpriv is None or self.unshare is None:
                raise SandboxUnavailable("setpriv and unshare (util-linux) are needed under root")
            args += [
                self.setpriv,
                f"--reuid={uid}",
                f"--regid={gid if gid is not None else uid}",
                "--clear-groups",
                "--inh-caps=-all",
                "--bounding-set=-all",
                "--",
                self.unshare,
                "--user",
                "--map-current-user",
                "--",
            ]
            nproc = max_processes  # bubblewrap's init stays outside the run's user namespace
        if nproc is not None:
            if self.prlimit is None:
                raise SandboxUnavailable("prlimit (util-linux) is needed for max_processes")
            args += [self.prlimit, f"--nproc={nproc}", "--"]
        args += list(argv)
        return args

    def check(self, identity: RunIdentity | None = None, timeout: float = 20.0) -> None:
        """A trial run of ``true`` in a sandbox as a run would get it (as ``identity``'s uid);
        raises ``SandboxUnavailable`` with bubblewrap's own message when it fails."""
        true = shutil.which("true") or "/bin/true"
        uid = None if identity is None else identity.uid
        gid = None if identity is None else identity.gid
        # With a process limit, as every run has one: prlimit (and under root setpriv and
        # unshare) must be there too, or no run could start.
        argv = self.command([true], cwd="/", max_processes=8, uid=uid, gid=gid)
        try:
            done = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
                cwd="/",
                check=False,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise SandboxUnavailable(f"bwrap could not run: {exc}") from None
        if done.returncode != 0:
            message = (done.stderr or done.stdout).decode(errors="replace").strip()
            raise SandboxUnavailable(
                f"bwrap failed (exit {done.returncode}): {message or 'no message'}"
            )


def _bind_system(path: str) -> list[str]:
    """``path`` read-only, or as the same symlink where it is one (merged /usr systems)."""
    if os.path.islink(path):
        return ["--symlink", os.readlink(path), path]
    if os.path.isdir(path):
        return ["--ro-bind", path, path]
    return []


def _supports(bwrap: str, option: str) -> bool:
    try:
        done = subprocess.run([bwrap, "--help"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return option.encode() in done.stdout + done.stderr
