"""Function apply -> Ready latency, against a plain Deployment of the same pod as baseline.

    .venv/bin/python -m bench.operator_ready [--count 20]

One Function at a time (inline python3.11 code, like examples/hello-python.yaml) is created in a
fresh ``bench-ready-*`` namespace and timed from the moment ``create`` returns until a watch
sees ``Ready=True`` in its status. Each Function is deleted (and its pod waited for) before the
next, so every sample starts on a quiet node. Interleaved with them, the baseline: a bare
Deployment with the very pod template the operator generated (copied from a warm-up Function's
Deployment: same runtime image, readiness probe, resources and code volume), timed from
``create`` to all replicas updated and ready. Target: Function p50 <= 3 s with the image present.
"""

from __future__ import annotations

import argparse
import copy
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from bench.common import (
    FUNCTION_LABEL,
    GROUP,
    PLURAL,
    RUNTIME_IMAGE,
    VERSION,
    Watcher,
    add_cluster_arguments,
    as_dict,
    bench_namespace,
    cluster_info,
    condition,
    connect,
    deployment_ready,
    exit_on_sigterm,
    function_body,
    machine,
    nodes,
    operator_log_summary,
    operator_pod,
    summary,
    utc_now,
    wait_until,
    write_results,
)

BASELINE_LABEL = "bench.kubelambda.io/baseline"


class Milestones:
    """First time (monotonic) each (object, milestone) was seen by a watch; waitable."""

    def __init__(self) -> None:
        self._times: dict[tuple[str, str], float] = {}
        self._changed = threading.Condition()

    def mark(self, name: str, milestone: str, when: float) -> None:
        with self._changed:
            self._times.setdefault((name, milestone), when)
            self._changed.notify_all()

    def get(self, name: str, milestone: str) -> float | None:
        with self._changed:
            return self._times.get((name, milestone))

    def wait(self, name: str, milestone: str, timeout: float) -> float | None:
        key = (name, milestone)
        with self._changed:
            self._changed.wait_for(lambda: key in self._times, timeout=timeout)
            return self._times.get(key)


@dataclass
class Sample:
    kind: str  # "function" or "baseline"
    name: str
    create_call_s: float
    ready_s: float | None
    """From create returning to Ready=True (Function) / all replicas ready (Deployment)."""
    deployment_seen_s: float | None = None
    """Function only: create returned -> its Deployment appeared (the operator's reaction)."""
    deployment_ready_s: float | None = None
    """Function only: create returned -> its Deployment reported ready."""
    status_lag_s: float | None = None
    """Function only: Deployment ready -> Function Ready=True (the operator's status update)."""
    pod_created_s: float | None = None
    """create returned -> the pod appeared."""
    pod_running_s: float | None = None
    """create returned -> its container was reported running."""
    pod_ready_s: float | None = None
    """create returned -> the pod reported Ready (readiness probe passed)."""
    cleanup_s: float | None = None
    error: str | None = None


class ReadyBench:
    def __init__(self, api: client.ApiClient, namespace: str, args: argparse.Namespace) -> None:
        self.api = api
        self.namespace = namespace
        self.args = args
        self.custom = client.CustomObjectsApi(api)
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)
        self.seen = Milestones()
        self.watchers = [
            Watcher(
                self.custom.list_namespaced_custom_object,
                self.on_function,
                group=GROUP,
                version=VERSION,
                namespace=namespace,
                plural=PLURAL,
            ),
            Watcher(self.apps.list_namespaced_deployment, self.on_deployment, namespace=namespace),
            Watcher(self.core.list_namespaced_pod, self.on_pod, namespace=namespace),
        ]
        self.template: dict[str, Any] | None = None
        self.annotations: dict[str, str] = {}

    # Watch callbacks (watcher threads) ------------------------------------------------------

    def on_function(self, event: str, obj: dict[str, Any], when: float) -> None:
        if event == "DELETED":
            return
        name = obj["metadata"]["name"]
        ready = condition(obj, "Ready")
        if ready is not None and ready.get("status") == "True":
            self.seen.mark(name, "ready", when)

    def on_deployment(self, event: str, obj: dict[str, Any], when: float) -> None:
        if event == "DELETED":
            return
        name = obj["metadata"]["name"]
        self.seen.mark(name, "seen", when)
        if deployment_ready(obj):
            self.seen.mark(name, "ready", when)

    def on_pod(self, event: str, obj: dict[str, Any], when: float) -> None:
        """Pod milestones, keyed by the Function or baseline the pod belongs to."""
        labels = obj["metadata"].get("labels") or {}
        owner = labels.get(FUNCTION_LABEL) or labels.get(BASELINE_LABEL)
        if event == "DELETED" or not owner or obj["metadata"].get("deletionTimestamp"):
            return
        key = f"pod:{owner}"
        self.seen.mark(key, "created", when)
        status = obj.get("status") or {}
        if any(c.get("state", {}).get("running") for c in status.get("containerStatuses") or []):
            self.seen.mark(key, "running", when)
        ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
        if ready is not None and ready.get("status") == "True":
            self.seen.mark(key, "ready", when)

    def pod_times(self, sample: Sample, created: float) -> None:
        """Fill in the pod's milestones (relative to ``create`` returning) on ``sample``."""
        key = f"pod:{sample.name}"
        for milestone in ("created", "running", "ready"):
            at = self.seen.get(key, milestone)
            setattr(sample, f"pod_{milestone}_s", None if at is None else at - created)

    # Samples --------------------------------------------------------------------------------

    def start(self) -> None:
        for watcher in self.watchers:
            watcher.start()
        for watcher in self.watchers:
            watcher.started_streaming.wait(timeout=10)
        time.sleep(1.0)  # let both watch requests reach the API server

    def stop(self) -> None:
        for watcher in self.watchers:
            watcher.stopping.set()
        for watcher in self.watchers:
            watcher.join(timeout=15)

    def function_sample(self, name: str) -> Sample:
        body = function_body(name, self.namespace)
        started = time.monotonic()
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body)
        created = time.monotonic()
        ready = self.seen.wait(name, "ready", self.args.timeout)
        deployment = f"fn-{name}-latest"
        seen_at = self.seen.get(deployment, "seen")
        deployment_ready_at = self.seen.get(deployment, "ready")
        sample = Sample(
            kind="function",
            name=name,
            create_call_s=created - started,
            ready_s=None if ready is None else ready - created,
            deployment_seen_s=None if seen_at is None else seen_at - created,
            deployment_ready_s=None
            if deployment_ready_at is None
            else deployment_ready_at - created,
            status_lag_s=(
                None
                if ready is None or deployment_ready_at is None
                else ready - deployment_ready_at
            ),
        )
        if ready is None:
            sample.error = f"not Ready after {self.args.timeout:.0f}s"
        self.pod_times(sample, created)
        sample.cleanup_s = self.delete_and_wait(
            lambda: self.custom.delete_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, name
            ),
            f"{FUNCTION_LABEL}={name}",
        )
        return sample

    def baseline_sample(self, name: str) -> Sample:
        assert self.template is not None
        body: Any = copy.deepcopy(self.template)
        body["metadata"]["name"] = name
        labels = {BASELINE_LABEL: name}
        body["metadata"]["labels"] = labels
        body["spec"]["selector"] = {"matchLabels": labels}
        body["spec"]["template"]["metadata"] = {"labels": labels, "annotations": self.annotations}
        started = time.monotonic()
        self.apps.create_namespaced_deployment(self.namespace, body)
        created = time.monotonic()
        ready = self.seen.wait(name, "ready", self.args.timeout)
        sample = Sample(
            kind="baseline",
            name=name,
            create_call_s=created - started,
            ready_s=None if ready is None else ready - created,
        )
        if ready is None:
            sample.error = f"not available after {self.args.timeout:.0f}s"
        self.pod_times(sample, created)
        sample.cleanup_s = self.delete_and_wait(
            lambda: self.apps.delete_namespaced_deployment(
                name, self.namespace, propagation_policy="Background"
            ),
            f"{BASELINE_LABEL}={name}",
        )
        return sample

    def delete_and_wait(self, delete: Any, pod_selector: str) -> float | None:
        """Delete an object, then wait (bounded) until its pods are gone; seconds or None."""
        started = time.monotonic()
        try:
            delete()
        except ApiException as error:
            if error.status != 404:
                raise

        def pods_gone() -> bool:
            pods = self.core.list_namespaced_pod(self.namespace, label_selector=pod_selector)
            return not pods.items

        try:
            wait_until(pods_gone, self.args.timeout, interval=0.25, what=pod_selector)
        except TimeoutError:
            print(f"warning: pods of {pod_selector} still there after {self.args.timeout:.0f}s")
            return None
        return time.monotonic() - started

    def capture_template(self, warm_function: str) -> None:
        """The warm-up Function's Deployment, made standalone: the baseline's pod template."""
        deployment = self.apps.read_namespaced_deployment(
            f"fn-{warm_function}-latest", self.namespace
        )
        raw: dict[str, Any] = as_dict(self.api, deployment)
        pod_spec = raw["spec"]["template"]["spec"]
        # Inline code travels in the template's annotations (read by downward API volumes).
        self.annotations = raw["spec"]["template"]["metadata"].get("annotations") or {}
        self.template = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {},
            "spec": {
                "replicas": raw["spec"]["replicas"],
                "strategy": raw["spec"]["strategy"],
                "template": {"spec": pod_spec},
            },
        }


def image_present(api: client.ApiClient, image: str) -> bool:
    return any(
        name.endswith(image)
        for node in nodes(api)
        for entry in node["status"].get("images") or []
        for name in entry.get("names") or []
    )


def values(samples: list[Sample], kind: str, field: str) -> list[float]:
    return [
        float(getattr(s, field))
        for s in samples
        if s.kind == kind and getattr(s, field) is not None and s.error is None
    ]


def intervals(samples: list[Sample], kind: str, start: str, end: str) -> list[float]:
    """``end - start`` per sample of ``kind`` (fields of Sample, both relative to create)."""
    result = []
    for s in samples:
        first, last = getattr(s, start), getattr(s, end)
        if s.kind == kind and s.error is None and first is not None and last is not None:
            result.append(float(last) - float(first))
    return result


ROWS: dict[str, tuple[str, str, str, str]] = {
    # key: (label, kind, start field or "", end field)
    "function_apply_to_ready": ("Function create -> Ready=True", "function", "", "ready_s"),
    "function_create_to_deployment": (
        "  create -> Deployment exists",
        "function",
        "",
        "deployment_seen_s",
    ),
    "function_create_to_pod": ("  create -> pod exists", "function", "", "pod_created_s"),
    "function_pod_to_running": (
        "  pod exists -> container running",
        "function",
        "pod_created_s",
        "pod_running_s",
    ),
    "function_running_to_pod_ready": (
        "  container running -> pod Ready",
        "function",
        "pod_running_s",
        "pod_ready_s",
    ),
    "function_create_to_deployment_ready": (
        "  create -> Deployment ready",
        "function",
        "",
        "deployment_ready_s",
    ),
    "function_deployment_ready_to_ready": (
        "  Deployment ready -> Ready=True",
        "function",
        "",
        "status_lag_s",
    ),
    "baseline_create_to_available": ("Baseline Deployment -> ready", "baseline", "", "ready_s"),
    "baseline_create_to_pod": ("  create -> pod exists", "baseline", "", "pod_created_s"),
    "baseline_pod_to_running": (
        "  pod exists -> container running",
        "baseline",
        "pod_created_s",
        "pod_running_s",
    ),
    "baseline_running_to_pod_ready": (
        "  container running -> pod Ready",
        "baseline",
        "pod_running_s",
        "pod_ready_s",
    ),
}


def report(samples: list[Sample]) -> dict[str, Any]:
    summaries = {
        key: summary(intervals(samples, kind, start, end) if start else values(samples, kind, end))
        for key, (_, kind, start, end) in ROWS.items()
    }
    function = summaries["function_apply_to_ready"]
    baseline = summaries["baseline_create_to_available"]
    ratio = {
        key: round(float(function[key]) / float(baseline[key]), 2)
        for key in ("p50", "p95", "max", "mean")
        if key in function and key in baseline and float(baseline[key]) > 0
    }
    return {"summaries": summaries, "ratio_function_to_baseline": ratio}


def print_table(result: dict[str, Any], failures: int) -> None:
    print(f"\n{'seconds':34} {'n':>3} {'p50':>7} {'p95':>7} {'max':>7} {'mean':>7}")
    for key, (label, *_) in ROWS.items():
        s = result["summaries"][key]
        if s.get("n"):
            print(
                f"{label:34} {s['n']:>3} {s['p50']:>7.3f} {s['p95']:>7.3f} {s['max']:>7.3f}"
                f" {s['mean']:>7.3f}"
            )
    ratio = result["ratio_function_to_baseline"]
    nan = float("nan")
    print(
        f"{'ratio Function / baseline':34} {'':>3} {ratio.get('p50', nan):>7.2f}"
        f" {ratio.get('p95', nan):>7.2f} {ratio.get('max', nan):>7.2f}"
        f" {ratio.get('mean', nan):>7.2f}"
    )
    p50 = result["summaries"]["function_apply_to_ready"].get("p50")
    if p50 is not None:
        verdict = "meets" if p50 <= 3.0 else "MISSES"
        print(f"target p50 <= 3 s: {verdict} ({p50:.3f} s); failed samples: {failures}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.operator_ready",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument(
        "-n", "--count", type=int, default=20, help="Functions (and baselines) to time (20)"
    )
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed Function+baseline pairs first (1)"
    )
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds one sample may take (60)"
    )
    add_cluster_arguments(parser)
    args = parser.parse_args(argv)
    if not 1 <= args.count <= 500 or not 0 <= args.warmup <= 20 or args.timeout <= 0:
        parser.error("need 1 <= --count <= 500, 0 <= --warmup <= 20 and --timeout > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    exit_on_sigterm()
    api = connect(args.kubeconfig)
    pod_before = operator_pod(api, args.operator_namespace)
    began, began_wall = time.monotonic(), utc_now()
    samples: list[Sample] = []
    with bench_namespace(api, "ready", delete_timeout=120) as namespace:
        print(f"namespace {namespace}; operator pod {pod_before.name}")
        bench = ReadyBench(api, namespace, args)
        bench.start()
        try:
            warm = "warm-0"
            bench.custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, function_body(warm, namespace)
            )
            if bench.seen.wait(warm, "ready", args.timeout * 2) is None:
                raise RuntimeError(f"warm-up Function {warm} never became Ready")
            bench.capture_template(warm)
            bench.delete_and_wait(
                lambda: bench.custom.delete_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, warm
                ),
                f"{FUNCTION_LABEL}={warm}",
            )
            for i in range(args.warmup):
                bench.function_sample(f"warm-f{i}")
                bench.baseline_sample(f"warm-b{i}")
            for i in range(args.count):
                for sample in (
                    bench.function_sample(f"f{i:03d}"),
                    bench.baseline_sample(f"b{i:03d}"),
                ):
                    samples.append(sample)
                    shown = "-" if sample.ready_s is None else f"{sample.ready_s:.3f}s"
                    print(f"  {sample.kind:8} {sample.name}: {shown} {sample.error or ''}")
        finally:
            bench.stop()
    pod_after = operator_pod(api, args.operator_namespace)
    result = report(samples)
    failures = sum(s.error is not None for s in samples)
    print_table(result, failures)
    stable = pod_before.uid == pod_after.uid and pod_before.restarts == pod_after.restarts
    if not stable:
        print(f"WARNING: the operator pod was replaced or restarted ({pod_after.name})")
    data = {
        "benchmark": "operator_ready",
        "started": began_wall,
        "finished": utc_now(),
        "duration_s": round(time.monotonic() - began, 1),
        "parameters": {"count": args.count, "warmup": args.warmup, "timeout_s": args.timeout},
        "machine": machine(),
        "cluster": cluster_info(api),
        "runtime_image": RUNTIME_IMAGE,
        "runtime_image_present": image_present(api, RUNTIME_IMAGE),
        "operator": {"before": asdict(pod_before), "after": asdict(pod_after)},
        "operator_stable": stable,
        "operator_log": operator_log_summary(
            api, args.operator_namespace, pod_after.name, int(time.monotonic() - began) + 5
        ),
        "watch_errors": [e for w in bench.watchers for e in w.errors],
        **result,
        "failures": failures,
        "samples": [asdict(s) for s in samples],
    }
    path = write_results("operator_ready", args.output, data)
    print(f"results: {path}")
    return 1 if failures or not stable else 0


if __name__ == "__main__":
    sys.exit(main())
