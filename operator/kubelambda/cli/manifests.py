"""Pure builders of the objects the CLI applies, and parsers of the flags that feed them.

Every object is validated with the API models before it is sent, so a mistake is reported
at once, naming the field, exactly as the API server would reject it.
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from kubelambda.api import API_VERSION, Alias, ApiRoute, Function
from kubelambda.cli.errors import UsageError

LATEST = "$LATEST"
MAX_LABEL = 63
# Fields the API server fills in; a manifest saved with `kubectl get -o yaml` carries them,
# and server-side apply refuses some of them.
SERVER_METADATA = ("uid", "resourceVersion", "generation", "creationTimestamp", "managedFields")


@dataclass(frozen=True)
class FunctionOptions:
    """Function settings given as flags; None leaves the manifest's value (or the default)."""

    name: str | None = None
    runtime: str | None = None
    handler: str | None = None
    memory_mb: int | None = None
    timeout_seconds: int | None = None
    ephemeral_storage_mb: int | None = None
    environment: Mapping[str, str] | None = None
    layers: tuple[tuple[str, int], ...] | None = None
    publish: bool | None = None
    description: str | None = None


def parse_assignments(items: Iterable[str], flag: str) -> dict[str, str]:
    """``["A=1", "B=x=y"]`` -> ``{"A": "1", "B": "x=y"}``."""
    result = {}
    for item in items:
        key, separator, value = item.partition("=")
        if not separator or not key:
            raise UsageError(f"{flag} takes KEY=VALUE, not {item!r}")
        result[key] = value
    return result


def parse_layer(text: str) -> tuple[str, int]:
    """``shared:2`` -> ``("shared", 2)``."""
    name, _, version = text.rpartition(":")
    if not name or not version.isdigit():
        raise UsageError(f"--layer takes NAME:VERSION, not {text!r}")
    return name, int(version)


def parse_weight(text: str) -> tuple[str, float]:
    """``3=0.1``: 10 % of the alias's invocations go to version 3."""
    version, separator, weight = text.partition("=")
    try:
        share = float(weight)
    except ValueError:
        share = -1.0
    if not separator or not version.isdigit() or not 0.0 <= share <= 1.0:
        raise UsageError(f"--weight takes VERSION=WEIGHT with WEIGHT in 0..1, not {text!r}")
    return version, share


def validation_message(error: ValidationError) -> str:
    """One line: ``spec.memoryMB: Input should be greater than or equal to 128; ...``."""
    problems = []
    for detail in error.errors():
        location = ".".join(str(part) for part in detail["loc"])
        message = str(detail["msg"]).removeprefix("Value error, ")
        problems.append(f"{location}: {message}" if location else message)
    return "; ".join(problems)


def validated(model: type[BaseModel], body: Mapping[str, Any]) -> None:
    try:
        model.model_validate(body)
    except ValidationError as error:
        kind = body.get("kind", model.__name__)
        raise UsageError(f"invalid {kind}: {validation_message(error)}") from None


def function_manifest(
    options: FunctionOptions, sha256: str, manifest: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A Function running zip ``sha256`` from the code store: ``manifest`` (if any) with the
    flags applied over it; validated."""
    body: dict[str, Any] = copy.deepcopy(dict(manifest)) if manifest else {}
    if body.get("kind", "Function") != "Function":
        raise UsageError(f"the manifest is a {body['kind']}, not a Function")
    body["apiVersion"] = API_VERSION
    body["kind"] = "Function"
    body.pop("status", None)
    metadata = body.setdefault("metadata", {})
    for field in SERVER_METADATA:
        metadata.pop(field, None)
    if options.name is not None:
        metadata["name"] = options.name
    if not metadata.get("name"):
        raise UsageError("the function needs a name: --name NAME, or metadata.name in -f FILE")
    spec = body.setdefault("spec", {})
    flags: dict[str, Any] = {
        "runtime": options.runtime,
        "handler": options.handler,
        "memoryMB": options.memory_mb,
        "timeoutSeconds": options.timeout_seconds,
        "ephemeralStorageMB": options.ephemeral_storage_mb,
        "publish": options.publish,
        "description": options.description,
    }
    spec.update({key: value for key, value in flags.items() if value is not None})
    if options.environment:
        environment = spec.setdefault("environment", {})
        environment["variables"] = {**environment.get("variables", {}), **options.environment}
    if options.layers is not None:
        spec["layers"] = [{"name": name, "version": version} for name, version in options.layers]
    spec["code"] = {"zip": {"sha256": sha256}}
    validated(Function, body)
    return body


def dns_label(text: str, unique_source: str) -> str:
    """A DNS label made of ``text``, with a digest of ``unique_source`` so that texts that
    only differ in characters a label cannot hold still give different names."""
    digest = hashlib.sha256(unique_source.encode()).hexdigest()[:8]
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return f"{slug[: MAX_LABEL - len(digest) - 1].rstrip('-')}-{digest}".lstrip("-")


def alias_object_name(function: str, alias: str) -> str:
    """Alias names allow upper case and ``_``, object names do not."""
    plain = f"{function}-{alias}"
    if plain == plain.lower() and "_" not in plain and len(plain) <= MAX_LABEL:
        return plain
    return dns_label(plain, plain)


def alias_manifest(
    function: str,
    alias: str,
    version: str,
    *,
    weight: tuple[str, float] | None = None,
    provisioned: int | None = None,
    description: str | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"function": function, "name": alias, "version": version}
    if weight is not None:
        spec["routing"] = {"additionalVersion": weight[0], "weight": weight[1]}
    if provisioned is not None:
        spec["provisionedConcurrency"] = provisioned
    if description is not None:
        spec["description"] = description
    body = {
        "apiVersion": API_VERSION,
        "kind": "Alias",
        "metadata": {"name": name or alias_object_name(function, alias)},
        "spec": spec,
    }
    validated(Alias, body)
    return body


def route_object_name(api: str, route_key: str) -> str:
    return dns_label(f"{api}-{route_key}", f"{api} {route_key}")


def route_manifest(
    api: str,
    route_key: str,
    *,
    function: str | None = None,
    qualifier: str | None = None,
    http_url: str | None = None,
    payload_format: str | None = None,
    timeout_millis: int | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    if (function is None) == (http_url is None):
        raise UsageError("a route targets exactly one of --function NAME or --http-url URL")
    target: dict[str, Any]
    if function is not None:
        target = {"function": {"name": function}}
        if qualifier is not None:
            target["function"]["qualifier"] = qualifier
    else:
        target = {"http": {"url": http_url}}
    spec: dict[str, Any] = {"api": api, "routeKey": route_key, "target": target}
    if payload_format is not None:
        spec["payloadFormatVersion"] = payload_format
    if timeout_millis is not None:
        spec["timeoutMillis"] = timeout_millis
    body = {
        "apiVersion": API_VERSION,
        "kind": "ApiRoute",
        "metadata": {"name": name or route_object_name(api, route_key)},
        "spec": spec,
    }
    validated(ApiRoute, body)
    return body


def route_path(route_key: str) -> str:
    """``GET /pets/{id}`` -> ``/pets/{id}``; ``$default`` (any path) -> ``/``."""
    _, _, path = route_key.partition(" ")
    return path or "/"
