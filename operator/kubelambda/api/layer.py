"""The ``Layer`` kind: shared content extracted into /opt, published as immutable versions."""

from __future__ import annotations

from datetime import datetime
from typing import Literal, Self

from pydantic import Field, field_validator, model_validator

from kubelambda.api.base import (
    AGE_COLUMN,
    CONDITIONS_LIST,
    READY_COLUMN,
    ApiModel,
    Condition,
    Description,
    KindInfo,
    ObjectMeta,
    PrinterColumn,
    Runtime,
    object_name_rule,
    require_object_name,
)
from kubelambda.api.code import SHA256_PATTERN, CodeSource

LAYER_NAME = object_name_rule("Layer")


class LayerSpec(ApiModel):
    """Desired content of a Layer. Every change of content publishes a new numbered version."""

    content: CodeSource
    """The layer's files, extracted into /opt."""
    compatible_runtimes: tuple[Runtime, ...] = Field(
        default=(), max_length=len(Runtime), json_schema_extra={"x-kubernetes-list-type": "set"}
    )
    """Runtimes the layer works with; informational, any runtime may use it when empty."""
    description: Description | None = None
    """Free text."""

    @field_validator("compatible_runtimes")
    @classmethod
    def _check_unique(cls, runtimes: tuple[Runtime, ...]) -> tuple[Runtime, ...]:
        # The API server enforces this through x-kubernetes-list-type: set.
        if len(set(runtimes)) != len(runtimes):
            raise ValueError("compatibleRuntimes must not repeat a runtime")
        return runtimes


class LayerVersion(ApiModel):
    """One immutable published version of the layer."""

    version: int = Field(ge=1)
    """Version number, counting from 1."""
    code_sha256: str | None = Field(default=None, pattern=SHA256_PATTERN)
    """SHA-256 of the content package (unset for image content)."""
    created: datetime | None = None
    """When the version was published."""


class LayerStatus(ApiModel):
    """Observed state of a Layer, written by the operator."""

    observed_generation: int | None = Field(default=None, ge=0)
    """metadata.generation the status reflects."""
    conditions: tuple[Condition, ...] = Field(default=(), json_schema_extra=CONDITIONS_LIST)
    """Ready and friends, one per type."""
    latest_version: int = Field(default=0, ge=0)
    """Latest published version number; 0 when none is published."""
    versions: tuple[LayerVersion, ...] = Field(
        default=(),
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["version"],
        },
    )
    """Every published version still available."""


class Layer(ApiModel):
    """A Lambda-style layer that Functions in the same namespace reference by name and version."""

    api_version: Literal["kubelambda.io/v1alpha1"] = "kubelambda.io/v1alpha1"
    kind: Literal["Layer"] = "Layer"
    metadata: ObjectMeta
    spec: LayerSpec
    status: LayerStatus | None = None

    @model_validator(mode="after")
    def _check_name(self) -> Self:
        require_object_name(self.metadata.name, LAYER_NAME)
        return self


LAYER_KIND = KindInfo(
    kind="Layer",
    plural="layers",
    short_names=("lyr",),
    resource=Layer,
    spec=LayerSpec,
    status=LayerStatus,
    root_rules=(LAYER_NAME,),
    columns=(
        READY_COLUMN,
        PrinterColumn("Version", "integer", ".status.latestVersion"),
        PrinterColumn("Runtimes", "string", ".spec.compatibleRuntimes", priority=1),
        AGE_COLUMN,
    ),
)
