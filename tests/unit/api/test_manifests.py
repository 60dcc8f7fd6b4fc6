"""The e2e manifests, checked against the pydantic models: the same rules hold in both places.

tests/e2e/test_crd_validation.py feeds the same files to a real API server.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from kubelambda.api import Alias, ApiModel, ApiRoute, Function, Layer
from kubelambda.api.crdgen import KINDS, model_schema

MANIFESTS = Path(__file__).resolve().parents[2] / "e2e" / "manifests"
INVALID = sorted((MANIFESTS / "invalid").glob("*.yaml"))
VALID = sorted((MANIFESTS / "valid").glob("*.yaml"))
MODELS: dict[str, type[ApiModel]] = {
    "Function": Function,
    "Layer": Layer,
    "Alias": Alias,
    "ApiRoute": ApiRoute,
}
SPEC_MODELS = {kind.kind: kind.spec for kind in KINDS}
# The field path the API server starts its built-in messages with, e.g. "spec.memoryMB in body...".
LEADING_PATH = re.compile(r"^(metadata|spec)(\.\w+|\[\d+\])*")


def load(path: Path) -> dict[str, Any]:
    manifest: dict[str, Any] = yaml.safe_load(path.read_text())
    return manifest


def expectation(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name}: first line must be '# expect: ...'"
    return first.removeprefix("# expect: ")


def dotted(loc: tuple[int | str, ...]) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)[1:]


def without_indices(path: str) -> str:
    return re.sub(r"\[\d+\]", "", path)


def names_same_problem(expected: str, error: ValidationError) -> bool:
    """Does a pydantic error match the API server's expected message?

    CEL rules share their message with the model, so the text must appear verbatim. Built-in
    OpenAPI checks word their messages differently, so there the field paths must agree.
    """
    match = LEADING_PATH.match(expected)
    for detail in error.errors():
        if expected in detail["msg"]:
            return True
        if match and without_indices(match.group()) == without_indices(dotted(detail["loc"])):
            return True
    return False


def test_there_are_enough_invalid_manifests() -> None:
    assert len(INVALID) >= 18
    assert {load(path)["kind"] for path in INVALID} == set(MODELS)
    assert {load(path)["kind"] for path in VALID} == set(MODELS)


@pytest.mark.parametrize("path", INVALID, ids=lambda path: path.stem)
def test_invalid_manifest_is_rejected_by_the_model_for_one_reason(path: Path) -> None:
    manifest = load(path)
    with pytest.raises(ValidationError) as rejected:
        MODELS[manifest["kind"]].model_validate(manifest)
    assert rejected.value.error_count() == 1, rejected.value
    assert names_same_problem(expectation(path), rejected.value), rejected.value


@pytest.mark.parametrize("path", VALID, ids=lambda path: path.stem)
def test_valid_manifest_is_accepted(path: Path) -> None:
    manifest = load(path)
    MODELS[manifest["kind"]].model_validate(manifest)


def apply_schema_defaults(schema: dict[str, Any], value: Any) -> Any:
    """The API server's structural defaulting (enough of it for these schemas)."""
    if isinstance(value, dict) and "properties" in schema:
        result = dict(value)
        for name, sub in schema["properties"].items():
            if name not in result and "default" in sub:
                result[name] = copy.deepcopy(sub["default"])
            if name in result:
                result[name] = apply_schema_defaults(sub, result[name])
        return result
    if isinstance(value, list) and "items" in schema:
        return [apply_schema_defaults(schema["items"], item) for item in value]
    return value


def without_empty_lists(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_empty_lists(v) for k, v in value.items() if v != []}
    if isinstance(value, list):
        return [without_empty_lists(item) for item in value]
    return value


@pytest.mark.parametrize("path", VALID, ids=lambda path: path.stem)
def test_schema_defaults_agree_with_model_defaults(path: Path) -> None:
    spec_model = SPEC_MODELS[load(path)["kind"]]
    spec = load(path)["spec"]
    from_api_server = apply_schema_defaults(model_schema(spec_model), spec)
    from_model = spec_model.model_validate(spec).model_dump(mode="json", exclude_none=True)
    assert from_api_server == without_empty_lists(from_model)
