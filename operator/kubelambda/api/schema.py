"""Turn pydantic's JSON Schema into a Kubernetes structural OpenAPI v3 schema, and check one.

The API server only accepts *structural* schemas: every node typed, no ``$ref``, no
``anyOf``/``oneOf`` alternatives, no ``additionalProperties`` next to ``properties``. Pydantic
emits ``$defs``/``$ref``, ``anyOf [X, null]`` for optional fields and ``title`` everywhere, so
:func:`to_structural` inlines and flattens them. It fails loudly on any keyword it does not know
rather than guessing, so a new kind of field cannot silently produce a schema that the API
server would reject or (worse) accept with different rules than the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

JsonSchema = dict[str, Any]

# Keywords that mean the same in pydantic's JSON Schema and in the OpenAPI subset CRDs accept.
_COPIED = (
    "type",
    "description",
    "enum",
    "format",
    "pattern",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "required",
)
_NESTED = ("properties", "items", "additionalProperties")
# Also the order keys are written in, so the generated YAML reads top-down; x-kubernetes-* last.
_STRUCTURAL_KEYWORDS = (*_COPIED[:2], "default", *_COPIED[2:], *_NESTED)
_KUBERNETES_PREFIX = "x-kubernetes-"


class UnsupportedSchemaError(ValueError):
    """The JSON Schema uses a construct that has no structural equivalent."""


def to_structural(schema: Mapping[str, Any]) -> JsonSchema:
    """Convert a ``model_json_schema(by_alias=True)`` result into a structural schema.

    - ``$ref`` (and a lone ``allOf``) are inlined; keys next to the reference (the field's own
      description and default) override the referenced model's.
    - ``anyOf [X, {"type": "null"}]`` becomes X: optional fields are just left out of ``required``.
    - ``title``, ``$defs`` and ``additionalProperties: false`` are dropped (the API server prunes
      unknown fields instead).
    - ``default: null`` and ``default: []`` are dropped: absent reads as None / empty in the models.
    - An object default must equal what its fields' own defaults add up to (checked), so the API
      server and the model agree; it is kept in full because the API server checks a default
      against the CEL rules without filling in nested defaults first.
    - ``const`` becomes a one-value ``enum``; descriptions are joined into one line.
    """
    return _convert(schema, schema.get("$defs", {}), "")


def _convert(node: Mapping[str, Any], defs: Mapping[str, Any], path: str) -> JsonSchema:
    flat = _flatten(node, defs, path)
    out: JsonSchema = {}
    for key, value in flat.items():
        if key == "properties":
            out[key] = {name: _convert(sub, defs, f"{path}.{name}") for name, sub in value.items()}
        elif key == "items":
            out[key] = _convert(value, defs, f"{path}[]")
        elif key == "additionalProperties":
            if value is not False:
                out[key] = _convert(_require_schema(value, path), defs, f"{path}{{}}")
        elif key == "const":
            out["enum"] = [value]
        elif key == "description":
            # Line breaks in docstrings are source formatting, not meant for `kubectl explain`.
            out[key] = " ".join(value.split())
        elif key == "default":
            if value is not None and value != []:
                out[key] = value
        elif key in _COPIED or key.startswith(_KUBERNETES_PREFIX):
            out[key] = value
        elif key not in ("title", "$defs"):
            raise UnsupportedSchemaError(f"{path or '<root>'}: unsupported keyword {key!r}")
    if isinstance(out.get("default"), dict):
        out["default"] = _object_default(out, path)
    return dict(sorted(out.items(), key=_key_rank))


def _key_rank(item: tuple[str, Any]) -> tuple[int, str]:
    key = item[0]
    rank = (
        _STRUCTURAL_KEYWORDS.index(key)
        if key in _STRUCTURAL_KEYWORDS
        else len(_STRUCTURAL_KEYWORDS)
    )
    return rank, key


def _flatten(node: Mapping[str, Any], defs: Mapping[str, Any], path: str) -> JsonSchema:
    """Resolve references and nullable alternatives into one node (siblings win)."""
    rest = dict(node)
    if "$ref" in rest:
        name = rest.pop("$ref").removeprefix("#/$defs/")
        return {**_flatten(defs[name], defs, path), **rest}
    if "allOf" in rest:
        (only,) = rest.pop("allOf")
        return {**_flatten(only, defs, path), **rest}
    if "anyOf" in rest:
        branches = [branch for branch in rest.pop("anyOf") if branch != {"type": "null"}]
        if len(branches) != 1:
            raise UnsupportedSchemaError(f"{path or '<root>'}: anyOf with several non-null types")
        return {**_flatten(branches[0], defs, path), **rest}
    return rest


def _require_schema(value: object, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise UnsupportedSchemaError(f"{path or '<root>'}: additionalProperties must be a schema")
    return value


def _object_default(node: JsonSchema, path: str) -> JsonSchema:
    declared: JsonSchema = _without_empty(node["default"])
    if declared != applied_defaults(node):
        raise UnsupportedSchemaError(
            f"{path or '<root>'}: default {declared} differs from its fields' defaults"
        )
    return declared


def _without_empty(value: Any) -> Any:
    """``value`` with None and [] members removed, recursively (how the schema leaves them)."""
    if isinstance(value, dict):
        return {k: _without_empty(v) for k, v in value.items() if v is not None and v != []}
    return value


def applied_defaults(node: Mapping[str, Any]) -> JsonSchema:
    """What the API server's defaulting turns ``{}`` into for the object schema ``node``."""
    result: JsonSchema = {}
    for name, sub in node.get("properties", {}).items():
        if "default" in sub:
            default = sub["default"]
            result[name] = (
                {**applied_defaults(sub), **default} if isinstance(default, dict) else default
            )
    return result


def structural_errors(schema: Mapping[str, Any], path: str = "") -> list[str]:
    """Why ``schema`` is not a structural schema (empty when it is), one message per problem."""
    where = path or "<root>"
    errors = [
        f"{where}: keyword {key!r} is not allowed"
        for key in schema
        if key not in _STRUCTURAL_KEYWORDS and not key.startswith(_KUBERNETES_PREFIX)
    ]
    errors += _type_errors(schema, where)
    errors += _list_map_errors(schema, where)
    errors += _rule_errors(schema, where)
    for name, sub in schema.get("properties", {}).items():
        errors += structural_errors(sub, f"{path}.{name}")
    for key, suffix in (("items", "[]"), ("additionalProperties", "{}")):
        if isinstance(schema.get(key), Mapping):
            errors += structural_errors(schema[key], f"{path}{suffix}")
    return errors


def _type_errors(schema: Mapping[str, Any], where: str) -> list[str]:
    kind = schema.get("type")
    errors = []
    if not kind:
        errors.append(f"{where}: no type")
    if "properties" in schema and "additionalProperties" in schema:
        errors.append(f"{where}: both properties and additionalProperties")
    if ("properties" in schema or "additionalProperties" in schema) and kind != "object":
        errors.append(f"{where}: properties on a node of type {kind}")
    if (kind == "array") != ("items" in schema):
        errors.append(f"{where}: arrays, and only arrays, need items")
    missing = set(schema.get("required", ())) - set(schema.get("properties", {}))
    errors += [f"{where}: required property {name!r} is not declared" for name in sorted(missing)]
    return errors


def _list_map_errors(schema: Mapping[str, Any], where: str) -> list[str]:
    if schema.get("x-kubernetes-list-type") != "map":
        return []
    items = schema.get("items", {})
    keys = schema.get("x-kubernetes-list-map-keys", [])
    if not keys:
        return [f"{where}: list-type map without list-map-keys"]
    properties = items.get("properties", {})
    return [
        f"{where}: list-map key {key!r} must be a required or defaulted property"
        for key in keys
        if key not in properties
        or (key not in items.get("required", ()) and "default" not in properties[key])
    ]


def _rule_errors(schema: Mapping[str, Any], where: str) -> list[str]:
    return [
        f"{where}: CEL rule {rule.get('rule')!r} needs a one-line message"
        for rule in schema.get("x-kubernetes-validations", [])
        if not rule.get("message") or "\n" in rule["message"]
    ]
