"""Agent configuration from the environment."""

from __future__ import annotations

import os

import pytest

from kubelambda.agent.config import AGENT_LIB_DIR, ConfigError, load_config, parse_command
from kubelambda.agent.procs import describe_exit

BASE = {"AWS_LAMBDA_FUNCTION_NAME": "fn", "KUBELAMBDA_RUNTIME": "python3.11"}


def test_defaults():
    config = load_config(BASE | {"PATH": "/usr/bin:/custom/bin"})
    assert config.version == "$LATEST"
    assert config.memory_mb == 128
    assert config.region == "us-east-1"
    assert config.timeout_s == 3.0
    assert config.concurrency == 1
    assert config.invoke_port == 8080
    assert config.runtime_api_port == 9001
    assert config.task_root == "/var/task"
    assert config.function_arn == "arn:aws:lambda:us-east-1:000000000000:function:fn"
    assert config.command == ("python3", "/opt/kubelambda/runtime/bootstrap.py")
    env = config.runtime_env
    assert env["PATH"] == "/var/lang/bin:/usr/local/bin:/usr/bin:/bin:/opt/bin:/custom/bin"
    assert env["NODE_PATH"].startswith("/opt/nodejs/node18/node_modules:/opt/nodejs/node_modules")
    assert env["PYTHONPATH"].startswith(
        "/var/task:/opt/python:/opt/python/lib/python3.11/site-packages"
    )
    assert env["LAMBDA_TASK_ROOT"] == "/var/task"
    assert env["LAMBDA_RUNTIME_DIR"] == "/opt/kubelambda/runtime"
    assert env["AWS_LAMBDA_LOG_GROUP_NAME"] == "/aws/lambda/fn"
    assert env["AWS_EXECUTION_ENV"] == "AWS_Lambda_python3.11"
    assert env["LANG"] == "en_US.UTF-8"
    assert not [k for k in env if k.startswith("KUBELAMBDA_")]


def test_runtime_commands(tmp_path):
    node = load_config(BASE | {"KUBELAMBDA_RUNTIME": "nodejs18", "KUBELAMBDA_RUNTIME_DIR": "/rt"})
    assert node.command == ("node", "/rt/bootstrap.js")
    assert node.runtime_env["AWS_EXECUTION_ENV"] == "AWS_Lambda_nodejs18.x"
    boot = tmp_path / "bootstrap"
    boot.write_text("#!/bin/sh\n")
    env = BASE | {"KUBELAMBDA_RUNTIME": "provided", "KUBELAMBDA_TASK_ROOT": str(tmp_path)}
    assert load_config(env).command == (str(tmp_path / "bootstrap"),)  # not executable yet
    boot.chmod(0o755)
    assert load_config(env).command == (str(boot),)
    assert "AWS_EXECUTION_ENV" not in load_config(env).runtime_env


def test_image_functions_without_a_command_look_for_a_bootstrap():
    config = load_config(BASE | {"KUBELAMBDA_RUNTIME": "image", "KUBELAMBDA_TASK_ROOT": "/nope"})
    assert config.command == ("/nope/bootstrap",)
    assert config.bootstrap_candidates == (
        "/nope/bootstrap",
        "/opt/bootstrap",
        "/var/runtime/bootstrap",
    )


def test_image_functions_keep_their_paths():
    config = load_config(
        BASE
        | {
            "KUBELAMBDA_RUNTIME": "image",
            "KUBELAMBDA_RUNTIME_COMMAND": '["/app/.venv/bin/python", "-m", "awslambdaric", "a.b"]',
            "PATH": "/app/.venv/bin:/usr/bin",
        }
    )
    assert config.command == ("/app/.venv/bin/python", "-m", "awslambdaric", "a.b")
    assert config.runtime_env["PATH"] == (
        "/app/.venv/bin:/usr/bin:/var/lang/bin:/usr/local/bin:/bin:/opt/bin"
    )


def test_parse_command():
    assert parse_command("python3 -m awslambdaric 'app.handler'") == (
        "python3",
        "-m",
        "awslambdaric",
        "app.handler",
    )
    assert parse_command('["a b", "c"]') == ("a b", "c")
    for bad in ("", "[1, 2]", "[oops", "[]"):
        with pytest.raises(ConfigError):
            parse_command(bad)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"AWS_LAMBDA_FUNCTION_NAME": ""}, "AWS_LAMBDA_FUNCTION_NAME is required"),
        ({"KUBELAMBDA_RUNTIME": ""}, "KUBELAMBDA_RUNTIME is required"),
        ({"KUBELAMBDA_RUNTIME": "cobol"}, "unsupported KUBELAMBDA_RUNTIME"),
        ({"KUBELAMBDA_CONCURRENCY": "0"}, "KUBELAMBDA_CONCURRENCY must be >= 1"),
        ({"AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "lots"}, "must be an integer"),
        ({"KUBELAMBDA_TIMEOUT_SECONDS": "-1"}, "must be positive"),
        ({"KUBELAMBDA_ENFORCE_MEMORY": "maybe"}, "KUBELAMBDA_ENFORCE_MEMORY must be 0 or 1"),
        (
            {"KUBELAMBDA_RUNTIME": "external", "KUBELAMBDA_CONCURRENCY": "2"},
            "concurrency must be 1",
        ),
    ],
)
def test_invalid_environment(extra, message):
    with pytest.raises(ConfigError, match=message):
        load_config(BASE | extra)


def test_overrides():
    config = load_config(
        BASE
        | {
            "AWS_REGION": "eu-west-1",
            "AWS_LAMBDA_FUNCTION_VERSION": "7",
            "KUBELAMBDA_FUNCTION_ARN": "arn:custom",
            "AWS_LAMBDA_INITIALIZATION_TYPE": "provisioned-concurrency",
            "KUBELAMBDA_TIMEOUT_SECONDS": "900",
            "FUNCTION_VAR": "x",
        }
    )
    assert config.function_arn == "arn:custom"
    assert config.timeout_s == 900
    env = config.runtime_env
    assert env["AWS_REGION"] == env["AWS_DEFAULT_REGION"] == "eu-west-1"
    assert env["AWS_LAMBDA_FUNCTION_VERSION"] == "7"
    assert env["AWS_LAMBDA_INITIALIZATION_TYPE"] == "provisioned-concurrency"
    assert env["FUNCTION_VAR"] == "x"


def test_describe_exit():
    assert describe_exit(0) == "exit status 0"
    assert describe_exit(2) == "exit status 2"
    assert describe_exit(-9) == "signal: killed"
    assert describe_exit(-11) == "signal: segmentation fault"
    assert describe_exit(-15) == "signal: terminated"
    assert os.EX_OK == 0


def test_external_mode_and_memory_cap_settings():
    config = load_config(BASE | {"KUBELAMBDA_RUNTIME": "external"})
    assert config.external
    assert config.command == ()
    assert config.concurrency == 1
    assert config.proc_root == "/proc"
    assert config.enforce_memory
    assert "AWS_EXECUTION_ENV" not in config.runtime_env
    assert not load_config(BASE).external
    config = load_config(
        BASE | {"KUBELAMBDA_ENFORCE_MEMORY": "0", "KUBELAMBDA_PROC_ROOT": "/fake/proc"}
    )
    assert not config.enforce_memory
    assert config.proc_root == "/fake/proc"


def test_agent_lib_dir_is_where_the_package_is():
    import kubelambda  # noqa: PLC0415

    assert os.path.join(AGENT_LIB_DIR, "kubelambda") == os.path.dirname(kubelambda.__file__)


@pytest.mark.parametrize("runtime", ["python3.11", "image", "nodejs18"])
def test_the_agent_lib_dir_does_not_leak_into_runtimes(runtime):
    # Runtime images set PYTHONPATH to the agent's lib dir so that the agent imports.
    env = load_config(BASE | {"KUBELAMBDA_RUNTIME": runtime, "PYTHONPATH": AGENT_LIB_DIR})
    entries = env.runtime_env["PYTHONPATH"].split(":")
    assert AGENT_LIB_DIR not in entries
    assert entries[0] == "/var/task"
    # The same directory spelled differently is still the agent's.
    spelled = AGENT_LIB_DIR + "/./:" + AGENT_LIB_DIR + "/"
    env = load_config(BASE | {"KUBELAMBDA_RUNTIME": runtime, "PYTHONPATH": spelled})
    assert env.runtime_env["PYTHONPATH"] == (
        "/var/task:/opt/python:/opt/python/lib/python3.11/site-packages"
    )


def test_a_pythonpath_from_the_function_passes_through():
    own = f"/my/libs:{AGENT_LIB_DIR}"  # set by the function's variables: its own business
    config = load_config(BASE | {"PYTHONPATH": own})
    assert config.runtime_env["PYTHONPATH"] == (
        f"/var/task:/opt/python:/opt/python/lib/python3.11/site-packages:{own}"
    )
    image = load_config(BASE | {"KUBELAMBDA_RUNTIME": "image", "PYTHONPATH": "/app"})
    assert image.runtime_env["PYTHONPATH"].startswith("/app:/var/task:")
