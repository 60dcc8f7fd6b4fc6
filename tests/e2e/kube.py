"""A thin kubectl wrapper for the e2e tests: every call goes to the real API server."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class KubectlError(RuntimeError):
    """kubectl exited non-zero; the message carries its stderr."""


def kubectl(*args: str, stdin: str | None = None, timeout: float = 120) -> str:
    result = subprocess.run(
        ["kubectl", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise KubectlError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def apply(manifests: list[dict[str, Any]] | dict[str, Any], namespace: str | None = None) -> None:
    items = manifests if isinstance(manifests, list) else [manifests]
    ns_args = ["-n", namespace] if namespace else []
    kubectl("apply", *ns_args, "-f", "-", stdin=yaml.safe_dump_all(items))


def get(kind: str, name: str = "", namespace: str | None = None) -> dict[str, Any]:
    """One object, or with no name the list of all of ``kind``."""
    ns_args = ["-n", namespace] if namespace else []
    names = [name] if name else []
    return json.loads(kubectl("get", kind, *names, *ns_args, "-o", "json"))  # type: ignore[no-any-return]


def wait_until(
    probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.5
) -> T:
    """Polls ``probe`` until it returns something other than None/False; fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = probe()
        except (KubectlError, KeyError, IndexError) as error:
            last_error = error
        else:
            if value is not None and value is not False:
                return value
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout:.0f}s waiting for {what} (last error: {last_error})"
    )
