"""Tell the autoscaler that this instance can serve, the moment its runtimes are initialised.

The gateways learn of a new pod from its EndpointSlice, which lists it only after the kubelet
has posted the pod's IP: up to a second or two after the agent is ready (the kubelet's pod
status and readiness probe run on one-second cycles). A request waiting on a scale from zero
would wait for that too; the announcement lets the autoscaler hand the address to the waiting
gateways at once. Best effort: if it fails, the EndpointSlice still brings the pod in.
"""

from __future__ import annotations

import asyncio
import json
import sys
from urllib.parse import urlsplit

from kubelambda.agent.config import AgentConfig, Announcement

ATTEMPTS = 5
RETRY_S = 0.2
TIMEOUT_S = 2.0


async def announce(config: AgentConfig, announcement: Announcement) -> None:
    body = json.dumps(
        {
            "namespace": announcement.namespace,
            "function": config.function_name,
            "version": config.version,
            "address": f"{announcement.pod_ip}:{config.invoke_port}",
            "token": announcement.token,
        }
    ).encode()
    url = urlsplit(announcement.url)
    host, port = url.hostname or "", url.port or 80
    head = (
        f"POST /v1/started HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    problem = ""
    for attempt in range(ATTEMPTS):
        try:
            async with asyncio.timeout(TIMEOUT_S):
                reader, writer = await asyncio.open_connection(host, port)
                try:
                    writer.write(head + body)
                    status_line = await reader.readline()
                finally:
                    writer.close()
            if status_line.split(b" ")[1:2] in ([b"202"], [b"204"]):
                return
            problem = status_line.decode("latin-1").strip()
        except (OSError, TimeoutError) as exc:
            problem = repr(exc)
        await asyncio.sleep(RETRY_S * 2**attempt)
    print(f"kubelambda-agent: could not announce readiness: {problem}", file=sys.stderr)
