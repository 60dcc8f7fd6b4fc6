"""The operator's side of autoscaling: the Deployment and adopted-pod watches feed the
autoscaler, and its decisions become Deployment scale changes (a scale from zero first tries
the warm pool), adopted pods let go, and a Function status reason."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from kubelambda.autoscaler.policy import ScalingPolicy
from kubelambda.autoscaler.scaler import Autoscaler, ScaleAction, VersionKey
from kubelambda.autoscaler.server import AutoscalerService
from kubelambda.controller import kube
from kubelambda.controller.pool import Specialization, adopt_pool_pod
from kubelambda.resources.names import (
    FUNCTION_LABEL,
    SCALING_ANNOTATION,
    VERSION_LABEL,
    version_from_slug,
    workload_name,
)
from kubelambda.resources.pool import SPECIALIZED_LABEL
from kubelambda.resources.status import pod_ready

log = logging.getLogger(__name__)

AUTOSCALER_MANAGER = "kubelambda-autoscaler"
DONE_PHASES = ("Succeeded", "Failed")


def deployment_key(deployment: Mapping[str, Any]) -> VersionKey | None:
    metadata = deployment.get("metadata") or {}
    labels = metadata.get("labels") or {}
    version = version_from_slug(labels.get(VERSION_LABEL) or "")
    function = labels.get(FUNCTION_LABEL)
    if not function or version is None:
        return None
    return str(metadata.get("namespace")), str(function), version


@dataclass(frozen=True)
class AdoptedPod:
    ready: bool
    plan_hash: str


# What the watches last said: each version's Deployment, and the pool pods it adopted (by
# name). A version's instances are its Deployment's replicas plus its adopted pods.
_deployments: dict[VersionKey, Mapping[str, Any]] = {}
_adopted: dict[VersionKey, dict[str, AdoptedPod]] = {}
_background: set[asyncio.Task[None]] = set()


def _in_background(work: Coroutine[Any, Any, None]) -> None:
    task = asyncio.create_task(work)
    _background.add(task)
    task.add_done_callback(_background.discard)


def _delete_pod_soon(namespace: str, name: str) -> None:
    _in_background(asyncio.to_thread(kube.delete, "v1", "Pod", name, namespace))


async def _take_from_pool(key: VersionKey) -> str | None:
    """A pool pod specialised for ``key``, counted as its instance at once; None if its
    version has no specialisation or its pool no ready pod."""
    deployment = _deployments.get(key)
    plan = Specialization.of(deployment) if deployment is not None else None
    if deployment is None or plan is None or not SERVICE.signing_key:
        return None
    taken = await adopt_pool_pod(deployment, plan, SERVICE.signing_key)
    if taken is None:
        return None
    name, relabel = taken
    _adopted.setdefault(key, {})[name] = AdoptedPod(False, plan.plan_hash)
    # A Deployment event seen while the pod was being specialised did not count it yet.
    _observe(key)

    async def settle() -> None:
        # The relabel waits for the runtime's init: the decision pass does not.
        if not await relabel and _adopted.get(key, {}).pop(name, None) is not None:
            _observe(key)

    _in_background(settle())
    return name


async def apply_decision(action: ScaleAction) -> bool:
    namespace, function, version = action.key
    replicas, reason = action.decision.replicas, action.decision.reason
    adopted = _adopted.setdefault(action.key, {})
    via_pool = ""
    if action.current == 0 and replicas > 0 and not adopted:
        taken = await _take_from_pool(action.key)
        if taken is not None:
            via_pool = f" (one from the warm pool: {taken})"
    # Scaling down, adopted pods go first (those not ready before the others): the
    # Deployment's own pods are the lasting ones.
    going = sorted(adopted, key=lambda name: adopted[name].ready)
    for name in going[: max(0, action.current - replicas)]:
        del adopted[name]
        _delete_pod_soon(namespace, name)
    deployment_replicas = max(0, replicas - len(adopted))
    name = workload_name(function, version)
    if not await asyncio.to_thread(
        kube.scale, name, namespace, deployment_replicas, AUTOSCALER_MANAGER
    ):
        return False
    text = f"{version}: {action.current} -> {replicas} instances: {reason}{via_pool}"
    log.info("scaled %s/%s: %s", namespace, function, text)
    status = {"lastScaleReason": text}
    await asyncio.to_thread(
        kube.apply_status, "Function", function, namespace, status, AUTOSCALER_MANAGER
    )
    return True


SERVICE = AutoscalerService(Autoscaler(), apply_decision)


def _observe(key: VersionKey) -> None:
    """Tell the autoscaler what ``key`` has: its Deployment's pods and its adopted ones."""
    deployment = _deployments.get(key)
    if deployment is None:
        return
    annotations = (deployment.get("metadata") or {}).get("annotations") or {}
    policy = ScalingPolicy.from_json(annotations.get(SCALING_ANNOTATION))
    adopted = _adopted.get(key, {})
    replicas = int((deployment.get("spec") or {}).get("replicas") or 0) + len(adopted)
    ready = int((deployment.get("status") or {}).get("readyReplicas") or 0)
    SERVICE.scaler.observe(key, policy, replicas, ready + sum(p.ready for p in adopted.values()))


def _retire_stale(key: VersionKey) -> None:
    """Adopted pods specialised with another code or configuration than the version's now
    (e.g. $LATEST changed) go; demand that remains brings a fresh instance."""
    deployment = _deployments.get(key)
    adopted = _adopted.get(key)
    if deployment is None or not adopted:
        return
    plan = Specialization.of(deployment)
    current = plan.plan_hash if plan is not None else None
    for name, pod in list(adopted.items()):
        if pod.plan_hash != current:
            log.info("retiring %s/%s: its version changed since it was specialised", key[0], name)
            del adopted[name]
            _delete_pod_soon(key[0], name)
    _observe(key)


def observe_deployment(event_type: str, deployment: Mapping[str, Any]) -> None:
    """A function Deployment was added, changed or deleted (runs in the event loop)."""
    key = deployment_key(deployment)
    if key is None:
        return
    if event_type == "DELETED" or (deployment.get("metadata") or {}).get("deletionTimestamp"):
        SERVICE.scaler.forget(key)
        _deployments.pop(key, None)
        return
    _deployments[key] = deployment
    _observe(key)
    _retire_stale(key)


def observe_adopted_pod(event_type: str, pod: Mapping[str, Any]) -> None:
    """A pool pod adopted by a version changed or went away (runs in the event loop)."""
    metadata = pod.get("metadata") or {}
    key = deployment_key(pod)
    if key is None:
        return
    name = str(metadata.get("name"))
    phase = (pod.get("status") or {}).get("phase")
    adopted = _adopted.setdefault(key, {})
    if event_type == "DELETED" or metadata.get("deletionTimestamp") or phase in DONE_PHASES:
        if adopted.pop(name, None) is None:
            return
    else:
        plan_hash = str((metadata.get("labels") or {}).get(SPECIALIZED_LABEL, ""))
        adopted[name] = AdoptedPod(pod_ready(pod), plan_hash)
    _observe(key)
    _retire_stale(key)


async def serve_autoscaler(port: int, signing_key: str) -> None:
    """The endpoint for gateways and pods, and the decision loop, until cancelled."""
    SERVICE.signing_key = signing_key
    runner = web.AppRunner(SERVICE.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()
    try:
        await SERVICE.run()
    finally:
        await runner.cleanup()
