"""kopf registrations. Each handler only finds the object and calls the reconcile function."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from kubelambda.controller import kube
from kubelambda.controller.aliases import update_alias_status
from kubelambda.controller.autoscaling import observe_adopted_pod, observe_deployment
from kubelambda.controller.config import OperatorConfig
from kubelambda.controller.functions import (
    NotReadyYet,
    reconcile_function,
    refresh_readiness,
    remove_unused_code,
)
from kubelambda.controller.kube import ignore_terminating_namespace
from kubelambda.controller.layers import reconcile_layer
from kubelambda.controller.pool import POOL_PODS, reconcile_pools
from kubelambda.resources.names import FUNCTION_LABEL, VERSION_LABEL, workload_name
from kubelambda.resources.pool import POOL_LABEL, SPECIALIZED_LABEL, PoolAnnotationError
from kubelambda.resources.status import pod_problem

GROUP, VERSION = "kubelambda.io", "v1alpha1"
RETRY_SECONDS = 10
CONFIG = OperatorConfig.from_env()


def _reconcile(body: Mapping[str, Any]) -> None:
    try:
        with ignore_terminating_namespace():
            reconcile_function(body, CONFIG)
    except NotReadyYet as problem:
        raise kopf.TemporaryError(str(problem), delay=RETRY_SECONDS) from problem


@kopf.on.resume(GROUP, VERSION, "functions")
@kopf.on.create(GROUP, VERSION, "functions")
@kopf.on.update(GROUP, VERSION, "functions")
def function_changed(body: kopf.Body, **_: Any) -> None:
    _reconcile(body)
    # A newly published version may be the one an alias was waiting for.
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    for alias in kube.list_objects(kube.GROUP_VERSION, "Alias", namespace, {}):
        if (alias.get("spec") or {}).get("function") == name:
            update_alias_status(alias)


@kopf.on.resume(GROUP, VERSION, "layers")
@kopf.on.create(GROUP, VERSION, "layers")
@kopf.on.update(GROUP, VERSION, "layers")
def layer_changed(body: kopf.Body, **_: Any) -> None:
    reconcile_layer(body, CONFIG)
    # Functions waiting for a version of this layer need not wait for their retry timer.
    namespace, layer = body["metadata"]["namespace"], body["metadata"]["name"]
    for function in kube.list_objects(kube.GROUP_VERSION, "Function", namespace, {}):
        waiting = any(
            c.get("type") == "Configured" and c.get("reason") == "LayerNotFound"
            for c in (function.get("status") or {}).get("conditions") or []
        )
        uses_layer = any(ref.get("name") == layer for ref in function["spec"].get("layers") or [])
        if waiting and uses_layer:
            with contextlib.suppress(kopf.TemporaryError):
                _reconcile(function)


def _reconcile_by_name(namespace: str, name: str) -> None:
    function = kube.get(kube.GROUP_VERSION, "Function", name, namespace)
    if function is not None and not function["metadata"].get("deletionTimestamp"):
        _reconcile(function)


@kopf.on.create(GROUP, VERSION, "aliases")
@kopf.on.update(GROUP, VERSION, "aliases")
def alias_changed(
    body: kopf.Body, spec: kopf.Spec, namespace: str | None, old: Any, **_: Any
) -> None:
    """An alias decides which versions keep pods: reconcile the function(s) it points to."""
    functions = {spec.get("function")}
    if old:
        functions.add((old.get("spec") or {}).get("function"))
    for name in filter(None, functions):
        _reconcile_by_name(str(namespace), str(name))
    update_alias_status(body)


@kopf.on.event(GROUP, VERSION, "aliases")
def alias_deleted(event: kopf.RawEvent, **_: Any) -> None:
    """A deleted alias may free a version's pods. (Aliases carry no finalizer, so kopf's
    on.delete would never see them go: the watch event is the signal.)"""
    if event["type"] == "DELETED":
        alias = event["object"]
        function = (alias.get("spec") or {}).get("function")
        if function:
            with ignore_terminating_namespace():
                _reconcile_by_name(alias["metadata"]["namespace"], str(function))


@kopf.on.event(
    "apps", "v1", "deployments", labels={FUNCTION_LABEL: kopf.PRESENT, VERSION_LABEL: "latest"}
)
def latest_deployment_changed(event: kopf.RawEvent, **_: Any) -> None:
    """Pods of $LATEST became ready (or went away): refresh the Function's Ready condition."""
    deployment = event["object"]
    metadata = deployment["metadata"]
    namespace, name = metadata["namespace"], metadata["labels"][FUNCTION_LABEL]
    if event["type"] != "DELETED":
        refresh_readiness(namespace, name, deployment)
        return
    # Deleted from under a live Function (not by garbage collection): put it back.
    with ignore_terminating_namespace():
        try:
            _reconcile_by_name(namespace, name)
        except kopf.TemporaryError:
            refresh_readiness(namespace, name, None)


@kopf.on.event("apps", "v1", "deployments", labels={FUNCTION_LABEL: kopf.PRESENT})
async def function_deployment_changed(event: kopf.RawEvent, **_: Any) -> None:
    """Feed the autoscaler (async: it runs in the event loop, next to the autoscaler)."""
    observe_deployment(event["type"] or "", event["object"])


@kopf.on.event("", "v1", "pods", labels={FUNCTION_LABEL: kopf.PRESENT})
def function_pod_changed(event: kopf.RawEvent, **_: Any) -> None:
    """A pod that goes away may have held the last mount of superseded code. A $LATEST pod
    that cannot start (code not unpacked, image missing) changes no Deployment status: its
    reason is reported on the Function from here."""
    pod = event["object"]
    metadata = pod["metadata"]
    namespace, name = metadata["namespace"], metadata["labels"][FUNCTION_LABEL]
    if event["type"] == "DELETED":
        with ignore_terminating_namespace():
            remove_unused_code(namespace, name)
        return
    if metadata["labels"].get(VERSION_LABEL) != "latest" or pod_problem(pod) is None:
        return
    deployment = kube.get("apps/v1", "Deployment", workload_name(name, "$LATEST"), namespace)
    refresh_readiness(namespace, name, deployment)


@kopf.on.event("", "v1", "pods", labels={POOL_LABEL: kopf.PRESENT})
async def pool_pod_changed(event: kopf.RawEvent, **_: Any) -> None:
    """Ready pool pods are what a cold start can take."""
    POOL_PODS.observe(event["type"] or "", event["object"])


@kopf.on.event("", "v1", "pods", labels={SPECIALIZED_LABEL: kopf.PRESENT})
async def adopted_pod_changed(event: kopf.RawEvent, **_: Any) -> None:
    """A warm-pool pod serving a version counts as one of its instances (and has left its
    pool)."""
    POOL_PODS.observe(event["type"] or "", event["object"])
    observe_adopted_pod(event["type"] or "", event["object"])


@kopf.on.event("", "v1", "namespaces")
def namespace_changed(event: kopf.RawEvent, logger: kopf.Logger, **_: Any) -> None:
    """The kubelambda.io/warm-pool annotation says which runtime pools a namespace keeps."""
    namespace = event["object"]
    metadata = namespace["metadata"]
    name = metadata["name"]
    if event["type"] == "DELETED" or metadata.get("deletionTimestamp"):
        return
    if CONFIG.watch_namespaces and name not in CONFIG.watch_namespaces:
        return
    try:
        with ignore_terminating_namespace():
            reconcile_pools(name, metadata.get("annotations") or {}, CONFIG)
    except PoolAnnotationError as problem:
        logger.warning("%s: %s", name, problem)
    except ApiException:
        # Event handlers are not retried: the namespace's next change (or the operator's
        # restart) reconciles its pools again.
        logger.exception("reconciling the warm pools of %s failed", name)
