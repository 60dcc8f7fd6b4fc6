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
