"""Fuzzing real HTTP servers over raw sockets: hypothesis strategies for malformed requests,
and a client that sends bytes exactly as given and parses what comes back strictly, so a
broken answer is a test failure rather than something a forgiving client library smooths over.

``exchange`` writes the bytes, half-closes (nothing more will come) and reads until the server
closes: every answer the server gives, in order. A server that neither answers nor closes
within the timeout has hung. aiohttp drops the answers of a client that half-closes, so its
servers get ``LAST_REQUEST`` after the fuzzed bytes instead (answered, then it closes).

The fuzz tests run with ``FUZZ_SETTINGS``: derandomized (the same examples on every run, so CI
is reproducible) and without an example database; a failure prints the falsifying example.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import socket
import threading
import time
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple, TypeVar

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st

FUZZ_SETTINGS = settings(
    max_examples=250,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=False,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],  # "explain" costs a lot of time
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)

MAX_HEAD = 256 * 1024
T = TypeVar("T")


class CrashLog(logging.Handler):
    """Errors a server logs while fuzzed: an exception it caught and answered with a bare 500
    is a crash all the same."""

    def __init__(self, expected: tuple[type[BaseException], ...] = ()) -> None:
        super().__init__(logging.ERROR)
        self.expected = expected  # exceptions logged that are no crash (aiohttp's bad requests)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if not (record.exc_info and isinstance(record.exc_info[1], self.expected)):
            self.records.append(record)

    def take(self) -> list[str]:
        taken = [self.format(record) for record in self.records]
        self.records.clear()
        return taken

    @classmethod
    @contextmanager
    def on(
        cls, logger_name: str, expected: tuple[type[BaseException], ...] = ()
    ) -> Iterator[CrashLog]:
        log = cls(expected)
        logger = logging.getLogger(logger_name)
        logger.addHandler(log)
        try:
            yield log
        finally:
            logger.removeHandler(log)


class ProtocolViolation(AssertionError):
    """The server sent something that is not a well-formed HTTP/1.1 response."""


class RawResponse(NamedTuple):
    status: int
    headers: list[tuple[str, str]]  # names lower-cased, values as Latin-1
    body: bytes

    def header(self, name: str) -> str | None:
        values = [value for key, value in self.headers if key == name]
        return values[-1] if values else None

    def json(self) -> Any:
        return json.loads(self.body)


LAST_REQUEST = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


def exchange(
    port: int, data: bytes, methods: list[bytes], timeout: float = 15.0, half_close: bool = True
) -> list[RawResponse]:
    """Every response to ``data``; ``methods``: the request methods in order (a HEAD
    response has no body), requests beyond them are taken for GETs. ``half_close`` False:
    ``data`` asks the server to close (``LAST_REQUEST``); a server still waiting after
    ``timeout`` is waiting for the rest of a request that is incomplete on purpose."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server gave up on the request early (and closed): read what it said
        received = _read_until_closed(sock, time.monotonic() + timeout, must_close=half_close)
    return parse_responses(received, methods)


def _read_until_closed(sock: socket.socket, deadline: float, must_close: bool) -> bytes:
    chunks = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            if not must_close:
                return b"".join(chunks)
            raise AssertionError(f"the server neither answered nor closed: {b''.join(chunks)!r}")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return b"".join(chunks)
        except TimeoutError:
            continue
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def parse_responses(data: bytes, methods: list[bytes]) -> list[RawResponse]:
    responses = []
    position = 0
    while position < len(data):
        end = data.find(b"\r\n\r\n", position)
        if end < 0 or end - position > MAX_HEAD:
            raise ProtocolViolation(f"incomplete response head: {data[position:][:200]!r}")
        lines = data[position:end].split(b"\r\n")
        status = _status(lines[0])
        headers = []
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.strip():
                raise ProtocolViolation(f"malformed header line {line!r}")
            headers.append((name.decode("latin-1").lower(), value.strip().decode("latin-1")))
        position = end + 4
        if 100 <= status < 200:
            continue  # interim (100 Continue): the final response follows
        method = methods[len(responses)] if len(responses) < len(methods) else b"GET"
        framing = dict(headers)
        if lines[0].startswith(b"HTTP/1.0"):
            framing["http/1.0"] = "closes"  # without keep-alive, as all of aiohttp's
        body, position = _body(data, position, status, method, framing)
        responses.append(RawResponse(status, headers, body))
    return responses


def _status(line: bytes) -> int:
    parts = line.split(b" ", 2)
    # aiohttp answers in the version asked (1.0, even 2.0); the gateway always in 1.1.
    version_ok = re.fullmatch(rb"HTTP/\d\.\d", parts[0]) is not None
    if len(parts) < 2 or not version_ok or not parts[1].isdigit() or len(parts[1]) != 3:
        raise ProtocolViolation(f"malformed status line {line!r}")
    return int(parts[1])


def _body(
    data: bytes, position: int, status: int, method: bytes, headers: dict[str, str]
) -> tuple[bytes, int]:
    length = headers.get("content-length")
    chunked = "chunked" in headers.get("transfer-encoding", "").lower()
    if method == b"HEAD" and (headers.get("connection") == "close" or "http/1.0" in headers):
        # Nothing follows: a body sent anyway (aiohttp's to a malformed HEAD) harms no one.
        return b"", len(data)
    if method == b"HEAD" or status in (204, 304):
        if status == 204 and length is not None:
            raise ProtocolViolation("a 204 response with Content-Length")
        return b"", position
    if chunked:
        return _chunked(data, position)
    if length is None:
        return data[position:], len(data)  # delimited by the close
    if not length.isdigit():
        raise ProtocolViolation(f"Content-Length {length!r}")
    end = position + int(length)
    if end > len(data):
        raise ProtocolViolation(f"body shorter than its Content-Length {length}")
    return data[position:end], end


def _chunked(data: bytes, position: int) -> tuple[bytes, int]:
    body = []
    while True:
        line_end = data.find(b"\r\n", position)
        if line_end < 0:
            raise ProtocolViolation("truncated chunked body")
        size = int(data[position:line_end].split(b";")[0], 16)
        position = line_end + 2
        if size == 0:
            trailer_end = data.find(b"\r\n\r\n", position - 2)
            if trailer_end < 0:
                raise ProtocolViolation("truncated chunked trailer")
            return b"".join(body), trailer_end + 4
        body.append(data[position : position + size])
        position += size + 2


def request(
    method: bytes,
    target: bytes,
    headers: tuple[tuple[bytes, bytes], ...] = (),
    body: bytes = b"",
) -> bytes:
    """A well-formed request with Host and Content-Length."""
    head = b"%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n" % (method, target)
    head += b"".join(b"%s: %s\r\n" % header for header in headers)
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


# --- malformed requests ---------------------------------------------------------------------

# Bytes that break parsers, routers and decoders: separators, dot segments, bad and
# double percent-encoding, NUL, control characters, non-ASCII and invalid UTF-8.
NASTY = (
    b"/",
    b"//",
    b"..",
    b"/../",
    b"%2e%2e%2f",
    b"%2F",
    b"%",
    b"%z",
    b"%zz",
    b"%00",
    b"%25",
    b"%252F",
    b"%C0%AE",
    b"%ff%fe",
    b"%u002e",
    b"\x00",
    b"\x01",
    b"\x7f",
    b"\x80",
    b"\xff",
    b"\xc3\xa9",
    b"\xed\xa0\x80",
    b" ",
    b"\t",
    b"?",
    b"#",
    b";",
    b":",
    b"@",
    b"&",
    b"=",
    b"+",
    b"*",
    b">",
    b"$",
    b"\\",
    b"{}",
    b"a" * 300,
    b"%41" * 100,
)

OTHER_METHODS = (
    b"GET",
    b"PUT",
    b"DELETE",
    b"HEAD",
    b"OPTIONS",
    b"PATCH",
    b"TRACE",
    b"CONNECT",
    b"post",
    b"P\x00ST",
    b"",
    b"GET /",
)

VERSIONS = (b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1x", b"HTTP/9.9", b"", b"http/1.1")

# Header lines that are themselves malformed, or legal but unusual.
ODD_HEADER_LINES = (
    b"X Bad: 1",
    b": empty-name",
    b"X-Nul: a\x00b",
    b"X-Bare-Cr: a\rb",
    b"X-Obs-Fold: a\r\n folded",
    b"NoColon",
    b"X-Latin: \xe9\xff",
    b"X-Utf8: \xc3\xa9",
    b"X-Empty:",
    b"X-Spaces:    padded   ",
    b"Content-Length: 5",
    b"Content-Length: -1",
    b"Content-Length: abc",
    b"Content-Length: 99999999999999999999999",
    b"Transfer-Encoding: chunked",
    b"Transfer-Encoding: gzip",
    b"Transfer-Encoding: chunked, chunked",
    b"Expect: 100-continue",
    b"Expect: 200-ok",
    b"Connection: close",
    b"Connection: keep-alive",
    b"Connection: Upgrade\r\nUpgrade: websocket",
    b"Upgrade: h2c",
    b"Host:",
    b"Host: \xff",
    b"Host: [::1]:80",
    b"Host: a.b.c.d.e.f",
    b"X-Big: " + b"b" * 70_000,
)


def sometimes(usual: Any, odd: st.SearchStrategy[Any], one_in: int = 4) -> st.SearchStrategy[Any]:
    """``usual`` most of the time, something drawn from ``odd`` one time in ``one_in``: so that
    most examples get past one check and meet the next. (Strategies are built once, at import:
    building them inside every draw makes generating an example many times slower.)"""
    # sampled_from leans to its first element; integers would lean to the odd boundary one.
    pick = st.sampled_from(range(one_in))
    return st.tuples(pick, odd).map(lambda t: t[1] if t[0] == one_in - 1 else usual)


# Edits of a path or name: (where, a nasty fragment to insert or how many bytes to cut).
EDITS = sometimes(
    (),
    st.lists(
        st.tuples(st.integers(0, 2**16), st.one_of(st.sampled_from(NASTY), st.integers(1, 8))),
        min_size=1,
        max_size=3,
    ),
    3,
)


def edited(base: bytes, edits: tuple[tuple[int, bytes | int], ...]) -> bytes:
    """``base`` with ``EDITS`` applied (positions wrap around its length)."""
    data = base
    for where, edit in edits:
        at = where % (len(data) + 1)
        if isinstance(edit, bytes):
            data = data[:at] + edit + data[at:]
        else:
            data = data[:at] + data[at + edit :]
    return data


def methods(usual: bytes) -> st.SearchStrategy[bytes]:
    return sometimes(usual, st.sampled_from(OTHER_METHODS))


_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_FIELD_VALUE = frozenset(range(0x20, 0x7F)) | frozenset(range(0x80, 0x100)) | {0x09}
_METHODS = (b"GET", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH", b"POST")


def _well_formed_header(line: bytes) -> bool:
    name, colon, value = line.partition(b":")
    return bool(colon and name) and set(name) <= _TOKEN and set(value) <= _FIELD_VALUE


class Fuzzed:
    """One malformed (or not) request as bytes, and what the test needs to judge answers.
    (Not a dataclass: hypothesis would print a falsifying example's megabytes field by field.)
    """

    def __init__(self, data: bytes, methods: list[bytes], framed: bool) -> None:
        self.data = data
        self.methods = methods  # of the requests it makes, in order, as far as one can tell
        self.framed = framed  # well-formed HTTP/1.1, exact framing: exactly one answer is due

    def __repr__(self) -> str:
        shown = self.data if len(self.data) <= 600 else self.data[:600] + b"..."
        return f"Fuzzed(framed={self.framed}, {len(self.data)} bytes: {shown!r})"


class Malformation(NamedTuple):
    """How the request around a method, target, headers and body is broken (if at all)."""

    version: bytes
    odd_lines: tuple[bytes, ...]
    framing: str
    order: int  # seed of the header lines' order
    chunk_cut: int  # percent of the body in the first chunk
    bad_chunk_size: bytes


FRAMINGS = ("length", "chunked", "short", "long", "none", "both", "bad-chunked", "doubled")
MALFORMATIONS = st.builds(
    Malformation,
    version=sometimes(b"HTTP/1.1", st.sampled_from(VERSIONS), 8),
    odd_lines=sometimes((), st.lists(st.sampled_from(ODD_HEADER_LINES), min_size=1, max_size=2)),
    framing=sometimes("length", st.sampled_from(FRAMINGS)),
    order=st.integers(0, 2**16),
    chunk_cut=st.integers(0, 100),
    bad_chunk_size=st.sampled_from((b"zz", b"-1", b"", b"fffffffffffffffffff", b"1 1")),
)


def build_request(
    malformation: Malformation, method: bytes, target: bytes, headers: list[bytes], body: bytes
) -> Fuzzed:
    """A request around ``method``, ``target``, header lines and ``body``, broken as
    ``malformation`` says: version, odd header lines, framing (Content-Length, chunked)."""
    version, odd, framing, order, chunk_cut, bad_chunk_size = malformation
    lines = [b"Host: 127.0.0.1", *headers, *odd]
    random.Random(order).shuffle(lines)
    payload = body
    if framing == "length":
        lines.append(b"Content-Length: %d" % len(body))
    elif framing == "chunked":
        lines.append(b"Transfer-Encoding: chunked")
        cut = len(body) * chunk_cut // 100
        pieces = [piece for piece in (body[:cut], body[cut:]) if piece]
        payload = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    elif framing == "short":
        lines.append(b"Content-Length: %d" % max(len(body) - 3, 0))
    elif framing == "long":
        lines.append(b"Content-Length: %d" % (len(body) + 10))
    elif framing == "both":
        lines += [b"Content-Length: %d" % len(body), b"Transfer-Encoding: chunked"]
        payload = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    elif framing == "bad-chunked":
        lines.append(b"Transfer-Encoding: chunked")
        payload = b"%s\r\n%s\r\n0\r\n\r\n" % (bad_chunk_size, body)
    elif framing == "doubled":
        lines += [b"Content-Length: %d" % len(body), b"Content-Length: %d" % (len(body) + 1)]
    # "none": the body follows the head undeclared, to be read as the next request.
    data = b"%s %s %s\r\n%s\r\n\r\n%s" % (method, target, version, b"\r\n".join(lines), payload)
    framed = (
        version == b"HTTP/1.1"
        and not odd
        and all(_well_formed_header(line) for line in headers)
        and framing in ("length", "chunked")
        and method in _METHODS
        and target.startswith(b"/")
        and all(32 < byte < 127 for byte in target)
    )
    return Fuzzed(data, [method], framed)


class LoopThread:
    """An asyncio loop in a background thread, for servers the fuzzer talks to over sockets;
    ``run`` runs a coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
