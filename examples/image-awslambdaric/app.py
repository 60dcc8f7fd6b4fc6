# The handler of the image function: it reports the event and what awslambdaric's context
# says, so a caller can see the Lambda Runtime API at work (tests/e2e/test_code_delivery.py
# and tests/e2e/test_examples.py check these fields).
import os


def handler(event, context):
    return {
        "echo": event,
        "function_name": context.function_name,
        "function_version": context.function_version,
        "memory_limit_in_mb": context.memory_limit_in_mb,
        "remaining_ms": context.get_remaining_time_in_millis(),
        "request_id": context.aws_request_id,
        "runtime_api": os.environ.get("AWS_LAMBDA_RUNTIME_API"),
    }
