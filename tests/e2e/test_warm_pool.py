"""The warm pool on the real cluster: a namespace's generic runtime pods, specialised with a
function's code when it is called at zero instances, adopted by its version, retired when the
code changes or the version goes idle; functions no pool pod can serve fall back to their
Deployment."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e import codestore
from tests.e2e.kube import apply, get, kubectl, lambda_client, wait_until
from tests.e2e.test_runtimes import await_function, function, zip_code

POOL = "kubelambda.io/warm-pool"
SPECIALIZED = "kubelambda.io/specialized"
CODE = """
import os

def handler(event, context):
    try:
        open(os.path.join(os.environ["LAMBDA_TASK_ROOT"], "scribble"), "w").close()
        task_root = "writable"
    except OSError:
        task_root = "read-only"
    return {"name": context.function_name, "memory": context.memory_limit_in_mb,
            "greeting": os.environ.get("GREETING"), "taskRoot": task_root,
            "initializationType": os.environ.get("AWS_LAMBDA_INITIALIZATION_TYPE"),
            "remainingMs": context.get_remaining_time_in_millis()}
"""
NODE_CODE = """
exports.handler = async (event, context) => ({ name: context.functionName, node: process.version });
"""


@pytest.fixture(scope="module")
def pool_namespace() -> Iterator[str]:
    name = f"e2e-pool-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    kubectl("annotate", "namespace", name, f"{POOL}=python3.11=2,nodejs18=1")
    yield name
    kubectl("delete", "namespace", name, "--wait=false")


@pytest.fixture(scope="module")
def lam(pool_namespace: str) -> Any:
    return lambda_client(pool_namespace, read_timeout=90)


def pods(namespace: str, selector: str) -> list[dict[str, Any]]:
    listing = kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json")
    return list(json.loads(listing)["items"])


def ready(pod: dict[str, Any]) -> bool:
    if pod["metadata"].get("deletionTimestamp"):
        return False
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def ready_pool_pods(namespace: str, runtime: str) -> list[str]:
    selector = f"kubelambda.io/pool={runtime},kubelambda.io/pool-state=idle"
    return [p["metadata"]["name"] for p in pods(namespace, selector) if ready(p)]


def function_pods(namespace: str, name: str) -> list[dict[str, Any]]:
    return [
        p
        for p in pods(namespace, f"kubelambda.io/function={name}")
        if not p["metadata"].get("deletionTimestamp")
    ]


def python(name: str, **spec: Any) -> dict[str, Any]:
    body = {
        "runtime": "python3.11",
        "handler": "app.handler",
        "code": {"inline": {"app.py": CODE}},
        "scaling": {"idleSeconds": 5},
        **spec,
    }
    return function(name, body)


def at_zero(namespace: str, name: str) -> None:
    """Wait until the function's first (Deployment) pod has scaled away."""
    await_function(namespace, name)
    wait_until(
        lambda: not function_pods(namespace, name),
        timeout=90,
        what=f"{name} never scaled to 0 pods",
    )


def call(lam: Any, name: str, **kwargs: Any) -> tuple[dict[str, Any], str]:
    response = lam.invoke(FunctionName=name, Payload=b"{}", LogType="Tail", **kwargs)
    payload = response["Payload"].read()
    assert "FunctionError" not in response, payload
    return json.loads(payload), base64.b64decode(response["LogResult"]).decode()


def scale_reason(namespace: str, name: str) -> str:
    return str((get("function", name, namespace).get("status") or {}).get("lastScaleReason"))


def test_a_namespace_keeps_the_pools_its_annotation_asks_for(pool_namespace: str) -> None:
    wait_until(
        lambda: (
            len(ready_pool_pods(pool_namespace, "python3-11")) == 2
            and len(ready_pool_pods(pool_namespace, "nodejs18")) == 1
        ),
        timeout=120,
        what="pool pods never became ready",
    )
    for pod in pods(pool_namespace, "kubelambda.io/pool"):
        assert "kubelambda.io/function" not in pod["metadata"]["labels"]
        (container,) = pod["spec"]["containers"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert pod["spec"]["automountServiceAccountToken"] is False
    # An annotation the operator cannot read changes nothing (and is logged).
    kubectl("annotate", "--overwrite", "namespace", pool_namespace, f"{POOL}=python3.11=lots")
    time.sleep(3)
    assert len(ready_pool_pods(pool_namespace, "python3-11")) == 2
    kubectl("annotate", "--overwrite", "namespace", pool_namespace, f"{POOL}=python3.11=2")
    wait_until(
        lambda: not pods(pool_namespace, "kubelambda.io/pool=nodejs18"),
        timeout=60,
        what="the nodejs18 pool outlived its place in the annotation",
    )
    kubectl(
        "annotate", "--overwrite", "namespace", pool_namespace, f"{POOL}=python3.11=2,nodejs18=1"
    )


def test_a_call_at_zero_is_served_by_a_pool_pod_with_the_functions_code(
    lam: Any, pool_namespace: str
) -> None:
    apply(python("pooled", environment={"variables": {"GREETING": "hello"}}), pool_namespace)
    at_zero(pool_namespace, "pooled")
    wait_until(
        lambda: len(ready_pool_pods(pool_namespace, "python3-11")) == 2,
        timeout=120,
        what="pool pods never became ready",
    )
    pool_before = set(ready_pool_pods(pool_namespace, "python3-11"))
    started = time.monotonic()
    answer, log = call(lam, "pooled")
    print(f"cold call through the warm pool: {(time.monotonic() - started) * 1000:.0f} ms")
    assert answer["name"] == "pooled"
    assert answer["memory"] == "128"
    assert answer["greeting"] == "hello"
    assert answer["initializationType"] == "on-demand"
    assert answer["taskRoot"] == "read-only"
    assert 0 < answer["remainingMs"] <= 3000
    assert "Init Duration" in log, log
    # The pod that answered came from the pool, and the version adopted it.
    (pod,) = function_pods(pool_namespace, "pooled")
    assert pod["metadata"]["name"] in pool_before
    labels = pod["metadata"]["labels"]
    assert labels["kubelambda.io/version"] == "latest"
    assert SPECIALIZED in labels
    assert "kubelambda.io/pool" not in labels
    (owner,) = pod["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"]) == ("Deployment", "fn-pooled-latest")
    assert "warm pool" in scale_reason(pool_namespace, "pooled")
    assert get("deployment", "fn-pooled-latest", pool_namespace)["spec"]["replicas"] == 0
    # The pool refills.
    wait_until(
        lambda: len(ready_pool_pods(pool_namespace, "python3-11")) == 2,
        timeout=120,
        what="the pool never replaced the pod it gave away",
    )
    # Warm now: the same pod answers, without an init.
    answer, log = call(lam, "pooled")
    assert "Init Duration" not in log, log
    assert [p["metadata"]["name"] for p in function_pods(pool_namespace, "pooled")] == [
        pod["metadata"]["name"]
    ]


def test_a_changed_function_retires_its_adopted_pod(lam: Any, pool_namespace: str) -> None:
    adopted = [p["metadata"]["name"] for p in function_pods(pool_namespace, "pooled")]
    assert len(adopted) == 1, "runs after the previous test"
    apply(python("pooled", environment={"variables": {"GREETING": "bonjour"}}), pool_namespace)
    # Every call answers with the new configuration once the reconcile is through; the old
    # pod goes.
    wait_until(
        lambda: call(lam, "pooled")[0]["greeting"] == "bonjour",
        timeout=90,
        what="the function kept answering with its old configuration",
    )
    wait_until(
        lambda: (
            adopted[0]
            not in [p["metadata"]["name"] for p in function_pods(pool_namespace, "pooled")]
        ),
        timeout=60,
        what="the pod specialised with the old configuration stayed",
    )


def test_an_idle_adopted_pod_goes_with_its_version(pool_namespace: str) -> None:
    wait_until(
        lambda: not function_pods(pool_namespace, "pooled"),
        timeout=60,
        what="the adopted pod outlived the idle period",
    )
    assert "-> 0 instances: idle for" in scale_reason(pool_namespace, "pooled")


def test_zip_code_from_the_store_in_a_nodejs_pool_pod(lam: Any, pool_namespace: str) -> None:
    package = codestore.zip_files({"index.js": NODE_CODE})
    codestore.upload(package)
    body = function(
        "pooled-node",
        {
            "runtime": "nodejs18",
            "handler": "index.handler",
            "code": zip_code(package),
            "scaling": {"idleSeconds": 5},
        },
    )
    apply(body, pool_namespace)
    at_zero(pool_namespace, "pooled-node")
    wait_until(
        lambda: len(ready_pool_pods(pool_namespace, "nodejs18")) == 1,
        timeout=120,
        what="the nodejs18 pool pod never became ready",
    )
    answer, _ = call(lam, "pooled-node")
    assert answer["name"] == "pooled-node"
    assert answer["node"].startswith("v18.")
    (pod,) = function_pods(pool_namespace, "pooled-node")
    assert SPECIALIZED in pod["metadata"]["labels"]


def test_a_function_no_pool_pod_fits_scales_up_its_deployment(
    lam: Any, pool_namespace: str
) -> None:
    apply(python("roomy", memoryMB=256), pool_namespace)
    at_zero(pool_namespace, "roomy")
    answer, _ = call(lam, "roomy")
    assert answer["memory"] == "256"
    assert "warm pool" not in scale_reason(pool_namespace, "roomy")
    (pod,) = function_pods(pool_namespace, "roomy")
    assert SPECIALIZED not in pod["metadata"]["labels"]
    assert get("deployment", "fn-roomy-latest", pool_namespace)["spec"]["replicas"] == 1
