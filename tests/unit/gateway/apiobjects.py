"""ApiRoute objects as the watch delivers them (camelCase JSON), for feeding the table."""

from __future__ import annotations

from typing import Any

from kubelambda.gateway.apiroutes import API_ROUTE
from kubelambda.gateway.routing import RoutingTable


def route_obj(
    route_key: str,
    *,
    name: str | None = None,
    namespace: str = "default",
    api: str = "default",
    function: str | None = "fn",
    qualifier: str | None = None,
    url: str | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """An ApiRoute; ``spec`` adds camelCase fields (payloadFormatVersion, auth, cors, ...)."""
    target: dict[str, Any]
    if url is not None:
        target = {"http": {"url": url}}
    else:
        target = {"function": {"name": function}}
        if qualifier is not None:
            target["function"]["qualifier"] = qualifier
    if name is None:
        name = (
            route_key.lower()
            .replace("$", "")
            .replace(" ", "-")
            .replace("/", "-")
            .replace("{", "")
            .replace("}", "")
            .replace("+", "")
            .strip("-")
        )
    return {
        "apiVersion": "kubelambda.io/v1alpha1",
        "kind": "ApiRoute",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"api": api, "routeKey": route_key, "target": target, **spec},
    }


def add_route(table: RoutingTable, route_key: str, **kwargs: Any) -> None:
    table.apply(API_ROUTE, {"type": "ADDED", "object": route_obj(route_key, **kwargs)})
