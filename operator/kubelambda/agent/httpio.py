"""A minimal HTTP/1.1 server as an asyncio (buffered) protocol, just enough for the agent.

Both agent endpoints (the invoke endpoint and the Runtime API) sit on every invocation's
path, so there is no framework and no task or future per request: ``buffer_updated`` parses
requests and calls the handler synchronously with the connection as the responder; the
handler answers at once or later (when the invocation completes). A pipelined request waits
until the previous one is answered. Supports keep-alive, Content-Length and chunked request
bodies, ``Expect: 100-continue``, and a body limit above which the body is read and dropped
(the handler sees ``too_large``). Header names are lower-cased; a repeated header keeps its
last value (none of the headers the agent reads are list-valued).
"""

from __future__ import annotations

import asyncio
import sys
import traceback
from collections.abc import Callable
from typing import NamedTuple, cast

HEAD_LIMIT = 64 * 1024
# Bodies above the handler's limit are still read (and dropped) so the client gets a clean
# answer on a kept-alive connection; beyond this cap the connection is simply closed.
DISCARD_CAP = 64 * 1024 * 1024
# Pipelined data buffered while a request is being answered, before reading pauses.
PAUSE_LIMIT = 1024 * 1024
LINGER_S = 1.0  # after an error answer, how long the client may go on sending
# Every connection reads into this one buffer and copies out at once: the loop reads one
# socket at a time (one event loop per process, as the agent runs). A Protocol would instead
# get a fresh bytes object per read, which asyncio allocates at 256 KiB and shrinks: above
# glibc's mmap threshold, that is an mmap, an mremap and a munmap on every read.
_READ_BUFFER = memoryview(bytearray(256 * 1024))

_REASONS = {
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Request Entity Too Large",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_REASON_BYTES = {status: reason.encode() for status, reason in _REASONS.items()}

# Chunked body parser states.
_SIZE, _DATA, _DATA_END, _TRAILER = range(4)


class HttpError(Exception):
    """A malformed request: answered with ``status`` and the connection is closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Request:
    """One parsed request. ``too_large`` means the body exceeded the limit and was dropped."""

    __slots__ = ("body", "headers", "keep_alive", "method", "target", "too_large")

    def __init__(self, method: str, target: str, headers: dict[str, str], keep_alive: bool) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.keep_alive = keep_alive
        self.body = b""
        self.too_large = False


class Response(NamedTuple):
    status: int
    headers: bytes  # pre-encoded "Name: value\r\n" lines, without Content-Length
    body: bytes


JSON_HEADERS = b"Content-Type: application/json\r\n"


def json_response(status: int, body: bytes, extra_headers: bytes = b"") -> Response:
    return Response(status, JSON_HEADERS + extra_headers, body)


def encode_response(response: Response, keep_alive: bool) -> bytes:
    status, headers, body = response
    head = b"HTTP/1.1 %d %s\r\n%sContent-Length: %d\r\n%s\r\n" % (
        status,
        _REASON_BYTES.get(status, b"Unknown"),
        headers,
        len(body),
        b"" if keep_alive else b"Connection: close\r\n",
    )
    return head + body


def parse_head(head: bytes) -> Request:
    # Lenient line splitting (bare LF accepted) also guarantees no header value holds a
    # newline, so values can be copied into other responses without header injection.
    request_line, _, rest = head.decode("latin-1").partition("\n")
    try:
        method, target, version = request_line.rstrip("\r").split(" ", 2)
    except ValueError:
        raise HttpError(400, "malformed request line") from None
    headers: dict[str, str] = {}
    for line in rest.split("\n"):
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()  # strip() takes the CR too
        elif line and line != "\r":  # not the blank line that ends the head
            raise HttpError(400, "malformed header line")
    connection = headers.get("connection")
    if version == "HTTP/1.1":
        keep_alive = connection is None or connection.lower() != "close"
    elif version == "HTTP/1.0":
        keep_alive = connection is not None and connection.lower() == "keep-alive"
    else:
        raise HttpError(400, "unsupported HTTP version")
    return Request(method, target, headers, keep_alive)


Handler = Callable[[Request, "Connection"], None]
"""Called for each request; must eventually call ``respond`` (or ``close``) on the connection."""


class Connection(asyncio.BufferedProtocol):
    """One server connection; also the responder handed to the handler."""

    def __init__(
        self, handler: Handler, max_body: int, registry: set[Connection], cork: bool = False
    ) -> None:
        self._handler = handler
        self._cork = cork
        self._max_body = max_body
        self._registry = registry
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._request: Request | None = None  # head parsed, body still arriving
        self._body = bytearray()
        self._remaining = 0  # body (or current chunk) bytes still expected
        self._received = 0  # chunked bytes seen, to enforce the caps
        self._chunk_state = -1  # -1: not chunked
        self._answering: Request | None = None  # handed to the handler, not yet answered
        self._processing = False
        self._paused = False
        self._eof = False  # the client half-closed: close once its requests are answered
        self._failed = False  # answered with an error: drop whatever else arrives
        # Answers held back while a pipelined request is being handled: they go out with
        # that request's answer, in one write (see ``respond``).
        self._corked: list[bytes] = []

    # --- asyncio.BufferedProtocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's transports do not subclass asyncio's.
        self._transport = cast(asyncio.Transport, transport)
        self._registry.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._registry.discard(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return _READ_BUFFER

    def buffer_updated(self, nbytes: int) -> None:
        if self._failed:
            return
        self._buffer += _READ_BUFFER[:nbytes]
        if self._answering is None:
            self._process()
        elif len(self._buffer) > PAUSE_LIMIT and self._transport is not None:
            self._transport.pause_reading()
            self._paused = True

    def eof_received(self) -> bool:
        self._eof = True
        self._uncork()  # nothing more will come to go out with
        if self._failed and self._transport is not None:
            self._transport.close()
        elif self._answering is None and not self._processing:
            self._process()
        return True  # keep the transport: pending requests still get their answers

    # --- responder -------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._transport is None or self._transport.is_closing()

    @property
    def abandoned(self) -> bool:
        """Closed, or the client shut down its side: for a held request (a runtime blocked
        in /next) that means the client process is gone."""
        return self._eof or self.closed

    @property
    def flushed(self) -> bool:
        return self._transport is None or (
            not self._corked and self._transport.get_write_buffer_size() == 0
        )

    def respond(self, response: Response) -> None:
        """Answer the request being handled; then go on with any pipelined one.

        On a corking connection (the Runtime API's), with more input already buffered, a
        success is corked: it goes out with the next answer, in one write, or as soon as no
        complete request is left to handle. A runtime that pipelines ``GET /next`` behind its
        result then gets the 202 together with its next event, and is not woken in between
        only to wait again. An error goes out at once: the client may have something to say
        about it (a runtime logs a 413).
        """
        request, self._answering = self._answering, None
        transport = self._transport
        if request is None or transport is None:
            return
        data = encode_response(response, request.keep_alive)
        if not request.keep_alive:
            self._uncork()
            transport.write(data)
            transport.close()
            return
        if self._cork and self._buffer and response.status < 300:
            self._corked.append(data)
        elif self._corked:
            self._corked.append(data)
            self._uncork()
        else:
            transport.write(data)
        if self._paused:
            self._paused = False
            transport.resume_reading()
        if not self._processing:
            self._process()

    def close(self) -> None:
        """Drop the connection without answering (the answers before still go out)."""
        self._answering = None
        if self._transport is not None:
            self._uncork()
            self._transport.close()

    def _uncork(self) -> None:
        if self._corked and self._transport is not None:
            self._transport.write(b"".join(self._corked))
        self._corked = []

    # --- parsing ---------------------------------------------------------------------------

    def _process(self) -> None:
        self._processing = True
        try:
            # Not past a closing transport: a request pipelined behind one answered with
            # Connection: close is dropped unanswered, never handled.
            while self._answering is None and not self.closed:
                request = self._next_request()
                if request is None:
                    self._uncork()  # nothing more to answer for now
                    if self._eof and self._transport is not None:
                        self._transport.close()
                    return
                self._answering = request
                self._dispatch(request)
        except HttpError as exc:
            self._fail(exc)
        finally:
            self._processing = False

    def _dispatch(self, request: Request) -> None:
        try:
            self._handler(request, self)
        except Exception:
            # A handler bug must not take the agent down; the client gets a 500.
            traceback.print_exc(file=sys.stderr)
            request.keep_alive = False
            self.respond(json_response(500, b'{"message":"internal error"}'))

    def _fail(self, exc: HttpError) -> None:
        if self._transport is None:
            return
        body = b'{"message":"%s"}' % str(exc).encode()
        transport = self._transport
        self._uncork()
        transport.write(encode_response(json_response(exc.status, body), False))
        self._answering = None
        self._failed = True
        self._buffer.clear()
        if self._eof or not transport.can_write_eof():
            transport.close()
            return
        # Half-close and keep reading (dropping) for a while: closing with unread data
        # would reset the connection before the client reads the answer.
        transport.write_eof()
        asyncio.get_running_loop().call_later(LINGER_S, transport.close)

    def _next_request(self) -> Request | None:
        """The next complete request from the buffer, or None until more data arrives."""
        if self._request is None:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > HEAD_LIMIT:
                    raise HttpError(431, "request head too large")
                return None
            head = bytes(self._buffer[: end + 4])
            del self._buffer[: end + 4]
            self._start_body(parse_head(head))
        if not self._read_body():
            return None
        complete, self._request = self._request, None
        # Fresh buffers: a bytearray keeps the capacity of the largest body it ever held.
        self._body = bytearray()
        if not self._buffer:
            self._buffer = bytearray()
        return complete

    def _start_body(self, request: Request) -> None:
        self._request = request
        self._received = 0
        headers = request.headers
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        self._chunk_state = _SIZE if chunked else -1
        length = 0
        if not chunked and "content-length" in headers:
            try:
                length = int(headers["content-length"])
            except ValueError:
                raise HttpError(400, "malformed Content-Length") from None
            if length < 0:
                raise HttpError(400, "negative Content-Length")
        self._remaining = length
        if not chunked and length == 0:
            return
        expects_continue = headers.get("expect", "").lower() == "100-continue"
        if length > self._max_body:
            request.too_large = True
            if expects_continue or length > DISCARD_CAP:
                # Refused without reading: the connection cannot be reused afterwards.
                request.keep_alive = False
                self._remaining = 0
                return
        if expects_continue and self._transport is not None:
            self._uncork()
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _take(self, request: Request) -> None:
        """Move up to the expected number of body bytes out of the buffer."""
        take = min(self._remaining, len(self._buffer))
        if not request.too_large:
            with memoryview(self._buffer) as view:
                self._body += view[:take]
        del self._buffer[:take]
        self._remaining -= take

    def _read_body(self) -> bool:
        request = self._request
        assert request is not None
        if self._chunk_state < 0:
            if self._remaining and not self._body and len(self._buffer) >= self._remaining:
                # Common case, the whole body is here: one copy.
                if not request.too_large:
                    request.body = bytes(self._buffer[: self._remaining])
                del self._buffer[: self._remaining]
                self._remaining = 0
                return True
            self._take(request)
            if self._remaining:
                return False
            if self._body:
                request.body = bytes(self._body)
            return True
        return self._read_chunked(request)

    def _read_chunked(self, request: Request) -> bool:
        while True:
            state = self._chunk_state
            if state == _DATA:
                self._take(request)
                if self._remaining:
                    return False
                self._chunk_state = _DATA_END
                continue
            if state == _DATA_END:
                if len(self._buffer) < 2:
                    return False
                del self._buffer[:2]
                self._chunk_state = _SIZE
                continue
            end = self._buffer.find(b"\r\n")
            if end < 0:
                if len(self._buffer) > HEAD_LIMIT:
                    raise HttpError(400, "malformed chunked body")
                return False
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 2]
            if state == _TRAILER:
                if not line:  # end of trailers (ignored): the body is complete
                    request.body = b"" if request.too_large else bytes(self._body)
                    return True
                continue
            try:
                size = int(line.split(b";", 1)[0], 16)
            except ValueError:
                raise HttpError(400, "malformed chunk size") from None
            if size == 0:
                self._chunk_state = _TRAILER
                continue
            self._received += size
            if self._received > DISCARD_CAP:
                raise HttpError(413, "request body too large")
            if self._received > self._max_body and not request.too_large:
                request.too_large = True
                self._body = bytearray()
            self._remaining = size
            self._chunk_state = _DATA


class HttpServer:
    """A listening socket plus the connections it accepted (to wait for their flush)."""

    def __init__(self, server: asyncio.Server, connections: set[Connection]) -> None:
        self._server = server
        self._connections = connections

    def close(self) -> None:
        self._server.close()

    @property
    def port(self) -> int:
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def flushed(self) -> bool:
        return all(c.flushed for c in self._connections)


async def serve(
    handler: Handler, host: str, port: int, max_body: int, *, cork: bool = False
) -> HttpServer:
    """``cork``: hold a success while a pipelined request is handled (``Connection.respond``):
    for the Runtime API, whose clients pipeline only ``GET /next``; a pipelining caller of the
    invoke endpoint must not wait for a later invocation to get an earlier answer."""
    loop = asyncio.get_running_loop()
    connections: set[Connection] = set()
    server = await loop.create_server(
        lambda: Connection(handler, max_body, connections, cork), host, port
    )
    return HttpServer(server, connections)
