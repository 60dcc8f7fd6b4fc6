"""A thin kubectl wrapper for the e2e tests: every call goes to the real API server."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, TypeVar

import boto3
import yaml
from botocore.config import Config
from botocore.exceptions import BotoCoreError

T = TypeVar("T")
PLATFORM_NAMESPACE = "kubelambda-system"


class KubectlError(RuntimeError):
    """kubectl exited non-zero; the message carries its stderr."""


def kubectl(*args: str, stdin: str | None = None, timeout: float = 120) -> str:
    result = subprocess.run(
        ["kubectl", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise KubectlError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def apply(manifests: list[dict[str, Any]] | dict[str, Any], namespace: str | None = None) -> None:
    items = manifests if isinstance(manifests, list) else [manifests]
    ns_args = ["-n", namespace] if namespace else []
    kubectl("apply", *ns_args, "-f", "-", stdin=yaml.safe_dump_all(items))


def get(kind: str, name: str = "", namespace: str | None = None) -> dict[str, Any]:
    """One object, or with no name the list of all of ``kind``."""
    ns_args = ["-n", namespace] if namespace else []
    names = [name] if name else []
    return json.loads(kubectl("get", kind, *names, *ns_args, "-o", "json"))  # type: ignore[no-any-return]


def wait_until(
    probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.5
) -> T:
    """Polls ``probe`` until it returns something other than None/False; fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = probe()
        except (KubectlError, KeyError, IndexError, OSError) as error:
            last_error = error
        else:
            if value is not None and value is not False:
                return value
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout:.0f}s waiting for {what} (last error: {last_error})"
    )


def condition_status(body: dict[str, Any], type_: str) -> str | None:
    for condition in body.get("status", {}).get("conditions", []):
        if condition["type"] == type_:
            return str(condition["status"])
    return None


def wait_for_condition(
    kind: str, name: str, namespace: str, type_: str = "Ready", timeout: float = 120
) -> dict[str, Any]:
    """Waits until condition ``type_`` of the object is True; returns the object."""
    return wait_until(
        lambda: (
            (body := get(kind, name, namespace))
            and condition_status(body, type_) == "True"
            and body
        ),
        timeout,
        f"{kind} {namespace}/{name} to be {type_}",
    )


def names(kind: str, namespace: str, selector: str) -> list[str]:
    items = json.loads(kubectl("get", kind, "-n", namespace, "-l", selector, "-o", "json"))["items"]
    return sorted(item["metadata"]["name"] for item in items)


def invoke(
    url: str, payload: bytes = b"{}", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """POSTs an invocation; returns (status, headers, body) whatever the status."""
    request = urllib.request.Request(url, data=payload, headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def function_pod_url(function: str, namespace: str, version: str = "latest") -> str:
    """Invoke URL of one ready pod of a function version (pod IPs are reachable from the node)."""
    selector = f"kubelambda.io/function={function},kubelambda.io/version={version}"

    def ready_pod_ip() -> str | None:
        pods = json.loads(kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json"))[
            "items"
        ]
        for pod in pods:
            conditions = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}
            if conditions.get("Ready") == "True" and not pod["metadata"].get("deletionTimestamp"):
                return str(pod["status"]["podIP"])
        return None

    ip = wait_until(ready_pod_ip, 120, f"a ready pod of {namespace}/{function}")
    return f"http://{ip}:8080/2015-03-31/functions/{function}/invocations"


def gateway_url() -> str:
    service = get("service", "kubelambda-gateway", PLATFORM_NAMESPACE)
    return f"http://{service['spec']['clusterIP']}:8080"


def platform_pods(component: str) -> list[dict[str, Any]]:
    """The platform's pods of one component (gateway, invoker, queue, operator, store)."""
    selector = f"app.kubernetes.io/component={component}"
    listed = kubectl("get", "pods", "-n", PLATFORM_NAMESPACE, "-l", selector, "-o", "json")
    return json.loads(listed)["items"]  # type: ignore[no-any-return]


def gateway_pod_urls() -> list[str]:
    """The URL of each ready gateway pod (by pod IP, past the Service's load balancing)."""
    return [
        f"http://{pod['status']['podIP']}:8080"
        for pod in platform_pods("gateway")
        if not pod["metadata"].get("deletionTimestamp")
        and any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in pod["status"].get("conditions") or ()
        )
    ]


def metrics_path(pod_name: str) -> str:
    """The API server's proxy path to a platform pod's metrics page (port 9090 on each)."""
    return f"/api/v1/namespaces/{PLATFORM_NAMESPACE}/pods/{pod_name}:9090/proxy/metrics"


def gateway_metrics() -> list[str]:
    """The metrics pages of every gateway pod (each replica counts its own requests)."""
    return [
        kubectl("get", "--raw", metrics_path(pod["metadata"]["name"]))
        for pod in platform_pods("gateway")
    ]


def lambda_client(
    namespace: str, read_timeout: float = 60, connections: int = 16, gateway: str | None = None
) -> Any:
    """boto3's Lambda client on the gateway (its Service, or the ``gateway`` URL given), for
    ``namespace``; no retries, so every answer (429s included) reaches the test."""
    return boto3.client(
        "lambda",
        endpoint_url=f"{gateway or gateway_url()}/namespaces/{namespace}",
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=Config(
            retries={"max_attempts": 0},
            read_timeout=read_timeout,
            max_pool_connections=connections,
        ),
    )


def wait_until_routable(namespace: str, function: str, timeout: float = 60) -> None:
    """Waits until every gateway replica routes ``function`` (a DryRun answers 204 on each).

    A Function just applied reaches each gateway through its watch; a request sent before that
    gets a 404, which is right for the gateway but a race for a test that sends at once.
    """

    clients: dict[str, Any] = {}  # by gateway pod URL, made once each

    def routable() -> bool:
        urls = gateway_pod_urls()  # listed again each time: replicas may be restarting
        if not urls:
            return False
        for url in urls:
            if url not in clients:
                clients[url] = lambda_client(namespace, gateway=url)
            client = clients[url]
            try:
                client.invoke(FunctionName=function, InvocationType="DryRun")
            except (client.exceptions.ResourceNotFoundException, BotoCoreError):
                return False  # not seen yet, or the pod went away meanwhile
        return True

    wait_until(routable, timeout, f"every gateway routes {namespace}/{function}")
