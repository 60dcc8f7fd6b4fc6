"""A scripted fake gateway and an in-process invoker (the ``nats_server`` fixture, a real
``nats-server -js`` per test, is in tests/unit/conftest.py)."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from kubelambda.gateway.publisher import AsyncInvocation
from kubelambda.gateway.publisher_nats import NatsPublisher
from kubelambda.invoker.config import InvokerConfig
from kubelambda.invoker.core import Invoker
from kubelambda.invoker.functions import FunctionSettings, StaticDirectory
from kubelambda.invoker.jetstream import ConsumerSettings, JetStreamBroker
from tests.unit.natsserver import NatsServer

NAMESPACE = "team-a"


# --- the fake gateway -------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    namespace: str
    function: str
    qualifier: str | None
    request_id: str
    body: bytes
    headers: dict[str, str]
    number: int  # 1 for the first call with this request id
    peer_port: int = 0  # the invoker's end of the connection the call came on


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: bytes = b'{"ok":true}'
    headers: dict[str, str] = field(default_factory=dict)


OK = Reply()


def function_error(message: str = "asked to fail") -> Reply:
    body = json.dumps({"errorType": "ValueError", "errorMessage": message}).encode()
    return Reply(200, body, {"X-Amz-Function-Error": "Unhandled"})


def service_error(status: int, code: str, message: str = "nope") -> Reply:
    body = json.dumps({"Type": "User", "message": message}).encode()
    return Reply(status, body, {"x-amzn-ErrorType": code})


Script = Callable[[Call], Reply | Awaitable[Reply]]


class FakeGateway:
    """Answers the Invoke API as scripted; takes Event invocations and destination POSTs."""

    def __init__(self, script: Script = lambda call: OK) -> None:
        self.script = script
        self.calls: list[tuple[Call, Reply]] = []
        self.events: list[Call] = []  # Event invocations (function destinations)
        self.posts: list[tuple[str, bytes]] = []  # URL destinations
        self.post_status = 200
        self.started: Counter[str] = Counter()  # calls begun, by request id
        app = web.Application()
        app.router.add_post(
            "/namespaces/{namespace}/2015-03-31/functions/{function}/invocations", self._invoke
        )
        app.router.add_post("/destinations/{name}", self._destination)
        self._runner = web.AppRunner(app, access_log=None)
        self.url = ""

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def _invoke(self, request: web.Request) -> web.Response:
        request_id = request.headers.get("X-Kubelambda-Request-Id", "")
        call = Call(
            namespace=request.match_info["namespace"],
            function=request.match_info["function"],
            qualifier=request.query.get("Qualifier"),
            request_id=request_id,
            body=await request.read(),
            headers=dict(request.headers),
            number=0,
            peer_port=int((request.transport.get_extra_info("peername") or ("", 0))[1])
            if request.transport is not None
            else 0,
        )
        if request.headers.get("X-Amz-Invocation-Type") == "Event":
            self.events.append(call)
            return web.Response(status=202)
        self.started[request_id] += 1
        call = Call(**{**call.__dict__, "number": self.started[request_id]})
        reply = self.script(call)
        if not isinstance(reply, Reply):
            reply = await reply
        self.calls.append((call, reply))
        return web.Response(status=reply.status, body=reply.body, headers=reply.headers)

    async def _destination(self, request: web.Request) -> web.Response:
        self.posts.append((request.match_info["name"], await request.read()))
        return web.Response(status=self.post_status)

    def successes(self) -> Counter[str]:
        return Counter(
            call.request_id
            for call, reply in self.calls
            if reply.status == 200 and "X-Amz-Function-Error" not in reply.headers
        )

    def invocations(self) -> Counter[str]:
        """Calls that reached the function (not throttled or refused by the platform)."""
        return Counter(call.request_id for call, reply in self.calls if reply.status == 200)


# --- an invoker in this process ---------------------------------------------------------------


def invoker_config(nats_url: str, gateway_url: str, **overrides: Any) -> InvokerConfig:
    values: dict[str, Any] = {
        "nats_url": nats_url,
        "gateway_url": gateway_url,
        "retry_base_s": 0.05,
        "throttle_min_s": 0.02,
        "throttle_max_s": 0.2,
        "fetch_wait_s": 0.5,
        "functions_refresh_s": 0.2,
        "sample_interval_s": 0.2,
        "shutdown_grace_s": 2.0,
        "consumers": ConsumerSettings(ack_wait_s=3.0),
    }
    values.update(overrides)
    return InvokerConfig(**values)


@dataclass
class Harness:
    broker: JetStreamBroker
    invoker: Invoker
    publisher: NatsPublisher
    gateway: FakeGateway
    directory: StaticDirectory

    async def publish(
        self,
        request_id: str,
        function: str = "fn",
        payload: bytes = b'{"n":1}',
        received_ms: int | None = None,
        qualifier: str | None = None,
    ) -> None:
        await self.publisher.publish(
            AsyncInvocation(
                request_id=request_id,
                namespace=NAMESPACE,
                function=function,
                qualifier=qualifier,
                payload=payload,
                received_ms=int(time.time() * 1000) if received_ms is None else received_ms,
            )
        )


@asynccontextmanager
async def running_invoker(
    nats: NatsServer,
    functions: dict[str, FunctionSettings],
    script: Script = lambda call: OK,
    **overrides: Any,
) -> AsyncIterator[Harness]:
    gateway = FakeGateway(script)
    await gateway.start()
    config = invoker_config(nats.url, gateway.url, **overrides)
    broker = await JetStreamBroker.connect(
        nats.url, "test-invoker", config.streams, config.consumers
    )
    await broker.ensure_streams()
    publisher = NatsPublisher(nats.url)
    await publisher.wait_connected()
    directory = StaticDirectory({(NAMESPACE, name): s for name, s in functions.items()})
    stop = asyncio.Event()
    async with aiohttp.ClientSession() as session:
        invoker = Invoker(config, broker, directory, session)
        task = asyncio.create_task(invoker.run(stop))
        try:
            yield Harness(broker, invoker, publisher, gateway, directory)
        finally:
            stop.set()
            await task
            await invoker.stop()
    await publisher.close()
    await broker.close()
    await gateway.stop()


async def eventually(
    check: Callable[[], Awaitable[bool] | bool], timeout_s: float = 30.0, what: str = ""
) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what or check}")
        await asyncio.sleep(0.05)
