"""The invoker's admin HTTP API: health, and the dead-letter queue (see the package docstring).

Every error is ``{"message": ...}`` JSON, those aiohttp makes up too (see ``JsonApiServer``).
The ``namespace`` and ``function`` filters must be names a Function can have: they become
subject filters, where ``*`` or ``>`` would select every function (and purge them all).
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from kubelambda.api.base import DNS_LABEL_PATTERN, MAX_OBJECT_NAME
from kubelambda.invoker.broker import Broker, BrokerError
from kubelambda.invoker.event import DeadLetter
from kubelambda.invoker.records import timestamp
from kubelambda.jsonweb import JsonApiServer

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_SEQUENCE = 2**64 - 1  # JetStream's sequences are uint64: past it, no dead letter is there
MAX_NAMESPACE = 63  # a Kubernetes namespace name is a DNS-1123 label
_DNS_LABEL = re.compile(DNS_LABEL_PATTERN)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"message": message}, status=status)


def _bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(
        text=json.dumps({"message": message}), content_type="application/json"
    )


def summary(letter: DeadLetter) -> dict[str, Any]:
    event = letter.event
    return {
        "sequence": letter.sequence,
        "namespace": event.namespace,
        "function": event.function,
        "qualifier": event.qualifier,
        "requestId": event.request_id,
        "condition": letter.condition,
        "errorCode": letter.error_code,
        "errorMessage": letter.error_message,
        "attempts": event.attempts,
        "enqueuedTime": timestamp(event.enqueued_ms),
        "failedTime": timestamp(letter.failed_ms) if letter.failed_ms else None,
        "payloadBytes": len(event.payload),
    }


def detail(letter: DeadLetter) -> dict[str, Any]:
    result = summary(letter)
    payload = letter.event.payload
    try:
        result["payload"] = json.loads(payload.decode()) if payload else None
    except ValueError:
        result["payloadBase64"] = base64.b64encode(payload).decode()
    return result


class AdminApi:
    def __init__(
        self,
        broker: Broker,
        token: str | None,
        now_ms: Callable[[], int],
        ready: Callable[[], bool] = lambda: True,
    ) -> None:
        self._broker = broker
        self._token = token
        self._now_ms = now_ms
        self._ready = ready
        self.app = web.Application(middlewares=[self._middleware])
        self.app.add_routes(
            [
                web.get("/healthz", self.healthz),
                web.get("/readyz", self.readyz),
                web.get("/dlq", self.list),
                web.get("/dlq/summary", self.summary),
                web.post("/dlq/redrive", self.redrive_many),
                web.post("/dlq/purge", self.purge),
                web.get("/dlq/{sequence:\\d+}", self.show),
                web.delete("/dlq/{sequence:\\d+}", self.delete),
                web.post("/dlq/{sequence:\\d+}/redrive", self.redrive_one),
            ]
        )
        self._server: JsonApiServer | None = None
        self.port = 0

    async def start(self, port: int, host: str = "0.0.0.0") -> int:
        self._server = JsonApiServer(self.app)
        self.port = await self._server.start(host, port)
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop()
            self._server = None

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/dlq"):
            if self._token is None:
                return _error(503, "the DLQ admin API is off: no admin token is configured")
            given = request.headers.get("Authorization", "")
            expected = f"Bearer {self._token}"
            # aiohttp keeps bytes that are not UTF-8 as surrogates: compare the bytes sent.
            if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode()):
                return _error(401, "a valid 'Authorization: Bearer <token>' is required")
        try:
            return await handler(request)
        except BrokerError as exc:
            log.warning("admin %s %s: %s", request.method, request.path, exc)
            return _error(503, f"the queue did not answer: {exc}")

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        if self._ready():
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "starting"}, status=503)

    @classmethod
    def _filters(cls, request: web.Request) -> tuple[str | None, str | None]:
        """The ``namespace`` and ``function`` filters; None for one not given (or empty)."""
        return (
            cls._name_query(request, "namespace", "a namespace", MAX_NAMESPACE),
            cls._name_query(request, "function", "a Function", MAX_OBJECT_NAME),
        )

    @staticmethod
    def _name_query(request: web.Request, name: str, what: str, longest: int) -> str | None:
        value = request.query.get(name)
        if not value:
            return None
        if len(value) > longest or _DNS_LABEL.fullmatch(value) is None:
            raise _bad_request(
                f"{name} must be the name of {what}: lowercase letters, digits and '-',"
                f" starting and ending with a letter or digit, at most {longest} characters"
            )
        return value

    @staticmethod
    def _int_query(request: web.Request, name: str, default: int, maximum: int) -> int:
        raw = request.query.get(name)
        if not raw:
            return default
        if not (raw.isascii() and raw.isdigit()):  # "²" and "٣" are digits to isdigit()
            raise _bad_request(f"{name} must be a non-negative integer")
        return min(int(raw), maximum)

    async def list(self, request: web.Request) -> web.Response:
        namespace, function = self._filters(request)
        after = self._int_query(request, "after", 0, MAX_SEQUENCE - 1)
        limit = self._int_query(request, "limit", DEFAULT_LIMIT, MAX_LIMIT)
        letters = await self._broker.dead_letters(namespace, function, after, limit)
        last = letters[-1].sequence if len(letters) == limit and letters else None
        return web.json_response({"deadLetters": [summary(x) for x in letters], "next": last})

    async def summary(self, request: web.Request) -> web.Response:
        depths = await self._broker.dead_letter_depths()
        functions = [
            {"namespace": namespace, "function": function, "count": count}
            for (namespace, function), count in sorted(depths.items())
        ]
        return web.json_response({"functions": functions, "total": sum(depths.values())})

    @staticmethod
    def _sequence(request: web.Request) -> int | None:
        """The path's sequence; None when no dead letter can have it (NATS would refuse it)."""
        sequence = int(request.match_info["sequence"])
        return sequence if 1 <= sequence <= MAX_SEQUENCE else None

    async def _letter(self, request: web.Request) -> DeadLetter | None:
        sequence = self._sequence(request)
        return None if sequence is None else await self._broker.dead_letter(sequence)

    async def show(self, request: web.Request) -> web.Response:
        letter = await self._letter(request)
        if letter is None:
            return _error(404, "no such dead letter")
        return web.json_response(detail(letter))

    async def delete(self, request: web.Request) -> web.Response:
        sequence = self._sequence(request)
        if sequence is None or not await self._broker.delete_dead_letter(sequence):
            return _error(404, "no such dead letter")
        return web.Response(status=204)

    async def _redrive(self, letter: DeadLetter) -> None:
        """Back into the events stream as a new event (fresh age, no attempts), then removed."""
        event = letter.event.reset(self._now_ms())
        await self._broker.publish_event(event, f"{event.request_id}.redrive.{letter.sequence}")
        await self._broker.delete_dead_letter(letter.sequence)

    async def redrive_one(self, request: web.Request) -> web.Response:
        letter = await self._letter(request)
        if letter is None:
            return _error(404, "no such dead letter")
        await self._redrive(letter)
        return web.json_response({"redriven": [letter.sequence]})

    async def redrive_many(self, request: web.Request) -> web.Response:
        namespace, function = self._filters(request)
        limit = self._int_query(request, "limit", MAX_LIMIT, MAX_LIMIT)
        letters = await self._broker.dead_letters(namespace, function, 0, limit)
        for letter in letters:
            await self._redrive(letter)
        return web.json_response({"redriven": [x.sequence for x in letters]})

    async def purge(self, request: web.Request) -> web.Response:
        namespace, function = self._filters(request)
        if namespace is None and function is None and request.query.get("all") != "true":
            return _error(400, "give namespace and/or function, or all=true to purge everything")
        purged = await self._broker.purge_dead_letters(namespace, function)
        return web.json_response({"purged": purged})
