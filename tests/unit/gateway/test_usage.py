"""Usage plans: periods, counter names, the admission rules, and the JetStream counter."""

from __future__ import annotations

import asyncio
import json
import re
import time
from datetime import datetime

import nats
import pytest

from kubelambda.gateway.apiroutes import ApiKeyPolicy
from kubelambda.gateway.usage import (
    Admission,
    CounterUnavailable,
    UsagePlans,
    counter_name,
    period_label,
)
from kubelambda.gateway.usage_nats import NatsQuotaCounter
from tests.unit.natsserver import NatsServer


def epoch(day: str, clock: str = "12:00:00") -> float:
    return datetime.fromisoformat(f"{day}T{clock}+00:00").timestamp()


@pytest.mark.parametrize(
    ("period", "moment", "label"),
    [
        ("DAY", epoch("2026-11-23", "00:00:00"), "20261123"),
        ("DAY", epoch("2026-11-23", "23:59:59"), "20261123"),
        ("WEEK", epoch("2026-11-23"), "2026W48"),  # a Monday starts the ISO week
        ("WEEK", epoch("2026-11-22"), "2026W47"),  # Sunday still ends the one before
        ("WEEK", epoch("2027-01-01"), "2026W53"),  # the ISO year, not the calendar year
        ("MONTH", epoch("2026-11-30", "23:59:59"), "202611"),
        ("MONTH", epoch("2026-12-01", "00:00:00"), "202612"),
    ],
)
def test_period_label(period: str, moment: float, label: str) -> None:
    assert period_label(period, moment) == label


def test_unknown_period_is_an_error() -> None:
    with pytest.raises(ValueError, match="YEAR"):
        period_label("YEAR", 0)


def test_counter_names_are_subject_safe_and_distinct_per_key_and_period() -> None:
    now = epoch("2026-11-23")
    dotted = ("team.a", "api", "keys.v1", "alice.smith")
    name = counter_name(dotted, "DAY", now)
    assert re.fullmatch(r"[0-9a-f]{32}\.20261123", name)
    assert counter_name(dotted, "DAY", now + 60) == name
    assert counter_name(dotted, "DAY", now + 86400) != name
    assert counter_name(dotted, "MONTH", now).split(".")[0] != name.split(".")[0]
    others = [("team.a", "api", "keys.v1", "bob"), ("team.a", "other", "keys.v1", "alice.smith")]
    assert {counter_name(o, "DAY", now) for o in others}.isdisjoint({name})


class MemoryCounter:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.down = False
        self.calls = 0

    async def add(self, counter: str, delta: int) -> int:
        self.calls += 1
        if self.down:
            raise CounterUnavailable("down")
        self.counts[counter] = self.counts.get(counter, 0) + delta
        return self.counts[counter]

    def give_back(self, counter: str) -> None:
        self.counts[counter] -= 1

    async def close(self) -> None:
        pass


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def admit_all(plans: UsagePlans, policy: ApiKeyPolicy, key: str, times: int) -> list[Admission]:
    async def run() -> list[Admission]:
        return [await plans.admit("team", "api", policy, key) for _ in range(times)]

    return asyncio.run(run())


def test_quota_admits_exactly_the_limit_per_key_and_period() -> None:
    counter = MemoryCounter()
    wall = Clock(epoch("2026-11-23"))
    plans = UsagePlans(counter, Clock(0), wall)
    policy = ApiKeyPolicy("keys", quota=(3, "DAY"))
    ok, over = Admission.ADMITTED, Admission.OVER_QUOTA
    assert admit_all(plans, policy, "alice", 5) == [ok, ok, ok, over, over]
    # Refused requests gave their count back: the count is what was served.
    assert list(counter.counts.values()) == [3]
    assert admit_all(plans, policy, "bob", 1) == [ok]
    wall.now += 86400
    assert admit_all(plans, policy, "alice", 4) == [ok, ok, ok, over]


def test_throttle_per_key_and_throttled_requests_use_no_quota() -> None:
    counter = MemoryCounter()
    monotonic = Clock(100.0)
    plans = UsagePlans(counter, monotonic, Clock(epoch("2026-11-23")))
    policy = ApiKeyPolicy("keys", throttle=(1.0, 2), quota=(10, "MONTH"))
    ok, throttled = Admission.ADMITTED, Admission.THROTTLED
    assert admit_all(plans, policy, "alice", 3) == [ok, ok, throttled]
    assert admit_all(plans, policy, "bob", 1) == [ok]
    monotonic.now += 1.0
    assert admit_all(plans, policy, "alice", 2) == [ok, throttled]
    assert sorted(counter.counts.values()) == [1, 3]


def test_a_spent_key_is_refused_without_asking_the_counter_until_the_period_ends() -> None:
    counter = MemoryCounter()
    wall = Clock(epoch("2026-11-23"))
    plans = UsagePlans(counter, Clock(0), wall)
    policy = ApiKeyPolicy("keys", quota=(2, "DAY"))
    over = Admission.OVER_QUOTA
    assert admit_all(plans, policy, "alice", 3)[-1] == over
    calls = counter.calls
    assert admit_all(plans, policy, "alice", 5) == [over] * 5
    assert counter.calls == calls
    # A bigger limit (the plan changed) asks again; so does the next day.
    assert admit_all(plans, ApiKeyPolicy("keys", quota=(3, "DAY")), "alice", 1) == [
        Admission.ADMITTED
    ]
    wall.now += 86400
    assert admit_all(plans, policy, "alice", 1) == [Admission.ADMITTED]


def test_routes_with_different_throttles_do_not_refill_each_others_bucket() -> None:
    plans = UsagePlans(MemoryCounter(), Clock(0), Clock(epoch("2026-11-23")))
    one, two = ApiKeyPolicy("keys", throttle=(1.0, 1)), ApiKeyPolicy("keys", throttle=(1.0, 2))

    async def alternate() -> list[Admission]:
        return [await plans.admit("team", "api", (one, two)[i % 2], "alice") for i in range(8)]

    assert asyncio.run(alternate()).count(Admission.ADMITTED) == 3


def test_an_unreachable_counter_is_logged_now_and_then_not_per_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    counter = MemoryCounter()
    counter.down = True
    monotonic = Clock(0)
    plans = UsagePlans(counter, monotonic, Clock(epoch("2026-11-23")))
    policy = ApiKeyPolicy("keys", quota=(10, "DAY"))
    admit_all(plans, policy, "alice", 5)
    monotonic.now += 10
    admit_all(plans, policy, "alice", 5)
    assert len([r for r in caplog.records if "not checked" in r.message]) == 2


def test_a_quota_that_cannot_be_checked_is_not_waived() -> None:
    counter = MemoryCounter()
    counter.down = True
    now = Clock(epoch("2026-11-23"))
    quota = ApiKeyPolicy("keys", quota=(10, "DAY"))
    assert admit_all(UsagePlans(counter, Clock(0), now), quota, "a", 1) == [Admission.UNAVAILABLE]
    assert admit_all(UsagePlans(None, Clock(0), now), quota, "a", 1) == [Admission.UNAVAILABLE]
    throttle_only = ApiKeyPolicy("keys", throttle=(5.0, 5))
    plans = UsagePlans(None, Clock(0), now)
    assert admit_all(plans, throttle_only, "a", 1) == [Admission.ADMITTED]


# --- the JetStream counter, against a real nats-server --------------------------------------


def test_jetstream_counts_are_shared_exact_and_given_back(nats_server: NatsServer) -> None:
    async def scenario() -> None:
        first, second = await nats.connect(nats_server.url), await nats.connect(nats_server.url)
        try:
            counters = [NatsQuotaCounter(lambda: first), NatsQuotaCounter(lambda: second)]
            # The stream does not exist yet: the first count creates it.
            values = await asyncio.gather(
                *(counters[i % 2].add("k.20261123", 1) for i in range(100))
            )
            assert sorted(values) == list(range(1, 101))
            counters[0].give_back("k.20261123")
            await asyncio.sleep(0.2)
            assert await counters[1].add("k.20261123", 0) == 99
            assert await counters[1].add("other.20261123", 1) == 1
        finally:
            await first.close()
            await second.close()

    asyncio.run(scenario())


def test_a_count_while_reconnecting_fails_at_once_and_is_never_made(
    nats_server: NatsServer,
) -> None:
    """The production connection reconnects forever; an increment it would buffer meanwhile
    must not reach the count after the caller got its 503."""

    async def scenario() -> None:
        client = await nats.connect(
            nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2
        )
        counter = NatsQuotaCounter(lambda: client, timeout_s=2.0)
        try:
            assert await counter.add("k.1", 1) == 1
            nats_server.stop()
            await asyncio.sleep(0.3)
            started = time.monotonic()
            with pytest.raises(CounterUnavailable, match="down"):
                await counter.add("k.1", 1)
            assert time.monotonic() - started < 0.1
            nats_server.start()
            for _ in range(100):
                if client.is_connected:
                    break
                await asyncio.sleep(0.1)
            assert await counter.add("k.1", 0) == 1
        finally:
            await client.close()

    asyncio.run(scenario())


def test_jetstream_counter_unavailable(nats_server: NatsServer) -> None:
    async def scenario() -> None:
        with pytest.raises(CounterUnavailable, match="down"):
            await NatsQuotaCounter(lambda: None).add("k.1", 1)
        client = await nats.connect(nats_server.url)
        try:
            # A stream without message counters (made by hand, or by an older server).
            config = {"name": "PLAIN", "subjects": ["kubelambda.usage.>"], "storage": "memory"}
            await client.request("$JS.API.STREAM.CREATE.PLAIN", json.dumps(config).encode())
            with pytest.raises(CounterUnavailable, match="message counters"):
                await NatsQuotaCounter(lambda: client).add("k.1", 1)
        finally:
            await client.close()

    asyncio.run(scenario())
