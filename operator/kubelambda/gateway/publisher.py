"""Where Event (asynchronous) invocations go: the ``AsyncPublisher`` interface.

The gateway validates and resolves an Event invocation, then hands it to a publisher and
answers 202 once ``publish`` returns (the event is durably queued). The durable queue (NATS
JetStream) and the invoker that drains it live elsewhere; whoever builds them implements this
protocol and passes the instance to ``kubelambda.gateway.main.serve(publisher=...)``.

Without a publisher, Event invocations are answered ``501 ServiceException`` (not retried by
AWS SDKs: retrying cannot help) with a message saying so: see ``invoke.NO_PUBLISHER``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class AsyncInvocation:
    request_id: str  # returned to the caller as x-amzn-RequestId; the function sees it too
    namespace: str
    function: str
    qualifier: str | None  # as the caller gave it; resolved again when the event runs
    payload: bytes  # valid JSON (or empty), at most invoke.MAX_EVENT_BYTES
    received_ms: int  # epoch ms, the start of the event's maximum age
    client_context: str | None = None  # X-Amz-Client-Context as sent (base64 JSON)
    trace_id: str | None = None  # X-Amzn-Trace-Id


class PublishRejected(Exception):
    """The queue refuses the event (full, or unavailable): the caller gets 429 / 503 now."""

    def __init__(self, message: str, throttled: bool = False) -> None:
        super().__init__(message)
        self.throttled = throttled


class AsyncPublisher(Protocol):
    async def publish(self, invocation: AsyncInvocation) -> None:
        """Durably queue the event, or raise ``PublishRejected``. Must be bounded in time."""

    async def close(self) -> None:
        """Flush and disconnect, at shutdown."""
