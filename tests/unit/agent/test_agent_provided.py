"""Custom runtimes (`provided`): an executable bootstrap in the task root."""

from __future__ import annotations

CUSTOM_RUNTIME = """
import json, os, urllib.request

api = "http://" + os.environ["AWS_LAMBDA_RUNTIME_API"] + "/2018-06-01/runtime"
while True:
    with urllib.request.urlopen(api + "/invocation/next") as resp:
        request_id = resp.headers["Lambda-Runtime-Aws-Request-Id"]
        event = json.loads(resp.read())
    print("custom runtime got", event, flush=True)
    body = json.dumps({"echo": event, "handler": os.environ["_HANDLER"]}).encode()
    req = urllib.request.Request(api + f"/invocation/{request_id}/response", data=body)
    urllib.request.urlopen(req).close()
"""


def test_shell_bootstrap(start_agent):
    files = {
        "bootstrap": '#!/bin/sh\nexec python3 "$LAMBDA_TASK_ROOT/runtime.py"\n',
        "runtime.py": CUSTOM_RUNTIME,
    }
    agent = start_agent("my.handler", files, runtime="provided")
    for i in range(2):
        reply = agent.invoke({"n": i})
        assert reply.json() == {"echo": {"n": i}, "handler": "my.handler"}
    assert "custom runtime got {'n': 1}" in agent.logs()


def test_missing_bootstrap_is_an_invalid_entrypoint(start_agent, task_root):
    agent = start_agent("my.handler", {}, runtime="provided")
    reply = agent.invoke({}, {"X-Kubelambda-Request-Id": "no-boot"})
    assert reply.headers["x-amz-function-error"] == "Unhandled"
    assert reply.json() == {
        "errorType": "Runtime.InvalidEntrypoint",
        "errorMessage": "RequestId: no-boot Error: Couldn't find valid bootstrap(s): "
        f"[{task_root}/bootstrap /opt/bootstrap]",
    }
