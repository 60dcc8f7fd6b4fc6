"""The queue behind async invocation, as a small interface: ``Broker`` (JetStream implements it).

Two streams: events (one subject per function, ``kubelambda.events.<namespace>.<function>``,
consumed by one durable pull consumer per function, shared by every invoker replica, so an
event goes to one replica at a time) and the dead-letter queue
(``kubelambda.dlq.<namespace>.<function>``, read by sequence number).

Delivery is at least once: a fetched event that is neither acked nor nak'd within the ack wait
(an invoker that died, say) is delivered again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from kubelambda.invoker.event import DeadLetter, Event

FunctionKey = tuple[str, str]  # (namespace, function)


class BrokerError(Exception):
    """The broker failed or did not answer in time; worth retrying later."""


class BrokerFull(BrokerError):
    """The stream is at its limits: the event is refused (the caller gets 429)."""


class Delivery(Protocol):
    """One fetched event. Exactly one of ack / nak / term settles it (or the ack wait does)."""

    @property
    def event(self) -> Event: ...

    @property
    def malformed(self) -> str | None:
        """Why the message is not a valid event (``event`` is then a best-effort stand-in)."""

    @property
    def deliveries(self) -> int:
        """How many times the broker delivered this message (1 unless redelivered)."""

    async def ack(self) -> None:
        """Done: remove the event."""

    async def nak(self, delay_s: float) -> None:
        """Deliver it again after ``delay_s``."""

    async def in_progress(self) -> None:
        """Still working on it: restart the ack wait."""


class EventConsumer(Protocol):
    async def fetch(self, batch: int, wait_s: float) -> list[Delivery]:
        """Up to ``batch`` events; waits up to ``wait_s`` for the first, [] if none came."""

    async def close(self) -> None: ...


class Broker(Protocol):
    async def publish_event(self, event: Event, msg_id: str) -> bool:
        """Store the event (acknowledged by the broker); ``msg_id`` deduplicates repeats.

        False when the broker already had ``msg_id`` (within its duplicate window).
        """

    async def publish_dead_letter(self, letter: DeadLetter) -> None:
        """Store a failed event in the dead-letter queue (acknowledged)."""

    async def publish_subject(self, subject: str, body: bytes) -> None:
        """A destination subject: acknowledged when a stream captures it, else best effort."""

    async def consumer(self, namespace: str, function: str) -> EventConsumer:
        """The function's durable consumer (created when missing)."""

    async def queue_depths(self) -> dict[FunctionKey, int]:
        """Events waiting (or in flight, or in backoff) per function."""

    async def oldest_enqueued_ms(self, namespace: str, function: str) -> int | None:
        """Enqueue time of the function's first stored event, None when there is none."""

    async def dead_letter_depths(self) -> dict[FunctionKey, int]: ...

    async def dead_letters(
        self, namespace: str | None, function: str | None, after: int, limit: int
    ) -> list[DeadLetter]:
        """Dead letters with a sequence above ``after``, oldest first, optionally filtered."""

    async def dead_letter(self, sequence: int) -> DeadLetter | None: ...

    async def delete_dead_letter(self, sequence: int) -> bool:
        """False when there was no such dead letter."""

    async def purge_dead_letters(self, namespace: str | None, function: str | None) -> int:
        """Remove dead letters (all, a namespace's, or a function's); returns how many."""

    async def close(self) -> None: ...


@dataclass(frozen=True)
class ScheduleState:
    """What the replicas share about one schedule, so a restart neither repeats nor skips."""

    expression: str  # a changed expression starts afresh
    last_fire_ms: int  # the last fire time handled, or when the schedule was armed


class ScheduleStateStore(Protocol):
    """Durable per-schedule state (a JetStream key-value bucket), keyed by schedule key."""

    async def load(self, key: str) -> ScheduleState | None:
        """None when nothing (readable) is stored. Raises ``BrokerError``."""

    async def save(self, key: str, state: ScheduleState) -> None:
        """Raises ``BrokerError``."""

    async def forget(self, key: str) -> None:
        """Raises ``BrokerError``."""
