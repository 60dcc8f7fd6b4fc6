"""The DLQ admin API: auth, list, show, delete, redrive and purge, on a real JetStream."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from kubelambda.invoker.admin import AdminApi
from kubelambda.invoker.functions import FunctionSettings

from .conftest import (
    NAMESPACE,
    OK,
    Call,
    NatsServer,
    Reply,
    eventually,
    function_error,
    running_invoker,
)

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_redrive_after_fixing_the_function(nats_server: NatsServer) -> None:
    fixed = False

    def script(call: Call) -> Reply:
        return OK if fixed else function_error("broken")

    async def scenario() -> None:
        nonlocal fixed
        functions = {
            "fn": FunctionSettings(max_retries=0),
            "other": FunctionSettings(max_retries=0),
        }
        async with running_invoker(nats_server, functions, script) as h:
            admin = AdminApi(h.broker, TOKEN, lambda: int(time.time() * 1000))
            port = await admin.start(0, "127.0.0.1")
            base = f"http://127.0.0.1:{port}"
            try:
                async with aiohttp.ClientSession() as http:

                    async def call(method: str, path: str, **kw: Any) -> tuple[int, Any]:
                        async with http.request(method, base + path, **kw) as r:
                            body = await r.json() if r.content_type == "application/json" else None
                            return r.status, body

                    for i in range(5):
                        await h.publish(f"r-{i}", payload=b'{"i": %d}' % i)
                    await h.publish("o-1", function="other")

                    async def all_dead() -> bool:
                        status, body = await call("GET", "/dlq/summary", headers=AUTH)
                        return status == 200 and body["total"] == 6

                    await eventually(all_dead, 15, "six dead letters")

                    assert (await call("GET", "/dlq"))[0] == 401
                    bad = {"Authorization": "Bearer wrong"}
                    assert (await call("GET", "/dlq", headers=bad))[0] == 401
                    assert (await call("GET", "/healthz"))[0] == 200

                    status, body = await call(
                        "GET", f"/dlq?namespace={NAMESPACE}&function=fn&limit=2", headers=AUTH
                    )
                    assert status == 200
                    first_page = body["deadLetters"]
                    assert [x["requestId"] for x in first_page] == ["r-0", "r-1"]
                    assert first_page[0]["condition"] == "RetriesExhausted"
                    assert first_page[0]["errorCode"] == "200"
                    assert first_page[0]["errorMessage"] == "ValueError: broken"
                    assert first_page[0]["attempts"] == 1
                    status, body = await call(
                        "GET", f"/dlq?function=fn&after={body['next']}", headers=AUTH
                    )
                    assert [x["requestId"] for x in body["deadLetters"]] == ["r-2", "r-3", "r-4"]
                    assert body["next"] is None

                    sequence = first_page[0]["sequence"]
                    status, body = await call("GET", f"/dlq/{sequence}", headers=AUTH)
                    assert status == 200
                    assert body["payload"] == {"i": 0}
                    assert (await call("GET", "/dlq/999999", headers=AUTH))[0] == 404
                    assert (await call("DELETE", "/dlq/999999", headers=AUTH))[0] == 404

                    # Delete one, redrive one by sequence, then the rest of the function.
                    fixed = True
                    deleted = first_page[1]["sequence"]
                    assert (await call("DELETE", f"/dlq/{deleted}", headers=AUTH))[0] == 204
                    assert (await call("DELETE", f"/dlq/{deleted}", headers=AUTH))[0] == 404
                    status, body = await call("POST", f"/dlq/{sequence}/redrive", headers=AUTH)
                    assert status == 200
                    assert body == {"redriven": [sequence]}
                    status, body = await call(
                        "POST", f"/dlq/redrive?namespace={NAMESPACE}&function=fn", headers=AUTH
                    )
                    assert status == 200
                    assert len(body["redriven"]) == 3

                    await eventually(
                        lambda: set(h.gateway.successes()) == {"r-0", "r-2", "r-3", "r-4"},
                        15,
                        "the redriven events to succeed",
                    )
                    status, body = await call("GET", "/dlq/summary", headers=AUTH)
                    assert body["total"] == 1  # other's

                    assert (await call("POST", "/dlq/purge", headers=AUTH))[0] == 400
                    # A wildcard is no namespace: it must not purge them all.
                    status, body = await call("POST", "/dlq/purge?namespace=*", headers=AUTH)
                    assert status == 400
                    assert body["message"].startswith("namespace must be the name of a namespace")
                    status, body = await call("GET", "/dlq/summary", headers=AUTH)
                    assert body["total"] == 1
                    status, body = await call(
                        "POST", f"/dlq/purge?namespace={NAMESPACE}&function=other", headers=AUTH
                    )
                    assert status == 200
                    assert body == {"purged": 1}
                    status, body = await call("GET", "/dlq/summary", headers=AUTH)
                    assert body == {"functions": [], "total": 0}
            finally:
                await admin.stop()

    asyncio.run(scenario())


def test_admin_api_is_off_without_a_token(nats_server: NatsServer) -> None:
    async def scenario() -> None:
        async with running_invoker(nats_server, {}) as h:
            admin = AdminApi(h.broker, None, lambda: 0, ready=lambda: False)
            port = await admin.start(0, "127.0.0.1")
            try:
                async with aiohttp.ClientSession() as http:
                    async with http.get(f"http://127.0.0.1:{port}/dlq", headers=AUTH) as r:
                        assert r.status == 503
                    async with http.get(f"http://127.0.0.1:{port}/readyz") as r:
                        assert r.status == 503
            finally:
                await admin.stop()

    asyncio.run(scenario())
