"""The operator commands of `jetgate` that read and write events: `decode`, `events`,
`publish`, `streams`, `groups`, `init`. gateway/cli.py adds them with `add_commands()`; each command
sets `operator_command` (its `run(args) -> exit code`) as a parser default, which
`jetgate`'s `main()` calls. Their terminal conventions and exit codes: gateway/terminal.py.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from gateway import decoding, events, init_cli, publish_cli, status_cli


def add_commands(add_parser: Callable[..., argparse.ArgumentParser]) -> None:
    """Add every operator command with `add_parser` (a subparsers action's)."""
    decoding.add_command(add_parser)
    events.add_command(add_parser)
    publish_cli.add_command(add_parser)
    status_cli.add_commands(add_parser)
    init_cli.add_command(add_parser)
