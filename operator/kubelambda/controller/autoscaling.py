"""The operator's side of autoscaling: the Deployment watch feeds the autoscaler, and its
decisions become Deployment scale changes plus a Function status reason."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from kubelambda.autoscaler.policy import ScalingPolicy
from kubelambda.autoscaler.scaler import Autoscaler, ScaleAction, VersionKey
from kubelambda.autoscaler.server import AutoscalerService
from kubelambda.controller import kube
from kubelambda.resources.names import (
    FUNCTION_LABEL,
    SCALING_ANNOTATION,
    VERSION_LABEL,
    version_from_slug,
    workload_name,
)

log = logging.getLogger(__name__)

AUTOSCALER_MANAGER = "kubelambda-autoscaler"


def deployment_key(deployment: Mapping[str, Any]) -> VersionKey | None:
    metadata = deployment.get("metadata") or {}
    labels = metadata.get("labels") or {}
    version = version_from_slug(labels.get(VERSION_LABEL) or "")
    function = labels.get(FUNCTION_LABEL)
    if not function or version is None:
        return None
    return str(metadata.get("namespace")), str(function), version


async def apply_decision(action: ScaleAction) -> bool:
    namespace, function, version = action.key
    replicas, reason = action.decision.replicas, action.decision.reason
    name = workload_name(function, version)
    if not await asyncio.to_thread(kube.scale, name, namespace, replicas, AUTOSCALER_MANAGER):
        return False
    text = f"{version}: {action.current} -> {replicas} instances: {reason}"
    log.info("scaled %s/%s: %s", namespace, function, text)
    status = {"lastScaleReason": text}
    await asyncio.to_thread(
        kube.apply_status, "Function", function, namespace, status, AUTOSCALER_MANAGER
    )
    return True


SERVICE = AutoscalerService(Autoscaler(), apply_decision)


def observe_deployment(event_type: str, deployment: Mapping[str, Any]) -> None:
    """A function Deployment was added, changed or deleted (runs in the event loop)."""
    key = deployment_key(deployment)
    if key is None:
        return
    if event_type == "DELETED" or (deployment.get("metadata") or {}).get("deletionTimestamp"):
        SERVICE.scaler.forget(key)
        return
    annotations = (deployment.get("metadata") or {}).get("annotations") or {}
    policy = ScalingPolicy.from_json(annotations.get(SCALING_ANNOTATION))
    replicas = int((deployment.get("spec") or {}).get("replicas") or 0)
    ready = int((deployment.get("status") or {}).get("readyReplicas") or 0)
    SERVICE.scaler.observe(key, policy, replicas, ready)


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
