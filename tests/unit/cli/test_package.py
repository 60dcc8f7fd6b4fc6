"""Deterministic packages: the same files give the same bytes, whenever and wherever zipped."""

from __future__ import annotations

import hashlib
import io
import os
import zipfile

import pytest

from kubelambda.cli.errors import UsageError
from kubelambda.cli.package import load_package, zip_directory


@pytest.fixture
def source(tmp_path):
    root = tmp_path / "src"
    (root / "lib").mkdir(parents=True)
    (root / "app.py").write_text("def handler(e, c): return 1\n")
    (root / "lib" / "util.py").write_text("X = 1\n")
    (root / "bootstrap").write_text("#!/bin/sh\n")
    (root / "bootstrap").chmod(0o755)
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"junk")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref")
    return root


def test_same_files_same_bytes_whatever_the_timestamps(source):
    first = zip_directory(source)
    for path in source.rglob("*"):
        os.utime(path, (1_000_000_000, 1_000_000_000))
    assert zip_directory(source) == first


def test_entries_sorted_modes_normalised_caches_excluded(source):
    archive = zipfile.ZipFile(io.BytesIO(zip_directory(source)))
    assert archive.namelist() == ["app.py", "bootstrap", "lib/util.py"]
    modes = {info.filename: (info.external_attr >> 16) & 0o777 for info in archive.infolist()}
    assert modes == {"app.py": 0o644, "bootstrap": 0o755, "lib/util.py": 0o644}
    assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_a_changed_file_changes_the_digest(source):
    before = load_package(source).sha256
    (source / "app.py").write_text("def handler(e, c): return 2\n")
    assert load_package(source).sha256 != before


def test_a_zip_file_is_taken_as_it_is(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("app.py", "x")
    path = tmp_path / "fn.zip"
    path.write_bytes(buffer.getvalue())
    package = load_package(path)
    assert package.data == buffer.getvalue()
    assert package.sha256 == hashlib.sha256(buffer.getvalue()).hexdigest()


@pytest.mark.parametrize("make", ["missing", "not-a-zip", "empty-dir"])
def test_unusable_sources_are_usage_errors(tmp_path, make):
    path = tmp_path / make
    if make == "not-a-zip":
        path.write_text("hello")
    elif make == "empty-dir":
        path.mkdir()
    with pytest.raises(UsageError):
        load_package(path)
