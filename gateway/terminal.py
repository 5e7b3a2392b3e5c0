"""What every operator command (`jetgate decode|events|publish`) shares about its terminal.

- Exit codes (jetgate/errors.py, plus one of these commands' own): 0 done; 1 a failure of
  the world (NATS or the gateway unreachable, a stream that does not exist); 2 a
  configuration or usage error (a bad `jetgate.toml`, an unknown event type, a subject no
  route produces, a bad flag); 3 `Rejected`: the data itself was refused (a payload that
  does not decode as its type, an event the gateway refused). Scripts can tell "fix the
  command" (2) from "look at this event" (3) from "try again later" (1).
- Errors: ONE line on stderr, `jetgate <command>: <why>`, credentials redacted, never a
  traceback (`JETGATE_LOG_LEVEL=DEBUG` logs it). natscli's `--translate` shows what the
  command printed (stdout and stderr together) beside the raw message, so one line reads well
  there too.
- Colour only on a terminal and never with `NO_COLOR` set (https://no-color.org); `--json`
  output is plain, one JSON object per line, stable keys.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import ClassVar, TextIO

from jetgate import errors
from jetgate.errors import ConfigurationError, JetgateError
from jetgate.urls import redact

log = logging.getLogger("jetgate")

EXIT_REJECTED = errors.EXIT_REJECTED  # one definition, for consumers/cli.py too


class Rejected(JetgateError):
    """The data was refused: a payload that does not decode, an event the gateway refused."""

    exit_code: ClassVar[int] = EXIT_REJECTED


class UsageError(ConfigurationError):
    """The command cannot work as asked (an unknown type, a subject no route produces)."""


def report(command: str, exc: BaseException) -> int:
    """Print why `jetgate <command>` stops, in one line on stderr; return its exit code."""
    if isinstance(exc, JetgateError):
        message = str(exc)
    else:
        log.debug("%s failed", command, exc_info=exc)
        message = f"{type(exc).__name__}: {exc}"
    line = " ".join(redact(message).split())  # one line whatever the message held
    print(f"jetgate {command}: {line}", file=sys.stderr)
    return errors.exit_code(exc)


def use_colour(stream: TextIO) -> bool:
    """Whether to colour output written to `stream`: a terminal, and no `NO_COLOR`."""
    if os.environ.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def paint(text: str, code: str, *, colour: bool) -> str:
    """`text` in ANSI colour `code` (e.g. "1;36") when `colour`, else as it is."""
    return f"\x1b[{code}m{text}\x1b[0m" if colour else text
