"""The shape of ``results.json``, written as a JSON Schema and checked by a small validator.

`SCHEMA` is a standard JSON Schema (draft 2020-12 subset) so other tools can check the
file too; `validate` implements the part of it the schema uses (type, required,
properties, additionalProperties, items, enum, minimum) and returns every problem it
finds, as ``path: message`` lines, so nothing depends on the `jsonschema` package.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SCHEMA", "validate"]

_NUMBER_OR_TEXT: dict[str, Any] = {"type": ["number", "string", "boolean", "null"]}
_OBSERVED_VALUE: dict[str, Any] = {"type": ["number", "string", "boolean", "null", "array"], "items": {"type": ["number", "null"]}}

_ROW: dict[str, Any] = {
    "type": "object",
    "required": ["experiment", "setting", "seed", "citation", "expected", "observed", "outcome",
                 "agrees", "verdict_expected", "verdict", "verdict_agrees"],
    "additionalProperties": False,
    "properties": {
        "experiment": {"type": "string"},
        "setting": {"type": "object", "additionalProperties": _NUMBER_OR_TEXT},
        "seed": {"type": "integer", "minimum": 0},
        "citation": {"type": "string"},
        "expected": {"type": "string"},
        "observed": {"type": "object", "additionalProperties": _OBSERVED_VALUE},
        "outcome": {"type": "string"},
        "agrees": {"type": "boolean"},
        "verdict_expected": {"type": "string"},
        "verdict": {"type": "array", "items": {"type": "string"}},
        "verdict_agrees": {"type": "boolean"},
        "series": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": ["number", "null"]}}},
        "seconds": {"type": "number", "minimum": 0},
    },
}

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "gradwatch lab results",
    "type": "object",
    "required": ["gradwatch", "quick", "seeds", "experiments", "rows"],
    "additionalProperties": False,
    "properties": {
        "gradwatch": {"type": "string"},
        "quick": {"type": "boolean"},
        "seeds": {"type": "integer", "minimum": 1},
        "experiments": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "title", "citation", "claim", "judge"],
                "additionalProperties": False,
                "properties": {k: {"type": "string"} for k in ("name", "title", "citation", "claim", "judge")},
            },
        },
        "rows": {"type": "array", "items": _ROW},
    },
}

_TYPES: dict[str, Any] = {
    "object": dict, "array": list, "string": str, "boolean": bool, "null": type(None),
}


def _is(value: Any, t: str) -> bool:
    if t == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if t == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, _TYPES[t])


def validate(value: Any, schema: dict[str, Any] = SCHEMA, path: str = "$") -> list[str]:
    """Every way `value` breaks `schema`, one ``path: message`` line each; empty when it is valid."""
    errors: list[str] = []
    types = schema.get("type")
    if types is not None:
        allowed = [types] if isinstance(types, str) else list(types)
        if not any(_is(value, t) for t in allowed):
            return [f"{path}: expected {' or '.join(allowed)}, got {type(value).__name__}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} is not one of {schema['enum']}")
    if "minimum" in schema and _is(value, "number") and value < schema["minimum"]:
        errors.append(f"{path}: {value} is below the minimum {schema['minimum']}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        errors += [f"{path}: missing {k!r}" for k in schema.get("required", []) if k not in value]
        extra = schema.get("additionalProperties", True)
        for k, v in value.items():
            if k in props:
                errors += validate(v, props[k], f"{path}.{k}")
            elif extra is False:
                errors.append(f"{path}: unexpected key {k!r}")
            elif isinstance(extra, dict):
                errors += validate(v, extra, f"{path}.{k}")
    if isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            errors += validate(v, schema["items"], f"{path}[{i}]")
    return errors
