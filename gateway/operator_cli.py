"""The operator commands of `jetgate` that read and write events: `decode`, `events`,
`publish`, `streams`, `groups`, `init`. gateway/cli.py adds them with `add_commands()`; each command
sets `operator_command` (its `run(args) -> exit code`) as a parser default, which
`jetgate`'s `main()` calls. Their terminal conventions and exit codes: gateway/terminal.py.

Each command's module is imported when the parser is built, not when this module is: a
`jetgate decode` (run once per message by natscli's `--translate`) goes through
`run_decode`, which imports gateway/decoding.py alone, not the gRPC client, rich or the
NATS readers of the other commands.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

DECODE = "decode"


def add_commands(add_parser: Callable[..., argparse.ArgumentParser]) -> None:
    """Add every operator command with `add_parser` (a subparsers action's)."""
    from gateway import decoding, events, init_cli, publish_cli, status_cli

    decoding.add_command(add_parser)
    events.add_command(add_parser)
    publish_cli.add_command(add_parser)
    status_cli.add_commands(add_parser)
    init_cli.add_command(add_parser)


def run_decode(argv: Sequence[str]) -> int:
    """Parse and run `jetgate decode ...` (`argv` starts with "decode") with a parser of
    that command alone (the same arguments and help as in the whole `jetgate` parser);
    returns the exit code."""
    from gateway import decoding

    parser = argparse.ArgumentParser(prog="jetgate")
    decoding.add_command(parser.add_subparsers(dest="command", required=True).add_parser)
    args = parser.parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.operator_command
    return run(args)
