"""The gateway on the real cluster: unchanged boto3 against the Lambda Invoke API.

Functions live in one namespace for the module; boto3 reaches them through the gateway
Service with the namespace in the endpoint URL (``/namespaces/<ns>``), as a user would.
"""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.e2e.kube import (
    PLATFORM_NAMESPACE,
    apply,
    gateway_pod_urls,
    get,
    kubectl,
    lambda_client,
    wait_until,
)
from tests.e2e.test_runtimes import await_function, function, is_ready

CODE = """
import json, os, time

def handler(event, context):
    action = event.get("action") if isinstance(event, dict) else None
    if action == "fail":
        raise ValueError("asked to fail")
    if action == "sleep":
        time.sleep(event["seconds"])
    print("handled", context.aws_request_id)
    return {"event": event, "version": context.function_version,
            "arn": context.invoked_function_arn, "marker": os.environ.get("MARKER")}
"""


def python(name: str, **spec: Any) -> dict[str, Any]:
    return function(
        name,
        {
            "runtime": "python3.11",
            "handler": "app.handler",
            "code": {"inline": {"app.py": CODE}},
            **spec,
        },
    )


@pytest.fixture(scope="module")
def gateway_namespace() -> Iterator[str]:
    name = f"e2e-gw-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    apply(
        [
            python("echo", timeoutSeconds=5),
            python(
                "capped",
                timeoutSeconds=10,
                concurrency={"reserved": 2},
                scaling={"minInstances": 2},
            ),
            python("split", publish=True, environment={"variables": {"MARKER": "one"}}),
        ],
        name,
    )
    yield name
    kubectl("delete", "namespace", name, "--wait=false")


@pytest.fixture(scope="module")
def lam(gateway_namespace: str) -> Any:
    for name in ("echo", "capped", "split"):
        await_function(gateway_namespace, name)
    return lambda_client(gateway_namespace, read_timeout=60, connections=32)


def payload(response: dict[str, Any]) -> Any:
    return json.loads(response["Payload"].read())


def test_request_response(lam: Any) -> None:
    response = lam.invoke(FunctionName="echo", Payload=json.dumps({"hello": "gateway"}))
    assert response["StatusCode"] == 200
    assert response["ExecutedVersion"] == "$LATEST"
    assert "FunctionError" not in response
    body = payload(response)
    assert body["event"] == {"hello": "gateway"}
    assert body["arn"].endswith(":function:echo")


def test_log_tail_and_dry_run(lam: Any) -> None:
    response = lam.invoke(FunctionName="echo", Payload=b"{}", LogType="Tail")
    log = base64.b64decode(response["LogResult"]).decode()
    request_id = response["ResponseMetadata"]["RequestId"]
    assert f"START RequestId: {request_id}" in log
    assert f"handled {request_id}" in log
    assert f"REPORT RequestId: {request_id}" in log
    dry = lam.invoke(FunctionName="echo", InvocationType="DryRun")
    assert dry["StatusCode"] == 204


def test_function_error_is_200_with_unhandled(lam: Any) -> None:
    response = lam.invoke(FunctionName="echo", Payload=json.dumps({"action": "fail"}))
    assert response["StatusCode"] == 200
    assert response["FunctionError"] == "Unhandled"
    body = payload(response)
    assert body["errorType"] == "ValueError"
    assert body["errorMessage"] == "asked to fail"


@pytest.mark.parametrize(
    ("name", "qualifier"),
    [
        ("missing", None),
        ("echo", "7"),
        ("echo:nope", None),
    ],
)
def test_unknown_functions_and_qualifiers_are_404(
    lam: Any, name: str, qualifier: str | None
) -> None:
    extra = {"Qualifier": qualifier} if qualifier else {}
    with pytest.raises(ClientError) as error:
        lam.invoke(FunctionName=name, Payload=b"{}", **extra)
    assert error.value.response["Error"]["Code"] == "ResourceNotFoundException"
    assert error.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_bad_payload_and_too_large(lam: Any) -> None:
    with pytest.raises(ClientError) as error:
        lam.invoke(FunctionName="echo", Payload=b"not json")
    assert error.value.response["Error"]["Code"] == "InvalidRequestContentException"
    with pytest.raises(ClientError) as error:
        lam.invoke(FunctionName="echo", Payload=json.dumps("x" * (6 * 1024 * 1024 + 10)))
    assert error.value.response["Error"]["Code"] == "RequestEntityTooLargeException"
    assert error.value.response["ResponseMetadata"]["HTTPStatusCode"] == 413


def test_reserved_concurrency_throttles_exactly_the_excess(lam: Any) -> None:
    def call(_: int) -> str:
        try:
            lam.invoke(FunctionName="capped", Payload=json.dumps({"action": "sleep", "seconds": 2}))
        except ClientError as error:
            return f"{error.response['Error']['Code']}/{error.response.get('Reason')}"
        return "ok"

    with ThreadPoolExecutor(10) as pool:
        outcomes = Counter(pool.map(call, range(10)))
    throttled = "TooManyRequestsException/ReservedFunctionConcurrentInvocationLimitExceeded"
    assert outcomes == {"ok": 2, throttled: 8}, outcomes


def gateway_pod_clients(namespace: str) -> list[Any]:
    """A boto3 client per ready gateway pod (by pod IP, past the Service's load balancing)."""
    return [lambda_client(namespace, gateway=url) for url in gateway_pod_urls()]


def test_reserved_concurrency_is_exact_across_gateway_replicas(gateway_namespace: str) -> None:
    """Half the calls go to each gateway pod: the cap still admits exactly 2 in all."""
    clients = gateway_pod_clients(gateway_namespace)
    assert len(clients) == 2, "the chart runs 2 gateway replicas"

    def call(index: int) -> str:
        try:
            clients[index % 2].invoke(
                FunctionName="capped", Payload=json.dumps({"action": "sleep", "seconds": 3})
            )
        except ClientError as error:
            return f"{error.response['Error']['Code']}/{error.response.get('Reason')}"
        return f"ok via {index % 2}"

    with ThreadPoolExecutor(10) as pool:
        outcomes = Counter(pool.map(call, range(10)))
    throttled = "TooManyRequestsException/ReservedFunctionConcurrentInvocationLimitExceeded"
    assert outcomes[throttled] == 8, outcomes
    assert sum(count for outcome, count in outcomes.items() if outcome.startswith("ok")) == 2


def test_gateway_rolling_restart_under_load_fails_no_request(lam: Any) -> None:
    """Clients keep calling through the Service while both gateway pods are replaced one by
    one: every call succeeds (the old pods drain, the Service moves to the new ones)."""
    stop = threading.Event()
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()

    def load(worker: int) -> None:
        while not stop.is_set():
            try:
                response = lam.invoke(FunctionName="echo", Payload=json.dumps({"n": worker}))
                outcome = "ok" if response["StatusCode"] == 200 else str(response["StatusCode"])
            except Exception as error:  # every failure is counted and reported
                outcome = f"{type(error).__name__}: {error}"[:200]
            with lock:
                outcomes[outcome] += 1

    workers = [threading.Thread(target=load, args=(n,)) for n in range(4)]
    for worker in workers:
        worker.start()
    try:
        wait_until(lambda: outcomes["ok"] >= 50, 30, "calls flowing before the restart")
        kubectl("rollout", "restart", "deployment/kubelambda-gateway", "-n", PLATFORM_NAMESPACE)
        kubectl(
            "rollout",
            "status",
            "deployment/kubelambda-gateway",
            "-n",
            PLATFORM_NAMESPACE,
            "--timeout=180s",
            timeout=200,
        )
        during = sum(outcomes.values())
        wait_until(lambda: sum(outcomes.values()) >= during + 50, 30, "calls after the restart")
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    failures = {outcome: n for outcome, n in outcomes.items() if outcome != "ok"}
    assert not failures, f"{sum(failures.values())} of {sum(outcomes.values())} failed: {failures}"
    print(f"\nrolling restart of the gateway under load: {outcomes['ok']} calls, none failed")


def test_versions_aliases_and_qualifier_forms(lam: Any, gateway_namespace: str) -> None:
    ns = gateway_namespace
    wait_until(
        lambda: get("function", "split", ns)["status"]["latestVersion"] == 1, 60, "version 1"
    )
    apply(python("split", publish=True, environment={"variables": {"MARKER": "two"}}), ns)
    wait_until(
        lambda: get("function", "split", ns)["status"]["latestVersion"] == 2, 60, "version 2"
    )
    alias = {
        "apiVersion": "kubelambda.io/v1alpha1",
        "kind": "Alias",
        "metadata": {"name": "split-live"},
        "spec": {
            "function": "split",
            "name": "live",
            "version": "1",
            "routing": {"additionalVersion": "2", "weight": 0.3},
        },
    }
    apply(alias, ns)
    wait_until(partial(is_ready, "alias", "split-live", ns), 60, "alias Ready")
    wait_until(partial(is_ready, "function", "split", ns), 120, "function Ready")

    def executed(**kwargs: Any) -> tuple[str, str]:
        response = lam.invoke(Payload=b"{}", **kwargs)
        return response["ExecutedVersion"], payload(response)["marker"]

    # Every qualifier form reaches the same version; the alias's versions need their pods.
    wait_until(lambda: executed(FunctionName="split:1") == ("1", "one"), 120, "version 1's pods")
    wait_until(
        lambda: executed(FunctionName="split", Qualifier="2") == ("2", "two"), 120, "version 2"
    )
    arn = "arn:aws:lambda:us-east-1:000000000000:function:split"
    assert executed(FunctionName=f"{arn}:1") == ("1", "one")
    assert executed(FunctionName="000000000000:function:split:2") == ("2", "two")
    assert executed(FunctionName="split", Qualifier="$LATEST") == ("$LATEST", "two")

    # Weighted alias: 30% +- 5% to version 2 over 1,000 calls.
    with ThreadPoolExecutor(8) as pool:
        versions = Counter(pool.map(lambda _: executed(FunctionName="split:live")[0], range(1000)))
    assert set(versions) == {"1", "2"}
    assert 250 <= versions["2"] <= 350, versions
