"""How the operator words what it observed: timestamps and validation errors for status."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import ValidationError


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def validation_message(error: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
