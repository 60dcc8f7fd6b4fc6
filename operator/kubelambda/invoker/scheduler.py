"""Scheduled triggers: every enabled schedule of every Function queues an Event when it is due.

Every invoker replica runs every schedule: at a fire time each one publishes the same event to
the events stream with the message id ``schedule/<function uid>/<schedule>/<fire ms>`` and a
request id derived from it, and JetStream stores the first and drops the others (its duplicate
window is two minutes). The event then takes the normal async path: the function's consumer,
retries, maximum event age (counted from when it was queued), destinations, dead-letter queue.

Missed fire times: each schedule's last handled fire time is kept in the ``KUBELAMBDA_SCHEDULES``
key-value bucket. When the invoker starts and finds fire times that passed since then (every
replica was down), it fires the most recent of them once, at once, and skips the older ones.
A schedule that appears, changes its expression or is enabled while the invoker runs starts at
its next fire time (its state is reset), and so does one whose stored state is missing.
Disabling or removing a schedule forgets its state. A crash between queueing a fire and storing
it can, if the restart takes longer than the duplicate window, fire that time once more:
as everywhere on the async path, a duplicate is possible, a loss is not.

If queueing fails (NATS unreachable, stream full) the fire is retried with backoff for as long
as it is the latest fire time due; once a newer one is due, that one is tried instead.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from kubelambda.api.schedule import Schedule, parse_expression
from kubelambda.invoker.broker import Broker, BrokerError, ScheduleState, ScheduleStateStore
from kubelambda.invoker.event import Event
from kubelambda.invoker.functions import FunctionDirectory
from kubelambda.invoker.metrics import DUPLICATE, QUEUED, InvokerMetrics
from kubelambda.invoker.records import ACCOUNT_ID
from kubelambda.invoker.schedule import last_fire, next_fire

log = logging.getLogger(__name__)

# Request ids of scheduled events are uuid5(REQUEST_ID_NAMESPACE, message id): every replica
# derives the same one for the same fire.
REQUEST_ID_NAMESPACE = uuid.UUID("6b1f8f56-3c2e-4f0e-9b7a-6f0b8a1d2c41")
BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 10.0
# Sleeps are cut into slices this long, so wall-clock corrections (which the event loop's
# monotonic timer does not see) cannot make a far-off fire late.
MAX_SLEEP_S = 60.0
LATE_S = 5.0  # a fire queued later than this after its time is logged as late


@dataclass(frozen=True)
class ScheduleTarget:
    """One enabled schedule of one function: everything its runner needs."""

    namespace: str
    function: str
    uid: str
    schedule: Schedule

    @property
    def key(self) -> str:
        """Its key in the state bucket (uid and schedule name never contain dots)."""
        return f"{self.uid}.{self.schedule.name}"

    def message_id(self, fire_ms: int) -> str:
        return f"schedule/{self.uid}/{self.schedule.name}/{fire_ms}"

    def rule_arn(self, region: str) -> str:
        """The EventBridge-style rule ARN: the namespace as the event bus."""
        rule = f"{self.namespace}/{self.function}.{self.schedule.name}"
        return f"arn:aws:events:{region}:{ACCOUNT_ID}:rule/{rule}"


def schedule_targets(directory: FunctionDirectory) -> dict[str, ScheduleTarget]:
    """Every enabled schedule the directory knows, by key."""
    targets: dict[str, ScheduleTarget] = {}
    functions = directory.keys()  # a FunctionDirectory, not a dict: it is not iterable itself
    for namespace, function in functions:
        settings = directory.get(namespace, function)
        if settings is None:
            continue
        uid = settings.uid or f"{namespace}.{function}"
        for schedule in settings.schedules:
            if schedule.enabled:
                target = ScheduleTarget(namespace, function, uid, schedule)
                targets[target.key] = target
    return targets


def scheduled_event(target: ScheduleTarget, fire: datetime, event_id: str, region: str) -> bytes:
    """EventBridge's "Scheduled Event", as a Lambda function receives it."""
    event = {
        "version": "0",
        "id": event_id,
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": ACCOUNT_ID,
        "time": fire.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": region,
        "resources": [target.rule_arn(region)],
        "detail": {},
    }
    return json.dumps(event).encode()


def _epoch_ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)


class Scheduler:
    def __init__(
        self,
        broker: Broker,
        store: ScheduleStateStore,
        directory: FunctionDirectory,
        *,
        region: str,
        metrics: InvokerMetrics,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._broker = broker
        self._store = store
        self._directory = directory
        self._region = region
        self._metrics = metrics
        self._clock = clock
        self._sleep = sleep
        self._runners: dict[str, tuple[ScheduleTarget, asyncio.Task[None]]] = {}
        self._forgetting: set[asyncio.Task[None]] = set()
        self._started = False

    def running(self) -> dict[str, ScheduleTarget]:
        return {key: target for key, (target, _) in self._runners.items()}

    def sync(self) -> None:
        """Start, restart and stop runners to match the directory (call on every change).

        Only the schedules of the first call (the invoker starting) may catch up a missed fire.
        """
        wanted = schedule_targets(self._directory)
        for key, (target, task) in list(self._runners.items()):
            if wanted.get(key) != target:
                task.cancel()
                del self._runners[key]
                if key not in wanted:
                    self._forget(target)
        for key, target in wanted.items():
            if key not in self._runners:
                task = asyncio.create_task(
                    self._run(target, catch_up=not self._started), name=f"schedule {key}"
                )
                self._runners[key] = (target, task)
        self._started = True

    async def stop(self) -> None:
        """Stop every runner (their state stays: a restart catches up)."""
        tasks = [task for _, task in self._runners.values()]
        self._runners.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, *self._forgetting, return_exceptions=True)

    def _forget(self, target: ScheduleTarget) -> None:
        async def forget() -> None:
            try:
                await self._store.forget(target.key)
            except BrokerError as exc:  # it then ages out of the bucket
                log.warning("forgetting schedule %s: %s", target.key, exc)

        task = asyncio.create_task(forget())
        self._forgetting.add(task)
        task.add_done_callback(self._forgetting.discard)

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    async def _run(self, target: ScheduleTarget, catch_up: bool) -> None:
        expression = parse_expression(target.schedule.expression)
        handled_ms = await self._handled_until(target, catch_up)
        backoff = BACKOFF_MIN_S
        while True:
            now = self._now()
            due = last_fire(expression, now)
            if due is not None and _epoch_ms(due) > handled_ms:
                try:
                    await self._fire(target, due, now)
                except Exception as exc:  # never a schedule that silently stops firing
                    self._metrics.schedule_failures.labels(
                        target.namespace, target.function, target.schedule.name
                    ).inc()
                    log.warning(
                        "schedule %s, fire %s: %s",
                        target.key,
                        due.isoformat(),
                        exc,
                        exc_info=not isinstance(exc, BrokerError),
                    )
                    await self._sleep(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX_S)
                    continue
                backoff = BACKOFF_MIN_S
                handled_ms = _epoch_ms(due)
                await self._save(target, handled_ms)
                continue
            upcoming = next_fire(expression, now)
            if upcoming is None:
                log.info("schedule %s never fires again", target.key)
                return
            await self._sleep(min((upcoming - now).total_seconds(), MAX_SLEEP_S))

    async def _handled_until(self, target: ScheduleTarget, catch_up: bool) -> int:
        """Epoch ms up to which fire times count as handled: the stored last fire time when
        catching up on the same expression, else now (and that is stored)."""
        backoff = BACKOFF_MIN_S
        while True:
            try:
                if catch_up:
                    state = await self._store.load(target.key)
                    if state is not None and state.expression == target.schedule.expression:
                        return state.last_fire_ms
                now_ms = _epoch_ms(self._now())
                await self._store.save(
                    target.key, ScheduleState(target.schedule.expression, now_ms)
                )
                return now_ms
            except Exception as exc:
                log.warning(
                    "schedule %s state: %s; retrying",
                    target.key,
                    exc,
                    exc_info=not isinstance(exc, BrokerError),
                )
                await self._sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def _save(self, target: ScheduleTarget, fire_ms: int) -> None:
        try:
            await self._store.save(target.key, ScheduleState(target.schedule.expression, fire_ms))
        except BrokerError as exc:  # the next fire stores its own time; until then a restart
            # may fire this time again (JetStream drops it within its duplicate window)
            log.warning("schedule %s state: %s", target.key, exc)

    async def _fire(self, target: ScheduleTarget, due: datetime, now: datetime) -> None:
        fire_ms = _epoch_ms(due)
        message_id = target.message_id(fire_ms)
        request_id = str(uuid.uuid5(REQUEST_ID_NAMESPACE, message_id))
        schedule = target.schedule
        if schedule.input is not None:
            payload = schedule.input.encode()
        else:
            payload = scheduled_event(target, due, request_id, self._region)
        event = Event(
            request_id=request_id,
            namespace=target.namespace,
            function=target.function,
            qualifier=schedule.qualifier,
            payload=payload,
            enqueued_ms=_epoch_ms(now),
        )
        stored = await self._broker.publish_event(event, message_id)
        self._metrics.schedule_fires.labels(
            target.namespace, target.function, schedule.name, QUEUED if stored else DUPLICATE
        ).inc()
        late_s = (now - due).total_seconds()
        if late_s > LATE_S:
            log.info("schedule %s: fired %s late by %.0f s", target.key, due.isoformat(), late_s)
