"""Scheduled triggers on the real cluster: the API server checks expressions, the invoker fires.

A Function with ``rate(10 seconds)`` returns when it ran; an OnSuccess URL destination POSTs
each invocation record to a server on this host (``RecordSink``), so the test sees the
scheduled event (its ``time`` is the fire time) and the moment the function ran (same clock:
the function pods run on this machine's node). Disabling the schedule must stop the fires
within a second or two (the invoker watches Functions).
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml

from tests.e2e.kube import KubectlError, apply, kubectl, wait_until
from tests.e2e.test_async import RecordSink
from tests.e2e.test_runtimes import await_function, function

PERIOD_S = 10
TOLERANCE_S = 5
CLOCK = """
import time

def handler(event, context):
    return {"ranAt": time.time(), "event": event}
"""


@pytest.fixture(scope="module")
def schedules_namespace() -> Iterator[str]:
    name = f"e2e-schedules-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false")


def clock_function(name: str, sink_url: str, enabled: bool = True) -> dict[str, Any]:
    return function(
        name,
        {
            "runtime": "python3.11",
            "handler": "app.handler",
            "code": {"inline": {"app.py": CLOCK}},
            "scaling": {"minInstances": 1},  # no cold start in the timings
            "async": {"maximumRetryAttempts": 0, "onSuccess": {"url": sink_url}},
            "schedules": [
                {"name": "tick", "expression": f"rate({PERIOD_S} seconds)", "enabled": enabled}
            ],
        },
    )


def fire_time(record: dict[str, Any]) -> float:
    scheduled = record["requestPayload"]["time"]
    return datetime.strptime(scheduled, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


def ticks(records_sink: RecordSink, function_name: str) -> list[dict[str, Any]]:
    """Records of the function's scheduled invocations, in fire-time order."""
    records = [
        record
        for record in records_sink.snapshot()
        if record["requestContext"]["functionArn"].endswith(f":function:{function_name}:$LATEST")
    ]
    return sorted(records, key=fire_time)


def test_rate_fires_on_time_and_stops_when_disabled(
    schedules_namespace: str,
    sink: RecordSink,
) -> None:
    ns = schedules_namespace
    apply(clock_function("ticker", sink.url), ns)
    await_function(ns, "ticker")
    ready_at = time.time()

    def three_on_time_candidates() -> list[dict[str, Any]] | None:
        after_ready = [r for r in ticks(sink, "ticker") if fire_time(r) > ready_at + 1]
        return after_ready[:3] if len(after_ready) >= 3 else None

    first_three = wait_until(
        three_on_time_candidates, 6 * PERIOD_S, "three scheduled invocations", interval=1
    )
    fires = [fire_time(record) for record in first_three]
    # Consecutive fire times, on the period's grid (rate() counts from the epoch).
    assert [b - a for a, b in itertools.pairwise(fires)] == [PERIOD_S, PERIOD_S]
    assert all(fire % PERIOD_S == 0 for fire in fires)
    for record, fire in zip(first_three, fires, strict=True):
        ran_at = record["responsePayload"]["ranAt"]
        assert abs(ran_at - fire) <= TOLERANCE_S, (fire, ran_at)
        event = record["requestPayload"]
        assert event["source"] == "aws.events"
        assert event["detail-type"] == "Scheduled Event"
        assert event["resources"] == [
            f"arn:aws:events:us-east-1:000000000000:rule/{ns}/ticker.tick"
        ]
        assert event["id"] == record["requestContext"]["requestId"]
    # Each fire ran exactly once (no replica or restart duplicates).
    all_fires = [fire_time(record) for record in ticks(sink, "ticker")]
    assert len(all_fires) == len(set(all_fires))

    apply(clock_function("ticker", sink.url, enabled=False), ns)
    disabled_at = time.time()
    time.sleep(3 * PERIOD_S)
    late = [fire_time(r) for r in ticks(sink, "ticker") if fire_time(r) > disabled_at + 2]
    assert late == [], "fires after the schedule was disabled"


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("cron(0 10 * * * *)", "cron() needs ? in exactly one of day-of-month and day-of-week"),
        ("cron(0 24 * * ? *)", "cron() hours must be 0-23"),
        ("cron(0 10 ? * MON#6 *)", "cron() day-of-week must be ? or 1-7 or SUN-SAT"),
        ("rate(5 seconds)", "or 'N seconds' with N >= 10"),
        ("rate(1 hours)", "rate() takes '1 minute|hour|day'"),
        ("at(2024-01-01T00:00:00)", "schedule expression must be rate(value unit) or cron("),
    ],
)
def test_api_server_rejects_bad_expressions(
    schedules_namespace: str, expression: str, message: str
) -> None:
    manifest = clock_function("rejected", "http://127.0.0.1/unused")
    manifest["spec"]["schedules"][0]["expression"] = expression
    with pytest.raises(KubectlError) as rejected:
        apply_dry_run(manifest, schedules_namespace)
    assert message in str(rejected.value)
    assert "spec.schedules[0].expression" in str(rejected.value)


@pytest.mark.parametrize(
    "expression",
    [
        "cron(0/5 8-17 ? * MON-FRI *)",
        "cron(0 9 ? * 2#1 *)",
        "cron(0 0 L * ? *)",
        "cron(0 23 LW * ? 2025-2030)",
        "cron(30 6 15W JAN,jul ? *)",
        "cron(0 0 ? * 6L *)",
        "rate(1 minute)",
        "rate(10 seconds)",
    ],
)
def test_api_server_accepts_eventbridge_expressions(
    schedules_namespace: str, expression: str
) -> None:
    manifest = clock_function("accepted", "http://127.0.0.1/unused")
    manifest["spec"]["schedules"][0]["expression"] = expression
    assert "(server dry run)" in apply_dry_run(manifest, schedules_namespace)


def apply_dry_run(manifest: dict[str, Any], namespace: str) -> str:
    return kubectl(
        "apply", "--dry-run=server", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(manifest)
    )
