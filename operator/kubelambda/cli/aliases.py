"""``alias``: named pointers to function versions (Alias objects)."""

from __future__ import annotations

import argparse
from typing import Any

from kubelambda.cli.errors import NotFound
from kubelambda.cli.functions import condition
from kubelambda.cli.kube import ALIAS, FUNCTION, Kube
from kubelambda.cli.manifests import LATEST, alias_manifest, parse_weight
from kubelambda.cli.output import Column, render
from kubelambda.cli.session import Session

ALIAS_COLUMNS = (
    Column("Function", "function"),
    Column("Alias", "alias"),
    Column("Version", "version"),
    Column("Additional", "additionalVersion"),
    Column("Weight", "weight"),
    Column("Provisioned", "provisionedConcurrency"),
    Column("Ready", "ready"),
)


def alias_row(body: dict[str, Any]) -> dict[str, Any]:
    spec = body.get("spec") or {}
    routing = spec.get("routing") or {}
    return {
        "name": body["metadata"]["name"],
        "function": spec.get("function"),
        "alias": spec.get("name"),
        "version": spec.get("version"),
        "additionalVersion": routing.get("additionalVersion"),
        "weight": routing.get("weight"),
        "provisionedConcurrency": spec.get("provisionedConcurrency", 0),
        "ready": condition(body, "Ready").get("status", "Unknown"),
    }


def find_alias(kube: Kube, namespace: str, function: str, alias: str) -> dict[str, Any] | None:
    """By spec (the object's name is derived, and may have been chosen by someone else)."""
    for body in kube.list_objects(ALIAS, namespace):
        spec = body.get("spec") or {}
        if spec.get("function") == function and spec.get("name") == alias:
            return body
    return None


def published_versions(kube: Kube, namespace: str, function: str) -> set[str]:
    body = kube.get(FUNCTION, function, namespace)
    if body is None:
        raise NotFound(f"function {namespace}/{function} not found")
    versions = (body.get("status") or {}).get("versions") or []
    return {str(v["version"]) for v in versions} | {LATEST}


def run_alias_set(args: argparse.Namespace, session: Session) -> int:
    namespace, function = session.namespace, args.function
    weight = parse_weight(args.weight) if args.weight else None
    published = published_versions(session.kube, namespace, function)
    for version in [args.version] + ([weight[0]] if weight else []):
        if version not in published:
            known = ", ".join(sorted(published - {LATEST}, key=int)) or "none"
            raise NotFound(
                f"version {version} of {namespace}/{function} is not published (published: {known})"
            )
    existing = find_alias(session.kube, namespace, function, args.alias)
    body = alias_manifest(
        function,
        args.alias,
        args.version,
        weight=weight,
        provisioned=args.provisioned,
        description=args.description,
        name=existing["metadata"]["name"] if existing else None,
    )
    session.kube.apply(ALIAS, body, namespace)
    split = f" ({weight[1]:g} to version {weight[0]})" if weight else ""
    session.stdout.write(f"alias {function}:{args.alias} -> version {args.version}{split}\n")
    return 0


def run_alias_list(args: argparse.Namespace, session: Session) -> int:
    rows = [
        alias_row(body)
        for body in session.kube.list_objects(ALIAS, session.namespace)
        if (body.get("spec") or {}).get("function") == args.function
    ]
    session.stdout.write(render(rows, session.format(), ALIAS_COLUMNS))
    return 0


def run_alias_delete(args: argparse.Namespace, session: Session) -> int:
    namespace = session.namespace
    body = find_alias(session.kube, namespace, args.function, args.alias)
    if body is None or not session.kube.delete(ALIAS, body["metadata"]["name"], namespace):
        raise NotFound(f"alias {args.function}:{args.alias} not found in namespace {namespace}")
    session.stdout.write(f"alias {args.function}:{args.alias} deleted\n")
    return 0
