"""What both benchmarks share: cluster access, bench namespaces, the operator pod, results."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from kubernetes.stream import stream

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "bench" / "results"
GROUP, VERSION, PLURAL = "kubelambda.io", "v1alpha1", "functions"
FUNCTION_LABEL = "kubelambda.io/function"
RUN_LABEL = "bench.kubelambda.io/run"
PLATFORM_NAMESPACE = "kubelambda-system"
OPERATOR_DEPLOYMENT = "kubelambda-operator"
RUNTIME_IMAGE = "kubelambda/runtime-python3.11:dev"
HELLO_CODE = """\
import json


def handler(event, context):
    name = (event or {}).get("name", "world")
    return {"statusCode": 200, "body": json.dumps({"message": f"hello, {name}"})}
"""


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kubeconfig",
        default=os.environ.get("KUBECONFIG") or str(REPO_ROOT / ".cluster" / "kubeconfig"),
        help="kubeconfig of the cluster (default: $KUBECONFIG, else .cluster/kubeconfig)",
    )
    parser.add_argument(
        "--operator-namespace",
        default=PLATFORM_NAMESPACE,
        help="namespace of the operator Deployment (default: %(default)s)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="JSON file to write (default: bench/results/<benchmark>-<UTC time>.json)",
    )


def connect(kubeconfig: str) -> client.ApiClient:
    config.load_kube_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    return client.ApiClient()


def exit_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so every ``finally`` (namespace cleanup) still runs."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def run_id() -> str:
    return uuid.uuid4().hex[:6]


def wait_until(
    predicate: Callable[[], bool], timeout: float, interval: float = 0.5, what: str = ""
) -> float:
    """Poll ``predicate`` until true; seconds it took. Raises TimeoutError after ``timeout``."""
    start = time.monotonic()
    deadline = start + timeout
    while True:
        if predicate():
            return time.monotonic() - start
        if time.monotonic() >= deadline:
            raise TimeoutError(f"not done after {timeout:.0f}s: {what}")
        time.sleep(interval)


@contextmanager
def bench_namespace(api: client.ApiClient, prefix: str, delete_timeout: float) -> Iterator[str]:
    """A fresh ``bench-*`` namespace, deleted (and waited for, bounded) on the way out."""
    core = client.CoreV1Api(api)
    name = f"bench-{prefix}-{run_id()}"
    body: Any = {"metadata": {"name": name, "labels": {RUN_LABEL: name}}}
    core.create_namespace(body)
    try:
        yield name
    finally:
        delete_namespace(core, name, delete_timeout)


def delete_namespace(core: client.CoreV1Api, name: str, timeout: float) -> None:
    try:
        core.delete_namespace(name, propagation_policy="Background")
    except ApiException as error:
        if error.status != 404:
            raise

    def gone() -> bool:
        try:
            core.read_namespace(name)
        except ApiException as error:
            if error.status == 404:
                return True
            raise
        return False

    try:
        wait_until(gone, timeout, interval=1.0, what=f"namespace {name} deleted")
    except TimeoutError:
        print(f"warning: namespace {name} still terminating after {timeout:.0f}s")


def function_body(
    name: str,
    run: str,
    memory_mb: int = 128,
    variables: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A Function like examples/hello-python.yaml: python3.11, inline code."""
    spec: dict[str, Any] = {
        "runtime": "python3.11",
        "handler": "app.handler",
        "memoryMB": memory_mb,
        "timeoutSeconds": 3,
        "code": {"inline": {"app.py": HELLO_CODE}},
    }
    if variables:
        spec["environment"] = {"variables": variables}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Function",
        "metadata": {"name": name, "labels": {RUN_LABEL: run}},
        "spec": spec,
    }


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == type_), None)


def deployment_ready(deployment: dict[str, Any]) -> bool:
    """All desired pods of the current generation are updated and ready (the operator's test)."""
    spec_replicas = int((deployment.get("spec") or {}).get("replicas", 1))
    status = deployment.get("status") or {}
    generation = int((deployment.get("metadata") or {}).get("generation") or 0)
    return (
        int(status.get("observedGeneration") or 0) >= generation
        and int(status.get("updatedReplicas") or 0) >= spec_replicas
        and int(status.get("readyReplicas") or 0) >= spec_replicas
    )


class Watcher(threading.Thread):
    """Streams watch events of one list call in a background thread, restarting as needed.

    ``on_event(type, object, monotonic_time)`` runs for every event; the time is taken the moment
    the event arrives, so milestones are not delayed by whoever waits for them.
    """

    def __init__(
        self,
        list_call: Callable[..., Any],
        on_event: Callable[[str, dict[str, Any], float], None],
        **list_kwargs: Any,
    ) -> None:
        super().__init__(daemon=True, name=f"watch-{getattr(list_call, '__name__', 'list')}")
        self.list_call = list_call
        self.on_event = on_event
        self.list_kwargs = list_kwargs
        self.stopping = threading.Event()
        self.started_streaming = threading.Event()
        self.errors: list[str] = []

    def run(self) -> None:
        resource_version: str | None = None
        while not self.stopping.is_set():
            stream_watch = watch.Watch()  # type: ignore[no-untyped-call]
            kwargs = dict(self.list_kwargs, timeout_seconds=5, _request_timeout=15)
            if resource_version:
                kwargs["resource_version"] = resource_version
            try:
                self.started_streaming.set()
                events = stream_watch.stream(self.list_call, **kwargs)  # type: ignore[no-untyped-call]
                for event in events:
                    now = time.monotonic()
                    obj = event["raw_object"]
                    resource_version = obj.get("metadata", {}).get("resourceVersion")
                    self.on_event(str(event["type"]), obj, now)
                    if self.stopping.is_set():
                        stream_watch.stop()  # type: ignore[no-untyped-call]
                        break
            except ApiException as error:
                if error.status == 410:  # too old: start over from the current state
                    resource_version = None
                else:
                    self.errors.append(f"{error.status} {error.reason}")
                    time.sleep(0.5)
            except Exception as error:  # a dropped stream: reconnect
                self.errors.append(repr(error))
                time.sleep(0.5)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=20)


@dataclass
class OperatorPod:
    """The running operator pod: its name, restarts and memory as seen from inside it."""

    name: str
    uid: str
    restarts: int
    started: str
    image_id: str


def as_dict(api: client.ApiClient, model: Any) -> Any:
    """A client model as the API's JSON (camelCase dicts): no Optional attribute chains."""
    return api.sanitize_for_serialization(model)  # type: ignore[no-untyped-call]


def operator_pod(api: client.ApiClient, namespace: str) -> OperatorPod:
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    deployment = as_dict(api, apps.read_namespaced_deployment(OPERATOR_DEPLOYMENT, namespace))
    labels = deployment["spec"]["selector"]["matchLabels"]
    selector = ",".join(f"{k}={v}" for k, v in labels.items())
    pods = [
        p
        for p in as_dict(api, core.list_namespaced_pod(namespace, label_selector=selector))["items"]
        if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
    ]
    if len(pods) != 1:
        raise RuntimeError(f"expected one running operator pod, found {len(pods)}")
    pod = pods[0]
    statuses = pod["status"].get("containerStatuses") or []
    return OperatorPod(
        name=pod["metadata"]["name"],
        uid=pod["metadata"]["uid"],
        restarts=sum(int(s.get("restartCount") or 0) for s in statuses),
        started=str(pod["status"].get("startTime") or ""),
        image_id=str(statuses[0].get("imageID") or "") if statuses else "",
    )


# Runs inside the operator container (python3 is there; cat and ps may not be).
MEMORY_PROBE = r"""
import json, os
def kib(line): return int(line.split()[1])
status = {l.split(':')[0]: l for l in open('/proc/1/status')}
out = {'vm_rss_kib': kib(status['VmRSS']), 'vm_hwm_kib': kib(status['VmHWM']),
       'threads': int(status['Threads'].split()[1]), 'fds': len(os.listdir('/proc/1/fd'))}
v1 = '/sys/fs/cgroup/memory/'
if os.path.exists(v1 + 'memory.usage_in_bytes'):
    out['cgroup'] = 'v1'
    out['cgroup_usage_bytes'] = int(open(v1 + 'memory.usage_in_bytes').read())
    stat = dict(l.split() for l in open(v1 + 'memory.stat'))
    out['cgroup_rss_bytes'] = int(stat.get('total_rss', stat.get('rss', 0)))
elif os.path.exists('/sys/fs/cgroup/memory.current'):
    out['cgroup'] = 'v2'
    out['cgroup_usage_bytes'] = int(open('/sys/fs/cgroup/memory.current').read())
    stat = dict(l.split() for l in open('/sys/fs/cgroup/memory.stat'))
    out['cgroup_rss_bytes'] = int(stat.get('anon', 0))
print(json.dumps(out))
"""


class MemoryProbe:
    """Reads VmRSS/VmHWM of the operator process (PID 1) and its cgroup's usage, via exec.

    Exec swaps the request method of its API client while it runs, so the probe owns a client
    of its own and lets one caller at a time use it. The cgroup figures include the short-lived
    probe process itself (a python3 of ~10 MiB); VmRSS is the operator's alone.
    """

    def __init__(self, api: client.ApiClient, namespace: str, pod: str) -> None:
        self.core = client.CoreV1Api(client.ApiClient(api.configuration))
        self.namespace = namespace
        self.pod = pod
        self.lock = threading.Lock()

    def read(self) -> dict[str, Any]:
        with self.lock:
            output = stream(
                self.core.connect_get_namespaced_pod_exec,
                self.pod,
                self.namespace,
                command=["python3", "-c", MEMORY_PROBE],
                stderr=True,
                stdin=False,
                stdout=True,
                tty=False,
                _request_timeout=20,
            )
        result: dict[str, Any] = json.loads(str(output).strip().splitlines()[-1])
        return result


def operator_log_summary(
    api: client.ApiClient, namespace: str, pod: str, since_seconds: int
) -> dict[str, Any]:
    """Counts of the operator's log lines since the run began; its warnings and errors."""
    core = client.CoreV1Api(api)
    text = core.read_namespaced_pod_log(
        pod, namespace, since_seconds=max(1, since_seconds), _request_timeout=60
    )
    lines = [line for line in str(text).splitlines() if "/healthz" not in line]
    problems = [
        line
        for line in lines
        if any(word in line for word in (" ERROR ", " WARNING ", "Traceback", " CRITICAL "))
    ]
    return {
        "lines_without_healthz": len(lines),
        "handler_succeeded": sum("succeeded." in line for line in lines),
        "handler_failed_temporarily": sum("failed temporarily" in line for line in lines),
        "handler_failed_permanently": sum("failed permanently" in line for line in lines),
        "warnings_and_errors": len(problems),
        "problem_samples": unique_samples(problems, 15),
    }


def unique_samples(lines: Sequence[str], limit: int) -> list[str]:
    """Up to ``limit`` lines, one per distinct message (the timestamp prefix ignored)."""
    seen: dict[str, str] = {}
    for line in lines:
        key = line.split(" ", 2)[-1][:160]
        seen.setdefault(key, line[:400])
    return list(seen.values())[:limit]


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (p50 of 20 samples is the 10th smallest)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def summary(values: Sequence[float]) -> dict[str, float | int]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50": round(percentile(values, 0.50), 3),
        "p95": round(percentile(values, 0.95), 3),
        "max": round(max(values), 3),
        "min": round(min(values), 3),
        "mean": round(statistics.fmean(values), 3),
    }


def machine() -> dict[str, Any]:
    return {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def nodes(api: client.ApiClient) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = as_dict(api, client.CoreV1Api(api).list_node())["items"]
    return items


def cluster_info(api: client.ApiClient) -> dict[str, Any]:
    return {
        "nodes": [
            {
                "name": n["metadata"]["name"],
                "kubelet": n["status"]["nodeInfo"]["kubeletVersion"],
                "runtime": n["status"]["nodeInfo"]["containerRuntimeVersion"],
                "allocatable": n["status"]["allocatable"],
            }
            for n in nodes(api)
        ]
    }


def write_results(name: str, output: Path | None, data: dict[str, Any]) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = output or RESULTS_DIR / f"{name}-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    return path


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
