"""Fuzzing the invoker's DLQ admin API over raw sockets (the real aiohttp app on a real
JetStream, in this process).

Dead letters of two functions. Whatever the request (malformed paths, sequences, filters,
limits, tokens, framing), answers have documented statuses and every error is a
``{"message": ...}`` JSON one (those aiohttp makes up included: a request it cannot parse, an
unknown path or method, an Expect it does not know), nothing under ``/dlq`` answers or changes
anything without the admin token, and the API logs no crash.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.http_exceptions import HttpProcessingError
from hypothesis import event, given, note
from hypothesis import strategies as st

from kubelambda.invoker.admin import AdminApi
from kubelambda.invoker.config import InvokerConfig
from kubelambda.invoker.event import DeadLetter, Event
from kubelambda.invoker.jetstream import JetStreamBroker
from tests.unit.httpfuzz import (
    EDITS,
    FUZZ_SETTINGS,
    LAST_REQUEST,
    MALFORMATIONS,
    CrashLog,
    Fuzzed,
    LoopThread,
    RawResponse,
    build_request,
    edited,
    exchange,
    methods,
    request,
)

from .conftest import NatsServer

TOKEN = "admin-s3cret"
# 405 and 417: a method a path does not take, an Expect other than 100-continue.
DOCUMENTED = {200, 204, 400, 401, 404, 405, 417, 503}
DLQ_FIELDS = ("deadLetters", "functions", "redriven", "purged", "sequence")


class RunningAdmin:
    def __init__(self, nats_url: str) -> None:
        self.thread = LoopThread()
        self.broker, self.admin = self.thread.run(self._start(nats_url))

    async def _start(self, nats_url: str) -> tuple[JetStreamBroker, AdminApi]:
        config = InvokerConfig(nats_url=nats_url, gateway_url="http://127.0.0.1:1")
        broker = await JetStreamBroker.connect(
            nats_url, "fuzz-admin", config.streams, config.consumers
        )
        await broker.ensure_streams()
        admin = AdminApi(broker, TOKEN, lambda: int(time.time() * 1000))
        await admin.start(0, "127.0.0.1")
        return broker, admin

    def dead_letter_count(self) -> int:
        return sum(self.thread.run(self.broker.dead_letter_depths()).values())

    def refill(self) -> None:
        """Dead letters of two functions, so that there is always something to leak or lose."""

        async def publish() -> None:
            for namespace, function in (("team-a", "fn"), ("team-b", "other")):
                event = Event(f"r-{function}", namespace, function, None, b'{"n": 1}', 0)
                await self.broker.publish_dead_letter(
                    DeadLetter(event, "RetriesExhausted", "200", "boom", int(time.time() * 1000))
                )

        self.thread.run(publish())

    def stop(self) -> None:
        async def stop() -> None:
            await self.admin.stop()
            await self.broker.close()

        self.thread.run(stop())
        self.thread.stop()


@pytest.fixture(scope="module")
def crash_log() -> Iterator[CrashLog]:
    with CrashLog.on("aiohttp", (HttpProcessingError,)) as log:
        yield log


@pytest.fixture(scope="module")
def admin(tmp_path_factory: pytest.TempPathFactory, crash_log: CrashLog) -> Iterator[RunningAdmin]:
    directory: Path = tmp_path_factory.mktemp("nats")
    nats = NatsServer(directory / "jetstream")
    nats.start()
    running = RunningAdmin(nats.url)
    running.refill()
    yield running
    running.stop()
    nats.stop()


AUTHORIZATIONS = (
    None,
    f"Bearer {TOKEN}",
    f"bearer {TOKEN}",
    f"Bearer {TOKEN} ",
    f"Bearer {TOKEN[:-1]}",
    "Bearer",
    "Bearer \xff\xfe",
    f"Bearer {TOKEN}\xe9",
    f"Basic {TOKEN}",
)
PATHS = (
    b"/dlq",
    b"/dlq/summary",
    b"/dlq/1",
    b"/dlq/2",
    b"/dlq/99999999999999999999999999",
    b"/dlq/0",
    b"/dlq/1/redrive",
    b"/dlq/redrive",
    b"/dlq/purge",
    b"/DLQ",
    b"//dlq",
    b"/./dlq",
    b"/healthz/../dlq",
    b"/%64lq",
    b"/healthz",
    b"/readyz",
)
QUERIES = (
    b"",
    b"?namespace=team-a",
    b"?function=fn&limit=1",
    b"?limit=%C2%B2",  # a superscript two: str.isdigit() says yes, int() says no
    b"?limit=-1",
    b"?limit=0",
    b"?after=99999999999999999999999999",
    b"?namespace=*",
    b"?namespace=%3E",
    b"?function=a.b",
    b"?namespace=a%20b",
    b"?all=true",
    b"?all=TRUE&namespace=",
)
METHODS = st.one_of(st.sampled_from((b"GET", b"POST", b"DELETE")), methods(b"GET"))


@st.composite
def admin_requests(draw: st.DrawFn) -> tuple[Fuzzed, str | None]:
    """A fuzzed admin request, and the Authorization it carries."""
    authorization = draw(st.sampled_from(AUTHORIZATIONS))
    headers = (
        [] if authorization is None else [b"Authorization: " + authorization.encode("latin-1")]
    )
    target = edited(draw(st.sampled_from(PATHS)), draw(EDITS)) + draw(st.sampled_from(QUERIES))
    body = draw(st.sampled_from((b"", b"{}", b"\xff" * 10)))
    fuzzed = build_request(draw(MALFORMATIONS), draw(METHODS), target, headers, body)
    return fuzzed, authorization


def check_answer(response: RawResponse, authorized: bool, method: bytes) -> None:
    assert response.status in DOCUMENTED, response
    if response.status >= 400:
        assert response.header("content-type") == "application/json; charset=utf-8", response
    if method == b"HEAD" or response.status == 204:
        assert authorized or response.status != 204, response
        return
    body: Any = response.json()
    if response.status >= 400:
        assert isinstance(body["message"], str), response
        return
    if not authorized:  # health checks only
        assert body in ({"status": "ok"}, {"status": "ready"}), response
    elif isinstance(body, dict) and "status" not in body:
        assert any(field in body for field in DLQ_FIELDS), response


@FUZZ_SETTINGS
@given(case=admin_requests())
def test_admin_api_answers_only_documented_shapes(
    admin: RunningAdmin, crash_log: CrashLog, case: tuple[Fuzzed, Any]
) -> None:
    fuzzed, authorization = case
    # HTTP strips the whitespace around a header value.
    authorized = authorization is not None and authorization.strip() == f"Bearer {TOKEN}"
    crash_log.take()  # what an earlier (failing) example left
    before = admin.dead_letter_count()
    responses = exchange(
        admin.admin.port, fuzzed.data + LAST_REQUEST, [*fuzzed.methods, b"GET"], 2, half_close=False
    )
    note(f"answers: {responses!r}")
    for response, method in zip(responses, [*fuzzed.methods, b"GET", b"GET"], strict=False):
        event(str(response.status))
        check_answer(response, authorized, method)
    assert crash_log.take() == []
    after = admin.dead_letter_count()
    if not authorized:
        assert after == before, "dead letters changed without the admin token"
    if after < 2:
        admin.refill()


def test_limit_that_only_looks_like_digits_is_a_400(admin: RunningAdmin) -> None:
    """Regression: ``?limit=²`` passed str.isdigit() and then failed int() (a 500)."""
    auth = ((b"Authorization", f"Bearer {TOKEN}".encode()),)
    for target in (b"/dlq?limit=%C2%B2", b"/dlq/redrive?limit=%C2%B2", b"/dlq?after=%D9%A3"):
        data = request(b"GET" if b"redrive" not in target else b"POST", target, auth)
        response, _ = exchange(admin.admin.port, data + LAST_REQUEST, [b"GET"] * 2, 2, False)
        assert response.status == 400, response
        assert "non-negative integer" in response.json()["message"]


@pytest.mark.parametrize("sequence", [0, 2**64])
def test_sequence_no_letter_can_have_is_not_found(admin: RunningAdmin, sequence: int) -> None:
    """Regression: sequence 0, or one past uint64, went to NATS, which refused it, and the
    answer was a 503 as if the queue were down."""
    auth = ((b"Authorization", f"Bearer {TOKEN}".encode()),)
    path = b"/dlq/%d" % sequence
    for method, target in ((b"GET", path), (b"DELETE", path), (b"POST", path + b"/redrive")):
        data = request(method, target, auth) + LAST_REQUEST
        response, _ = exchange(admin.admin.port, data, [method, b"GET"], 2, False)
        assert (response.status, response.json()) == (404, {"message": "no such dead letter"})


@pytest.mark.parametrize("sequence", [10**9, 2**63, 2**64 - 1])
def test_sequence_past_the_last_is_not_found(admin: RunningAdmin, sequence: int) -> None:
    """Regression: deleting a sequence past the stream's last got a server error from NATS
    (not "not found"), and the answer was a 503."""
    auth = ((b"Authorization", f"Bearer {TOKEN}".encode()),)
    data = request(b"DELETE", b"/dlq/%d" % sequence, auth) + LAST_REQUEST
    response, _ = exchange(admin.admin.port, data, [b"DELETE", b"GET"], 2, False)
    assert (response.status, response.json()) == (404, {"message": "no such dead letter"})


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        (b"namespace=*", "namespace"),
        (b"namespace=%3E", "namespace"),
        (b"namespace=team-a.fn", "namespace"),
        (b"namespace=a%20b", "namespace"),
        (b"namespace=Team-A", "namespace"),
        (b"namespace=" + b"a" * 64, "namespace"),
        (b"namespace=team-a&function=*", "function"),
        (b"function=a.b", "function"),
        (b"function=-fn", "function"),
        (b"function=" + b"a" * 53, "function"),
    ],
)
def test_filters_that_are_no_names_are_a_400(
    admin: RunningAdmin, query: bytes, parameter: str
) -> None:
    """Regression: ``namespace=*`` went into the purge's subject filter as a wildcard and
    purged the dead letters of every function."""
    auth = ((b"Authorization", f"Bearer {TOKEN}".encode()),)
    before = admin.dead_letter_count()
    for method, path in ((b"POST", b"/dlq/purge"), (b"POST", b"/dlq/redrive"), (b"GET", b"/dlq")):
        data = request(method, path + b"?" + query, auth) + LAST_REQUEST
        response, _ = exchange(admin.admin.port, data, [method, b"GET"], 2, False)
        assert response.status == 400, response
        assert response.json()["message"].startswith(f"{parameter} must be the name of a")
    assert admin.dead_letter_count() == before


# What aiohttp answers itself, before (or instead of) the application's handlers.
MADE_UP_ERRORS = {
    "unknown path": (request(b"GET", b"/nowhere"), 404, "Not Found"),
    "wrong method": (request(b"PUT", b"/healthz"), 405, "Method Not Allowed"),
    "unknown expect": (
        request(b"GET", b"/healthz", ((b"Expect", b"200-ok"),)),
        417,
        "Unknown Expect: 200-ok",
    ),
    "unparseable": (b"GARBAGE\r\n\r\n", 400, "Invalid method encountered"),
    "header too long": (
        request(b"GET", b"/healthz", ((b"X", b"x" * 9000),)),
        400,
        "Got more than 8190 bytes when reading",
    ),
}


@pytest.mark.parametrize("case", MADE_UP_ERRORS)
def test_errors_aiohttp_makes_up_are_json(admin: RunningAdmin, case: str) -> None:
    """Regression: unknown paths and methods, an Expect it does not know and requests it could
    not parse got aiohttp's text/plain answers, not the API's ``{"message": ...}``."""
    data, status, message = MADE_UP_ERRORS[case]
    response = exchange(admin.admin.port, data + LAST_REQUEST, [b"GET"] * 2, 2, False)[0]
    assert response.status == status, response
    assert response.header("content-type") == "application/json; charset=utf-8"
    assert response.json()["message"].startswith(message), response
    if status == 405:
        assert response.header("allow") == "GET,HEAD"
