"""The committed crds/ are exactly what the models generate, and every CRD is structural."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubelambda.api.crdgen import KINDS, crd_filename, render_crds
from kubelambda.api.schema import structural_errors

CRDS_DIR = Path(__file__).resolve().parents[3] / "crds"
REGENERATE = "crds/ is stale: run `make crds` and commit the result"


def openapi_schema(crd: Mapping[str, Any]) -> dict[str, Any]:
    (version,) = crd["spec"]["versions"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def walk_keys(node: object) -> Iterator[str]:
    """Every mapping key anywhere below ``node``."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield key
            yield from walk_keys(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk_keys(item)


@pytest.mark.parametrize(("plural", "crd"), render_crds().items(), ids=render_crds())
def test_committed_crd_matches_models(plural: str, crd: dict[str, Any]) -> None:
    path = CRDS_DIR / crd_filename(plural)
    assert path.exists(), REGENERATE
    assert yaml.safe_load(path.read_text()) == crd, REGENERATE


def test_no_stray_files_in_crds_dir() -> None:
    expected = {crd_filename(kind.plural) for kind in KINDS}
    assert {path.name for path in CRDS_DIR.iterdir()} == expected, REGENERATE


@pytest.mark.parametrize(
    "crd", render_crds().values(), ids=lambda crd: crd["spec"]["names"]["kind"]
)
def test_schema_is_structural(crd: dict[str, Any]) -> None:
    schema = openapi_schema(crd)
    assert structural_errors(schema) == []
    assert not {"$ref", "$defs", "anyOf", "oneOf", "allOf", "title"} & set(walk_keys(schema))


@pytest.mark.parametrize(
    "crd", render_crds().values(), ids=lambda crd: crd["spec"]["names"]["kind"]
)
def test_crd_envelope(crd: dict[str, Any]) -> None:
    spec = crd["spec"]
    (version,) = spec["versions"]
    assert crd["metadata"]["name"] == f"{spec['names']['plural']}.kubelambda.io"
    assert (spec["group"], version["name"]) == ("kubelambda.io", "v1alpha1")
    assert version["subresources"] == {"status": {}}
    assert spec["names"]["categories"] == ["kubelambda"]
    assert spec["names"]["shortNames"]
    columns = [column["name"] for column in version["additionalPrinterColumns"]]
    assert columns[-1] == "Age"
    status = openapi_schema(crd)["properties"]["status"]["properties"]
    assert status["conditions"]["x-kubernetes-list-type"] == "map"
    assert status["conditions"]["x-kubernetes-list-map-keys"] == ["type"]


def test_function_columns() -> None:
    (version,) = render_crds()["functions"]["spec"]["versions"]
    columns = {column["name"]: column["jsonPath"] for column in version["additionalPrinterColumns"]}
    assert columns == {
        "Ready": '.status.conditions[?(@.type=="Ready")].status',
        "Version": ".status.latestVersion",
        "Replicas": ".status.replicas.ready",
        "Runtime": ".spec.runtime",
        "URL": ".status.url",
        "Age": ".metadata.creationTimestamp",
    }


def test_short_names_are_distinct_and_not_builtin() -> None:
    # A few built-in short names / singulars worth not shadowing (kubectl resolves those first).
    builtin = {"po", "svc", "deploy", "rs", "ds", "sts", "cm", "ns", "ep", "ing", "pv", "pvc", "sa"}
    names = [name for kind in KINDS for name in kind.short_names]
    assert len(set(names)) == len(names)
    assert not builtin & set(names)
