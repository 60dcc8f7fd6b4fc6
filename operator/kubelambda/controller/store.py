"""The operator's view of the code store: where pods download a package, and whether it is there."""

from __future__ import annotations

import urllib.error
import urllib.request

from kubelambda.controller.config import OperatorConfig
from kubelambda.resources.code import ZipPackage
from kubelambda.store.tokens import read_token

CHECK_TIMEOUT_S = 5


class PackageUnavailable(Exception):
    """The package cannot be served (yet); ``reason`` is a condition reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def package(config: OperatorConfig, sha256: str, url: str | None, what: str) -> ZipPackage:
    """The zip package as a pod fetches it: from ``url``, else from the code store.

    A store package is checked here (HEAD) so a missing upload shows on the Function's status
    at once; a URL package is checked by the pod's unpack step, which downloads it anyway.
    """
    if url is not None:
        return ZipPackage(sha256, url, None, what)
    if not config.store_url:
        raise PackageUnavailable(
            "CodeStoreUnavailable",
            f"{what}: zip without url needs the code store, and this operator has none configured",
        )
    token = read_token(config.store_signing_key, sha256)
    blob_url = f"{config.store_url}/v1/blobs/{sha256}"
    request = urllib.request.Request(blob_url, method="HEAD")
    request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=CHECK_TIMEOUT_S):
            pass
    except urllib.error.HTTPError as failure:
        if failure.code == 404:
            raise PackageUnavailable(
                "CodeNotFound",
                f"{what}: no zip package with sha256 {sha256} in the code store; upload it"
                f" (PUT /v1/blobs/{sha256}) or give code.zip.url",
            ) from None
        raise PackageUnavailable(
            "CodeStoreUnavailable", f"{what}: the code store answered HTTP {failure.code}"
        ) from None
    except (urllib.error.URLError, OSError) as failure:
        raise PackageUnavailable(
            "CodeStoreUnavailable", f"{what}: the code store is unreachable: {failure}"
        ) from None
    return ZipPackage(sha256, blob_url, token, what)
