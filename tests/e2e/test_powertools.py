"""An unmodified aws-lambda-powertools HTTP API application behind an ApiRoute, on the cluster.

The deployment package is built here as a Lambda user would: app.py plus powertools and its
dependencies (copied from this environment, where they are installed from PyPI), zipped,
uploaded to the code store.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import codestore
from tests.e2e.kube import apply, gateway_url, kubectl, wait_until
from tests.e2e.test_runtimes import await_function, function
from tests.powertools_app import POWERTOOLS, WEB_APP

Reply = tuple[int, list[tuple[str, str]], bytes]


def package() -> bytes:
    """app.py and the vendored libraries, as `pip install -t` would lay them out."""
    files: dict[str, str | bytes] = {"app.py": WEB_APP}
    for module in POWERTOOLS:
        spec = importlib.util.find_spec(module)
        assert spec is not None, module
        assert spec.origin is not None, module
        origin = Path(spec.origin)
        if origin.name != "__init__.py":
            files[origin.name] = origin.read_bytes()
            continue
        for path in origin.parent.rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                files[str(path.relative_to(origin.parent.parent))] = path.read_bytes()
    return codestore.zip_files(files)


@pytest.fixture(scope="module")
def shop() -> Iterator[str]:
    namespace = f"e2e-pt-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", namespace)
    sha256 = codestore.upload(package())
    apply(
        [
            function(
                "web",
                {
                    "runtime": "python3.11",
                    "handler": "app.handler",
                    "memoryMB": 256,
                    "code": {"zip": {"sha256": sha256}},
                },
            ),
            {
                "apiVersion": "kubelambda.io/v1alpha1",
                "kind": "ApiRoute",
                "metadata": {"name": "shop-any"},
                "spec": {
                    "api": "shop",
                    "routeKey": "ANY /{proxy+}",
                    "target": {"function": {"name": "web"}},
                },
            },
        ],
        namespace,
    )
    await_function(namespace, "web")
    yield f"/apis/{namespace}/shop"
    kubectl("delete", "namespace", namespace, "--wait=false")


def call(
    path: str, method: str = "GET", headers: list[tuple[str, str]] | None = None, body: bytes = b""
) -> Reply:
    host = gateway_url().removeprefix("http://")
    conn = http.client.HTTPConnection(host, timeout=60)
    try:
        conn.putrequest(method, path)
        for name, value in headers or ():
            conn.putheader(name, value)
        if body or method == "POST":
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body or None)
        response = conn.getresponse()
        return response.status, response.getheaders(), response.read()
    finally:
        conn.close()


def header(reply: Reply, name: str) -> str | None:
    return next((v for k, v in reply[1] if k.lower() == name), None)


def test_powertools_app_serves_path_query_cookies_json_and_binary(shop: str) -> None:
    # The route appears in the gateway through its watch: wait until it answers.
    first = wait_until(
        lambda: (
            (
                r := call(
                    f"{shop}/pets/7?q=hello%20world&tag=a",
                    headers=[
                        ("Cookie", "session=abc"),
                        ("Cookie", "theme=dark"),
                        ("User-Agent", "tester"),
                    ],
                )
            )[0]
            == 200
            and r
        ),
        60,
        "the ApiRoute to answer",
    )
    assert header(first, "content-type") == "application/json"
    assert json.loads(first[2]) == {
        "id": "7",
        "q": "hello world",
        "tags": "a",
        "session": "abc",
        "theme": "dark",
        "agent": "tester",
    }

    created = call(
        f"{shop}/pets",
        "POST",
        [("Content-Type", "application/json")],
        json.dumps({"name": "rex", "age": 3}).encode(),
    )
    assert created[0] == 201, created
    assert json.loads(created[2]) == {"created": {"name": "rex", "age": 3}}
    assert header(created, "location") == "/pets/rex"
    assert header(created, "set-cookie") == "last=rex; Secure"

    image = bytes(range(256)) * 4
    thumbnail = call(f"{shop}/thumbnail", "POST", [("Content-Type", "image/png")], image)
    assert (thumbnail[0], header(thumbnail, "content-type")) == (200, "image/png")
    assert thumbnail[2] == image[::-1]

    missing = call(f"{shop}/unknown")
    assert missing[0] == 404
    assert json.loads(missing[2])["message"] == "Not found"
