"""The ``Function`` kind: a Lambda function, its configuration and its published versions."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal, Self

from pydantic import AfterValidator, ConfigDict, Field, field_validator, model_validator

from kubelambda.api.base import (
    AGE_COLUMN,
    CONDITIONS_LIST,
    DNS_SUBDOMAIN_PATTERN,
    FUNCTION_REF_PATTERN,
    READY_COLUMN,
    ApiModel,
    Condition,
    Description,
    KindInfo,
    ObjectMeta,
    ObjectName,
    PrinterColumn,
    Runtime,
    VersionName,
    object_name_rule,
    require_object_name,
)
from kubelambda.api.cel import CelRule, cel_rules, cel_string_list, count_set, require
from kubelambda.api.code import SHA256_PATTERN, CodeSource, HttpUrl
from kubelambda.api.schedule import (
    MAX_SCHEDULES,
    SCHEDULES_LIST,
    Schedule,
    check_unique_names,
)

MAX_LAYERS = 5
MAX_ENV_BYTES = 4096
MAX_ENV_VARIABLES = 1024
MAX_SECRET_ENV = 64

ENV_NAME_PATTERN = r"^[a-zA-Z]([a-zA-Z0-9_])+$"
# Names the agent sets itself (Lambda's reserved list). _HANDLER and _X_AMZN_TRACE_ID are reserved
# too but already fail ENV_NAME_PATTERN. Unlike Lambda, AWS_ACCESS_KEY_ID & co. are allowed: there
# is no execution role here, so credentials for real AWS services have to come from the user.
RESERVED_ENV_NAMES = (
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_EXECUTION_ENV",
    "LAMBDA_TASK_ROOT",
    "LAMBDA_RUNTIME_DIR",
)
RESERVED_ENV_PREFIX = "AWS_LAMBDA_"
# Lambda lets functions set this one to wrap the runtime's startup.
UNRESERVED_ENV_NAME = "AWS_LAMBDA_EXEC_WRAPPER"
_RESERVED_TEXT = (
    f"{', '.join(RESERVED_ENV_NAMES)} and {RESERVED_ENV_PREFIX}* (but {UNRESERVED_ENV_NAME})"
)

NATS_SUBJECT_PATTERN = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$"


def is_reserved_env_name(name: str) -> bool:
    """True for environment variable names the platform sets and users may not."""
    return name in RESERVED_ENV_NAMES or (
        name.startswith(RESERVED_ENV_PREFIX) and name != UNRESERVED_ENV_NAME
    )


def _cel_is_reserved(name: str) -> str:
    """CEL twin of :func:`is_reserved_env_name` for the expression ``name``."""
    return (
        f"({name} in {cel_string_list(RESERVED_ENV_NAMES)}"
        f" || ({name}.startsWith('{RESERVED_ENV_PREFIX}') && {name} != '{UNRESERVED_ENV_NAME}'))"
    )


ENV_NAMES = CelRule(
    rule=f"self.all(k, k.matches('{ENV_NAME_PATTERN}'))",
    message=(
        "environment.variables names must start with a letter followed by at least one letter,"
        " digit or '_'"
    ),
)
ENV_RESERVED = CelRule(
    rule=f"self.all(k, !{_cel_is_reserved('k')})",
    message=f"environment.variables must not set reserved names: {_RESERVED_TEXT}",
)
ENV_SIZE = CelRule(
    rule=f"self.map(k, size(bytes(k)) + size(bytes(self[k]))).sum() <= {MAX_ENV_BYTES}",
    message=f"environment.variables names and values must total at most {MAX_ENV_BYTES} bytes",
)
SECRET_ENV_RESERVED = CelRule(
    rule=f"!{_cel_is_reserved('self')}",
    message=f"environment.fromSecrets name must not be a reserved name: {_RESERVED_TEXT}",
)
SECRET_ENV_UNIQUE = CelRule(
    rule=(
        "!has(self.variables) || !has(self.fromSecrets)"
        " || self.fromSecrets.all(s, !(s.name in self.variables))"
    ),
    message="environment.fromSecrets names must not repeat environment.variables names",
)
LAYERS_UNIQUE = CelRule(
    rule="self.all(l, self.exists_one(m, m.name == l.name))",
    message="layers must not list the same layer twice",
)
MIN_WITHIN_MAX = CelRule(
    rule="!has(self.maxInstances) || self.minInstances <= self.maxInstances",
    message="scaling.minInstances must not exceed scaling.maxInstances",
)
# concurrency and scaling need no has(): their defaults are applied before validation.
MIN_WITHIN_RESERVED = CelRule(
    rule=(
        "!has(self.concurrency.reserved) || self.scaling.minInstances <= self.concurrency.reserved"
    ),
    message="scaling.minInstances must not exceed concurrency.reserved",
)
ONE_DESTINATION = CelRule(
    rule=count_set("function", "subject", "url") + " == 1",
    message="a destination sets exactly one of function, subject or url",
)
RUNTIME_XOR_IMAGE = CelRule(
    rule="has(self.runtime) != has(self.code.image)",
    message="runtime is required with inline or zip code and must be omitted with code.image",
)
NO_LAYERS_WITH_IMAGE = CelRule(
    rule="!has(self.code.image) || !has(self.layers) || size(self.layers) == 0",
    message=(
        "container image functions cannot use layers (as on Lambda): put the files in the image"
    ),
)
HANDLER_REQUIRED = CelRule(
    rule="has(self.handler) || !has(self.runtime) || self.runtime == 'provided'",
    message="handler is required for runtimes python3.11 and nodejs18",
)
FUNCTION_NAME = object_name_rule("Function")


def _not_reserved(name: str) -> str:
    require(not is_reserved_env_name(name), SECRET_ENV_RESERVED)
    return name


EnvName = Annotated[str, Field(min_length=2, max_length=MAX_ENV_BYTES, pattern=ENV_NAME_PATTERN)]
EnvValue = Annotated[str, Field(max_length=MAX_ENV_BYTES)]


class SecretKeySelector(ApiModel):
    """A key of a Secret in the Function's namespace."""

    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)
    """Secret name."""
    key: str = Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")
    """Key within the Secret's data."""


class SecretEnvVar(ApiModel):
    """An environment variable whose value is read from a Secret when the pod starts."""

    name: Annotated[
        EnvName,
        Field(json_schema_extra=cel_rules(SECRET_ENV_RESERVED)),
        AfterValidator(_not_reserved),
    ]
    """Environment variable name."""
    secret_key_ref: SecretKeySelector
    """Where the value comes from."""


class Environment(ApiModel):
    """Environment variables; the names and values in variables total at most 4 KiB, like Lambda."""

    model_config = ConfigDict(json_schema_extra=cel_rules(SECRET_ENV_UNIQUE))

    variables: dict[str, EnvValue] | None = Field(
        default=None,
        max_length=MAX_ENV_VARIABLES,
        json_schema_extra=cel_rules(ENV_NAMES, ENV_RESERVED, ENV_SIZE),
    )
    """Plain name -> value pairs."""
    from_secrets: tuple[SecretEnvVar, ...] = Field(
        default=(),
        max_length=MAX_SECRET_ENV,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    """Variables read from Secrets (not counted in the 4 KiB, which is checked at admission)."""

    @field_validator("variables")
    @classmethod
    def _check_variables(cls, variables: dict[str, str] | None) -> dict[str, str] | None:
        if variables is not None:
            require(all(re.search(ENV_NAME_PATTERN, name) for name in variables), ENV_NAMES)
            require(not any(is_reserved_env_name(name) for name in variables), ENV_RESERVED)
            size = sum(
                len(name.encode()) + len(value.encode()) for name, value in variables.items()
            )
            require(size <= MAX_ENV_BYTES, ENV_SIZE)
        return variables

    @field_validator("from_secrets")
    @classmethod
    def _check_unique_secrets(cls, secrets: tuple[SecretEnvVar, ...]) -> tuple[SecretEnvVar, ...]:
        # The API server enforces this through x-kubernetes-list-type: map.
        names = [secret.name for secret in secrets]
        if len(set(names)) != len(names):
            raise ValueError("environment.fromSecrets names must be unique")
        return secrets

    @model_validator(mode="after")
    def _check_no_overlap(self) -> Self:
        variables = self.variables or {}
        require(
            not any(secret.name in variables for secret in self.from_secrets), SECRET_ENV_UNIQUE
        )
        return self


class LayerRef(ApiModel):
    """A published version of a Layer in the Function's namespace."""

    name: ObjectName
    """Layer name."""
    version: int = Field(ge=1)
    """Published layer version number."""


class Concurrency(ApiModel):
    """Concurrency limits."""

    reserved: int | None = Field(default=None, ge=0)
    """Cap on concurrent invocations, reserved for this function; 0 throttles every call."""
    per_instance: int = Field(default=1, ge=1, le=1000)
    """Invocations one instance serves at once (Lambda: 1)."""


class Scaling(ApiModel):
    """How many instances run, and how quickly idle ones go away."""

    model_config = ConfigDict(json_schema_extra=cel_rules(MIN_WITHIN_MAX))

    min_instances: int = Field(default=0, ge=0)
    """Instances kept warm even without traffic (like provisioned concurrency)."""
    max_instances: int | None = Field(default=None, ge=1)
    """Upper bound on instances; unbounded when unset."""
    idle_seconds: int = Field(default=60, ge=0, le=86400)
    """Scale-down window: instances above what demand needed during the last idleSeconds are
    removed; after idleSeconds without any invocation only the last instance stays."""
    linger_seconds: int = Field(default=0, ge=0, le=3600)
    """How long the last instance lingers after the idle period before the function scales
    to minInstances (zero by default)."""

    @model_validator(mode="after")
    def _check_bounds(self) -> Self:
        maximum = self.max_instances
        require(maximum is None or self.min_instances <= maximum, MIN_WITHIN_MAX)
        return self


class Destination(ApiModel):
    """Where an async invocation record goes: exactly one of function, subject or url."""

    model_config = ConfigDict(json_schema_extra=cel_rules(ONE_DESTINATION))

    function: str | None = Field(default=None, max_length=181, pattern=FUNCTION_REF_PATTERN)
    """Function to invoke asynchronously, as name or name:qualifier."""
    subject: str | None = Field(default=None, max_length=255, pattern=NATS_SUBJECT_PATTERN)
    """NATS subject to publish to (no wildcards)."""
    url: HttpUrl | None = None
    """http(s) URL to POST the record to."""

    @model_validator(mode="after")
    def _check_one(self) -> Self:
        targets = (self.function, self.subject, self.url)
        require(sum(target is not None for target in targets) == 1, ONE_DESTINATION)
        return self


class AsyncConfig(ApiModel):
    """Asynchronous (Event) invocation: retries, maximum event age and destinations."""

    maximum_retry_attempts: int = Field(default=2, ge=0, le=2)
    """Retries after a function error."""
    maximum_event_age_seconds: int = Field(default=21600, ge=60, le=21600)
    """Events older than this are sent to onFailure / the dead-letter queue unprocessed."""
    on_success: Destination | None = None
    """Receives a record of each successful invocation."""
    on_failure: Destination | None = None
    """Receives a record of each failed or expired event."""


class FunctionSpec(ApiModel):
    """Desired state of a Function: code, runtime and configuration of $LATEST."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            RUNTIME_XOR_IMAGE, NO_LAYERS_WITH_IMAGE, HANDLER_REQUIRED, MIN_WITHIN_RESERVED
        )
    )

    runtime: Runtime | None = None
    """Language runtime; required unless code.image (which brings its own) is set."""
    handler: str | None = Field(default=None, max_length=128, pattern=r"^[^\s]+$")
    """Entry point, e.g. app.handler; required for python3.11 and nodejs18."""
    code: CodeSource
    """The function's code."""
    layers: tuple[LayerRef, ...] = Field(
        default=(), max_length=MAX_LAYERS, json_schema_extra=cel_rules(LAYERS_UNIQUE)
    )
    """Layers extracted into /opt in order; later layers win."""
    memory_mb: int = Field(default=128, ge=128, le=10240, alias="memoryMB")
    """Memory limit in MiB; CPU is allotted in proportion."""
    timeout_seconds: int = Field(default=3, ge=1, le=900)
    """Invocation timeout."""
    ephemeral_storage_mb: int = Field(default=512, ge=512, le=10240, alias="ephemeralStorageMB")
    """Size of /tmp in MiB."""
    environment: Environment | None = None
    """Environment variables."""
    concurrency: Concurrency = Concurrency()
    """Concurrency limits."""
    scaling: Scaling = Scaling()
    """Instance counts and idle timeouts."""
    async_config: AsyncConfig = Field(default=AsyncConfig(), alias="async")
    """Asynchronous invocation settings."""
    schedules: Annotated[
        tuple[Schedule, ...],
        Field(max_length=MAX_SCHEDULES, json_schema_extra=SCHEDULES_LIST),
        AfterValidator(check_unique_names),
    ] = ()
    """Scheduled triggers (rate or cron, UTC), each queueing an Event invocation when due."""
    publish: bool = False
    """Publish a new immutable numbered version on every change of code or configuration."""
    description: Description | None = None
    """Free text."""

    @model_validator(mode="after")
    def _check_cross_fields(self) -> Self:
        require((self.runtime is not None) != (self.code.image is not None), RUNTIME_XOR_IMAGE)
        require(self.code.image is None or not self.layers, NO_LAYERS_WITH_IMAGE)
        require(
            self.handler is not None or self.runtime in (None, Runtime.PROVIDED), HANDLER_REQUIRED
        )
        reserved = self.concurrency.reserved
        require(reserved is None or self.scaling.min_instances <= reserved, MIN_WITHIN_RESERVED)
        return self

    @field_validator("layers")
    @classmethod
    def _check_unique_layers(cls, layers: tuple[LayerRef, ...]) -> tuple[LayerRef, ...]:
        require(len({layer.name for layer in layers}) == len(layers), LAYERS_UNIQUE)
        return layers


class FunctionVersion(ApiModel):
    """One version of the function: $LATEST or an immutable published snapshot."""

    version: VersionName
    """$LATEST, "1", "2", ..."""
    code_sha256: str | None = Field(default=None, pattern=SHA256_PATTERN)
    """SHA-256 of the code package (unset for image functions)."""
    revision: str | None = Field(default=None, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)
    """Name of the ControllerRevision holding the snapshot."""
    created: datetime | None = None
    """When the version was published."""


class Replicas(ApiModel):
    """Instance counts, summed over the function's versions."""

    desired: int = Field(default=0, ge=0)
    """Instances the operator asked for."""
    ready: int = Field(default=0, ge=0)
    """Instances ready to serve."""


class FunctionStatus(ApiModel):
    """Observed state of a Function, written by the operator."""

    observed_generation: int | None = Field(default=None, ge=0)
    """metadata.generation the status reflects."""
    conditions: tuple[Condition, ...] = Field(default=(), json_schema_extra=CONDITIONS_LIST)
    """Ready and friends, one per type."""
    latest_version: int = Field(default=0, ge=0)
    """Latest published version number; 0 when none is published."""
    versions: tuple[FunctionVersion, ...] = Field(
        default=(),
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["version"],
        },
    )
    """$LATEST and every published version."""
    replicas: Replicas | None = None
    """Instance counts."""
    url: str | None = Field(default=None, max_length=2048)
    """Invoke URL through the gateway."""
    last_scale_reason: str | None = Field(default=None, max_length=1024)
    """Why the operator last changed the instance count."""
    code_size: int | None = Field(default=None, ge=0)
    """Size of the code package in bytes."""


class Function(ApiModel):
    """A Lambda-compatible function. Its name is also its Lambda function name."""

    api_version: Literal["kubelambda.io/v1alpha1"] = "kubelambda.io/v1alpha1"
    kind: Literal["Function"] = "Function"
    metadata: ObjectMeta
    spec: FunctionSpec
    status: FunctionStatus | None = None

    @model_validator(mode="after")
    def _check_name(self) -> Self:
        require_object_name(self.metadata.name, FUNCTION_NAME)
        return self


FUNCTION_KIND = KindInfo(
    kind="Function",
    plural="functions",
    short_names=("fn",),
    resource=Function,
    spec=FunctionSpec,
    status=FunctionStatus,
    root_rules=(FUNCTION_NAME,),
    columns=(
        READY_COLUMN,
        PrinterColumn("Version", "integer", ".status.latestVersion"),
        PrinterColumn("Replicas", "integer", ".status.replicas.ready"),
        PrinterColumn("Runtime", "string", ".spec.runtime"),
        PrinterColumn("URL", "string", ".status.url", priority=1),
        AGE_COLUMN,
    ),
)
