"""Code packages: a directory zipped deterministically, or an existing zip file.

The same files always give the same bytes (sorted entries, fixed timestamps, normalised
permissions), so the SHA-256 that names the package in the code store changes only when the
code does, and an unchanged redeploy neither uploads nor publishes anything.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

from kubelambda.cli.errors import UsageError

# Version control metadata and bytecode caches never belong in a function package, and the
# caches would make the digest change on every run.
EXCLUDED_NAMES = frozenset({".git", ".hg", ".svn", "__pycache__", ".DS_Store"})
# The earliest date a zip entry can carry: no trace of when or where the files were written.
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
EXECUTABLE_MODE = 0o755
REGULAR_MODE = 0o644
UNIX_REGULAR_FILE = 0o100000
UNIX_SYSTEM = 3


@dataclass(frozen=True)
class Package:
    data: bytes
    sha256: str

    @property
    def size(self) -> int:
        return len(self.data)


def package_files(root: Path) -> list[Path]:
    """Regular files under ``root`` (symlinks to files included), sorted, excluded names pruned."""
    files: list[Path] = []
    for directory, subdirectories, names in os.walk(root):
        subdirectories[:] = [name for name in subdirectories if name not in EXCLUDED_NAMES]
        files += [Path(directory, name) for name in names if name not in EXCLUDED_NAMES]
    return sorted(files, key=lambda path: path.relative_to(root).as_posix())


def zip_directory(root: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in package_files(root):
            try:
                data = path.read_bytes()
                executable = os.access(path, os.X_OK)
            except OSError as error:
                raise UsageError(f"cannot read {path}: {error.strerror}") from None
            info = zipfile.ZipInfo(path.relative_to(root).as_posix(), ZIP_EPOCH)
            info.create_system = UNIX_SYSTEM
            info.compress_type = zipfile.ZIP_DEFLATED
            mode = EXECUTABLE_MODE if executable else REGULAR_MODE
            info.external_attr = (UNIX_REGULAR_FILE | mode) << 16
            archive.writestr(info, data)
    return buffer.getvalue()


def load_package(source: Path) -> Package:
    """The zip of directory ``source``, or the zip file ``source`` as it is."""
    if source.is_dir():
        if not package_files(source):
            raise UsageError(f"{source} has no files to deploy")
        data = zip_directory(source)
    elif source.is_file():
        if not zipfile.is_zipfile(source):
            raise UsageError(f"{source} is neither a directory nor a zip archive")
        data = source.read_bytes()
    else:
        raise UsageError(f"{source}: no such file or directory")
    return Package(data, hashlib.sha256(data).hexdigest())
