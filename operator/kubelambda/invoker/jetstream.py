"""The ``Broker`` on NATS JetStream (nats-py).

Streams (file storage, created or updated by ``ensure_streams``):

- ``KUBELAMBDA_EVENTS``: subjects ``kubelambda.events.>``, work-queue retention (an acked event
  is deleted, so the stream holds exactly what is still to be done), ``discard: new`` at its
  byte limit (the gateway answers 429 instead of dropping stored events), a maximum age well
  above the longest ``maximumEventAgeSeconds`` (6 h) so an event outlives an invoker outage
  and still ends in the DLQ rather than being expired by the stream.
- ``KUBELAMBDA_DLQ``: subjects ``kubelambda.dlq.>``, limits retention, days of maximum age.

Key-value bucket ``KUBELAMBDA_SCHEDULES`` (the invoker creates it): per schedule, the last fire
time handled (``kubelambda.invoker.scheduler``).

Consumers: one durable pull consumer per function, ``<namespace>_<function>`` (neither may
contain ``_``), filtered to the function's subject, explicit ack, unlimited redeliveries; unused
ones are removed by the server after ``inactive_threshold``.

A namespace or function name goes into a subject as exactly one literal token, or not at all
(``InvalidSubjectToken``): ``*`` or ``>`` would turn a filter into a wildcard (a purge of one
function into a purge of all), a ``.`` would shift the tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from dataclasses import dataclass
from typing import Any, Self

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    PubAck,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from kubelambda.invoker.broker import (
    BrokerError,
    BrokerFull,
    Delivery,
    FunctionKey,
    ScheduleState,
)
from kubelambda.invoker.event import (
    DLQ_PREFIX,
    EVENTS_PREFIX,
    H_ENQUEUED,
    DeadLetter,
    Event,
    MalformedEvent,
    dlq_subject,
    event_subject,
    subject_key,
)

log = logging.getLogger(__name__)

EVENTS_STREAM = "KUBELAMBDA_EVENTS"
DLQ_STREAM = "KUBELAMBDA_DLQ"
SCHEDULES_BUCKET = "KUBELAMBDA_SCHEDULES"
# State of schedules not written for this long goes: those of deleted Functions, mostly. A
# schedule whose state went merely starts afresh (no catch-up fire after an invoker outage).
SCHEDULE_STATE_MAX_AGE_S = 400 * 86400.0
STREAM_NAME_IN_USE = 10058  # JetStream: a stream of that name exists with another config
MSG_DELETE_FAILED = 10057  # JetStream: the store could not delete a message; why is in the text
# ... of which these mean there is no such message: below the first sequence, past the last.
_NO_SUCH_MESSAGE = frozenset({"no message found", "stream store EOF"})
MAX_SEQUENCE = 2**64 - 1  # sequences are uint64: NATS refuses a request for one past it
# One literal subject token: no separator, no wildcard character, no whitespace, not empty.
_TOKEN = re.compile(r"[^.*>\s]+")
_CONNECT_RETRY_S = 2.0

# Errors of a request to JetStream that may pass: retried by the caller.
_TRANSIENT = (
    nats.errors.Error,  # timeouts, no responders, closed or reconnecting connection
    nats.js.errors.Error,
    asyncio.TimeoutError,
    OSError,
)


class InvalidSubjectToken(ValueError):
    """A namespace or function name that cannot be one literal subject token. A caller's
    mistake, not the broker's: no ``BrokerError`` (those are retried)."""


def _is_token(value: str) -> bool:
    return _TOKEN.fullmatch(value) is not None


def _check_tokens(*values: str) -> None:
    for value in values:
        if not _is_token(value):
            raise InvalidSubjectToken(
                f"{value!r} is not a valid subject token (no '.', '*', '>' or whitespace)"
            )


@dataclass(frozen=True)
class StreamSettings:
    replicas: int = 1
    events_max_age_s: float = 24 * 3600.0
    events_max_bytes: int = -1
    dlq_max_age_s: float = 14 * 86400.0
    dlq_max_bytes: int = -1
    duplicate_window_s: float = 120.0


@dataclass(frozen=True)
class ConsumerSettings:
    ack_wait_s: float = 30.0
    max_ack_pending: int = 10_000
    inactive_threshold_s: float = 3600.0


async def connect(url: str, name: str, connect_timeout_s: float = 5.0) -> NATS:
    """A connection that reconnects forever; waits (retrying) until the server first answers."""

    async def error_cb(exc: Exception) -> None:
        log.warning("nats: %s", exc)

    async def disconnected_cb() -> None:
        log.warning("nats: disconnected")

    async def reconnected_cb() -> None:
        log.info("nats: reconnected")

    while True:
        try:
            client: NATS = await nats.connect(
                url.split(","),
                name=name,
                connect_timeout=int(max(connect_timeout_s, 1)),
                max_reconnect_attempts=-1,
                reconnect_time_wait=1,
                error_cb=error_cb,
                disconnected_cb=disconnected_cb,
                reconnected_cb=reconnected_cb,
            )
            return client
        except (TimeoutError, nats.errors.Error, OSError) as exc:
            log.warning("nats %s: %s; retrying in %.0f s", url, exc, _CONNECT_RETRY_S)
            await asyncio.sleep(_CONNECT_RETRY_S)


class JetStreamDelivery:
    __slots__ = ("_msg", "event", "malformed")

    def __init__(self, msg: Msg) -> None:
        self._msg = msg
        self.malformed: str | None = None
        try:
            self.event = Event.from_message(msg.headers, msg.data, msg.subject)
        except MalformedEvent as exc:
            self.malformed = str(exc)
            namespace, function = subject_key(msg.subject) or ("", msg.subject)
            sequence = msg.metadata.sequence.stream
            self.event = Event(
                request_id=f"malformed-{sequence}",
                namespace=namespace,
                function=function,
                qualifier=None,
                payload=msg.data,
                enqueued_ms=int(msg.metadata.timestamp.timestamp() * 1000),
            )

    @property
    def deliveries(self) -> int:
        return self._msg.metadata.num_delivered

    async def ack(self) -> None:
        await self._msg.ack()

    async def nak(self, delay_s: float) -> None:
        # JetStream redelivers at once for a delay of 0; a tiny delay keeps "later" meaning later.
        await self._msg.nak(delay=max(delay_s, 0.001))

    async def in_progress(self) -> None:
        await self._msg.in_progress()


class JetStreamConsumer:
    def __init__(self, subscription: JetStreamContext.PullSubscription) -> None:
        self._subscription = subscription

    async def fetch(self, batch: int, wait_s: float) -> list[Delivery]:
        try:
            messages = await self._subscription.fetch(batch, timeout=wait_s)
        except TimeoutError:  # nats.errors.TimeoutError too: nothing came
            return []
        except _TRANSIENT as exc:
            raise BrokerError(f"fetch: {exc}") from exc
        return [JetStreamDelivery(msg) for msg in messages]

    async def close(self) -> None:
        # A connection that is gone already took the subscription with it.
        with contextlib.suppress(*_TRANSIENT):
            await self._subscription.unsubscribe()


class JetStreamBroker:
    """Implements ``Broker``. Owns the connection it is given (``close`` closes it)."""

    def __init__(
        self,
        client: NATS,
        streams: StreamSettings | None = None,
        consumers: ConsumerSettings | None = None,
        timeout_s: float = 5.0,
    ) -> None:
        self.client = client
        self.streams = streams or StreamSettings()
        self.consumers = consumers or ConsumerSettings()
        self._timeout_s = timeout_s
        self._js = client.jetstream(timeout=timeout_s)

    @classmethod
    async def connect(
        cls,
        url: str,
        name: str,
        streams: StreamSettings | None = None,
        consumers: ConsumerSettings | None = None,
        timeout_s: float = 5.0,
    ) -> Self:
        return cls(await connect(url, name), streams, consumers, timeout_s)

    # --- streams ---------------------------------------------------------------------------

    def stream_configs(self) -> tuple[StreamConfig, StreamConfig]:
        s = self.streams
        events = StreamConfig(
            name=EVENTS_STREAM,
            description="kubelambda async invocations waiting to run",
            subjects=[f"{EVENTS_PREFIX}.>"],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            discard=DiscardPolicy.NEW,
            max_age=s.events_max_age_s,
            max_bytes=s.events_max_bytes,
            num_replicas=s.replicas,
            duplicate_window=s.duplicate_window_s,
        )
        dlq = StreamConfig(
            name=DLQ_STREAM,
            description="kubelambda async invocations that failed (dead-letter queue)",
            subjects=[f"{DLQ_PREFIX}.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            # Refusing a new dead letter (the invoker retries it) beats dropping an old one.
            discard=DiscardPolicy.NEW,
            max_age=s.dlq_max_age_s,
            max_bytes=s.dlq_max_bytes,
            num_replicas=s.replicas,
            duplicate_window=s.duplicate_window_s,
        )
        return events, dlq

    async def ensure_streams(self, update: bool = True) -> None:
        """Create the streams; with ``update``, also bring existing ones to these settings.

        The invoker owns the settings (``update=True``); the gateway only creates missing
        streams, so a gateway that starts first can queue events at once.
        """
        for config in self.stream_configs():
            try:
                await self._js.add_stream(config)
            except nats.js.errors.BadRequestError as exc:
                if exc.err_code != STREAM_NAME_IN_USE:
                    raise BrokerError(f"stream {config.name}: {exc}") from exc
                if update:
                    try:
                        await self._js.update_stream(config)
                    except nats.js.errors.APIError as update_exc:
                        # e.g. a retention or storage change, which JetStream refuses.
                        log.warning("stream %s not updated: %s", config.name, update_exc)
            except _TRANSIENT as exc:
                raise BrokerError(f"stream {config.name}: {exc}") from exc

    # --- publishing ------------------------------------------------------------------------

    async def _publish(self, subject: str, body: bytes, headers: dict[str, str]) -> PubAck:
        try:
            return await self._js.publish(subject, body, headers=headers)
        except nats.js.errors.APIError as exc:
            description = (exc.description or "").lower()
            if "maximum" in description or "resource" in description:
                raise BrokerFull(f"queue full: {exc.description}") from exc
            raise BrokerError(f"publish: {exc}") from exc
        except _TRANSIENT as exc:
            raise BrokerError(f"publish: {exc}") from exc

    async def publish_event(self, event: Event, msg_id: str) -> bool:
        _check_tokens(event.namespace, event.function)
        headers = event.headers()
        headers["Nats-Msg-Id"] = msg_id
        ack = await self._publish(event.subject, event.payload, headers)
        return not ack.duplicate

    async def publish_dead_letter(self, letter: DeadLetter) -> None:
        _check_tokens(letter.event.namespace, letter.event.function)
        # The same dead letter twice (a redelivered event failing again) is one.
        headers = letter.headers()
        headers["Nats-Msg-Id"] = f"{letter.event.request_id}.dlq.{letter.event.enqueued_ms}"
        await self._publish(letter.subject, letter.event.payload, headers)

    async def publish_subject(self, subject: str, body: bytes) -> None:
        try:
            await self._js.publish(subject, body)
            return
        except nats.js.errors.NoStreamResponseError:
            pass  # no stream captures the subject: plain NATS, for whoever subscribes
        except nats.js.errors.APIError as exc:
            raise BrokerError(f"publish to {subject}: {exc}") from exc
        except _TRANSIENT as exc:
            raise BrokerError(f"publish to {subject}: {exc}") from exc
        try:
            await self.client.publish(subject, body)
            await self.client.flush(timeout=int(max(self._timeout_s, 1)))
        except _TRANSIENT as exc:
            raise BrokerError(f"publish to {subject}: {exc}") from exc

    async def schedule_store(self) -> JetStreamScheduleStore:
        """The schedules' state bucket, created when missing."""
        config = KeyValueConfig(
            bucket=SCHEDULES_BUCKET,
            description="kubelambda schedules: the last fire time each one handled",
            history=1,
            ttl=SCHEDULE_STATE_MAX_AGE_S,
            storage=StorageType.FILE,
            replicas=self.streams.replicas,
        )
        try:
            try:
                bucket = await self._js.key_value(SCHEDULES_BUCKET)
            except nats.js.errors.BucketNotFoundError:
                bucket = await self._js.create_key_value(config)
        except _TRANSIENT as exc:
            raise BrokerError(f"bucket {SCHEDULES_BUCKET}: {exc}") from exc
        return JetStreamScheduleStore(bucket)

    # --- consuming -------------------------------------------------------------------------

    async def consumer(self, namespace: str, function: str) -> JetStreamConsumer:
        _check_tokens(namespace, function)
        name = f"{namespace}_{function}"
        c = self.consumers
        config = ConsumerConfig(
            name=name,
            durable_name=name,
            filter_subject=event_subject(namespace, function),
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=c.ack_wait_s,
            max_deliver=-1,
            max_ack_pending=c.max_ack_pending,
            inactive_threshold=c.inactive_threshold_s,
        )
        try:
            await self._js.add_consumer(EVENTS_STREAM, config)  # creates or updates
            subscription = await self._js.pull_subscribe_bind(durable=name, stream=EVENTS_STREAM)
        except _TRANSIENT as exc:
            raise BrokerError(f"consumer {name}: {exc}") from exc
        return JetStreamConsumer(subscription)

    # --- inspection ------------------------------------------------------------------------

    async def _subject_counts(self, stream: str, prefix: str) -> dict[FunctionKey, int]:
        try:
            info = await self._js.stream_info(stream, subjects_filter=f"{prefix}.>")
        except _TRANSIENT as exc:
            raise BrokerError(f"stream {stream}: {exc}") from exc
        counts: dict[FunctionKey, int] = {}
        for subject, count in (info.state.subjects or {}).items():
            key = subject_key(subject)
            # JetStream stores what is published to "kubelambda.events.*.fn" as it is: no
            # function's, and no key a caller could pass back (the tokens are refused).
            if key is not None and _is_token(key[0]) and _is_token(key[1]):
                counts[key] = counts.get(key, 0) + count
        return counts

    async def queue_depths(self) -> dict[FunctionKey, int]:
        return await self._subject_counts(EVENTS_STREAM, EVENTS_PREFIX)

    async def dead_letter_depths(self) -> dict[FunctionKey, int]:
        return await self._subject_counts(DLQ_STREAM, DLQ_PREFIX)

    async def oldest_enqueued_ms(self, namespace: str, function: str) -> int | None:
        _check_tokens(namespace, function)
        subject = event_subject(namespace, function)
        try:
            raw = await self._js.get_msg(EVENTS_STREAM, seq=1, subject=subject, next=True)
        except nats.js.errors.NotFoundError:
            return None
        except _TRANSIENT as exc:
            raise BrokerError(f"oldest event of {subject}: {exc}") from exc
        try:
            return int((raw.headers or {})[H_ENQUEUED])
        except (KeyError, ValueError):
            return None

    # --- the dead-letter queue -------------------------------------------------------------

    @staticmethod
    def _dlq_filter(namespace: str | None, function: str | None) -> str:
        _check_tokens(*(name for name in (namespace, function) if name))
        if namespace and function:
            return dlq_subject(namespace, function)
        if namespace:
            return f"{DLQ_PREFIX}.{namespace}.*"
        if function:
            return f"{DLQ_PREFIX}.*.{function}"
        return f"{DLQ_PREFIX}.>"

    @staticmethod
    def _letter(raw: Any) -> DeadLetter | None:
        try:
            return DeadLetter.from_message(raw.headers, raw.data or b"", int(raw.seq))
        except MalformedEvent as exc:
            log.warning("dead letter %s is not an event: %s", raw.seq, exc)
            return None

    async def dead_letters(
        self, namespace: str | None, function: str | None, after: int, limit: int
    ) -> list[DeadLetter]:
        subject = self._dlq_filter(namespace, function)
        letters: list[DeadLetter] = []
        sequence = max(after, 0) + 1
        while len(letters) < limit:
            try:
                raw = await self._js.get_msg(DLQ_STREAM, seq=sequence, subject=subject, next=True)
            except nats.js.errors.NotFoundError:
                break
            except _TRANSIENT as exc:
                raise BrokerError(f"dead letters: {exc}") from exc
            letter = self._letter(raw)
            if letter is not None:
                letters.append(letter)
            sequence = (raw.seq or sequence) + 1
        return letters

    async def dead_letter(self, sequence: int) -> DeadLetter | None:
        if not 1 <= sequence <= MAX_SEQUENCE:
            return None
        try:
            raw = await self._js.get_msg(DLQ_STREAM, seq=sequence)
        except nats.js.errors.NotFoundError:
            return None
        except _TRANSIENT as exc:
            raise BrokerError(f"dead letter {sequence}: {exc}") from exc
        if subject_key(raw.subject or "") is None:
            return None
        return self._letter(raw)

    async def delete_dead_letter(self, sequence: int) -> bool:
        if not 1 <= sequence <= MAX_SEQUENCE:
            return False  # NATS answers 0 with a server error, as if the store had failed
        try:
            return bool(await self._js.delete_msg(DLQ_STREAM, sequence))
        except (nats.js.errors.NotFoundError, nats.js.errors.BadRequestError):
            return False  # a sequence within the stream's, deleted already
        except nats.js.errors.ServerError as exc:
            if exc.err_code == MSG_DELETE_FAILED and exc.description in _NO_SUCH_MESSAGE:
                return False
            raise BrokerError(f"delete dead letter {sequence}: {exc}") from exc
        except _TRANSIENT as exc:
            raise BrokerError(f"delete dead letter {sequence}: {exc}") from exc

    async def purge_dead_letters(self, namespace: str | None, function: str | None) -> int:
        request = json.dumps({"filter": self._dlq_filter(namespace, function)}).encode()
        try:
            reply = await self.client.request(
                f"$JS.API.STREAM.PURGE.{DLQ_STREAM}", request, timeout=self._timeout_s
            )
        except _TRANSIENT as exc:
            raise BrokerError(f"purge dead letters: {exc}") from exc
        answer = json.loads(reply.data)
        if "error" in answer:
            raise BrokerError(f"purge dead letters: {answer['error']}")
        return int(answer.get("purged") or 0)

    async def close(self) -> None:
        try:
            await self.client.drain()
        except _TRANSIENT:
            await self.client.close()


class JetStreamScheduleStore:
    """Implements ``ScheduleStateStore`` on a key-value bucket: one JSON value per schedule."""

    def __init__(self, bucket: KeyValue) -> None:
        self._bucket = bucket

    async def load(self, key: str) -> ScheduleState | None:
        try:
            entry = await self._bucket.get(key)
        except nats.js.errors.NotFoundError:  # never stored, or forgotten
            return None
        except _TRANSIENT as exc:
            raise BrokerError(f"schedule state {key}: {exc}") from exc
        try:
            stored = json.loads(entry.value or b"")
            return ScheduleState(str(stored["expression"]), int(stored["lastFireMs"]))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("schedule state %s is unreadable (%s): starting afresh", key, exc)
            return None

    async def save(self, key: str, state: ScheduleState) -> None:
        value = {"expression": state.expression, "lastFireMs": state.last_fire_ms}
        try:
            await self._bucket.put(key, json.dumps(value).encode())
        except _TRANSIENT as exc:
            raise BrokerError(f"schedule state {key}: {exc}") from exc

    async def forget(self, key: str) -> None:
        try:
            await self._bucket.delete(key)
        except _TRANSIENT as exc:
            raise BrokerError(f"schedule state {key}: {exc}") from exc
