"""Per-blob read tokens: what lets a function pod fetch its own package and nothing else."""

from __future__ import annotations

import hashlib
import hmac
import re

SHA256_RE = re.compile(r"[0-9a-f]{64}")


def read_token(signing_key: str, sha256: str) -> str:
    """The token that grants reading blob ``sha256`` (and no other)."""
    message = f"read:{sha256}".encode()
    return hmac.new(signing_key.encode(), message, hashlib.sha256).hexdigest()


def allows_read(signing_key: str, sha256: str, token: str) -> bool:
    # As bytes: compare_digest refuses strings with non-ASCII characters, which callers send.
    expected = read_token(signing_key, sha256).encode()
    return hmac.compare_digest(expected, token.encode("utf-8", "surrogateescape"))
