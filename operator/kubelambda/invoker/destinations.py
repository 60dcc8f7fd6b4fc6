"""Sending invocation records to OnSuccess / OnFailure destinations.

- ``function``: an asynchronous (Event) invocation of ``name[:qualifier]`` in the same
  namespace, through the gateway (so it is queued durably, like any Event; 202 means done);
- ``subject``: a NATS publish (acknowledged when a JetStream stream captures the subject);
- ``url``: an HTTP POST of the JSON record; any 2xx means done.

A send is tried a few times with a short backoff; the caller decides what a final failure
means (an OnFailure record then goes to the dead-letter queue instead).
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import quote

import aiohttp

from kubelambda.api.function import Destination
from kubelambda.invoker.broker import Broker, BrokerError

log = logging.getLogger(__name__)

TRIES = 3
BACKOFF_S = (0.2, 1.0)


class DestinationError(Exception):
    pass


def destination_kind(destination: Destination) -> str:
    if destination.function is not None:
        return "function"
    if destination.subject is not None:
        return "subject"
    return "url"


class DestinationSender:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        broker: Broker,
        gateway_url: str,
        timeout_s: float = 10.0,
        *,
        backoff_s: tuple[float, ...] = BACKOFF_S,
        internal_token: str = "",
    ) -> None:
        self._session = session
        self._internal_token = internal_token
        self._broker = broker
        self._gateway_url = gateway_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._backoff_s = backoff_s

    async def send(self, namespace: str, destination: Destination, record: bytes) -> None:
        """Raises ``DestinationError`` once every try failed."""
        error = ""
        for attempt in range(TRIES):
            if attempt:
                await asyncio.sleep(self._backoff_s[min(attempt, len(self._backoff_s)) - 1])
            try:
                await self._send_once(namespace, destination, record)
                return
            except (DestinationError, BrokerError, aiohttp.ClientError, TimeoutError) as exc:
                error = str(exc) or type(exc).__name__
        raise DestinationError(error)

    async def _send_once(self, namespace: str, destination: Destination, record: bytes) -> None:
        if destination.subject is not None:
            await self._broker.publish_subject(destination.subject, record)
            return
        if destination.function is not None:
            name, _, qualifier = destination.function.partition(":")
            url = (
                f"{self._gateway_url}/namespaces/{quote(namespace, safe='')}"
                f"/2015-03-31/functions/{quote(name, safe='')}/invocations"
            )
            if qualifier:
                url += f"?Qualifier={quote(qualifier, safe='')}"
            headers = {
                "X-Amz-Invocation-Type": "Event",
                "Content-Type": "application/json",
            }
            if self._internal_token:
                headers["X-Kubelambda-Internal-Token"] = self._internal_token
            expected: tuple[int, ...] = (202,)
        else:
            url = str(destination.url)
            headers = {"Content-Type": "application/json"}
            expected = tuple(range(200, 300))
        async with self._session.post(
            url, data=record, headers=headers, timeout=self._timeout
        ) as response:
            body = await response.read()
            if response.status not in expected:
                raise DestinationError(
                    f"{url}: HTTP {response.status} {body[:200].decode(errors='replace')}"
                )
