"""JSON Schema building blocks of the API's description, and ``Body``: one declaration of a
JSON object the server writes, from which its schema is derived and against which the
serializers are tested (``tests/unit/test_openapi.py``)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import attrs

from ctm_core.validation import (
    ENV_NAME_RE,
    MAX_SPEC_LENGTH,
    MAX_SPECS,
    PACKAGE_NAME_RE,
    SPEC_RE,
)

Schema = dict[str, Any]
"""A JSON Schema; while declaring, its values may hold ``Body`` objects (see ``to_schema``)."""


@attrs.frozen(eq=False)
class Body:
    """A JSON object the server writes: its keys in the documented order, each with its schema
    (a ``Schema``, or a ``Body`` for a nested object). Keys in ``optional`` may be missing; the
    others are always there. A ``name`` makes it a component schema (referenced by
    ``$ref``); a ``base`` makes it ``allOf: [base, these keys]``."""

    fields: Mapping[str, Any]
    optional: frozenset[str] = frozenset()
    name: str | None = None
    description: str = ""
    base: Body | None = None

    @property
    def keys(self) -> dict[str, Any]:
        """Every key, the base's first."""
        return {**(self.base.keys if self.base else {}), **self.fields}

    @property
    def required(self) -> set[str]:
        own = {k for k in self.fields if k not in self.optional}
        return own | (self.base.required if self.base else set())

    def schema(self) -> Schema:
        """The object's own schema (``to_schema(body)`` is a ``$ref`` when it has a name)."""
        schema: Schema = {
            "type": "object",
            "properties": {k: to_schema(v) for k, v in self.fields.items()},
        }
        required = [k for k in self.fields if k not in self.optional]
        if required:
            schema["required"] = required
        if self.description:
            schema["description"] = self.description
        if self.base is not None:
            return {"allOf": [to_schema(self.base), schema]}
        return schema


def body(
    required: Mapping[str, Any],
    optional: Mapping[str, Any] | None = None,
    *,
    name: str | None = None,
    description: str = "",
    base: Body | None = None,
) -> Body:
    """A ``Body`` with these required keys, then these optional ones. Other keys are allowed in
    the schema (contract.md: "Extra keys are allowed; renamed or missing keys are not"), but the
    serializers' test refuses them: each key the server writes is declared here."""
    return Body(
        fields={**required, **(optional or {})},
        optional=frozenset(optional or ()),
        name=name,
        description=description,
        base=base,
    )


def to_schema(spec: Any) -> Any:
    """A declaration as plain JSON Schema: a named ``Body`` becomes a ``$ref``, another its
    schema, inside any dict or list."""
    if isinstance(spec, Body):
        return ref(spec.name) if spec.name else spec.schema()
    if isinstance(spec, dict):
        return {k: to_schema(v) for k, v in spec.items()}
    if isinstance(spec, list | tuple):
        return [to_schema(v) for v in spec]
    return spec


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(
    required: dict[str, Schema], optional: dict[str, Schema] | None = None, **extra: Any
) -> Schema:
    """A plain object schema (requests, and objects no serializer writes)."""
    schema: Schema = {"type": "object", "properties": {**required, **(optional or {})}}
    if required:
        schema["required"] = list(required)
    schema.update(extra)
    return schema


def null(schema: Any) -> Schema:
    """``schema`` or null."""
    if (
        isinstance(schema, dict)
        and isinstance(schema.get("type"), str)
        and set(schema) <= {"type", "pattern", "minimum", "format", "description", "examples"}
    ):
        return {**schema, "type": [schema["type"], "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def const(value: Any) -> Schema:
    return {"const": value}


def array(items: Any, **extra: Any) -> Schema:
    return {"type": "array", "items": items, **extra}


def pattern(regex: str) -> str:
    return f"^(?:{regex})$"


def _escape(text: str) -> str:
    return "".join("\\" + c if c in r"\.^$|?*+()[]{}" else c for c in text)


def text(template: str) -> Schema:
    """The schema of a text written from ``template`` (``str.format`` style): the text itself,
    or a pattern where each ``{placeholder}`` is any text (a trailing one: any continuation)."""
    parts = re.split(r"\{\w*\}", template)
    if len(parts) == 1:
        return const(template)
    regex = "^" + ".*".join(_escape(p) for p in parts)
    if parts[-1]:
        regex += "$"
    elif regex.endswith(".*"):
        regex = regex[:-2]
    return {"type": "string", "pattern": regex}


STR: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
NUM: Schema = {"type": "number"}
BOOL: Schema = {"type": "boolean"}
TRUE: Schema = const(True)
TIME: Schema = {
    "type": "string",
    "pattern": r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$",
    "description": "YYYY-MM-DD HH:MM:SS in the server's time zone",
}
DATE: Schema = {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$"}
STR_LIST: Schema = array(STR)
ENV_NAME: Schema = {
    "type": "string",
    "pattern": pattern(ENV_NAME_RE.pattern),
    "description": "1-64 characters of A-Z a-z 0-9 _ . -, not starting with '-' or '.', "
    "not 'base' or 'root'",
}
SPECS: Schema = {
    "type": "array",
    "minItems": 1,
    "maxItems": MAX_SPECS,
    "items": {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_SPEC_LENGTH,
        "pattern": pattern(SPEC_RE.pattern),
    },
    "description": "Package specs: a name of A-Z a-z 0-9 _ . - starting with a letter or digit, "
    "optionally followed by version constraints (==1.2, >=3.4.0, =1.2.*, <2,>=1, !=1.0)",
}
PACKAGE_NAMES: Schema = {
    **SPECS,
    "items": {**SPECS["items"], "pattern": pattern(PACKAGE_NAME_RE.pattern)},
    "description": "Package names (no version constraints)",
}
