"""The ``ctm`` command: ``ctm serve``, ``ctm user add|list|passwd|disable|enable|delete`` and
``ctm db check|backup|init``. The user and db commands work on the data directory directly
(as its owner, on the server's machine), also while ``ctm serve`` runs."""

from __future__ import annotations

import argparse
import ctypes
import getpass
import logging
import os
import sys
from collections.abc import Mapping, Sequence

from ctm_adapters.settings import settings_from_env

MALLOC_ARENAS = 2
"""glibc malloc arenas of ``ctm serve`` unless ``MALLOC_ARENA_MAX`` says otherwise. glibc's own
bound is 8 per core, and the threads of the thread pool (~75 under load) spread over them, each
arena keeping the memory freed in it: ~400 MB RSS after ``benchmarks/load.py`` with 16 arenas,
~110-130 MB with 2 (``benchmarks/bench_serve_memory.py``). Python allocates under its GIL, so
more arenas buy little here."""
_M_ARENA_MAX = -8  # mallopt's parameter number, from glibc's <malloc.h>


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctm", description="Conda Task Manager")
    parser.add_argument("--data-dir", help="data directory (CTM_DATA_DIR)")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", help="address to listen on (CTM_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (CTM_PORT, default 8000)")
    serve.add_argument("--data-dir", dest="serve_data_dir", help="data directory (CTM_DATA_DIR)")
    serve.add_argument(
        "--backend",
        choices=("auto", "conda", "venv"),
        help="environment backend (CTM_BACKEND, default auto: conda when found, else venv)",
    )
    serve.add_argument("--conda-exe", help="conda, mamba or micromamba executable (CTM_CONDA_EXE)")

    user = sub.add_parser("user", help="manage users")
    user_sub = user.add_subparsers(dest="user_command", required=True)
    add = user_sub.add_parser("add", help="add a user (password from a prompt or stdin)")
    add.add_argument("name")
    add.add_argument("--admin", action="store_true", help="make the user an admin")
    user_commands = [add]
    user_commands.append(user_sub.add_parser("list", help="list users"))
    for name, text in (
        ("passwd", "set a user's password (from a prompt or stdin); ends their sessions"),
        ("disable", "stop a user from logging in; ends their sessions"),
        ("enable", "let a disabled user log in again"),
        ("delete", "delete a user who owns no tasks; their environments go to no owner"),
    ):
        one = user_sub.add_parser(name, help=text)
        one.add_argument("name")
        user_commands.append(one)
    for one in user_commands:
        one.add_argument("--data-dir", dest="user_data_dir", help="data directory (CTM_DATA_DIR)")

    db = sub.add_parser("db", help="check, back up or create the database")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_check = db_sub.add_parser("check", help="run SQLite's integrity check; count the rows")
    db_backup = db_sub.add_parser("backup", help="copy the database, also while ctm serves")
    db_backup.add_argument("path", help="the new file (an existing one is not overwritten)")
    db_init = db_sub.add_parser("init", help="create the database where none or an empty file is")
    for db_parser in (db_check, db_backup, db_init):
        db_parser.add_argument(
            "--data-dir", dest="db_data_dir", help="data directory (CTM_DATA_DIR)"
        )
    return parser


def _read_password() -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if first != getpass.getpass("Repeat password: "):
            raise SystemExit("ctm: passwords differ")
        return first
    return sys.stdin.readline().rstrip("\r\n")


def bound_malloc_arenas(environ: Mapping[str, str], arenas: int = MALLOC_ARENAS) -> int | None:
    """Cap glibc's malloc arenas of this process at ``arenas`` (``mallopt(M_ARENA_MAX)``).

    Call it before any thread starts: glibc fixes its limit once a few arenas exist. Returns the
    cap set; None when the user set ``MALLOC_ARENA_MAX`` (glibc applies it itself), when this
    is not glibc, or when mallopt refuses. Processes started later (runs, supervisors, pip)
    keep glibc's defaults: they do not inherit a ``mallopt``.
    """
    if environ.get("MALLOC_ARENA_MAX"):
        return None
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return None
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except (ValueError, OSError):  # not glibc (musl, macOS): nothing to bound
        return None
    return arenas if libc.mallopt(_M_ARENA_MAX, arenas) == 1 else None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    data_dir = (
        getattr(args, "serve_data_dir", None)
        or getattr(args, "user_data_dir", None)
        or args.data_dir
    )
    if args.command == "serve":
        bound_malloc_arenas(os.environ)  # first, while this process has one thread
        from ctm_adapters._hardening import make_undumpable, scrub_environment
        from ctm_adapters.bootstrap import DatabaseUnusable, check_database
        from ctm_http._serve import serve
        from ctm_http.app import create_app

        settings = settings_from_env(
            os.environ,
            host=args.host,
            port=args.port,
            data_dir=data_dir,
            backend=args.backend,
            conda_exe=args.conda_exe,
        )
        try:  # here, not only in the app's lifespan: uvicorn would print a traceback
            check_database(settings)
        except DatabaseUnusable as exc:
            print(f"ctm: {exc}", file=sys.stderr)
            return 1
        # The password is in the settings now; no process should find it in ours.
        scrub_environment(["CTM_ADMIN_PASSWORD"])
        if not make_undumpable():
            logging.getLogger("ctm").warning("ctm: could not make the server non-dumpable")
        serve(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            header_timeout=settings.header_timeout_seconds,
        )
        return 0
    if args.command == "user":
        return _user_command(args, data_dir)
    if args.command == "db":
        return _db_command(args, args.db_data_dir or data_dir)
    return 2


def _user_command(args: argparse.Namespace, data_dir: str | None) -> int:
    """``ctm user ...``: 0 when done, 1 (with the API's message on stderr) when refused."""
    from ctm_adapters.bootstrap import DatabaseUnusable, build_services, stop_services
    from ctm_core.commands import NewUser, UserUpdate
    from ctm_core.errors import CtmError
    from ctm_core.users import OPERATOR

    try:
        svc = build_services(settings_from_env(os.environ, data_dir=data_dir))
    except DatabaseUnusable as exc:
        print(f"ctm: {exc}", file=sys.stderr)
        return 1
    command = args.user_command
    try:
        if command == "add":
            user = svc.auth.add_user(
                NewUser(username=args.name, password=_read_password(), is_admin=bool(args.admin))
            )
            svc.audit.record(OPERATOR, "user.create", user.username, is_admin=user.is_admin)
            print(f"ctm: added {'admin' if user.is_admin else 'user'} '{user.username}'")
        elif command == "list":
            views = svc.users.list_users(OPERATOR)
            print(f"{'USER':<24} {'ADMIN':<6} {'DISABLED':<9} {'SESSIONS':<9} CREATED")
            for v in views:
                created = v.user.created_at.astimezone(svc.tz).strftime("%Y-%m-%d %H:%M")
                print(
                    f"{v.user.username:<24} {'yes' if v.user.is_admin else 'no':<6}"
                    f" {'yes' if v.user.disabled else 'no':<9} {v.sessions:<9} {created}"
                )
        elif command == "delete":
            svc.users.delete_user(OPERATOR, args.name)
            print(f"ctm: deleted user '{args.name}'")
        else:
            update = {
                "passwd": lambda: UserUpdate(password=_read_password()),
                "disable": lambda: UserUpdate(disabled=True),
                "enable": lambda: UserUpdate(disabled=False),
            }[command]()
            view, ended = svc.users.update_user(OPERATOR, args.name, update)
            done = {"passwd": "set the password of", "disable": "disabled", "enable": "enabled"}
            print(f"ctm: {done[command]} '{view.user.username}'; {ended} session(s) ended")
    except CtmError as exc:
        print(f"ctm: {exc.message}: {exc.error or ''}".rstrip(": "), file=sys.stderr)
        return 1
    finally:
        stop_services(svc)
    return 0


def _db_command(args: argparse.Namespace, data_dir: str | None) -> int:
    """``ctm db check``, ``ctm db backup PATH`` and ``ctm db init``: 0 when done, 1 (with the
    reason on stderr) when the database is unusable or the command refused."""
    from ctm_adapters.bootstrap import (
        DatabaseUnusable,
        backup_database,
        database_path,
        describe_database,
        init_database,
    )

    settings = settings_from_env(os.environ, data_dir=data_dir)
    path = database_path(settings)
    try:
        if args.db_command == "check":
            report = describe_database(settings)
            if not report.migrations:
                print(f"ctm: {path} is OK: an empty SQLite database; ctm's next start fills it")
                return 0
            pending = f", {len(report.pending)} migrations pending" if report.pending else ""
            print(
                f"ctm: {path} is OK (PRAGMA integrity_check): schema {report.migrations[-1]}"
                f"{pending}; {report.users} users, {report.tasks} tasks,"
                f" {report.executions} executions"
            )
        elif args.db_command == "backup":
            try:
                copy = backup_database(settings, args.path)
            except FileExistsError:
                print(f"ctm: {args.path} exists: choose a new file name", file=sys.stderr)
                return 1
            except OSError as exc:
                print(f"ctm: cannot write {args.path}: {exc.strerror}", file=sys.stderr)
                return 1
            print(
                f"ctm: backed up {path} to {copy.path}: {copy.users} users, {copy.tasks} tasks,"
                f" {copy.executions} executions"
            )
        else:
            if init_database(settings):
                print(f"ctm: created a new ctm database at {path}; `ctm serve` adds the admin")
            else:
                print(f"ctm: {path} is already a ctm database; nothing changed")
    except DatabaseUnusable as exc:
        print(f"ctm: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
