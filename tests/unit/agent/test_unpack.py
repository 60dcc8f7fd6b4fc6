"""The init-container unpack step: downloads, digests, limits, safe extraction, layer order."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import stat
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kubelambda.agent import unpack
from kubelambda.agent.unpack import UnpackError


def make_zip(files: dict[str, bytes | tuple[bytes, int]]) -> bytes:
    """name -> data, or (data, unix mode incl. file type) for modes and symlinks."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, value in files.items():
            data, mode = value if isinstance(value, tuple) else (value, 0o100644)
            info = zipfile.ZipInfo(name)
            info.external_attr = mode << 16
            archive.writestr(info, data)
    return buffer.getvalue()


class Served:
    def __init__(self, base: str) -> None:
        self.base = base
        self.blobs: dict[str, bytes] = {}
        self.tokens: list[str | None] = []

    def add(self, name: str, data: bytes) -> dict[str, str]:
        self.blobs[name] = data
        return {"url": f"{self.base}/{name}", "sha256": hashlib.sha256(data).hexdigest()}


@pytest.fixture
def served() -> Iterator[Served]:
    holder: list[Served] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state = holder[0]
            state.tokens.append(self.headers.get("Authorization"))
            data = state.blobs.get(self.path.lstrip("/"))
            if data is None:
                self.send_response(404)
                self.end_headers()
                self.wfile.write(b'{"message":"no such package"}')
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    holder.append(Served(f"http://127.0.0.1:{server.server_address[1]}"))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield holder[0]
    server.shutdown()
    server.server_close()


def plan(tmp_path: Path, *steps: dict[str, Any], limit: int = 1 << 30) -> dict[str, Any]:
    return {
        "limitBytes": limit,
        "roots": [str(tmp_path / "task"), str(tmp_path / "opt")],
        "steps": list(steps),
    }


def test_zip_code_and_layers_in_order_later_wins(tmp_path: Path, served: Served) -> None:
    code = served.add("code", make_zip({"app.py": b"code", "bootstrap": (b"#!/bin/sh", 0o100755)}))
    first = served.add("l1", make_zip({"bin/tool": (b"old", 0o100755), "python/a.py": b"a"}))
    second = served.add("l2", make_zip({"bin/tool": (b"new", 0o100644), "lib/": (b"", 0o40755)}))
    task, opt = tmp_path / "task", tmp_path / "opt"
    unpack.run(
        plan(
            tmp_path,
            {"target": str(task), "zip": {**code, "token": "t0k"}, "what": "code"},
            {"target": str(opt), "zip": first, "what": "layer one"},
            {"target": str(opt), "zip": second, "what": "layer two"},
        )
    )
    assert (task / "app.py").read_bytes() == b"code"
    assert stat.S_IMODE((task / "bootstrap").stat().st_mode) == 0o755
    assert stat.S_IMODE((task / "app.py").stat().st_mode) == 0o644
    assert (opt / "bin/tool").read_bytes() == b"new"
    assert stat.S_IMODE((opt / "bin/tool").stat().st_mode) == 0o644
    assert (opt / "python/a.py").read_bytes() == b"a"
    assert (opt / "lib").is_dir()
    assert served.tokens == ["Bearer t0k", None, None]


def test_inline_files_from_a_config_map_directory(tmp_path: Path) -> None:
    source = tmp_path / "cm"
    source.mkdir()
    (source / "f000").write_text("#!/bin/sh\necho hi\n")
    (source / "f001").write_text("data")
    unpack.run(
        plan(
            tmp_path,
            {
                "target": str(tmp_path / "opt"),
                "files": {"dir": str(source), "paths": {"f000": "bin/hi", "f001": "x/y.txt"}},
            },
        )
    )
    assert stat.S_IMODE((tmp_path / "opt/bin/hi").stat().st_mode) == 0o755
    assert (tmp_path / "opt/x/y.txt").read_text() == "data"


def test_inline_files_from_the_plan_later_steps_win(tmp_path: Path) -> None:
    task = tmp_path / "task"
    unpack.run(
        plan(
            tmp_path,
            {
                "target": str(task),
                "inline": {"app.py": "old", "bootstrap": "#!/bin/sh\n", "lib/é.txt": "ü"},
                "what": "code",
            },
            {"target": str(task), "inline": {"app.py": "new", "bin/run": "x"}, "what": "layer"},
        )
    )
    assert (task / "app.py").read_text() == "new"
    assert stat.S_IMODE((task / "app.py").stat().st_mode) == 0o644
    assert stat.S_IMODE((task / "bootstrap").stat().st_mode) == 0o755
    assert stat.S_IMODE((task / "bin/run").stat().st_mode) == 0o755
    assert (task / "lib/é.txt").read_bytes() == "ü".encode()


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("../evil", "outside its directory"),
        ("/tmp/evil", "outside its directory"),
        ("up/evil", "through a symlink"),
    ],
)
def test_inline_files_cannot_escape(tmp_path: Path, name: str, message: str) -> None:
    task = tmp_path / "task"
    task.mkdir()
    (task / "up").symlink_to("..")
    step = {"target": str(task), "inline": {name: "x"}, "what": "code"}
    with pytest.raises(UnpackError, match=f"code: .*{message}"):
        unpack.run(plan(tmp_path, step))
    assert not (tmp_path / "evil").exists()


def test_inline_files_count_their_utf8_bytes(tmp_path: Path) -> None:
    # 400 characters, 800 bytes: over a 700-byte budget only when counted as bytes.
    step = {"target": str(tmp_path / "task"), "inline": {"a.txt": "é" * 400}, "what": "code"}
    with pytest.raises(UnpackError, match="code: function code and layers unzip to more than 700"):
        unpack.run(plan(tmp_path, step, limit=700))
    assert not (tmp_path / "task/a.txt").exists()


def test_inline_file_that_is_not_text(tmp_path: Path) -> None:
    step = {"target": str(tmp_path / "task"), "inline": {"a.txt": 1}, "what": "code"}
    with pytest.raises(UnpackError, match=r"code: inline file 'a\.txt' is not text"):
        unpack.run(plan(tmp_path, step))


def test_symlinks_are_kept_inside(tmp_path: Path, served: Served) -> None:
    package = served.add("s", make_zip({"real.txt": b"r", "link.txt": (b"real.txt", 0o120777)}))
    unpack.run(plan(tmp_path, {"target": str(tmp_path / "task"), "zip": package}))
    assert os.readlink(tmp_path / "task/link.txt") == "real.txt"


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"../evil": b"x"}, "outside its directory"),
        ({"/etc/evil": b"x"}, "outside its directory"),
        ({"a/../../evil": b"x"}, "outside its directory"),
        ({"up": (b"..", 0o120777), "up/evil": b"x"}, "through a symlink"),
    ],
)
def test_entries_cannot_escape(
    tmp_path: Path, served: Served, files: dict[str, Any], message: str
) -> None:
    package = served.add("evil", make_zip(files))
    with pytest.raises(UnpackError, match=message):
        unpack.run(plan(tmp_path, {"target": str(tmp_path / "task"), "zip": package}))
    assert not (tmp_path / "evil").exists()


def test_sha256_mismatch(tmp_path: Path, served: Served) -> None:
    package = {**served.add("p", make_zip({"a": b"a"})), "sha256": "0" * 64}
    with pytest.raises(UnpackError, match=f"code: sha256 mismatch: expected {'0' * 64}"):
        unpack.run(plan(tmp_path, {"target": str(tmp_path / "task"), "zip": package}))


def test_download_failure_names_the_url_and_status(tmp_path: Path, served: Served) -> None:
    package = {"url": f"{served.base}/missing", "sha256": "0" * 64}
    with pytest.raises(UnpackError, match=r"HTTP 404 .*no such package"):
        unpack.run(plan(tmp_path, {"target": str(tmp_path / "task"), "zip": package}))


def test_zip_over_50_mb_is_refused(
    tmp_path: Path, served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(unpack, "MAX_ZIP_BYTES", 1000)
    package = served.add("big", make_zip({"a": os.urandom(2000)}))
    with pytest.raises(UnpackError, match="larger than 1000 bytes"):
        unpack.run(plan(tmp_path, {"target": str(tmp_path / "task"), "zip": package}))


def test_unzipped_total_counts_earlier_contents(tmp_path: Path, served: Served) -> None:
    (tmp_path / "opt").mkdir()
    (tmp_path / "opt/from-image-layer").write_bytes(b"x" * 600)
    package = served.add("p", make_zip({"a": b"y" * 500}))
    step = {"target": str(tmp_path / "task"), "zip": package, "what": "code"}
    with pytest.raises(UnpackError, match="code: function code and layers unzip to more than 1000"):
        unpack.run(plan(tmp_path, step, limit=1000))


def test_not_a_zip(tmp_path: Path, served: Served) -> None:
    package = served.add("p", b"plain text")
    with pytest.raises(UnpackError, match="not a zip archive"):
        unpack.run(plan(tmp_path, {"target": str(tmp_path / "task"), "zip": package}))


def test_main_writes_the_reason_for_the_operator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "termination-log"
    monkeypatch.setattr(unpack, "TERMINATION_LOG", str(log))
    bad = {"url": "http://127.0.0.1:9/nothing", "sha256": "0" * 64}
    monkeypatch.setenv(
        "KUBELAMBDA_UNPACK", json.dumps(plan(tmp_path, {"target": str(tmp_path), "zip": bad}))
    )
    assert unpack.main() == 1
    assert log.read_text().startswith("code: downloading http://127.0.0.1:9/nothing failed")
