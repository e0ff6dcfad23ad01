"""The API description: ``GET /openapi.json`` (OpenAPI 3.1) and ``GET /docs`` (plain HTML).

Assembled from declarations kept elsewhere, never typed here: the bodies in ``_bodies`` (which
``_serialize`` renders), the wording of each error on its class in ``ctm_core.errors``, each
error's status in the one table (``_errors.STATUS``), the routes in ``_operations``, and the
patterns from the validators' regexes. ``tests/unit/test_openapi.py`` checks that no route,
query parameter or reachable status is missing, and that docs/api.md is generated from it:
``python -m ctm_http.openapi markdown > docs/api.md``.

Both routes answer without a session, on purpose: the description is the public contract of
the API (the same text as docs/api.md), it holds no data, and tools (schemathesis, client
generators, a liveness probe) can read it without logging in. Every route it describes still
needs its session.
"""

from __future__ import annotations

import functools
import html
import json
from collections.abc import Iterable
from importlib import metadata
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ctm_core import errors as e
from ctm_core.validation import USERNAME_RE
from ctm_http._bodies import COMPONENT_SCHEMAS, error_body_of
from ctm_http._errors import (
    BODY_TOO_LARGE,
    INTERNAL_ERROR,
    INVALID_BODY,
    METHOD_NOT_ALLOWED,
    ROUTE_NOT_FOUND,
    UNSUPPORTED_MEDIA_TYPE,
    error_body,
    status_of,
)
from ctm_http._op import Example, Op
from ctm_http._operations import HTML_OPS, OPERATIONS
from ctm_http._schema import ENV_NAME, INT, SPECS, STR, Schema, pattern, ref, to_schema

__all__ = [
    "COMPONENT_SCHEMAS",
    "ENV_NAME",
    "OPERATIONS",
    "SPECS",
    "error_sources",
    "main",
    "operation",
    "render_docs",
    "render_markdown",
    "response_schema",
    "routes",
    "spec",
]

# --- building the document ---------------------------------------------------------------------


def _path_params(path: str) -> list[Schema]:
    params = []
    if "{name}" in path:
        params.append(
            {
                "name": "name",
                "in": "path",
                "required": True,
                "description": "Environment name",
                "schema": ENV_NAME,
            }
        )
    if "{username}" in path:
        params.append(
            {
                "name": "username",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "pattern": pattern(USERNAME_RE.pattern)},
            }
        )
    if "{token_id}" in path:
        params.append(
            {
                "name": "token_id",
                "in": "path",
                "required": True,
                "schema": {"type": "integer", "minimum": 1},
            }
        )
    if "{task_id}" in path:
        params.append(
            {
                "name": "task_id",
                "in": "path",
                "required": True,
                "schema": {"type": "integer", "minimum": 1},
            }
        )
    if "{execution_id}" in path:
        params.append(
            {
                "name": "execution_id",
                "in": "path",
                "required": True,
                "description": "An execution of the task (`execution_id` in its history)",
                "schema": {"type": "string", "minLength": 1},
            }
        )
    return params


def error_sources(op: Op) -> list[tuple[int, str]]:
    """(status, schema name) of every error ``op`` can answer: its domain errors, and what the
    HTTP layer adds (cross-site refusal, missing session, bad body, routing, 503 on a change
    the store cannot write, 500)."""
    out: list[tuple[int, str]] = []
    domain: list[type[e.CtmError]] = list(op.errors)
    if op.method not in ("GET", "HEAD", "OPTIONS"):
        domain.append(e.CrossSiteRequest)
    if op.auth == "required":
        domain.append(e.AuthenticationRequired)
    for cls in domain:
        out.append((status_of(cls), str(error_body_of(cls).name)))
    if op.body is not None:
        out += [(x.status, x.name) for x in (INVALID_BODY, BODY_TOO_LARGE, UNSUPPORTED_MEDIA_TYPE)]
    if "{" in op.path:
        out += [(x.status, x.name) for x in (ROUTE_NOT_FOUND, METHOD_NOT_ALLOWED)]
    if op.method not in ("GET", "HEAD", "OPTIONS") and op.path not in HTML_OPS:
        # Any change can meet a full disk or a read-only database: nothing changed, try later.
        out.append((status_of(e.StorageUnavailable), "StorageUnavailable"))
    out += [(x.status, x.name) for x in op.http_errors]
    out.append((INTERNAL_ERROR.status, INTERNAL_ERROR.name))
    return list(dict.fromkeys(out))


_COOKIE_HEADER = {
    "Set-Cookie": {
        "description": "session=<token>; Path=/; HttpOnly; SameSite=Lax; Max-Age=900 (renewed on "
        "every authenticated request; Max-Age=0 at logout); __Host-session=<token> with Secure "
        "when the server has CTM_SECURE_COOKIES",
        "required": True,
        "schema": {"type": "string", "pattern": "^(__Host-)?session="},
    }
}

_REASONS = {
    400: "Bad request",
    401: "Authentication required or failed",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    413: "Request body too large",
    415: "Unsupported media type",
    409: "Conflict",
    429: "Too many failed login attempts",
    500: "Internal server error",
    502: "Environment backend failure",
    503: "The store cannot be written (disk full): nothing was changed; reads still work",
}


def _examples(pairs: Iterable[Example]) -> dict[str, Any]:
    return {name: {"value": value} for name, value in pairs}


def _operation(op: Op) -> Schema:
    responses: dict[str, Any] = {}
    ok: Schema = {"description": op.ok_description}
    if op.path in HTML_OPS:
        ok["content"] = {"text/html": {"schema": STR}}
    elif op.ok_media:
        ok["content"] = {media: {"schema": schema} for media, schema in op.ok_media}
    elif op.ok is not None:
        media: Schema = {"schema": to_schema(op.ok)}
        if op.ok_examples:
            media["examples"] = _examples(op.ok_examples)
        ok["content"] = {"application/json": media}
    if op.sets_cookie or op.auth == "required":
        ok["headers"] = _COOKIE_HEADER
    if op.ok_headers:
        ok["headers"] = {**ok.get("headers", {}), **dict(op.ok_headers)}
    responses[str(op.ok_status)] = ok

    by_status: dict[int, list[str]] = {}
    for status, name in error_sources(op):
        by_status.setdefault(status, []).append(name)
    for status in sorted(by_status):
        names = by_status[status]
        schema = ref(names[0]) if len(names) == 1 else {"anyOf": [ref(n) for n in names]}
        media = {"schema": schema}
        examples = [(name, value) for s, name, value in op.error_examples if s == status]
        if status == 401 and op.auth == "required":
            examples.append(("no session", error_body(e.AuthenticationRequired())))
        if examples:
            media["examples"] = _examples(examples)
        reason = _REASONS.get(status, "Error")
        own = [x for x in op.http_errors if x.status == status]
        if own and {x.name for x in own} == set(names):  # the route's own refusal alone
            reason = own[0].message
        response: Schema = {
            "description": reason + ": " + ", ".join(names),
            "content": {"application/json": media},
        }
        if status == 429:
            response["headers"] = {
                "Retry-After": {"required": True, "schema": INT, "description": "Seconds"}
            }
        if status == 405:
            response["headers"] = {"Allow": {"required": True, "schema": STR}}
        responses[str(status)] = response

    out: Schema = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "tags": [op.tag],
        "responses": responses,
    }
    if op.description:
        out["description"] = op.description
    if op.auth == "none":
        out["security"] = []
    elif op.auth == "optional":
        out["security"] = [{}, {"session": []}]
    params = _path_params(op.path) + list(op.query)
    if params:
        out["parameters"] = params
    if op.body is not None:
        media = {"schema": ref(op.body)}
        if op.body_examples:
            media["examples"] = _examples(op.body_examples)
        out["requestBody"] = {"required": True, "content": {"application/json": media}}
    return out


def _version() -> str:
    try:
        return metadata.version("ctm")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0.0.0"


@functools.cache
def spec() -> dict[str, Any]:
    """The OpenAPI 3.1 document (built once, on first use). Treat it as read-only."""
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op)
    schemas = dict(COMPONENT_SCHEMAS)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ctm - Conda Task Manager",
            "version": _version(),
            "description": (
                "Conda environments and scheduled Python runs for a shared machine. "
                "Bodies are JSON. Every route but POST /login (and this description) needs the "
                "`session` cookie that login sets, or `Authorization: Bearer <API token>`. "
                "State-changing requests with the cookie must not be cross-site (403). A request "
                "whose Host header names a host the server does not "
                'answer to (CTM_ALLOWED_HOSTS) gets 400 "Invalid Host header" before any route. '
                'Times are "YYYY-MM-DD HH:MM:SS" in the server\'s time zone; '
                "durations are seconds, memory MB, disk GB. Every error body has "
                '`"success": false` and `"message"`. Response objects may carry keys '
                "beyond the ones listed (additionalProperties is allowed); the listed "
                "required keys are always there."
            ),
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "tags": [
            {"name": "auth", "description": "Sessions and users"},
            {"name": "environments", "description": "conda (or venv) environments"},
            {"name": "tasks", "description": "Scripts run now, after a delay or on cron"},
            {"name": "meta", "description": "This description"},
        ],
        "security": [{"session": []}, {"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "session": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "session",
                    "description": "Set by POST /login; 15 minutes idle expiry, renewed by every "
                    "authenticated request; 12 hours at most. Named __Host-session when the "
                    "server has CTM_SECURE_COOKIES",
                },
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API token (POST /api/tokens): acts as its user, with no "
                    "cross-site check and no cookie; dies when deleted, expired, or its user is "
                    "disabled, given a new password or deleted",
                },
            },
            "schemas": schemas,
        },
    }


def operation(method: str, path: str) -> dict[str, Any]:
    """The operation object of ``method path`` (``path`` a template: ``/api/tasks/{task_id}``)."""
    return spec()["paths"][path][method.lower()]  # type: ignore[no-any-return]


def response_schema(method: str, path: str, status: int) -> dict[str, Any] | None:
    """A self-contained JSON Schema (2020-12) for the body of ``method path`` answering
    ``status``: ``None`` when that response has no body; ``KeyError`` when it is undocumented.
    Any JSON Schema validator can use it as it is (its ``$ref``s point into itself)."""
    response = operation(method, path)["responses"][str(status)]
    media = response.get("content", {}).get("application/json")
    if media is None:
        return None
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **media["schema"],
        "components": spec()["components"],
    }


# --- routes ------------------------------------------------------------------------------------


async def openapi_json(request: Request) -> Response:
    return JSONResponse(spec())


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{title}: API</title>
<style>
body {{ font: 15px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 60rem;
       padding: 0 1rem; color: #222; }}
table {{ border-collapse: collapse; width: 100%; margin-bottom: 2rem; }}
th, td {{ text-align: left; padding: .35rem .5rem; border-bottom: 1px solid #ddd;
          vertical-align: top; }}
code {{ font-size: 14px; }}
.m {{ font-weight: 600; font-family: monospace; }}
.muted {{ color: #666; font-size: 13px; }}
</style></head><body>
<h1>{title} <span class="muted">{version}</span></h1>
<p>{description}</p>
<p>The machine-readable description: <a href="/openapi.json">/openapi.json</a> (OpenAPI 3.1).</p>
{sections}
</body></html>
"""


def render_docs(document: dict[str, Any]) -> str:
    """The routes of ``document`` as one HTML page: no script, nothing fetched."""
    rows: dict[str, list[str]] = {}
    for path, methods in document["paths"].items():
        for method, op in methods.items():
            statuses = ", ".join(sorted(op["responses"]))
            needs = (
                "no session"
                if op.get("security") == []
                else ("session optional" if {} in op.get("security", []) else "session or token")
            )
            rows.setdefault(op["tags"][0], []).append(
                f"<tr><td class=m>{html.escape(method.upper())}</td>"
                f"<td><code>{html.escape(path)}</code></td>"
                f"<td>{html.escape(op['summary'])}"
                f"<div class=muted>{html.escape(op.get('description', ''))}</div></td>"
                f"<td class=muted>{html.escape(needs)}</td>"
                f"<td class=muted>{html.escape(statuses)}</td></tr>"
            )
    sections = []
    for tag in document.get("tags", []):
        body = "".join(rows.get(tag["name"], []))
        sections.append(
            f"<h2>{html.escape(tag['name'])}</h2><p class=muted>"
            f"{html.escape(tag.get('description', ''))}</p><table><tr><th>Method</th>"
            f"<th>Path</th><th>What</th><th>Auth</th><th>Statuses</th></tr>{body}</table>"
        )
    info = document["info"]
    return _PAGE.format(
        title=html.escape(info["title"]),
        version=html.escape(info["version"]),
        description=html.escape(info.get("description", "")),
        sections="".join(sections),
    )


@functools.cache
def _docs_page() -> str:
    return render_docs(spec())


async def docs_page(request: Request) -> Response:
    return HTMLResponse(
        _docs_page(),
        headers={
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
            "X-Content-Type-Options": "nosniff",
        },
    )


def routes() -> list[BaseRoute]:
    return [
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/docs", docs_page, methods=["GET"]),
    ]


# --- docs/api.md -------------------------------------------------------------------------------

_MD_INTRO = """\
# HTTP API

Generated from `GET /openapi.json` (`python -m ctm_http.openapi markdown > docs/api.md`; a
test fails when this file and the description differ). The description itself is served by
every ctm at `/openapi.json` (OpenAPI 3.1) and as a page at `/docs`.

## Conventions

- Bodies are JSON; send `Content-Type: application/json`. A body that is missing, not JSON or
  not an object: 400 `"Request body must be a JSON object"`; another content type: 415; larger
  than `CTM_MAX_BODY_BYTES`: 413.
- Every route except `POST /login` (and `/openapi.json`, `/docs`, the dashboard `/`) needs the
  `session` cookie set by `POST /login`: without it, 401 `"Authentication required"`. Each
  authenticated answer renews the cookie (15 minutes idle, 12 hours at most).
- A state-changing request (POST, PUT, DELETE) that a browser marks `Sec-Fetch-Site:
  cross-site`, or whose `Origin` is not the server's own, is refused with 403.
- A request whose `Host` header names a host the server does not answer to (by default its
  bind address, `localhost`, `127.0.0.1`, `[::1]`; else `CTM_ALLOWED_HOSTS`) gets 400
  `"Invalid Host header"` before any route runs, `/openapi.json`, `/docs` and the dashboard
  included (DNS rebinding). With `CTM_SECURE_COOKIES` the cookie is `__Host-session` (with
  `Secure`) instead of `session`.
- Every error body has `"success": false` and `"message"`, usually `"error"` with details, and
  sometimes more keys (listed below). A 500 says only `"Internal server error"`.
- Unknown path: 404 `"Not found"`; known path, other method: 405 `"Method not allowed"`.
- Times are `"YYYY-MM-DD HH:MM:SS"` in the server's time zone; durations in seconds, memory in
  MB, disk in GB. Objects may carry keys beyond the ones listed here.
"""


def _md_type(schema: Schema, components: dict[str, Any]) -> str:
    if "$ref" in schema:
        return f"`{schema['$ref'].rsplit('/', 1)[1]}`"
    if "const" in schema:
        return f"`{_json(schema['const'])}`"
    if "enum" in schema:
        return "one of " + ", ".join(f"`{_json(v)}`" for v in schema["enum"])
    if "anyOf" in schema:
        parts = [_md_type(s, components) for s in schema["anyOf"]]
        return " or ".join(parts)
    if "allOf" in schema:
        return " and ".join(_md_type(s, components) for s in schema["allOf"])
    kind = schema.get("type", "any")
    kinds = kind if isinstance(kind, list) else [kind]
    words = []
    for k in kinds:
        if k == "array":
            words.append("array of " + _md_type(schema.get("items", {}), components))
        else:
            words.append(k)
    return " or ".join(words)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _md_limits(schema: Schema) -> str:
    inner = schema
    if "anyOf" in schema:
        inner = next((s for s in schema["anyOf"] if s.get("type") != "null"), schema)
    notes = []
    for key, label in (
        ("minLength", "min length"),
        ("maxLength", "max length"),
        ("minimum", "min"),
        ("exclusiveMinimum", "above"),
        ("maximum", "max"),
        ("minItems", "min items"),
        ("maxItems", "max items"),
        ("pattern", "pattern"),
        ("default", "default"),
    ):
        if key in inner:
            value = inner[key]
            notes.append(f"{label} `{value}`" if key == "pattern" else f"{label} {_json(value)}")
    if "description" in inner:
        notes.insert(0, inner["description"])
    return "; ".join(notes)


def _md_fields(schema: Schema, components: dict[str, Any]) -> list[str]:
    if "$ref" in schema:
        schema = components["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    props = schema.get("properties", {})
    if not props:
        return []
    required = set(schema.get("required", []))
    lines = ["| Field | Type | Required | Notes |", "|---|---|---|---|"]
    for name, sub in props.items():
        notes = _md_limits(sub).replace("|", "\\|")
        kind = _md_type(sub, components).replace("|", "\\|")
        lines.append(f"| `{name}` | {kind} | {'yes' if name in required else 'no'} | {notes} |")
    return lines


def render_markdown(document: dict[str, Any]) -> str:
    """docs/api.md: the description as Markdown, in the order of the routes."""
    components = document["components"]
    out = [_MD_INTRO]
    for tag in document["tags"]:
        out.append(f"## {tag['name'].capitalize()}: {tag['description']}\n")
        for path, methods in document["paths"].items():
            for method, op in methods.items():
                if op["tags"][0] != tag["name"]:
                    continue
                out.append(f"### `{method.upper()} {path}`: {op['summary']}\n")
                if op.get("description"):
                    out.append(op["description"] + "\n")
                security = op.get("security")
                auth = (
                    "No session needed."
                    if security == []
                    else "Session optional."
                    if security and {} in security
                    else "Needs the session cookie or an API token (`Authorization: Bearer`)."
                )
                out.append(auth + "\n")
                for param in op.get("parameters", []):
                    limits = _md_limits(param["schema"])
                    optional = "" if param.get("required") else " (optional)"
                    out.append(
                        f"{param['in'].capitalize()} parameter `{param['name']}`{optional}: "
                        f"{_md_type(param['schema'], components)}"
                        f"{'; ' + limits if limits else ''}.\n"
                    )
                body = op.get("requestBody", {}).get("content", {}).get("application/json")
                if body:
                    out.append("Request body:\n")
                    out += _md_fields(body["schema"], components) + [""]
                    for ex in body.get("examples", {}).values():
                        out += ["```json", _json(ex["value"]), "```", ""]
                out.append("| Status | Meaning | Body |")
                out.append("|---|---|---|")
                success_fields: list[str] = []
                for status, response in op["responses"].items():
                    content = response.get("content", {})
                    media = content.get("application/json")
                    if media is None:
                        shape = "HTML" if "text/html" in content else "none"
                        if "text/html" not in content and content:
                            shape = " or ".join(f"`{m}`" for m in content)
                    elif media["schema"].get("type") == "object":
                        shape = "the object below"
                        success_fields = _md_fields(media["schema"], components)
                    else:
                        schema = media["schema"]
                        refs = schema.get("anyOf", [schema])
                        shape = ", ".join(_md_type(s, components) for s in refs)
                    meaning = response["description"].split(": ", 1)[0]
                    out.append(f"| {status} | {meaning} | {shape} |")
                out.append("")
                if success_fields:
                    out += success_fields + [""]
                for status, response in op["responses"].items():
                    media = response.get("content", {}).get("application/json", {})
                    for name, ex in media.get("examples", {}).items():
                        out += [f"{status} ({name}):", "", "```json", _json(ex["value"]), "```", ""]
    out.append("## Schemas\n")
    for name, schema in components["schemas"].items():
        out.append(f"### `{name}`\n")
        if schema.get("description"):
            out.append(schema["description"] + "\n")
        fields = _md_fields(schema, components)
        if fields:
            out += fields + [""]
        else:
            out += [_md_type(schema, components) + "\n"]
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m ctm_http.openapi [json|markdown]``: print the description."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    kind = args[0] if args else "json"
    if kind == "markdown":
        sys.stdout.write(render_markdown(spec()))
    elif kind == "json":
        sys.stdout.write(json.dumps(spec(), indent=2, ensure_ascii=False) + "\n")
    else:
        sys.stderr.write("usage: python -m ctm_http.openapi [json|markdown]\n")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
