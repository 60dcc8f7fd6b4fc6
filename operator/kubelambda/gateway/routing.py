"""The routing table: Functions, Aliases, ready pod addresses and HTTP API routes, in memory.

Pure: the watches feed it events (``apply``) or whole lists after a (re-)list (``replace``);
``resolve`` turns what an Invoke call names into a ``Target`` or a ``RouteError`` with the
status, code and message Lambda would answer. Objects are read as plain dicts (the API's
camelCase JSON), leniently: a field the gateway does not understand never stops routing of the
others. Every version key the endpoints of which change is reported to ``on_endpoints_changed``
so that requests waiting for a pod can be woken.
"""

from __future__ import annotations

import functools
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kubelambda.gateway.apiroutes import API_ROUTE, ApiRoutes
from kubelambda.resources.names import FUNCTION_LABEL, LATEST, VERSION_LABEL, version_from_slug

FUNCTION = "Function"
ALIAS = "Alias"
ENDPOINT_SLICE = "EndpointSlice"
KINDS = (FUNCTION, ALIAS, ENDPOINT_SLICE, API_ROUTE)

ACCOUNT_ID = "000000000000"  # the agent's ARNs use the same placeholder account
# An announced pod no EndpointSlice lists after this long is presumed gone (it died early).
ANNOUNCED_TTL_S = 10.0
DEFAULT_TIMEOUT_S = 3
MAX_TIMEOUT_S = 900  # Lambda's (and the CRD's) upper bound on timeoutSeconds
INVOKE_PORT_NAME = "invoke"  # port name on every function Service (resources/function.py)
INVOKE_PORT = 8080

Address = tuple[str, int]
FunctionKey = tuple[str, str]  # namespace, function
VersionKey = tuple[str, str, str]  # namespace, function, version ("$LATEST" | "7")

# Lambda's FunctionName pattern for Invoke: name, name:qualifier, partial or full ARN.
_FUNCTION_REF = re.compile(
    r"(?:arn:aws[a-zA-Z-]*:lambda:[a-z]{2}(?:-gov)?-[a-z]+-\d:)?"
    r"(?:\d{12}:)?(?:function:)?"
    r"([a-zA-Z0-9_.-]+)(?::(\$LATEST|[a-zA-Z0-9_-]+))?"
)
_QUALIFIER = re.compile(r"\$LATEST|[a-zA-Z0-9_-]{1,128}")
MAX_FUNCTION_REF = 170


@dataclass(frozen=True, slots=True)
class FunctionConfig:
    timeout_s: int
    reserved: int | None
    per_instance: int
    published: frozenset[str]  # version numbers as strings
    version_timeouts: Mapping[str, int]  # published versions whose timeout status reports


@dataclass(frozen=True, slots=True)
class AliasConfig:
    function: str
    name: str
    version: str
    additional_version: str | None
    weight: float


@dataclass(frozen=True, slots=True)
class Target:
    """Where one invocation goes."""

    namespace: str
    function: str
    version: str  # executed version: "$LATEST" or a number
    qualifier: str | None  # as the caller gave it (in the name, the ARN or the query)
    invoked_arn: str  # the ARN as the caller qualified it (the function's context sees it)
    config: FunctionConfig

    @property
    def key(self) -> VersionKey:
        return (self.namespace, self.function, self.version)

    @property
    def function_key(self) -> FunctionKey:
        return (self.namespace, self.function)

    @property
    def timeout_s(self) -> int | None:
        """The version's timeout; None for a published version whose timeout is unknown."""
        if self.version == LATEST:
            return self.config.timeout_s
        return self.config.version_timeouts.get(self.version)


@dataclass(frozen=True, slots=True)
class RouteError:
    status: int
    code: str  # x-amzn-ErrorType
    message: str


def _int(value: Any, default: int | None) -> int | None:
    try:
        return int(value) if value is not None else default
    except (TypeError, ValueError):
        return default


def function_config(obj: Mapping[str, Any]) -> FunctionConfig:
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    concurrency = spec.get("concurrency") or {}
    published: set[str] = set()
    timeouts: dict[str, int] = {}
    for entry in status.get("versions") or ():
        version = str(entry.get("version", ""))
        if version.isdigit():
            published.add(version)
            timeout = _int(entry.get("timeoutSeconds"), None)
            if timeout is not None:
                timeouts[version] = timeout
    return FunctionConfig(
        timeout_s=_int(spec.get("timeoutSeconds"), DEFAULT_TIMEOUT_S) or DEFAULT_TIMEOUT_S,
        reserved=_int(concurrency.get("reserved"), None),
        per_instance=max(1, _int(concurrency.get("perInstance"), 1) or 1),
        published=frozenset(published),
        version_timeouts=timeouts,
    )


def alias_config(obj: Mapping[str, Any]) -> AliasConfig | None:
    spec = obj.get("spec") or {}
    function, name, version = spec.get("function"), spec.get("name"), spec.get("version")
    if not (function and name and version):
        return None
    routing = spec.get("routing") or {}
    additional = routing.get("additionalVersion")
    try:
        weight = float(routing.get("weight") or 0.0)
    except (TypeError, ValueError):
        weight = 0.0
    return AliasConfig(
        str(function), str(name), str(version), str(additional) if additional else None, weight
    )


@dataclass(frozen=True)
class SliceEndpoints:
    """What one EndpointSlice says about a version's pods."""

    key: VersionKey
    ready: tuple[Address, ...]
    starting: tuple[Address, ...]
    """Not ready yet (by the kubelet's probe) and not terminating."""
    terminating: tuple[Address, ...]


def slice_endpoints(obj: Mapping[str, Any]) -> SliceEndpoints | None:
    """The version an EndpointSlice serves and its pods' addresses, or None if not ours."""
    metadata = obj.get("metadata") or {}
    labels = metadata.get("labels") or {}
    function = labels.get(FUNCTION_LABEL)
    version = version_from_slug(labels.get(VERSION_LABEL) or "")
    if not function or version is None or obj.get("addressType") == "FQDN":
        return None
    port = INVOKE_PORT
    for entry in obj.get("ports") or ():
        if entry.get("name") == INVOKE_PORT_NAME and entry.get("port"):
            port = int(entry["port"])
    ready: list[Address] = []
    starting: list[Address] = []
    terminating: list[Address] = []
    for endpoint in obj.get("endpoints") or ():
        conditions = endpoint.get("conditions") or {}
        # An unset ready condition means ready (EndpointSlice API).
        if conditions.get("terminating") is True:
            into = terminating
        elif conditions.get("ready") is False:
            into = starting
        else:
            into = ready
        into.extend((str(address), port) for address in endpoint.get("addresses") or ())
    key = (str(metadata.get("namespace")), str(function), version)
    return SliceEndpoints(key, tuple(ready), tuple(starting), tuple(terminating))


@functools.lru_cache(maxsize=4096)  # callers repeat the same few names: skip the regex
def _parse_function_ref(function_ref: str) -> tuple[str, str | None] | None:
    """(name, qualifier or None) of a FunctionName, or None if it is malformed."""
    match = _FUNCTION_REF.fullmatch(function_ref)
    if match is None or len(function_ref) > MAX_FUNCTION_REF:
        return None
    return match.group(1), match.group(2)


def _not_found(arn: str) -> RouteError:
    return RouteError(404, "ResourceNotFoundException", f"Function not found: {arn}")


class RoutingTable:
    def __init__(self, region: str = "us-east-1") -> None:
        self._arn_prefix = f"arn:aws:lambda:{region}:{ACCOUNT_ID}:function:"
        self._functions: dict[FunctionKey, FunctionConfig] = {}
        self._namespaces: Counter[str] = Counter()
        """Functions per namespace."""
        # Alias objects by (namespace, object name); the index by (namespace, function, alias
        # name) is what requests use. Two objects claiming one alias name: the last one wins.
        self._alias_objects: dict[tuple[str, str], AliasConfig] = {}
        self._aliases: dict[VersionKey, AliasConfig] = {}
        self._slices: dict[tuple[str, str], SliceEndpoints] = {}
        # Ready pods, plus new pods that announced themselves ready (through the autoscaler)
        # before their EndpointSlice lists them as such.
        self._endpoints: dict[VersionKey, tuple[Address, ...]] = {}
        self._announced: dict[VersionKey, dict[Address, float]] = {}
        self.api_routes = ApiRoutes()
        self.on_endpoints_changed: Callable[[VersionKey], None] = lambda key: None

    # --- feeding ---------------------------------------------------------------------------

    def apply(self, kind: str, event: Mapping[str, Any]) -> None:
        """One watch event: ``{"type": "ADDED"|"MODIFIED"|"DELETED", "object": {...}}``."""
        obj = event.get("object") or {}
        deleted = event.get("type") == "DELETED"
        if kind == FUNCTION:
            self._apply_function(obj, deleted)
        elif kind == ALIAS:
            self._apply_alias(obj, deleted)
        elif kind == ENDPOINT_SLICE:
            self._apply_slice(obj, deleted)
        elif kind == API_ROUTE:
            self.api_routes.apply(obj, deleted)
        else:
            raise ValueError(f"unknown kind {kind}")

    def replace(self, kind: str, objects: Iterable[Mapping[str, Any]]) -> None:
        """Everything of ``kind`` after a (re-)list: objects not listed are gone."""
        if kind == API_ROUTE:
            self.api_routes.replace(objects)
            return
        if kind == FUNCTION:
            self._functions.clear()
            self._namespaces.clear()
        elif kind == ALIAS:
            self._alias_objects.clear()
            self._aliases.clear()
        elif kind == ENDPOINT_SLICE:
            before = set(self._endpoints)
            self._slices.clear()
            self._endpoints.clear()
            for key in before:
                self.on_endpoints_changed(key)
        for obj in objects:
            self.apply(kind, {"type": "ADDED", "object": obj})

    @staticmethod
    def _object_key(obj: Mapping[str, Any]) -> tuple[str, str]:
        metadata = obj.get("metadata") or {}
        return str(metadata.get("namespace")), str(metadata.get("name"))

    def _apply_function(self, obj: Mapping[str, Any], deleted: bool) -> None:
        key = self._object_key(obj)
        namespace = key[0]
        if deleted:
            if self._functions.pop(key, None) is not None:
                self._namespaces[namespace] -= 1
                if not self._namespaces[namespace]:
                    del self._namespaces[namespace]
        else:
            if key not in self._functions:
                self._namespaces[namespace] += 1
            self._functions[key] = function_config(obj)

    def has_functions(self, namespace: str) -> bool:
        """Whether ``namespace`` holds any Function (a call elsewhere can only get a 404)."""
        return namespace in self._namespaces

    def _apply_alias(self, obj: Mapping[str, Any], deleted: bool) -> None:
        object_key = self._object_key(obj)
        namespace = object_key[0]
        old = self._alias_objects.pop(object_key, None)
        if old is not None:
            self._aliases.pop((namespace, old.function, old.name), None)
        new = None if deleted else alias_config(obj)
        if new is not None:
            self._alias_objects[object_key] = new
            self._aliases[(namespace, new.function, new.name)] = new
        if old is not None and (
            new is None or (old.function, old.name) != (new.function, new.name)
        ):
            # Another object may still claim the name this one gave up.
            for (ns, _), other in self._alias_objects.items():
                if ns == namespace and (other.function, other.name) == (old.function, old.name):
                    self._aliases[(namespace, old.function, old.name)] = other

    def _apply_slice(self, obj: Mapping[str, Any], deleted: bool) -> None:
        slice_key = self._object_key(obj)
        old = self._slices.pop(slice_key, None)
        parsed = None if deleted else slice_endpoints(obj)
        if parsed is not None:
            self._slices[slice_key] = parsed
        if old is not None:
            # A pod a slice listed and no longer lists is gone, even if it was only ever
            # "starting" there (deleted before the kubelet found it ready): never route to it.
            listed = (
                set() if parsed is None else {*parsed.ready, *parsed.starting, *parsed.terminating}
            )
            announced = self._announced.get(old.key)
            if announced:
                for address in {*old.ready, *old.starting, *old.terminating} - listed:
                    announced.pop(address, None)
        for key in {entry.key for entry in (old, parsed) if entry is not None}:
            self._refresh_endpoints(key)

    def _refresh_endpoints(self, key: VersionKey) -> None:
        slices = [entry for entry in self._slices.values() if entry.key == key]
        ready = [address for entry in slices for address in entry.ready]
        announced = self._announced.get(key)
        if announced:
            listed = {a for entry in slices for a in (*entry.ready, *entry.terminating)}
            starting = {a for entry in slices for a in entry.starting}
            deadline = time.monotonic() - ANNOUNCED_TTL_S
            # Until its slice says ready (or terminating), or for a while if none lists it.
            for address, when in list(announced.items()):
                if address in listed or (address not in starting and when < deadline):
                    del announced[address]
            if not announced:
                del self._announced[key]
            ready.extend(a for a in announced if a not in ready)
        if ready:
            self._endpoints[key] = tuple(ready)
        else:
            self._endpoints.pop(key, None)
        self.on_endpoints_changed(key)

    def announce(self, key: VersionKey, address: Address) -> None:
        """A new pod of ``key`` said it serves: route to it before its slice says ready."""
        if address in self._endpoints.get(key, ()):
            return
        self._announced.setdefault(key, {})[address] = time.monotonic()
        self._refresh_endpoints(key)

    def unannounce(self, key: VersionKey, address: Address) -> None:
        """A request could not be delivered to ``address``: drop it if only announced."""
        announced = self._announced.get(key)
        if announced and announced.pop(address, None) is not None:
            self._refresh_endpoints(key)

    # --- reading ---------------------------------------------------------------------------

    def endpoints(self, key: VersionKey) -> tuple[Address, ...]:
        return self._endpoints.get(key, ())

    def function_arn(self, function: str, qualifier: str | None = None) -> str:
        arn = self._arn_prefix + function
        return f"{arn}:{qualifier}" if qualifier else arn

    def resolve(
        self,
        namespace: str,
        function_ref: str,
        qualifier: str | None = None,
        rand: Callable[[], float] = random.random,
    ) -> Target | RouteError:
        """What ``FunctionName`` (and the ``Qualifier`` query parameter) name, in ``namespace``."""
        parsed = _parse_function_ref(function_ref)
        if parsed is None:
            return RouteError(
                400,
                "ValidationException",
                f"1 validation error detected: Value '{function_ref}' at 'functionName' failed"
                " to satisfy constraint: Member must satisfy regular expression pattern",
            )
        name, derived = parsed
        if qualifier is not None and _QUALIFIER.fullmatch(qualifier) is None:
            return RouteError(
                400,
                "ValidationException",
                f"1 validation error detected: Value '{qualifier}' at 'qualifier' failed to"
                " satisfy constraint: Member must satisfy regular expression pattern",
            )
        if derived is not None and qualifier is not None and derived != qualifier:
            return RouteError(
                400,
                "InvalidParameterValueException",
                "The derived qualifier from the function name does not match the specified"
                " qualifier.",
            )
        qualifier = derived if derived is not None else qualifier
        config = self._functions.get((namespace, name))
        arn = self.function_arn(name, qualifier)
        if config is None:
            return _not_found(arn)
        if qualifier is None or qualifier == LATEST:
            version = LATEST
        elif qualifier.isdigit():
            if qualifier not in config.published:
                return _not_found(arn)
            version = qualifier
        else:
            alias = self._aliases.get((namespace, name, qualifier))
            if alias is None:
                return _not_found(arn)
            version = alias.version
            if alias.additional_version is not None and rand() < alias.weight:
                version = alias.additional_version
            if version != LATEST and version not in config.published:
                return _not_found(arn)
        return Target(namespace, name, version, qualifier, arn, config)
