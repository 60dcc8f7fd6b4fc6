"""``AsyncPublisher`` on NATS JetStream: Event invocations into the invoker's events stream.

``publish`` returns once JetStream acknowledged the stored event (file storage), so the 202
the caller then gets means the event is durable. The request id is the message id: a repeat
of the same publish within the stream's duplicate window is stored once. The message format
is ``kubelambda.invoker.event`` (payload as the body, the rest in headers).

The connection is made in the background (and kept, reconnecting, forever), so a gateway
whose NATS is down still serves synchronous invocations; Event invocations meanwhile get
503 ``ServiceException``. A full events stream (its byte limit) gives 429.

Wiring (in ``kubelambda.gateway.main.run``)::

    publisher = NatsPublisher.from_env(os.environ)   # None without KUBELAMBDA_NATS_URL
    if publisher is not None:
        publisher.start()
    gateway = Gateway(config, publisher=publisher)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from nats.aio.client import Client as NATS

from kubelambda.gateway.publisher import AsyncInvocation, PublishRejected
from kubelambda.invoker.broker import BrokerError, BrokerFull
from kubelambda.invoker.config import ConfigError, load_stream_settings
from kubelambda.invoker.event import Event
from kubelambda.invoker.jetstream import JetStreamBroker, StreamSettings, connect

log = logging.getLogger(__name__)

# Room for the event headers next to the payload in one NATS message.
HEADER_ROOM = 4096
UNAVAILABLE = "The event queue is unavailable; try again later."


class NatsPublisher:
    def __init__(
        self,
        url: str,
        streams: StreamSettings | None = None,
        timeout_s: float = 5.0,
        max_event_bytes: int = 262_144,
    ) -> None:
        self.url = url
        self._streams = streams or StreamSettings()
        self._timeout_s = timeout_s
        self._max_event_bytes = max_event_bytes
        self._broker: JetStreamBroker | None = None
        self._connecting: asyncio.Task[None] | None = None

    @classmethod
    def from_env(
        cls, env: Mapping[str, str], max_event_bytes: int = 262_144
    ) -> NatsPublisher | None:
        """From ``KUBELAMBDA_NATS_URL`` (comma-separated for a cluster) and the stream settings
        the invoker also reads; None when no URL is set. Raises ``ConfigError``."""
        url = env.get("KUBELAMBDA_NATS_URL")
        if not url:
            return None
        raw_timeout = env.get("KUBELAMBDA_NATS_PUBLISH_TIMEOUT_SECONDS") or "5"
        try:
            timeout_s = float(raw_timeout)
        except ValueError:
            raise ConfigError(
                f"KUBELAMBDA_NATS_PUBLISH_TIMEOUT_SECONDS must be a number, got {raw_timeout!r}"
            ) from None
        return cls(url, load_stream_settings(env), timeout_s, max_event_bytes)

    def start(self) -> None:
        """Connect in the background (call from the running event loop)."""
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(self._connect())

    async def wait_connected(self) -> None:
        self.start()
        assert self._connecting is not None
        await self._connecting

    async def _connect(self) -> None:
        client = await connect(self.url, "kubelambda-gateway", self._timeout_s)
        broker = JetStreamBroker(client, self._streams, timeout_s=self._timeout_s)
        if client.max_payload < self._max_event_bytes + HEADER_ROOM:
            log.warning(
                "NATS max_payload is %d bytes: events above %d bytes will be refused (503)",
                client.max_payload,
                client.max_payload - HEADER_ROOM,
            )
        while True:
            try:
                # Create the streams if missing (the invoker owns their settings).
                await broker.ensure_streams(update=False)
                break
            except BrokerError as exc:
                log.warning("creating the event streams: %s; retrying", exc)
                await asyncio.sleep(2.0)
        self._broker = broker
        log.info("event queue connected: %s", self.url)

    @property
    def client(self) -> NATS | None:
        """The connection, once up and the streams exist (usage counts share it)."""
        return None if self._broker is None else self._broker.client

    @property
    def replicas(self) -> int:
        return self._streams.replicas

    async def publish(self, invocation: AsyncInvocation) -> None:
        broker = self._broker
        if broker is None:
            raise PublishRejected(UNAVAILABLE)
        event = Event(
            request_id=invocation.request_id,
            namespace=invocation.namespace,
            function=invocation.function,
            qualifier=invocation.qualifier,
            payload=invocation.payload,
            enqueued_ms=invocation.received_ms,
            client_context=invocation.client_context,
            trace_id=invocation.trace_id,
        )
        try:
            await broker.publish_event(event, msg_id=invocation.request_id)
        except BrokerFull as exc:
            raise PublishRejected(
                "The event queue is full; try again later.", throttled=True
            ) from exc
        except BrokerError as exc:
            log.warning("publishing event %s: %s", invocation.request_id, exc)
            raise PublishRejected(UNAVAILABLE) from exc

    async def close(self) -> None:
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        if self._broker is not None:
            await self._broker.close()
            self._broker = None
