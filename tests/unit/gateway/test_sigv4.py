"""SigV4 verification of Invoke API calls, against requests signed by the real botocore.

Most requests come from a real ``boto3.client("lambda")``: a ``before-send`` hook captures the
prepared request (what would go on the wire) and answers it with a fake 200, and the request is
turned into the gateway's ``Request`` as the HTTP server would parse it. Every test that expects
a call to pass also checks that a forged variant is refused, so none would pass against a
verifier that accepts everything.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSPreparedRequest, AWSRequest, AWSResponse
from botocore.credentials import Credentials
from botocore.utils import percent_encode_sequence
from hypothesis import given
from hypothesis import strategies as st

from kubelambda.gateway.httpserver import Request, Response
from kubelambda.gateway.sigv4 import (
    INVALID_TOKEN,
    MISSING_TOKEN,
    SIGNATURE_MISMATCH,
    SigV4Verifier,
    canonical_query,
    canonical_uri,
)

KEY_ID = "AKIDEXAMPLE0000001"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
KEYS = {KEY_ID: SECRET}
ENDPOINT = "http://gw:8080"
ARN = "arn:aws:lambda:us-east-1:000000000000:function:hello"
ENCODED_ARN = "arn%3Aaws%3Alambda%3Aus-east-1%3A000000000000%3Afunction%3Ahello"


# --- requests as boto3 sends them, as the gateway parses them ------------------------------


class _FakeRaw:
    def stream(self, *args: Any, **kwargs: Any) -> Iterator[bytes]:
        yield b"{}"


@functools.cache
def _client(endpoint: str, region: str, key_id: str, secret: str, token: str | None) -> Any:
    client = boto3.client(
        "lambda",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        aws_session_token=token,
    )
    client.meta.events.register("before-send", _capture)
    return client


_captured: list[AWSPreparedRequest] = []


def _capture(request: AWSPreparedRequest, **kwargs: Any) -> AWSResponse:
    _captured.append(request)
    return AWSResponse(request.url, 200, {}, _FakeRaw())


def to_gateway(
    method: str, url: str, headers: list[tuple[str, str | bytes]], body: bytes | None
) -> Request:
    """What the gateway's HTTP server makes of the request: the raw target, lower-case header
    names, repeated headers comma-joined (and kept one by one), and the Host header urllib3
    adds (botocore signs the same value, derived from the URL)."""
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    host = parts.hostname or ""
    if parts.port is not None and parts.port != {"http": 80, "https": 443}[parts.scheme]:
        host = f"{host}:{parts.port}"
    lines = [("host", host.encode())] + [
        (name.lower(), value if isinstance(value, bytes) else value.encode())
        for name, value in headers
    ]
    joined: dict[bytes, bytes] = {}
    repeated: dict[bytes, list[bytes]] = {}
    for name, value in lines:
        key = name.encode()
        if key in joined:
            repeated.setdefault(key, [joined[key]]).append(value)
            joined[key] = joined[key] + b"," + value
        else:
            joined[key] = value
    request = Request(method.encode(), target.encode(), joined, repeated=repeated or None)
    request.body = body or b""
    return request


def boto3_invoke(
    endpoint: str = ENDPOINT,
    region: str = "eu-west-1",
    key_id: str = KEY_ID,
    secret: str = SECRET,
    token: str | None = None,
    **invoke: Any,
) -> tuple[Request, AWSPreparedRequest]:
    """The request a real boto3 lambda client sends for ``invoke(**invoke)``."""
    invoke.setdefault("FunctionName", "hello")
    _captured.clear()
    _client(endpoint, region, key_id, secret, token).invoke(**invoke)
    (prepared,) = _captured
    body = prepared.body
    assert body is None or isinstance(body, bytes)
    request = to_gateway(prepared.method, prepared.url, list(prepared.headers.items()), body)
    return request, prepared


def sign(
    url: str,
    body: bytes = b"{}",
    headers: Mapping[str, str] | None = None,
    *,
    service: str = "lambda",
    region: str = "eu-west-1",
    secret: str = SECRET,
    method: str = "POST",
    extra: list[tuple[str, str]] | None = None,
) -> Request:
    """A request signed by ``botocore.auth.SigV4Auth`` directly (for what boto3 never sends:
    another service's scope, repeated or oddly spaced headers); ``extra`` headers are signed
    too, repeated names kept."""
    aws = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
    for name, value in extra or []:
        aws.headers[name] = value  # appends: a repeated header
    SigV4Auth(Credentials(KEY_ID, secret), service, region).add_auth(aws)
    return to_gateway(method, url, list(aws.headers.items()), body)


def signed_at(request: Request) -> float:
    moment = datetime.strptime(request.headers[b"x-amz-date"].decode(), "%Y%m%dT%H%M%SZ")
    return moment.replace(tzinfo=UTC).timestamp()


def stamp(epoch: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(epoch))


def verifier(
    request: Request | None = None, keys: Mapping[str, str] = KEYS, offset: float = 0.0
) -> SigV4Verifier:
    """A verifier whose clock reads the request's signing time plus ``offset``."""
    base = signed_at(request) if request is not None else time.time()
    return SigV4Verifier(lambda: keys, now=lambda: base + offset)


def copy(request: Request, **changes: Any) -> Request:
    headers = dict(request.headers)
    headers.update(changes.pop("headers", {}))
    for name in changes.pop("drop", ()):
        headers.pop(name, None)
    copied = Request(
        changes.pop("method", request.method),
        changes.pop("url", request.url),
        headers,
        repeated=request.repeated,
    )
    copied.body = changes.pop("body", request.body)
    assert not changes
    return copied


def forged_signature(request: Request) -> Request:
    """The same request, one hex digit of its signature changed."""
    authorization = request.headers[b"authorization"]
    last = authorization[-1:]
    return copy(
        request,
        headers={b"authorization": authorization[:-1] + (b"0" if last != b"0" else b"1")},
    )


def assert_refused(response: Response | None, status: int, code: str, message: str) -> None:
    assert response is not None, "the call was let through"
    assert response.status == status
    headers = dict(line.split(": ", 1) for line in response.headers.decode().split("\r\n") if line)
    assert headers["x-amzn-ErrorType"] == code
    assert headers["x-amzn-RequestId"]
    assert headers["Content-Type"] == "application/json"
    assert json.loads(response.body) == {"Type": "User", "message": message}


def assert_passes(check: SigV4Verifier, request: Request) -> None:
    assert check.authenticate(request, "default") is None
    # ...and the verifier does verify: the same call with a forged signature is refused.
    assert_refused(
        check.authenticate(forged_signature(request), "default"),
        403,
        "InvalidSignatureException",
        SIGNATURE_MISMATCH,
    )


# --- calls that pass --------------------------------------------------------------------------


INVOCATIONS: list[dict[str, Any]] = [
    {"Payload": b'{"hello": "world"}'},
    {"Payload": b""},
    {},  # no payload at all
    {"Payload": bytes(range(256)) * 4},  # binary, 1 KiB
    {"Payload": b'{"n": 1}', "Qualifier": "$LATEST"},
    {"Payload": b'{"n": 1}', "Qualifier": "prod"},
    {"Payload": b'{"n": 1}', "Qualifier": "7"},
    {"FunctionName": ARN, "Payload": b"{}"},
    {"FunctionName": ARN, "Payload": b"{}", "Qualifier": "prod"},
    {"FunctionName": "hello:prod", "Payload": b"{}"},
    {"FunctionName": "000000000000:function:hello", "Payload": b"{}"},
    {"Payload": b'{"a": 1}', "InvocationType": "Event"},
    {"Payload": b"{}", "InvocationType": "DryRun"},
    {"Payload": b"{}", "LogType": "Tail"},
    {
        "Payload": b"{}",
        "ClientContext": "eyJjdXN0b20iOnsiYSI6IDF9fQ==",
        "InvocationType": "RequestResponse",
        "LogType": "Tail",
    },
]


@pytest.mark.parametrize("invoke", INVOCATIONS)
@pytest.mark.parametrize(
    "endpoint", [ENDPOINT, f"{ENDPOINT}/namespaces/team-a", "http://gateway.example"]
)
@pytest.mark.parametrize("region", ["eu-west-1", "us-east-1", "ap-southeast-2"])
def test_calls_signed_by_boto3_pass(invoke: dict[str, Any], endpoint: str, region: str) -> None:
    request, _ = boto3_invoke(endpoint, region, **invoke)
    assert_passes(verifier(request), request)


def test_the_function_arn_is_percent_encoded_in_the_path_as_boto3_sends_it() -> None:
    request, prepared = boto3_invoke(
        f"{ENDPOINT}/namespaces/team-a", FunctionName=ARN, Qualifier="$LATEST"
    )
    assert prepared.url == (
        f"{ENDPOINT}/namespaces/team-a/2015-03-31/functions/{ENCODED_ARN}/invocations"
        "?Qualifier=%24LATEST"
    )
    assert (
        request.url
        == (
            f"/namespaces/team-a/2015-03-31/functions/{ENCODED_ARN}/invocations?Qualifier=%24LATEST"
        ).encode()
    )
    assert b"x-amz-date" in request.headers
    assert_passes(verifier(request), request)


def test_headers_added_after_signing_do_not_matter() -> None:
    request, _ = boto3_invoke(Payload=b"{}")
    signed = request.headers[b"authorization"].split(b"SignedHeaders=")[1].split(b",")[0]
    assert b"x-amzn-trace-id" not in signed.split(b";")
    assert b"user-agent" not in signed.split(b";")
    added = copy(
        request,
        headers={
            b"x-amzn-trace-id": b"Root=1-5759e988-bd862e3fe1be46a994272793",
            b"user-agent": b"something else",
            b"x-forwarded-for": b"10.0.0.1",
        },
    )
    assert_passes(verifier(request), added)


def test_repeated_and_oddly_spaced_signed_headers_are_canonicalised_as_botocore_does() -> None:
    request = sign(
        f"{ENDPOINT}/2015-03-31/functions/hello/invocations",
        headers={"X-Amz-Client-Context": "a   b \t c"},
        extra=[("X-Custom", "one"), ("X-Custom", "two  three")],
    )
    assert request.repeated == {b"x-custom": [b"one", b"two  three"]}
    assert b"x-custom" in request.headers[b"authorization"]
    assert_passes(verifier(request), request)


def test_dot_segments_and_double_slashes_are_normalised_before_signing() -> None:
    request = sign(f"{ENDPOINT}/x/../2015-03-31//functions/./hello/invocations")
    assert request.url == b"/x/../2015-03-31//functions/./hello/invocations"
    assert_passes(verifier(request), request)


def test_a_query_botocore_did_not_encode_itself_is_encoded_for_the_signature() -> None:
    # Other SDKs sign the decoded parameters; the raw query may encode them differently.
    request = sign(f"{ENDPOINT}/2015-03-31/functions/hello/invocations?Qualifier=%24LATEST&b=c")
    assert_passes(verifier(request), copy(request, url=request.url.replace(b"&b=c", b"&b=%63")))


def test_the_payload_hash_header_is_accepted_when_it_is_the_bodys() -> None:
    body = b'{"k": "v"}'
    digest = hashlib.sha256(body).hexdigest()
    request = sign(
        f"{ENDPOINT}/2015-03-31/functions/hello/invocations",
        body,
        headers={"X-Amz-Content-SHA256": digest},
    )
    assert_passes(verifier(request), request)
    # The header is no stand-in for the body: a body swapped under it does not pass...
    assert_refused(
        verifier(request).authenticate(copy(request, body=b'{"k": "w"}'), "default"),
        403,
        "InvalidSignatureException",
        SIGNATURE_MISMATCH,
    )
    # ...nor one swapped together with the (signed) hash header.
    other = b'{"k": "w"}'
    swapped = copy(
        request,
        body=other,
        headers={b"x-amz-content-sha256": hashlib.sha256(other).hexdigest().encode()},
    )
    assert_refused(
        verifier(request).authenticate(swapped, "default"),
        403,
        "InvalidSignatureException",
        SIGNATURE_MISMATCH,
    )


def test_a_proxy_style_absolute_target_is_verified_on_its_path() -> None:
    request, _ = boto3_invoke(Payload=b"{}", Qualifier="prod")
    absolute = copy(request, url=b"http://gw:8080" + request.url)
    assert_passes(verifier(request), absolute)


# --- calls that are refused -------------------------------------------------------------------


def test_a_tampered_body_is_refused() -> None:
    request, _ = boto3_invoke(Payload=b'{"amount": 1}')
    tampered = copy(request, body=b'{"amount": 9}')
    assert_refused(
        verifier(request).authenticate(tampered, "default"),
        403,
        "InvalidSignatureException",
        SIGNATURE_MISMATCH,
    )
    emptied = copy(request, body=b"")
    assert_refused(
        verifier(request).authenticate(emptied, "default"),
        403,
        "InvalidSignatureException",
        SIGNATURE_MISMATCH,
    )


@pytest.mark.parametrize(
    "tamper",
    [
        {"headers": {b"x-amz-invocation-type": b"RequestResponse"}},
        {"headers": {b"x-amz-client-context": b"eyJ9"}},
        {"headers": {b"host": b"other:8080"}},
        {"url": b"/2015-03-31/functions/other/invocations?Qualifier=prod"},
        {"url": b"/2015-03-31/functions/hello/invocations?Qualifier=dev"},
        {"url": b"/2015-03-31/functions/hello/invocations"},
        {"url": b"/namespaces/team-b/2015-03-31/functions/hello/invocations?Qualifier=prod"},
        {"method": b"PUT"},
        {"drop": [b"x-amz-client-context"]},
    ],
)
def test_a_tampered_signed_part_is_refused(tamper: dict[str, Any]) -> None:
    request, _ = boto3_invoke(
        Payload=b"{}", Qualifier="prod", InvocationType="Event", ClientContext="eyJhIjoxfQ=="
    )
    assert verifier(request).authenticate(request, "default") is None
    assert_refused(
        verifier(request).authenticate(copy(request, **tamper), "default"),
        403,
        "InvalidSignatureException",
        SIGNATURE_MISMATCH,
    )


def test_a_wrong_secret_is_refused() -> None:
    request, _ = boto3_invoke(secret="not-the-secret", Payload=b"{}")
    assert_refused(
        verifier(request).authenticate(request, "default"),
        403,
        "InvalidSignatureException",
        SIGNATURE_MISMATCH,
    )


def test_an_unknown_access_key_id_is_refused() -> None:
    request, _ = boto3_invoke(key_id="AKIDUNKNOWN", Payload=b"{}")
    for keys in (KEYS, {}):
        assert_refused(
            verifier(request, keys).authenticate(request, "default"),
            403,
            "UnrecognizedClientException",
            INVALID_TOKEN,
        )


def test_temporary_credentials_are_refused() -> None:
    request, _ = boto3_invoke(token="FwoGZXIvYXdzEBYaDExample", Payload=b"{}")
    assert request.headers[b"x-amz-security-token"] == b"FwoGZXIvYXdzEBYaDExample"
    assert_refused(
        verifier(request).authenticate(request, "default"),
        403,
        "UnrecognizedClientException",
        INVALID_TOKEN,
    )


def test_an_expired_signature_is_refused() -> None:
    request, _ = boto3_invoke(Payload=b"{}")
    amz_date = request.headers[b"x-amz-date"].decode()
    assert verifier(request, offset=299).authenticate(request, "default") is None
    now = signed_at(request) + 301
    assert_refused(
        verifier(request, offset=301).authenticate(request, "default"),
        403,
        "InvalidSignatureException",
        f"Signature expired: {amz_date} is now earlier than {stamp(now - 300)} "
        f"({stamp(now)} - 5 min.)",
    )


def test_a_signature_from_the_future_is_refused() -> None:
    request, _ = boto3_invoke(Payload=b"{}")
    amz_date = request.headers[b"x-amz-date"].decode()
    assert verifier(request, offset=-299).authenticate(request, "default") is None
    now = signed_at(request) - 301
    assert_refused(
        verifier(request, offset=-301).authenticate(request, "default"),
        403,
        "InvalidSignatureException",
        f"Signature not yet current: {amz_date} is still later than {stamp(now + 300)} "
        f"({stamp(now)} + 5 min.)",
    )


def test_the_allowed_skew_is_configurable() -> None:
    request, _ = boto3_invoke(Payload=b"{}")
    base = signed_at(request)
    strict = SigV4Verifier(lambda: KEYS, max_skew_s=60, now=lambda: base + 61)
    response = strict.authenticate(request, "default")
    assert response is not None
    assert b"- 1 min.)" in response.body


def test_an_unsigned_call_is_refused() -> None:
    request, _ = boto3_invoke(Payload=b"{}")
    unsigned = copy(request, drop=[b"authorization", b"x-amz-date"])
    assert_refused(
        verifier(request).authenticate(unsigned, "default"),
        403,
        "MissingAuthenticationTokenException",
        MISSING_TOKEN,
    )


@pytest.mark.parametrize(
    ("authorization", "message"),
    [
        (
            b"Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig",
            "Unsupported Authorization type 'Bearer': only AWS4-HMAC-SHA256 "
            "(AWS Signature Version 4) is accepted.",
        ),
        (
            b"AWS AKIDEXAMPLE:frJIUN8DYpKDtOLCwo//yllqDzg=",
            "Unsupported Authorization type 'AWS': only AWS4-HMAC-SHA256 "
            "(AWS Signature Version 4) is accepted.",
        ),
        (
            b"AWS4-HMAC-SHA256 garbage",
            "'garbage' not a valid key=value pair (missing equal-sign) in Authorization "
            "header: 'AWS4-HMAC-SHA256 garbage'.",
        ),
        (
            b"AWS4-HMAC-SHA256",
            "Authorization header requires 'Credential' parameter. Authorization header "
            "requires 'Signature' parameter. Authorization header requires 'SignedHeaders' "
            "parameter. Authorization=AWS4-HMAC-SHA256",
        ),
        (
            b"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE0000001/20240101/eu-west-1/lambda/"
            b"aws4_request, SignedHeaders=host;x-amz-date",
            "Authorization header requires 'Signature' parameter. Authorization="
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE0000001/20240101/eu-west-1/lambda/"
            "aws4_request, SignedHeaders=host;x-amz-date",
        ),
        (
            b"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE0000001/eu-west-1/lambda, "
            b"SignedHeaders=host;x-amz-date, Signature=00",
            "Credential must have exactly 5 slash-delimited elements, e.g. "
            "keyid/date/region/service/term, got 'AKIDEXAMPLE0000001/eu-west-1/lambda'",
        ),
    ],
)
def test_a_malformed_authorization_header_is_refused(authorization: bytes, message: str) -> None:
    request, _ = boto3_invoke(Payload=b"{}")
    garbled = copy(request, headers={b"authorization": authorization})
    assert_refused(
        verifier(request).authenticate(garbled, "default"),
        403,
        "IncompleteSignatureException",
        message,
    )


def test_a_missing_or_malformed_date_is_refused() -> None:
    request, _ = boto3_invoke(Payload=b"{}")
    authorization = request.headers[b"authorization"].decode()
    assert_refused(
        verifier(request).authenticate(copy(request, drop=[b"x-amz-date"]), "default"),
        403,
        "IncompleteSignatureException",
        "Authorization header requires existence of a 'X-Amz-Date' header. "
        f"Authorization={authorization}",
    )
    for bad in (b"2024-01-01T00:00:00Z", b"20241301T000000Z", b"yesterday"):
        assert_refused(
            verifier(request).authenticate(copy(request, headers={b"x-amz-date": bad}), "x"),
            403,
            "IncompleteSignatureException",
            f"Date must be in ISO-8601 'basic format'. Got '{bad.decode()}'. "
            "See http://en.wikipedia.org/wiki/ISO_8601",
        )


def test_host_and_date_must_be_signed() -> None:
    request, _ = boto3_invoke(Payload=b"{}")
    authorization = request.headers[b"authorization"]
    for signed, message in (
        (b"x-amz-date", "'Host' must be a 'SignedHeader' in the AWS Authorization."),
        (b"host", "'X-Amz-Date' must be a 'SignedHeader' in the AWS Authorization."),
    ):
        narrowed = authorization.replace(
            b"SignedHeaders=host;x-amz-date", b"SignedHeaders=" + signed
        )
        assert narrowed != authorization
        assert_refused(
            verifier(request).authenticate(
                copy(request, headers={b"authorization": narrowed}), "default"
            ),
            403,
            "IncompleteSignatureException",
            message,
        )


def test_another_services_scope_is_refused() -> None:
    url = f"{ENDPOINT}/2015-03-31/functions/hello/invocations"
    request = sign(url, service="execute-api")
    assert_refused(
        verifier(request).authenticate(request, "default"),
        403,
        "InvalidSignatureException",
        "Credential should be scoped to correct service: 'lambda'. ",
    )
    # The same request verifies where that service is the one expected.
    other = SigV4Verifier(lambda: KEYS, service="execute-api", now=lambda: signed_at(request))
    assert other.authenticate(request, "default") is None


def test_a_scope_dated_another_day_is_refused() -> None:
    request, _ = boto3_invoke(Payload=b"{}")
    amz_date = request.headers[b"x-amz-date"].decode()
    day = amz_date[:8]
    elsewhere = "19991231"
    authorization = request.headers[b"authorization"].replace(day.encode(), elsewhere.encode())
    assert_refused(
        verifier(request).authenticate(
            copy(request, headers={b"authorization": authorization}), "default"
        ),
        403,
        "InvalidSignatureException",
        "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from "
        f"HTTP: '{elsewhere}' != '{day}', from '{amz_date}'.",
    )


def test_a_bad_terminator_or_empty_region_is_refused() -> None:
    request, _ = boto3_invoke(Payload=b"{}")
    authorization = request.headers[b"authorization"]
    for old, new, message in (
        (
            b"/aws4_request",
            b"/aws5_request",
            "Credential should be scoped with a valid terminator: 'aws4_request', "
            "not 'aws5_request'.",
        ),
        (b"/eu-west-1/", b"//", "Credential should be scoped to a valid region, not ''. "),
    ):
        changed = copy(request, headers={b"authorization": authorization.replace(old, new)})
        assert_refused(
            verifier(request).authenticate(changed, "default"),
            403,
            "InvalidSignatureException",
            message,
        )


def test_presigned_urls_are_not_supported() -> None:
    request, _ = boto3_invoke(Payload=b"{}")
    presigned = copy(
        request,
        url=request.url + b"?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=00",
        drop=[b"authorization"],
    )
    assert_refused(
        verifier(request).authenticate(presigned, "default"),
        403,
        "IncompleteSignatureException",
        "Signatures in the query string (presigned URLs) are not supported: sign the request "
        "with an Authorization header.",
    )


def test_an_unsigned_payload_is_refused() -> None:
    request = sign(
        f"{ENDPOINT}/2015-03-31/functions/hello/invocations",
        headers={"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"},
    )
    assert_refused(
        verifier(request).authenticate(request, "default"),
        403,
        "InvalidSignatureException",
        "X-Amz-Content-SHA256 'UNSIGNED-PAYLOAD' is not accepted: the request body must be signed.",
    )


@pytest.mark.parametrize(
    ("invocation_type", "limit"), [("RequestResponse", 6_291_456), ("Event", 262_144)]
)
def test_a_body_too_large_to_read_is_answered_413_once_key_and_date_are_good(
    invocation_type: str, limit: int
) -> None:
    request, _ = boto3_invoke(Payload=b"{}", InvocationType=invocation_type)
    dropped = copy(request, body=b"")
    dropped.too_large = True
    assert_refused(
        verifier(request).authenticate(dropped, "default"),
        413,
        "RequestEntityTooLargeException",
        f"Request must be smaller than {limit} bytes for the InvokeFunction operation",
    )
    # Without a known key, it is the key that is refused.
    assert_refused(
        verifier(request, keys={}).authenticate(dropped, "default"),
        403,
        "UnrecognizedClientException",
        INVALID_TOKEN,
    )


# --- keys -------------------------------------------------------------------------------------


def test_keys_are_asked_on_every_call_and_rotation_is_honoured() -> None:
    current: dict[str, str] = dict(KEYS)
    asked = 0

    def keys() -> Mapping[str, str]:
        nonlocal asked
        asked += 1
        return current

    old, _ = boto3_invoke(Payload=b"{}")
    new, _ = boto3_invoke(key_id="AKIDNEW", secret="new-secret", Payload=b"{}")
    check = SigV4Verifier(keys, now=lambda: signed_at(old))
    assert check.authenticate(old, "default") is None
    assert_refused(
        check.authenticate(new, "default"), 403, "UnrecognizedClientException", INVALID_TOKEN
    )

    current = {"AKIDNEW": "new-secret"}  # rotated: the old key is gone
    assert check.authenticate(new, "default") is None
    assert_refused(
        check.authenticate(old, "default"), 403, "UnrecognizedClientException", INVALID_TOKEN
    )

    current = {"AKIDNEW": "changed-secret"}  # same id, another secret: no stale signing key
    assert_refused(
        check.authenticate(new, "default"), 403, "InvalidSignatureException", SIGNATURE_MISMATCH
    )
    assert asked == 5


# --- canonical forms, against botocore's own ----------------------------------------------------

_PATH_CHARS = st.sampled_from([*"abcXYZ019-_.~/:%$@!*'()+,;= ", "é", "..", "./", "//"])


@given(st.lists(_PATH_CHARS, max_size=30).map("".join))
def test_the_canonical_uri_is_botocores(path: str) -> None:
    path = "/" + path
    signer = SigV4Auth(Credentials(KEY_ID, SECRET), "lambda", "eu-west-1")
    # What arrives is what botocore put in the URL: the same characters, UTF-8 on the wire.
    assert canonical_uri(path.encode()) == signer._normalize_url_path(path)
    request = sign(f"{ENDPOINT}{path}")
    assert request.url == path.encode()
    assert_passes(verifier(request), request)


@given(st.lists(st.tuples(st.text(max_size=8), st.text(max_size=8)), max_size=5))
def test_the_canonical_query_is_botocores(params: list[tuple[str, str]]) -> None:
    signer = SigV4Auth(Credentials(KEY_ID, SECRET), "lambda", "eu-west-1")
    raw = percent_encode_sequence(params)
    assert canonical_query(raw.encode()) == signer._canonical_query_string_params(params)
    request = sign(f"{ENDPOINT}/2015-03-31/functions/hello/invocations?{raw}")
    assert_passes(verifier(request), request)
