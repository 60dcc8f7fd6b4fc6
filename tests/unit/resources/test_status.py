"""Conditions and rollout state: pure functions of what the operator observed."""

from __future__ import annotations

from typing import Any

import pytest

from kubelambda.resources.status import Observation, deployment_rollout, ready_condition

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z"


def deployment(
    replicas: int,
    ready: int,
    updated: int,
    *,
    generation: int = 2,
    observed: int = 2,
    total: int | None = None,
) -> dict[str, Any]:
    return {
        "metadata": {"generation": generation},
        "spec": {"replicas": replicas},
        "status": {
            "replicas": updated if total is None else total,
            "readyReplicas": ready,
            "updatedReplicas": updated,
            "observedGeneration": observed,
        },
    }


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (None, (0, 0, False)),
        (deployment(1, 1, 1), (1, 1, True)),
        (deployment(1, 0, 1), (1, 0, False)),
        (deployment(2, 2, 1), (2, 2, False)),  # rollout still replacing old pods
        (deployment(1, 1, 1, generation=3, observed=2), (1, 1, False)),  # new spec not seen yet
        # The new pod is ready, the old one not yet gone: it would still answer calls.
        (deployment(1, 2, 1, total=2), (1, 2, False)),
        (deployment(0, 0, 0), (0, 0, True)),
    ],
)
def test_deployment_rollout(body: dict[str, Any] | None, expected: tuple[int, int, bool]) -> None:
    assert deployment_rollout(body) == expected


def test_transition_time_moves_only_when_status_flips() -> None:
    first = Observation([], 1, T0).condition("Ready", ok=False, reason="Deploying")
    same = Observation([first], 1, T1).condition("Ready", ok=False, reason="Deploying", message="x")
    flipped = Observation([first], 1, T1).condition("Ready", ok=True, reason="Available")
    assert first["lastTransitionTime"] == T0
    assert same["lastTransitionTime"] == T0
    assert flipped["lastTransitionTime"] == T1


def test_no_observed_generation_field_when_unknown() -> None:
    assert "observedGeneration" not in Observation([], None, T0).condition(
        "Ready", ok=True, reason="A"
    )


def test_merged_replaces_by_type_and_keeps_the_rest() -> None:
    configured = Observation([], 1, T0).condition("Configured", ok=True, reason="Reconciled")
    ready = Observation([], 1, T0).condition("Ready", ok=False, reason="Deploying")
    newer = Observation([configured, ready], 1, T1).condition("Ready", ok=True, reason="Available")
    merged = Observation([configured, ready], 1, T1).merged(newer)
    assert [c["type"] for c in merged] == ["Configured", "Ready"]
    assert merged[1]["reason"] == "Available"


@pytest.mark.parametrize(
    ("configured", "body", "status", "reason"),
    [
        (None, deployment(1, 1, 1), "True", "Available"),
        (None, deployment(1, 0, 1), "False", "Deploying"),
        (("False", "LayerNotFound"), deployment(1, 1, 1), "False", "LayerNotFound"),
        (("True", "Reconciled"), None, "False", "Deploying"),
    ],
)
def test_ready_condition(
    configured: tuple[str, str] | None, body: dict[str, Any] | None, status: str, reason: str
) -> None:
    previous = []
    if configured:
        previous.append(
            {
                "type": "Configured",
                "status": configured[0],
                "reason": configured[1],
                "message": "m",
                "lastTransitionTime": T0,
            }
        )
    condition = ready_condition(Observation(previous, 1, T1), body)
    assert (condition["status"], condition["reason"]) == (status, reason)
