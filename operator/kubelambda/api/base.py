"""Shared building blocks: the model base class, names, conditions and kind metadata."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from kubelambda.api.cel import CelRule, JsonDict, require

GROUP = "kubelambda.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
VERSION_PATTERN = r"^(\$LATEST|[1-9][0-9]*)$"
# A function as "name" or "name:qualifier" (a version number, $LATEST or an alias name).
FUNCTION_REF_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(:(\$LATEST|[A-Za-z0-9_-]{1,128}))?$"
# Derived objects are named "<name>-v<version>" and must still fit a 63-character DNS label.
MAX_OBJECT_NAME = 52


class ApiModel(BaseModel):
    """Base of every kubelambda model: camelCase on the wire, snake_case in Python, immutable.

    Unknown fields are errors, mirroring the API server's strict field validation, so the
    operator and ``kubectl apply`` agree on what a valid object is.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
    )


ObjectName = Annotated[
    str, Field(min_length=1, max_length=MAX_OBJECT_NAME, pattern=DNS_LABEL_PATTERN)
]
"""Name of a Function or Layer: a DNS label short enough to derive child names from."""

Description = Annotated[str, Field(max_length=256)]

VersionName = Annotated[str, Field(max_length=16, pattern=VERSION_PATTERN)]
"""``$LATEST`` or a published version number as a string."""


def object_name_rule(kind: str) -> CelRule:
    """Root-schema rule on ``metadata.name`` (CRDs cannot constrain it any other way)."""
    return CelRule(
        rule=(
            f"size(self.metadata.name) <= {MAX_OBJECT_NAME}"
            f" && self.metadata.name.matches('{DNS_LABEL_PATTERN}')"
        ),
        message=(
            f"metadata.name of a {kind} must be a DNS label (lowercase letters, digits and '-')"
            f" of at most {MAX_OBJECT_NAME} characters"
        ),
    )


def require_object_name(name: str, rule: CelRule) -> None:
    """The Python half of :func:`object_name_rule`."""
    require(len(name) <= MAX_OBJECT_NAME and re.search(DNS_LABEL_PATTERN, name) is not None, rule)


class ObjectMeta(BaseModel):
    """The part of ``metadata`` the models look at; everything else passes through untouched."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str
    namespace: str | None = None


class Runtime(StrEnum):
    """Language runtime. The images are Debian bookworm with Python 3.11 / Node.js 18;
    provided runs an executable bootstrap from the code or a layer."""

    PYTHON311 = "python3.11"
    NODEJS18 = "nodejs18"
    PROVIDED = "provided"


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(ApiModel):
    """One status condition, shaped like metav1.Condition."""

    type: str = Field(max_length=316, pattern=r"^[A-Za-z]([A-Za-z0-9_.-]*[A-Za-z0-9])?$")
    """Condition type, e.g. Ready."""
    status: ConditionStatus
    """True, False or Unknown."""
    reason: str = Field(
        min_length=1, max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
    )
    """Machine-readable CamelCase reason for the last transition."""
    message: str = Field(default="", max_length=32768)
    """Human-readable details."""
    observed_generation: int | None = Field(default=None, ge=0)
    """metadata.generation the condition was computed from."""
    last_transition_time: datetime
    """When status last changed."""


CONDITIONS_LIST: JsonDict = {
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
}
"""``json_schema_extra`` for a conditions list: one entry per type, merged by type under SSA."""


@dataclass(frozen=True)
class PrinterColumn:
    """One ``additionalPrinterColumns`` entry of ``kubectl get``."""

    name: str
    type: str
    json_path: str
    priority: int = 0


READY_COLUMN = PrinterColumn("Ready", "string", '.status.conditions[?(@.type=="Ready")].status')
AGE_COLUMN = PrinterColumn("Age", "date", ".metadata.creationTimestamp")


@dataclass(frozen=True)
class KindInfo:
    """Everything the CRD generator needs to know about one kind."""

    kind: str
    plural: str
    short_names: tuple[str, ...]
    resource: type[ApiModel]
    spec: type[ApiModel]
    status: type[ApiModel]
    columns: tuple[PrinterColumn, ...]
    root_rules: tuple[CelRule, ...] = ()
