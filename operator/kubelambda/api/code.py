"""Where code comes from: shared by ``Function.spec.code`` and ``Layer.spec.content``."""

from __future__ import annotations

import re
from typing import Annotated, Self

from pydantic import ConfigDict, Field, field_validator, model_validator

from kubelambda.api.base import ApiModel
from kubelambda.api.cel import CelRule, cel_rules, count_set, require

SHA256_PATTERN = r"^[0-9a-f]{64}$"
HTTP_URL_PATTERN = r"^https?://[^\s]+$"

HttpUrl = Annotated[str, Field(max_length=2048, pattern=HTTP_URL_PATTERN)]
ImageRef = Annotated[str, Field(min_length=1, max_length=512, pattern=r"^[^\s]+$")]

MAX_INLINE_FILES = 64
MAX_INLINE_BYTES = 64 * 1024
MAX_INLINE_PATH = 255
INLINE_PATH_PATTERN = r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$"
# Bounding each file keeps the CEL size rule's estimated cost within the API server's budget.
InlineFile = Annotated[str, Field(max_length=MAX_INLINE_BYTES)]

INLINE_PATHS = CelRule(
    rule=(
        f"self.all(k, size(k) <= {MAX_INLINE_PATH} && k.matches('{INLINE_PATH_PATTERN}')"
        " && !('/' + k + '/').contains('/./') && !('/' + k + '/').contains('/../'))"
    ),
    message=(
        "inline file names must be relative paths of letters, digits, '.', '_', '-' and '/'"
        f" without '.' or '..' segments, at most {MAX_INLINE_PATH} characters"
    ),
)
INLINE_SIZE = CelRule(
    rule=f"self.map(k, size(bytes(self[k]))).sum() <= {MAX_INLINE_BYTES}",
    message=f"inline file contents must total at most {MAX_INLINE_BYTES} bytes",
)
ONE_SOURCE = CelRule(
    rule=count_set("inline", "zip", "image") + " == 1",
    message="exactly one of inline, zip or image must be set",
)


def _is_inline_path(path: str) -> bool:
    return (
        len(path) <= MAX_INLINE_PATH
        and re.search(INLINE_PATH_PATTERN, path) is not None
        and not {".", ".."} & set(path.split("/"))
    )


class ZipSource(ApiModel):
    """A zip archive, verified by its SHA-256 before use."""

    sha256: str = Field(pattern=SHA256_PATTERN)
    """Lowercase hex SHA-256 of the archive; also its key in the in-cluster code store."""
    url: HttpUrl | None = None
    """http(s) URL to download the archive from; without it the code store serves it by sha256."""


class CodeSource(ApiModel):
    """Exactly one of inline, zip or image."""

    model_config = ConfigDict(json_schema_extra=cel_rules(ONE_SOURCE))

    inline: dict[str, InlineFile] | None = Field(
        default=None,
        max_length=MAX_INLINE_FILES,
        json_schema_extra=cel_rules(INLINE_PATHS, INLINE_SIZE),
    )
    """Small sources as file path -> content (at most 64 KiB in total)."""
    zip: ZipSource | None = None
    """A zip archive from the code store or a URL."""
    image: ImageRef | None = None
    """A container image reference that carries the code."""

    @field_validator("inline")
    @classmethod
    def _check_inline(cls, files: dict[str, str] | None) -> dict[str, str] | None:
        if files is not None:
            require(all(_is_inline_path(path) for path in files), INLINE_PATHS)
            require(
                sum(len(text.encode()) for text in files.values()) <= MAX_INLINE_BYTES, INLINE_SIZE
            )
        return files

    @model_validator(mode="after")
    def _check_one_source(self) -> Self:
        require(sum(s is not None for s in (self.inline, self.zip, self.image)) == 1, ONE_SOURCE)
        return self
