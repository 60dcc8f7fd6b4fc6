"""Function pod: container start -> agent ready, against a bare Python HTTP server (baseline).

The node is this machine, so container start is seen in the host's /proc: the container's
process carries its environment only once runc has exec'd it (StartContainer), and a poll of
/proc every few ms notices that moment. (Its /proc start time is earlier: runc forks the
process at CreateContainer; that gap is reported as ``created_to_exec_ms``.) Ready is the
first 200 from the agent's ``/healthz`` (runtime initialised), polled every 2 ms from the host
on the pod IP. The kubelet's own Ready (readiness probe) is recorded too, as first seen through
the API (polled every 50 ms).
The baseline pod runs the same runtime image with ``python3 -m http.server`` as its process:
the floor any Python agent starts from.

    .venv/bin/python -m bench.pod_ready --samples 15
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common import machine, percentile, summary, write_results

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
HANDLER = "def handler(event, context):\n    return 'ok'\n"


def kubectl(*args: str, stdin: str | None = None) -> str:
    return subprocess.run(
        ["kubectl", *args], input=stdin, capture_output=True, text=True, check=True
    ).stdout


def boot_time() -> float:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise RuntimeError("no btime in /proc/stat")


def process_start(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return boot_time() + int(fields[19]) / CLOCK_TICKS


def find_process(marker: bytes) -> int | None:
    """The first process whose environment holds ``marker`` (its container's init process)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0"):
            found.append(int(entry))
    return min(found, key=process_start) if found else None


def pod_ip(pid: int) -> str | None:
    """The pod's IPv4 address, read from the process's network namespace (no API round trip:
    the API learns the pod IP only at the kubelet's next status update)."""
    try:
        trie = Path(f"/proc/{pid}/net/fib_trie").read_text().splitlines()
    except OSError:
        return None
    for previous, line in itertools.pairwise(trie):
        address = previous.split()[-1] if previous.split() else ""
        if "/32 host LOCAL" in line and not address.startswith("127."):
            return address
    return None


def pod_state(namespace: str, selector: str) -> tuple[str | None, bool]:
    pods = json.loads(kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json"))
    for pod in pods["items"]:
        ready = any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in pod["status"].get("conditions", [])
        )
        return pod["status"].get("podIP"), ready
    return None, False


def healthy(ip: str, port: int, path: str) -> bool:
    try:
        conn = http.client.HTTPConnection(ip, port, timeout=0.5)
        conn.request("GET", path)
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False


def sample(
    namespace: str,
    name: str,
    *,
    manifest: dict[str, Any],
    selector: str,
    marker: bytes,
    port: int,
    path: str,
    timeout: float = 120,
) -> dict[str, float]:
    kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(manifest))
    deadline = time.monotonic() + timeout
    pid = ip = None
    seen = 0.0
    while ip is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name}: its process never appeared on this host")
        pid = find_process(marker)
        if pid is not None and not seen:
            seen = time.time()
        ip = pod_ip(pid) if pid is not None else None
        time.sleep(0.002)
    assert pid is not None
    while not healthy(ip, port, path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name}: not healthy")
        time.sleep(0.002)
    served = time.time()
    while not pod_state(namespace, selector)[1]:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name}: kubelet never reported Ready")
        time.sleep(0.05)
    kubelet_ready = time.time()
    started = process_start(pid)
    kubectl("delete", "-n", namespace, manifest["kind"].lower(), name, "--wait=true")
    return {
        "serving_ms": (served - seen) * 1000,
        "kubelet_ready_ms": (kubelet_ready - seen) * 1000,
        "created_to_exec_ms": (seen - started) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=15)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    namespace = f"bench-ready-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", namespace)
    rows: dict[str, list[dict[str, float]]] = {"function": [], "baseline": []}
    try:
        for i in range(args.samples):
            name = f"ready-{i}"
            function = {
                "apiVersion": "kubelambda.io/v1alpha1",
                "kind": "Function",
                "metadata": {"name": name},
                "spec": {
                    "runtime": "python3.11",
                    "handler": "app.handler",
                    "code": {"inline": {"app.py": HANDLER}},
                },
            }
            rows["function"].append(
                sample(
                    namespace,
                    name,
                    manifest=function,
                    selector=f"kubelambda.io/function={name}",
                    marker=f"AWS_LAMBDA_FUNCTION_NAME={name}".encode(),
                    port=8080,
                    path="/healthz",
                )
            )
            base = f"base-{i}"
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": base, "labels": {"bench": base}},
                "spec": {
                    "containers": [
                        {
                            "name": "http",
                            "image": "kubelambda/runtime-python3.11:dev",
                            "imagePullPolicy": "IfNotPresent",
                            "command": ["python3", "-m", "http.server", "8080"],
                            "env": [{"name": "BENCH_MARKER", "value": base}],
                            "readinessProbe": {
                                "httpGet": {"path": "/", "port": 8080},
                                "periodSeconds": 1,
                                "failureThreshold": 1,
                            },
                        }
                    ],
                    "automountServiceAccountToken": False,
                },
            }
            rows["baseline"].append(
                sample(
                    namespace,
                    base,
                    manifest=pod,
                    selector=f"bench={base}",
                    marker=f"BENCH_MARKER={base}".encode(),
                    port=8080,
                    path="/",
                )
            )
            print(i, rows["function"][-1], rows["baseline"][-1], flush=True)
    finally:
        kubectl("delete", "namespace", namespace, "--wait=false")
    result: dict[str, Any] = {"machine": machine(), "samples": rows}
    for kind, values in rows.items():
        for key in ("serving_ms", "kubelet_ready_ms", "created_to_exec_ms"):
            result[f"{kind}_{key}"] = summary([v[key] for v in values])
    fn = [v["serving_ms"] for v in rows["function"]]
    base = [v["serving_ms"] for v in rows["baseline"]]
    result["serving_p50_ratio"] = percentile(fn, 0.5) / percentile(base, 0.5)
    path = write_results("pod_ready", args.output, result)
    print(
        json.dumps({k: v for k, v in result.items() if k not in ("samples", "machine")}, indent=2)
    )
    print(f"results: {path}")


if __name__ == "__main__":
    main()
