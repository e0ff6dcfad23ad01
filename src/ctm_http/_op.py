"""What the description says of one route (``Op``), and the parts several routes share."""

from __future__ import annotations

from typing import Any

import attrs

from ctm_core import errors as e
from ctm_core.commands import DEFAULT_PAGE, MAX_PAGE
from ctm_http._errors import HttpError
from ctm_http._schema import STR, Schema, obj

OPENAPI_DOCUMENT = obj({"openapi": STR, "info": {"type": "object"}, "paths": {"type": "object"}})

Example = tuple[str, Any]


@attrs.frozen(kw_only=True)
class Op:
    """One route as the description shows it."""

    method: str
    path: str
    operation_id: str
    summary: str
    tag: str
    ok_status: int = 200
    ok: Any = None  # the success body: a Body or a schema (which may hold Bodies)
    ok_description: str = "Success"
    ok_examples: tuple[Example, ...] = ()
    body: str | None = None  # component name of the JSON request body
    body_examples: tuple[Example, ...] = ()
    errors: tuple[type[e.CtmError], ...] = ()
    error_examples: tuple[tuple[int, str, Any], ...] = ()
    query: tuple[Schema, ...] = ()  # query parameters
    auth: str = "required"  # required | none | optional
    description: str = ""
    sets_cookie: bool = False
    ok_media: tuple[tuple[str, Schema], ...] = ()
    """Success bodies that are not JSON: (media type, schema), in the order of preference."""
    ok_headers: tuple[tuple[str, Schema], ...] = ()
    """Headers of the success answer besides the session cookie: (name, header object)."""
    http_errors: tuple[HttpError, ...] = ()
    """Refusals of the HTTP layer that only this route answers (``_errors.HTTP_ERRORS``)."""


PAGE_QUERY = (
    {
        "name": "limit",
        "in": "query",
        "required": False,
        "description": f"Executions per page, newest first (default {DEFAULT_PAGE})",
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE},
    },
    {
        "name": "before",
        "in": "query",
        "required": False,
        "description": "The execution_id after which the page starts (the previous page's "
        "`next_before`); 400 when it is not an execution of the list",
        "schema": {"type": "string"},
    },
)
