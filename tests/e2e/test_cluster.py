"""Smoke tests of the cluster itself: DNS, Services, PVCs and resource limits really work."""

from __future__ import annotations

from typing import Any

from tests.e2e.conftest import TOOLBOX_IMAGE
from tests.e2e.kube import apply, get, kubectl, wait_until

RESTRICTED = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def pod(name: str, script: str, **container: Any) -> dict[str, Any]:
    """A one-shot pod running a Python script in the toolbox image."""
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [
            {
                "name": "main",
                "image": TOOLBOX_IMAGE,
                "imagePullPolicy": "Never",
                "command": ["python3", "-c", script],
                "securityContext": RESTRICTED,
                **container,
            }
        ],
    }
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def pod_phase(name: str, namespace: str) -> str:
    return str(get("pod", name, namespace).get("status", {}).get("phase", ""))


def finished(name: str, namespace: str) -> str | None:
    phase = pod_phase(name, namespace)
    return phase if phase in {"Succeeded", "Failed"} else None


def test_node_is_ready() -> None:
    nodes = get("nodes")["items"]
    assert len(nodes) == 1
    conditions = {c["type"]: c["status"] for c in nodes[0]["status"]["conditions"]}
    assert conditions["Ready"] == "True"


def test_service_reachable_by_dns_name_and_cluster_ip(namespace: str) -> None:
    server = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "echo"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "echo"}},
            "template": {
                "metadata": {"labels": {"app": "echo"}},
                "spec": pod(
                    "unused",
                    "import http.server as h; h.ThreadingHTTPServer(('', 8000),"
                    " type('H', (h.BaseHTTPRequestHandler,), {'do_GET': lambda s: ("
                    "s.send_response(200), s.end_headers(), s.wfile.write(b'pong'))}))"
                    ".serve_forever()",
                    readinessProbe={"tcpSocket": {"port": 8000}, "periodSeconds": 1},
                )["spec"]
                | {"restartPolicy": "Always"},
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "echo"},
        "spec": {"selector": {"app": "echo"}, "ports": [{"port": 80, "targetPort": 8000}]},
    }
    apply([server, service], namespace)
    kubectl("rollout", "status", "deployment/echo", "-n", namespace, "--timeout=120s")
    cluster_ip = get("service", "echo", namespace)["spec"]["clusterIP"]

    # A Ready endpoint reaches kube-proxy's rules a little after the API server has it (seconds
    # on a busy node): until then the ClusterIP refuses connections, so the client retries that
    # (and only that) for a while.
    client_script = (
        "import time, urllib.error, urllib.request as u\n"
        f"for url in ['http://echo.{namespace}.svc.cluster.local', 'http://echo', 'http://{cluster_ip}']:\n"
        "    deadline = time.monotonic() + 30\n"
        "    while True:\n"
        "        try:\n"
        "            body = u.urlopen(url, timeout=10).read()\n"
        "            break\n"
        "        except urllib.error.URLError as exc:\n"
        "            refused = isinstance(exc.reason, ConnectionRefusedError)\n"
        "            if not refused or time.monotonic() > deadline:\n"
        "                raise\n"
        "            print('refused, retrying', url)\n"
        "            time.sleep(0.5)\n"
        "    assert body == b'pong', (url, body)\n"
        "    print('ok', url)\n"
    )
    apply(pod("client", client_script), namespace)
    assert (
        wait_until(lambda: finished("client", namespace), 120, "the client pod") == "Succeeded"
    ), kubectl("logs", "client", "-n", namespace)
    assert kubectl("logs", "client", "-n", namespace).count("ok ") == 3


def test_pvc_is_provisioned_and_bound(namespace: str) -> None:
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "64Mi"}}},
    }
    writer = pod(
        "writer",
        "open('/data/hello', 'w').write('persisted'); print(open('/data/hello').read())",
        volumeMounts=[{"name": "data", "mountPath": "/data"}],
    )
    writer["spec"]["volumes"] = [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]
    writer["spec"]["securityContext"] = {"fsGroup": 65532}
    apply([claim, writer], namespace)
    assert wait_until(lambda: finished("writer", namespace), 120, "the PVC writer") == "Succeeded"
    assert get("pvc", "data", namespace)["status"]["phase"] == "Bound"
    assert "persisted" in kubectl("logs", "writer", "-n", namespace)


def test_emptydir_size_limit_evicts_the_pod(namespace: str) -> None:
    filler = pod(
        "filler",
        "import time\n"
        "with open('/scratch/fill', 'wb') as f:\n"
        "    f.write(b'x' * (48 << 20)); f.flush()\n"
        "time.sleep(300)\n",
        volumeMounts=[{"name": "scratch", "mountPath": "/scratch"}],
    )
    filler["spec"]["volumes"] = [{"name": "scratch", "emptyDir": {"sizeLimit": "16Mi"}}]
    apply(filler, namespace)
    status = wait_until(
        lambda: (s := get("pod", "filler", namespace)["status"]).get("reason") == "Evicted" and s,
        120,
        "the kubelet to evict the pod over its emptyDir sizeLimit",
    )
    assert status["phase"] == "Failed"
    assert 'EmptyDir volume "scratch" exceeds the limit' in status["message"]


def test_memory_limit_oom_kills_the_container(namespace: str) -> None:
    hog = pod(
        "hog",
        "blocks = [bytearray(8 << 20) for _ in range(64)]\nprint('survived', len(blocks))",
        resources={"limits": {"memory": "64Mi", "cpu": "500m"}},
    )
    apply(hog, namespace)
    wait_until(lambda: finished("hog", namespace), 120, "the memory hog to be killed")
    state = get("pod", "hog", namespace)["status"]["containerStatuses"][0]["state"]
    assert state["terminated"]["reason"] == "OOMKilled"
