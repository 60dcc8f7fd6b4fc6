"""A function written for AWS Lambda's Python runtime; the event's "action" picks a behaviour.

Shipped as inline code by tests/e2e/test_runtimes.py: nothing here imports kubelambda.
"""

import json
import logging
import os
import subprocess
import time

ENV_PREFIXES = ("AWS_", "LAMBDA_", "_HANDLER", "TZ", "KUBELAMBDA_", "PATH", "PYTHONPATH")
logger = logging.getLogger()
logger.setLevel(logging.INFO)


class OrderRejectedError(Exception):
    """A user-defined exception: its class name must become the errorType."""


def context_fields(event, context):
    return {
        "function_name": context.function_name,
        "function_version": context.function_version,
        "memory_limit_in_mb": context.memory_limit_in_mb,
        "remaining_ms": context.get_remaining_time_in_millis(),
        "aws_request_id": context.aws_request_id,
        "invoked_function_arn": context.invoked_function_arn,
        "log_group_name": context.log_group_name,
        "log_stream_name": context.log_stream_name,
        "event": event,
        "cwd": os.getcwd(),
        "env": {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES)},
    }


def greet(event, context):
    name = event.get("name", "world")
    return {
        "statusCode": 200,
        "headers": {"content-type": "application/json"},
        "body": json.dumps({"message": f"hello, {name}"}),
    }


def fail(event, context):
    raise OrderRejectedError(f"order {event.get('order')} rejected")


def sleep(event, context):
    time.sleep(event["seconds"])
    return "woke up"


def crash(event, context):
    os._exit(1)


def big(event, context):
    return "x" * event["bytes"]


def hog(event, context):
    blob = b"\x01" * (event["mb"] * 1024 * 1024)  # bytes() fills (touches) every page
    return len(blob)


def write_error(path):
    try:
        with open(path, "w") as f:
            f.write("should not be possible")
    except OSError as error:
        return {"errno": error.errno, "strerror": error.strerror}
    return None


def filesystem(event, context):
    chunk = b"\xab" * (1024 * 1024)
    with open("/tmp/ten-mb.bin", "wb") as f:
        for _ in range(10):
            f.write(chunk)
    size = os.path.getsize("/tmp/ten-mb.bin")
    os.remove("/tmp/ten-mb.bin")
    return {
        "tmp_bytes": size,
        "task_root": write_error("/var/task/new-file.txt"),
        "root": write_error("/new-file.txt"),
    }


def fill_tmp(event, context):
    """Write to /tmp until it is full or ``mb`` MiB are written."""
    chunk = b"\xcd" * (4 * 1024 * 1024)
    written = 0
    error = None
    try:
        with open("/tmp/fill.bin", "wb") as f:
            while written < event["mb"] * 1024 * 1024:
                f.write(chunk)
                written += len(chunk)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        error = {"errno": exc.errno, "strerror": exc.strerror}
    finally:
        if os.path.exists("/tmp/fill.bin"):
            os.remove("/tmp/fill.bin")
    return {"written_mb": written // (1024 * 1024), "error": error}


def layers(event, context):
    import greeting  # noqa: PLC0415 - from a layer, only on the layered function
    import which_layer  # noqa: PLC0415 - in both layers: the later one wins

    tool = subprocess.run(
        ["hello-tool", "from", "the", "function"], capture_output=True, text=True, check=False
    )
    with open("/opt/etc/which.txt") as f:
        which_file = f.read().strip()
    image_tool = subprocess.run(["image-tool", "ok"], capture_output=True, text=True, check=False)
    import image_layer  # noqa: PLC0415 - from the image layer

    return {
        "image_tool_stdout": image_tool.stdout,
        "image_module": image_layer.NAME,
        "greeting": greeting.greet("lambda"),
        "greeting_file": greeting.__file__,
        "which_module": which_layer.NAME,
        "which_file": which_file,
        "tool_stdout": tool.stdout,
        "tool_returncode": tool.returncode,
        "path": os.environ.get("PATH", ""),
    }


def chatty(event, context):
    print(f"print says {event['marker']}")
    logger.info("logger says %s", event["marker"])
    return {"marker": event["marker"]}


ACTIONS = {
    "context": context_fields,
    "greet": greet,
    "fail": fail,
    "sleep": sleep,
    "crash": crash,
    "big": big,
    "hog": hog,
    "filesystem": filesystem,
    "fill_tmp": fill_tmp,
    "layers": layers,
    "chatty": chatty,
}


def handler(event, context):
    return ACTIONS[event.get("action", "greet")](event, context)
