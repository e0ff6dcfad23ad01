"""The ``ctm`` command: ``ctm serve`` and ``ctm user add NAME``."""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import sys
from collections.abc import Sequence

from ctm_http.settings import settings_from_env


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctm", description="Conda Task Manager")
    parser.add_argument("--data-dir", help="data directory (CTM_DATA_DIR)")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", help="address to listen on (CTM_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (CTM_PORT, default 8000)")
    serve.add_argument("--data-dir", dest="serve_data_dir", help="data directory (CTM_DATA_DIR)")
    serve.add_argument(
        "--backend", choices=("auto", "conda", "venv"),
        help="environment backend (CTM_BACKEND, default auto: conda when found, else venv)",
    )
    serve.add_argument("--conda-exe", help="conda, mamba or micromamba executable (CTM_CONDA_EXE)")

    user = sub.add_parser("user", help="manage users")
    user_sub = user.add_subparsers(dest="user_command", required=True)
    add = user_sub.add_parser("add", help="add a user (password from a prompt or stdin)")
    add.add_argument("name")
    add.add_argument("--admin", action="store_true", help="make the user an admin")
    add.add_argument("--data-dir", dest="user_data_dir", help="data directory (CTM_DATA_DIR)")
    return parser


def _read_password() -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if first != getpass.getpass("Repeat password: "):
            raise SystemExit("ctm: passwords differ")
        return first
    return sys.stdin.readline().rstrip("\r\n")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    data_dir = (
        getattr(args, "serve_data_dir", None) or getattr(args, "user_data_dir", None)
        or args.data_dir
    )
    if args.command == "serve":
        import uvicorn

        from ctm_adapters._hardening import make_undumpable, scrub_environment
        from ctm_http.app import create_app

        settings = settings_from_env(
            os.environ, host=args.host, port=args.port, data_dir=data_dir,
            backend=args.backend, conda_exe=args.conda_exe,
        )
        # The password is in the settings now; no process should find it in ours.
        scrub_environment(["CTM_ADMIN_PASSWORD"])
        if not make_undumpable():
            logging.getLogger("ctm").warning("ctm: could not make the server non-dumpable")
        uvicorn.run(
            create_app(settings), host=settings.host, port=settings.port,
            log_level="info", proxy_headers=False, lifespan="on",
        )
        return 0
    if args.command == "user" and args.user_command == "add":
        from ctm_adapters.clock import SystemClock
        from ctm_adapters.passwords import Argon2PasswordHasher
        from ctm_adapters.sqlite import SqliteRepository
        from ctm_core.auth import Authenticator
        from ctm_core.errors import CtmError

        settings = settings_from_env(os.environ, data_dir=data_dir)
        os.makedirs(settings.data_dir, mode=0o700, exist_ok=True)
        repo = SqliteRepository(os.path.join(settings.data_dir, "ctm.sqlite3"))
        auth = Authenticator(repo, Argon2PasswordHasher(), SystemClock())
        try:
            user = auth.add_user(args.name, _read_password(), bool(args.admin))
        except CtmError as exc:
            print(f"ctm: {exc.message}: {exc.error or ''}".rstrip(": "), file=sys.stderr)
            return 1
        finally:
            repo.close()
        kind = "admin" if user.is_admin else "user"
        print(f"ctm: added {kind} '{user.username}'")
        return 0
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
