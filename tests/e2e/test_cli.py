"""The `kubelambda` CLI against the real cluster, one test per command, run as a subprocess.

The CLI reaches the platform only through the API server (service proxy, port-forward), with
the kubeconfig's credentials, exactly as from a laptop.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import REPO_ROOT
from tests.e2e.kube import PLATFORM_NAMESPACE, get, wait_until

CLI = str(REPO_ROOT / ".venv" / "bin" / "kubelambda")
APP = """
import json

def handler(event, context):
    print("event", json.dumps(event))
    if event.get("fail"):
        raise RuntimeError("asked to fail")
    return {"hello": event.get("name", "world"), "version": context.function_version}
"""


def cli(*args: str, code: int = 0, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [CLI, *args], input=stdin, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == code, f"kubelambda {' '.join(args)}: {result}"
    assert "Traceback" not in result.stderr, result.stderr
    return result


@pytest.fixture
def code(tmp_path: Path) -> Path:
    (tmp_path / "app.py").write_text(APP)
    return tmp_path


def deploy(code: Path, namespace: str, name: str = "hello", *extra: str) -> None:
    cli(
        "deploy",
        str(code),
        "-n",
        namespace,
        "--name",
        name,
        "--runtime",
        "python3.11",
        "--handler",
        "app.handler",
        *extra,
    )


def test_deploy(code: Path, namespace: str) -> None:
    deploy(code, namespace, "hello", "--env", "GREETING=hi", "--memory", "256")
    body = get("function", "hello", namespace)
    assert body["spec"]["memoryMB"] == 256
    assert body["spec"]["environment"]["variables"] == {"GREETING": "hi"}
    assert len(body["spec"]["code"]["zip"]["sha256"]) == 64
    again = cli(
        "deploy",
        str(code),
        "-n",
        namespace,
        "--name",
        "hello",
        "--runtime",
        "python3.11",
        "--handler",
        "app.handler",
        "--env",
        "GREETING=hi",
        "--memory",
        "256",
    )
    assert "already in the code store" in again.stderr
    bad = cli(
        "deploy",
        str(code),
        "-n",
        namespace,
        "--name",
        "hello",
        "--runtime",
        "python3.11",
        "--handler",
        "app.handler",
        "--memory",
        "64",
        code=2,
    )
    assert "memoryMB" in bad.stderr


def test_invoke(code: Path, namespace: str) -> None:
    deploy(code, namespace)
    ok = cli("invoke", "hello", "-n", namespace, "-p", '{"name": "cli"}', "--log-tail")
    assert json.loads(ok.stdout) == {"hello": "cli", "version": "$LATEST"}
    assert "START RequestId" in ok.stderr
    failed = cli(
        "invoke", "hello", "-n", namespace, "--payload-file", "-", stdin='{"fail": true}', code=1
    )
    assert json.loads(failed.stdout)["errorMessage"] == "asked to fail"
    queued = cli("invoke", "hello", "-n", namespace, "--async", "-p", "{}")
    assert len(queued.stdout.strip()) == 36
    missing = cli("invoke", "nope", "-n", namespace, code=3)
    assert missing.stderr.startswith("kubelambda: error: ResourceNotFoundException")


def test_logs(code: Path, namespace: str) -> None:
    deploy(code, namespace)
    cli("invoke", "hello", "-n", namespace, "-p", '{"name": "logged"}')
    wait_until(
        lambda: '"name": "logged"' in cli("logs", "hello", "-n", namespace, "--since", "5m").stdout,
        30,
        "the invocation's line in the logs",
    )
    cli("logs", "nope", "-n", namespace, code=3)


def test_publish(code: Path, namespace: str) -> None:
    deploy(code, namespace)
    assert cli("publish", "hello", "-n", namespace).stdout == "1\n"
    assert cli("publish", "hello", "-n", namespace).stdout == "1\n", "nothing changed"
    assert not get("function", "hello", namespace)["spec"].get("publish")
    (code / "extra.txt").write_text("changed")
    deploy(code, namespace)
    assert cli("publish", "hello", "-n", namespace).stdout == "2\n"


def test_alias(code: Path, namespace: str) -> None:
    deploy(code, namespace)
    cli("publish", "hello", "-n", namespace)
    cli("alias", "hello", "prod", "--version", "1", "-n", namespace)
    rows = json.loads(cli("alias", "list", "hello", "-n", namespace, "-o", "json").stdout)
    assert [(r["alias"], r["version"]) for r in rows] == [("prod", "1")]
    answer = cli("invoke", "hello", "-q", "prod", "-n", namespace)
    assert json.loads(answer.stdout)["version"] == "1"
    cli("alias", "hello", "prod", "--version", "9", "-n", namespace, code=3)
    cli("alias", "delete", "hello", "prod", "-n", namespace)
    cli("alias", "delete", "hello", "prod", "-n", namespace, code=3)


def test_route(code: Path, namespace: str) -> None:
    deploy(code, namespace)
    url = cli("route", "create", "pets", "GET /pets", "--function", "hello", "-n", namespace)
    assert url.stdout.strip().endswith(f"/apis/{namespace}/pets/pets")
    rows = json.loads(cli("route", "list", "-n", namespace, "-o", "json").stdout)
    assert [(r["api"], r["route"], r["target"]) for r in rows] == [
        ("pets", "GET /pets", "function hello")
    ]
    gateway = get("service", "kubelambda-gateway", PLATFORM_NAMESPACE)["spec"]["clusterIP"]
    direct = url.stdout.strip().replace(f"kubelambda-gateway.{PLATFORM_NAMESPACE}.svc", gateway)

    def served() -> dict[str, Any] | None:
        with urllib.request.urlopen(direct, timeout=30) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]

    assert wait_until(served, 30, "the route to be served")["hello"] == "world"
    cli("route", "delete", "pets", "GET /pets", "-n", namespace)
    cli("route", "delete", "pets", "GET /pets", "-n", namespace, code=3)


def test_dlq(code: Path, namespace: str, tmp_path: Path) -> None:
    manifest = tmp_path / "fn.yaml"
    manifest.write_text(
        "apiVersion: kubelambda.io/v1alpha1\nkind: Function\nmetadata: {name: failing}\n"
        "spec: {runtime: python3.11, handler: app.handler, async: {maximumRetryAttempts: 0},"
        " code: {inline: {app.py: x}}}\n"
    )
    cli("deploy", str(code), "-f", str(manifest), "-n", namespace)
    cli("invoke", "failing", "-n", namespace, "--async", "-p", '{"fail": true}')

    def dead_letters() -> list[dict[str, Any]] | None:
        listed = cli("dlq", "list", "--function", "failing", "-n", namespace, "-o", "json")
        return json.loads(listed.stdout) or None

    [letter] = wait_until(dead_letters, 60, "the failed event in the DLQ")
    shown = json.loads(cli("dlq", "show", str(letter["sequence"])).stdout)
    assert shown["payload"] == {"fail": True}
    assert cli("dlq", "redrive", str(letter["sequence"])).stdout == "redriven 1 dead letter(s)\n"
    [again] = wait_until(dead_letters, 60, "the redriven event back in the DLQ")
    purged = cli("dlq", "purge", "--function", "failing", "-n", namespace)
    assert purged.stdout == "purged 1 dead letter(s)\n"
    cli("dlq", "show", str(again["sequence"]), code=3)


def test_status(code: Path, namespace: str) -> None:
    deploy(code, namespace)
    [row] = json.loads(cli("status", "-n", namespace, "-o", "json").stdout)
    assert (row["name"], row["ready"]) == ("hello", "True")
    assert row["replicas"]["desired"] >= row["replicas"]["ready"]
    assert "$LATEST" in row["versions"]
    table = cli("status", "hello", "-n", namespace).stdout.splitlines()
    assert table[0].split()[:2] == ["NAME", "READY"]
    cli("status", "nope", "-n", namespace, code=3)


def test_expected_failures_are_one_line(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: x\n"
        "clusters: [{name: x, cluster: {server: 'https://127.0.0.1:1'}}]\n"
        "contexts: [{name: x, context: {cluster: x, user: x}}]\nusers: [{name: x, user: {}}]\n"
    )
    down = cli("--kubeconfig", str(kubeconfig), "status", code=1)
    assert down.stderr.count("\n") == 1
    assert "cannot reach the Kubernetes API server" in down.stderr
    assert "exit codes:" in cli("--help").stdout
    cli("invoke", code=2)
    elsewhere = cli("dlq", "list", "--release", "nothing-here", code=1)
    assert "Service not found" in elsewhere.stderr
