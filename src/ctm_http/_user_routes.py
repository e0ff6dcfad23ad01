"""User administration, one's own password, API tokens, and the audit log."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ctm_core.auth import require_admin
from ctm_core.commands import NewToken, Page, PasswordChange, UserUpdate
from ctm_core.models import Principal
from ctm_http import _serialize as ser
from ctm_http._request import (
    authenticated,
    call,
    call_login,
    ok,
    read_json,
    services,
    session_token,
)


@authenticated
async def list_users(request: Request, actor: Principal) -> Response:
    svc = services(request)
    return ok(ser.users(await call(svc.users.list_users, actor), svc.tz))


@authenticated
async def update_user(request: Request, actor: Principal) -> Response:
    svc = services(request)
    require_admin(actor)  # before reading a body (the use case checks it again)
    update = UserUpdate.from_json(await read_json(request))
    username = request.path_params["username"]
    # A new password is hashed (argon2id): with the logins' threads.
    view, ended = await call_login(request, svc.users.update_user, actor, username, update)
    return ok(ser.user_updated(view, ended, svc.tz))


@authenticated
async def delete_user(request: Request, actor: Principal) -> Response:
    await call(services(request).users.delete_user, actor, request.path_params["username"])
    return ok(ser.user_deleted())


@authenticated
async def change_password(request: Request, actor: Principal) -> Response:
    svc = services(request)
    change = PasswordChange.from_json(await read_json(request))
    token = session_token(request)
    ended = await call_login(request, svc.auth.change_password, actor, change, token)
    return ok(ser.password_changed(ended))


@authenticated
async def audit_log(request: Request, actor: Principal) -> Response:
    svc = services(request)
    page = Page.from_query(request.query_params.get("limit"), request.query_params.get("before"))
    events, next_before = await call(svc.audit.page, actor, page)
    return ok(ser.audit_page(events, next_before, svc.tz))


@authenticated
async def create_token(request: Request, actor: Principal) -> Response:
    svc = services(request)
    command = NewToken.from_json(await read_json(request))
    created = await call(svc.tokens.create, actor, command)
    return ok(ser.token_created(created.token, created.info, actor.username, svc.tz), 201)


@authenticated
async def list_tokens(request: Request, actor: Principal) -> Response:
    svc = services(request)
    return ok(ser.tokens(await call(svc.tokens.list, actor), svc.tz))


@authenticated
async def delete_token(request: Request, actor: Principal) -> Response:
    svc = services(request)
    await call(svc.tokens.delete, actor, request.path_params["token_id"])
    return ok(ser.token_deleted())


ROUTES = [
    Route("/api/users", list_users, methods=["GET"]),
    Route("/api/users/{username}", update_user, methods=["PATCH"]),
    Route("/api/users/{username}", delete_user, methods=["DELETE"]),
    Route("/api/me/password", change_password, methods=["POST"]),
    Route("/api/audit", audit_log, methods=["GET"]),
    Route("/api/tokens", create_token, methods=["POST"]),
    Route("/api/tokens", list_tokens, methods=["GET"]),
    Route("/api/tokens/{token_id:int}", delete_token, methods=["DELETE"]),
]
