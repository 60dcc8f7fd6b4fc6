"""Generate the CustomResourceDefinitions in crds/ from the pydantic models.

Usage: ``python -m kubelambda.api.crdgen [--out crds/]`` (``make crds``).
"""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from kubelambda.api.alias import ALIAS_KIND
from kubelambda.api.apiroute import API_ROUTE_KIND
from kubelambda.api.base import GROUP, VERSION, ApiModel, KindInfo, PrinterColumn
from kubelambda.api.cel import cel_rules
from kubelambda.api.function import FUNCTION_KIND
from kubelambda.api.layer import LAYER_KIND
from kubelambda.api.schema import JsonSchema, structural_errors, to_structural

KINDS: tuple[KindInfo, ...] = (FUNCTION_KIND, LAYER_KIND, ALIAS_KIND, API_ROUTE_KIND)
CATEGORY = "kubelambda"
HEADER = "# Generated from operator/kubelambda/api by `make crds`. Do not edit.\n"


def model_schema(model: type[ApiModel]) -> JsonSchema:
    """The structural schema of one model, as the CRD embeds it."""
    return to_structural(model.model_json_schema(by_alias=True, mode="validation"))


def root_schema(kind: KindInfo) -> JsonSchema:
    """The ``openAPIV3Schema`` of ``kind``: standard envelope plus spec, status and root rules."""
    schema: JsonSchema = {
        "type": "object",
        "description": inspect.getdoc(kind.resource),
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": model_schema(kind.spec),
            "status": model_schema(kind.status),
        },
    }
    if kind.root_rules:
        schema.update(cel_rules(*kind.root_rules))
    return schema


def _column(column: PrinterColumn) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": column.name, "type": column.type, "jsonPath": column.json_path}
    if column.priority:
        entry["priority"] = column.priority
    return entry


def render_crd(kind: KindInfo) -> dict[str, Any]:
    """The CustomResourceDefinition of ``kind``; raises if its schema is not structural."""
    schema = root_schema(kind)
    errors = structural_errors(schema)
    if errors:
        raise ValueError(f"{kind.kind} schema is not structural: " + "; ".join(errors))
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{kind.plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.kind.lower(),
                "shortNames": list(kind.short_names),
                "categories": [CATEGORY],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [_column(column) for column in kind.columns],
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }


def render_crds() -> dict[str, dict[str, Any]]:
    """Every CRD, keyed by plural."""
    return {kind.plural: render_crd(kind) for kind in KINDS}


def crd_filename(plural: str) -> str:
    return f"{plural}.{GROUP}.yaml"


class _PlainDumper(yaml.SafeDumper):
    """Writes shared sub-trees out in full: anchors and aliases would puzzle human readers."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_crd(crd: dict[str, Any]) -> str:
    return HEADER + yaml.dump(crd, Dumper=_PlainDumper, sort_keys=False, width=100)


def write_crds(out: Path) -> list[Path]:
    """Write crds/<plural>.kubelambda.io.yaml files; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for plural, crd in render_crds().items():
        path = out / crd_filename(plural)
        path.write_text(dump_crd(crd))
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="kubelambda-crdgen", description="Generate the CRDs from the pydantic models."
    )
    parser.add_argument("--out", type=Path, default=Path("crds"), help="output directory")
    args = parser.parse_args(argv)
    for path in write_crds(args.out):
        print(path)


if __name__ == "__main__":
    main()
