"""Async (Event) invocation throughput on the cluster: client -> gateway -> JetStream -> invoker
-> gateway -> noop function pods.

    .venv/bin/python -m bench.async_throughput [--events 5000] [--concurrency 64]

The noop Python function runs 2 instances (fixed: no scale-up competes for the cores) with
``--per-instance`` runtimes each (default 8, so the function has free capacity); the client is
aiohttp on this host, posting to the gateway's ClusterIP. Everything shares 2 cores, so CPU
time per event is reported too (from the pods' cgroups on this host, which is the node of the
local cluster).

- accepted/s: Event invocations answered 202 (the gateway answers only after JetStream's
  publish acknowledgement) with ``--concurrency`` in flight, while the invoker is scaled to 0
  so delivery does not compete for the 2 cores; one gateway replica;
- delivered/s: the invoker is scaled back up and drains that backlog; the rate is taken from
  its ``kubelambda_invoker_events_completed_total`` between the first and the last completion;
- queue-to-start latency with free capacity: 200 more events, one every 20 ms; p50 / p90 / p99
  interpolated from the invoker's ``kubelambda_invoker_queue_latency_seconds`` histogram
  (buckets 5, 10, 20, 50 ms...), the difference across that phase.

Results: bench/results/async_throughput-<UTC time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from bench.common import (
    add_cluster_arguments,
    bench_namespace,
    connect,
    exit_on_sigterm,
    machine,
    wait_until,
    write_results,
)

NOOP = "def handler(event, context):\n    return None\n"
INVOKER = "kubelambda-invoker"
GATEWAY = "app.kubernetes.io/component=gateway"
FUNCTION = "kubelambda.io/function=noop"
COMPLETED = "kubelambda_invoker_events_completed_total"
LATENCY = "kubelambda_invoker_queue_latency_seconds_bucket"


def metrics(url: str) -> list[tuple[str, dict[str, str], float]]:
    """The samples of a Prometheus text page: (name, labels, value)."""
    with urllib.request.urlopen(url, timeout=5) as reply:
        text = reply.read().decode()
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def completed(url: str, namespace: str) -> float:
    return sum(
        value
        for name, labels, value in metrics(url)
        if name == COMPLETED and labels.get("namespace") == namespace
    )


def latency_buckets(url: str) -> dict[float, float]:
    return {
        float(labels["le"]): value
        for name, labels, value in metrics(url)
        if name == LATENCY and labels["le"] != "+Inf"
    }


def quantile(buckets: dict[float, float], fraction: float) -> float:
    """Linear interpolation inside the cumulative bucket that holds ``fraction``."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    target = fraction * total
    lower_bound, lower_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= target:
            share = (target - lower_count) / (count - lower_count) if count > lower_count else 0
            return lower_bound + share * (bound - lower_bound)
        lower_bound, lower_count = bound, count
    return bounds[-1]


async def send_events(url: str, events: int, concurrency: int, spacing_s: float = 0.0) -> float:
    """Seconds to get ``events`` 202s; a refused send is retried (and counted in the output)."""
    refused = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for n in range(events):
            queue.put_nowait(n)

        async def sender() -> None:
            nonlocal refused
            while not queue.empty():
                n = queue.get_nowait()
                while True:
                    async with session.post(
                        url,
                        data=json.dumps({"n": n}),
                        headers={"X-Amz-Invocation-Type": "Event"},
                    ) as reply:
                        await reply.read()
                        if reply.status == 202:
                            break
                        refused += 1
                if spacing_s:
                    await asyncio.sleep(spacing_s)

        started = time.monotonic()
        await asyncio.gather(*(sender() for _ in range(concurrency)))
        elapsed = time.monotonic() - started
    if refused:
        print(f"{refused} sends refused and retried")
    return elapsed


def pod_cpu_seconds(core: client.CoreV1Api, namespace: str, selector: str) -> float:
    """CPU seconds used so far by the pods matching ``selector`` (cgroup v1 cpuacct on this
    host, where the node runs: the local cluster)."""
    total = 0.0
    for pod in core.list_namespaced_pod(namespace, label_selector=selector).items:
        for path in Path("/sys/fs/cgroup/cpuacct/kubepods").glob(f"**/pod{pod.metadata.uid}"):
            total += int((path / "cpuacct.usage").read_text()) / 1e9
    return total


def scale_invoker(apps: client.AppsV1Api, namespace: str, replicas: int) -> None:
    apps.patch_namespaced_deployment_scale(INVOKER, namespace, {"spec": {"replicas": replicas}})


def invoker_metrics_url(core: client.CoreV1Api, namespace: str) -> str | None:
    pods = core.list_namespaced_pod(
        namespace, label_selector="app.kubernetes.io/component=invoker"
    ).items
    for pod in pods:
        ready = any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or ())
        if ready and pod.metadata.deletion_timestamp is None:
            return f"http://{pod.status.pod_ip}:9090/metrics"
    return None


def create_noop(custom: client.CustomObjectsApi, namespace: str, per_instance: int) -> None:
    body: dict[str, Any] = {
        "apiVersion": "kubelambda.io/v1alpha1",
        "kind": "Function",
        "metadata": {"name": "noop"},
        "spec": {
            "runtime": "python3.11",
            "handler": "app.handler",
            "code": {"inline": {"app.py": NOOP}},
            "concurrency": {"perInstance": per_instance},
            "scaling": {"minInstances": 2, "maxInstances": 2},
        },
    }
    custom.create_namespaced_custom_object(
        "kubelambda.io", "v1alpha1", namespace, "functions", body
    )

    def ready() -> bool:
        fn: Any = custom.get_namespaced_custom_object(
            "kubelambda.io", "v1alpha1", namespace, "functions", "noop"
        )
        return int(((fn.get("status") or {}).get("replicas") or {}).get("ready") or 0) >= 2

    wait_until(ready, 120, what="2 ready instances")


def ready_invoker(core: client.CoreV1Api, platform: str) -> str:
    wait_until(lambda: invoker_metrics_url(core, platform) is not None, 120, what="the invoker")
    url = invoker_metrics_url(core, platform)
    assert url is not None
    return url


def drain_rate(metrics_url: str, namespace: str, events: int) -> float:
    """Completions per second between the first and the last one seen (polled every 0.1 s)."""
    first: tuple[float, float] | None = None
    last: tuple[float, float] | None = None
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        done = completed(metrics_url, namespace)
        now = time.monotonic()
        if done and first is None:
            first = (now, done)
        if first is not None:
            last = (now, done)
        if done >= events:
            break
        time.sleep(0.1)
    assert first is not None
    assert last is not None
    assert last[0] > first[0], "the backlog drained within one poll"
    return (last[1] - first[1]) / (last[0] - first[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_cluster_arguments(parser)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--per-instance", type=int, default=8, help="runtimes per function instance (2 instances)"
    )
    args = parser.parse_args()
    exit_on_sigterm()
    api = connect(args.kubeconfig)
    core, apps, custom = client.CoreV1Api(api), client.AppsV1Api(api), client.CustomObjectsApi(api)
    platform = args.operator_namespace
    gateway = core.read_namespaced_service("kubelambda-gateway", platform).spec.cluster_ip
    with bench_namespace(api, "async", 120) as namespace:
        create_noop(custom, namespace, args.per_instance)
        url = f"http://{gateway}:8080/namespaces/{namespace}/2015-03-31/functions/noop/invocations"
        # Warm the path (gateway pool, JetStream stream, consumer) before measuring.
        asyncio.run(send_events(url, 50, 8))
        metrics_url = ready_invoker(core, platform)
        wait_until(lambda: completed(metrics_url, namespace) >= 50, 60, what="warm-up delivered")

        scale_invoker(apps, platform, 0)
        wait_until(lambda: invoker_metrics_url(core, platform) is None, 60, what="invoker gone")
        gateway_cpu = pod_cpu_seconds(core, platform, GATEWAY)
        accept_s = asyncio.run(send_events(url, args.events, args.concurrency))
        gateway_cpu = pod_cpu_seconds(core, platform, GATEWAY) - gateway_cpu
        accepted_per_s = args.events / accept_s
        # The client shares the 2 cores: what one gateway core takes is events per CPU second.
        accepted_per_cpu_s = args.events / gateway_cpu
        print(
            f"accepted {args.events} events in {accept_s:.2f} s: {accepted_per_s:.0f}/s;"
            f" {accepted_per_cpu_s:.0f} per gateway CPU second"
        )

        scale_invoker(apps, platform, 1)
        metrics_url = ready_invoker(core, platform)
        parts = {
            name: (platform, f"app.kubernetes.io/component={name}")
            for name in ("gateway", "invoker", "queue")
        } | {"function_pods": (namespace, FUNCTION)}
        cpu_before = {name: pod_cpu_seconds(core, *where) for name, where in parts.items()}
        delivered_per_s = drain_rate(metrics_url, namespace, args.events)
        cpu_ms_per_event = {
            name: round((pod_cpu_seconds(core, *where) - cpu_before[name]) * 1000 / args.events, 3)
            for name, where in parts.items()
        }
        print(
            f"delivered {args.events} events: {delivered_per_s:.0f}/s;"
            f" CPU ms per event {cpu_ms_per_event}"
        )

        before = latency_buckets(metrics_url)
        asyncio.run(send_events(url, 200, 1, spacing_s=0.02))
        total = args.events + 200
        wait_until(lambda: completed(metrics_url, namespace) >= total, 60, what="paced events")
        after = latency_buckets(metrics_url)
        phase = {bound: after[bound] - before.get(bound, 0) for bound in after}
        latency_ms = {
            f"p{int(q * 100)}": round(quantile(phase, q) * 1000, 1) for q in (0.5, 0.9, 0.99)
        }
        print(f"queue-to-start with free capacity: {latency_ms}")
    result = {
        "machine": machine(),
        "events": args.events,
        "concurrency": args.concurrency,
        "per_instance": args.per_instance,
        "accepted_per_s": round(accepted_per_s),
        "accepted_per_gateway_cpu_s": round(accepted_per_cpu_s),
        "delivered_per_s": round(delivered_per_s),
        "delivery_cpu_ms_per_event": cpu_ms_per_event,
        "queue_to_start_ms": latency_ms,
        "targets": {"accepted_per_s": 2000, "delivered_per_s": 1000, "queue_to_start_p50_ms": 20},
    }
    print(json.dumps(result, indent=2))
    write_results("async_throughput", args.output, result)


if __name__ == "__main__":
    main()
