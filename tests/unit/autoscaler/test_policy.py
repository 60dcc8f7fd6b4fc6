"""Scale decisions from demand history: table tests of the pure policy."""

from __future__ import annotations

import pytest

from kubelambda.autoscaler.policy import DemandHistory, ScalingPolicy, decide


def history(samples: list[tuple[float, int]], start: float = 0.0) -> DemandHistory:
    result = DemandHistory(start)
    for when, demand in samples:
        result.add(when, demand, keep_seconds=3600)
    return result


POLICY = ScalingPolicy(per_instance=1, idle_seconds=60, linger_seconds=0)


@pytest.mark.parametrize(
    ("samples", "policy", "current", "now", "replicas"),
    [
        # A burst counts at once (panic window = the newest sample).
        ([(100, 10)], POLICY, 1, 100, 10),
        ([(100, 10)], ScalingPolicy(per_instance=4), 1, 100, 3),
        # From zero on a wake-up / first request.
        ([(100, 1)], POLICY, 0, 100, 1),
        # Demand fell: the stable window keeps the peak's instances...
        ([(100, 10), (130, 1)], POLICY, 10, 130, 10),
        # ...until it leaves the window; then at most half go per decision.
        ([(100, 10), (161, 1)], POLICY, 10, 161, 5),
        ([(100, 10), (161, 1)], POLICY, 5, 162, 2),
        # No demand at all for idleSeconds: zero (linger 0).
        ([(100, 3), (161, 0)], POLICY, 3, 161, 0),
        # Idle, but the last instance lingers.
        ([(100, 3), (161, 0)], ScalingPolicy(idle_seconds=60, linger_seconds=30), 3, 161, 1),
        ([(100, 3), (191, 0)], ScalingPolicy(idle_seconds=60, linger_seconds=30), 1, 191, 0),
        # Still inside the idle period: keep one even without demand.
        ([(100, 1), (130, 0)], POLICY, 1, 130, 1),
        # Minimum (provisioned) instances stay, idle or not.
        ([(100, 0)], ScalingPolicy(min_replicas=2), 0, 1000, 2),
        # Capped by maxInstances / reserved concurrency; reserved 0 means none at all.
        ([(100, 50)], ScalingPolicy(max_replicas=10), 1, 100, 10),
        ([(100, 5)], ScalingPolicy(max_replicas=0), 0, 100, 0),
        # idleSeconds 0: scale out while there is demand, to zero right after.
        ([(100, 1)], ScalingPolicy(idle_seconds=0), 0, 100, 1),
        ([(100, 1), (101, 0)], ScalingPolicy(idle_seconds=0), 1, 101, 0),
    ],
)
def test_decide(
    samples: list[tuple[float, int]], policy: ScalingPolicy, current: int, now: float, replicas: int
) -> None:
    assert decide(history(samples), policy, current, now).replicas == replicas


def test_a_new_version_keeps_its_instance_for_an_idle_period() -> None:
    """Before any demand was seen (new Deployment, operator restart) nothing goes to zero."""
    fresh = DemandHistory(now=1000)
    fresh.add(1030, 0, keep_seconds=60)
    assert decide(fresh, POLICY, 1, 1030).replicas == 1
    fresh.add(1061, 0, keep_seconds=60)
    assert decide(fresh, POLICY, 1, 1061).replicas == 0


def test_reasons_say_why() -> None:
    assert "10 invocations" in decide(history([(1, 10)]), POLICY, 1, 1).reason
    assert "idle for" in decide(history([(1, 1), (100, 0)]), POLICY, 1, 100).reason
    assert "capped at 2" in decide(history([(1, 9)]), ScalingPolicy(max_replicas=2), 1, 1).reason
    assert "provisioned" in decide(history([]), ScalingPolicy(min_replicas=2), 0, 500).reason


def test_history_forgets_samples_outside_the_window() -> None:
    demand = DemandHistory(0)
    for second in range(200):
        demand.add(second, 1, keep_seconds=60)
    assert len(demand.samples) <= 62
    assert demand.peak_since(0) == 1


def test_policy_round_trips_through_the_annotation() -> None:
    policy = ScalingPolicy(3, 1, 8, 30.0, 5.0)
    assert ScalingPolicy.from_json(policy.to_json()) == policy


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        "not json",
        "[1]",
        '{"per_instance": "x"}',
        '{"per_instance": 0}',
        '{"min_replicas": -1}',
    ],
)
def test_unreadable_annotation_means_defaults(text: str | None) -> None:
    assert ScalingPolicy.from_json(text) == ScalingPolicy()
