"""SigV4 through a real gateway: boto3 signs, the gateway checks against a namespace's access
keys (read through a fake API server), the invoker's internal token passes, the modes and a
failed read behave as documented, rotated keys take over."""

from __future__ import annotations

import base64
import time
import urllib.error
import urllib.request
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from kubelambda.gateway.access import ACCESS_KEYS_SECRET, KEYS_TTL_S, AccessKeyAuthenticator
from tests.unit.gateway.conftest import RunningGateway
from tests.unit.gateway.objects import add_function, add_slice


class FakeSecrets:
    """What the API server holds: namespace -> access keys (None: no Secret; an exception:
    the read fails)."""

    def __init__(self) -> None:
        self.keys: dict[str, dict[str, str] | Exception | None] = {}
        self.reads = 0

    async def read(self, namespace: str, name: str) -> dict[str, Any] | None:
        assert name == ACCESS_KEYS_SECRET
        self.reads += 1
        keys = self.keys.get(namespace)
        if isinstance(keys, Exception):
            raise keys
        if keys is None:
            return None
        return {k: base64.b64encode(v.encode()).decode() for k, v in keys.items()}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def gateway_with(
    start_gateway: Any, agents: Any, secrets: FakeSecrets, clock: Clock, mode: str = "namespaces"
) -> RunningGateway:
    authenticator = AccessKeyAuthenticator(secrets.read, clock, "internal-token", mode)
    gateway = start_gateway(authenticator=authenticator)
    port = agents().port

    def feed() -> None:
        add_function(gateway.table, "fn")
        add_slice(gateway.table, "fn", "$LATEST", ["127.0.0.1"], port=port, name="fn-latest")

    gateway.call(feed)
    return gateway


def client(gateway: RunningGateway, key_id: str, secret: str) -> Any:
    return boto3.client(
        "lambda",
        endpoint_url=gateway.url,
        config=Config(retries={"max_attempts": 0}),
        region_name="eu-central-1",
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
    )


def invoke(lam: Any) -> int:
    return int(lam.invoke(FunctionName="fn", Payload=b"{}")["StatusCode"])


def refused(lam: Any) -> tuple[int, str]:
    with pytest.raises(ClientError) as caught:
        lam.invoke(FunctionName="fn", Payload=b"{}")
    response = caught.value.response
    return response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Code"]


def raw_call(gateway: RunningGateway, headers: dict[str, str]) -> tuple[int, str]:
    request = urllib.request.Request(
        f"{gateway.url}/2015-03-31/functions/fn/invocations", b"{}", headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, ""
    except urllib.error.HTTPError as error:
        error.read()
        return error.code, str(error.headers.get("x-amzn-ErrorType"))


@pytest.fixture
def secrets() -> FakeSecrets:
    fake = FakeSecrets()
    fake.keys["default"] = {"AKIDGOOD": "good-secret"}
    return fake


def test_only_calls_signed_with_a_namespace_key_go_through(
    start_gateway: Any, agents: Any, secrets: FakeSecrets
) -> None:
    gateway = gateway_with(start_gateway, agents, secrets, Clock())
    assert invoke(client(gateway, "AKIDGOOD", "good-secret")) == 200
    assert refused(client(gateway, "AKIDGOOD", "bad-secret")) == (403, "InvalidSignatureException")
    assert refused(client(gateway, "AKIDOTHER", "good-secret")) == (
        403,
        "UnrecognizedClientException",
    )
    assert raw_call(gateway, {}) == (403, "MissingAuthenticationTokenException")
    # The keys were read once, not per call.
    assert secrets.reads == 1


def test_the_platforms_internal_token_stands_in_for_a_signature(
    start_gateway: Any, agents: Any, secrets: FakeSecrets
) -> None:
    gateway = gateway_with(start_gateway, agents, secrets, Clock())
    assert raw_call(gateway, {"X-Kubelambda-Internal-Token": "internal-token"}) == (200, "")
    assert raw_call(gateway, {"X-Kubelambda-Internal-Token": "guess"}) == (
        403,
        "MissingAuthenticationTokenException",
    )


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("namespaces", (200, "")), ("required", (403, "UnrecognizedClientException"))],
)
def test_a_namespace_without_keys_follows_the_mode(
    start_gateway: Any, agents: Any, mode: str, expected: tuple[int, str]
) -> None:
    gateway = gateway_with(start_gateway, agents, FakeSecrets(), Clock(), mode)
    assert raw_call(gateway, {}) == expected


def test_keys_that_cannot_be_read_refuse_calls_rather_than_skip_the_check(
    start_gateway: Any, agents: Any
) -> None:
    secrets = FakeSecrets()
    secrets.keys["default"] = RuntimeError("API server down")
    gateway = gateway_with(start_gateway, agents, secrets, Clock())
    assert raw_call(gateway, {}) == (503, "ServiceException")


def test_rotated_keys_take_over_after_the_ttl_and_a_failed_read_keeps_the_last(
    start_gateway: Any, agents: Any, secrets: FakeSecrets
) -> None:
    clock = Clock()
    gateway = gateway_with(start_gateway, agents, secrets, clock)
    old, new = client(gateway, "AKIDGOOD", "good-secret"), client(gateway, "AKIDNEW", "new")
    assert invoke(old) == 200
    secrets.keys["default"] = {"AKIDNEW": "new"}
    assert invoke(old) == 200  # within the TTL
    clock.now += KEYS_TTL_S + 1
    # The first call after the TTL is answered with the keys at hand while they are re-read.
    invoke(old)
    deadline = time.monotonic() + 5
    while secrets.reads < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    assert invoke(new) == 200
    assert refused(old) == (403, "UnrecognizedClientException")
    secrets.keys["default"] = RuntimeError("API server down")
    clock.now += KEYS_TTL_S + 1
    reads = secrets.reads
    # The re-reads fail: the keys last read still hold.
    for _ in range(3):
        assert invoke(new) == 200
        time.sleep(0.05)
    assert secrets.reads > reads
