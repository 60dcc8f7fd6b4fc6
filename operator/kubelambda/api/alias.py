"""The ``Alias`` kind: a named pointer to a function version, optionally splitting traffic."""

from __future__ import annotations

import re
from typing import Annotated, Literal, Self

from pydantic import AfterValidator, ConfigDict, Field, model_validator

from kubelambda.api.base import (
    AGE_COLUMN,
    CONDITIONS_LIST,
    READY_COLUMN,
    ApiModel,
    Condition,
    Description,
    KindInfo,
    ObjectMeta,
    ObjectName,
    PrinterColumn,
    VersionName,
)
from kubelambda.api.cel import CelRule, cel_rules, require

ALL_DIGITS_PATTERN = r"^[0-9]+$"

# Lambda's alias pattern has a lookahead, which RE2 lacks: "not all digits" is a separate rule.
NOT_A_VERSION = CelRule(
    rule=f"!self.matches('{ALL_DIGITS_PATTERN}')",
    message="name must not be all digits (that is a version number)",
)
ROUTING_NEEDS_PUBLISHED = CelRule(
    rule="!has(self.routing) || self.version != '$LATEST'",
    message="routing requires version to be a published version, not $LATEST",
)
ROUTING_DIFFERENT = CelRule(
    rule="!has(self.routing) || self.routing.additionalVersion != self.version",
    message="routing.additionalVersion must differ from version",
)
# provisionedConcurrency has a default, applied before validation: no has() needed.
PROVISIONED_NEEDS_PUBLISHED = CelRule(
    rule="self.provisionedConcurrency == 0 || self.version != '$LATEST'",
    message="provisionedConcurrency requires version to be a published version, not $LATEST",
)


def _not_a_version(name: str) -> str:
    require(re.search(ALL_DIGITS_PATTERN, name) is None, NOT_A_VERSION)
    return name


AliasName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=128,
        pattern=r"^[a-zA-Z0-9_-]+$",
        json_schema_extra=cel_rules(NOT_A_VERSION),
    ),
    AfterValidator(_not_a_version),
]


class AliasRouting(ApiModel):
    """Weighted traffic shifting to a second published version."""

    additional_version: str = Field(max_length=16, pattern=r"^[1-9][0-9]*$")
    """Second published version."""
    weight: float = Field(ge=0.0, le=1.0)
    """Share of invocations (0.0-1.0) routed to additionalVersion."""


class AliasSpec(ApiModel):
    """Desired state of an Alias."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            ROUTING_NEEDS_PUBLISHED, ROUTING_DIFFERENT, PROVISIONED_NEEDS_PUBLISHED
        )
    )

    function: ObjectName
    """Name of the Function in the same namespace."""
    name: AliasName
    """Alias name used as a qualifier (function:name); unique per function."""
    version: VersionName
    """Version the alias points to: $LATEST or a published version number."""
    routing: AliasRouting | None = None
    """Optional traffic split with a second version."""
    provisioned_concurrency: int = Field(default=0, ge=0, le=10000)
    """Concurrent invocations kept initialized (warm) for this alias, split between its
    versions by weight; counted against the function's reserved concurrency. Published
    versions only (as on Lambda)."""
    description: Description | None = None
    """Free text."""

    @model_validator(mode="after")
    def _check_routing(self) -> Self:
        if self.routing is not None:
            require(self.version != "$LATEST", ROUTING_NEEDS_PUBLISHED)
            require(self.routing.additional_version != self.version, ROUTING_DIFFERENT)
        require(
            self.provisioned_concurrency == 0 or self.version != "$LATEST",
            PROVISIONED_NEEDS_PUBLISHED,
        )
        return self


class AliasStatus(ApiModel):
    """Observed state of an Alias, written by the operator."""

    observed_generation: int | None = Field(default=None, ge=0)
    """metadata.generation the status reflects."""
    conditions: tuple[Condition, ...] = Field(default=(), json_schema_extra=CONDITIONS_LIST)
    """Ready (the function and versions exist) and friends, one per type."""


class Alias(ApiModel):
    """A Lambda alias: a stable name for a function version."""

    api_version: Literal["kubelambda.io/v1alpha1"] = "kubelambda.io/v1alpha1"
    kind: Literal["Alias"] = "Alias"
    metadata: ObjectMeta
    spec: AliasSpec
    status: AliasStatus | None = None


ALIAS_KIND = KindInfo(
    kind="Alias",
    plural="aliases",
    short_names=("fnalias",),
    resource=Alias,
    spec=AliasSpec,
    status=AliasStatus,
    columns=(
        PrinterColumn("Function", "string", ".spec.function"),
        PrinterColumn("Alias", "string", ".spec.name"),
        PrinterColumn("Version", "string", ".spec.version"),
        PrinterColumn("Additional", "string", ".spec.routing.additionalVersion", priority=1),
        PrinterColumn("Weight", "number", ".spec.routing.weight", priority=1),
        READY_COLUMN,
        AGE_COLUMN,
    ),
)
