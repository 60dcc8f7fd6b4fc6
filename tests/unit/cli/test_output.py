from __future__ import annotations

import json

import yaml

from kubelambda.cli.output import Column, Format, render

ROWS = [
    {
        "name": "hello",
        "ready": "True",
        "versions": ["$LATEST", "1"],
        "replicas": {"ready": 1, "desired": 2},
    },
    {"name": "a-much-longer-name", "ready": "False", "versions": [], "replicas": None},
]
COLUMNS = (
    Column("Name", "name"),
    Column("Ready", "ready"),
    Column("Versions", "versions"),
    Column("Replicas", "replicas", lambda r: f"{r['ready']}/{r['desired']}"),
)


def test_table_is_aligned_with_upper_case_headers():
    assert render(ROWS, Format.TABLE, COLUMNS).splitlines() == [
        "NAME                 READY   VERSIONS    REPLICAS",
        "hello                True    $LATEST,1   1/2",
        "a-much-longer-name   False   <none>      <none>",
    ]


def test_json_and_yaml_keep_the_structure():
    assert json.loads(render(ROWS, Format.JSON)) == ROWS
    assert yaml.safe_load(render(ROWS, Format.YAML)) == ROWS
    assert json.loads(render(ROWS[0], Format.JSON)) == ROWS[0]
