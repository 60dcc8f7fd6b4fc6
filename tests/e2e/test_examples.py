"""Every example under examples/ on the real cluster, used the way its header comment says.

Each test applies the example's file(s) unchanged with ``kubectl apply -n <fresh namespace>``
(examples name no namespace), waits for Ready, then calls it as a user would: boto3 on the
gateway's Invoke API, or HTTP on ``/apis/<namespace>/<api>/...`` for ApiRoutes. Functions
scale to zero after ``idleSeconds`` (60 s by default), so the tests wait for the objects'
Ready condition, never for a pod, and the first call may be a cold start held by the gateway.
tests/unit/test_examples_valid.py checks that every manifest is named here.
"""

from __future__ import annotations

import http.client
import json
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from botocore.exceptions import ClientError

from tests.e2e.conftest import REPO_ROOT
from tests.e2e.kube import KubectlError, gateway_url, get, kubectl, lambda_client, wait_until
from tests.e2e.test_async import Dlq
from tests.e2e.test_cli import cli
from tests.e2e.test_runtimes import FUNCTION_LABEL, READY_TIMEOUT_S, is_ready

EXAMPLES = REPO_ROOT / "examples"
# The gateway learns of new functions and routes through its watches, and a first call may
# wait for a pod: answers of these kinds mean "not yet", not "wrong".
NOT_YET = ("ResourceNotFoundException", "ResourceNotReadyException")
FIRST_CALL_TIMEOUT_S = 120
ASYNC_TIMEOUT_S = 120
CANARY_CALLS = 400

HttpReply = tuple[int, dict[str, str], bytes]


# --- helpers -------------------------------------------------------------------------------


def apply_example(namespace: str, *files: str) -> None:
    """``kubectl apply -n NAMESPACE -f examples/FILE ...``, exactly as the headers say."""
    paths = [EXAMPLES / name for name in files]
    kubectl("apply", "-n", namespace, *[arg for path in paths for arg in ("-f", str(path))])


def await_ready(namespace: str, kind: str, name: str) -> None:
    """Ready=True for the object's current generation (with its status in the failure)."""
    try:
        wait_until(
            partial(is_ready, kind, name, namespace),
            READY_TIMEOUT_S,
            f"{kind} {namespace}/{name} Ready=True",
            interval=1,
        )
    except AssertionError as error:
        status = get(kind, name, namespace).get("status")
        pods = kubectl("get", "pods", "-n", namespace, "-o", "wide")
        raise AssertionError(f"{error}\nstatus: {status}\npods:\n{pods}") from None


def invoke(lam: Any, function: str, event: Any = None, **kwargs: Any) -> tuple[str, Any]:
    """(executed version, result) of a synchronous call that must succeed."""

    def attempt() -> dict[str, Any] | None:
        try:
            response: dict[str, Any] = lam.invoke(
                FunctionName=function, Payload=json.dumps(event or {}), **kwargs
            )
        except ClientError as error:
            if error.response["Error"]["Code"] in NOT_YET:
                return None
            raise
        return response

    response = wait_until(attempt, FIRST_CALL_TIMEOUT_S, f"an answer from {function}", interval=1)
    result = json.loads(response["Payload"].read())
    assert "FunctionError" not in response, result
    return str(response["ExecutedVersion"]), result


def http_call(method: str, path: str, body: bytes = b"", content_type: str = "") -> HttpReply:
    """One request to the gateway: (status, lower-cased headers, body)."""
    conn = http.client.HTTPConnection(gateway_url().removeprefix("http://"), timeout=60)
    try:
        headers = {"Content-Type": content_type} if content_type else {}
        conn.request(method, path, body=body or None, headers=headers)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def http_until(status: int, method: str, path: str, **kwargs: Any) -> HttpReply:
    """Calls until the answer has ``status`` (the route may not be served yet)."""

    replies: list[HttpReply] = []

    def attempt() -> HttpReply | None:
        replies.append(http_call(method, path, **kwargs))
        return replies[-1] if replies[-1][0] == status else None

    try:
        return wait_until(attempt, FIRST_CALL_TIMEOUT_S, f"{method} {path} to answer {status}", 1)
    except AssertionError as error:
        raise AssertionError(f"{error}\nlast answer: {replies[-1:]}") from None


def function_logs(namespace: str, function: str) -> str:
    """Everything the function's current pods printed (its runtime's container is "function")."""
    selector = f"{FUNCTION_LABEL}={function}"
    return kubectl(
        "logs", "-n", namespace, "-l", selector, "-c", "function", "--tail=-1", "--prefix"
    )


# --- hello-python.yaml, hello-python-route.yaml, hello-nodejs.yaml ---------------------------


def test_hello_python_and_its_route(namespace: str) -> None:
    apply_example(namespace, "hello-python.yaml", "hello-python-route.yaml")
    await_ready(namespace, "function", "hello-python")
    version, result = invoke(lambda_client(namespace), "hello-python", {"name": "examples"})
    assert version == "$LATEST"
    assert result["statusCode"] == 200, result
    assert json.loads(result["body"]) == {"message": "hello, examples", "function": "hello-python"}

    # The route belongs to the API "default": from any namespace, /apis/<ns>/default/hello.
    _, headers, body = http_until(200, "GET", f"/apis/{namespace}/default/hello?name=you")
    assert headers["content-type"] == "application/json"
    answer = json.loads(body)
    assert answer["message"].startswith("hello, "), answer
    assert answer["function"] == "hello-python"


def test_hello_nodejs(namespace: str) -> None:
    apply_example(namespace, "hello-nodejs.yaml")
    await_ready(namespace, "function", "hello-nodejs")
    _, result = invoke(lambda_client(namespace), "hello-nodejs", {"name": "examples"})
    assert result["statusCode"] == 200, result
    body = json.loads(result["body"])
    assert body["message"] == "hello, examples"
    assert body["function"] == "hello-nodejs"
    assert body["node"].startswith("v18."), body


# --- http-api.yaml ------------------------------------------------------------------------------


def test_http_api_with_path_parameters(namespace: str) -> None:
    apply_example(namespace, "http-api.yaml")
    await_ready(namespace, "function", "pets-api")
    api = f"/apis/{namespace}/petstore"

    _, headers, body = http_until(200, "GET", f"{api}/pets/1")
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {"id": "1", "name": "Rex", "kind": "dog"}

    pet = json.dumps({"name": "Tom", "kind": "cat"}).encode()
    _, headers, body = http_until(
        201, "POST", f"{api}/pets", body=pet, content_type="application/json"
    )
    assert headers["location"] == "/pets/Tom"
    assert json.loads(body) == {"created": {"name": "Tom", "kind": "cat"}}
    # curl -d's default form encoding reaches the function base64-encoded; it decodes it.
    _, _, body = http_until(
        201, "POST", f"{api}/pets", body=pet, content_type="application/x-www-form-urlencoded"
    )
    assert json.loads(body) == {"created": {"name": "Tom", "kind": "cat"}}

    # A 404 of the function (its own message), and one of the gateway (no such route).
    status, _, body = http_call("GET", f"{api}/pets/9")
    assert (status, json.loads(body)) == (404, {"message": "no pet 9"})
    status, _, _ = http_call("GET", f"{api}/owners")
    assert status == 404


# --- async-destinations.yaml --------------------------------------------------------------------


def audit_records(namespace: str) -> dict[str, dict[str, Any]]:
    """The records orders-audit printed ("AUDIT {...}" lines), by request id."""
    records = {}
    for line in function_logs(namespace, "orders-audit").splitlines():
        _, marker, text = line.partition("AUDIT ")
        if marker:
            record = json.loads(text)
            records[record["requestId"]] = record
    return records


def test_async_success_destination_and_dead_letter_queue(namespace: str) -> None:
    apply_example(namespace, "async-destinations.yaml")
    for name in ("orders", "orders-audit"):
        await_ready(namespace, "function", name)
    lam = lambda_client(namespace)
    good, bad = {"orderId": "o-1", "quantity": 2}, {"orderId": "o-2", "quantity": 0}
    # A function just applied may be unknown to the gateway for a moment: a synchronous call
    # waits for that (and warms the function) before the Events. It reaches no destination.
    assert invoke(lam, "orders", good)[1] == {"orderId": "o-1", "status": "accepted"}
    request_ids = {}
    for name, event in (("good", good), ("bad", bad)):
        response = lam.invoke(
            FunctionName="orders", InvocationType="Event", Payload=json.dumps(event)
        )
        assert response["StatusCode"] == 202
        request_ids[name] = str(response["ResponseMetadata"]["RequestId"])

    # Success: the onSuccess destination function got the invocation record.
    records = wait_until(
        lambda: (found := audit_records(namespace)).get(request_ids["good"]) and found,
        ASYNC_TIMEOUT_S,
        "the success record in orders-audit's log",
        interval=2,
    )
    record = records[request_ids["good"]]
    assert record["condition"] == "Success"
    assert record["function"].endswith(":function:orders:$LATEST")
    assert record["order"] == good
    assert record["result"] == {"orderId": "o-1", "status": "accepted"}

    # Failure: 1 + maximumRetryAttempts (1) attempts, then the DLQ (there is no onFailure).
    dlq = Dlq()
    letter = wait_until(
        lambda: {d["requestId"]: d for d in dlq.letters(namespace, "orders")}.get(
            request_ids["bad"]
        ),
        ASYNC_TIMEOUT_S,
        "the failed order in the DLQ",
        interval=2,
    )
    assert letter["condition"] == "RetriesExhausted"
    assert letter["attempts"] == 2
    assert "quantity must be positive" in letter["errorMessage"]
    assert request_ids["bad"] not in audit_records(namespace), "a failure reached onSuccess"
    assert [d["requestId"] for d in dlq.letters(namespace, "orders")] == [request_ids["bad"]]
    # The header's way of reading the DLQ.
    listed = cli("dlq", "list", "--function", "orders", "-n", namespace, "-o", "json")
    assert [row["requestId"] for row in json.loads(listed.stdout)] == [request_ids["bad"]]


# --- layer-shared-library.yaml ------------------------------------------------------------------


def test_layer_with_a_shared_library(namespace: str) -> None:
    apply_example(namespace, "layer-shared-library.yaml")
    await_ready(namespace, "layer", "text-utils")
    assert get("layer", "text-utils", namespace)["status"]["latestVersion"] == 1
    await_ready(namespace, "function", "text-stats")
    _, result = invoke(lambda_client(namespace), "text-stats", {"text": "Hello, Layered World!"})
    assert result == {
        "slug": "hello-layered-world",
        "words": 3,
        "library": "/opt/python/textutils.py",
    }


# --- alias-canary/ ------------------------------------------------------------------------------


def latest_version(namespace: str, function: str) -> int:
    return int((get("function", function, namespace).get("status") or {}).get("latestVersion", 0))


def test_alias_canary_sends_about_ten_percent_to_the_new_version(namespace: str) -> None:
    lam = lambda_client(namespace, connections=8)
    apply_example(namespace, "alias-canary/1-stable.yaml")
    wait_until(lambda: latest_version(namespace, "checkout") == 1, 60, "version 1 published")
    await_ready(namespace, "alias", "checkout-live")
    await_ready(namespace, "function", "checkout")
    assert invoke(lam, "checkout", Qualifier="live") == ("1", {"release": "v1", "version": "1"})

    apply_example(namespace, "alias-canary/2-canary.yaml")
    wait_until(lambda: latest_version(namespace, "checkout") == 2, 60, "version 2 published")
    await_ready(namespace, "alias", "checkout-live")
    await_ready(namespace, "function", "checkout")
    # Both versions answer before the split is counted (either may have to start a pod).
    assert invoke(lam, "checkout", Qualifier="1") == ("1", {"release": "v1", "version": "1"})
    assert invoke(lam, "checkout", Qualifier="2") == ("2", {"release": "v2", "version": "2"})

    def call_alias(_: int) -> tuple[str, str]:
        version, result = invoke(lam, "checkout", Qualifier="live")
        return version, result["release"]

    with ThreadPoolExecutor(4) as pool:
        calls = Counter(pool.map(call_alias, range(CANARY_CALLS)))
    assert set(calls) <= {("1", "v1"), ("2", "v2")}, calls
    # Weight 0.1 over 400 calls: 40 expected, sd 6; 16-80 is at least 4 sd away either way.
    canary_share = calls["2", "v2"] / CANARY_CALLS
    assert 0.04 <= canary_share <= 0.20, calls
    print(f"\ncheckout:live over {CANARY_CALLS} calls: {dict(calls)}")


# --- scheduled.yaml -----------------------------------------------------------------------------

BEAT_RE = re.compile(r"heartbeat: (\d{4}-\d\d-\d\dT\d\d:\d\d:(\d\d)Z) \[(.*)\]")


def test_scheduled_function_fires(namespace: str) -> None:
    apply_example(namespace, "scheduled.yaml")
    await_ready(namespace, "function", "heartbeat")
    # rate(1 minute) is too slow for CI: the header's own tip, rate(10 seconds).
    patch = [{"op": "replace", "path": "/spec/schedules/0/expression", "value": "rate(10 seconds)"}]
    kubectl(
        "patch", "function", "heartbeat", "-n", namespace, "--type=json", "-p", json.dumps(patch)
    )

    def beat_between_minutes() -> re.Match[str] | None:
        beats = BEAT_RE.finditer(function_logs(namespace, "heartbeat"))
        # Only rate(10 seconds) fires at a time that is not a whole minute.
        return next((beat for beat in beats if beat[2] != "00"), None)

    try:
        beat = wait_until(beat_between_minutes, 120, "a rate(10 seconds) fire", interval=2)
    except AssertionError as error:
        try:
            logs = function_logs(namespace, "heartbeat")
        except KubectlError as no_logs:
            logs = str(no_logs)
        raise AssertionError(f"{error}\nlogs:\n{logs}") from None
    assert f"rule/{namespace}/heartbeat.every-minute" in beat[3], beat[0]


# --- image-awslambdaric/ ------------------------------------------------------------------------


def test_image_function_with_awslambdaric(namespace: str) -> None:
    """The image kubelambda/e2e-awslambdaric:dev is built from examples/image-awslambdaric/ by
    hack/test-images.sh and loaded into the cluster by `make test-e2e`."""
    apply_example(namespace, "image-awslambdaric/function.yaml")
    await_ready(namespace, "function", "hello-image")
    version, result = invoke(lambda_client(namespace), "hello-image", {"name": "examples"})
    assert version == "$LATEST"
    assert result["echo"] == {"name": "examples"}
    assert result["function_name"] == "hello-image"
    assert result["function_version"] == "$LATEST"
    assert result["memory_limit_in_mb"] == "256"
    assert 0 < result["remaining_ms"] <= 5000
    assert result["runtime_api"] == "127.0.0.1:9001"
