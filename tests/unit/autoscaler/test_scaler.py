"""The autoscaler's state: reports summed over gateways, wake-ups, announced pods."""

from __future__ import annotations

import pytest

from kubelambda.autoscaler.policy import ScalingPolicy
from kubelambda.autoscaler.scaler import (
    REPORT_TTL_S,
    STARTED_NEWS_S,
    WAKE_HOLD_S,
    Autoscaler,
    peaks_from_json,
)

KEY = ("team", "hello", "$LATEST")
OTHER = ("team", "other", "3")


def test_demand_is_summed_over_live_reporters() -> None:
    scaler = Autoscaler()
    scaler.report("gw-a", {KEY: 3, OTHER: 0}, now=10)
    scaler.report("gw-b", {KEY: 2}, now=10.5)
    assert scaler.demand(11) == {KEY: 5}
    # A gateway that stopped reporting no longer counts.
    assert scaler.demand(10 + REPORT_TTL_S + 0.1) == {KEY: 2}
    # A newer report replaces the reporter's older one.
    scaler.report("gw-b", {}, now=12)
    assert scaler.demand(12) == {}


@pytest.mark.parametrize(
    ("reports", "demand"),
    [
        # Sequential calls alternating between two gateways: each peaks at 1, none runs now.
        ([(1, 0), (1, 0)], 1),
        ([(1, 1), (1, 0)], 1),
        # Concurrency spread over gateways, still running at their reports: summed.
        ([(25, 25), (25, 24)], 49),
        # A burst on one gateway that ended before its report: its peak.
        ([(6, 0), (1, 1)], 6),
    ],
)
def test_demand_is_the_larger_of_summed_current_counts_and_the_highest_peak(
    reports: list[tuple[int, int]], demand: int
) -> None:
    scaler = Autoscaler()
    for index, (peak, current) in enumerate(reports):
        scaler.report(f"gw-{index}", {KEY: peak}, now=10, current={KEY: current})
    assert scaler.demand(10.5) == {KEY: demand}


def test_a_wake_up_counts_as_one_waiting_invocation_for_a_while() -> None:
    scaler = Autoscaler()
    scaler.observe(KEY, ScalingPolicy(), replicas=0, ready=0)
    assert scaler.wake(KEY, now=5) is True
    assert scaler.demand(5) == {KEY: 1}
    assert scaler.demand(5 + WAKE_HOLD_S + 0.1) == {}


def test_wake_says_whether_the_version_is_at_zero() -> None:
    scaler = Autoscaler()
    assert scaler.wake(KEY, now=1) is False  # unknown version: nothing to do yet
    scaler.observe(KEY, ScalingPolicy(), replicas=2, ready=2)
    assert scaler.wake(KEY, now=1) is False


def test_decisions_scale_from_zero_and_back() -> None:
    scaler = Autoscaler()
    scaler.observe(KEY, ScalingPolicy(idle_seconds=10), replicas=0, ready=0)
    scaler.wake(KEY, now=100)
    [action] = scaler.decisions(100)
    assert (action.key, action.current, action.decision.replicas) == (KEY, 0, 1)
    scaler.scaled(action)
    assert scaler.decisions(101) == []
    scaler.report("gw", {KEY: 4}, now=102)
    [action] = scaler.decisions(102)
    assert action.decision.replicas == 4
    scaler.scaled(action)
    scaler.report("gw", {}, now=103)
    assert scaler.decisions(103) == []  # the stable window keeps them
    # Demand (the wake-up's included) last seen at 103: idle for 10 s at 113.
    scaler.report("gw", {}, now=113.5)
    [action] = scaler.decisions(113.5)
    assert action.decision.replicas == 0
    assert "idle" in action.decision.reason


def test_forgotten_versions_are_not_scaled() -> None:
    scaler = Autoscaler()
    scaler.observe(KEY, ScalingPolicy(min_replicas=2), replicas=0, ready=0)
    scaler.forget(KEY)
    assert scaler.decisions(1) == []


def test_announced_pods_are_news_for_a_while_newest_first() -> None:
    scaler = Autoscaler()
    scaler.started(KEY, "10.0.0.1:8080", now=1)
    scaler.started(KEY, "10.0.0.2:8080", now=2)
    assert scaler.recently_started(KEY, 3) == ["10.0.0.2:8080", "10.0.0.1:8080"]
    assert scaler.recently_started(KEY, 1 + STARTED_NEWS_S + 0.5) == ["10.0.0.2:8080"]
    assert scaler.recently_started(OTHER, 3) == []


def test_scaling_down_drops_the_news() -> None:
    """An announced pod may be one of those removed: never hand it out afterwards."""
    scaler = Autoscaler()
    scaler.observe(KEY, ScalingPolicy(idle_seconds=0), replicas=1, ready=1)
    scaler.started(KEY, "10.0.0.1:8080", now=1)
    [action] = scaler.decisions(2)
    assert action.decision.replicas == 0
    assert scaler.recently_started(KEY, 2) == []


def test_a_pod_announced_after_its_version_went_to_zero_is_no_news() -> None:
    """A pod whose runtime finished initialising after the scale to zero is going away: a
    gateway handed its address would wait on a dead one."""
    scaler = Autoscaler()
    scaler.observe(KEY, ScalingPolicy(idle_seconds=0), replicas=1, ready=0)
    [action] = scaler.decisions(2)
    scaler.scaled(action)
    scaler.started(KEY, "10.0.0.1:8080", now=3)
    assert scaler.recently_started(KEY, 4) == []


def test_report_entries_are_validated() -> None:
    entries = [
        {"namespace": "a", "function": "f", "version": "1", "peak": 2},
        {"namespace": "a", "function": "f", "version": "1", "peak": 3},
    ]
    assert peaks_from_json(entries) == ({("a", "f", "1"): 5}, {("a", "f", "1"): 5})
    now = [{"namespace": "a", "function": "f", "version": "1", "peak": 4, "now": 1}]
    assert peaks_from_json(now) == ({("a", "f", "1"): 4}, {("a", "f", "1"): 1})
    with pytest.raises(ValueError, match="now must be"):
        peaks_from_json([{**now[0], "now": 5}])


@pytest.mark.parametrize(
    "entry",
    [
        "not an object",
        {"namespace": "", "function": "f", "version": "1", "peak": 1},
        {"namespace": "a", "function": "f", "version": "1", "peak": -1},
        {"namespace": "a", "function": "f", "version": "1", "peak": True},
        {"namespace": "a", "function": "f", "version": "1", "peak": "3"},
        {"namespace": "a", "function": 5, "version": "1", "peak": 1},
    ],
)
def test_malformed_report_entries_are_refused(entry: object) -> None:
    with pytest.raises(ValueError, match=r"."):
        peaks_from_json([entry])
