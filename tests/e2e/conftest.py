"""Fixtures for the e2e suite: it runs against the cluster at $KUBECONFIG (``make cluster-up``)."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest

from tests.e2e.kube import PLATFORM_NAMESPACE, KubectlError, kubectl, metrics_path, platform_pods
from tests.e2e.test_async import RecordSink

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGE_TAG = os.environ.get("KUBELAMBDA_IMAGE_TAG", "dev")
TOOLBOX_IMAGE = f"kubelambda/toolbox:{IMAGE_TAG}"


# Tests that uninstall and reinstall the platform run after everything that relies on it.
# The quickstart reinstalls the platform with its defaults; the lifecycle test uninstalls it.
LAST_MODULES = ("test_quickstart.py", "test_install_lifecycle.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Everything under tests/e2e needs the cluster: mark it so `-m e2e` selects it all.
    for item in items:
        if "tests/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)
    order = {name: rank for rank, name in enumerate(LAST_MODULES, start=1)}
    items.sort(key=lambda item: order.get(Path(str(item.fspath)).name, 0))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed e2e test's report carries the platform's state: a CI log is all there is then."""
    report = yield
    if report.when == "call" and report.failed and "tests/e2e/" in str(item.fspath):
        arguments = getattr(item, "funcargs", {})
        namespace = next(
            (v for k, v in arguments.items() if k.endswith("namespace") and isinstance(v, str)),
            None,
        )
        report.sections.append(("platform state", platform_state(namespace)))
    return report


def platform_state(namespace: str | None) -> str:
    """The platform's pods, its components' warnings, and the invoker's figures for the test's
    namespace (a worker that never ran an event shows as no line at all)."""
    parts: list[str] = []

    def add(title: str, command: tuple[str, ...], keep: Callable[[str], bool]) -> None:
        try:
            lines = [line for line in kubectl(*command, timeout=20).splitlines() if keep(line)]
        except (KubectlError, subprocess.TimeoutExpired) as exc:
            lines = [f"({exc})"]
        parts.append(f"--- {title}\n" + "\n".join(lines[-40:]))

    add("pods", ("get", "pods", "-n", PLATFORM_NAMESPACE, "-o", "wide"), lambda _: True)
    for component in ("invoker", "gateway", "queue"):
        add(
            f"{component} warnings",
            (
                "logs",
                "-n",
                PLATFORM_NAMESPACE,
                "-l",
                f"app.kubernetes.io/component={component}",
                "--tail=400",
                "--prefix",
            ),
            lambda line: (
                not (" INFO " in line or "[INF]" in line) or bool(namespace and namespace in line)
            ),
        )
    if namespace:
        try:
            invokers = platform_pods("invoker")
        except KubectlError as exc:
            invokers = []
            parts.append(f"--- invoker pods: {exc}")
        for pod in invokers:
            add(
                f"invoker {pod['metadata']['name']} metrics of {namespace}",
                ("get", "--raw", metrics_path(pod["metadata"]["name"])),
                lambda line: namespace in line and not line.startswith("#"),
            )
    return "\n".join(parts)


@pytest.fixture(scope="session", autouse=True)
def _cluster_reachable() -> None:
    os.environ.setdefault("KUBECONFIG", str(REPO_ROOT / ".cluster" / "kubeconfig"))
    kubectl("get", "--raw", "/readyz")


@pytest.fixture(scope="session", autouse=True)
def platform() -> None:
    """The platform installed with Helm (images loaded by `make test-e2e`); idempotent.

    Every e2e test gets it: nothing else may install CRDs, or Helm would refuse to adopt them.
    """
    result = subprocess.run(
        # Retries after function errors come seconds apart instead of Lambda's 1-2 minutes,
        # so async tests finish in CI time.
        [str(REPO_ROOT / "hack" / "install.sh"), "--set", "invoker.retryBaseSeconds=2"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"installing the platform failed:\n{result.stdout}\n{result.stderr}")


@pytest.fixture
def namespace() -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards (without waiting)."""
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false")


@pytest.fixture(scope="module")
def sink() -> Iterator[RecordSink]:
    """Destination records POSTed by the invoker, for one module's tests."""
    server = RecordSink()
    yield server
    server.server.shutdown()
    server.server.server_close()
