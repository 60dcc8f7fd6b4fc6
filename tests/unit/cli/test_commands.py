"""Commands against a fake cluster and fake services: output, calls made, exit codes."""

from __future__ import annotations

import base64
import json

import pytest

from kubelambda.cli import main as cli_main
from kubelambda.cli.errors import CliError, NotFound, UsageError, WaitTimeout
from kubelambda.cli.kube import ALIAS, FUNCTION
from kubelambda.cli.output import Format
from kubelambda.cli.parser import parse
from kubelambda.cli.platform import PlatformSettings
from tests.unit.cli.fakes import FakeHttp, FakeKube, err, make_session, out, reply

NS = "team"


def run(session, *argv):
    args = parse(list(argv))
    return args.run(args, session)


def function(name="hello", ready="True", generation=1, observed=1, versions=("$LATEST",), **spec):
    return {
        "apiVersion": "kubelambda.io/v1alpha1",
        "kind": "Function",
        "metadata": {"name": name, "namespace": NS, "generation": generation},
        "spec": {"runtime": "python3.11", "handler": "app.handler", **spec},
        "status": {
            "observedGeneration": observed,
            "conditions": [
                {
                    "type": "Ready",
                    "status": ready,
                    "reason": "Available",
                    "message": "1/1 pods ready",
                }
            ],
            "latestVersion": max((int(v) for v in versions if v.isdigit()), default=0),
            "versions": [{"version": v} for v in versions],
            "replicas": {"desired": 1, "ready": 1},
            "url": f"http://fn-{name}-latest.{NS}.svc:8080",
        },
    }


def gateway(kube, answer):
    kube.http["kubelambda-gateway"] = FakeHttp(lambda method, path: answer)
    return kube.http["kubelambda-gateway"]


# --- invoke ------------------------------------------------------------------------------


def test_invoke_prints_the_response_and_the_log_tail():
    kube = FakeKube()
    log = base64.b64encode(b"START\nhello\nEND\n").decode()
    http = gateway(kube, reply(200, b'{"ok": true}', x_amz_log_result=log))
    session = make_session(kube)
    assert run(session, "invoke", "hello", "-q", "prod", "-p", '{"a": 1}', "--log-tail") == 0
    assert out(session) == '{"ok": true}\n'
    assert err(session) == "START\nhello\nEND\n"
    call = http.calls[0]
    assert call.path == f"/namespaces/{NS}/2015-03-31/functions/hello/invocations?Qualifier=prod"
    assert call.body == b'{"a": 1}'
    assert call.headers["X-Amz-Invocation-Type"] == "RequestResponse"
    assert call.headers["X-Amz-Log-Type"] == "Tail"


def test_a_function_error_prints_the_error_payload_and_exits_1():
    kube = FakeKube()
    gateway(kube, reply(200, b'{"errorMessage": "boom"}', x_amz_function_error="Unhandled"))
    session = make_session(kube, stdin=b'{"fail": true}')
    assert run(session, "invoke", "hello", "--payload-file", "-") == 1
    assert json.loads(out(session)) == {"errorMessage": "boom"}
    assert "Unhandled" in err(session)


def test_async_prints_the_request_id():
    kube = FakeKube()
    http = gateway(kube, reply(202, x_amzn_requestid="rid-1"))
    session = make_session(kube)
    assert run(session, "invoke", "hello", "--async") == 0
    assert out(session) == "rid-1\n"
    assert http.calls[0].headers["X-Amz-Invocation-Type"] == "Event"


def test_service_errors():
    kube = FakeKube()
    gateway(
        kube,
        reply(
            404,
            b'{"Type": "User", "message": "Function not found"},',
            x_amzn_errortype="ResourceNotFoundException",
        ),
    )
    with pytest.raises(NotFound, match="ResourceNotFoundException"):
        run(make_session(kube), "invoke", "nope")
    gateway(
        kube,
        reply(429, b'{"message": "Rate Exceeded."}', x_amzn_errortype="TooManyRequestsException"),
    )
    with pytest.raises(CliError, match="Rate Exceeded") as raised:
        run(make_session(kube), "invoke", "hello")
    assert raised.value.exit_code == 1


def test_a_payload_that_is_not_json_is_a_usage_error():
    with pytest.raises(UsageError, match="not valid JSON"):
        run(make_session(FakeKube()), "invoke", "hello", "-p", "{nope")


# --- deploy ------------------------------------------------------------------------------


@pytest.fixture
def code(tmp_path):
    (tmp_path / "app.py").write_text("def handler(e, c): return 1\n")
    return tmp_path


def store(kube, present=False):
    def answer(method, path):
        if method == "HEAD":
            return reply(200 if present else 404)
        return reply(201, b'{"sha256": "x", "size": 1}')

    kube.secrets[("kubelambda-system", "kubelambda-store", "uploadToken")] = "upload-token"
    kube.http["kubelambda-store"] = FakeHttp(answer)
    return kube.http["kubelambda-store"]


def becomes_ready(kube):
    """The operator: status catches up with the applied generation on the next look."""

    def operator(body):
        generation = body["metadata"]["generation"]
        body["status"] = function(observed=generation)["status"]

    kube.on_get = operator


def test_deploy_uploads_applies_and_waits_until_ready(code):
    kube = FakeKube()
    http = store(kube)
    becomes_ready(kube)
    session = make_session(kube)
    argv = [
        "deploy",
        str(code),
        "--name",
        "hello",
        "--runtime",
        "python3.11",
        "--handler",
        "app.handler",
        "--env",
        "GREETING=hi",
    ]
    assert run(session, *argv) == 0
    head, put = http.calls
    assert (head.method, put.method) == ("HEAD", "PUT")
    assert put.headers["Authorization"] == "Bearer upload-token"
    assert put.path == f"/v1/blobs/{kube.applied[0]['spec']['code']['zip']['sha256']}"
    assert kube.applied[0]["spec"]["environment"] == {"variables": {"GREETING": "hi"}}
    assert out(session) == f"function {NS}/hello is Ready\n"


def test_deploy_skips_the_upload_of_a_stored_package(code):
    kube = FakeKube()
    http = store(kube, present=True)
    becomes_ready(kube)
    session = make_session(kube)
    assert run(session, "deploy", str(code), "--name", "hello", "--runtime", "provided") == 0
    assert [c.method for c in http.calls] == ["HEAD"]
    assert "already in the code store" in err(session)


def test_deploy_times_out_with_exit_4(code):
    kube = FakeKube()
    store(kube)
    session = make_session(kube)
    argv = ["deploy", str(code), "--name", "hello", "--runtime", "provided", "--timeout", "5"]
    with pytest.raises(WaitTimeout, match="has not processed generation 1") as raised:
        run(session, *argv)
    assert raised.value.exit_code == 4


def test_deploy_from_a_manifest(code, tmp_path):
    manifest = tmp_path / "fn.yaml"
    manifest.write_text(
        "apiVersion: kubelambda.io/v1alpha1\nkind: Function\n"
        "metadata: {name: from-file, namespace: other}\n"
        "spec: {runtime: python3.11, handler: app.handler, memoryMB: 256,"
        " code: {inline: {app.py: x}}}\n"
    )
    kube = FakeKube()
    store(kube)
    session = make_session(kube)
    assert run(session, "deploy", str(code), "-f", str(manifest), "--no-wait") == 0
    assert ("Function", "other", "from-file") in kube.objects
    assert kube.applied[0]["spec"]["memoryMB"] == 256
    assert set(kube.applied[0]["spec"]["code"]) == {"zip"}


def test_a_missing_store_secret_is_a_clear_error(code):
    kube = FakeKube()
    kube.http["kubelambda-store"] = FakeHttp(lambda method, path: reply(404))
    with pytest.raises(
        CliError, match="no uploadToken in Secret kubelambda-system/kubelambda-store"
    ):
        run(make_session(kube), "deploy", str(code), "--name", "x", "--runtime", "provided")


def test_the_store_token_can_come_from_the_environment(code):
    kube = FakeKube()
    http = store(kube)
    settings = PlatformSettings.resolve({"KUBELAMBDA_STORE_TOKEN": "from-env"})
    session = make_session(kube, settings=settings)
    assert (
        run(session, "deploy", str(code), "--name", "x", "--runtime", "provided", "--no-wait") == 0
    )
    assert http.calls[-1].headers["Authorization"] == "Bearer from-env"


# --- publish, status ---------------------------------------------------------------------


def test_publish_switches_publish_on_for_one_reconcile():
    kube = FakeKube()
    kube.put(FUNCTION, NS, function())

    def operator(body):
        if body["spec"].get("publish"):
            body["status"] = function(
                versions=("$LATEST", "1"), observed=body["metadata"]["generation"]
            )["status"]

    kube.on_get = operator
    session = make_session(kube)
    assert run(session, "publish", "hello") == 0
    assert out(session) == "1\n"
    assert kube.patches == [{"spec": {"publish": True}}, {"spec": {"publish": False}}]


def test_publish_of_a_missing_function_exits_3():
    with pytest.raises(NotFound) as raised:
        run(make_session(FakeKube()), "publish", "nope")
    assert raised.value.exit_code == 3


def test_status_table_and_json():
    kube = FakeKube()
    kube.put(FUNCTION, NS, function(versions=("$LATEST", "1", "2")))
    session = make_session(kube)
    assert run(session, "status") == 0
    header, row = out(session).splitlines()
    assert header.split()[:4] == ["NAME", "READY", "LATEST", "VERSIONS"]
    assert row.split()[:5] == ["hello", "True", "2", "$LATEST,1,2", "1/1"]
    session = make_session(kube, output=Format.JSON)
    assert run(session, "status", "hello") == 0
    assert json.loads(out(session))["replicas"] == {"desired": 1, "ready": 1}


# --- alias -------------------------------------------------------------------------------


def test_alias_set_list_delete():
    kube = FakeKube()
    kube.put(FUNCTION, NS, function(versions=("$LATEST", "1", "2")))
    session = make_session(kube)
    assert run(session, "alias", "hello", "prod", "--version", "1", "--weight", "2=0.25") == 0
    assert out(session) == "alias hello:prod -> version 1 (0.25 to version 2)\n"
    assert kube.objects[("Alias", NS, "hello-prod")]["spec"]["routing"]["weight"] == 0.25
    session = make_session(kube, output=Format.JSON)
    assert run(session, "alias", "list", "hello") == 0
    assert [row["alias"] for row in json.loads(out(session))] == ["prod"]
    assert run(make_session(kube), "alias", "delete", "hello", "prod") == 0
    assert not kube.list_objects(ALIAS, NS)
    with pytest.raises(NotFound):
        run(make_session(kube), "alias", "delete", "hello", "prod")


def test_alias_to_an_unpublished_version_exits_3():
    kube = FakeKube()
    kube.put(FUNCTION, NS, function(versions=("$LATEST", "1")))
    with pytest.raises(NotFound, match=r"version 5 .* not published \(published: 1\)"):
        run(make_session(kube), "alias", "hello", "prod", "--version", "5")


# --- route -------------------------------------------------------------------------------


def test_route_create_prints_the_url_and_reuses_the_object():
    kube = FakeKube()
    kube.services[("kubelambda-system", "kubelambda-gateway")] = {
        "spec": {"ports": [{"name": "http", "port": 8080}]}
    }
    session = make_session(kube)
    assert run(session, "route", "create", "pets", "GET /pets/{id}", "--function", "pets") == 0
    assert out(session) == (
        f"http://kubelambda-gateway.kubelambda-system.svc:8080/apis/{NS}/pets/pets/{{id}}\n"
    )
    run(make_session(kube), "route", "create", "pets", "GET /pets/{id}", "--function", "other")
    assert len(kube.objects) == 1
    assert run(make_session(kube), "route", "delete", "pets", "GET /pets/{id}") == 0
    assert not kube.objects


# --- dlq ---------------------------------------------------------------------------------


def invoker(kube, pages):
    kube.secrets[("kubelambda-system", "kubelambda-invoker", "adminToken")] = "admin"

    def answer(method, path):
        if path.startswith("/dlq?"):
            return reply(200, json.dumps(pages.pop(0)).encode())
        if path == "/dlq/9":
            return reply(404, b'{"message": "no such dead letter"}')
        if path.startswith("/dlq/purge"):
            return reply(200, b'{"purged": 3}')
        return reply(200, b'{"redriven": [1]}')

    kube.http["kubelambda-invoker"] = FakeHttp(answer)
    return kube.http["kubelambda-invoker"]


def letter(sequence):
    return {
        "sequence": sequence,
        "namespace": NS,
        "function": "hello",
        "condition": "RetriesExhausted",
    }


def test_dlq_list_follows_pages():
    kube = FakeKube()
    http = invoker(
        kube, [{"deadLetters": [letter(1)], "next": 1}, {"deadLetters": [letter(2)], "next": None}]
    )
    session = make_session(kube, output=Format.JSON)
    assert run(session, "dlq", "list", "--function", "hello") == 0
    assert [x["sequence"] for x in json.loads(out(session))] == [1, 2]
    assert "namespace=team&function=hello&after=1" in http.calls[1].path
    assert http.calls[0].headers["Authorization"] == "Bearer admin"


def test_dlq_show_missing_exits_3_and_purge_needs_a_scope():
    kube = FakeKube()
    http = invoker(kube, [])
    with pytest.raises(NotFound):
        run(make_session(kube), "dlq", "show", "9")
    with pytest.raises(UsageError):
        run(make_session(kube), "dlq", "purge")
    session = make_session(kube)
    assert run(session, "dlq", "purge", "--all", "-A") == 0
    assert http.calls[-1].path == "/dlq/purge?all=true"
    assert out(session) == "purged 3 dead letter(s)\n"


# --- main: errors become one line and an exit code ---------------------------------------


def test_main_prints_one_line_and_returns_the_exit_code(monkeypatch, capsys):
    def failing_session(args):
        raise CliError("cannot reach the Kubernetes API server at https://x: refused")

    monkeypatch.setattr(cli_main, "session_for", failing_session)
    assert cli_main.run(["status"]) == 1
    assert capsys.readouterr().err == (
        "kubelambda: error: cannot reach the Kubernetes API server at https://x: refused\n"
    )
    monkeypatch.setattr(cli_main, "session_for", lambda args: make_session(FakeKube()))
    assert cli_main.run(["status", "nope"]) == 3
