"""The operator's only door to the API server: server-side apply, get, list, delete.

Children are written with server-side apply under one field manager, so a reconcile that is
retried, or that runs again after the operator was killed half-way, converges on the same
objects instead of creating twins.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient

FIELD_MANAGER = "kubelambda-operator"
GROUP_VERSION = "kubelambda.io/v1alpha1"


@cache
def dynamic() -> DynamicClient:
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return DynamicClient(client.ApiClient())


def _resource(api_version: str, kind: str) -> Any:
    return dynamic().resources.get(api_version=api_version, kind=kind)


def apply(body: dict[str, Any], namespace: str) -> dict[str, Any]:
    """Create or update ``body`` in ``namespace`` (server-side apply, conflicts forced)."""
    resource = _resource(body["apiVersion"], body["kind"])
    result = dynamic().server_side_apply(
        resource, body=body, namespace=namespace, field_manager=FIELD_MANAGER, force_conflicts=True
    )
    return result.to_dict()  # type: ignore[no-any-return]


def create(body: dict[str, Any], namespace: str) -> bool:
    """Create ``body`` unless an object of that name exists; True when this call created it."""
    resource = _resource(body["apiVersion"], body["kind"])
    try:
        dynamic().create(resource, body=body, namespace=namespace)
    except ApiException as error:
        if error.status == 409:
            return False
        raise
    return True


def get(api_version: str, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
    try:
        result = dynamic().get(_resource(api_version, kind), name=name, namespace=namespace)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return result.to_dict()  # type: ignore[no-any-return]


def list_objects(
    api_version: str, kind: str, namespace: str, labels: dict[str, str]
) -> list[dict[str, Any]]:
    selector = ",".join(f"{k}={v}" for k, v in labels.items())
    result = dynamic().get(
        _resource(api_version, kind), namespace=namespace, label_selector=selector
    )
    return [item.to_dict() for item in result.items]


def delete(api_version: str, kind: str, name: str, namespace: str) -> None:
    try:
        dynamic().delete(_resource(api_version, kind), name=name, namespace=namespace)
    except ApiException as error:
        if error.status != 404:
            raise


def apply_status(
    kind: str, name: str, namespace: str, status: dict[str, Any], field_manager: str
) -> None:
    """Server-side apply of part of a kubelambda object's status.

    Conditions are a list keyed by type, so writers with different field managers each own
    their own conditions: one writer's update never drops another's condition.
    """
    resource = _resource(GROUP_VERSION, kind)
    body = {"apiVersion": GROUP_VERSION, "kind": kind, "metadata": {"name": name}, "status": status}
    try:
        dynamic().server_side_apply(
            resource.subresources["status"],
            body=body,
            name=name,
            namespace=namespace,
            field_manager=field_manager,
            force_conflicts=True,
        )
    except ApiException as error:
        if error.status != 404:
            raise


def scale(name: str, namespace: str, replicas: int, field_manager: str) -> bool:
    """Set a Deployment's replicas through its scale subresource; False if it is gone."""
    resource = _resource("apps/v1", "Deployment")
    try:
        dynamic().patch(
            resource.subresources["scale"],
            body={"spec": {"replicas": replicas}},
            name=name,
            namespace=namespace,
            content_type="application/merge-patch+json",
            field_manager=field_manager,
        )
    except ApiException as error:
        if error.status == 404:
            return False
        raise
    return True


def patch(api_version: str, kind: str, name: str, namespace: str, body: dict[str, Any]) -> bool:
    """Merge-patch an object; False if it is gone, or changed since the ``resourceVersion``
    that ``body`` carries (the API server's optimistic lock)."""
    try:
        dynamic().patch(
            _resource(api_version, kind),
            body=body,
            name=name,
            namespace=namespace,
            content_type="application/merge-patch+json",
            field_manager=FIELD_MANAGER,
        )
    except ApiException as error:
        if error.status in (404, 409):
            return False
        raise
    return True


def patch_status(kind: str, name: str, namespace: str, status: dict[str, Any]) -> None:
    """Merge-patch the status subresource of a kubelambda object."""
    resource = _resource(GROUP_VERSION, kind)
    try:
        dynamic().patch(
            resource.subresources["status"],
            body={"status": status},
            name=name,
            namespace=namespace,
            content_type="application/merge-patch+json",
        )
    except ApiException as error:
        if error.status != 404:
            raise


@contextmanager
def ignore_terminating_namespace() -> Iterator[None]:
    """Swallow the 403 for writes into a namespace being deleted: nothing there needs repair."""
    try:
        yield
    except ApiException as error:
        if not (error.status == 403 and "is being terminated" in str(error.body)):
            raise
