"""The generated CRDs make a real API server enforce the API's rules.

Each tests/e2e/manifests/invalid/*.yaml breaks one rule and names the expected error on its first
line (``# expect: <substring>``); the API server must refuse it with that text. Every manifest in
valid/ must be accepted. All applies are ``--dry-run=server``: nothing is stored. The same files
are checked against the pydantic models in tests/unit/api/test_manifests.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import REPO_ROOT
from tests.e2e.kube import KubectlError, kubectl

pytestmark = pytest.mark.e2e

CRDS = REPO_ROOT / "crds"
MANIFESTS = Path(__file__).resolve().parent / "manifests"
INVALID = sorted((MANIFESTS / "invalid").glob("*.yaml"))
VALID = sorted((MANIFESTS / "valid").glob("*.yaml"))
PLURALS = ("functions", "layers", "aliases", "apiroutes")


def expectation(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name}: first line must be '# expect: ...'"
    return first.removeprefix("# expect: ")


@pytest.fixture(scope="module")
def crds_established(platform: None) -> None:
    # The chart installs the CRDs (tests/unit/chart checks they are the ones in crds/).
    kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(CRDS))


def dry_run_apply(path: Path) -> str:
    return kubectl("apply", "--dry-run=server", "--namespace=default", "-f", str(path))


@pytest.mark.usefixtures("crds_established")
def test_kinds_are_served_with_short_names() -> None:
    listing = kubectl("api-resources", "--api-group=kubelambda.io", "--no-headers")
    for plural in PLURALS:
        assert plural in listing
    for short_name in ("fn", "lyr", "fnalias", "fnroute"):
        assert f" {short_name} " in listing


@pytest.mark.usefixtures("crds_established")
@pytest.mark.parametrize("path", INVALID, ids=lambda path: path.stem)
def test_invalid_manifest_is_rejected(path: Path) -> None:
    with pytest.raises(KubectlError) as rejected:
        dry_run_apply(path)
    assert expectation(path) in str(rejected.value)


@pytest.mark.usefixtures("crds_established")
@pytest.mark.parametrize("path", VALID, ids=lambda path: path.stem)
def test_valid_manifest_is_accepted(path: Path) -> None:
    assert "(server dry run)" in dry_run_apply(path)
