"""Draining the events stream: one worker per function, the retry policy, and settling.

Every fetched event is settled exactly one way, and acked only once that way is durable:

- success: the OnSuccess record is sent (if configured; a destination that fails is counted
  and logged, the invocation is not repeated for it), then ack;
- function error (``X-Amz-Function-Error``): while ``attempts <= maximumRetryAttempts``, a copy
  with ``attempts + 1`` and a not-before time (``retry_base * 2^(attempts-1)``: 1 min then 2 min
  by default) is published, then the original acked; else failure ``RetriesExhausted``;
- throttled (429) or a platform error (5xx, no answer): a copy with exponential backoff
  (``throttle_min`` doubling up to ``throttle_max``, with jitter), until the event's age runs
  out: failure ``EventAgeExceeded``;
- other 4xx from the gateway (the function is gone, the payload refused): failure
  ``RetriesExhausted`` at once; a 4xx without the gateway's ``x-amzn-ErrorType`` came from
  something in between (a proxy while no gateway is ready) and is retried like a 5xx;
- reserved concurrency 0: failure ``RetriesExhausted`` at once (ErrorCode 429), without a try;
- failure: the record goes to OnFailure if configured and it takes it, else (or if it does
  not) the event goes to the dead-letter queue; then ack.

An event fetched before its not-before time is nak'd with the remaining delay. Anything that
goes wrong while settling (NATS unreachable, say) naks the event for a later try; an invoker
that dies leaves its events unacked, and JetStream delivers them again after the ack wait.
Duplicates are possible, losses are not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from urllib.parse import quote, urlsplit

import aiohttp

from kubelambda.gateway.upstream import NotDelivered, UpstreamError, UpstreamPool
from kubelambda.invoker.broker import Broker, BrokerError, Delivery, EventConsumer, FunctionKey
from kubelambda.invoker.config import InvokerConfig
from kubelambda.invoker.destinations import DestinationError, DestinationSender
from kubelambda.invoker.event import (
    EVENT_AGE_EXCEEDED,
    RETRIES_EXHAUSTED,
    SUCCESS,
    DeadLetter,
    Event,
    truncate_utf8,
)
from kubelambda.invoker.functions import UNKNOWN_FUNCTION, FunctionDirectory, FunctionSettings
from kubelambda.invoker.metrics import (
    FUNCTION_ERROR,
    REJECTED,
    SERVICE_ERROR,
    THROTTLED,
    InvokerMetrics,
)
from kubelambda.invoker.metrics import SUCCESS as OK
from kubelambda.invoker.records import Response, invocation_record

log = logging.getLogger(__name__)

RESERVED_ZERO_MESSAGE = (
    "TooManyRequestsException: the function's reserved concurrency is 0"
    " (ReservedFunctionConcurrentInvocationLimitExceeded)"
)
_BROKER_BACKOFF_S = (0.5, 10.0)


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: str  # one of the metrics outcomes
    response: Response
    error_code: str = ""
    error_message: str = ""


def _error_message(body: bytes) -> str:
    """The error text of a function error or service error body."""
    try:
        parsed = json.loads(body.decode())
    except ValueError:
        return truncate_utf8(body.decode(errors="replace"))
    if isinstance(parsed, dict):
        kind = parsed.get("errorType")  # a function error; service errors say it in a header
        message = parsed.get("errorMessage") or parsed.get("message")
        if message is not None:
            return truncate_utf8(f"{kind}: {message}" if kind else str(message))
    return truncate_utf8(body.decode(errors="replace"))


def _cancelling() -> bool:
    """Whether the current task is being cancelled (rather than an awaited future it shares)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class Invoker:
    def __init__(
        self,
        config: InvokerConfig,
        broker: Broker,
        directory: FunctionDirectory,
        session: aiohttp.ClientSession,
        *,
        metrics: InvokerMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.broker = broker
        self.directory = directory
        self.metrics = metrics or InvokerMetrics()
        self.workers: dict[FunctionKey, FunctionWorker] = {}
        self._directory_changed = asyncio.Event()
        self._gateway = GatewayClient(config.gateway_url, config.internal_token)
        self._clock = clock
        self._destinations = DestinationSender(
            session,
            broker,
            config.gateway_url,
            config.destination_timeout_s,
            internal_token=config.internal_token,
        )

    def now_ms(self) -> int:
        return int(self._clock() * 1000)

    def settings(self, key: FunctionKey) -> FunctionSettings:
        return self.directory.get(*key) or UNKNOWN_FUNCTION

    # --- workers ---------------------------------------------------------------------------

    async def reconcile(self) -> None:
        """A worker for every known function and every function with stored events."""
        try:
            depths = await self.broker.queue_depths()
        except BrokerError as exc:
            log.warning("queue depths: %s", exc)
            depths = {}
        wanted = set(self.directory.keys()) | {key for key, depth in depths.items() if depth}
        for key in wanted - self.workers.keys():
            self.workers[key] = FunctionWorker(self, key)
        for key in list(self.workers.keys() - wanted):
            worker = self.workers[key]
            if worker.in_flight == 0:
                del self.workers[key]
                await worker.stop(0)

    def wake(self) -> None:
        """The directory changed: reconcile the workers now rather than at the next period."""
        self._directory_changed.set()

    async def run(self, stop: asyncio.Event) -> None:
        # The period also catches functions that only have stored events (no Function object).
        while not stop.is_set():
            self._directory_changed.clear()
            try:
                await self.reconcile()
            except Exception:  # a bug must not stop every new function from getting a worker
                log.exception("reconciling the workers failed; trying again")
            waits = {
                asyncio.ensure_future(stop.wait()),
                asyncio.ensure_future(self._directory_changed.wait()),
            }
            _, pending = await asyncio.wait(
                waits, timeout=self.config.functions_refresh_s, return_when=asyncio.FIRST_COMPLETED
            )
            for waiting in pending:
                waiting.cancel()

    async def sample(self) -> None:
        """Queue depth, oldest age and DLQ size per function, into the gauges."""
        depths = await self.broker.queue_depths()
        dlq = await self.broker.dead_letter_depths()
        now = self.now_ms()
        oldest: dict[FunctionKey, float] = {}
        for key, depth in depths.items():
            if depth:
                enqueued = await self.broker.oldest_enqueued_ms(*key)
                if enqueued is not None:
                    oldest[key] = max(now - enqueued, 0) / 1000
        self.metrics.set_sampled(depths, oldest, dlq)

    async def run_sampler(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.sample()
            except BrokerError as exc:
                log.warning("sampling the queue: %s", exc)
            except Exception:  # the gauges go stale, the sampling goes on
                log.exception("sampling the queue failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.config.sample_interval_s)

    async def stop(self) -> None:
        """Stop fetching; give in-flight events the shutdown grace, then leave them unacked."""
        workers = list(self.workers.values())
        self.workers.clear()
        await asyncio.gather(*(w.stop(self.config.shutdown_grace_s) for w in workers))
        self._gateway.pool.close()

    # --- one event -------------------------------------------------------------------------

    async def handle(self, delivery: Delivery) -> None:
        event = delivery.event
        try:
            await self._handle(delivery, event)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # settling failed: try again later, never drop
            if isinstance(exc, BrokerError):
                log.warning("%s: %s; trying again later", event.request_id, exc)
            else:
                log.exception("%s: unexpected error; trying again later", event.request_id)
            try:
                await delivery.nak(max(self.config.throttle_min_s, 1.0))
            except Exception as nak_exc:  # redelivered after the ack wait anyway
                log.warning("%s: nak failed: %s", event.request_id, nak_exc)

    async def _handle(self, delivery: Delivery, event: Event) -> None:
        key = (event.namespace, event.function)
        settings = self.settings(key)
        now = self.now_ms()
        if delivery.malformed is not None:
            log.warning("%s: %s; to the dead-letter queue", event.request_id, delivery.malformed)
            malformed = Outcome(REJECTED, Response(), "400", delivery.malformed)
            await self._fail(delivery, event, settings, RETRIES_EXHAUSTED, malformed, dlq_only=True)
            return
        if event.not_before_ms > now:
            await delivery.nak((event.not_before_ms - now) / 1000)
            return
        if now >= event.enqueued_ms + settings.max_age_s * 1000:
            status = event.last_status or 0
            message = event.last_error or f"Event age exceeded {settings.max_age_s} s"
            expired = Outcome(REJECTED, Response(status), str(status), message)
            await self._fail(delivery, event, settings, EVENT_AGE_EXCEEDED, expired)
            return
        if settings.reserved == 0:
            throttled = Outcome(THROTTLED, Response(429), "429", RESERVED_ZERO_MESSAGE)
            await self._fail(delivery, event, settings, RETRIES_EXHAUSTED, throttled)
            return
        if event.attempts == 0 and event.throttles == 0 and delivery.deliveries == 1:
            self.metrics.queue_latency.observe(max(now - event.enqueued_ms, 0) / 1000)
        outcome = await self._try(delivery, event, settings)
        self.metrics.deliveries.labels(*key, outcome.kind).inc()
        status = outcome.response.status
        if outcome.kind == OK:
            event = replace(event, attempts=event.attempts + 1)
            await self._succeed(delivery, event, settings, outcome.response)
        elif outcome.kind == FUNCTION_ERROR:
            event = replace(
                event,
                attempts=event.attempts + 1,
                last_status=status,
                last_error=outcome.error_message,
            )
            if event.attempts > settings.max_retries:
                await self._fail(delivery, event, settings, RETRIES_EXHAUSTED, outcome)
            else:
                delay_s = self.config.retry_base_s * 2 ** (event.attempts - 1)
                await self._retry(delivery, event, settings, delay_s, FUNCTION_ERROR)
        elif outcome.kind in (THROTTLED, SERVICE_ERROR):
            event = replace(
                event,
                throttles=event.throttles + 1,
                last_status=status,
                last_error=outcome.error_message,
            )
            backoff = self.config.throttle_min_s * 2 ** min(event.throttles - 1, 30)
            delay_s = min(backoff * random.uniform(0.75, 1.25), self.config.throttle_max_s)
            await self._retry(delivery, event, settings, delay_s, THROTTLED)
        else:  # refused for good (4xx): retrying cannot help
            await self._fail(delivery, event, settings, RETRIES_EXHAUSTED, outcome)

    async def _try(self, delivery: Delivery, event: Event, settings: FunctionSettings) -> Outcome:
        path = (
            f"/namespaces/{quote(event.namespace, safe='')}"
            f"/2015-03-31/functions/{quote(event.function, safe='')}/invocations"
        )
        if event.qualifier:
            path += f"?Qualifier={quote(event.qualifier, safe='')}"
        head = self._gateway.head(path, event)
        timeout = settings.timeout_s + self.config.invoke_grace_s
        heartbeat = _Heartbeat(delivery, self.config.consumers.ack_wait_s / 3)
        try:
            reply = await self._gateway.pool.request(
                self._gateway.address, head, event.payload, timeout
            )
        except (NotDelivered, UpstreamError) as exc:
            message = f"ServiceException: the gateway did not answer ({exc})"
            return Outcome(SERVICE_ERROR, Response(502), "502", message)
        finally:
            heartbeat.stop()
        status, body = reply.status, reply.body
        headers = dict(reply.headers)
        function_error = _text(headers.get(b"x-amz-function-error"))
        executed = _text(headers.get(b"x-amz-executed-version"))
        error_type = _text(headers.get(b"x-amzn-errortype"))
        response = Response(status, executed, function_error, body)
        if status == 200 and not function_error:
            return Outcome(OK, response)
        message = _error_message(body)
        if error_type and not message.startswith(error_type):
            message = truncate_utf8(f"{error_type}: {message}")
        if function_error:
            kind = FUNCTION_ERROR
        elif status == 429:
            kind = THROTTLED
        elif status >= 500:
            kind = SERVICE_ERROR
            if not error_type:  # not the gateway's: see below
                self._gateway.pool.drop_idle(self._gateway.address)
        elif error_type:
            kind = REJECTED
        else:
            # Not the gateway's refusal (it always names the error type): a proxy or load
            # balancer in between answered, e.g. while no gateway pod was ready. Try again, on
            # fresh connections: the kept-alive ones may all lead to that proxy.
            self._gateway.pool.drop_idle(self._gateway.address)
            message = f"ServiceException: HTTP {status} from something other than the gateway"
            return Outcome(SERVICE_ERROR, Response(502), "502", message)
        return Outcome(kind, response, str(status), message)

    def _record(self, event: Event, condition: str, response: Response) -> bytes:
        return invocation_record(
            event=event,
            region=self.config.region,
            condition=condition,
            response=response,
            now_ms=self.now_ms(),
        )

    async def _succeed(
        self, delivery: Delivery, event: Event, settings: FunctionSettings, response: Response
    ) -> None:
        key = (event.namespace, event.function)
        target = "none"
        if settings.on_success is not None:
            record = self._record(event, SUCCESS, response)
            try:
                await self._destinations.send(event.namespace, settings.on_success, record)
                target = "destination"
            except DestinationError as exc:
                self.metrics.destination_failures.labels(*key, "onSuccess").inc()
                log.warning("%s: OnSuccess destination failed: %s", event.request_id, exc)
        await delivery.ack()
        self.metrics.completed.labels(*key, SUCCESS, target).inc()

    async def _retry(
        self,
        delivery: Delivery,
        event: Event,
        settings: FunctionSettings,
        delay_s: float,
        reason: str,
    ) -> None:
        deadline = event.enqueued_ms + settings.max_age_s * 1000
        # A retry due after the event's maximum age is tried at that age: it then expires.
        not_before = min(self.now_ms() + int(delay_s * 1000), deadline)
        event = replace(event, not_before_ms=not_before)
        msg_id = f"{event.request_id}.{event.enqueued_ms}.{event.attempts}.{event.throttles}"
        await self.broker.publish_event(event, msg_id)
        await delivery.ack()
        self.metrics.retries.labels(event.namespace, event.function, reason).inc()

    async def _fail(
        self,
        delivery: Delivery,
        event: Event,
        settings: FunctionSettings,
        condition: str,
        outcome: Outcome,
        *,
        dlq_only: bool = False,
    ) -> None:
        key = (event.namespace, event.function)
        if settings.on_failure is not None and not dlq_only:
            record = self._record(event, condition, outcome.response)
            try:
                await self._destinations.send(event.namespace, settings.on_failure, record)
            except DestinationError as exc:
                self.metrics.destination_failures.labels(*key, "onFailure").inc()
                log.warning(
                    "%s: OnFailure destination failed (%s); to the dead-letter queue instead",
                    event.request_id,
                    exc,
                )
            else:
                await delivery.ack()
                self.metrics.completed.labels(*key, condition, "destination").inc()
                return
        letter = DeadLetter(
            event=event,
            condition=condition,
            error_code=outcome.error_code,
            error_message=truncate_utf8(outcome.error_message),
            failed_ms=self.now_ms(),
        )
        await self.broker.publish_dead_letter(letter)
        await delivery.ack()
        self.metrics.completed.labels(*key, condition, "dlq").inc()


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


class GatewayClient:
    """The gateway's Invoke API over kept-alive connections, with the gateway's own lean HTTP
    client (``UpstreamPool``): every delivery crosses it, and a general-purpose client costs
    several times its CPU per request."""

    def __init__(self, url: str, internal_token: str = "") -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"the gateway URL must be http://host[:port], not {url!r}")
        port = parts.port or 80
        self.address = (parts.hostname, port)
        self._fixed_headers = f"Host: {parts.hostname}:{port}\r\n".encode()
        if internal_token:
            self._fixed_headers += f"X-Kubelambda-Internal-Token: {internal_token}\r\n".encode()
        self.pool = UpstreamPool()

    def head(self, path: str, event: Event) -> bytes:
        lines = [
            f"POST {path} HTTP/1.1\r\n".encode(),
            self._fixed_headers,
            b"Content-Type: application/json\r\n",
            b"Content-Length: %d\r\n" % len(event.payload),
        ]
        for name, value in (
            ("X-Kubelambda-Request-Id", event.request_id),
            ("X-Amz-Client-Context", event.client_context),
            ("X-Amzn-Trace-Id", event.trace_id),
        ):
            # Values come from the stored event: a line break would forge headers; drop it.
            if value and value.isprintable() and value.isascii():
                lines.append(f"{name}: {value}\r\n".encode())
        lines.append(b"\r\n")
        return b"".join(lines)


class _Heartbeat:
    """Keeps a long invocation's event from being redelivered to another replica.

    A timer, not a task per event: most invocations end long before the first beat.
    """

    def __init__(self, delivery: Delivery, interval_s: float) -> None:
        self._delivery = delivery
        self._interval_s = interval_s
        self._loop = asyncio.get_running_loop()
        self._beating: asyncio.Task[None] | None = None
        self._timer = self._loop.call_later(interval_s, self._beat)

    def _beat(self) -> None:
        self._beating = self._loop.create_task(self._progress())
        self._timer = self._loop.call_later(self._interval_s, self._beat)

    async def _progress(self) -> None:
        try:
            await self._delivery.in_progress()
        except Exception as exc:  # the ack wait may then expire: a duplicate, not a loss
            log.debug("in-progress ack failed: %s", exc)

    def stop(self) -> None:
        self._timer.cancel()


class FunctionWorker:
    """Fetches one function's events, never more at once than its concurrency allows."""

    def __init__(self, invoker: Invoker, key: FunctionKey) -> None:
        self._invoker = invoker
        self.key = key
        self.in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._slot_freed = asyncio.Event()
        self._consumer: EventConsumer | None = None
        self._gauge = invoker.metrics.in_flight.labels(*key)
        self._loop_task = asyncio.create_task(self._run(), name=f"worker {key[0]}/{key[1]}")

    def limit(self) -> int:
        cap = self._invoker.config.function_concurrency
        reserved = self._invoker.settings(self.key).reserved
        # Reserved 0 still fetches: those events fail at once, without a try.
        return min(cap, reserved) if reserved else cap

    async def _run(self) -> None:
        config = self._invoker.config
        backoff = _BROKER_BACKOFF_S[0]
        while True:
            try:
                if self._consumer is None:
                    self._consumer = await self._invoker.broker.consumer(*self.key)
                limit = self.limit()
                free = limit - self.in_flight
                # Busy: fetch in batches (a quarter of the limit) rather than one event per
                # finished one; each fetch is a round trip to JetStream.
                if free <= 0 or (self.in_flight and free < limit // 4):
                    self._slot_freed.clear()
                    await self._slot_freed.wait()
                    continue
                deliveries = await self._consumer.fetch(free, config.fetch_wait_s)
                backoff = _BROKER_BACKOFF_S[0]
            except (Exception, asyncio.CancelledError) as exc:
                if isinstance(exc, asyncio.CancelledError) and _cancelling():
                    raise  # this worker is being stopped
                # Whatever else goes wrong (a bug, a NATS client future cancelled under the
                # fetch), this function's events must not stop flowing: after a pause, start
                # over, with a fresh consumer unless the broker merely failed.
                if isinstance(exc, BrokerError):
                    log.warning("%s/%s: %s; retrying in %.1f s", *self.key, exc, backoff)
                else:
                    log.warning(
                        "%s/%s: fetching failed (%r); retrying in %.1f s",
                        *self.key,
                        exc,
                        backoff,
                        exc_info=True,
                    )
                    await self._drop_consumer()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BROKER_BACKOFF_S[1])
                continue
            for delivery in deliveries:
                self._start(delivery)

    def _start(self, delivery: Delivery) -> None:
        self.in_flight += 1
        self._gauge.inc()
        task = asyncio.create_task(self._invoker.handle(delivery))
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self.in_flight -= 1
        self._gauge.dec()
        self._slot_freed.set()

    async def stop(self, grace_s: float) -> None:
        self._loop_task.cancel()
        await asyncio.gather(self._loop_task, return_exceptions=True)
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self._drop_consumer()

    async def _drop_consumer(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            with contextlib.suppress(Exception):  # the subscription may be gone already
                await consumer.close()
