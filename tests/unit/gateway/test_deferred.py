"""The server's Deferred answer: resolved once, before or after the server takes it."""

from __future__ import annotations

import asyncio

from kubelambda.gateway.httpserver import Deferred, Response

OK = Response(200, b"", b"ok")


def test_resolved_after_the_server_takes_it() -> None:
    answer, got = Deferred(), []
    answer.then(got.append)
    assert got == []
    answer.resolve(OK)
    answer.resolve(Response(500, b"", b"late"))  # a second resolve goes nowhere
    assert got == [OK]


def test_resolved_before_the_server_takes_it() -> None:
    answer, got = Deferred(), []
    answer.resolve(OK)
    answer.then(got.append)
    assert got == [OK]


def test_a_coroutine_can_wait_for_it() -> None:
    async def scenario() -> Response:
        answer = Deferred()
        asyncio.get_running_loop().call_later(0.01, answer.resolve, OK)
        return await answer.wait()

    assert asyncio.run(scenario()) == OK
