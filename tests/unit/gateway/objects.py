"""Kubernetes objects as the watches deliver them (camelCase JSON), for feeding the table."""

from __future__ import annotations

from typing import Any

from kubelambda.gateway.routing import ALIAS, ENDPOINT_SLICE, FUNCTION, RoutingTable
from kubelambda.resources.names import LATEST, workload_labels, workload_name


def function_obj(
    name: str,
    namespace: str = "default",
    *,
    timeout: int | None = None,
    reserved: int | None = None,
    per_instance: int | None = None,
    versions: tuple[str, ...] = (),
    resource_version: str = "1",
) -> dict[str, Any]:
    spec: dict[str, Any] = {"runtime": "python3.11", "handler": "app.handler", "code": {}}
    if timeout is not None:
        spec["timeoutSeconds"] = timeout
    concurrency: dict[str, Any] = {}
    if reserved is not None:
        concurrency["reserved"] = reserved
    if per_instance is not None:
        concurrency["perInstance"] = per_instance
    if concurrency:
        spec["concurrency"] = concurrency
    return {
        "metadata": {"name": name, "namespace": namespace, "resourceVersion": resource_version},
        "spec": spec,
        "status": {
            "latestVersion": max((int(v) for v in versions), default=0),
            "versions": [{"version": LATEST}] + [{"version": v} for v in versions],
        },
    }


def alias_obj(
    function: str,
    name: str,
    version: str,
    *,
    additional: str | None = None,
    weight: float = 0.0,
    namespace: str = "default",
    object_name: str | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"function": function, "name": name, "version": version}
    if additional is not None:
        spec["routing"] = {"additionalVersion": additional, "weight": weight}
    return {
        "metadata": {"name": object_name or f"{function}-{name}", "namespace": namespace},
        "spec": spec,
    }


def slice_obj(
    function: str,
    version: str,
    addresses: list[str],
    port: int = 8080,
    *,
    namespace: str = "default",
    name: str | None = None,
    ready: bool | None = True,
) -> dict[str, Any]:
    service = workload_name(function, version)
    conditions = {} if ready is None else {"ready": ready}
    return {
        "addressType": "IPv4",
        "metadata": {
            "name": name or f"{service}-abcde",
            "namespace": namespace,
            "labels": {**workload_labels(function, version), "kubernetes.io/service-name": service},
        },
        "ports": [{"name": "invoke", "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [a], "conditions": conditions} for a in addresses],
    }


def add(table: RoutingTable, kind: str, obj: dict[str, Any]) -> None:
    table.apply(kind, {"type": "ADDED", "object": obj})


def add_function(table: RoutingTable, name: str, **kwargs: Any) -> None:
    add(table, FUNCTION, function_obj(name, **kwargs))


def add_alias(table: RoutingTable, function: str, name: str, version: str, **kwargs: Any) -> None:
    add(table, ALIAS, alias_obj(function, name, version, **kwargs))


def add_slice(
    table: RoutingTable, function: str, version: str, addresses: list[str], **kwargs: Any
) -> None:
    add(table, ENDPOINT_SLICE, slice_obj(function, version, addresses, **kwargs))
