"""Put a function's code at /var/task and its layers at /opt: the init-container step of a
function pod, also run by a warm-pool pod's agent when it is specialised (``pool.py``).

Run as ``python3 -m kubelambda.agent.unpack`` with ``KUBELAMBDA_UNPACK`` holding a JSON plan
written by the operator::

    {"limitBytes": 262144000, "roots": ["/var/task", "/opt"],
     "steps": [{"target": "/opt", "zip": {"url": ..., "sha256": ..., "token": ...},
                "what": "layer tools version 2"},
               {"target": "/opt", "files": {"dir": "/kubelambda/src/1",
                                            "paths": {"f000": "bin/tool"}}, "what": ...},
               {"target": "/var/task", "inline": {"app.py": "def handler(e, c): ..."},
                "what": "code"}]}

A ``files`` step copies the keys of a mounted ConfigMap or downward-API volume to relative
paths; an ``inline`` step carries the files' text in the plan itself (relative path -> UTF-8
text), for a pool pod that has nothing mounted. Neither carries file modes: ``bin/*`` and
``bootstrap*`` become executable, everything else plain data.

Steps run in order, so a later layer's file replaces an earlier one's. Zip packages are
downloaded (at most 50 MB), checked against their SHA-256, and extracted without letting an
entry escape its target; the unzipped size of everything under ``roots`` (including what
earlier init containers put there, such as image layers) must stay within ``limitBytes``,
Lambda's 250 MB. Any failure exits 1 with a one-line reason in /dev/termination-log, which
the operator copies onto the Function's status.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import sys
import urllib.error
import urllib.request
import zipfile
from collections.abc import Mapping
from typing import Any

MAX_ZIP_BYTES = 50 * 1024 * 1024
MAX_UNZIPPED_BYTES = 250 * 1024 * 1024
TERMINATION_LOG = "/dev/termination-log"
CHUNK = 1 << 20
EXECUTABLE_PREFIXES = ("bin/", "bootstrap")


class UnpackError(Exception):
    """A reason the function cannot start, worded for the Function's status."""


def tree_size(root: str) -> int:
    total = 0
    for directory, _, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(directory, name)).st_size
            except OSError:
                continue
    return total


class Budget:
    """The unzipped bytes still allowed under Lambda's code + layers limit."""

    def __init__(self, limit: int, used: int) -> None:
        self.limit = limit
        self.used = used

    def take(self, size: int, what: str) -> None:
        self.used += size
        if self.used > self.limit:
            raise UnpackError(
                f"{what}: function code and layers unzip to more than {self.limit} bytes"
                f" ({self.used} so far), Lambda's limit"
            )


def download(url: str, token: str | None, sha256: str, what: str) -> bytes:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    digest = hashlib.sha256()
    buffer = io.BytesIO()
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            while chunk := response.read(CHUNK):
                if buffer.tell() + len(chunk) > MAX_ZIP_BYTES:
                    raise UnpackError(
                        f"{what}: the zip package is larger than {MAX_ZIP_BYTES} bytes, Lambda's"
                        " limit"
                    )
                digest.update(chunk)
                buffer.write(chunk)
    except urllib.error.HTTPError as failure:
        detail = failure.read(512).decode(errors="replace").strip()
        raise UnpackError(
            f"{what}: downloading {url} failed: HTTP {failure.code} {detail}".rstrip()
        ) from None
    except (urllib.error.URLError, OSError) as failure:
        reason = getattr(failure, "reason", failure)
        raise UnpackError(f"{what}: downloading {url} failed: {reason}") from None
    actual = digest.hexdigest()
    if actual != sha256:
        raise UnpackError(f"{what}: sha256 mismatch: expected {sha256}, downloaded {actual}")
    return buffer.getvalue()


def safe_path(target: str, name: str, what: str) -> str:
    """target/name, refusing absolute names, '..' and paths through a symlink."""
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if name.startswith("/") or ".." in parts or not parts:
        raise UnpackError(f"{what}: zip entry {name!r} would be written outside its directory")
    path = os.path.join(target, *parts)
    parent = os.path.realpath(os.path.dirname(path))
    root = os.path.realpath(target)
    if parent != root and not parent.startswith(root + os.sep):
        raise UnpackError(f"{what}: zip entry {name!r} would be written through a symlink")
    return path


def replace_with(path: str) -> None:
    """Make room for a later layer's entry at ``path`` (later layers win)."""
    if os.path.islink(path) or os.path.isfile(path):
        os.unlink(path)
    elif os.path.isdir(path):
        shutil.rmtree(path)


def extract_zip(data: bytes, target: str, budget: Budget, what: str) -> None:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise UnpackError(f"{what}: the package is not a zip archive") from None
    with archive:
        entries = archive.infolist()
        budget.take(sum(e.file_size for e in entries), what)
        for entry in entries:
            path = safe_path(target, entry.filename, what)
            mode = entry.external_attr >> 16
            if entry.is_dir():
                if not os.path.isdir(path):
                    replace_with(path)
                    os.makedirs(path, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(path), exist_ok=True)
            replace_with(path)
            if stat.S_ISLNK(mode):
                os.symlink(archive.read(entry).decode(), path)
                continue
            with archive.open(entry) as source, open(path, "xb") as out:
                shutil.copyfileobj(source, out, CHUNK)
            # Packages built on Windows carry no Unix mode: then the file is plain data.
            os.chmod(path, 0o755 if mode & 0o111 else 0o644)


def file_mode(relative: str) -> int:
    """Inline files carry no mode: executables are recognised by where they are."""
    return 0o755 if relative.startswith(EXECUTABLE_PREFIXES) else 0o644


def copy_files(source: Mapping[str, Any], target: str, budget: Budget, what: str) -> None:
    """Inline files from a mounted ConfigMap or downward-API volume (key -> relative path)."""
    directory = str(source["dir"])
    paths: Mapping[str, str] = source["paths"]
    budget.take(sum(os.path.getsize(os.path.join(directory, key)) for key in paths), what)
    for key, relative in sorted(paths.items(), key=lambda item: item[1]):
        path = safe_path(target, relative, what)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        replace_with(path)
        shutil.copyfile(os.path.join(directory, key), path)
        os.chmod(path, file_mode(relative))


def write_inline(files: Mapping[str, str], target: str, budget: Budget, what: str) -> None:
    """Files whose text is in the plan itself (relative path -> content)."""
    for relative, text in files.items():
        if not isinstance(text, str):
            raise UnpackError(f"{what}: inline file {relative!r} is not text")
    contents = {relative: text.encode() for relative, text in files.items()}
    budget.take(sum(len(data) for data in contents.values()), what)
    for relative, data in sorted(contents.items()):
        path = safe_path(target, relative, what)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        replace_with(path)
        with open(path, "xb") as out:
            out.write(data)
        os.chmod(path, file_mode(relative))


def run(plan: Mapping[str, Any]) -> None:
    roots = [str(r) for r in plan.get("roots", [])]
    budget = Budget(
        int(plan.get("limitBytes", MAX_UNZIPPED_BYTES)), sum(tree_size(r) for r in roots)
    )
    for step in plan["steps"]:
        target, what = str(step["target"]), str(step.get("what", "code"))
        os.makedirs(target, exist_ok=True)
        if "zip" in step:
            package = step["zip"]
            data = download(package["url"], package.get("token"), package["sha256"], what)
            extract_zip(data, target, budget, what)
        elif "inline" in step:
            write_inline(step["inline"], target, budget, what)
        else:
            copy_files(step["files"], target, budget, what)


def report(message: str) -> None:
    print(f"kubelambda-unpack: {message}", file=sys.stderr, flush=True)
    try:
        with open(TERMINATION_LOG, "w") as log:
            log.write(message[:4000])
    except OSError:
        pass


def main() -> int:
    try:
        run(json.loads(os.environ["KUBELAMBDA_UNPACK"]))
    except UnpackError as problem:
        report(str(problem))
        return 1
    except OSError as problem:
        # ENOSPC and friends: still a reason the user can act on.
        report(f"unpacking failed: {problem}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
