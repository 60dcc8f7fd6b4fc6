"""Status conditions, computed from what the operator observed (time passed in, never read)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

READY = "Ready"
CONFIGURED = "Configured"


@dataclass(frozen=True)
class Observation:
    """What a condition is computed against: the conditions so far, generation and time."""

    previous: Sequence[Mapping[str, Any]]
    generation: int | None
    now: str

    def condition(self, type_: str, *, ok: bool, reason: str, message: str = "") -> dict[str, Any]:
        """A metav1.Condition-shaped dict; lastTransitionTime moves only when the status flips."""
        status = "True" if ok else "False"
        prior = next((c for c in self.previous if c.get("type") == type_), None)
        unchanged = prior is not None and prior.get("status") == status
        result: dict[str, Any] = {
            "type": type_,
            "status": status,
            "reason": reason,
            "message": message,
            "lastTransitionTime": prior["lastTransitionTime"] if unchanged and prior else self.now,
        }
        if self.generation is not None:
            result["observedGeneration"] = self.generation
        return result

    def merged(self, *updates: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The previous conditions with each update replacing the one of its type."""
        by_type = {c["type"]: dict(c) for c in self.previous}
        by_type.update({c["type"]: dict(c) for c in updates})
        return sorted(by_type.values(), key=lambda c: str(c["type"]))

    def with_updates(self, *updates: Mapping[str, Any]) -> Observation:
        return Observation(self.merged(*updates), self.generation, self.now)


def deployment_rollout(deployment: Mapping[str, Any] | None) -> tuple[int, int, bool]:
    """(desired, ready, rolled_out) of a Deployment; rolled out: all desired pods current and
    ready, and no pod of an older template left (it would still answer calls)."""
    if deployment is None:
        return 0, 0, False
    spec_replicas = int(deployment.get("spec", {}).get("replicas", 1))
    status = deployment.get("status") or {}
    ready = int(status.get("readyReplicas") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    observed = int(status.get("observedGeneration") or 0)
    generation = int(deployment.get("metadata", {}).get("generation") or 0)
    pods = int(status.get("replicas") or 0)
    current = observed >= generation and updated >= spec_replicas and pods <= updated
    return spec_replicas, ready, current and ready >= spec_replicas


# Pod states that will not fix themselves: the Function's status says why it is not ready.
STUCK_WAITING_REASONS = frozenset(
    {
        "CrashLoopBackOff",
        "ErrImagePull",
        "ImagePullBackOff",
        "ErrImageNeverPull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
    }
)


def _init_failure(status: Mapping[str, Any]) -> str | None:
    state = status.get("state") or {}
    if "running" in state or (state.get("terminated") or {}).get("exitCode") == 0:
        return None
    for terminated in (state.get("terminated"), (status.get("lastState") or {}).get("terminated")):
        if terminated and terminated.get("exitCode"):
            return str(terminated.get("message") or terminated.get("reason") or "failed").strip()
    return None


def pod_ready(pod: Mapping[str, Any]) -> bool:
    """The kubelet says the pod is Ready."""
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def pod_problem(pod: Mapping[str, Any]) -> tuple[str, str] | None:
    """(reason, message) when a function pod cannot start: its code could not be unpacked
    (the unpack step's termination message) or a container is stuck."""
    status = pod.get("status") or {}
    for container in status.get("initContainerStatuses") or []:
        failure = _init_failure(container)
        if failure:
            return "CodeUnavailable", failure
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in STUCK_WAITING_REASONS:
            message = str(waiting.get("message") or "").strip()
            detail = f"{container.get('name')}: {waiting['reason']}"
            return str(waiting["reason"]), f"{detail}: {message}" if message else detail
    return None


def ready_condition(
    observation: Observation,
    latest_deployment: Mapping[str, Any] | None,
    problem: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """Ready: the function is configured and its $LATEST pods are rolled out and ready.

    ``problem`` is a pod's reason not to start (``pod_problem``), reported while not ready.
    """
    configured = next((c for c in observation.previous if c.get("type") == CONFIGURED), None)
    if configured is not None and configured.get("status") != "True":
        return observation.condition(
            READY, ok=False, reason=str(configured["reason"]), message=str(configured["message"])
        )
    desired, ready, rolled_out = deployment_rollout(latest_deployment)
    if not rolled_out and problem is not None:
        return observation.condition(READY, ok=False, reason=problem[0], message=problem[1])
    return observation.condition(
        READY,
        ok=rolled_out,
        reason="Available" if rolled_out else "Deploying",
        message=f"{ready}/{desired} pods ready",
    )
