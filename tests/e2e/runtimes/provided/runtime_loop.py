"""A minimal custom runtime: the Lambda Runtime API loop with urllib, as a user would write it."""

import json
import os
import urllib.request

API = f"http://{os.environ['AWS_LAMBDA_RUNTIME_API']}/2018-06-01/runtime"


def main():
    while True:
        with urllib.request.urlopen(f"{API}/invocation/next") as reply:
            request_id = reply.headers["Lambda-Runtime-Aws-Request-Id"]
            deadline_ms = reply.headers["Lambda-Runtime-Deadline-Ms"]
            event = json.loads(reply.read())
        result = {
            "runtime": "provided",
            "handler": os.environ.get("_HANDLER"),
            "shell": os.environ.get("BOOTSTRAP_SHELL", ""),
            "request_id": request_id,
            "deadline_ms": deadline_ms,
            "shout": str(event.get("say", "")).upper(),
        }
        print(f"custom runtime handled {request_id}", flush=True)
        post = urllib.request.Request(
            f"{API}/invocation/{request_id}/response",
            data=json.dumps(result).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        urllib.request.urlopen(post).close()


if __name__ == "__main__":
    main()
