"""``logs``: the logs of a function version's pods (START/END/REPORT lines and the code's)."""

from __future__ import annotations

import argparse
import queue
import re
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from kubelambda.cli.aliases import find_alias
from kubelambda.cli.errors import CliError, NotFound, UsageError
from kubelambda.cli.kube import FUNCTION
from kubelambda.cli.manifests import LATEST
from kubelambda.cli.session import Session

FUNCTION_LABEL = "kubelambda.io/function"
VERSION_LABEL = "kubelambda.io/version"
# How often --follow looks for pods that started since (scale-up, rollouts).
REDISCOVER_S = 2.0
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """``90``, ``90s``, ``5m``, ``2h``, ``1d``, ``1h30m`` -> seconds."""
    parts = re.fullmatch(r"((\d+)([smhd]))+|\d+", text)
    if parts is None:
        raise UsageError(f"--since takes a duration like 30s, 5m, 2h or 1d, not {text!r}")
    if text.isdigit():
        return int(text)
    return sum(int(n) * DURATION_UNITS[u] for n, u in re.findall(r"(\d+)([smhd])", text))


def version_slug(version: str) -> str:
    """As the operator labels pods: ``$LATEST`` -> ``latest``, ``3`` -> ``v3``."""
    return "latest" if version == LATEST else f"v{version}"


def qualifier_versions(session: Session, function: str, qualifier: str | None) -> list[str]:
    """The versions whose pods serve ``function:qualifier`` (an alias may name two)."""
    namespace = session.namespace
    if session.kube.get(FUNCTION, function, namespace) is None:
        raise NotFound(f"function {namespace}/{function} not found")
    if qualifier is None or qualifier == LATEST or qualifier.isdigit():
        return [qualifier or LATEST]
    alias = find_alias(session.kube, namespace, function, qualifier)
    if alias is None:
        raise NotFound(f"{function} has no version or alias {qualifier}")
    spec = alias["spec"]
    additional = (spec.get("routing") or {}).get("additionalVersion")
    return [str(spec["version"])] + ([str(additional)] if additional else [])


def pod_selector(function: str, versions: Iterable[str]) -> str:
    slugs = ",".join(version_slug(v) for v in versions)
    return f"{FUNCTION_LABEL}={function},{VERSION_LABEL} in ({slugs})"


def log_lines(chunks: Iterable[bytes]) -> Iterator[str]:
    """Whole lines out of arbitrary chunks (the last one even without a newline)."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for line in complete:
            yield line.decode(errors="replace")
    if pending:
        yield pending.decode(errors="replace")


def streams(pods: Iterable[dict[str, Any]]) -> list[tuple[str, str]]:
    """(pod, container) for every container of every pod that has started."""
    return [
        (pod["metadata"]["name"], container["name"])
        for pod in pods
        if pod.get("status", {}).get("phase") in ("Running", "Succeeded", "Failed")
        for container in pod["spec"]["containers"]
    ]


def stream_label(pod: str, container: str, containers_in_pod: int) -> str:
    return f"[{pod}/{container}] " if containers_in_pod > 1 else f"[{pod}] "


def run_logs(args: argparse.Namespace, session: Session) -> int:
    versions = qualifier_versions(session, args.name, args.qualifier)
    selector = pod_selector(args.name, versions)
    since = parse_duration(args.since) if args.since else None
    if args.follow:
        return follow(session, selector, since, args.tail)
    pods = session.kube.pods(session.namespace, selector)
    found = streams(pods)
    if not found:
        raise NotFound(f"no running pods of {args.name} ({', '.join(versions)})")
    per_pod = {pod: sum(1 for p, _ in found if p == pod) for pod, _ in found}
    for pod, container in found:
        label = stream_label(pod, container, per_pod[pod]) if len(found) > 1 else ""
        chunks = session.kube.pod_log(
            session.namespace,
            pod,
            container,
            follow=False,
            since_seconds=since,
            tail_lines=args.tail,
        )
        for line in log_lines(chunks):
            session.stdout.write(f"{label}{line}\n")
    return 0


def follow(session: Session, selector: str, since: int | None, tail: int | None) -> int:
    """Streams every pod's logs as they come, picking up new pods, until interrupted."""
    lines: queue.Queue[str] = queue.Queue()
    watched: set[tuple[str, str]] = set()
    failures: list[CliError] = []

    def pump(pod: str, container: str, label: str) -> None:
        try:
            chunks = session.kube.pod_log(
                session.namespace, pod, container, follow=True, since_seconds=since, tail_lines=tail
            )
            for line in log_lines(chunks):
                lines.put(f"{label}{line}")
        except CliError as error:
            failures.append(error)

    waiting_noted = False
    while True:
        pods = session.kube.pods(session.namespace, selector)
        started = streams(pods)
        per_pod = {pod: sum(1 for p, _ in started if p == pod) for pod, _ in started}
        for pod, container in started:
            if (pod, container) not in watched:
                watched.add((pod, container))
                label = stream_label(pod, container, per_pod[pod])
                threading.Thread(target=pump, args=(pod, container, label), daemon=True).start()
        if not watched and not waiting_noted:
            session.note("no running pods yet; waiting for some (Ctrl-C to stop)")
            waiting_noted = True
        deadline = session.monotonic() + REDISCOVER_S
        while (remaining := deadline - session.monotonic()) > 0:
            try:
                session.stdout.write(lines.get(timeout=remaining) + "\n")
                session.stdout.flush()
            except queue.Empty:
                break
        for failure in failures:
            session.note(f"warning: {failure}")
        failures.clear()
