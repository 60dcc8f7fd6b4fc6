"""The CLI runs on laptops: it must not pull in the operator or the data plane."""

from __future__ import annotations

import ast
from pathlib import Path

import kubelambda.cli

FORBIDDEN = (
    "kubelambda.controller",
    "kubelambda.gateway",
    "kubelambda.invoker",
    "kubelambda.agent",
)


def test_cli_imports_no_operator_or_data_plane_module():
    package = Path(kubelambda.cli.__file__).parent
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            assert not [n for n in names if n.startswith(FORBIDDEN)], f"{path.name}: {names}"
