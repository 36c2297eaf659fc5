"""A small JSON Schema validator for the keywords ``bench.schema.json`` uses (draft 2020-12
subset), so the tests need no dependency; ``jsonschema`` is used instead when installed."""

from __future__ import annotations

from typing import Any

_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}
_KNOWN = {
    "$schema", "$id", "title", "description", "type", "const", "enum", "required",
    "properties", "additionalProperties", "items", "minItems", "minimum", "maximum",
    "exclusiveMinimum", "oneOf", "minLength",
}  # fmt: skip


def errors(instance: Any, schema: dict[str, Any], path: str = "$") -> list[str]:
    """Every way ``instance`` breaks ``schema`` (empty: valid)."""
    unknown = set(schema) - _KNOWN
    assert not unknown, f"schema keyword(s) this validator does not know: {unknown}"
    found: list[str] = []
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_TYPES[t](instance) for t in types):
            return [f"{path}: {instance!r} is not of type {types}"]
    if "const" in schema and instance != schema["const"]:
        found.append(f"{path}: {instance!r} != {schema['const']!r}")
    if "enum" in schema and instance not in schema["enum"]:
        found.append(f"{path}: {instance!r} not in {schema['enum']}")
    if "oneOf" in schema:
        matches = [s for s in schema["oneOf"] if not errors(instance, s, path)]
        if len(matches) != 1:
            found.append(f"{path}: {instance!r} matches {len(matches)} of oneOf")
    if _TYPES["number"](instance):
        if "minimum" in schema and instance < schema["minimum"]:
            found.append(f"{path}: {instance} < {schema['minimum']}")
        if "maximum" in schema and instance > schema["maximum"]:
            found.append(f"{path}: {instance} > {schema['maximum']}")
        if "exclusiveMinimum" in schema and instance <= schema["exclusiveMinimum"]:
            found.append(f"{path}: {instance} <= {schema['exclusiveMinimum']}")
    if isinstance(instance, str) and len(instance) < schema.get("minLength", 0):
        found.append(f"{path}: shorter than {schema['minLength']}")
    if isinstance(instance, dict):
        for key in schema.get("required", []):
            if key not in instance:
                found.append(f"{path}: missing {key!r}")
        props = schema.get("properties", {})
        for key, value in instance.items():
            if key in props:
                found.extend(errors(value, props[key], f"{path}.{key}"))
            elif schema.get("additionalProperties", True) is False:
                found.append(f"{path}: unexpected property {key!r}")
    if isinstance(instance, list):
        if len(instance) < schema.get("minItems", 0):
            found.append(f"{path}: fewer than {schema['minItems']} items")
        if "items" in schema:
            for i, item in enumerate(instance):
                found.extend(errors(item, schema["items"], f"{path}[{i}]"))
    return found


def validate(instance: Any, schema: dict[str, Any]) -> None:
    """Raise ``AssertionError`` listing the problems unless ``instance`` is valid."""
    try:
        import jsonschema
    except ImportError:
        problems = errors(instance, schema)
        assert not problems, "\n".join(problems)
    else:  # pragma: no cover - not installed here
        jsonschema.validate(instance, schema)
