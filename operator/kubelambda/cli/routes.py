"""``route``: HTTP API routes (ApiRoute objects) in front of functions."""

from __future__ import annotations

import argparse
from typing import Any

from kubelambda.cli.errors import NotFound
from kubelambda.cli.kube import API_ROUTE, Kube
from kubelambda.cli.manifests import route_manifest, route_path
from kubelambda.cli.output import Column, render
from kubelambda.cli.session import Session

ROUTE_COLUMNS = (
    Column("Name", "name"),
    Column("API", "api"),
    Column("Route", "route"),
    Column("Target", "target"),
    Column("URL", "url"),
)


def route_url(gateway_url: str, namespace: str, api: str, route_key: str) -> str:
    """Every API is served at ``/apis/<namespace>/<api>/`` (the default one at the root too)."""
    return f"{gateway_url}/apis/{namespace}/{api}{route_path(route_key)}"


def route_target(spec: dict[str, Any]) -> str:
    target = spec.get("target") or {}
    if "function" in target:
        function = target["function"]
        qualifier = function.get("qualifier")
        return f"function {function['name']}" + (f":{qualifier}" if qualifier else "")
    return str((target.get("http") or {}).get("url"))


def route_row(body: dict[str, Any], gateway_url: str) -> dict[str, Any]:
    spec = body.get("spec") or {}
    api, key = spec.get("api", "default"), spec.get("routeKey", "")
    namespace = body["metadata"].get("namespace", "")
    return {
        "name": body["metadata"]["name"],
        "api": api,
        "route": key,
        "target": route_target(spec),
        "url": route_url(gateway_url, namespace, api, key),
    }


def find_route(kube: Kube, namespace: str, api: str, route_key: str) -> dict[str, Any] | None:
    for body in kube.list_objects(API_ROUTE, namespace):
        spec = body.get("spec") or {}
        if spec.get("api", "default") == api and spec.get("routeKey") == route_key:
            return body
    return None


def run_route_create(args: argparse.Namespace, session: Session) -> int:
    namespace = session.namespace
    existing = find_route(session.kube, namespace, args.api, args.route_key)
    body = route_manifest(
        args.api,
        args.route_key,
        function=args.function,
        qualifier=args.qualifier,
        http_url=args.http_url,
        payload_format=args.payload_format,
        timeout_millis=args.timeout_millis,
        name=args.name or (existing["metadata"]["name"] if existing else None),
    )
    session.kube.apply(API_ROUTE, body, namespace)
    url = route_url(session.platform.gateway_url(), namespace, args.api, args.route_key)
    session.stdout.write(f"{url}\n")
    return 0


def run_route_list(args: argparse.Namespace, session: Session) -> int:
    gateway_url = session.platform.gateway_url()
    rows = [
        route_row(body, gateway_url)
        for body in session.kube.list_objects(API_ROUTE, session.namespace)
        if args.api is None or (body.get("spec") or {}).get("api", "default") == args.api
    ]
    session.stdout.write(render(rows, session.format(), ROUTE_COLUMNS))
    return 0


def run_route_delete(args: argparse.Namespace, session: Session) -> int:
    namespace = session.namespace
    body = find_route(session.kube, namespace, args.api, args.route_key)
    if body is None or not session.kube.delete(API_ROUTE, body["metadata"]["name"], namespace):
        raise NotFound(f"route {args.route_key!r} of API {args.api} not found in {namespace}")
    session.stdout.write(f"route {args.route_key!r} of API {args.api} deleted\n")
    return 0
