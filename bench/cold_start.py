"""Cold start through the gateway: request -> first byte for a function scaled to zero, next to
the warm invocation latency measured in the same run.

    .venv/bin/python -m bench.cold_start --samples 20

A Python hello Function (inline code, image present on the node) with ``idleSeconds: 0`` goes
back to zero instances right after each call. Each sample waits until its pod is gone, then
times one Invoke API call through the gateway's Service (from this host) until the first byte
of the answer, and then a few warm calls. Watches on the namespace's pods and EndpointSlices,
timestamped here, break each cold start down:

- request -> pod object exists (wake-up, autoscaler decision, Deployment and ReplicaSet controllers)
- pod exists -> pod has an IP (scheduler, kubelet, sandbox and network)
- pod IP -> the address is in an EndpointSlice (endpoint controller)
- and when the kubelet's readiness probe marked the pod Ready.
The agent announces itself to the autoscaler as soon as its runtime is initialised, and the
waiting gateway routes to it at once: the first byte usually arrives before the pod's IP is
even visible through the API, so the last three steps come after it.

Then a burst: BURST slow calls to a function with one instance and perInstance 1; the time
until its Deployment asks for BURST replicas is the scale-up decision latency.

The same samples are then taken in a second namespace with a warm pool of ``--pool-size``
Python pods (``kubelambda.io/warm-pool``): each cold call is served by a pool pod specialised
with the function's code; before each sample the pool is back to full.
Results: bench/results/cold_start-<UTC time>.json. Needs the platform installed (`make install`).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import threading
import time
from typing import Any

from kubernetes import client, watch

from bench.common import (
    add_cluster_arguments,
    bench_namespace,
    connect,
    exit_on_sigterm,
    machine,
    percentile,
    summary,
    write_results,
)

HANDLER = 'def handler(event, context):\n    return {"hello": "world"}\n'
SLOW_HANDLER = "import time\ndef handler(event, context):\n    time.sleep(5)\n    return 1\n"
BURST = 6
POOL_ANNOTATION = "kubelambda.io/warm-pool"
STEPS = ("pod_created", "pod_ip", "endpoint", "first_byte")


class Timeline(threading.Thread):
    """First local time each pod reached a state, from a watch (pods or EndpointSlices)."""

    def __init__(self, list_call: Any, namespace: str, on_event: Any) -> None:
        super().__init__(daemon=True)
        self._list_call = list_call
        self._namespace = namespace
        self._on_event = on_event
        self.stopped = False

    def run(self) -> None:
        while not self.stopped:
            stream = watch.Watch().stream(self._list_call, self._namespace, timeout_seconds=30)
            for event in stream:
                self._on_event(time.monotonic(), event["object"])
                if self.stopped:
                    break


class PodTimes:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.first: dict[tuple[str, str], float] = {}  # (pod name or IP, step) -> time

    def mark(self, who: str, step: str, when: float) -> None:
        with self.lock:
            self.first.setdefault((who, step), when)

    def on_pod(self, when: float, pod: Any) -> None:
        name = pod.metadata.name
        self.mark(name, "pod_created", when)
        if pod.status.pod_ip:
            self.mark(name, "pod_ip", when)
            self.mark(pod.status.pod_ip, "ip_of:" + name, when)
        for condition in pod.status.conditions or ():
            if condition.type == "Ready" and condition.status == "True":
                self.mark(name, "kubelet_ready", when)

    def breakdown(self, started: float) -> dict[str, float] | None:
        """When the one pod created after ``started`` reached each step (NaN: not seen)."""
        # The kubelet reports the pod (IP, Ready) only after the call was served: wait.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(
            step == "kubelet_ready" and t >= started for (_, step), t in self.first.items()
        ):
            time.sleep(0.05)
        with self.lock:
            pods = [
                who
                for (who, step), t in self.first.items()
                if step == "pod_created" and t >= started
            ]
            if len(pods) != 1:
                print(f"new pods: {pods}", flush=True)
                return None
            pod = pods[0]
            ip = next((who for (who, step) in self.first if step == "ip_of:" + pod), "")
            nan = float("nan")
            return {
                "pod_created": self.first[(pod, "pod_created")] - started,
                "pod_ip": self.first.get((pod, "pod_ip"), nan) - started,
                "endpoint": self.first.get((ip, "endpoint"), nan) - started,
                "kubelet_ready": self.first.get((pod, "kubelet_ready"), nan) - started,
            }

    def on_slice(self, when: float, endpoint_slice: Any) -> None:
        for endpoint in endpoint_slice.endpoints or ():
            for address in endpoint.addresses or ():
                self.mark(address, "endpoint", when)


def create_function(
    custom: client.CustomObjectsApi, namespace: str, name: str, code: str, **spec: Any
) -> None:
    body = {
        "apiVersion": "kubelambda.io/v1alpha1",
        "kind": "Function",
        "metadata": {"name": name},
        "spec": {
            "runtime": "python3.11",
            "handler": "app.handler",
            "code": {"inline": {"app.py": code}},
            **spec,
        },
    }
    custom.create_namespaced_custom_object(
        "kubelambda.io", "v1alpha1", namespace, "functions", body
    )


def scale_up_decision(
    custom: client.CustomObjectsApi, apps: client.AppsV1Api, host: str, namespace: str
) -> dict[str, float]:
    """Seconds from a burst of BURST slow calls (1 instance running, perInstance 1) until the
    Deployment asks for BURST replicas (the decision), and until they are all ready."""
    body = {
        "apiVersion": "kubelambda.io/v1alpha1",
        "kind": "Function",
        "metadata": {"name": "burst"},
        "spec": {
            "runtime": "python3.11",
            "handler": "app.handler",
            "timeoutSeconds": 30,
            "code": {"inline": {"app.py": SLOW_HANDLER}},
        },
    }
    custom.create_namespaced_custom_object(
        "kubelambda.io", "v1alpha1", namespace, "functions", body
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with contextlib.suppress(client.ApiException):
            status = apps.read_namespaced_deployment("fn-burst-latest", namespace).status
            if status.ready_replicas == 1:
                break
        time.sleep(0.2)
    started = time.monotonic()
    calls = [
        threading.Thread(target=invoke, args=(host, namespace, "burst"), daemon=True)
        for _ in range(BURST)
    ]
    for call in calls:
        call.start()
    decided = ready = float("nan")
    while time.monotonic() - started < 60:
        deployment = apps.read_namespaced_deployment("fn-burst-latest", namespace)
        if math.isnan(decided) and (deployment.spec.replicas or 0) >= BURST:
            decided = time.monotonic() - started
        if (deployment.status.ready_replicas or 0) >= BURST:
            ready = time.monotonic() - started
            break
        time.sleep(0.02)
    for call in calls:
        call.join()
    return {"decision_s": decided, "all_ready_s": ready}


def invoke(host: str, namespace: str, function: str) -> tuple[float, float, int]:
    """(seconds to the first byte, seconds to the whole answer, status) of one call."""
    connection = http.client.HTTPConnection(host, 8080, timeout=60)
    path = f"/namespaces/{namespace}/2015-03-31/functions/{function}/invocations"
    started = time.monotonic()
    connection.request("POST", path, body=b"{}")
    response = connection.getresponse()
    first_byte = time.monotonic() - started
    response.read()
    total = time.monotonic() - started
    connection.close()
    return first_byte, total, response.status


FUNCTION_PODS = "kubelambda.io/function"


def wait_for_zero(
    core: client.CoreV1Api, custom: client.CustomObjectsApi, namespace: str, timeout: float
) -> None:
    """Until the autoscaler has scaled the function to zero and its pods are gone. (A pool pod
    being specialised is not labelled as the function's yet: the scale reason tells.)"""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        function = custom.get_namespaced_custom_object(
            "kubelambda.io", "v1alpha1", namespace, "functions", "hello"
        )
        reason = str((function.get("status") or {}).get("lastScaleReason"))
        pods = core.list_namespaced_pod(namespace, label_selector=FUNCTION_PODS).items
        if "-> 0 instances" in reason and not pods:
            return
        time.sleep(0.2)
    raise TimeoutError("the function did not scale to zero")


def wait_for_pool(core: client.CoreV1Api, namespace: str, size: int, timeout: float) -> None:
    """Until ``size`` pool pods are ready (the pool refills after each cold start)."""
    selector = "kubelambda.io/pool=python3-11,kubelambda.io/pool-state=idle"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pods = core.list_namespaced_pod(namespace, label_selector=selector).items
        ready = [
            p
            for p in pods
            if p.metadata.deletion_timestamp is None
            and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or ())
        ]
        if len(ready) >= size:
            return
        time.sleep(0.2)
    raise TimeoutError(f"the warm pool never had {size} ready pods")


def cold_starts(
    api: client.ApiClient, host: str, namespace: str, args: argparse.Namespace, pool_size: int
) -> tuple[list[dict[str, float]], list[float], int]:
    """``args.samples`` cold calls (and warm calls after each): their timings, failures.
    With a pool, the serving pod existed before the call: only first byte and total count."""
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    discovery = client.DiscoveryV1Api(api)
    cold: list[dict[str, float]] = []
    warm: list[float] = []
    failures = 0
    create_function(custom, namespace, "hello", HANDLER, scaling={"idleSeconds": 0})
    times = PodTimes()
    watchers = [
        Timeline(core.list_namespaced_pod, namespace, times.on_pod),
        Timeline(discovery.list_namespaced_endpoint_slice, namespace, times.on_slice),
    ]
    for watcher in watchers:
        watcher.start()
    for index in range(args.samples):
        wait_for_zero(core, custom, namespace, 120)
        if pool_size:
            wait_for_pool(core, namespace, pool_size, 120)
        time.sleep(0.5)
        started = time.monotonic()
        first_byte, total, status = invoke(host, namespace, "hello")
        if status != 200:
            print(f"sample {index + 1}: status {status}", flush=True)
            failures += 1
            continue
        for _ in range(args.warm_calls):
            warm.append(invoke(host, namespace, "hello")[0])
        sample: dict[str, float] | None = {}
        if not pool_size:
            sample = times.breakdown(started)
        if sample is None:
            print(f"sample {index + 1}: not exactly one new pod", flush=True)
            failures += 1
            continue
        sample |= {"first_byte": first_byte, "total": total}
        cold.append(sample)
        print(
            f"sample {index + 1}: first byte {first_byte * 1000:.0f} ms "
            + " ".join(f"{k}={v * 1000:.0f}" for k, v in sample.items()),
            flush=True,
        )
    for watcher in watchers:
        watcher.stopped = True
    return cold, warm, failures


def report(cold: list[dict[str, float]], warm: list[float], failures: int) -> dict[str, Any]:
    first_bytes = [s["first_byte"] * 1000 for s in cold]
    steps = [step for step in (*STEPS[:-1], "kubelet_ready") if cold and step in cold[0]]
    return {
        "samples": len(cold),
        "failures": failures,
        "cold_first_byte_ms": summary(first_bytes),
        "cold_p95_over_p50": percentile(first_bytes, 0.95) / percentile(first_bytes, 0.5)
        if first_bytes
        else None,
        "steps_ms": {
            step: summary([s[step] * 1000 for s in cold if not math.isnan(s[step])])
            for step in (*steps, "first_byte")
        },
        "warm_first_byte_ms": summary([w * 1000 for w in warm]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_cluster_arguments(parser)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--warm-calls", type=int, default=5, help="warm calls after each sample")
    parser.add_argument(
        "--pool-size", type=int, default=2, help="warm pool of the second run (0: skip it)"
    )
    args = parser.parse_args()
    exit_on_sigterm()
    api = connect(args.kubeconfig)
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    gateway = core.read_namespaced_service("kubelambda-gateway", args.operator_namespace)
    host = gateway.spec.cluster_ip
    result: dict[str, Any] = {"machine": machine()}
    failures = 0
    with bench_namespace(api, "coldstart", 120) as namespace:
        cold, warm, failed = cold_starts(api, host, namespace, args, 0)
        result["without_pool"] = report(cold, warm, failed)
        failures += failed
        burst = scale_up_decision(custom, client.AppsV1Api(api), host, namespace)
        print(f"burst of {BURST}: {burst}", flush=True)
        result[f"scale_up_to_{BURST}"] = burst
    if args.pool_size:
        with bench_namespace(api, "coldpool", 120) as namespace:
            annotation = {POOL_ANNOTATION: f"python3.11={args.pool_size}"}
            core.patch_namespace(namespace, {"metadata": {"annotations": annotation}})
            cold, warm, failed = cold_starts(api, host, namespace, args, args.pool_size)
            result["with_pool"] = report(cold, warm, failed)
            failures += failed
    print(json.dumps(result, indent=2))
    write_results("cold_start", args.output, result)
    if failures:
        raise SystemExit(f"{failures} samples failed")


if __name__ == "__main__":
    main()
