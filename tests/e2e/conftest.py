"""Fixtures for the e2e suite: it runs against the cluster at $KUBECONFIG (``make cluster-up``)."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.kube import kubectl

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
