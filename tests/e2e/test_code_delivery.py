"""Code delivery end to end: zip packages from the code store and from URLs, their checks and
limits reported on the Function's status, a compiled `provided` bootstrap, and an image
function run by unmodified awslambdaric next to the agent.

Invocations go straight to the pod's agent, as in test_runtimes.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import codestore
from tests.e2e.kube import apply, get, kubectl, wait_until
from tests.e2e.test_runtimes import (
    PY_ZIP,
    SOURCES,
    DeployedFunction,
    await_function,
    function,
    python_function,
    zip_code,
)

STATUS_TIMEOUT_S = 120
GO_SOURCE = SOURCES / "go"
AWSLAMBDARIC_IMAGE = "kubelambda/e2e-awslambdaric:dev"  # examples/image-awslambdaric


@pytest.fixture(scope="module")
def module_namespace() -> Iterator[str]:
    name = f"e2e-code-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false")


class PackageServer:
    """An HTTP server on this host that pods reach at the node's address: code.zip.url."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        files = self.files

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                data = files.get(self.path)
                self.send_response(200 if data is not None else 404)
                self.send_header("Content-Length", str(len(data or b"")))
                self.end_headers()
                self.wfile.write(data or b"")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("0.0.0.0", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        node = get("nodes")["items"][0]
        address = next(a for a in node["status"]["addresses"] if a["type"] == "InternalIP")
        self.base = f"http://{address['address']}:{self.server.server_address[1]}"

    def serve(self, name: str, data: bytes) -> str:
        self.files[f"/{name}"] = data
        return f"{self.base}/{name}"


@pytest.fixture(scope="module")
def package_server() -> Iterator[PackageServer]:
    server = PackageServer()
    yield server
    server.server.shutdown()
    server.server.server_close()


def not_ready_reason(namespace: str, name: str) -> tuple[str, str] | None:
    """(reason, message) of the Function's Ready=False condition for its current spec."""
    body = get("function", name, namespace)
    status = body.get("status") or {}
    for condition in status.get("conditions") or []:
        if (condition["type"], condition["status"]) == ("Ready", "False") and condition[
            "reason"
        ] != "Deploying":
            return str(condition["reason"]), str(condition["message"])
    return None


def wait_not_ready(namespace: str, name: str) -> tuple[str, str]:
    return wait_until(
        lambda: not_ready_reason(namespace, name),
        STATUS_TIMEOUT_S,
        f"Function {name} to report why it is not ready",
    )


def test_zip_from_a_url_runs(module_namespace: str, package_server: PackageServer) -> None:
    url = package_server.serve("py.zip", PY_ZIP)
    code = {"zip": {"url": url, "sha256": hashlib.sha256(PY_ZIP).hexdigest()}}
    apply(python_function("from-url", code=code), module_namespace)
    deployed = await_function(module_namespace, "from-url")
    result = deployed.invoke({"action": "greet", "name": "url"})
    assert result.function_error is None, result.body
    assert "url" in result.body.decode()


def test_sha256_mismatch_is_reported_on_the_status(
    module_namespace: str, package_server: PackageServer
) -> None:
    url = package_server.serve("tampered.zip", PY_ZIP + b"tampered")
    wrong = hashlib.sha256(PY_ZIP).hexdigest()
    apply(
        python_function("tampered", code={"zip": {"url": url, "sha256": wrong}}), module_namespace
    )
    reason, message = wait_not_ready(module_namespace, "tampered")
    assert reason == "CodeUnavailable"
    assert f"code: sha256 mismatch: expected {wrong}, downloaded" in message


def test_package_missing_from_the_store_is_reported(module_namespace: str) -> None:
    missing = hashlib.sha256(os.urandom(16)).hexdigest()
    apply(python_function("missing", code={"zip": {"sha256": missing}}), module_namespace)
    reason, message = wait_not_ready(module_namespace, "missing")
    assert reason == "CodeNotFound"
    assert f"no zip package with sha256 {missing} in the code store" in message
    # Uploading it later is enough: the operator retries on its own.
    package = codestore.zip_files({"app.py": "def handler(e, c):\n    return 'late'\n"})
    apply(python_function("missing", code=zip_code(package)), module_namespace)
    codestore.upload(package)
    deployed = await_function(module_namespace, "missing")
    assert deployed.invoke({}).body == b'"late"'


def test_over_250_mb_unzipped_is_refused(module_namespace: str) -> None:
    """A small zip of 260 MB of zeros: refused before it fills the pod's disk."""
    bomb = codestore.zip_files({"app.py": "x = 1\n", "zeros.bin": bytes(260 * 1024 * 1024)})
    assert len(bomb) < 2 * 1024 * 1024
    codestore.upload(bomb)
    apply(python_function("too-big", code=zip_code(bomb)), module_namespace)
    reason, message = wait_not_ready(module_namespace, "too-big")
    assert reason == "CodeUnavailable"
    assert "function code and layers unzip to more than 262144000 bytes" in message


def test_store_refuses_over_50_mb_and_non_zip_uploads() -> None:
    status, answer = codestore.put(os.urandom(50 * 1024 * 1024 + 1))
    assert status == 413
    assert "limit" in answer["message"]
    status, answer = codestore.put(b"just text")
    assert (status, answer["message"]) == (400, "the package is not a zip archive")


@pytest.fixture(scope="module")
def go_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The Go bootstrap, compiled here (static, no cgo) as users build one for provided."""
    go = shutil.which("go") or "/usr/local/go/bin/go"
    out = tmp_path_factory.mktemp("go") / "bootstrap"
    subprocess.run(
        [go, "build", "-trimpath", "-o", str(out), "."],
        cwd=GO_SOURCE,
        env={**os.environ, "CGO_ENABLED": "0", "GOOS": "linux", "GOFLAGS": "-mod=mod"},
        check=True,
        timeout=300,
    )
    return Path(out).read_bytes()


def test_provided_runtime_with_a_compiled_bootstrap(
    module_namespace: str, go_bootstrap: bytes
) -> None:
    package = codestore.zip_files({"bootstrap": go_bootstrap}, modes={"bootstrap": 0o755})
    codestore.upload(package)
    spec = {"runtime": "provided", "handler": "go.handler", "code": zip_code(package)}
    apply(function("go-bootstrap", spec), module_namespace)
    deployed = await_function(module_namespace, "go-bootstrap")
    result = deployed.invoke({"hello": "go"})
    assert result.function_error is None, result.body
    answer = result.json()
    assert answer["runtime"] == "go"
    assert answer["event"] == {"hello": "go"}
    assert answer["handler"] == "go.handler"
    assert answer["request_id"] == result.request_id


@pytest.fixture(scope="module")
def awslambdaric(module_namespace: str) -> DeployedFunction:
    spec = {"code": {"image": AWSLAMBDARIC_IMAGE}, "memoryMB": 256, "timeoutSeconds": 2}
    apply(function("ric", spec), module_namespace)
    return await_function(module_namespace, "ric")


def test_image_function_run_by_awslambdaric(awslambdaric: DeployedFunction) -> None:
    pod = awslambdaric.pod()
    result = awslambdaric.invoke({"n": 1}, pod=pod)
    assert result.function_error is None, result.body
    answer = result.json()
    assert answer["echo"] == {"n": 1}
    assert answer["function_name"] == "ric"
    assert answer["function_version"] == "$LATEST"
    assert answer["memory_limit_in_mb"] == "256"
    assert 0 < answer["remaining_ms"] <= 2000
    assert answer["request_id"] == result.request_id
    assert answer["runtime_api"] == "127.0.0.1:9001"
    body = get("pod", pod.name, awslambdaric.namespace)
    assert body["spec"]["shareProcessNamespace"] is True
    images = {c["name"]: c["image"] for c in body["spec"]["containers"]}
    assert images["function"] == AWSLAMBDARIC_IMAGE
