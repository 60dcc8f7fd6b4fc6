"""CEL validation rules shared by the CRD schema and the pydantic models.

Every cross-field or map-key rule is declared once as a :class:`CelRule`: the CRD generator copies
it into ``x-kubernetes-validations`` and the model's validator raises ``ValueError(rule.message)``
through :func:`require`, so ``kubectl apply`` and the operator reject bad input with the same words.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pydantic import JsonValue

JsonDict = dict[str, JsonValue]
"""A JSON object, as ``json_schema_extra`` takes it."""


@dataclass(frozen=True)
class CelRule:
    """One ``x-kubernetes-validations`` entry.

    ``message`` names the field it is about: the API server prefixes it with the path of the node
    the rule sits on, which for object-level rules is the parent, not the offending field.
    """

    rule: str
    message: str

    def as_schema(self) -> JsonDict:
        return {"rule": self.rule, "message": self.message}


def cel_rules(*rules: CelRule) -> JsonDict:
    """The ``json_schema_extra`` that attaches ``rules`` to a model or field schema."""
    return {"x-kubernetes-validations": [rule.as_schema() for rule in rules]}


def require(ok: bool, rule: CelRule) -> None:
    """The Python half of ``rule``: raise its message when the check fails."""
    if not ok:
        raise ValueError(rule.message)


def cel_string_list(values: Iterable[str]) -> str:
    """A CEL list literal of strings (the values must not contain quotes)."""
    return "[" + ", ".join(f"'{value}'" for value in values) + "]"


def count_set(*fields: str) -> str:
    """CEL counting how many of ``fields`` (of ``self``) are present."""
    return " + ".join(f"(has(self.{field}) ? 1 : 0)" for field in fields)
