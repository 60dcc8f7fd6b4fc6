"""``QuotaCounter`` on NATS JetStream counters: one count per API key and quota period.

The stream ``KUBELAMBDA_USAGE`` allows message counters (nats-server 2.12+): a publish with
the header ``Nats-Incr: <delta>`` adds to the subject's total atomically and the server's
acknowledgement carries the new value, so every gateway replica counts against the same total
in one round trip. Only the latest message of a subject is kept (it holds the total) and a
count disappears ``MAX_AGE_S`` after its last change, which is after its period ended.

The gateway creates the stream the first time a count finds it missing. It shares the event
publisher's connection (``NatsPublisher.client``); until that connection is up, and while it is
reconnecting, counting raises ``CounterUnavailable`` at once. (The client would buffer the
increment and send it after reconnecting: a request answered 503 would count after all.) A
count that times out on a live connection may still have been made: the key loses one.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

import nats.errors
from nats.aio.client import Client as NATS

from kubelambda.gateway.usage import CounterUnavailable

log = logging.getLogger(__name__)

USAGE_STREAM = "KUBELAMBDA_USAGE"
USAGE_PREFIX = "kubelambda.usage"
MAX_AGE_S = 40 * 86400  # past the longest period (a month)
MAX_BYTES = 256 * 1024 * 1024
STREAM_EXISTS_WITH_OTHER_CONFIG = 10058


def stream_config(replicas: int) -> dict[str, object]:
    return {
        "name": USAGE_STREAM,
        "description": "kubelambda API key usage: one counter per key and quota period",
        "subjects": [f"{USAGE_PREFIX}.>"],
        "storage": "file",
        "num_replicas": replicas,
        "allow_msg_counter": True,
        "allow_direct": True,
        "max_msgs_per_subject": 1,
        "max_age": MAX_AGE_S * 1_000_000_000,
        "max_bytes": MAX_BYTES,
        "discard": "old",
    }


class NatsQuotaCounter:
    def __init__(
        self, client: Callable[[], NATS | None], replicas: int = 1, timeout_s: float = 2.0
    ) -> None:
        self._client = client
        self._replicas = replicas
        self._timeout_s = timeout_s
        self._pending: set[asyncio.Task[None]] = set()

    async def add(self, counter: str, delta: int) -> int:
        client = self._client()
        if client is None or not client.is_connected:
            raise CounterUnavailable("the NATS connection is down")
        try:
            try:
                return await self._increment(client, counter, delta)
            except nats.errors.NoRespondersError:
                await self._create_stream(client)
                return await self._increment(client, counter, delta)
        except (TimeoutError, OSError, nats.errors.Error, ValueError, KeyError) as exc:
            raise CounterUnavailable(f"{type(exc).__name__}: {exc}") from exc

    def give_back(self, counter: str) -> None:
        client = self._client()
        if client is None or not client.is_connected:
            return
        task = asyncio.get_running_loop().create_task(self._give_back(client, counter))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _give_back(self, client: NATS, counter: str) -> None:
        try:
            await self._increment(client, counter, -1)
        except Exception as exc:  # best effort: the count stays one high
            log.warning("usage count %s: giving back a refused request failed: %s", counter, exc)

    async def _increment(self, client: NATS, counter: str, delta: int) -> int:
        reply = await client.request(
            f"{USAGE_PREFIX}.{counter}",
            b"",
            timeout=self._timeout_s,
            headers={"Nats-Incr": f"{delta:+d}"},
        )
        answer = json.loads(reply.data)
        if "error" in answer:
            raise ValueError(f"JetStream refused the count: {answer['error']}")
        if "val" not in answer:  # a server before 2.12 stores the message as any other
            raise ValueError(f"{USAGE_STREAM} does not count: quotas need nats-server 2.12+")
        return int(answer["val"])

    async def close(self) -> None:
        """Waits for the give-backs still under way."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    async def _create_stream(self, client: NATS) -> None:
        log.info("creating the usage stream %s", USAGE_STREAM)
        reply = await client.request(
            f"$JS.API.STREAM.CREATE.{USAGE_STREAM}",
            json.dumps(stream_config(self._replicas)).encode(),
            timeout=self._timeout_s,
        )
        error = json.loads(reply.data).get("error")
        # Another replica may have created it first, or an operator tuned it: both are fine.
        if error and error.get("err_code") != STREAM_EXISTS_WITH_OTHER_CONFIG:
            raise ValueError(f"creating {USAGE_STREAM}: {error}")
