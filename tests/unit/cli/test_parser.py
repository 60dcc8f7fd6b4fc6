"""The command line: what each command parses into, global options anywhere, usage errors."""

from __future__ import annotations

import pytest

from kubelambda.cli import aliases, dlq, functions, invoke
from kubelambda.cli.parser import build_parser, parse, with_default_alias_command


def test_deploy_flags():
    args = parse(
        [
            "deploy",
            "src",
            "--name",
            "hello",
            "--runtime",
            "python3.11",
            "--handler",
            "app.h",
            "--memory",
            "256",
            "--env",
            "A=1",
            "--env",
            "B=2",
            "--layer",
            "shared:1",
            "--publish",
        ]
    )
    assert args.run is functions.run_deploy
    assert (args.path, args.name, args.memory, args.publish) == ("src", "hello", 256, True)
    assert args.env == ["A=1", "B=2"]
    assert args.layer == ["shared:1"]
    assert (args.timeout, args.no_wait) == (180.0, False)


def test_global_options_before_or_after_the_command():
    before = parse(["-n", "team", "-o", "json", "status"])
    after = parse(["status", "-n", "team", "-o", "json"])
    for args in (before, after):
        assert (args.namespace, args.output) == ("team", "json")
    assert parse(["status"]).namespace is None


def test_invoke_options():
    args = parse(["invoke", "fn", "-q", "prod", "--async", "--payload", "{}", "--log-tail"])
    assert args.run is invoke.run_invoke
    assert (args.name, args.qualifier, args.async_, args.log_tail) == ("fn", "prod", True, True)


def test_payload_and_payload_file_exclude_each_other(capsys):
    with pytest.raises(SystemExit) as exit_:
        parse(["invoke", "fn", "--payload", "{}", "--payload-file", "-"])
    assert exit_.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


def test_alias_without_subcommand_means_set():
    assert with_default_alias_command(["alias", "fn", "prod", "--version", "1"]) == [
        "alias",
        "set",
        "fn",
        "prod",
        "--version",
        "1",
    ]
    args = parse(["alias", "fn", "prod", "--version", "2", "--weight", "3=0.1"])
    assert args.run is aliases.run_alias_set
    assert (args.function, args.alias, args.version, args.weight) == ("fn", "prod", "2", "3=0.1")
    assert parse(["alias", "list", "fn"]).run is aliases.run_alias_list
    assert parse(["-n", "x", "alias", "delete", "fn", "prod"]).run is aliases.run_alias_delete


def test_route_create_needs_a_target(capsys):
    with pytest.raises(SystemExit) as exit_:
        parse(["route", "create", "api", "GET /pets"])
    assert exit_.value.code == 2
    args = parse(["route", "create", "api", "GET /pets/{id}", "--function", "pets"])
    assert (args.api, args.route_key, args.function) == ("api", "GET /pets/{id}", "pets")


def test_dlq_commands():
    args = parse(["dlq", "redrive", "4", "7"])
    assert (args.run, args.sequences) == (dlq.run_dlq_redrive, [4, 7])
    args = parse(["dlq", "purge", "--function", "fn", "-A"])
    assert (args.function, args.all_namespaces, args.all) == ("fn", True, False)


@pytest.mark.parametrize("argv", [[], ["nope"], ["deploy"], ["status", "-o", "xml"]])
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse(argv)
    assert exit_.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_help_documents_exit_codes(capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["--help"])
    assert exit_.value.code == 0
    help_text = capsys.readouterr().out
    for line in ("0    success", "2    usage error", "3    not found", "4    timed out"):
        assert line in help_text
