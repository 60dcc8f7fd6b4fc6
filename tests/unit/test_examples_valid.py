"""Every manifest under examples/ is valid for the pydantic models (the rules the API server's
CRDs enforce), can be applied into any namespace, says what it is, and has an e2e test.

tests/e2e/test_examples.py applies and exercises the same files on a real cluster.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kubelambda.api import API_VERSION, Alias, ApiModel, ApiRoute, Function, Layer

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = REPO_ROOT / "examples"
E2E_TEST = REPO_ROOT / "tests" / "e2e" / "test_examples.py"
MANIFESTS = sorted(path for path in EXAMPLES.rglob("*") if path.suffix in (".yaml", ".yml"))
MODELS: dict[str, type[ApiModel]] = {
    "Function": Function,
    "Layer": Layer,
    "Alias": Alias,
    "ApiRoute": ApiRoute,
}


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def example_id(path: Path) -> str:
    return str(path.relative_to(EXAMPLES))


def test_there_are_examples() -> None:
    assert len(MANIFESTS) >= 8, MANIFESTS


@pytest.mark.parametrize("path", MANIFESTS, ids=example_id)
def test_every_object_validates_against_its_model(path: Path) -> None:
    docs = documents(path)
    assert docs, f"{path} holds no object"
    for doc in docs:
        assert doc.get("apiVersion") == API_VERSION, doc.get("apiVersion")
        assert doc.get("kind") in MODELS, f"{path}: unexpected kind {doc.get('kind')}"
        MODELS[doc["kind"]].model_validate(doc)


@pytest.mark.parametrize("path", MANIFESTS, ids=example_id)
def test_no_namespace_is_hard_coded(path: Path) -> None:
    """Users apply examples with -n (and the e2e test into a fresh namespace)."""
    for doc in documents(path):
        assert "namespace" not in doc["metadata"], f"{path}: {doc['metadata']}"


@pytest.mark.parametrize("path", MANIFESTS, ids=example_id)
def test_starts_with_a_comment_saying_what_it_shows(path: Path) -> None:
    assert path.read_text().startswith("# "), f"{path}: begin with a header comment"


@pytest.mark.parametrize("path", MANIFESTS, ids=example_id)
def test_inline_python_compiles(path: Path) -> None:
    """A syntax error would only show on the first call; catch it here."""
    for doc in documents(path):
        spec = doc["spec"]
        inline = (spec.get("code") or spec.get("content") or {}).get("inline") or {}
        for name, text in inline.items():
            if name.endswith(".py"):
                compile(text, f"{path.name}:{name}", "exec")


@pytest.mark.parametrize("path", MANIFESTS, ids=example_id)
def test_every_manifest_is_exercised_by_the_e2e_test(path: Path) -> None:
    assert example_id(path) in E2E_TEST.read_text(), (
        f"tests/e2e/test_examples.py does not apply examples/{example_id(path)}"
    )


def test_names_do_not_clash_when_every_example_is_applied_to_one_namespace() -> None:
    """Except the canary steps, which update the same objects on purpose."""
    seen: dict[tuple[str, str], Path] = {}
    for path in MANIFESTS:
        for doc in documents(path):
            key = (doc["kind"], doc["metadata"]["name"])
            earlier = seen.setdefault(key, path)
            both_canary = earlier.parent == path.parent == EXAMPLES / "alias-canary"
            assert earlier == path or both_canary, f"{key} in {earlier} and {path}"
