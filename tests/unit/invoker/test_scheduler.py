"""The scheduler on virtual time: fire times, catch-up after an outage, changes, failures; and
with real JetStream: replicas fire once, a restart does not fire again, events reach the function.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from kubelambda.api.schedule import Schedule
from kubelambda.invoker.broker import BrokerError, ScheduleState
from kubelambda.invoker.event import Event
from kubelambda.invoker.functions import FunctionSettings, StaticDirectory
from kubelambda.invoker.jetstream import JetStreamBroker
from kubelambda.invoker.metrics import InvokerMetrics
from kubelambda.invoker.scheduler import REQUEST_ID_NAMESPACE, Scheduler

from .conftest import NAMESPACE, NatsServer, eventually, running_invoker

T0 = datetime(2024, 3, 5, 12, 0, 0, tzinfo=UTC).timestamp()  # a multiple of 10 s
UID = "2b5c8f0e-1111-4222-8333-944445555666"


class VirtualTime:
    """A clock and a sleep that only move when the test says so."""

    def __init__(self, now: float) -> None:
        self.now = now
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._count = 0

    def clock(self) -> float:
        return self.now

    @property
    def sleepers(self) -> int:
        return sum(not future.done() for _, _, future in self._sleepers)

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._count += 1
        heapq.heappush(self._sleepers, (self.now + max(seconds, 0), self._count, future))
        await future

    async def advance(self, seconds: float) -> None:
        """Move time forward, waking every sleeper on the way at its own time."""
        end = self.now + seconds
        await settle()
        while self._sleepers and self._sleepers[0][0] <= end:
            wake_at, _, future = heapq.heappop(self._sleepers)
            self.now = max(self.now, wake_at)
            if not future.done():
                future.set_result(None)
            await settle()
        self.now = end
        await settle()


def run(scenario: Coroutine[Any, Any, None], timeout_s: float = 120) -> None:
    """Runs a scenario. One stuck on an await fails, its traceback showing where, instead of
    holding up the whole test run (one did so once, in a CI run)."""
    asyncio.run(asyncio.wait_for(scenario, timeout_s))


async def settle() -> None:
    """Let every task run until it waits again (on virtual time or real I/O briefly)."""
    for _ in range(20):
        await asyncio.sleep(0)


@dataclass
class FakeBroker:
    events: list[tuple[Event, str]] = field(default_factory=list)
    failing: bool = False

    async def publish_event(self, event: Event, msg_id: str) -> bool:
        if self.failing:
            raise BrokerError("nats is down")
        duplicate = any(known == msg_id for _, known in self.events)
        if not duplicate:
            self.events.append((event, msg_id))
        return not duplicate

    def fire_times(self) -> list[float]:
        return [int(msg_id.rsplit("/", 1)[1]) / 1000 - T0 for _, msg_id in self.events]


@dataclass
class FakeStore:
    states: dict[str, ScheduleState] = field(default_factory=dict)

    async def load(self, key: str) -> ScheduleState | None:
        return self.states.get(key)

    async def save(self, key: str, state: ScheduleState) -> None:
        self.states[key] = state

    async def forget(self, key: str) -> None:
        self.states.pop(key, None)


def functions(*schedules: Schedule, uid: str = UID) -> dict[tuple[str, str], FunctionSettings]:
    return {(NAMESPACE, "fn"): FunctionSettings(uid=uid, schedules=schedules)}


TICK = Schedule(name="tick", expression="rate(10 seconds)")
KEY = f"{UID}.tick"


@pytest.fixture
def time_() -> VirtualTime:
    return VirtualTime(T0 + 3)


def make_scheduler(
    time_: VirtualTime, broker: Any, store: Any, directory: StaticDirectory
) -> Scheduler:
    return Scheduler(
        broker,
        store,
        directory,
        region="eu-west-1",
        metrics=InvokerMetrics(),
        clock=time_.clock,
        sleep=time_.sleep,
    )


def fires(scheduler: Scheduler, outcome: str = "queued") -> float:
    metrics: InvokerMetrics = scheduler._metrics
    return (
        metrics.registry.get_sample_value(
            "kubelambda_invoker_schedule_fires_total",
            {"namespace": NAMESPACE, "function": "fn", "schedule": "tick", "outcome": outcome},
        )
        or 0.0
    )


def test_fires_at_each_time_with_the_scheduled_event(time_: VirtualTime) -> None:
    async def scenario() -> None:
        broker, store = FakeBroker(), FakeStore()
        scheduler = make_scheduler(time_, broker, store, StaticDirectory(functions(TICK)))
        scheduler.sync()
        await time_.advance(35)  # T0+3 .. T0+38
        assert broker.fire_times() == [10, 20, 30]
        assert store.states[KEY] == ScheduleState("rate(10 seconds)", int((T0 + 30) * 1000))
        assert fires(scheduler) == 3
        event, msg_id = broker.events[0]
        fire_ms = int((T0 + 10) * 1000)
        assert msg_id == f"schedule/{UID}/tick/{fire_ms}"
        assert event.request_id == str(uuid.uuid5(REQUEST_ID_NAMESPACE, msg_id))
        assert (event.namespace, event.function, event.qualifier) == (NAMESPACE, "fn", None)
        assert event.enqueued_ms == fire_ms
        assert json.loads(event.payload) == {
            "version": "0",
            "id": event.request_id,
            "detail-type": "Scheduled Event",
            "source": "aws.events",
            "account": "000000000000",
            "time": "2024-03-05T12:00:10Z",
            "region": "eu-west-1",
            "resources": ["arn:aws:events:eu-west-1:000000000000:rule/team-a/fn.tick"],
            "detail": {},
        }
        await scheduler.stop()

    run(scenario())


def test_input_and_qualifier(time_: VirtualTime) -> None:
    schedule = Schedule(
        name="tick", expression="cron(0/1 * * * ? *)", qualifier="live", input='{"a": 1}'
    )

    async def scenario() -> None:
        broker = FakeBroker()
        scheduler = make_scheduler(time_, broker, FakeStore(), StaticDirectory(functions(schedule)))
        scheduler.sync()
        await time_.advance(120)
        assert broker.fire_times() == [60, 120]
        event = broker.events[0][0]
        assert (event.qualifier, event.payload) == ("live", b'{"a": 1}')
        await scheduler.stop()

    run(scenario())


def test_after_an_outage_the_latest_missed_time_fires_once(time_: VirtualTime) -> None:
    async def scenario() -> None:
        broker = FakeBroker()
        # The last replica handled T0-40; it is now T0+3: T0-30 .. T0 were missed.
        store = FakeStore({KEY: ScheduleState("rate(10 seconds)", int((T0 - 40) * 1000))})
        scheduler = make_scheduler(time_, broker, store, StaticDirectory(functions(TICK)))
        scheduler.sync()
        await time_.advance(0)
        assert broker.fire_times() == [0]
        assert broker.events[0][0].enqueued_ms == int((T0 + 3) * 1000)  # its age starts now
        await time_.advance(10)
        assert broker.fire_times() == [0, 10]
        await scheduler.stop()

    run(scenario())


@pytest.mark.parametrize(
    "stored",
    [None, ScheduleState("rate(1 day)", int((T0 - 40) * 1000))],
    ids=["no state", "another expression"],
)
def test_without_matching_state_the_schedule_starts_now(
    time_: VirtualTime, stored: ScheduleState | None
) -> None:
    async def scenario() -> None:
        broker = FakeBroker()
        store = FakeStore({KEY: stored} if stored else {})
        scheduler = make_scheduler(time_, broker, store, StaticDirectory(functions(TICK)))
        scheduler.sync()
        await time_.advance(0)
        assert broker.events == []
        assert store.states[KEY] == ScheduleState("rate(10 seconds)", int((T0 + 3) * 1000))
        await time_.advance(10)
        assert broker.fire_times() == [10]
        await scheduler.stop()

    run(scenario())


def test_changes_while_running(time_: VirtualTime) -> None:
    async def scenario() -> None:
        broker, store = FakeBroker(), FakeStore()
        directory = StaticDirectory(functions(TICK))
        scheduler = make_scheduler(time_, broker, store, directory)
        scheduler.sync()
        await time_.advance(10)  # fires T0+10
        # Disabled: stops, and its state goes (enabling it again must not catch up).
        directory.functions = functions(TICK.model_copy(update={"enabled": False}))
        scheduler.sync()
        await time_.advance(30)
        assert broker.fire_times() == [10]
        assert KEY not in store.states
        # Enabled again with stale state planted: a schedule appearing while running starts now.
        store.states[KEY] = ScheduleState("rate(10 seconds)", int((T0 + 10) * 1000))
        directory.functions = functions(TICK)
        scheduler.sync()
        await time_.advance(0)
        assert broker.fire_times() == [10]
        await time_.advance(10)
        assert broker.fire_times() == [10, 50]
        # A new expression applies at once.
        directory.functions = functions(TICK.model_copy(update={"expression": "rate(1 minute)"}))
        scheduler.sync()
        await time_.advance(20)
        assert broker.fire_times() == [10, 50, 60]
        # A re-created Function (another uid) is another schedule; the old one's state goes.
        directory.functions = functions(TICK, uid="another-uid")
        scheduler.sync()
        await time_.advance(0)
        assert KEY not in store.states
        assert "another-uid.tick" in store.states
        # The Function deleted: nothing runs.
        directory.functions = {}
        scheduler.sync()
        await time_.advance(60)
        assert broker.fire_times() == [10, 50, 60]
        assert store.states == {}
        await scheduler.stop()

    run(scenario())


def test_failed_fire_is_retried_until_a_newer_one_is_due(time_: VirtualTime) -> None:
    async def scenario() -> None:
        broker = FakeBroker()
        scheduler = make_scheduler(time_, broker, FakeStore(), StaticDirectory(functions(TICK)))
        scheduler.sync()
        broker.failing = True
        await time_.advance(8)  # T0+11: the T0+10 fire failed a few times
        failures = scheduler._metrics.registry.get_sample_value(
            "kubelambda_invoker_schedule_failures_total",
            {"namespace": NAMESPACE, "function": "fn", "schedule": "tick"},
        )
        assert failures is not None
        assert failures >= 2
        broker.failing = False
        await time_.advance(1)
        assert broker.fire_times() == [10]
        broker.failing = True
        await time_.advance(19)  # T0+31: every try of T0+20 failed, and T0+30's first one
        broker.failing = False
        await time_.advance(5)  # the next try (backoff) is for T0+30, the latest due
        assert broker.fire_times() == [10, 30]
        await scheduler.stop()

    run(scenario())


# --- with a real nats-server -----------------------------------------------------------------


def test_replicas_fire_once_and_a_restart_does_not_fire_again(nats_server: NatsServer) -> None:
    async def scenario() -> None:
        time_ = VirtualTime(T0 + 3)
        directory = StaticDirectory(functions(TICK))
        brokers = [await JetStreamBroker.connect(nats_server.url, f"replica-{i}") for i in range(2)]
        await brokers[0].ensure_streams()
        stores = [await broker.schedule_store() for broker in brokers]
        replicas = [
            make_scheduler(time_, broker, store, directory)
            for broker, store in zip(brokers, stores, strict=True)
        ]
        for replica in replicas:
            replica.sync()

        def publishes() -> float:
            return sum(fires(r) + fires(r, "duplicate") for r in replicas)

        for fire in (1, 2, 3):
            await eventually(lambda: time_.sleepers == 2, what="both replicas waiting")
            await time_.advance(10)
            await eventually(
                lambda expected=2 * fire: publishes() == expected,
                what=f"both replicas queueing fire {fire}",
            )
        depths = await brokers[0].queue_depths()
        assert depths == {(NAMESPACE, "fn"): 3}
        assert sum(fires(replica) for replica in replicas) == 3
        assert sum(fires(replica, "duplicate") for replica in replicas) == 3
        for replica in replicas:
            await replica.stop()
        # A restart at once (nothing missed) fires nothing; after 25 s down, T0+50 fires once.
        restarted = make_scheduler(time_, brokers[0], stores[0], directory)
        restarted.sync()
        await eventually(lambda: time_.sleepers == 1, what="the restarted replica waiting")
        assert await brokers[0].queue_depths() == {(NAMESPACE, "fn"): 3}
        await restarted.stop()
        await time_.advance(25)
        restarted = make_scheduler(time_, brokers[1], stores[1], directory)
        restarted.sync()
        await eventually(lambda: fires(restarted) == 1)
        assert await brokers[0].queue_depths() == {(NAMESPACE, "fn"): 4}
        state = await stores[0].load(KEY)
        assert state == ScheduleState("rate(10 seconds)", int((T0 + 50) * 1000))
        await restarted.stop()
        for broker in brokers:
            await broker.close()

    run(scenario())


def test_scheduled_events_take_the_async_path(nats_server: NatsServer) -> None:
    # The invoker judges event age on the real clock: virtual time starts now.
    start = time.time() // 10 * 10

    async def scenario() -> None:
        time_ = VirtualTime(start + 3)
        settings = {"fn": FunctionSettings(uid=UID, schedules=(TICK,), max_retries=0)}
        async with running_invoker(nats_server, settings) as harness:
            store = await harness.broker.schedule_store()
            scheduler = make_scheduler(time_, harness.broker, store, harness.directory)
            scheduler.sync()
            for _ in range(2):
                await eventually(lambda: time_.sleepers == 1, what="the scheduler waiting")
                await time_.advance(10)
            await eventually(lambda: len(harness.gateway.calls) == 2, what="two invocations")
            bodies = [json.loads(call.body) for call, _ in harness.gateway.calls]
            expected = [datetime.fromtimestamp(start + offset, UTC) for offset in (10, 20)]
            assert sorted(body["time"] for body in bodies) == [
                moment.strftime("%Y-%m-%dT%H:%M:%SZ") for moment in expected
            ]
            call = harness.gateway.calls[0][0]
            assert call.request_id == bodies[0]["id"]
            await scheduler.stop()

    run(scenario())
