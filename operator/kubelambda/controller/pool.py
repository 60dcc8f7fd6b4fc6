"""The warm pool's moving parts: each namespace's pool Deployments, and turning a pool pod
into an instance of a version (claim, specialise, adopt). See resources/pool.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from kubelambda.controller import kube
from kubelambda.controller.config import OperatorConfig
from kubelambda.resources.function import INVOKE_PORT
from kubelambda.resources.names import COMPONENT_LABEL
from kubelambda.resources.pool import (
    IDLE,
    POOL_ANNOTATION,
    POOL_LABEL,
    POOL_STATE_LABEL,
    SPECIALIZATION_ANNOTATION,
    adopted_pod_patch,
    parse_pool_annotation,
    pool_deployment,
    pool_slug,
    pool_token,
)
from kubelambda.resources.status import pod_ready

log = logging.getLogger(__name__)

# The decision pass waits for a specialisation (inline code takes milliseconds; a package is
# fetched from the code store in the cluster): past this, the Deployment takes over.
SPECIALIZE_TIMEOUT_S = 10.0
# A runtime's init that takes longer (a heavy handler module) no longer holds up the relabel.
INIT_WAIT_S = 3.0
INIT_POLL_S = 0.01
INIT_PROBE_TIMEOUT_S = 0.5


def reconcile_pools(namespace: str, annotations: Mapping[str, str], config: OperatorConfig) -> None:
    """Make the namespace's pool Deployments what its annotation asks for (none without it).
    Raises PoolAnnotationError for an annotation it cannot read, leaving the pools as they are."""
    raw = annotations.get(POOL_ANNOTATION, "")
    sizes = parse_pool_annotation(raw)
    existing = kube.list_objects("apps/v1", "Deployment", namespace, {COMPONENT_LABEL: "warm-pool"})
    if not sizes and not existing:
        return
    token = pool_token(config.store_signing_key, namespace)
    for runtime, size in sizes.items():
        kube.apply(pool_deployment(runtime, size, config.runtime_images[runtime], token), namespace)
    wanted = {pool_slug(runtime) for runtime in sizes}
    for deployment in existing:
        if deployment["metadata"].get("labels", {}).get(POOL_LABEL) not in wanted:
            name = deployment["metadata"]["name"]
            log.info("removing %s/%s: no longer in %s", namespace, name, POOL_ANNOTATION)
            kube.delete("apps/v1", "Deployment", name, namespace)


@dataclass(frozen=True)
class Specialization:
    """A version's specialization (its Deployment's annotation)."""

    pool: str
    plan_hash: str
    request: bytes

    @classmethod
    def of(cls, deployment: Mapping[str, Any]) -> Specialization | None:
        annotations = (deployment.get("metadata") or {}).get("annotations") or {}
        raw = annotations.get(SPECIALIZATION_ANNOTATION)
        if not raw:
            return None
        try:
            plan = json.loads(raw)
            return cls(str(plan["pool"]), str(plan["hash"]), json.dumps(plan["request"]).encode())
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed %s annotation", SPECIALIZATION_ANNOTATION)
            return None


class SpecializationFailed(Exception):
    def __init__(self, message: str, taken: bool = False) -> None:
        super().__init__(message)
        self.taken = taken
        """The pod is not to be had (another specialisation got there first, or it is gone):
        try the next one."""


class PoolPods:
    """The ready, idle pool pods of every namespace, as the pod watch last saw them (runs in
    the event loop). A cold start takes one from here rather than listing pods: no API call
    stands between a wake-up and the specialisation."""

    def __init__(self) -> None:
        self._ready: dict[str, dict[str, tuple[str, str]]] = {}
        """namespace -> pod name -> (pool, pod IP)."""

    def observe(self, event_type: str, pod: Mapping[str, Any]) -> None:
        """Any event of a pod that is or was in a pool (an adopted pod's too: it left)."""
        metadata = pod.get("metadata") or {}
        labels = metadata.get("labels") or {}
        pods = self._ready.setdefault(str(metadata.get("namespace")), {})
        name = str(metadata.get("name"))
        ip = (pod.get("status") or {}).get("podIP")
        pool = labels.get(POOL_LABEL)
        idle = pool is not None and labels.get(POOL_STATE_LABEL) == IDLE
        live = event_type != "DELETED" and not metadata.get("deletionTimestamp")
        if live and idle and ip and pod_ready(pod):
            pods[name] = (str(pool), str(ip))
        else:
            pods.pop(name, None)

    def take(self, namespace: str, pool: str) -> tuple[str, str] | None:
        """A ready pod of ``pool`` (name, IP), which no later ``take`` returns."""
        pods = self._ready.get(namespace, {})
        name = next((n for n, (p, _) in pods.items() if p == pool), None)
        return None if name is None else (name, pods.pop(name)[1])


POOL_PODS = PoolPods()


async def _post_specialization(
    session: aiohttp.ClientSession, address: str, token: str, request: bytes
) -> None:
    url = f"http://{address}/v1/specialize"
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    try:
        async with session.post(url, data=request, headers=headers) as response:
            if response.status != 200:
                detail = (await response.text())[:500]
                # 409: being specialised; 404: specialised already (its function answers).
                taken = response.status in (404, 409)
                raise SpecializationFailed(f"HTTP {response.status}: {detail}", taken)
    except aiohttp.ClientConnectorError as problem:
        # Gone, or not listening: not a pod to give a function to.
        raise SpecializationFailed(repr(problem), taken=True) from None
    except (aiohttp.ClientError, TimeoutError) as problem:
        # Sent, but no answer: the agent may yet specialise itself. The pod must go, or it
        # would serve a function nothing counts.
        raise SpecializationFailed(repr(problem)) from None


async def _until_initialised(address: str) -> None:
    """Until the specialised agent's runtime has initialised (bounded)."""
    deadline = time.monotonic() + INIT_WAIT_S
    probe_timeout = aiohttp.ClientTimeout(total=INIT_PROBE_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=probe_timeout) as session:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(f"http://{address}/healthz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(INIT_POLL_S)


async def _adopt(
    deployment: Mapping[str, Any], plan: Specialization, name: str, address: str
) -> bool:
    """Relabel the specialised pod ``name`` as an instance of ``deployment``'s version; False
    if it is gone.

    Only once its runtime has initialised: the relabel makes the pool's ReplicaSet start a
    replacement, which would otherwise compete with this runtime's init for the node's CPU,
    on the cold start's path. The pod announces itself to the waiting gateways meanwhile."""
    metadata = deployment["metadata"]
    namespace = str(metadata["namespace"])
    started = time.monotonic()
    await _until_initialised(address)
    initialised = time.monotonic()
    labels = metadata.get("labels") or {}
    adopt = adopted_pod_patch(labels, plan.plan_hash, metadata["name"], metadata["uid"])
    if not await asyncio.to_thread(kube.patch, "v1", "Pod", name, namespace, adopt):
        return False
    log.info(
        "pool pod %s/%s is now %s (initialised in %.0f ms, relabelled in %.0f ms)",
        namespace,
        name,
        metadata["name"],
        (initialised - started) * 1000,
        (time.monotonic() - initialised) * 1000,
    )
    return True


async def adopt_pool_pod(
    deployment: Mapping[str, Any], plan: Specialization, signing_key: str
) -> tuple[str, Awaitable[bool]] | None:
    """Turn a ready pod of the namespace's pool into an instance of ``deployment``'s version:
    its name and the relabel still to await (False if the pod went meanwhile); None when the
    pool has none, or it could not be specialised (the caller falls back to the Deployment).

    The agent takes one specialisation only, so posting it is the claim: of two claimants,
    one gets 200 and the other 409 or 404."""
    metadata = deployment["metadata"]
    namespace = str(metadata["namespace"])
    token = pool_token(signing_key, namespace)
    timeout = aiohttp.ClientTimeout(total=SPECIALIZE_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while (candidate := POOL_PODS.take(namespace, pool_slug(plan.pool))) is not None:
            name, ip = candidate
            address = f"{ip}:{INVOKE_PORT}"
            started = time.monotonic()
            try:
                await _post_specialization(session, address, token, plan.request)
            except SpecializationFailed as problem:
                if problem.taken:
                    log.info("pool pod %s/%s not taken: %s", namespace, name, problem)
                    continue
                # The agent refused the plan or could not unpack the code: the Deployment's
                # own pod will say why on the Function's status.
                log.warning("specialising pool pod %s/%s failed: %s", namespace, name, problem)
                try:
                    await asyncio.to_thread(kube.delete, "v1", "Pod", name, namespace)
                except Exception:
                    log.exception("deleting pool pod %s/%s failed", namespace, name)
                return None
            log.info(
                "pool pod %s/%s specialised as %s in %.0f ms",
                namespace,
                name,
                metadata["name"],
                (time.monotonic() - started) * 1000,
            )
            return name, _adopt(deployment, plan, name, address)
    return None
