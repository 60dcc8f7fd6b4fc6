"""Operator memory across create/update/delete cycles of many Functions.

    .venv/bin/python -m bench.operator_memory [--functions 1000] [--batch 100]

In a fresh ``bench-memory-*`` namespace, batch after batch: create ``--batch`` Functions, wait
until the operator has reconciled each (status.observedGeneration == metadata.generation);
update each (memoryMB and an environment variable: a new pod template) and wait again; delete
them all and wait until garbage collection has removed their Deployments, ReplicaSets, pods
and Services. Until ``--functions`` Functions have gone through the cycle.

Meanwhile the operator's memory is sampled from inside its container every
``--sample-interval`` seconds (VmRSS of PID 1 from /proc/1/status and the cgroup's usage),
and once more after each batch has been deleted and the operator has been idle ``--settle``
seconds. Reported: RSS at start, after each batch, peak, end, and the slope of the after-batch
RSS (KiB per 100 Functions) over all batches and over the second half. Target: flat.

By default the Functions ask for 10,240 MB (then 10,112 MB), i.e. ~5.8 CPUs each, so their pods
stay Pending on a small node: the operator does all of its work (Deployment, Service, status,
Deployment events) while the node, and anything else running on it, stays unloaded.
``--memory-mb 128 --updated-memory-mb 256`` runs real pods as far as CPU allows.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from bench.common import (
    FUNCTION_LABEL,
    GROUP,
    PLURAL,
    VERSION,
    MemoryProbe,
    OperatorPod,
    add_cluster_arguments,
    bench_namespace,
    cluster_info,
    condition,
    connect,
    exit_on_sigterm,
    function_body,
    machine,
    operator_log_summary,
    operator_pod,
    utc_now,
    wait_until,
    write_results,
)

MIB = 1024


class Sampler(threading.Thread):
    """Samples the operator's memory every ``interval`` seconds, tagged with the current phase."""

    def __init__(
        self, api: client.ApiClient, namespace: str, interval: float, began: float
    ) -> None:
        super().__init__(daemon=True, name="memory-sampler")
        self.api = api
        self.namespace = namespace
        self.pod = operator_pod(api, namespace)
        self.probe = MemoryProbe(api, namespace, self.pod.name)
        self.interval = interval
        self.began = began
        self.phase = "start"
        self.samples: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.pod_changes: list[str] = []
        self.stopping = threading.Event()

    def sample(self, phase: str | None = None) -> dict[str, Any] | None:
        elapsed = round(time.monotonic() - self.began, 2)
        try:
            reading = self.probe.read()
        except Exception as error:  # an exec that failed must not end the run
            self.errors.append(f"{elapsed:.1f}s {error!r}"[:300])
            self.follow_pod(elapsed)
            return None
        reading["t_s"] = elapsed
        reading["phase"] = phase or self.phase
        reading["pod"] = self.probe.pod
        self.samples.append(reading)
        return reading

    def follow_pod(self, elapsed: float) -> None:
        """After a failed read: if the operator pod was replaced, sample the new one from now."""
        try:
            current = operator_pod(self.api, self.namespace)
        except Exception as error:  # none running right now: try again next time
            self.errors.append(f"{elapsed:.1f}s {error!r}"[:300])
            return
        if current.uid != self.pod.uid:
            self.pod_changes.append(f"{elapsed:.1f}s {self.pod.name} -> {current.name}")
            self.pod = current
            self.probe = MemoryProbe(self.api, self.namespace, current.name)

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=30)


class MemoryBench:
    def __init__(self, api: client.ApiClient, namespace: str, args: argparse.Namespace) -> None:
        self.api = api
        self.namespace = namespace
        self.args = args
        self.custom = client.CustomObjectsApi(api)
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)
        self.missing_configured = 0
        """Reconciled Functions whose status lacks the Configured condition (last check)."""

    def functions(self) -> list[dict[str, Any]]:
        result: Any = self.custom.list_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, _request_timeout=60
        )
        items: list[dict[str, Any]] = result["items"]
        return items

    def reconciled(self, names: set[str], generation: int) -> Callable[[], bool]:
        """All ``names`` report status for ``generation`` (status.observedGeneration).

        Not the Configured condition: it can be lost (see ``missing_configured``), while
        observedGeneration is written by the reconcile alone.
        """

        def check() -> bool:
            current = [
                f
                for f in self.functions()
                if f["metadata"]["name"] in names
                and int(f["metadata"].get("generation") or 0) == generation
                and int((f.get("status") or {}).get("observedGeneration") or 0) == generation
            ]
            self.missing_configured = sum(condition(f, "Configured") is None for f in current)
            return len(current) == len(names)

        return check

    def children_gone(self) -> bool:
        selector = FUNCTION_LABEL
        listings: list[Callable[..., Any]] = [
            self.apps.list_namespaced_deployment,
            self.apps.list_namespaced_replica_set,
            self.core.list_namespaced_pod,
            self.core.list_namespaced_service,
            self.core.list_namespaced_config_map,
        ]
        if self.functions():
            return False
        return all(
            not listing(self.namespace, label_selector=selector, _request_timeout=60).items
            for listing in listings
        )

    def create(self, names: list[str]) -> None:
        for name in names:
            body = function_body(
                name, self.namespace, memory_mb=self.args.memory_mb, variables={"BENCH": "0"}
            )
            self.custom.create_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, body, _request_timeout=60
            )

    def update(self, names: list[str], cycle: int) -> None:
        patch = {
            "spec": {
                "memoryMB": self.args.updated_memory_mb,
                "environment": {"variables": {"BENCH": str(cycle + 1)}},
            }
        }
        for name in names:
            self.custom.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
                name,
                patch,
                _content_type="application/merge-patch+json",
                _request_timeout=60,
            )

    def delete(self, names: list[str]) -> None:
        for name in names:
            try:
                self.custom.delete_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURAL, name, _request_timeout=60
                )
            except ApiException as error:
                if error.status != 404:
                    raise


def slope_kib_per_100(points: list[tuple[int, float]]) -> float | None:
    """Least-squares slope of (functions cycled, KiB) in KiB per 100 Functions."""
    if len(points) < 2:
        return None
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var = sum((x - mean_x) ** 2 for x, _ in points)
    if var == 0:
        return None
    cov = sum((x - mean_x) * (y - mean_y) for x, y in points)
    return round(cov / var * 100, 1)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.operator_memory",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument(
        "--functions", type=int, default=1000, help="Functions to cycle in all (1000)"
    )
    parser.add_argument("--batch", type=int, default=100, help="Functions per batch (100)")
    parser.add_argument(
        "--memory-mb", type=int, default=10240, help="memoryMB at creation (10240: pods Pending)"
    )
    parser.add_argument(
        "--updated-memory-mb", type=int, default=10112, help="memoryMB after the update (10112)"
    )
    parser.add_argument(
        "--phase-timeout",
        type=float,
        default=300.0,
        help="seconds one phase (create/update/delete of a batch) may take (300)",
    )
    parser.add_argument(
        "--sample-interval", type=float, default=2.0, help="seconds between samples (2)"
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=5.0,
        help="idle seconds after each batch before its after-batch sample (5)",
    )
    add_cluster_arguments(parser)
    args = parser.parse_args(argv)
    if not 1 <= args.batch <= args.functions <= 20000:
        parser.error("need 1 <= --batch <= --functions <= 20000")
    for value in (args.memory_mb, args.updated_memory_mb):
        if not 128 <= value <= 10240:
            parser.error("memoryMB must be within 128..10240")
    if args.memory_mb == args.updated_memory_mb:
        parser.error("--updated-memory-mb must differ from --memory-mb")
    if args.phase_timeout <= 0 or args.sample_interval <= 0 or args.settle < 0:
        parser.error("timeouts and intervals must be positive")
    return args


def kib_to_mib(value: float | None) -> float | None:
    return None if value is None else round(value / MIB, 1)


def run_batches(
    api: client.ApiClient, args: argparse.Namespace, sampler: Sampler
) -> tuple[list[dict[str, Any]], str | None]:
    """Create, update and delete batches until --functions have cycled; (batches, error)."""
    batches: list[dict[str, Any]] = []
    try:
        with bench_namespace(api, "memory", delete_timeout=300) as namespace:
            bench = MemoryBench(api, namespace, args)
            cycled = 0
            while cycled < args.functions:
                cycle = len(batches)
                size = min(args.batch, args.functions - cycled)
                batches.append(run_batch(bench, sampler, cycle, size, args))
                cycled += size
                batches[-1]["cycled_total"] = cycled
                print_batch(batches[-1])
    except (TimeoutError, ApiException) as problem:
        error = f"{type(problem).__name__}: {problem}"[:2000]
        print(f"stopped early: {error}")
        return batches, error
    return batches, None


def run_batch(
    bench: MemoryBench, sampler: Sampler, cycle: int, size: int, args: argparse.Namespace
) -> dict[str, Any]:
    names = [f"m{cycle:03d}-{i:04d}" for i in range(size)]
    wanted = set(names)
    record: dict[str, Any] = {"batch": cycle, "functions": size}
    sampler.phase = f"b{cycle}-create"
    t0 = time.monotonic()
    bench.create(names)
    record["create_calls_s"] = round(time.monotonic() - t0, 2)
    wait_until(bench.reconciled(wanted, 1), args.phase_timeout, 0.5, "creates reconciled")
    record["created_reconciled_s"] = round(time.monotonic() - t0, 2)
    record["created_missing_configured"] = bench.missing_configured
    sampler.phase = f"b{cycle}-update"
    t0 = time.monotonic()
    bench.update(names, cycle)
    record["update_calls_s"] = round(time.monotonic() - t0, 2)
    wait_until(bench.reconciled(wanted, 2), args.phase_timeout, 0.5, "updates reconciled")
    record["updated_reconciled_s"] = round(time.monotonic() - t0, 2)
    record["updated_missing_configured"] = bench.missing_configured
    sampler.phase = f"b{cycle}-delete"
    t0 = time.monotonic()
    bench.delete(names)
    wait_until(bench.children_gone, args.phase_timeout, 1.0, "children garbage-collected")
    record["deleted_and_collected_s"] = round(time.monotonic() - t0, 2)
    sampler.phase = f"b{cycle}-idle"
    time.sleep(args.settle)
    after = sampler.sample(f"b{cycle}-after")
    record["vm_rss_kib"] = after["vm_rss_kib"] if after else None
    record["cgroup_usage_bytes"] = after.get("cgroup_usage_bytes") if after else None
    return record


def print_batch(record: dict[str, Any]) -> None:
    print(
        f"  batch {record['batch']}: {record['cycled_total']:>5} cycled;"
        f" create {record['created_reconciled_s']}s update {record['updated_reconciled_s']}s"
        f" delete {record['deleted_and_collected_s']}s;"
        f" VmRSS {kib_to_mib(record['vm_rss_kib'])} MiB;"
        f" without Configured: {record['created_missing_configured']} after create,"
        f" {record['updated_missing_configured']} after update",
        flush=True,
    )


def summarize(
    sampler: Sampler,
    batches: list[dict[str, Any]],
    start: dict[str, Any],
    end: dict[str, Any] | None,
    pods: tuple[OperatorPod, OperatorPod],
) -> dict[str, Any]:
    rss = [s["vm_rss_kib"] for s in sampler.samples]
    after_batch = [(b["cycled_total"], float(b["vm_rss_kib"])) for b in batches if b["vm_rss_kib"]]
    half = after_batch[len(after_batch) // 2 :]
    usage = [s.get("cgroup_usage_bytes", 0) for s in sampler.samples]
    before, after = pods
    replaced = before.uid != after.uid or before.restarts != after.restarts
    return {
        "functions_cycled": sum(b["functions"] for b in batches),
        "valid": not replaced and not sampler.pod_changes,
        "operator_replaced_or_restarted": replaced,
        "operator_pod_changes": sampler.pod_changes,
        "vm_rss_mib": {
            "start": kib_to_mib(start["vm_rss_kib"]),
            "after_first_batch": kib_to_mib(after_batch[0][1]) if after_batch else None,
            "after_each_batch": [kib_to_mib(kib) for _, kib in after_batch],
            "peak_sampled": kib_to_mib(max(rss)) if rss else None,
            "peak_hwm": kib_to_mib(end["vm_hwm_kib"]) if end else None,
            "end": kib_to_mib(end["vm_rss_kib"]) if end else None,
        },
        "slope_kib_per_100_functions": {
            "all_batches": slope_kib_per_100(after_batch),
            "second_half": slope_kib_per_100(half),
        },
        "cgroup_usage_mib": {
            "start": round(start.get("cgroup_usage_bytes", 0) / MIB / MIB, 1),
            "peak_sampled": round(max(usage) / MIB / MIB, 1) if usage else None,
            "end": round(end.get("cgroup_usage_bytes", 0) / MIB / MIB, 1) if end else None,
        },
        "threads": {"start": start["threads"], "end": end["threads"] if end else None},
        "fds": {"start": start["fds"], "end": end["fds"] if end else None},
        "samples": len(sampler.samples),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    exit_on_sigterm()
    api = connect(args.kubeconfig)
    began, began_wall = time.monotonic(), utc_now()
    sampler = Sampler(api, args.operator_namespace, args.sample_interval, began)
    pod_before = sampler.pod
    start = sampler.sample("start")
    if start is None:
        raise RuntimeError(f"cannot read the operator's memory: {sampler.errors}")
    print(f"operator pod {pod_before.name}: VmRSS {start['vm_rss_kib'] / MIB:.1f} MiB at start")
    sampler.start()
    try:
        batches, error = run_batches(api, args, sampler)
    finally:
        sampler.stop()
    time.sleep(args.settle)
    end = sampler.sample("end")
    pod_after = operator_pod(api, args.operator_namespace)
    summary = summarize(sampler, batches, start, end, (pod_before, pod_after))
    print_summary(summary, batches)
    data = {
        "benchmark": "operator_memory",
        "started": began_wall,
        "finished": utc_now(),
        "duration_s": round(time.monotonic() - began, 1),
        "parameters": {k: v for k, v in vars(args).items() if k not in ("output", "kubeconfig")},
        "machine": machine(),
        "cluster": cluster_info(api),
        "operator": {"before": asdict(pod_before), "after": asdict(pod_after)},
        "operator_log": operator_log_summary(
            api, args.operator_namespace, pod_after.name, int(time.monotonic() - began) + 5
        ),
        "error": error,
        "summary": summary,
        "batches": batches,
        "sample_errors": sampler.errors,
        "samples": sampler.samples,
    }
    path = write_results("operator_memory", args.output, data)
    print(f"results: {path}")
    return 0 if error is None and summary["valid"] else 1


def print_summary(summary: dict[str, Any], batches: list[dict[str, Any]]) -> None:
    rss = summary["vm_rss_mib"]
    slope = summary["slope_kib_per_100_functions"]
    print(f"\nFunctions cycled (create, update, delete): {summary['functions_cycled']}")
    print(
        f"operator VmRSS MiB: start {rss['start']}, after batch 1 {rss['after_first_batch']},"
        f" peak {rss['peak_sampled']} (HWM {rss['peak_hwm']}), end {rss['end']}"
    )
    print(f"after each batch: {rss['after_each_batch']}")
    print(
        f"slope KiB per 100 Functions: all batches {slope['all_batches']},"
        f" second half {slope['second_half']}"
    )
    print(f"cgroup usage MiB: {summary['cgroup_usage_mib']}")
    if batches:
        creates = [b["created_reconciled_s"] for b in batches]
        updates = [b["updated_reconciled_s"] for b in batches]
        size = batches[0]["functions"]
        print(
            f"seconds per batch of {size} to reconcile: create {min(creates)}..{max(creates)},"
            f" update {min(updates)}..{max(updates)}"
        )
    if not summary["valid"]:
        print(
            "WARNING: the operator pod restarted or was replaced during the run"
            f" ({summary['operator_pod_changes']}): these figures are not one process's"
        )


if __name__ == "__main__":
    sys.exit(main())
