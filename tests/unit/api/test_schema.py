"""The pydantic -> structural schema converter and the structural checker."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field

from kubelambda.api.schema import (
    UnsupportedSchemaError,
    applied_defaults,
    structural_errors,
    to_structural,
)


class Inner(BaseModel):
    """Inner doc."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"x-kubernetes-validations": []})

    size: int = Field(default=1, ge=1)
    note: str | None = None


class Outer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z]+$", description="The name.")
    inner: Inner = Inner()
    maybe: Inner | None = Field(default=None, description="Optional inner.")
    tags: tuple[str, ...] = Field(default=(), max_length=3)
    labels: dict[str, str] | None = Field(default=None, max_length=4)


def test_inlines_refs_and_flattens_optionals() -> None:
    schema = to_structural(Outer.model_json_schema())
    assert schema["required"] == ["name"]
    maybe = schema["properties"]["maybe"]
    assert maybe["type"] == "object"
    assert maybe["description"] == "Optional inner."  # the field's text wins over the model's
    assert set(maybe["properties"]) == {"size", "note"}
    assert maybe["properties"]["note"] == {"type": "string"}
    assert schema["properties"]["inner"]["description"] == "Inner doc."


def test_drops_titles_nulls_empty_lists_and_closed_objects() -> None:
    schema = to_structural(Outer.model_json_schema())
    text = repr(schema)
    for absent in ("title", "$ref", "$defs", "anyOf", "None"):
        assert absent not in text
    assert "default" not in schema["properties"]["tags"]
    assert "additionalProperties" not in schema


def test_keeps_constraints_and_maps() -> None:
    properties = to_structural(Outer.model_json_schema())["properties"]
    assert properties["name"] == {
        "type": "string",
        "description": "The name.",
        "pattern": "^[a-z]+$",
    }
    assert properties["tags"] == {"type": "array", "maxItems": 3, "items": {"type": "string"}}
    assert properties["labels"] == {
        "type": "object",
        "maxProperties": 4,
        "additionalProperties": {"type": "string"},
    }


def test_object_default_is_checked_against_field_defaults() -> None:
    inner = to_structural(Outer.model_json_schema())["properties"]["inner"]
    assert inner["default"] == {"size": 1}
    assert applied_defaults(inner) == {"size": 1}


def test_object_default_that_disagrees_is_rejected() -> None:
    class Odd(BaseModel):
        inner: Inner = Inner(size=2)

    with pytest.raises(UnsupportedSchemaError, match="differs from its fields' defaults"):
        to_structural(Odd.model_json_schema())


def test_const_becomes_enum() -> None:
    assert to_structural({"type": "string", "const": "x"}) == {"type": "string", "enum": ["x"]}


def test_descriptions_become_one_line() -> None:
    schema = to_structural({"type": "string", "description": "Wrapped\n    docstring."})
    assert schema["description"] == "Wrapped docstring."


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "integer", "exclusiveMinimum": 0},
        {"type": "object", "propertyNames": {"pattern": "^a$"}},
        {"anyOf": [{"type": "string"}, {"type": "integer"}]},
        {"type": "object", "additionalProperties": True},
    ],
    ids=["exclusiveMinimum", "propertyNames", "union", "open-object"],
)
def test_unsupported_constructs_fail_loudly(schema: dict[str, Any]) -> None:
    with pytest.raises(UnsupportedSchemaError):
        to_structural(schema)


def test_output_is_structural() -> None:
    assert structural_errors(to_structural(Outer.model_json_schema())) == []


@pytest.mark.parametrize(
    ("schema", "problem"),
    [
        ({"properties": {"a": {"type": "string"}}}, "<root>: no type"),
        ({"type": "object", "properties": {"a": {}}}, ".a: no type"),
        ({"type": "array"}, "arrays, and only arrays, need items"),
        ({"type": "string", "items": {"type": "string"}}, "arrays, and only arrays, need items"),
        (
            {"type": "object", "properties": {}, "additionalProperties": {"type": "string"}},
            "both properties and additionalProperties",
        ),
        ({"type": "string", "properties": {}}, "properties on a node of type string"),
        ({"type": "object", "required": ["a"]}, "required property 'a' is not declared"),
        ({"type": "string", "$ref": "#/x"}, "keyword '$ref' is not allowed"),
        ({"type": "string", "title": "x"}, "keyword 'title' is not allowed"),
        (
            {"type": "object", "x-kubernetes-validations": [{"rule": "true"}]},
            "needs a one-line message",
        ),
        (
            {
                "type": "array",
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
                "items": {"type": "object", "properties": {"type": {"type": "string"}}},
            },
            "list-map key 'type' must be a required or defaulted property",
        ),
    ],
)
def test_structural_checker_finds(schema: dict[str, Any], problem: str) -> None:
    assert any(problem in error for error in structural_errors(schema)), structural_errors(schema)


def test_applied_defaults_descends_into_defaulted_objects() -> None:
    node = {
        "type": "object",
        "properties": {
            "a": {"type": "integer", "default": 1},
            "b": {"type": "integer"},
            "c": {
                "type": "object",
                "default": {},
                "properties": {"d": {"type": "string", "default": "x"}},
            },
        },
    }
    assert applied_defaults(node) == {"a": 1, "c": {"d": "x"}}
