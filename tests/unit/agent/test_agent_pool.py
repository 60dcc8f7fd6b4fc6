"""Warm pool mode: a real agent started with no function, specialised over HTTP, then serving
the function it was sent exactly as a function pod's agent does."""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import json
import signal
import stat
import threading
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from test_agent_announce import Autoscaler, announce_env

from kubelambda.agent.pool import BadRequest, confine

TOKEN = "pool-token-from-the-operator"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# The harness starts agents with a function's variables: blank is how the agent reads absent.
NO_FUNCTION = {"AWS_LAMBDA_FUNCTION_NAME": "", "_HANDLER": "", "KUBELAMBDA_RUNTIME": ""}

APP = """
import os

def handler(event, context):
    return {"hello": event["name"], "function": context.function_name,
            "version": context.function_version, "greeting": os.environ["GREETING"]}
"""


def function_env(**extra: str) -> dict[str, str]:
    return {
        "AWS_LAMBDA_FUNCTION_NAME": "pooled-fn",
        "AWS_LAMBDA_FUNCTION_VERSION": "3",
        "KUBELAMBDA_RUNTIME": "python3.11",
        "_HANDLER": "app.handler",
        "GREETING": "from the function",
        **extra,
    }


class Pool:
    """A pool-mode agent and the two roots (code, layers) a specialisation unpacks into."""

    def __init__(self, agent: Any, task_root: Path, opt: Path) -> None:
        self.agent = agent
        self.task_root = task_root
        self.opt = opt

    def plan(self, *steps: dict[str, Any]) -> dict[str, Any]:
        roots = [str(self.task_root), str(self.opt)]
        return {"limitBytes": 1 << 20, "roots": roots, "steps": list(steps)}

    def inline_code(self, files: dict[str, str] | None = None) -> dict[str, Any]:
        return {"target": str(self.task_root), "inline": files or {"app.py": APP}, "what": "code"}

    def specialize(
        self, env: dict[str, str], plan: dict[str, Any], headers: dict[str, str] | None = None
    ) -> Any:
        body = json.dumps({"env": env, "unpack": plan}).encode()
        return self.agent.request(
            "POST", "/v1/specialize", body, AUTH if headers is None else headers
        )

    def health(self) -> tuple[int, Any]:
        reply = self.agent.request("GET", "/healthz", timeout=2)
        return reply.status, reply.json()

    def wait_function_ready(self, timeout: float = 15) -> None:
        """Until the function's own endpoint says ready (not the pool's answers)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                if self.health() == (200, {"status": "ready"}):
                    return
            except OSError:  # between the pool's server and the function's
                pass
            time.sleep(0.01)
        raise AssertionError(f"the function never became ready:\n{self.agent.logs()}")


@pytest.fixture
def pool(start_agent, task_root: Path, tmp_path: Path) -> Iterator[Pool]:
    opt = tmp_path / "opt"
    opt.mkdir()
    agent = start_agent(
        KUBELAMBDA_POOL_TOKEN=TOKEN,
        KUBELAMBDA_NAMESPACE="team",
        KUBELAMBDA_POD_IP="10.1.2.3",
        GREETING="from the pool pod",
        **NO_FUNCTION,
    )
    yield Pool(agent, task_root, opt)
    agent.stop()
    for path in [task_root, opt, *task_root.rglob("*"), *opt.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | stat.S_IWUSR)  # read-only code: let tmp_path go


class Packages:
    """Serves zip packages, each answer after ``delay_s``."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.delay_s = 0.0
        packages = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                time.sleep(packages.delay_s)
                data = packages.blobs[self.path.lstrip("/")]
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, name: str, files: dict[str, str]) -> dict[str, str]:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for path, text in files.items():
                archive.writestr(path, text)
        self.blobs[name] = data = buffer.getvalue()
        return {"url": f"{self.base}/{name}", "sha256": hashlib.sha256(data).hexdigest()}


@pytest.fixture
def packages() -> Iterator[Packages]:
    served = Packages()
    yield served
    served.server.shutdown()
    served.server.server_close()


def test_waits_in_the_pool_and_wants_its_token(pool: Pool) -> None:
    assert pool.health() == (200, {"status": "pool"})
    plan = pool.plan(pool.inline_code())
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        reply = pool.specialize(function_env(), plan, headers)
        assert reply.status == 401
        assert "errorMessage" in reply.json()
    assert pool.health() == (200, {"status": "pool"})
    assert list(pool.task_root.iterdir()) == []
    assert pool.agent.request("GET", "/v1/specialize").status == 405
    assert pool.agent.request("POST", "/healthz").status == 405
    assert pool.agent.request("GET", "/nothing").status == 404
    assert pool.agent.invoke({}).status == 404  # no function yet


def test_specialised_with_inline_code_serves_the_function(pool: Pool) -> None:
    agent = pool.agent
    code = pool.inline_code({"app.py": APP, "bin/tool": "#!/bin/sh\n"})
    reply = pool.specialize(function_env(), pool.plan(code))
    assert (reply.status, reply.json()) == (200, {"status": "specialized"})
    assert reply.headers["connection"] == "close"
    pool.wait_function_ready()

    reply = agent.invoke({"name": "pool"}, {"X-Amz-Log-Type": "Tail"})
    assert reply.status == 200
    assert reply.headers["x-amz-executed-version"] == "3"
    assert reply.json() == {
        "hello": "pool",
        "function": "pooled-fn",
        "version": "3",
        "greeting": "from the function",  # the posted environment wins over the pod's
    }
    assert "\tInit Duration: " in base64.b64decode(reply.headers["x-amz-log-result"]).decode()
    log = agent.wait_log("REPORT RequestId: ")
    assert "kubelambda-agent: specialised as pooled-fn:3 in " in log
    assert "\tInit Duration: " in log.split("REPORT RequestId: ", 1)[1].splitlines()[0]

    # The code is read-only, as on Lambda; executables stay executable.
    assert stat.S_IMODE((pool.task_root / "app.py").stat().st_mode) == 0o444
    assert stat.S_IMODE((pool.task_root / "bin/tool").stat().st_mode) == 0o555
    assert stat.S_IMODE((pool.task_root / "bin").stat().st_mode) == 0o555
    assert stat.S_IMODE(pool.task_root.stat().st_mode) == 0o555
    assert stat.S_IMODE(pool.opt.stat().st_mode) == 0o555
    # Specialised once: the pool endpoint is gone, the function goes on serving.
    again = pool.specialize(function_env(GREETING="again"), pool.plan(pool.inline_code()))
    assert again.status == 404
    assert agent.invoke({"name": "x"}).json()["greeting"] == "from the function"


def test_one_specialisation_at_a_time(pool: Pool, packages: Packages) -> None:
    packages.delay_s = 1.0
    code = packages.add("code.zip", {"app.py": APP})
    plan = pool.plan({"target": str(pool.task_root), "zip": code, "what": "code"})
    with ThreadPoolExecutor(1) as executor:
        first = executor.submit(pool.specialize, function_env(), plan)
        time.sleep(0.3)
        assert pool.health() == (503, {"status": "specializing"})
        second = pool.specialize(function_env(), pool.plan(pool.inline_code()))
        assert second.status == 409
        assert "specializing" in second.json()["errorMessage"]
        assert first.result().status == 200
    pool.wait_function_ready()
    assert pool.agent.invoke({"name": "zip"}).json()["hello"] == "zip"


def test_failed_unpack_leaves_the_pod_in_the_pool(pool: Pool, packages: Packages) -> None:
    code = packages.add("code.zip", {"app.py": APP})
    bad = {**code, "sha256": "0" * 64}
    plan = pool.plan(
        pool.inline_code({"helper.py": "x = 1"}),
        {"target": str(pool.opt), "inline": {"python/lib.py": "y = 2"}, "what": "layer"},
        {"target": str(pool.task_root), "zip": bad, "what": "code"},
    )
    reply = pool.specialize(function_env(), plan)
    assert reply.status == 422
    message = reply.json()["errorMessage"]
    assert message.startswith(f"code: sha256 mismatch: expected {'0' * 64}, downloaded ")
    assert pool.health() == (200, {"status": "pool"})
    # What the failed attempt wrote is gone; the roots (mount points) stay.
    assert pool.task_root.is_dir()
    assert pool.opt.is_dir()
    assert list(pool.task_root.iterdir()) == list(pool.opt.iterdir()) == []

    good = pool.plan({"target": str(pool.task_root), "zip": code, "what": "code"})
    assert pool.specialize(function_env(), good).status == 200
    pool.wait_function_ready()
    assert pool.agent.invoke({"name": "second try"}).json()["hello"] == "second try"
    assert not (pool.task_root / "helper.py").exists()


def test_a_corrupt_package_is_422(pool: Pool, packages: Packages) -> None:
    packages.add("corrupt.zip", {"app.py": "CONTENT"})
    data = packages.blobs["corrupt.zip"].replace(b"CONTENT", b"CONTENS")  # a bad CRC
    packages.blobs["corrupt.zip"] = data
    package = {"url": f"{packages.base}/corrupt.zip", "sha256": hashlib.sha256(data).hexdigest()}
    plan = pool.plan({"target": str(pool.task_root), "zip": package, "what": "code"})
    reply = pool.specialize(function_env(), plan)
    assert reply.status == 422
    assert "Bad CRC-32" in reply.json()["errorMessage"]
    assert pool.health() == (200, {"status": "pool"})
    assert list(pool.task_root.iterdir()) == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "not JSON"),
        (b"[]", "must be a JSON object"),
        (json.dumps({"env": {"A": 1}, "unpack": {"steps": []}}).encode(), "object of strings"),
        (json.dumps({"env": {}, "unpack": []}).encode(), "unpack must be an object"),
        (json.dumps({"env": {}, "unpack": {"steps": [], "roots": ["rel"]}}).encode(), "absolute"),
        (
            json.dumps(
                {"env": {"AWS_LAMBDA_FUNCTION_NAME": "f", "_HANDLER": "app.handler"}, "unpack": {}}
            ).encode(),
            "steps must be a list",
        ),
        (
            json.dumps(
                {
                    "env": {"AWS_LAMBDA_FUNCTION_NAME": "f", "_HANDLER": "app.handler"},
                    "unpack": {"steps": []},
                }
            ).encode(),
            "KUBELAMBDA_RUNTIME is required",
        ),
        (
            json.dumps(
                {"env": function_env(KUBELAMBDA_TIMEOUT_SECONDS="soon"), "unpack": {"steps": []}}
            ).encode(),
            "KUBELAMBDA_TIMEOUT_SECONDS must be a number",
        ),
        (
            json.dumps({"env": function_env(), "unpack": {"steps": [{"inline": {}}]}}).encode(),
            "malformed unpack plan: KeyError('target')",
        ),
    ],
)
def test_bad_requests_are_400_and_the_pod_stays(pool: Pool, body: bytes, message: str) -> None:
    reply = pool.agent.request("POST", "/v1/specialize", body, AUTH)
    assert reply.status == 400
    assert message in reply.json()["errorMessage"]
    assert pool.health() == (200, {"status": "pool"})
    assert pool.specialize(function_env(), pool.plan(pool.inline_code())).status == 200
    pool.wait_function_ready()


def test_announces_the_function_it_became(pool: Pool) -> None:
    autoscaler = Autoscaler()
    try:
        env = announce_env(autoscaler.url)
        # As the operator sends them: the pod's own namespace and IP are in its environment.
        posted = {k: v for k, v in env.items() if k.endswith(("_URL", "_TOKEN"))}
        time.sleep(0.3)
        assert autoscaler.announcements == []  # nothing to announce while in the pool
        assert pool.specialize(function_env(**posted), pool.plan(pool.inline_code())).status == 200
        [body] = autoscaler.wait()
    finally:
        autoscaler.close()
    assert body == {
        "namespace": "team",
        "function": "pooled-fn",
        "version": "3",
        "address": f"10.1.2.3:{pool.agent.port}",
        "token": "token-from-the-operator",
    }


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_in_the_pool_exits_at_once(pool: Pool, sig: signal.Signals) -> None:
    started = time.monotonic()
    pool.agent.proc.send_signal(sig)
    assert pool.agent.proc.wait(timeout=5) == 0
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize(
    ("plan", "complaint"),
    [
        ({"roots": ["/pool/task"], "steps": [{"target": "/pool/task", "files": {}}]}, "zip and"),
        ({"roots": ["/etc"], "steps": []}, "not under the pool directory"),
        (
            {"roots": ["/pool/task"], "steps": [{"target": "/pool/../etc", "inline": {}}]},
            "not under the pool directory",
        ),
    ],
)
def test_a_pool_pod_unpacks_only_packages_and_inline_files_into_its_pool_dir(
    plan: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(BadRequest, match=complaint):
        confine(plan, "/pool")
    confine({"roots": ["/pool/task"], "steps": [{"target": "/pool/task", "zip": {}}]}, "/pool")


def test_a_restarted_agent_comes_back_as_the_function_it_became(
    start_agent: Any, task_root: Path, tmp_path: Path
) -> None:
    """An OOM or a crash restarts the container, not the pod: its code is still there, and
    it must not go back to the pool while its version's Service routes calls to it."""
    opt = tmp_path / "opt"
    opt.mkdir()
    pool_env = {
        "KUBELAMBDA_POOL_TOKEN": TOKEN,
        "KUBELAMBDA_POOL_DIR": str(tmp_path),
        "KUBELAMBDA_NAMESPACE": "team",
        "KUBELAMBDA_POD_IP": "10.1.2.3",
        **NO_FUNCTION,
    }
    first = Pool(start_agent(**pool_env), task_root, opt)
    reply = first.specialize(function_env(), first.plan(first.inline_code()))
    assert reply.status == 200
    first.wait_function_ready()
    first.agent.stop()
    again = Pool(start_agent(**pool_env), task_root, opt)
    again.wait_function_ready()
    assert again.agent.invoke({"name": "back"}).json()["function"] == "pooled-fn"
    assert "restarted as pooled-fn:3 (specialised before)" in again.agent.logs()
    for path in [task_root, opt, *task_root.rglob("*"), *opt.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)  # read-only code: let tmp_path go
