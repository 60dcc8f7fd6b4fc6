"""The gateway's HTTP server gives up on clients that hold a connection without using it: a
request's head or body that does not arrive in time, a kept-alive connection left idle.

Each test runs the bare server (``httpserver.serve``) on uvloop, as the gateway does, with
timeouts of a fraction of a second, and talks to it over a raw socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest
import uvloop

from kubelambda.gateway.httpserver import Request, Response, ServerState, json_response, serve
from tests.unit.httpfuzz import RawResponse, parse_responses

READ_TIMEOUT = 0.2
IDLE_TIMEOUT = 0.8
SWEEP = READ_TIMEOUT / 4  # how often the server checks deadlines: a quarter of the shortest
SLOW = IDLE_TIMEOUT + 4 * SWEEP  # a handler that takes longer than every timeout
LATE = 1.0  # time enough for a due timeout to fire, even on a busy machine
GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def handler(request: Request) -> Response | Coroutine[Any, Any, Response]:
    """``/slow``: an answer that takes longer than every timeout; anything else at once."""
    if request.url == b"/slow":
        return slow()
    return json_response(200, b'{"body":%d}' % len(request.body))


async def slow() -> Response:
    await asyncio.sleep(SLOW)
    return json_response(200, b'{"slow":true}')


Scenario = Callable[[int, ServerState], Awaitable[None]]


def run(scenario: Scenario, read_timeout: float = READ_TIMEOUT) -> None:
    async def main() -> None:
        server, state = await serve(
            handler, "127.0.0.1", 0, 1024, 100, read_timeout=read_timeout, idle_timeout=IDLE_TIMEOUT
        )
        try:
            await scenario(server.sockets[0].getsockname()[1], state)
        finally:
            server.close()
            await server.wait_closed()

    uvloop.run(main())


async def read_until_closed(reader: asyncio.StreamReader, within: float) -> bytes:
    """Everything the server sends until it closes; fails when it is still open ``within``
    seconds later."""
    try:
        return await asyncio.wait_for(reader.read(), within)
    except TimeoutError:
        raise AssertionError(f"the connection is still open after {within} s") from None


async def still_open(reader: asyncio.StreamReader, seconds: float) -> bool:
    """True when the server neither sent nor closed anything for ``seconds``."""
    try:
        data = await asyncio.wait_for(reader.read(1), seconds)
    except TimeoutError:
        return True
    raise AssertionError(f"expected silence, got {data!r}")


def answers(data: bytes, count: int = 1) -> list[RawResponse]:
    """The responses in ``data`` to ``count`` requests (none a HEAD)."""
    return parse_responses(data, [b"GET"] * count)


def test_incomplete_head_is_closed_without_an_answer() -> None:
    async def scenario(port: int, state: ServerState) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Partial: ")
        started = time.monotonic()
        assert await read_until_closed(reader, READ_TIMEOUT + LATE) == b""
        assert time.monotonic() - started >= READ_TIMEOUT * 0.9
        writer.close()

    run(scenario)


def test_connection_that_never_sends_is_closed() -> None:
    async def scenario(port: int, state: ServerState) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await read_until_closed(reader, READ_TIMEOUT + LATE) == b""
        writer.close()

    run(scenario)


def test_head_dribbled_a_byte_at_a_time_is_closed_all_the_same() -> None:
    """The deadline is for the whole head, not between bytes (a "slowloris" client)."""

    async def scenario(port: int, state: ServerState) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        closed = asyncio.create_task(read_until_closed(reader, READ_TIMEOUT + LATE))
        for byte in b"GET / HTTP/1.1\r\nX-Long: " + b"a" * 100:
            if closed.done():
                break
            writer.write(bytes([byte]))
            await asyncio.sleep(READ_TIMEOUT / 10)
        # A byte sent just after the server closed is answered with a reset: closed all the same.
        with contextlib.suppress(ConnectionResetError):
            assert await closed == b""
        writer.close()

    run(scenario)


@pytest.mark.parametrize(
    "head",
    [
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\n\r\nsome",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nsome\r\n",
    ],
)
def test_stalled_body_gets_408_then_the_connection_closes(head: bytes) -> None:
    async def scenario(port: int, state: ServerState) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head)
        [response] = answers(await read_until_closed(reader, READ_TIMEOUT + LATE))
        assert response.status == 408
        assert response.header("content-type") == "application/json"
        assert response.header("connection") == "close"
        assert response.json() == {"message": "Request Timeout"}
        writer.close()

    run(scenario)


def test_body_gets_its_own_time_after_the_head() -> None:
    """A head that took most of the read timeout leaves the body a full one (a longer read
    timeout here: the margins must hold on a busy machine)."""
    read_timeout = 1.0

    async def scenario(port: int, state: ServerState) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\n")
        await asyncio.sleep(read_timeout * 0.6)
        writer.write(b"Content-Length: 4\r\nConnection: close\r\n\r\n")
        await asyncio.sleep(read_timeout * 0.6)
        writer.write(b"body")
        [response] = answers(await read_until_closed(reader, LATE))
        assert (response.status, response.json()) == (200, {"body": 4})
        writer.close()

    run(scenario, read_timeout)


def test_idle_keep_alive_connection_is_closed_after_the_idle_timeout() -> None:
    async def scenario(port: int, state: ServerState) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(GET)
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        assert json.loads(await reader.readexactly(len(b'{"body":0}'))) == {"body": 0}
        # Idle: the (longer) idle timeout applies, not the read timeout.
        assert await still_open(reader, READ_TIMEOUT + 2 * SWEEP)
        writer.write(GET)  # still usable
        [response] = answers(await reader.readuntil(b'{"body":0}'))
        assert response.status == 200
        started = time.monotonic()
        assert await read_until_closed(reader, IDLE_TIMEOUT + LATE) == b""
        assert time.monotonic() - started >= IDLE_TIMEOUT * 0.9
        assert not state.connections
        writer.close()

    run(scenario)


def test_time_a_handler_takes_counts_for_no_timeout() -> None:
    async def scenario(port: int, state: ServerState) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        [response] = answers(await read_until_closed(reader, SLOW + LATE))
        assert (response.status, response.json()) == (200, {"slow": True})
        writer.close()

    run(scenario)


def test_stalled_request_behind_a_slow_one_is_answered_in_order() -> None:
    """A pipelined request that stalls while the one before is handled: the first gets its
    answer, the stalled one 408 (its head came) or nothing (it did not), then the close."""

    async def scenario(port: int, state: ServerState) -> None:
        for stalled, expected in (
            (b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n", [200, 408]),
            (b"GET / HTTP/1.1\r\nX-Partial", [200]),
        ):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n" + stalled)
            data = await read_until_closed(reader, SLOW + LATE)
            assert [r.status for r in answers(data, 2)] == expected
            writer.close()

    run(scenario)
