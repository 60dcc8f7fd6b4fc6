"""SigV4 on the Invoke API, on the real cluster: a namespace holding access keys accepts only
calls boto3 signed with one of them, answers the others as Lambda does, still gets its async
events delivered (the invoker presents the platform's internal token), and picks up rotated
keys; a namespace without keys is unaffected."""

from __future__ import annotations

import base64
import http.client
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.e2e.kube import apply, gateway_url, kubectl, lambda_client, wait_until
from tests.e2e.test_async import RecordSink
from tests.e2e.test_runtimes import await_function, function

KEYS_SECRET = "kubelambda-access-keys"
CODE = """
def handler(event, context):
    return {"echo": event}
"""


@pytest.fixture(scope="module")
def signed_namespace() -> Iterator[str]:
    name = f"e2e-sigv4-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    set_keys(name, {"AKIDE2ETEST": "first-secret"})
    apply(
        function(
            "echo",
            {
                "runtime": "python3.11",
                "handler": "app.handler",
                "code": {"inline": {"app.py": CODE}},
            },
        ),
        name,
    )
    await_function(name, "echo")
    yield name
    kubectl("delete", "namespace", name, "--wait=false")


def set_keys(namespace: str, keys: dict[str, str]) -> None:
    data = {k: base64.b64encode(v.encode()).decode() for k, v in keys.items()}
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": KEYS_SECRET},
        "data": data,
    }
    kubectl("-n", namespace, "replace", "--force", "-f", "-", stdin=json.dumps(body))


_clients: list[Any] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    """Closed after each test: a client's pooled socket left to the garbage collector fails
    whichever test runs then."""
    yield
    while _clients:
        _clients.pop().close()


def client(namespace: str, key_id: str, secret: str) -> Any:
    lam = boto3.client(
        "lambda",
        endpoint_url=f"{gateway_url()}/namespaces/{namespace}",
        region_name="eu-west-1",
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 0}),
    )
    _clients.append(lam)
    return lam


def error_of(call: Any) -> tuple[int, str]:
    with pytest.raises(ClientError) as caught:
        call()
    response = caught.value.response
    return response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Code"]


def invoke(lam: Any, event: dict[str, Any], **kwargs: Any) -> Any:
    return lam.invoke(FunctionName="echo", Payload=json.dumps(event), **kwargs)


def test_a_call_signed_with_a_namespace_key_goes_through(signed_namespace: str) -> None:
    lam = client(signed_namespace, "AKIDE2ETEST", "first-secret")
    response = invoke(lam, {"n": 1})
    assert json.loads(response["Payload"].read()) == {"echo": {"n": 1}}
    # Qualifiers and ARNs are part of what is signed (the path and the query).
    response = invoke(lam, {"n": 2}, Qualifier="$LATEST")
    assert response["StatusCode"] == 200
    arn = "arn:aws:lambda:eu-west-1:000000000000:function:echo"
    response = lam.invoke(FunctionName=arn, Payload=b"{}")
    assert response["StatusCode"] == 200


def test_other_calls_get_lambdas_answers(signed_namespace: str) -> None:
    wrong_secret = client(signed_namespace, "AKIDE2ETEST", "not-the-secret")
    assert error_of(lambda: invoke(wrong_secret, {})) == (403, "InvalidSignatureException")
    unknown = client(signed_namespace, "AKIDUNKNOWN", "first-secret")
    assert error_of(lambda: invoke(unknown, {})) == (403, "UnrecognizedClientException")
    url = urlsplit(gateway_url())
    connection = http.client.HTTPConnection(url.hostname or "", url.port or 80, timeout=30)
    connection.request(
        "POST", f"/namespaces/{signed_namespace}/2015-03-31/functions/echo/invocations", b"{}"
    )
    unsigned = connection.getresponse()
    unsigned.read()
    connection.close()
    assert unsigned.status == 403
    assert unsigned.getheader("x-amzn-ErrorType") == "MissingAuthenticationTokenException"


def test_a_namespace_without_keys_takes_unsigned_calls() -> None:
    # Every other e2e module calls with made-up credentials; one check here, on the default
    # namespace's DryRun, keeps this module's claim honest.
    lam = lambda_client("default")
    _clients.append(lam)
    error = error_of(lambda: lam.invoke(FunctionName="nothing-here", InvocationType="DryRun"))
    assert error == (404, "ResourceNotFoundException")


def test_async_events_of_a_signed_namespace_are_delivered(
    signed_namespace: str, sink: RecordSink
) -> None:
    body = function(
        "echo-async",
        {
            "runtime": "python3.11",
            "handler": "app.handler",
            "code": {"inline": {"app.py": CODE}},
            "async": {"maximumRetryAttempts": 0, "onSuccess": {"url": sink.url}},
        },
    )
    apply(body, signed_namespace)
    await_function(signed_namespace, "echo-async")
    lam = client(signed_namespace, "AKIDE2ETEST", "first-secret")
    response = lam.invoke(FunctionName="echo-async", InvocationType="Event", Payload=b'{"a":1}')
    assert response["StatusCode"] == 202
    request_id = response["ResponseMetadata"]["RequestId"]
    record = wait_until(
        lambda: next(
            (r for r in sink.snapshot() if r["requestContext"]["requestId"] == request_id), None
        ),
        timeout=60,
        what="the event's success record",
    )
    assert record["responsePayload"] == {"echo": {"a": 1}}


def test_rotated_keys_take_effect(signed_namespace: str) -> None:
    set_keys(signed_namespace, {"AKIDE2ENEW": "second-secret"})
    new = client(signed_namespace, "AKIDE2ENEW", "second-secret")
    old = client(signed_namespace, "AKIDE2ETEST", "first-secret")

    def rotated() -> bool:
        try:
            invoke(new, {})
        except ClientError:
            return False
        return True

    started = time.monotonic()
    wait_until(rotated, timeout=60, what="the new key to be accepted")
    print(f"\nrotation took effect after {time.monotonic() - started:.1f} s")

    def old_refused() -> bool:
        try:
            invoke(old, {})
        except ClientError as error:
            return bool(error.response["Error"]["Code"] == "UnrecognizedClientException")
        return False

    wait_until(old_refused, timeout=60, what="the old key to be refused")
