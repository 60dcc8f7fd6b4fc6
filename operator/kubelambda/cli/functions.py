"""``deploy``, ``publish`` and ``status``: Functions as a whole."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from kubelambda.cli.errors import CliError, NotFound, UsageError
from kubelambda.cli.http import ProgressBar, Upload
from kubelambda.cli.kube import FUNCTION
from kubelambda.cli.manifests import (
    FunctionOptions,
    function_manifest,
    parse_assignments,
    parse_layer,
)
from kubelambda.cli.output import Column, Format, render
from kubelambda.cli.package import Package, load_package
from kubelambda.cli.session import Session

UPLOAD_TIMEOUT_S = 600.0
# The operator reports a spec it cannot use with this reason; waiting longer cannot help.
INVALID_SPEC = "InvalidSpec"

FUNCTION_COLUMNS = (
    Column("Name", "name"),
    Column("Ready", "ready"),
    Column("Latest", "latestVersion"),
    Column("Versions", "versions"),
    Column("Replicas", "replicas", lambda r: f"{r['ready']}/{r['desired']}"),
    Column("Last scale reason", "lastScaleReason"),
    Column("URL", "url"),
)


def condition(body: Mapping[str, Any], type_: str) -> dict[str, Any]:
    conditions = (body.get("status") or {}).get("conditions") or []
    return next((dict(c) for c in conditions if c.get("type") == type_), {})


def function_row(body: Mapping[str, Any]) -> dict[str, Any]:
    status = body.get("status") or {}
    ready = condition(body, "Ready")
    replicas = status.get("replicas") or {}
    return {
        "name": body["metadata"]["name"],
        "namespace": body["metadata"].get("namespace"),
        "ready": ready.get("status", "Unknown"),
        "reason": ready.get("reason"),
        "message": ready.get("message"),
        "latestVersion": status.get("latestVersion", 0),
        "versions": [v["version"] for v in status.get("versions", [])],
        "replicas": {"desired": replicas.get("desired", 0), "ready": replicas.get("ready", 0)},
        "lastScaleReason": status.get("lastScaleReason"),
        "url": status.get("url"),
    }


def reconciled(body: Mapping[str, Any], generation: int) -> bool:
    return int((body.get("status") or {}).get("observedGeneration") or 0) >= generation


def invalid_spec(body: Mapping[str, Any], generation: int) -> str | None:
    """The operator's complaint when it rejected this generation's spec."""
    configured = condition(body, "Configured")
    if (
        reconciled(body, generation)
        and configured.get("status") == "False"
        and configured.get("reason") == INVALID_SPEC
    ):
        return str(configured.get("message"))
    return None


def readiness(body: Mapping[str, Any], generation: int) -> tuple[bool, str]:
    """Whether generation ``generation`` of the function is Ready, and how things stand."""
    if not reconciled(body, generation):
        return False, f"the operator has not processed generation {generation} yet"
    ready = condition(body, "Ready")
    ready_generation = int(ready.get("observedGeneration") or generation)
    if ready.get("status") == "True" and ready_generation >= generation:
        return True, str(ready.get("message", ""))
    return False, f"{ready.get('reason', 'NotReady')}: {ready.get('message', '')}"


def read_manifest(path: str) -> dict[str, Any]:
    try:
        text = Path(path).read_text()
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise UsageError(f"{path} is not valid YAML: {error}") from None
    if len(documents) != 1 or not isinstance(documents[0], dict):
        raise UsageError(f"{path} must hold exactly one Function object")
    manifest: dict[str, Any] = documents[0]
    return manifest


def options_from(args: argparse.Namespace) -> FunctionOptions:
    return FunctionOptions(
        name=args.name,
        runtime=args.runtime,
        handler=args.handler,
        memory_mb=args.memory,
        timeout_seconds=args.function_timeout,
        ephemeral_storage_mb=args.ephemeral_storage,
        environment=parse_assignments(args.env, "--env") or None,
        layers=tuple(parse_layer(text) for text in args.layer) if args.layer else None,
        publish=args.publish,
        description=args.description,
    )


def upload(session: Session, package: Package) -> None:
    """Into the code store under its SHA-256, unless already there."""
    store = session.platform.store()
    authorization = {"Authorization": f"Bearer {session.platform.store_token()}"}
    path = f"/v1/blobs/{package.sha256}"
    if store.request("HEAD", path, headers=authorization).status == 200:
        session.note(f"package {package.sha256[:12]} is already in the code store")
        return
    progress = ProgressBar("uploading", package.size, session.stderr)
    response = store.request(
        "PUT",
        path,
        body=Upload(package.data, progress.update),
        headers={**authorization, "Content-Type": "application/zip"},
        timeout=UPLOAD_TIMEOUT_S,
    )
    progress.finish()
    if response.status not in (200, 201):
        raise CliError(
            f"the code store refused the package (HTTP {response.status}): {response.message()}"
        )
    session.note(f"uploaded {package.size} bytes, sha256 {package.sha256}")


def run_deploy(args: argparse.Namespace, session: Session) -> int:
    manifest = read_manifest(args.file) if args.file else None
    namespace = session.namespace
    if manifest is not None:
        manifest_namespace = (manifest.get("metadata") or {}).pop("namespace", None)
        if manifest_namespace and args.namespace and manifest_namespace != args.namespace:
            raise UsageError(
                f"the manifest's namespace {manifest_namespace} differs from -n {args.namespace}"
            )
        namespace = manifest_namespace or namespace
    package = load_package(Path(args.path))
    body = function_manifest(options_from(args), package.sha256, manifest)
    name = body["metadata"]["name"]
    upload(session, package)
    applied = session.kube.apply(FUNCTION, body, namespace)
    generation = int(applied["metadata"].get("generation") or 1)
    if args.no_wait:
        session.stdout.write(f"function {namespace}/{name} applied (generation {generation})\n")
        return 0

    def ready() -> tuple[dict[str, Any] | None, str]:
        current = session.kube.get(FUNCTION, name, namespace)
        if current is None:
            raise NotFound(f"function {namespace}/{name} disappeared")
        problem = invalid_spec(current, generation)
        if problem is not None:
            raise CliError(f"function {namespace}/{name} is invalid: {problem}")
        done, state = readiness(current, generation)
        return (current if done else None), state

    current = session.wait_for(ready, args.timeout, f"function {namespace}/{name} to be Ready")
    row = function_row(current)
    published = f", version {row['latestVersion']}" if row["latestVersion"] else ""
    session.stdout.write(f"function {namespace}/{name} is Ready{published}\n")
    return 0


def run_publish(args: argparse.Namespace, session: Session) -> int:
    """Publishing is the operator's: with spec.publish it freezes $LATEST as a new version
    whenever code or configuration differ from the latest one. A function without it gets it
    for one reconcile, then back, like Lambda's PublishVersion."""
    namespace, name = session.namespace, args.name
    body = session.kube.get(FUNCTION, name, namespace)
    if body is None:
        raise NotFound(f"function {namespace}/{name} not found")
    switched_on = not (body.get("spec") or {}).get("publish", False)
    if switched_on:
        body = session.kube.merge_patch(FUNCTION, name, namespace, {"spec": {"publish": True}})
    generation = int(body["metadata"].get("generation") or 1)
    try:

        def published() -> tuple[dict[str, Any] | None, str]:
            current = session.kube.get(FUNCTION, name, namespace)
            if current is None:
                raise NotFound(f"function {namespace}/{name} disappeared")
            problem = invalid_spec(current, generation)
            if problem is not None:
                raise CliError(f"function {namespace}/{name} is invalid: {problem}")
            if reconciled(current, generation):
                return current, "published"
            return None, f"the operator has not processed generation {generation} yet"

        current = session.wait_for(published, args.timeout, f"{namespace}/{name} to be published")
    finally:
        if switched_on:
            session.kube.merge_patch(FUNCTION, name, namespace, {"spec": {"publish": False}})
    session.stdout.write(f"{function_row(current)['latestVersion']}\n")
    return 0


def run_status(args: argparse.Namespace, session: Session) -> int:
    namespace = session.namespace
    if args.name:
        body = session.kube.get(FUNCTION, args.name, namespace)
        if body is None:
            raise NotFound(f"function {namespace}/{args.name} not found")
        bodies = [body]
    else:
        bodies = session.kube.list_objects(FUNCTION, namespace)
    rows = [function_row(body) for body in bodies]
    output = session.format()
    if not rows and output is Format.TABLE:
        session.note(f"no functions in namespace {namespace}")
        return 0
    data: Any = rows[0] if args.name and output is not Format.TABLE else rows
    session.stdout.write(render(data, output, FUNCTION_COLUMNS))
    return 0
