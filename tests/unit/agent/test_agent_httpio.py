"""The agent's HTTP/1.1 server in-process: framing, keep-alive, limits, malformed input."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from kubelambda.agent import eventloop
from kubelambda.agent.httpio import (
    HEAD_LIMIT,
    Connection,
    Handler,
    Request,
    Response,
    json_response,
    serve,
)


@pytest.fixture(autouse=True, params=["uvloop", "asyncio"])
def agent_loop(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test on both of the agent's loops (their transports differ)."""
    monkeypatch.setenv(eventloop.LOOP_ENV, request.param)


def _echo(request: Request, conn: Connection) -> None:
    if request.too_large:
        conn.respond(json_response(413, b'{"too":"large"}'))
        return
    if request.target == "/boom":
        raise RuntimeError("handler bug")
    head = f"X-Method: {request.method}\r\nX-Target: {request.target}\r\n".encode()
    response = Response(200, head, request.body)
    if request.target.startswith("/later"):  # answered asynchronously, like an invocation
        asyncio.get_running_loop().call_later(0.05, conn.respond, response)
    else:
        conn.respond(response)


async def _exchange(data: bytes, max_body: int, chunks: int, handler: Handler) -> bytes:
    server = await serve(handler, "127.0.0.1", 0, max_body)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    step = max(1, len(data) // chunks)
    for i in range(0, len(data), step):  # also exercises requests split across reads
        writer.write(data[i : i + step])
        await writer.drain()
    writer.write_eof()
    reply = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    await writer.wait_closed()
    server.close()
    return reply


def exchange(data: bytes, max_body: int = 100, chunks: int = 1, handler: Handler = _echo) -> bytes:
    return eventloop.run(_exchange(data, max_body, chunks, handler))


def test_content_length_and_keep_alive_pipelining():
    reply = exchange(
        b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /b?q=1 HTTP/1.1\r\nHost: x\r\n\r\n",
        chunks=7,
    )
    first, second = reply.split(b"HTTP/1.1 200 OK\r\n")[1:]
    assert first == b"X-Method: POST\r\nX-Target: /a\r\nContent-Length: 3\r\n\r\nabc"
    assert second == b"X-Method: GET\r\nX-Target: /b?q=1\r\nContent-Length: 0\r\n\r\n"


def test_chunked_body_with_extensions_and_trailers():
    reply = exchange(
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3;x=y\r\nabc\r\nA\r\n0123456789\r\n0\r\nTrailer: t\r\n\r\n",
        chunks=5,
    )
    assert reply.endswith(b"Content-Length: 13\r\n\r\nabc0123456789")


@pytest.mark.parametrize("encoding", ["length", "chunked"])
def test_too_large_body_is_drained_and_the_connection_reused(encoding):
    body = b"x" * 150
    if encoding == "length":
        first = b"POST / HTTP/1.1\r\nContent-Length: 150\r\n\r\n" + body
    else:
        first = (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n96\r\n" + body + b"\r\n0\r\n\r\n"
        )
    reply = exchange(first + b"GET /next HTTP/1.1\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 413 Request Entity Too Large\r\n")
    assert b"X-Target: /next" in reply


def test_expect_continue():
    reply = exchange(b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok")
    assert reply.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n")


def test_http10_closes_unless_keep_alive():
    reply = exchange(b"GET /a HTTP/1.0\r\n\r\nGET /b HTTP/1.0\r\n\r\n")
    assert reply.count(b"HTTP/1.1 200") == 1
    assert b"Connection: close\r\n" in reply
    reply = exchange(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /b HTTP/1.1\r\n\r\n")
    assert reply.count(b"HTTP/1.1 200") == 2


def test_connection_close_is_honoured():
    handled: list[str] = []

    def record(request: Request, conn: Connection) -> None:
        handled.append(request.target)
        _echo(request, conn)

    reply = exchange(
        b"GET /a HTTP/1.1\r\nConnection: close\r\n\r\nGET /b HTTP/1.1\r\n\r\n", handler=record
    )
    assert reply.count(b"HTTP/1.1 200") == 1
    # Never handled, not just unanswered: for the agent, a request behind the close could be
    # a runtime's /next taking an invocation whose answer would then be lost.
    assert handled == ["/a"]


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GARBAGE\r\n\r\n", b"400"),
        (b"GET / HTTP/2.0\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\nNoColon\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\nX: 1\r\n \r\n\r\n", b"400"),  # whitespace only: not a header
        (b"POST / HTTP/1.1\r\nContent-Length: nope\r\n\r\n", b"400"),
        (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", b"400"),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", b"400"),
    ],
)
def test_malformed_requests(request_bytes, status):
    assert exchange(request_bytes).startswith(b"HTTP/1.1 " + status)


def test_oversized_head():
    head = b"GET / HTTP/1.1\r\nX: " + b"a" * (2 * HEAD_LIMIT) + b"\r\n\r\n"
    assert exchange(head).startswith(b"HTTP/1.1 431 ")


def test_bare_newlines_never_reach_header_values():
    reply = exchange(b"GET /a HTTP/1.1\nX-A: 1\nInjected: yes\n\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n")


def test_pipelined_requests_wait_for_a_late_answer():
    reply = exchange(b"GET /later HTTP/1.1\r\n\r\nGET /now HTTP/1.1\r\n\r\n")
    assert reply.index(b"X-Target: /later") < reply.index(b"X-Target: /now")


def test_a_handler_bug_is_a_500():
    reply = exchange(b"GET /boom HTTP/1.1\r\n\r\nGET /a HTTP/1.1\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert b"X-Target: /a" not in reply


def _hold_or_drop(request: Request, conn: Connection) -> None:
    """/held is answered 0.3 s later (a runtime's /next waiting for an event), /drop is closed
    then without an answer; anything else at once."""
    loop = asyncio.get_running_loop()
    if request.target == "/held":
        loop.call_later(0.3, conn.respond, Response(200, b"X-Target: /held\r\n", b""))
    elif request.target == "/drop":
        loop.call_later(0.3, conn.close)
    else:
        _echo(request, conn)


async def _scripted(steps: list[bytes], cork: bool = True) -> list[bytes]:
    """Sends each step, then collects what arrives within 0.15 s; the last step reads to EOF.
    The server corks, as the Runtime API's does, unless ``cork`` is False."""
    server = await serve(_hold_or_drop, "127.0.0.1", 0, 100, cork=cork)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    received = []
    for step in steps[:-1]:
        writer.write(step)
        got = b""
        with contextlib.suppress(TimeoutError):
            while True:
                got += await asyncio.wait_for(reader.read(65536), 0.15)
        received.append(got)
    writer.write(steps[-1])
    writer.write_eof()
    received.append(await asyncio.wait_for(reader.read(), 5))
    writer.close()
    server.close()
    return received


def test_an_answer_goes_out_with_the_pipelined_answer_behind_it():
    # A runtime that sends its result and GET /next in one write gets the 202 together with
    # its next event: it is not woken in between only to wait again.
    first, rest = eventloop.run(
        _scripted([b"GET /now HTTP/1.1\r\n\r\nGET /held HTTP/1.1\r\n\r\n", b""])
    )
    assert first == b""
    assert rest.index(b"X-Target: /now") < rest.index(b"X-Target: /held")


def test_an_answer_is_not_held_for_a_request_still_arriving():
    first, rest = eventloop.run(
        _scripted([b"GET /now HTTP/1.1\r\n\r\nGET /la", b"ter HTTP/1.1\r\n\r\n"])
    )
    assert b"X-Target: /now" in first
    assert b"X-Target: /later" in rest


def test_a_dropped_request_still_lets_the_answers_before_it_out():
    (rest,) = eventloop.run(_scripted([b"GET /now HTTP/1.1\r\n\r\nGET /drop HTTP/1.1\r\n\r\n"]))
    assert rest.startswith(b"HTTP/1.1 200 OK\r\nX-Method: GET\r\nX-Target: /now\r\n")
    assert rest.count(b"HTTP/1.1") == 1


def test_an_error_answer_is_not_held_back():
    # A runtime whose result was too large logs the 413 before it takes its next event.
    too_large = b"POST /big HTTP/1.1\r\nContent-Length: 150\r\n\r\n" + b"x" * 150
    first, rest = eventloop.run(_scripted([too_large + b"GET /held HTTP/1.1\r\n\r\n", b""]))
    assert first.startswith(b"HTTP/1.1 413 Request Entity Too Large\r\n")
    assert b"X-Target: /held" in rest


def test_only_a_corking_server_holds_an_answer_back():
    # The invoke endpoint does not cork: a caller pipelining two invocations gets the first
    # answer when it is ready, not when the second one completes.
    first, _ = eventloop.run(
        _scripted([b"GET /now HTTP/1.1\r\n\r\nGET /held HTTP/1.1\r\n\r\n", b""], cork=False)
    )
    assert b"X-Target: /now" in first


def test_a_half_close_lets_a_corked_answer_out():
    async def scenario() -> bytes:
        server = await serve(_hold_or_drop, "127.0.0.1", 0, 100, cork=True)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /now HTTP/1.1\r\n\r\nGET /held HTTP/1.1\r\n\r\n")
        writer.write_eof()
        got = await asyncio.wait_for(reader.read(65536), 0.2)  # before /held is answered
        got += await asyncio.wait_for(reader.read(), 5)  # /held's answer, then the close
        writer.close()
        server.close()
        return got.split(b"X-Target: /held")[0]

    assert b"X-Target: /now" in eventloop.run(scenario())
