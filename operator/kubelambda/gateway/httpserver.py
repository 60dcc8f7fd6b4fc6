"""The gateway's HTTP/1.1 server: an asyncio Protocol around ``httptools``, no framework.

Each connection parses requests as they arrive and answers them strictly in order (pipelining
safe): a handler returns a ``Response`` at once (health checks, most errors: no task at all),
a ``Deferred`` that a callback resolves later (an invocation sent on an idle upstream
connection: no task either), or a coroutine, which runs as one task. Meanwhile later
pipelined requests wait in a short queue (reading pauses when it is full). Keep-alive,
Content-Length and chunked request bodies,
``Expect: 100-continue``; a client that half-closes still gets its answers, HEAD answers carry
no body, and ``Upgrade``/CONNECT is answered as a plain request, then the connection closes
(no other protocol is spoken here). A body above ``max_body`` is read and dropped and the
handler sees ``too_large``, so the client still gets a clean answer on a kept-alive
connection; beyond ``DISCARD_CAP`` the connection is closed. Header names are lower-cased
bytes; a repeated header's values are comma-joined (as API Gateway passes them on), and kept
one by one in ``repeated`` only when a name does repeat (payload format 1.0 lists them; most
requests never pay for it).

A client cannot hold a connection for nothing: a new connection must begin a request within
``read_timeout``, a request's head must arrive within ``read_timeout`` of its first byte and
its body within ``read_timeout`` of the head, and a kept-alive connection waits at most
``idle_timeout`` for the next request. Past a deadline the connection closes once the
requests before are answered; a stalled body first gets 408. The time a handler takes counts
for neither. Deadlines are one number per connection, checked by a sweep over the connections
(a timer object per request would cost more than the requests it guards).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from functools import partial
from http import HTTPStatus
from typing import Any, NamedTuple, cast

import httptools

log = logging.getLogger(__name__)

HEAD_LIMIT = 64 * 1024
DISCARD_CAP = 64 * 1024 * 1024
PIPELINE_LIMIT = 16  # parsed requests queued per connection before reading pauses
READ_TIMEOUT_S = 30.0
# Above the 60 s idle timeout of the usual load balancers and proxies: they close pooled
# connections first. The other way round, a request sent just as the gateway closes is lost.
IDLE_TIMEOUT_S = 75.0
# How often deadlines are checked: a timeout fires up to this late. Timeouts under 4 s (tests)
# are checked every quarter of the shorter one instead.
SWEEP_INTERVAL_S = 1.0

# Function and backend responses may carry any status: every registered reason phrase.
_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}
JSON_HEADERS = b"Content-Type: application/json\r\n"


class Response(NamedTuple):
    status: int
    headers: bytes  # pre-encoded "Name: value\r\n" lines, without Content-Length
    body: bytes


def json_response(status: int, body: bytes, extra_headers: bytes = b"") -> Response:
    return Response(status, JSON_HEADERS + extra_headers, body)


_BAD_REQUEST = json_response(400, b'{"message":"Bad Request"}')
_HEAD_TOO_LARGE = json_response(431, b'{"message":"Request Header Fields Too Large"}')
_BODY_TOO_LARGE = json_response(413, b'{"message":"Request Entity Too Large"}')
_REQUEST_TIMEOUT = json_response(408, b'{"message":"Request Timeout"}')
INTERNAL_ERROR = json_response(500, b'{"message":"Internal Server Error"}')


def encode_response(response: Response, keep_alive: bool, send_body: bool = True) -> bytes:
    """``send_body`` False for a HEAD request: the GET answer's head (its Content-Length too),
    without the body, which the client would otherwise read as the next response."""
    status, headers, body = response
    # 204 carries no body and, per RFC 9110, no Content-Length.
    length = b"" if status == 204 else b"Content-Length: %d\r\n" % len(body)
    return b"HTTP/1.1 %d %s\r\n%s%s%s\r\n%s" % (
        status,
        _REASONS.get(status, b"Unknown"),
        headers,
        length,
        b"" if keep_alive else b"Connection: close\r\n",
        body if send_body else b"",
    )


class Request:
    __slots__ = (
        "body",
        "headers",
        "http_version",
        "keep_alive",
        "method",
        "peer",
        "repeated",
        "too_large",
        "url",
    )

    def __init__(
        self,
        method: bytes,
        url: bytes,
        headers: dict[bytes, bytes],
        *,
        repeated: dict[bytes, list[bytes]] | None = None,
        peer: str = "",
        http_version: str = "1.1",
    ) -> None:
        self.method = method
        self.url = url
        self.headers = headers
        self.repeated = repeated  # every value of each header name sent more than once
        self.peer = peer  # the client's IP address
        self.http_version = http_version
        self.body = b""
        self.keep_alive = True
        self.too_large = False

    def values(self, name: bytes) -> list[bytes]:
        """Every value of header ``name`` (lower-case), one per header line."""
        if self.repeated is not None and name in self.repeated:
            return self.repeated[name]
        value = self.headers.get(name)
        return [] if value is None else [value]


class Deferred:
    """An answer given later by ``resolve``, from a callback (no coroutine, so no task).
    Resolved exactly once; before the server has taken it, too."""

    __slots__ = ("_on_answer", "_response")

    def __init__(self) -> None:
        self._on_answer: Callable[[Response], None] | None = None
        self._response: Response | None = None

    def resolve(self, response: Response) -> None:
        on_answer, self._on_answer = self._on_answer, None
        if on_answer is None:
            self._response = response
        else:
            on_answer(response)

    def then(self, on_answer: Callable[[Response], None]) -> None:
        """For the server: where the answer goes (at once, if it is already there)."""
        if self._response is None:
            self._on_answer = on_answer
        else:
            on_answer(self._response)

    async def wait(self) -> Response:
        """For a coroutine that has to wait for the answer itself."""
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self.then(partial(_settle, future))
        return await future


def _settle(future: asyncio.Future[Response], response: Response) -> None:
    if not future.done():  # the waiting coroutine may have been cancelled
        future.set_result(response)


HandlerResult = Response | Deferred | Coroutine[Any, Any, Response]
Handler = Callable[[Request], HandlerResult]


class _HeadTooLarge(Exception):
    pass


class _BodyOverCap(Exception):
    pass


class ServerState:
    """What all connections share: the handler, limits, timeouts, the set of pending tasks,
    and the sweep that enforces the connections' deadlines."""

    def __init__(
        self,
        handler: Handler,
        max_body: int,
        max_connections: int,
        loop: asyncio.AbstractEventLoop,
        *,
        read_timeout: float = READ_TIMEOUT_S,
        idle_timeout: float = IDLE_TIMEOUT_S,
    ) -> None:
        self.handler = handler
        self.max_body = max_body
        self.max_connections = max_connections
        self.loop = loop
        self.read_timeout = read_timeout
        self.idle_timeout = idle_timeout
        self.connections: set[ServerConnection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.deferred = 0  # Deferred answers still awaited
        self.draining = False
        self._sweep_interval = min(SWEEP_INTERVAL_S, read_timeout / 4, idle_timeout / 4)
        self._sweeping: asyncio.TimerHandle | None = None

    @property
    def busy(self) -> int:
        """Requests being handled right now (for graceful drain)."""
        return len(self.tasks) + self.deferred

    def close_idle(self) -> None:
        for conn in list(self.connections):
            conn.close_if_idle()

    def add(self, conn: ServerConnection) -> None:
        self.connections.add(conn)
        if self._sweeping is None:
            self._sweeping = self.loop.call_later(self._sweep_interval, self._sweep)

    def _sweep(self) -> None:
        """Time out the connections past their deadline; runs while there are connections
        (re-armed first: a connection that fails to time out must not stop the others')."""
        self._sweeping = (
            self.loop.call_later(self._sweep_interval, self._sweep) if self.connections else None
        )
        now = self.loop.time()
        for conn in [c for c in self.connections if 0 < c.deadline <= now]:
            conn.time_out()


class ServerConnection(asyncio.Protocol):
    def __init__(self, state: ServerState) -> None:
        self._state = state
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._queue: deque[Request | Response] = deque()  # a Response: parse error to send
        self._handling = False
        self._paused = False
        self._url = b""
        self._head_request = False  # the message being parsed is a HEAD
        self._headers: dict[bytes, bytes] = {}
        self._repeated: dict[bytes, list[bytes]] | None = None
        self._peer = ""
        self._head_size = 0
        self._body: list[bytes] = []
        self._body_size = 0
        self._request: Request | None = None  # its head is parsed, its body not yet
        self._reading = False  # a request has begun and is not complete
        self._input_ended = False  # the client half-closed, asked to switch protocols, or timed out
        # Loop time by which the client must send what is awaited (the rest of a request, or the
        # next one on an idle connection); 0 while nothing is awaited of it (a request in hand).
        self.deadline = 0.0

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if len(self._state.connections) >= self._state.max_connections or self._state.draining:
            transport.close()  # bounded: refusing is cheaper than queueing a connection
            return
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self._state.add(self)
        self._await_client(self._state.read_timeout)
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]) if isinstance(peer, tuple) and peer else ""

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._state.connections.discard(self)

    def eof_received(self) -> bool:
        """The client half-closed (it sends nothing more but still reads): answer what it
        already asked, then close; keep the transport open for that if there is anything."""
        self._input_ended = True
        return bool(self._handling or self._queue)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            self._fail(
                _HEAD_TOO_LARGE if isinstance(exc.__context__, _HeadTooLarge) else _BODY_TOO_LARGE
            )
        except httptools.HttpParserUpgrade:
            self._refuse_upgrade()
        except httptools.HttpParserError:
            self._fail(_BAD_REQUEST)
        self._process()

    # --- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._reading = True
        self._await_client(self._state.read_timeout)
        self._url = b""
        self._head_request = False
        self._headers = {}
        self._repeated = None
        self._head_size = 0
        self._body = []
        self._body_size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_request = self._parser.get_method() == b"HEAD"
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        previous = self._headers.get(name)
        if previous is None:
            self._headers[name] = value
        else:
            self._headers[name] = previous + b"," + value
            if self._repeated is None:
                self._repeated = {}
            self._repeated.setdefault(name, [previous]).append(value)
        self._count_head(len(name) + len(value))

    def _count_head(self, size: int) -> None:
        self._head_size += size
        if self._head_size > HEAD_LIMIT:
            raise _HeadTooLarge

    def on_headers_complete(self) -> None:
        request = Request(
            self._parser.get_method(),
            self._url,
            self._headers,
            repeated=self._repeated,
            peer=self._peer,
            http_version=self._parser.get_http_version(),
        )
        request.keep_alive = self._parser.should_keep_alive()
        self._request = request
        self._await_client(self._state.read_timeout)  # for the body
        if self._headers.get(b"expect", b"").lower() == b"100-continue" and self._transport:
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._state.max_body:
            if self._body_size > DISCARD_CAP:
                raise _BodyOverCap
            self._body = []
            assert self._request is not None
            self._request.too_large = True
        else:
            self._body.append(body)

    def on_message_complete(self) -> None:
        request = self._request
        assert request is not None
        self._request = None
        self._reading = False
        self.deadline = 0.0  # a request in hand: the client waits for us now
        if not request.too_large and self._body:
            request.body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        self._body = []
        self._queue.append(request)
        if len(self._queue) >= PIPELINE_LIMIT:
            self._pause_reading()

    # --- answering -------------------------------------------------------------------------

    def _fail(self, response: Response) -> None:
        """A malformed request: answered after those before it, then the connection closes."""
        if self._head_request:  # the method was read before what broke: no body either
            response = response._replace(body=b"")
        self._queue.append(response)
        self._pause_reading()

    def _refuse_upgrade(self) -> None:
        """CONNECT or ``Upgrade``: what follows the request is another protocol, which is not
        spoken here. The request itself is answered as any other, then the connection closes
        (nothing after it can be parsed as HTTP/1.1)."""
        if not self._queue:  # the parser stopped before the request was complete
            self._fail(_BAD_REQUEST)
            return
        self._input_ended = True
        self._pause_reading()

    def _pause_reading(self) -> None:
        if self._transport is not None and not self._paused:
            self._transport.pause_reading()
            self._paused = True

    def _process(self) -> None:
        while self._queue and not self._handling and self._transport is not None:
            item = self._queue.popleft()
            if isinstance(item, Response):
                self._transport.write(encode_response(item, False))
                self._transport.close()
                return
            try:
                result = self._state.handler(item)
            except Exception:
                log.exception("handler failed")
                result = INTERNAL_ERROR
            if isinstance(result, Response):
                self._write(item, result)
                continue
            self._handling = True
            if isinstance(result, Deferred):
                self._state.deferred += 1
                result.then(partial(self._answer_soon, item))
                continue  # stops the loop: the answer comes on a later pass
            task = asyncio.get_running_loop().create_task(self._finish(item, result))
            self._state.tasks.add(task)
            task.add_done_callback(self._state.tasks.discard)
        if (
            self._paused
            and self._transport is not None
            and len(self._queue) < PIPELINE_LIMIT
            and not self._input_ended
        ):
            self._paused = False
            self._transport.resume_reading()
            if self._reading:  # the rest of that request went unread meanwhile: a fresh wait
                self._await_client(self._state.read_timeout)
        if (
            not self.deadline
            and not self._handling
            and not self._queue
            and not self._input_ended
            and self._transport is not None
        ):
            self._await_client(self._state.idle_timeout)  # all answered: wait for the next one

    def _answer_soon(self, request: Request, response: Response) -> None:
        # Written on the loop's next pass, with the other answers that came in this one (as a
        # task's would be): the clients are woken in batches, not once per answer.
        self._state.loop.call_soon(self._answered, request, response)

    def _answered(self, request: Request, response: Response) -> None:
        self._state.deferred -= 1
        self._handling = False
        self._write(request, response)
        self._process()

    async def _finish(self, request: Request, pending: Coroutine[Any, Any, Response]) -> None:
        try:
            response = await pending
        except Exception:
            log.exception("handler failed")
            response = INTERNAL_ERROR
        self._handling = False
        self._write(request, response)
        self._process()

    def _write(self, request: Request, response: Response) -> None:
        transport = self._transport
        if transport is None:
            return  # the client went away; its answer has nowhere to go
        last = self._input_ended and not self._queue  # nothing more will come
        keep_alive = request.keep_alive and not self._state.draining and not last
        transport.write(encode_response(response, keep_alive, request.method != b"HEAD"))
        if not keep_alive:
            self._queue.clear()
            transport.close()

    def close_if_idle(self) -> None:
        if self._transport is not None and not self._handling and not self._queue:
            self._transport.close()

    # --- timeouts --------------------------------------------------------------------------

    def _await_client(self, timeout: float) -> None:
        self.deadline = self._state.loop.time() + timeout

    def time_out(self) -> None:
        """The client did not send what was awaited in time: nothing more is read from it.
        A stalled body gets 408; either way the requests before are answered, then the
        connection closes."""
        self.deadline = 0.0
        transport = self._transport
        if transport is None or transport.is_closing() or self._paused:
            return  # gone or going, or not reading: then the wait is ours, not the client's
        self._input_ended = True
        if self._request is not None:
            self._fail(_REQUEST_TIMEOUT)
            self._process()
        elif self._handling or self._queue:
            self._pause_reading()  # the last answer closes the connection
        else:
            transport.close()


async def serve(
    handler: Handler,
    host: str,
    port: int,
    max_body: int,
    max_connections: int,
    *,
    read_timeout: float = READ_TIMEOUT_S,
    idle_timeout: float = IDLE_TIMEOUT_S,
) -> tuple[asyncio.Server, ServerState]:
    """``read_timeout``: for a request's head, then for its body; ``idle_timeout``: for the
    next request on a kept-alive connection (seconds)."""
    loop = asyncio.get_running_loop()
    state = ServerState(
        handler,
        max_body,
        max_connections,
        loop,
        read_timeout=read_timeout,
        idle_timeout=idle_timeout,
    )
    server = await loop.create_server(lambda: ServerConnection(state), host, port, backlog=1024)
    return server, state
