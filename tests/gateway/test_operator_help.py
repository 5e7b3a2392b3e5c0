"""Every operator command (gateway/operator_cli.py) has help with an example and its exit
codes, and `jetgate --help` lists it."""

from __future__ import annotations

import argparse

import pytest

from gateway import cli, operator_cli

COMMANDS = ("decode", "events", "publish", "streams", "groups", "init")


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = argparse.ArgumentParser(prog="jetgate")
    commands = parser.add_subparsers(dest="command")
    operator_cli.add_commands(commands.add_parser)
    return dict(commands.choices)


@pytest.mark.parametrize("name", COMMANDS)
def test_help_has_an_example_and_the_exit_codes(name: str) -> None:
    text = _subcommands()[name].format_help()

    assert "example" in text
    assert f"jetgate {name}" in text or "--translate 'jetgate decode" in text
    assert "exit codes:" in text


def test_jetgate_help_lists_them(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])

    listed = capsys.readouterr().out
    assert all(name in listed for name in COMMANDS)
