"""The Python runtime bootstrap behind the agent: results, context, errors, logs."""

from __future__ import annotations

import base64
import json
import re
import time
from pathlib import Path

import pytest

CONTEXT_APP = """
import json, os

def handler(event, context):
    return {
        "event": event,
        "function_name": context.function_name,
        "function_version": context.function_version,
        "invoked_function_arn": context.invoked_function_arn,
        "memory_limit_in_mb": context.memory_limit_in_mb,
        "aws_request_id": context.aws_request_id,
        "log_group_name": context.log_group_name,
        "log_stream_name": context.log_stream_name,
        "remaining": context.get_remaining_time_in_millis(),
        "identity": [context.identity.cognito_identity_id,
                     context.identity.cognito_identity_pool_id],
        "client_context": None if context.client_context is None else {
            "custom": context.client_context.custom,
            "env": context.client_context.env,
            "installation_id": context.client_context.client.installation_id,
        },
        "env": dict(os.environ),
        "oom_score_adj": open("/proc/self/oom_score_adj").read().strip(),
    }
"""


def test_result_and_context(start_agent):
    agent = start_agent("app.handler", {"app.py": CONTEXT_APP}, MY_SETTING="on")
    reply = agent.invoke({"a": 1}, {"X-Kubelambda-Request-Id": "req-1"})
    assert reply.status == 200
    assert reply.headers["x-amz-executed-version"] == "$LATEST"
    assert reply.headers["x-amzn-requestid"] == "req-1"
    assert reply.headers["content-type"] == "application/json"
    assert "x-amz-function-error" not in reply.headers
    out = reply.json()
    assert out["event"] == {"a": 1}
    assert out["function_name"] == "fn"
    assert out["function_version"] == "$LATEST"
    assert out["invoked_function_arn"] == "arn:aws:lambda:us-east-1:000000000000:function:fn"
    assert out["memory_limit_in_mb"] == "128"
    assert out["aws_request_id"] == "req-1"
    assert out["log_group_name"] == "/aws/lambda/fn"
    assert re.fullmatch(r"\d{4}/\d{2}/\d{2}/\[\$LATEST\][0-9a-f]{32}", out["log_stream_name"])
    assert 2000 < out["remaining"] <= 3000
    assert out["identity"] == [None, None]
    assert out["client_context"] is None
    assert out["oom_score_adj"] == "1000"  # the OOM killer picks the runtime, not the agent
    env = out["env"]
    assert env["AWS_LAMBDA_RUNTIME_API"] == f"127.0.0.1:{agent.api_port}"
    assert env["MY_SETTING"] == "on"
    assert env["AWS_EXECUTION_ENV"] == "AWS_Lambda_python3.11"
    assert env["TZ"] == ":UTC"
    assert env["AWS_REGION"] == env["AWS_DEFAULT_REGION"] == "us-east-1"
    assert env["AWS_LAMBDA_INITIALIZATION_TYPE"] == "on-demand"
    assert env["PATH"].startswith("/var/lang/bin:/usr/local/bin:/usr/bin:/bin:/opt/bin")
    assert "/opt/lib" in env["LD_LIBRARY_PATH"].split(":")
    assert env["PYTHONPATH"].startswith(env["LAMBDA_TASK_ROOT"] + ":/opt/python:")
    assert not [k for k in env if k.startswith("KUBELAMBDA_")]


def test_client_context_arn_and_deadline(start_agent):
    agent = start_agent("app.handler", {"app.py": CONTEXT_APP})
    client_context = {"custom": {"k": "v"}, "env": {"e": "1"}, "client": {"installation_id": "i"}}
    deadline = int(time.time() * 1000) + 60_000
    reply = agent.invoke(
        {},
        {
            "X-Amz-Client-Context": base64.b64encode(json.dumps(client_context).encode()).decode(),
            "X-Kubelambda-Invoked-Arn": "arn:aws:lambda:us-east-1:000000000000:function:fn:live",
            "X-Kubelambda-Deadline-Ms": str(deadline),
        },
    )
    out = reply.json()
    assert out["client_context"] == {
        "custom": {"k": "v"},
        "env": {"e": "1"},
        "installation_id": "i",
    }
    assert out["invoked_function_arn"].endswith(":fn:live")
    assert 55_000 < out["remaining"] <= 60_000


def test_bad_client_context_is_rejected(start_agent):
    agent = start_agent("app.handler", {"app.py": CONTEXT_APP})
    reply = agent.invoke({}, {"X-Amz-Client-Context": "bm90IGpzb24="})
    assert reply.status == 400
    assert reply.headers["x-amzn-errortype"] == "InvalidRequestContentException"


def test_empty_payload_is_an_empty_object(start_agent):
    agent = start_agent(
        "app.handler", {"app.py": "def handler(event, context):\n    return event\n"}
    )
    assert agent.invoke().body == b"{}"


def test_marshalling_like_awslambdaric(start_agent):
    app = """
    from decimal import Decimal

    def decimals(event, context):
        return {"d": Decimal("1.10"), "n": Decimal("NaN"), "big": Decimal("12345678901234567890.5")}

    def raw(event, context):
        return b"\\x00raw bytes"

    def unserializable(event, context):
        return {"s": {1, 2}}
    """
    agent = start_agent("app.decimals", {"app.py": app})
    assert agent.invoke().body == b'{"d": 1.10, "n": NaN, "big": 12345678901234567890.5}'
    agent.stop()
    agent = start_agent("app.raw")
    assert agent.invoke().body == b"\x00raw bytes"
    agent.stop()
    agent = start_agent("app.unserializable")
    reply = agent.invoke()
    assert reply.headers["x-amz-function-error"] == "Unhandled"
    assert reply.json()["errorType"] == "Runtime.MarshalError"
    assert reply.json()["errorMessage"].startswith("Unable to marshal response: Object of type set")


def test_unhandled_exception(start_agent):
    app = """
    def handler(event, context):
        return helper()

    def helper():
        raise ValueError("bad thing")
    """
    agent = start_agent("app.handler", {"app.py": app})
    reply = agent.invoke({}, {"X-Kubelambda-Request-Id": "req-err"})
    assert reply.status == 200
    assert reply.headers["x-amz-function-error"] == "Unhandled"
    error = reply.json()
    assert list(error) == ["errorMessage", "errorType", "requestId", "stackTrace"]
    assert error["errorMessage"] == "bad thing"
    assert error["errorType"] == "ValueError"
    assert error["requestId"] == "req-err"
    assert len(error["stackTrace"]) == 2
    assert error["stackTrace"][0].startswith('  File "')
    assert "in handler" in error["stackTrace"][0]
    assert "bootstrap.py" not in "".join(error["stackTrace"])
    log = agent.wait_log("END RequestId: req-err")
    assert "[ERROR] ValueError: bad thing\rTraceback (most recent call last):\r" in log


@pytest.mark.parametrize(
    ("handler", "files", "error_type", "message"),
    [
        ("nomod.handler", {}, "Runtime.ImportModuleError", "Unable to import module 'nomod': "),
        (
            "app.missing",
            {"app.py": "def handler(e, c):\n    pass\n"},
            "Runtime.HandlerNotFound",
            "Handler 'missing' missing on module 'app'",
        ),
        (
            "app.handler",
            {"app.py": "def handler(e, c)\n    pass\n"},
            "Runtime.UserCodeSyntaxError",
            "Syntax error in module 'app': ",
        ),
        ("nodot", {}, "Runtime.MalformedHandlerName", "Bad handler 'nodot': "),
    ],
)
def test_init_errors(start_agent, handler, files, error_type, message):
    agent = start_agent(handler, files)  # ready: a failed init still settles the pod
    for _ in range(2):  # every invocation re-runs the failing init, like Lambda
        reply = agent.invoke()
        assert reply.status == 200
        assert reply.headers["x-amz-function-error"] == "Unhandled"
        error = reply.json()
        assert error["errorType"] == error_type
        assert error["errorMessage"].startswith(message)
        assert error["requestId"] == ""
        assert isinstance(error["stackTrace"], list)
    assert f"[ERROR] {error_type}: {message}" in agent.logs()


def test_module_error_at_import(start_agent):
    agent = start_agent("app.handler", {"app.py": "1 / 0\ndef handler(e, c):\n    pass\n"})
    error = agent.invoke().json()
    assert error["errorType"] == "ZeroDivisionError"
    assert error["errorMessage"] == "division by zero"


def test_handler_in_a_subdirectory(start_agent):
    files = {"src/pkg/mod.py": "def handler(event, context):\n    return 'nested'\n"}
    agent = start_agent("src/pkg/mod.handler", files)
    assert agent.invoke().json() == "nested"


def test_logging_module_format(start_agent):
    app = """
    import logging
    logger = logging.getLogger()
    logger.setLevel(logging.INFO)

    def handler(event, context):
        logger.info("from logging")
        print("from print")
        return None
    """
    agent = start_agent("app.handler", {"app.py": app})
    reply = agent.invoke({}, {"X-Amz-Log-Type": "Tail", "X-Kubelambda-Request-Id": "r-log"})
    assert reply.body == b"null"
    tail = base64.b64decode(reply.headers["x-amz-log-result"]).decode()
    assert re.search(
        r"\[INFO\]\t\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\tr-log\tfrom logging\n", tail
    )
    assert "from print\n" in tail


def test_function_code_cannot_import_the_agent(start_agent):
    # The agent's lib dir is on the agent's PYTHONPATH (here and in the runtime images).
    app = """
    import importlib.util, os

    def handler(event, context):
        return [importlib.util.find_spec("kubelambda") is None, os.environ["PYTHONPATH"]]
    """
    agent = start_agent("app.handler", {"app.py": app})
    hidden, pythonpath = agent.invoke().json()
    assert hidden
    assert str(Path(__file__).resolve().parents[3] / "operator") not in pythonpath.split(":")
