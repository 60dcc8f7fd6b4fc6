"""The Node.js runtime bootstrap behind the agent (needs `node` on PATH; never skipped)."""

from __future__ import annotations

import base64
import re
import shutil

import pytest

INDEX = """
exports.handler = async (event, context) => {
  console.log("hello", { n: event.n });
  return {
    event,
    functionName: context.functionName,
    functionVersion: context.functionVersion,
    invokedFunctionArn: context.invokedFunctionArn,
    memoryLimitInMB: context.memoryLimitInMB,
    awsRequestId: context.awsRequestId,
    logGroupName: context.logGroupName,
    logStreamName: context.logStreamName,
    remaining: context.getRemainingTimeInMillis(),
    clientContext: context.clientContext,
    identity: context.identity,
    waits: context.callbackWaitsForEmptyEventLoop,
  };
};

exports.callback = (event, context, callback) => {
  setTimeout(() => console.log("timer ran"), 100);
  callback(null, { style: "callback" });
};

exports.noWait = (event, context, callback) => {
  context.callbackWaitsForEmptyEventLoop = false;
  setTimeout(() => console.log("late timer"), 300);
  callback(null, { style: "no-wait" });
};

exports.legacy = (event, context) => { context.succeed({ style: "succeed" }); };

exports.fails = async () => { throw new TypeError("nope"); };

exports.callbackError = (event, context, callback) => callback(new Error("cb failed"));

exports.nested = { deep: { fn: async () => "nested" } };
"""

ESM = "export const handler = async (event) => ({ esm: true, event });\n"


@pytest.fixture(autouse=True)
def _require_node():
    if shutil.which("node") is None:
        pytest.fail("node is not on PATH: the Node.js runtime cannot be tested")


def _tail(reply) -> str:
    return base64.b64decode(reply.headers["x-amz-log-result"]).decode()


def test_async_handler_and_context(start_agent):
    agent = start_agent("index.handler", {"index.js": INDEX}, runtime="nodejs18")
    headers = {
        "X-Kubelambda-Request-Id": "n-1",
        "X-Amz-Client-Context": "eyJjdXN0b20iOnsiYSI6MX19",
        "X-Amz-Log-Type": "Tail",
    }
    reply = agent.invoke({"n": 5}, headers)
    assert reply.status == 200
    assert "x-amz-function-error" not in reply.headers
    out = reply.json()
    assert out["event"] == {"n": 5}
    assert out["functionName"] == "fn"
    assert out["functionVersion"] == "$LATEST"
    assert out["invokedFunctionArn"] == "arn:aws:lambda:us-east-1:000000000000:function:fn"
    assert out["memoryLimitInMB"] == "128"
    assert out["awsRequestId"] == "n-1"
    assert out["logGroupName"] == "/aws/lambda/fn"
    assert re.fullmatch(r"\d{4}/\d{2}/\d{2}/\[\$LATEST\][0-9a-f]{32}", out["logStreamName"])
    assert 0 < out["remaining"] <= 3000
    assert out["clientContext"] == {"custom": {"a": 1}}
    assert "identity" not in out
    assert out["waits"] is True
    assert re.search(r"\d{4}-\d\d-\d\dT[\d:.]+Z\tn-1\tINFO\thello { n: 5 }\n", _tail(reply))


def test_callback_waits_for_the_empty_event_loop(start_agent):
    agent = start_agent("index.callback", {"index.js": INDEX}, runtime="nodejs18")
    reply = agent.invoke({}, {"X-Amz-Log-Type": "Tail"})
    assert reply.json() == {"style": "callback"}
    tail = _tail(reply)
    assert tail.index("timer ran") < tail.index("END RequestId")


def test_callback_without_waiting(start_agent):
    agent = start_agent("index.noWait", {"index.js": INDEX}, runtime="nodejs18")
    reply = agent.invoke({}, {"X-Amz-Log-Type": "Tail"})
    assert reply.json() == {"style": "no-wait"}
    assert "late timer" not in _tail(reply)
    agent.wait_log("late timer")


def test_legacy_context_methods_and_nested_handlers(start_agent):
    agent = start_agent("index.legacy", {"index.js": INDEX}, runtime="nodejs18")
    assert agent.invoke({}).json() == {"style": "succeed"}
    agent.stop()
    agent = start_agent("index.nested.deep.fn", runtime="nodejs18")
    assert agent.invoke({}).json() == "nested"


@pytest.mark.parametrize(
    ("handler", "error_type", "message"),
    [("index.fails", "TypeError", "nope"), ("index.callbackError", "Error", "cb failed")],
)
def test_errors(start_agent, handler, error_type, message):
    agent = start_agent(handler, {"index.js": INDEX}, runtime="nodejs18")
    reply = agent.invoke({}, {"X-Kubelambda-Request-Id": "n-err", "X-Amz-Log-Type": "Tail"})
    assert reply.headers["x-amz-function-error"] == "Unhandled"
    error = reply.json()
    assert list(error) == ["errorType", "errorMessage", "trace"]
    assert (error["errorType"], error["errorMessage"]) == (error_type, message)
    assert error["trace"][0] == f"{error_type}: {message}"
    assert "\tn-err\tERROR\tInvoke Error \t{" in _tail(reply)
    assert agent.invoke({}).json()["errorType"] == error_type  # the runtime survived


def test_es_module_handler(start_agent):
    agent = start_agent("esm.handler", {"esm.mjs": ESM}, runtime="nodejs18")
    assert agent.invoke({"a": 1}).json() == {"esm": True, "event": {"a": 1}}


def test_es_module_in_a_type_module_package(start_agent):
    files = {"package.json": '{"type": "module"}', "src/app.js": ESM}
    agent = start_agent("src/app.handler", files, runtime="nodejs18")
    assert agent.invoke({"a": 2}).json() == {"esm": True, "event": {"a": 2}}


@pytest.mark.parametrize(
    ("handler", "files", "error_type", "message"),
    [
        ("missing.handler", {}, "Runtime.ImportModuleError", "Error: Cannot find module 'missing'"),
        ("index.nope", {"index.js": INDEX}, "Runtime.HandlerNotFound", "index.nope is undefined"),
        ("index", {"index.js": INDEX}, "Runtime.MalformedHandlerName", "Bad handler"),
        (
            "bad.handler",
            {"bad.js": "exports.handler = ;"},
            "Runtime.UserCodeSyntaxError",
            "SyntaxError: Unexpected token",
        ),
    ],
)
def test_init_errors(start_agent, handler, files, error_type, message):
    agent = start_agent(handler, files, runtime="nodejs18")
    reply = agent.invoke({})
    assert reply.headers["x-amz-function-error"] == "Unhandled"
    error = reply.json()
    assert error["errorType"] == error_type
    assert error["errorMessage"].startswith(message)


def test_uncaught_exception_fails_the_invocation_and_restarts(start_agent):
    app = """
    exports.handler = async (event) => {
      if (event.throwLater) {
        setTimeout(() => { throw new RangeError("async boom"); }, 10);
        return new Promise(() => {});
      }
      return "ok";
    };
    """
    agent = start_agent("index.handler", {"index.js": app}, runtime="nodejs18")
    reply = agent.invoke({"throwLater": True})
    assert reply.json()["errorType"] == "RangeError"
    assert agent.invoke({}).json() == "ok"
