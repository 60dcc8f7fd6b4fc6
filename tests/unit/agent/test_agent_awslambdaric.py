"""AWS's own Python runtime client (awslambdaric, unmodified) through the agent."""

from __future__ import annotations

import json
import sys

import pytest

APP = """
def handler(event, context):
    return {
        "event": event,
        "request_id": context.aws_request_id,
        "memory": context.memory_limit_in_mb,
        "arn": context.invoked_function_arn,
        "remaining": context.get_remaining_time_in_millis(),
        "custom": context.client_context and context.client_context.custom,
    }

def fail(event, context):
    raise KeyError("missing")

def big(event, context):
    return "x" * 6_291_600
"""


def _ric(start_agent, handler: str, **env: str):
    command = json.dumps([sys.executable, "-m", "awslambdaric", handler])
    return start_agent(
        handler,
        {"app.py": APP},
        runtime="image",
        KUBELAMBDA_RUNTIME_COMMAND=command,
        **env,
    )


def test_result_and_context(start_agent):
    agent = _ric(start_agent, "app.handler")
    for i in range(3):  # several invocations on one runtime process
        headers = {
            "X-Kubelambda-Request-Id": f"ric-{i}",
            "X-Amz-Client-Context": "eyJjdXN0b20iOnsiYSI6MX19",  # {"custom":{"a":1}}
        }
        reply = agent.invoke({"x": 1}, headers)
        assert reply.status == 200
        assert reply.json() == {
            "event": {"x": 1},
            "request_id": f"ric-{i}",
            "memory": "128",
            "arn": "arn:aws:lambda:us-east-1:000000000000:function:fn",
            "remaining": reply.json()["remaining"],
            "custom": {"a": 1},
        }
        assert 0 < reply.json()["remaining"] <= 3000


def test_unhandled_error(start_agent):
    agent = _ric(start_agent, "app.fail")
    reply = agent.invoke({}, {"X-Kubelambda-Request-Id": "ric-err"})
    assert reply.headers["x-amz-function-error"] == "Unhandled"
    error = reply.json()
    assert error["errorType"] == "KeyError"
    assert error["errorMessage"] == "'missing'"
    assert error["requestId"] == "ric-err"
    assert any("in fail" in line for line in error["stackTrace"])
    assert agent.invoke({}).json()["errorType"] == "KeyError"  # the runtime survived


@pytest.mark.parametrize(
    ("handler", "error_type"),
    [("nomod.handler", "Runtime.ImportModuleError"), ("app.nope", "Runtime.HandlerNotFound")],
)
def test_init_error(start_agent, handler, error_type):
    agent = _ric(start_agent, handler)
    reply = agent.invoke({})
    assert reply.headers["x-amz-function-error"] == "Unhandled"
    assert reply.json()["errorType"] == error_type


def test_too_large_response_then_recovers(start_agent):
    agent = _ric(start_agent, "app.big")
    reply = agent.invoke({})
    assert reply.json()["errorType"] == "Function.ResponseSizeTooLarge"
    # awslambdaric exits on the 413; the agent restarts it for the next invocation.
    assert agent.invoke({}).json()["errorType"] == "Function.ResponseSizeTooLarge"
