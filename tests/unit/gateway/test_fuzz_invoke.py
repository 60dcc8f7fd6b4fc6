"""Fuzzing the Lambda Invoke API over raw sockets, against a real gateway and real agents.

Two functions in two namespaces answer with their own secret. Whatever the request (malformed
paths, names, ARNs, qualifiers, namespaces, headers, bodies, framing, sizes), every answer is
either that function's own or a documented error shape; no answer carries the other
function's secret; the gateway logs no crash; and it serves valid requests afterwards.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from urllib.parse import quote

import pytest
from hypothesis import event, given, note
from hypothesis import strategies as st

from kubelambda.gateway.config import GatewayConfig
from kubelambda.gateway.main import Gateway
from kubelambda.gateway.publisher import AsyncInvocation
from tests.unit.gateway.conftest import Agent, RunningGateway
from tests.unit.gateway.objects import add_alias, add_function, add_slice
from tests.unit.httpfuzz import (
    EDITS,
    FUZZ_SETTINGS,
    MALFORMATIONS,
    CrashLog,
    Fuzzed,
    RawResponse,
    build_request,
    edited,
    exchange,
    methods,
    request,
    sometimes,
)

SECRETS = {"alpha": "alpha-secret-6c1f0e", "beta": "beta-secret-93ad7b"}
NAMESPACES = {"alpha": "default", "beta": "team-b"}

SECRET_APP = """
import os

def handler(event, context):
    return {"secret": os.environ["SECRET"], "arn": context.invoked_function_arn}
"""

# What the Invoke API answers itself (gateway/__init__.py), and what its pods' agents add
# (a bad X-Amz-Client-Context is their 400).
LAMBDA_ERROR_STATUSES = {400, 404, 405, 413, 429, 501, 502}
# A request that cannot be parsed as HTTP gets a plain answer, then the connection closes.
FRAMING_ERRORS = {
    400: {"message": "Bad Request"},
    413: {"message": "Request Entity Too Large"},
    431: {"message": "Request Header Fields Too Large"},
}


class DiscardingPublisher:
    """Takes every Event (the queue itself is not what is fuzzed here)."""

    async def publish(self, invocation: AsyncInvocation) -> None:
        pass

    async def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def crash_log() -> Iterator[CrashLog]:
    with CrashLog.on("kubelambda.gateway") as log:
        yield log


@pytest.fixture(scope="module")
def gateway(agents: Callable[..., Agent], crash_log: CrashLog) -> Iterator[RunningGateway]:
    config = GatewayConfig(port=0, metrics_port=0, cold_start_s=1)
    gw = RunningGateway(Gateway(config, publisher=DiscardingPublisher()))
    ports = {name: agents(code=SECRET_APP, SECRET=secret).port for name, secret in SECRETS.items()}

    def feed() -> None:
        add_function(gw.table, "alpha", versions=("1",))
        add_alias(gw.table, "alpha", "live", "1")
        add_slice(gw.table, "alpha", "$LATEST", ["127.0.0.1"], port=ports["alpha"])
        add_slice(gw.table, "alpha", "1", ["127.0.0.1"], port=ports["alpha"], name="alpha-v1")
        add_function(gw.table, "beta", namespace="team-b")
        beta_port = ports["beta"]
        add_slice(gw.table, "beta", "$LATEST", ["127.0.0.1"], port=beta_port, namespace="team-b")

    gw.call(feed)
    yield gw
    gw.stop()


def invocation_path(function: str, namespace: str | None = None) -> bytes:
    prefix = f"/namespaces/{namespace}" if namespace else ""
    return f"{prefix}/2015-03-31/functions/{function}/invocations".encode()


# --- strategies -----------------------------------------------------------------------------

QUALIFIERS = st.one_of(
    st.sampled_from(("$LATEST", "1", "live")),
    st.sampled_from(("2", "nope", "", "LIVE", "x" * 200, "1.0", "$latest", "live:1", "%24LATEST")),
)
# FunctionName forms: plain, qualified, partial or full ARN, and near misses.
REF_FORMS = (
    "{name}",
    "{name}:{q}",
    "000000000000:function:{name}",
    "000000000000:function:{name}:{q}",
    "arn:aws:lambda:us-east-1:000000000000:function:{name}",
    "arn:aws:lambda:us-east-1:000000000000:function:{name}:{q}",
    "arn:aws:lambda:nowhere:000000000000:function:{name}",
    "arn:aws:lambda:us-east-1:123:function:{name}",
    "function:{name}",
)
# How a FunctionName appears in the path: raw, percent-encoded, every byte encoded.
ENCODINGS = (
    lambda ref: ref,
    lambda ref: quote(ref, safe=""),
    lambda ref: "".join(f"%{byte:02x}" for byte in ref.encode()),
    lambda ref: "".join(f"%{byte:02X}" for byte in ref.encode()),
)
FUNCTION_REFS = st.builds(
    lambda name, form, qualifier, encode: (name, encode(form.format(name=name, q=qualifier))),
    st.sampled_from(("alpha", "beta", "gamma", "")),
    st.sampled_from(REF_FORMS),
    QUALIFIERS,
    st.sampled_from(ENCODINGS),
)
NAMESPACE_PREFIXES = (
    None,
    "default",
    "team-b",
    "",
    "TEAM-B",
    "team-b%2F",
    "team-b/..",
    "%74eam-b",
    "n" * 300,
    "ns?x",
)

HOME = "<the function's own>"
NAMESPACE_CHOICES = sometimes(HOME, st.sampled_from(NAMESPACE_PREFIXES), 3)

HEADER_VALUES: dict[bytes, tuple[bytes, ...]] = {
    b"X-Amz-Log-Type": (b"Tail", b"None", b"tail", b"\xe9"),
    b"X-Amz-Client-Context": (
        base64.b64encode(b'{"custom": {"a": 1}}'),
        base64.b64encode(b"[1, 2]"),
        base64.b64encode(b"\xff\xfe"),
        b"not base64!",
        b"=" * 10,
        base64.b64encode(b'{"custom": "' + b"c" * 5000 + b'"}'),
    ),
    b"X-Amzn-Trace-Id": (
        b"Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1",
        b"\xe9\xff",
        b"Root=" + b"r" * 3000,
    ),
    b"X-Kubelambda-Request-Id": (
        b"c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
        b"C6AF9AC6-7B61-11E6-9A41-93E8DEADBEEF",
        b"../../etc",
    ),
    b"Content-Type": (b"application/json", b"text/plain; charset=latin-1", b"\x00"),
    b"Authorization": (
        b"AWS4-HMAC-SHA256 Credential=x/20240101/us-east-1/lambda/aws4_request, "
        b"SignedHeaders=host, Signature=00",
        b"Bearer \xff",
    ),
    b"X-Amz-Date": (b"20240101T000000Z", b"yesterday"),
}


HEADER_LINES = [
    b"%s: %s" % (name, value) for name, values in HEADER_VALUES.items() for value in values
]
INVOKE_HEADERS = st.tuples(
    st.sampled_from(
        (
            (),
            (b"X-Amz-Invocation-Type: RequestResponse",),
            (b"X-Amz-Invocation-Type: Event",),
            (b"X-Amz-Invocation-Type: DryRun",),
            (b"X-Amz-Invocation-Type: event",),
            (b"X-Amz-Invocation-Type: ",),
            (b"X-Amz-Invocation-Type: DryRun", b"X-Amz-Invocation-Type: Event"),
            (b"X-Amz-Invocation-Type: \xff",),
        )
    ),
    st.lists(st.sampled_from(HEADER_LINES), max_size=3),
).map(lambda parts: [*parts[0], *parts[1]])


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children),
    max_leaves=10,
)
BODIES = st.one_of(
    st.just(b""),
    JSON.map(lambda value: json.dumps(value).encode()),
    st.sampled_from(
        (
            b"{",
            b"not json",
            b"\xff\xfe{}",
            b"\xef\xbb\xbf{}",
            b'{"a": "\\ud800"}',
            b'"\xed\xa0\x80"',
            b"NaN",
            b"[" * 5000,
            b"{}" * 2,
            b"\x00",
        )
    ),
    # Just over Lambda's Event (256 KiB) and synchronous (6 MB) limits.
    st.sampled_from((262_145, 6_291_457)).map(lambda size: b'"' + b"x" * (size - 2) + b'"'),
    st.binary(max_size=64),
)


QUERIES = st.one_of(
    st.just(b""),
    QUALIFIERS.map(lambda q: b"?Qualifier=" + quote(q).encode()),
    st.sampled_from(
        (
            b"?Qualifier=1&Qualifier=live",
            b"?Qualifier",
            b"?Qualifier=%ff",
            b"?Qualifier=%24LATEST",
            b"?qualifier=1",
            b"?&&==",
        )
    ),
)
INVOKE_METHODS = methods(b"POST")


@st.composite
def invoke_requests(draw: st.DrawFn) -> tuple[Fuzzed, str | None]:
    """A fuzzed Invoke request and the function it could legitimately reach (or None)."""
    name, ref = draw(FUNCTION_REFS)
    namespace = draw(NAMESPACE_CHOICES)
    if namespace == HOME:
        namespace = None if name != "beta" else NAMESPACES[name]
    path = edited(invocation_path(ref, namespace), draw(EDITS))
    target = path + draw(QUERIES)
    fuzzed = build_request(
        draw(MALFORMATIONS), draw(INVOKE_METHODS), target, draw(INVOKE_HEADERS), draw(BODIES)
    )
    # Only the namespace a function lives in can reach it (default: no prefix or "default").
    home = NAMESPACES.get(name)
    reachable = name if home is not None and (namespace or "default") == home else None
    return fuzzed, reachable


# --- judging answers ------------------------------------------------------------------------


def secrets_in(response: RawResponse) -> set[str]:
    return {name for name, secret in SECRETS.items() if secret.encode() in response.body}


def check_answer(response: RawResponse, allowed: set[str], method: bytes) -> None:
    """A function's own answer (one of ``allowed``), or a documented error."""
    leaked = secrets_in(response) - allowed
    assert not leaked, f"another function's answer: {leaked}"
    if method == b"HEAD":  # never the Invoke operation: only the head of an error
        assert response.body == b""
        assert response.status in (FRAMING_ERRORS.keys() | {404, 405}), response
        return
    if response.status in (200, 202, 204) or response.header("x-amzn-errortype") is not None:
        assert response.header("x-amzn-requestid"), response
    if response.status == 200:
        assert secrets_in(response), "a 200 that is no function's answer"
        return
    if response.status in (202, 204):  # Event queued, DryRun
        assert response.body == b""
        return
    error_type = response.header("x-amzn-errortype")
    if error_type is not None:
        assert response.status in LAMBDA_ERROR_STATUSES, response
        assert response.header("content-type") == "application/json"
        body = response.json()
        assert body["Type"] == ("Service" if response.status >= 500 else "User"), body
        assert isinstance(body["message"], str), body
        assert ("Reason" in body) == (response.status == 429), body
        return
    if response.header("apigw-requestid") is not None:
        # Not an Invoke API path: the HTTP APIs' answer (there is no default API here).
        assert (response.status, response.json()) == (404, {"message": "Not Found"})
        return
    assert response.status in FRAMING_ERRORS, response
    assert response.json() == FRAMING_ERRORS[response.status]
    assert response.header("connection") == "close"


def check_still_serving(gateway: RunningGateway) -> None:
    for name, namespace in NAMESPACES.items():
        data = request(b"POST", invocation_path(name, namespace), body=b"{}")
        (response,) = exchange(gateway.gateway.port, data, [b"POST"])
        assert response.status == 200, response
        assert secrets_in(response) == {name}


# --- the fuzz tests -------------------------------------------------------------------------


@FUZZ_SETTINGS
@given(case=invoke_requests(), pipelined=st.booleans())
def test_invoke_api_answers_only_documented_shapes(
    gateway: RunningGateway,
    crash_log: CrashLog,
    case: tuple[Fuzzed, str | None],
    pipelined: bool,
) -> None:
    fuzzed, reachable = case
    data, methods = fuzzed.data, list(fuzzed.methods)
    if pipelined:  # a valid request right behind it, on the same connection
        data += request(b"POST", invocation_path("alpha"), body=b"{}")
        methods.append(b"POST")
    crash_log.take()  # what an earlier (failing) example left
    responses = exchange(gateway.gateway.port, data, methods)
    note(f"answers: {responses!r}")
    for response in responses:  # --hypothesis-show-statistics shows what the fuzzing reached
        event(f"{response.status} {response.header('x-amzn-errortype') or ''}")
    allowed = {reachable} if reachable else set()
    if fuzzed.framed:
        assert len(responses) == len(methods)
        check_answer(responses[0], allowed, methods[0])
        if pipelined:
            assert responses[1].status == 200, responses[1]
            assert secrets_in(responses[1]) == {"alpha"}
    else:
        for response, method in zip(responses, methods, strict=False):
            check_answer(response, allowed | ({"alpha"} if pipelined else set()), method)
    assert crash_log.take() == []
    check_still_serving(gateway)


def test_head_answer_has_no_body(gateway: RunningGateway) -> None:
    """Regression: a HEAD answer carried its body, which a client read as the next answer."""
    data = request(b"HEAD", b"/healthz") + request(b"HEAD", invocation_path("alpha"))
    data += request(b"GET", b"/healthz")
    responses = exchange(gateway.gateway.port, data, [b"HEAD", b"HEAD", b"GET"])
    assert [(r.status, r.body) for r in responses] == [
        (200, b""),
        (405, b""),
        (200, b'{"status":"ok"}'),
    ]
    assert responses[0].header("content-length") == "15"


def test_half_closed_connection_gets_its_answers(gateway: RunningGateway) -> None:
    """Regression: a client that half-closed after its request got no answer at all."""
    data = request(b"POST", invocation_path("alpha"), body=b"{}") + request(
        b"POST", invocation_path("beta", "team-b"), body=b"{}"
    )
    responses = exchange(gateway.gateway.port, data, [b"POST", b"POST"])
    assert [secrets_in(r) for r in responses] == [{"alpha"}, {"beta"}]
    assert responses[-1].header("connection") == "close"


@pytest.mark.parametrize(
    "head",
    [
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        b"CONNECT 127.0.0.1:80 HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
)
def test_upgrade_gets_one_answer_then_close(gateway: RunningGateway, head: bytes) -> None:
    """Regression: a protocol switch was answered twice (its own answer and a 400)."""
    responses = exchange(gateway.gateway.port, head + b"\x16\x03\x01 not http", [b"GET"])
    assert len(responses) == 1
    assert responses[0].header("connection") == "close"
