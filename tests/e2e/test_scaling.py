"""Autoscaling on the real cluster: scale to zero and back, concurrency-driven scale-up capped by
reserved concurrency, provisioned concurrency on an alias, no failed call across scale-down."""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.e2e.kube import (
    apply,
    gateway_metrics,
    get,
    kubectl,
    lambda_client,
    wait_until,
)
from tests.e2e.test_runtimes import await_function, function, is_ready

CODE = """
import os, time

def handler(event, context):
    time.sleep(event.get("sleep", 0))
    return {"version": context.function_version,
            "initializationType": os.environ.get("AWS_LAMBDA_INITIALIZATION_TYPE")}
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
def scaling_namespace() -> Iterator[str]:
    name = f"e2e-scale-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false")


@pytest.fixture(scope="module")
def lam(scaling_namespace: str) -> Any:
    return lambda_client(scaling_namespace, read_timeout=90, connections=64)


def replicas(namespace: str, name: str, version: str = "latest") -> tuple[int, int]:
    """(desired, ready) of one version's Deployment."""
    deployment = get("deployment", f"fn-{name}-{version}", namespace)
    status = deployment.get("status") or {}
    return int(deployment["spec"].get("replicas") or 0), int(status.get("readyReplicas") or 0)


def pod_count(namespace: str, name: str, version: str = "latest") -> int:
    pods = get("pods", namespace=namespace)["items"]
    labels = {"kubelambda.io/function": name, "kubelambda.io/version": version}
    return sum(1 for pod in pods if labels.items() <= (pod["metadata"].get("labels") or {}).items())


def scale_reason(namespace: str, name: str) -> str:
    return str((get("function", name, namespace).get("status") or {}).get("lastScaleReason"))


def call(lam: Any, name: str, event: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    response = lam.invoke(FunctionName=name, Payload=json.dumps(event or {}), **kwargs)
    assert "FunctionError" not in response, response["Payload"].read()
    return json.loads(response["Payload"].read())


def test_idle_function_scales_to_zero_and_a_call_brings_it_back(
    lam: Any, scaling_namespace: str
) -> None:
    apply(python("idle", scaling={"idleSeconds": 5}), scaling_namespace)
    await_function(scaling_namespace, "idle")
    wait_until(
        lambda: (
            replicas(scaling_namespace, "idle") == (0, 0)
            and pod_count(scaling_namespace, "idle") == 0
        ),
        timeout=60,
        what="idle function never reached 0 pods",
    )
    assert "-> 0 instances: idle for" in scale_reason(scaling_namespace, "idle")
    started = time.monotonic()
    assert call(lam, "idle")["version"] == "$LATEST"
    wake_s = time.monotonic() - started
    print(f"scale from zero: first call answered in {wake_s * 1000:.0f} ms")
    assert "0 -> 1 instances" in scale_reason(scaling_namespace, "idle")
    assert replicas(scaling_namespace, "idle")[0] == 1
    pages = gateway_metrics()
    cold = [
        float(line.split()[-1])
        for page in pages
        for line in page.splitlines()
        if line.startswith("kubelambda_gateway_cold_start_seconds_count")
        and f'namespace="{scaling_namespace}"' in line
        and 'function="idle"' in line
    ]
    assert sum(cold) >= 1, pages


def test_fifty_slow_calls_with_reserved_ten_get_ten_pods_and_forty_throttles(
    lam: Any, scaling_namespace: str
) -> None:
    apply(
        python(
            "burst",
            timeoutSeconds=30,
            concurrency={"reserved": 10, "perInstance": 1},
            scaling={"idleSeconds": 10},
        ),
        scaling_namespace,
    )
    await_function(scaling_namespace, "burst")
    peak_desired = peak_ready = 0
    done = threading.Event()

    def watch_ready() -> None:
        nonlocal peak_desired, peak_ready
        while not done.is_set():
            desired, ready = replicas(scaling_namespace, "burst")
            peak_desired, peak_ready = max(peak_desired, desired), max(peak_ready, ready)
            time.sleep(0.5)

    def one(_: int) -> str:
        try:
            call(lam, "burst", {"sleep": 10})
        except ClientError as error:
            return f"{error.response['Error']['Code']}/{error.response.get('Reason')}"
        return "ok"

    watcher = threading.Thread(target=watch_ready, daemon=True)
    watcher.start()
    with ThreadPoolExecutor(50) as pool:
        outcomes = Counter(pool.map(one, range(50)))
    done.set()
    watcher.join()
    print(f"outcomes {dict(outcomes)}, peak ready pods {peak_ready}")
    assert outcomes["ok"] == 10, outcomes
    reserved = "TooManyRequestsException/ReservedFunctionConcurrentInvocationLimitExceeded"
    assert outcomes[reserved] == 40, outcomes
    # The earliest calls end seconds before the last (their pods started one after another):
    # scale-down may have begun by now, so the peaks during the burst are what counts.
    assert peak_desired == 10
    assert peak_ready == 10
    # And back down once idle: to zero after idleSeconds without demand.
    wait_until(
        lambda: replicas(scaling_namespace, "burst")[0] == 0,
        timeout=60,
        what="burst function did not scale back down",
    )


def test_provisioned_concurrency_keeps_an_alias_warm_while_latest_scales_to_zero(
    lam: Any, scaling_namespace: str
) -> None:
    apply(python("warm", publish=True, scaling={"idleSeconds": 5}), scaling_namespace)
    await_function(scaling_namespace, "warm")
    wait_until(
        lambda: (
            (get("function", "warm", scaling_namespace).get("status") or {}).get("latestVersion")
            == 1
        ),
        timeout=60,
        what="version 1 was not published",
    )
    alias = {
        "apiVersion": "kubelambda.io/v1alpha1",
        "kind": "Alias",
        "metadata": {"name": "warm-live"},
        "spec": {"function": "warm", "name": "live", "version": "1", "provisionedConcurrency": 2},
    }
    apply(alias, scaling_namespace)
    wait_until(
        lambda: replicas(scaling_namespace, "warm", "v1") == (2, 2),
        timeout=90,
        what="the alias's version did not get 2 ready pods",
    )
    wait_until(
        lambda: replicas(scaling_namespace, "warm") == (0, 0),
        timeout=60,
        what="$LATEST did not scale to zero",
    )
    # Well past the idle period, the provisioned pods are still there and serve the alias.
    time.sleep(8)
    assert replicas(scaling_namespace, "warm", "v1") == (2, 2)
    answer = call(lam, "warm", Qualifier="live")
    assert answer == {"version": "1", "initializationType": "provisioned-concurrency"}
    assert replicas(scaling_namespace, "warm") == (0, 0)


def test_no_call_fails_across_scale_down_and_back(lam: Any, scaling_namespace: str) -> None:
    """Callers come and go in waves around a short idle period: every call must succeed while
    the function keeps scaling down (to zero between waves) and back up."""
    apply(python("waves", scaling={"idleSeconds": 2}), scaling_namespace)
    # Its first pod may be gone again by the time one looks: Ready=True is enough.
    wait_until(lambda: is_ready("function", "waves", scaling_namespace), 90, "waves Ready")
    failures: list[str] = []
    successes = 0
    lock = threading.Lock()
    scale_downs = 0
    last = replicas(scaling_namespace, "waves")[0]
    rng = random.Random(7)

    def caller(wave: int) -> None:
        nonlocal successes
        for _ in range(3):
            try:
                call(lam, "waves", {"sleep": rng.choice([0, 0.2, 1])})
            except (ClientError, AssertionError) as error:
                reason = error.response.get("Reason") if isinstance(error, ClientError) else ""
                with lock:
                    failures.append(f"wave {wave}: {error!r} {reason}")
            else:
                with lock:
                    successes += 1

    for wave in range(6):
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(caller, [wave] * 4))
        # Quiet long enough for the idle period to pass and pods to start going away.
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            desired = replicas(scaling_namespace, "waves")[0]
            if desired < last:
                scale_downs += 1
            last = desired
            time.sleep(0.3)
    print(f"{successes} calls succeeded, {scale_downs} scale-downs observed")
    assert failures == []
    assert successes == 6 * 4 * 3
    assert scale_downs >= 3
