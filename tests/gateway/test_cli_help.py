"""Every option, argument and command of `jetgate` (and `python -m consumers`) has a help
text: `jetgate serve --help` used to show bare VALUEs."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from consumers import cli as consumers_cli
from gateway import cli as gateway_cli
from gateway.config import GATEWAY_SETTINGS


def _actions(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.Action]]:
    """(command path, action) of every action of `parser` and its subcommands."""
    # argparse has no public way to list a parser's actions.
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                assert helps.get(name), f"{path} {name}: command without help"
                yield from _actions(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction):
            yield path, action


@pytest.mark.parametrize(
    "parser",
    [gateway_cli._parser(), consumers_cli._parser()],
    ids=["jetgate", "python -m consumers"],
)
def test_no_option_lacks_help(parser: argparse.ArgumentParser) -> None:
    missing = [
        f"{path} {'/'.join(action.option_strings) or action.dest}"
        for path, action in _actions(parser, "jetgate")
        if not action.help or action.help == argparse.SUPPRESS
    ]
    assert not missing


def test_every_gateway_setting_has_a_flag_with_help() -> None:
    serve = gateway_cli._parser().parse_args(["serve"])
    for setting in GATEWAY_SETTINGS:
        assert hasattr(serve, setting)
        assert setting in gateway_cli.SETTING_HELP, setting
