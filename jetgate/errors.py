"""The exceptions every jetgate process shares, and the exit code each one means.

`jetgate serve|up|consume|dlq` end with one of three exit codes, and the class of the
exception that ends them says which (`exit_code` on the class):
- 0: a clean stop (SIGINT/SIGTERM, drained);
- 2: `ConfigurationError`: the configuration is wrong (a setting, a type module, a
  route, a group's settings, an `OTEL_*` variable); fixing the input fixes it;
- 1: `StartupError`: the configuration is fine but the world is not (NATS unreachable, an
  unsafe stream change refused, a port taken, a worker that cannot start), and any
  other failure;
- 3 (`EXIT_REJECTED`), for the operator commands only: the data itself was refused (a
  payload that does not decode, an event the gateway refused, dead letters `jetgate dlq
  redrive` had to keep); gateway/terminal.py's `Rejected` carries it.

Each package's own errors derive from these (gateway/config.py ConfigError, ...), keeping
their `ValueError`/`RuntimeError` bases for callers that catch those. The CLIs map an
exception to its exit code in one place (`report()`, which also prints why).
"""

from __future__ import annotations

import logging
import sys
from typing import ClassVar

from jetgate.urls import redact

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIGURATION = 2
EXIT_REJECTED = 3


class JetgateError(Exception):
    """Base of every error jetgate raises on purpose; `exit_code` is what a CLI exits with."""

    exit_code: ClassVar[int] = EXIT_FAILURE


class ConfigurationError(JetgateError):
    """Invalid configuration; the message names the setting and why (exit code 2)."""

    exit_code: ClassVar[int] = EXIT_CONFIGURATION


class StartupError(JetgateError):
    """Valid configuration, but a process could not start: NATS unreachable, an unsafe
    stream change, a port taken, a worker that cannot start (exit code 1)."""

    exit_code: ClassVar[int] = EXIT_FAILURE


def exit_code(exc: BaseException) -> int:
    """The exit code a CLI ends with after `exc`: the class's for jetgate errors, else 1."""
    return exc.exit_code if isinstance(exc, JetgateError) else EXIT_FAILURE


def report(exc: BaseException, log: logging.Logger) -> int:
    """Print on stderr why a command stops (one line, URLs redacted, no traceback: that goes
    to `log` at debug level for unexpected errors) and return its exit code."""
    if isinstance(exc, ConfigurationError):
        message = f"configuration error: {exc}"
    elif isinstance(exc, JetgateError):
        message = str(exc)
    else:
        log.debug("failed", exc_info=exc)
        message = f"{type(exc).__name__}: {exc}"
    print(f"jetgate: {redact(message)}", file=sys.stderr)
    return exit_code(exc)
