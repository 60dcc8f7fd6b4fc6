"""The README's quickstart, followed literally: its setup command, then the calls it prints."""

from __future__ import annotations

import re
import shlex
import subprocess

from tests.e2e.conftest import REPO_ROOT

TEST_COMMAND = "make test"  # the quickstart's other command: what is running this test


def quickstart_commands() -> list[str]:
    """The commands of the first shell block under '## Quickstart' (comments stripped)."""
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("## Quickstart", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert block is not None, "the quickstart has no ```sh block"
    commands = [line.split("#", 1)[0].strip() for line in block.group(1).splitlines()]
    return [command for command in commands if command]


def test_the_quickstart_sets_everything_up_and_its_printed_calls_work() -> None:
    commands = quickstart_commands()
    assert TEST_COMMAND in commands
    setup = [command for command in commands if command != TEST_COMMAND]
    assert setup == ["make up"], setup
    output = ""
    for command in setup:
        result = subprocess.run(
            shlex.split(command),
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
        assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
        output += result.stdout
    calls = [line.strip() for line in output.splitlines() if line.strip().startswith("curl ")]
    assert len(calls) == 2, output
    for call in calls:
        answer = subprocess.run(
            ["bash", "-c", call], capture_output=True, text=True, timeout=60, check=False
        )
        assert answer.returncode == 0, (call, answer.stderr)
        assert "hello, " in answer.stdout, (call, answer.stdout)
    cli = next(line.strip() for line in output.splitlines() if "kubelambda invoke" in line)
    answer = subprocess.run(
        ["bash", "-c", cli], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert answer.returncode == 0, (cli, answer.stderr)
    assert "hello, you" in answer.stdout
    assert "REPORT RequestId" in answer.stderr
