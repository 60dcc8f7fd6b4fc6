"""Function runtimes end to end: real Functions on the cluster, invoked on their pods.

Every Function and Layer lives in one namespace for the whole module and is applied at once
(pods start in parallel); tests then share them. The functions' sources are in
tests/e2e/runtimes/. Invocations go straight to the pod's agent (``POST
/2015-03-31/functions/<name>/invocations`` on port 8080), so these tests exercise the agent,
the runtime bootstraps and the pod the operator builds, not a gateway.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import math
import re
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import codestore
from tests.e2e.kube import KubectlError, apply, get, kubectl, wait_until

SOURCES = Path(__file__).resolve().parent / "runtimes"
API_VERSION = "kubelambda.io/v1alpha1"
FUNCTION_LABEL = "kubelambda.io/function"
READY_TIMEOUT_S = 150
INVOKE_TIMEOUT_S = 30
REQUEST_ID_RE = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
# Lambda's REPORT line (Init Duration on cold starts only; Status on platform failures).
REPORT_RE = re.compile(
    r"^REPORT RequestId: (?P<id>" + REQUEST_ID_RE + r")"
    r"\tDuration: (?P<duration>\d+\.\d{2}) ms"
    r"\tBilled Duration: (?P<billed>\d+) ms"
    r"\tMemory Size: (?P<memory>\d+) MB"
    r"\tMax Memory Used: (?P<used>\d+) MB"
    r"(?:\tInit Duration: (?P<init>\d+\.\d{2}) ms)?"
    r"(?:\tStatus: (?P<status>[^\n]*))?$",  # platform failures: Status: timeout, error ...
    re.MULTILINE,
)

# Function names in the module's namespace.
PY = "py"  # python3.11, timeout 1 s: context, errors, timeout, crash, OOM, sizes, filesystem
PY_LOGS = "py-logs"  # inline code, timeout 3 s, invoked only by the log test (Init Duration)
PY_LAYERS = "py-layers"  # the same code with two layers
PY_TMP = "py-tmp"  # the same code; fills its /tmp (may get its pod evicted: kept apart)
NODE = "node"
PROVIDED = "provided"

LAYER_TOOLS = "tools"
LAYER_OVERRIDE = "override"
LAYER_NODE = "node-tools"
LAYER_IMAGE = "image-tools"


def source(*parts: str) -> str:
    return SOURCES.joinpath(*parts).read_text()


def function(name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "Function", "metadata": {"name": name}, "spec": spec}


def layer(name: str, content: Mapping[str, Any], runtime: str = "python3.11") -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "Layer",
        "metadata": {"name": name},
        "spec": {"content": dict(content), "compatibleRuntimes": [runtime]},
    }


# Zip packages (uploaded to the code store by the `stack` fixture) and their digests.
PY_ZIP = codestore.zip_files({"app.py": source("python", "app.py")})
NODE_ZIP = codestore.zip_files({"index.js": source("nodejs", "index.js")})
TOOLS_ZIP = codestore.zip_files(
    {
        "python/greeting/__init__.py": (
            "def greet(name):\n    return f'hello {name}, from the tools layer'\n"
        ),
        "python/which_layer.py": "NAME = 'tools'\n",
        "bin/hello-tool": '#!/bin/sh\necho "hello-tool says: $*"\n',
        "etc/which.txt": "tools\n",
    },
    modes={"bin/hello-tool": 0o755},
)
PACKAGES = [PY_ZIP, NODE_ZIP, TOOLS_ZIP]
IMAGE_LAYER = "kubelambda/e2e-layer:dev"  # tests/e2e/images/layer, built by hack/test-images.sh


def zip_code(package: bytes) -> dict[str, Any]:
    return {"zip": {"sha256": hashlib.sha256(package).hexdigest()}}


def python_function(name: str, **spec: Any) -> dict[str, Any]:
    return function(
        name,
        {
            "runtime": "python3.11",
            "handler": "app.handler",
            "memoryMB": 128,
            "code": zip_code(PY_ZIP),
            **spec,
        },
    )


LAYERS = [
    layer(LAYER_TOOLS, zip_code(TOOLS_ZIP)),
    layer(
        LAYER_OVERRIDE,
        {
            "inline": {
                "python/which_layer.py": "NAME = 'override'\n",
                "etc/which.txt": "override\n",
            }
        },
    ),
    layer(LAYER_IMAGE, {"image": IMAGE_LAYER}),
    layer(
        LAYER_NODE,
        {
            "inline": {
                "nodejs/node_modules/shout/index.js": (
                    "module.exports = (text) => `${String(text).toUpperCase()}!`;\n"
                ),
            }
        },
        runtime="nodejs18",
    ),
]

FUNCTIONS = [
    python_function(PY, timeoutSeconds=1, ephemeralStorageMB=512),
    python_function(
        PY_LOGS, timeoutSeconds=3, code={"inline": {"app.py": source("python", "app.py")}}
    ),
    python_function(PY_TMP, timeoutSeconds=15, ephemeralStorageMB=512),
    python_function(
        PY_LAYERS,
        timeoutSeconds=3,
        layers=[
            {"name": LAYER_TOOLS, "version": 1},
            {"name": LAYER_OVERRIDE, "version": 1},
            {"name": LAYER_IMAGE, "version": 1},
        ],
    ),
    function(
        NODE,
        {
            "runtime": "nodejs18",
            "handler": "index.handler",
            "memoryMB": 128,
            "timeoutSeconds": 3,
            "code": zip_code(NODE_ZIP),
            "layers": [{"name": LAYER_NODE, "version": 1}],
        },
    ),
    function(
        PROVIDED,
        {
            "runtime": "provided",
            "handler": "function.handler",
            "memoryMB": 128,
            "timeoutSeconds": 3,
            "code": {
                "inline": {
                    "bootstrap": source("provided", "bootstrap"),
                    "runtime_loop.py": source("provided", "runtime_loop.py"),
                }
            },
        },
    ),
]


# --- helpers -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Invocation:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes

    @property
    def request_id(self) -> str:
        return self.headers["x-amzn-requestid"]

    @property
    def function_error(self) -> str | None:
        return self.headers.get("x-amz-function-error")

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Pod:
    name: str
    ip: str
    uid: str


@dataclass(frozen=True)
class DeployedFunction:
    namespace: str
    name: str

    def pod(self) -> Pod:
        """The function's one ready pod."""
        return wait_until(
            lambda: ready_pod(self.namespace, self.name), READY_TIMEOUT_S, f"a pod of {self.name}"
        )

    def invoke(
        self,
        event: Any = None,
        headers: Mapping[str, str] | None = None,
        pod: Pod | None = None,
        timeout: float = INVOKE_TIMEOUT_S,
    ) -> Invocation:
        target = pod or self.pod()
        body = b"" if event is None else json.dumps(event).encode()
        conn = http.client.HTTPConnection(target.ip, 8080, timeout=timeout)
        try:
            conn.request(
                "POST",
                f"/2015-03-31/functions/{self.name}/invocations",
                body=body,
                headers=dict(headers or {}),
            )
            response = conn.getresponse()
            data = response.read()
            return Invocation(
                response.status, {k.lower(): v for k, v in response.getheaders()}, data
            )
        finally:
            conn.close()

    def container_status(self, pod: Pod) -> dict[str, Any]:
        body = get("pod", pod.name, self.namespace)
        assert body["metadata"]["uid"] == pod.uid, "the pod was replaced"
        statuses: list[dict[str, Any]] = body["status"]["containerStatuses"]
        return statuses[0]

    def logs(self, pod: Pod) -> str:
        return kubectl("logs", "-n", self.namespace, pod.name)


def ready_pod(namespace: str, name: str) -> Pod | None:
    pods = json.loads(
        kubectl("get", "pods", "-n", namespace, "-l", f"{FUNCTION_LABEL}={name}", "-o", "json")
    )
    for pod in pods["items"]:
        if pod["metadata"].get("deletionTimestamp") or not pod["status"].get("podIP"):
            continue
        conditions = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}
        if conditions.get("Ready") == "True":
            return Pod(pod["metadata"]["name"], pod["status"]["podIP"], pod["metadata"]["uid"])
    return None


def is_ready(kind: str, name: str, namespace: str) -> bool:
    """Ready=True for the object's current generation."""
    body = get(kind, name, namespace)
    status = body.get("status") or {}
    ready = [c for c in status.get("conditions") or [] if c.get("type") == "Ready"]
    return (
        bool(ready)
        and ready[0].get("status") == "True"
        and status.get("observedGeneration") == body["metadata"]["generation"]
    )


def await_function(namespace: str, name: str) -> DeployedFunction:
    """Wait for an applied Function's Ready=True and a ready pod."""
    try:
        wait_until(
            lambda: is_ready("function", name, namespace),
            READY_TIMEOUT_S,
            f"Function {name} Ready=True",
            interval=1,
        )
    except AssertionError as error:
        body = get("function", name, namespace)
        pods = kubectl(
            "get", "pods", "-n", namespace, "-l", f"{FUNCTION_LABEL}={name}", "-o", "wide"
        )
        raise AssertionError(f"{error}\nstatus: {body.get('status')}\npods:\n{pods}") from None
    deployed = DeployedFunction(namespace, name)
    deployed.pod()
    return deployed


def log_lines_for(text: str, request_id: str) -> list[str]:
    return [line for line in text.splitlines() if request_id in line]


def reports(text: str) -> dict[str, re.Match[str]]:
    """Lambda-format REPORT lines in a log, by request id."""
    return {match["id"]: match for match in REPORT_RE.finditer(text)}


def log_tail(result: Invocation) -> str:
    """The X-Amz-Log-Result of an invocation made with X-Amz-Log-Type: Tail."""
    return base64.b64decode(result.headers["x-amz-log-result"]).decode()


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def module_namespace() -> Iterator[str]:
    """One namespace for the module's functions (the conftest `namespace` is per test)."""
    name = f"e2e-rt-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false")


@pytest.fixture(scope="module")
def stack(module_namespace: str) -> str:
    """Packages, then layers (a Function waits for its layer versions), then every Function."""
    for package in PACKAGES:
        codestore.upload(package)
    apply(LAYERS, module_namespace)
    for name in [item["metadata"]["name"] for item in LAYERS]:
        wait_until(partial(is_ready, "layer", name, module_namespace), 60, f"Layer {name} Ready")
    apply(FUNCTIONS, module_namespace)
    return module_namespace


@pytest.fixture(scope="module")
def py(stack: str) -> DeployedFunction:
    return await_function(stack, PY)


@pytest.fixture(scope="module")
def py_logs(stack: str) -> DeployedFunction:
    return await_function(stack, PY_LOGS)


@pytest.fixture(scope="module")
def py_layers(stack: str) -> DeployedFunction:
    return await_function(stack, PY_LAYERS)


@pytest.fixture(scope="module")
def py_tmp(stack: str) -> DeployedFunction:
    return await_function(stack, PY_TMP)


@pytest.fixture(scope="module")
def node(stack: str) -> DeployedFunction:
    return await_function(stack, NODE)


@pytest.fixture(scope="module")
def provided(stack: str) -> DeployedFunction:
    return await_function(stack, PROVIDED)


def assert_next_invocation_works(fn: DeployedFunction, pod: Pod) -> None:
    """After a failure, the same pod (not restarted) serves a normal invocation."""
    after = fn.invoke({"action": "greet", "name": "again"}, pod=pod)
    assert after.status == 200, after
    assert after.function_error is None, after.body
    assert json.loads(after.json()["body"]) == {"message": "hello, again"}
    status = fn.container_status(pod)
    assert status["restartCount"] == 0, status
    assert status["ready"] is True, status


# --- 1. Python handler and context ---------------------------------------------------------


def test_python_handler_result_and_context(py: DeployedFunction) -> None:
    pod = py.pod()
    greeting = py.invoke({"action": "greet", "name": "kubelambda"}, pod=pod)
    assert greeting.status == 200
    assert greeting.function_error is None
    assert greeting.headers["x-amz-executed-version"] == "$LATEST"
    assert greeting.headers["content-type"] == "application/json"
    assert greeting.json() == {
        "statusCode": 200,
        "headers": {"content-type": "application/json"},
        "body": json.dumps({"message": "hello, kubelambda"}),
    }

    result = py.invoke({"action": "context", "n": [1, 2]}, pod=pod)
    assert result.status == 200, result
    assert result.function_error is None, result.body
    context = result.json()
    assert re.fullmatch(REQUEST_ID_RE, result.request_id)
    assert context["aws_request_id"] == result.request_id
    assert context["function_name"] == PY
    assert context["function_version"] == "$LATEST"
    assert context["memory_limit_in_mb"] == "128"  # a string, as in awslambdaric
    assert 0 < context["remaining_ms"] <= 1000  # timeoutSeconds: 1
    assert re.fullmatch(
        r"arn:aws:lambda:[a-z0-9-]+:\d{12}:function:py", context["invoked_function_arn"]
    )
    assert context["log_group_name"] == f"/aws/lambda/{PY}"
    assert context["log_stream_name"]
    assert context["event"] == {"action": "context", "n": [1, 2]}
    assert context["cwd"] == "/var/task"
    env = context["env"]
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == PY
    assert env["AWS_LAMBDA_FUNCTION_VERSION"] == "$LATEST"
    assert env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "128"
    assert env["AWS_EXECUTION_ENV"] == "AWS_Lambda_python3.11"
    assert env["AWS_LAMBDA_LOG_STREAM_NAME"] == context["log_stream_name"]
    assert env["LAMBDA_TASK_ROOT"] == "/var/task"
    assert env["_HANDLER"] == "app.handler"
    assert env["TZ"] == ":UTC"
    assert env["AWS_REGION"]
    assert re.fullmatch(r"127\.0\.0\.1:\d+", env["AWS_LAMBDA_RUNTIME_API"])
    assert "/opt/bin" in env["PATH"].split(":")
    assert "/opt/python" in env["PYTHONPATH"].split(":")
    assert not [k for k in env if k.startswith("KUBELAMBDA_")], "agent settings leak"


# --- 2. Node.js 18 --------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["async", "callback"])
def test_nodejs18_handler_styles_and_context(node: DeployedFunction, style: str) -> None:
    result = node.invoke({"style": style, "value": {"k": [1, "two"]}})
    assert result.status == 200, result
    assert result.function_error is None, result.body
    body = result.json()
    assert body["style"] == style
    assert body["echo"] == {"k": [1, "two"]}
    assert body["node"].startswith("v18.")
    assert body["functionName"] == NODE
    assert body["functionVersion"] == "$LATEST"
    assert body["memoryLimitInMB"] == "128"
    assert body["awsRequestId"] == result.request_id
    assert re.fullmatch(
        r"arn:aws:lambda:[a-z0-9-]+:\d{12}:function:node", body["invokedFunctionArn"]
    )
    assert body["logGroupName"] == f"/aws/lambda/{NODE}"
    assert 0 < body["remainingMs"] <= 3000


def test_nodejs18_module_from_a_layer(node: DeployedFunction) -> None:
    result = node.invoke({"style": "layer", "value": "quiet"})
    assert result.function_error is None, result.body
    body = result.json()
    assert body["shouted"] == "QUIET!"
    assert body["from"].startswith("/opt/")
    assert body["from"].endswith("/nodejs/node_modules/shout/index.js")


def test_nodejs18_sees_lambda_file_paths(node: DeployedFunction) -> None:
    """Stack traces, __filename and require.resolve name /var/task and /opt files as on
    Lambda: error trackers group errors by these paths, across pods and deployments."""
    result = node.invoke({"style": "paths"})
    assert result.function_error is None, result.body
    paths = result.json()
    stack_frame = paths.pop("stackFrame")
    assert paths == {
        "filename": "/var/task/index.js",
        "layerModule": "/opt/nodejs/node_modules/shout/index.js",
    }
    assert "(/var/task/index.js:" in stack_frame, stack_frame


# --- 3. unhandled exception --------------------------------------------------------------------


def test_unhandled_exception_is_a_function_error(py: DeployedFunction) -> None:
    pod = py.pod()
    result = py.invoke({"action": "fail", "order": 42}, pod=pod)
    assert result.status == 200
    assert result.function_error == "Unhandled"
    error = result.json()
    assert error["errorType"] == "OrderRejectedError"
    assert error["errorMessage"] == "order 42 rejected"
    assert error["requestId"] == result.request_id
    assert isinstance(error["stackTrace"], list)
    assert error["stackTrace"]
    assert any("app.py" in frame and "in fail" in frame for frame in error["stackTrace"])
    assert not any("bootstrap.py" in frame for frame in error["stackTrace"])
    assert_next_invocation_works(py, pod)


# --- 4. timeout --------------------------------------------------------------------------------


def test_timeout_is_sandbox_timedout_and_pod_recovers(py: DeployedFunction) -> None:
    pod = py.pod()
    started = time.monotonic()
    result = py.invoke(
        {"action": "sleep", "seconds": 3}, headers={"X-Amz-Log-Type": "Tail"}, pod=pod
    )
    elapsed = time.monotonic() - started
    assert result.status == 200
    assert result.function_error == "Unhandled"
    assert result.json() == {
        "errorType": "Sandbox.Timedout",
        "errorMessage": f"RequestId: {result.request_id} Error: Task timed out after 1.00 seconds",
    }
    assert elapsed < 2.5, f"answered after {elapsed:.2f}s, the timeout is 1 s"
    tail = log_tail(result)
    assert re.search(
        rf"^\S+Z {result.request_id} Task timed out after 1\.00 seconds$", tail, re.MULTILINE
    ), tail
    report = reports(tail).get(result.request_id)
    assert report is not None, tail
    assert report["status"] == "timeout"
    assert_next_invocation_works(py, pod)


# --- 5. crash ------------------------------------------------------------------------------------


def test_crash_is_runtime_exit_error_and_pod_recovers(py: DeployedFunction) -> None:
    pod = py.pod()
    result = py.invoke({"action": "crash"}, headers={"X-Amz-Log-Type": "Tail"}, pod=pod)
    assert result.status == 200
    assert result.function_error == "Unhandled"
    message = f"RequestId: {result.request_id} Error: Runtime exited with error: exit status 1"
    assert result.json() == {"errorType": "Runtime.ExitError", "errorMessage": message}
    tail = log_tail(result)
    assert f"{message}\nRuntime.ExitError\nEND RequestId: {result.request_id}\n" in tail, tail
    assert_next_invocation_works(py, pod)


# --- 6. response too large ---------------------------------------------------------------------


def test_response_over_6mb_is_response_size_too_large(py: DeployedFunction) -> None:
    pod = py.pod()
    result = py.invoke({"action": "big", "bytes": 7 * 1024 * 1024}, pod=pod)
    assert result.status == 200
    assert result.function_error == "Unhandled"
    error = result.json()
    assert error["errorType"] == "Function.ResponseSizeTooLarge"
    assert "6291556" in error["errorMessage"]
    assert len(result.body) < 1024
    # Just under the limit still works (a JSON string: 2 quotes around the payload).
    fits = py.invoke({"action": "big", "bytes": 6_291_556 - 2}, pod=pod)
    assert fits.function_error is None, fits.body[:300]
    assert len(fits.body) == 6_291_556
    assert_next_invocation_works(py, pod)


# --- 7. out of memory --------------------------------------------------------------------------


def test_out_of_memory_is_lambda_shaped_and_pod_survives(py: DeployedFunction) -> None:
    pod = py.pod()
    result = py.invoke({"action": "hog", "mb": 300}, headers={"X-Amz-Log-Type": "Tail"}, pod=pod)
    assert result.status == 200
    assert result.function_error == "Unhandled", result.body
    error = result.json()
    killed = f"RequestId: {result.request_id} Error: Runtime exited with error: signal: killed"
    assert error["errorMessage"] == killed
    # The agent holds the runtime to memoryMB (the container's limit also covers the tmpfs /tmp).
    assert error["errorType"] == "Runtime.OutOfMemory"
    # The log says what happened, as Lambda's does: the error line, and a REPORT whose
    # Max Memory Used is the memory size (the runtime was killed at the limit).
    tail = log_tail(result)
    assert f"{killed}\n{error['errorType']}\nEND RequestId: {result.request_id}\n" in tail, tail
    report = reports(tail).get(result.request_id)
    assert report is not None, tail
    assert report["status"] == f"error\tError Type: {error['errorType']}"
    assert report["used"] == "128", report.group(0)
    # The kernel killed the runtime, not the agent: the container was not restarted.
    assert_next_invocation_works(py, pod)


# --- 8. filesystem -------------------------------------------------------------------------------


def test_tmp_is_writable_and_root_filesystem_is_read_only(py: DeployedFunction) -> None:
    result = py.invoke({"action": "filesystem"})
    assert result.function_error is None, result.body
    report = result.json()
    assert report["tmp_bytes"] == 10 * 1024 * 1024
    erofs = {"errno": 30, "strerror": "Read-only file system"}
    assert report["task_root"] == erofs
    assert report["root"] == erofs


def test_tmp_is_limited_to_ephemeral_storage(py_tmp: DeployedFunction) -> None:
    """/tmp holds ephemeralStorageMB: a write beyond fails with ENOSPC inside the function,
    as on Lambda, and the execution environment stays (no eviction, no new pod)."""
    pod = py_tmp.pod()
    result = py_tmp.invoke({"action": "fill_tmp", "mb": 600}, pod=pod)
    assert result.function_error is None, result.body
    report = result.json()
    assert report["error"] == {"errno": 28, "strerror": "No space left on device"}, report
    assert 500 <= report["written_mb"] <= 512, report
    assert_next_invocation_works(py_tmp, pod)


# --- 9. layers ---------------------------------------------------------------------------------


def test_layers_python_package_bin_tool_and_later_layer_wins(py_layers: DeployedFunction) -> None:
    result = py_layers.invoke({"action": "layers"})
    assert result.function_error is None, result.body
    report = result.json()
    assert report["greeting"] == "hello lambda, from the tools layer"
    assert report["greeting_file"] == "/opt/python/greeting/__init__.py"
    assert report["tool_returncode"] == 0
    assert report["tool_stdout"] == "hello-tool says: from the function\n"
    assert "/opt/bin" in report["path"].split(":")
    assert report["which_module"] == "override"
    assert report["which_file"] == "override"
    assert report["image_tool_stdout"] == "image-tool says: ok\n"
    assert report["image_module"] == "image"


# --- 10. at most 5 layers ----------------------------------------------------------------------


def test_six_layers_are_rejected_by_the_api_server(module_namespace: str) -> None:
    manifest = python_function(
        "too-many-layers", layers=[{"name": f"l{i}", "version": 1} for i in range(6)]
    )
    with pytest.raises(KubectlError) as rejected:
        apply(manifest, module_namespace)
    message = str(rejected.value)
    assert "spec.layers" in message
    assert "at most 5 items" in message
    with pytest.raises(KubectlError, match="NotFound"):
        kubectl("get", "function", "too-many-layers", "-n", module_namespace)


# --- 11. log lines -----------------------------------------------------------------------------


def assert_lambda_log(text: str, request_id: str, marker: str, cold: bool) -> None:
    lines = log_lines_for(text, request_id)
    assert f"START RequestId: {request_id} Version: $LATEST" in lines, text
    assert f"END RequestId: {request_id}" in lines, text
    report = reports(text).get(request_id)
    assert report is not None, f"no Lambda-format REPORT line for {request_id} in:\n{text}"
    duration = float(report["duration"])
    assert int(report["billed"]) == max(1, math.ceil(duration))
    assert report["memory"] == "128"
    assert 0 < int(report["used"]) <= 128
    assert (report["init"] is not None) is cold, report.group(0)
    assert report["status"] is None, report.group(0)
    # Order: START, the function's output, END, REPORT.
    start = text.index(f"START RequestId: {request_id}")
    assert start < text.index(f"print says {marker}") < text.index(f"END RequestId: {request_id}")
    assert text.index(f"END RequestId: {request_id}") < report.start()
    assert re.search(rf"\[INFO\]\t\S+Z\t{request_id}\tlogger says {marker}", text), (
        "logging line with the request id"
    )


def test_log_lines_and_log_tail(py_logs: DeployedFunction) -> None:
    pod = py_logs.pod()
    first = py_logs.invoke({"action": "chatty", "marker": "first-call"}, pod=pod)
    assert first.function_error is None, first.body
    second = py_logs.invoke(
        {"action": "chatty", "marker": "second-call"}, headers={"X-Amz-Log-Type": "Tail"}, pod=pod
    )
    assert second.function_error is None, second.body
    assert "x-amz-log-result" not in first.headers

    def both_reported() -> str | None:
        text = py_logs.logs(pod)
        found = reports(text)
        return text if first.request_id in found and second.request_id in found else None

    text = wait_until(both_reported, 20, "REPORT lines in kubectl logs")
    assert_lambda_log(text, first.request_id, "first-call", cold=True)
    assert_lambda_log(text, second.request_id, "second-call", cold=False)

    tail = log_tail(second)
    assert len(tail.encode()) <= 4096
    assert first.request_id not in tail
    assert_lambda_log(tail, second.request_id, "second-call", cold=False)


# --- 12. custom runtime --------------------------------------------------------------------------


def test_provided_runtime_with_shell_bootstrap(provided: DeployedFunction) -> None:
    """``runtime: provided`` with an inline ``bootstrap`` that is a ``#!/bin/sh`` script.

    Honestly: the image (Debian with python3, no curl) gives a shell script no HTTP client, so
    the script does its init in sh (a log line, an exported variable) and then execs python3
    with a tiny urllib Runtime API loop (tests/e2e/runtimes/provided/runtime_loop.py). The
    agent knows nothing of either: it just runs /var/task/bootstrap.
    """
    pod = provided.pod()
    result = provided.invoke({"say": "hi there"}, pod=pod)
    assert result.status == 200, result
    assert result.function_error is None, result.body
    body = result.json()
    assert body["runtime"] == "provided"
    assert body["shout"] == "HI THERE"
    assert body["handler"] == "function.handler"
    assert body["request_id"] == result.request_id
    assert body["shell"].startswith("sh:")
    assert int(body["deadline_ms"]) > time.time() * 1000
    again = provided.invoke({"say": "twice"}, pod=pod)
    assert again.json()["shout"] == "TWICE"
    text = provided.logs(pod)
    assert "bootstrap: shell init for handler function.handler" in text
    assert f"custom runtime handled {result.request_id}" in text
    assert f"REPORT RequestId: {again.request_id}" in text
