"""How `jetgate events`, `jetgate streams` and `jetgate groups` reach NATS: with the same
settings as the gateway (jetgate/nats_options.py), so they work against any NATS URL the
gateway works against.

Where the settings come from, first found wins: the command's `--nats-*` flags (every
setting but the secrets: a password or token on a command line is readable by every local
user with `ps`), the `JETGATE_NATS_*` variables, the gateway's TOML file (`--config`, else
./jetgate.toml when present), the default nats://127.0.0.1:4222. It is the gateway's own
configuration loader (`load_config`) with the flags as overrides, so a flag, a variable
and the file mean what they mean for `jetgate serve`.

Refusals fail fast with exit code 1 and the cause, never the secret: wrong credentials or
a failed TLS handshake (`NatsRefused` from `nats_options.connect`, at once rather than
after the connect timeout), no server answering within CONNECT_TIMEOUT, and a NATS user
that may not use the JetStream API (the server reports a permissions violation
asynchronously and the request would otherwise wait for its timeout: `unless_denied`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError

from gateway.config import GatewayConfig, load_config
from jetgate import nats_options
from jetgate.errors import StartupError
from jetgate.nats_options import NatsOptions, NatsRefused
from jetgate.urls import redact

DEFAULT_CONFIG = Path("jetgate.toml")
DEFAULT_NATS_URL = nats_options.DEFAULT_URL
CONNECT_TIMEOUT = 10.0  # s

T = TypeVar("T")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `--nats-url` and the other non-secret `--nats-*` flags to `parser`."""
    nats_options.add_flags(
        parser,
        url_default=f"JETGATE_NATS_URL, else the config's nats_url, else {DEFAULT_NATS_URL}",
        else_=", else the config's",
    )


def load(args: argparse.Namespace) -> GatewayConfig:
    """The gateway configuration of a parsed command (`--config`, else ./jetgate.toml when
    present), `JETGATE_*` variables applied, then its `--nats-*` flags."""
    path: Path | None = args.config
    if path is None and DEFAULT_CONFIG.is_file():
        path = DEFAULT_CONFIG
    overrides = {
        setting: value
        for setting in nats_options.SETTINGS
        if (value := getattr(args, setting, None)) is not None
    }
    return load_config(path, env=os.environ, overrides=overrides)


def options(args: argparse.Namespace) -> NatsOptions:
    """The NATS options of a parsed command (see `load`)."""
    return load(args).nats_options()


async def connect(opts: NatsOptions, name: str) -> tuple[NATS, asyncio.Future[str]]:
    """A NATS connection that reconnects, and a future completed with the reason when NATS
    later reports a permissions violation of this connection (see `unless_denied`).

    Raises NatsRefused (exit 1) on wrong credentials or a failed TLS handshake, StartupError
    (exit 1) when no server answers within CONNECT_TIMEOUT.
    """
    denied: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def on_error(exc: Exception) -> None:
        # Otherwise quiet: nats-py reconnects, and a line mid-output would break it.
        violation = nats_options.permission_violation(exc)
        if violation is not None and not denied.done():
            denied.set_result(
                f"NATS permissions violation for {violation[0]} on {violation[1]!r}: "
                "this NATS user may not use the JetStream API it needs"
            )

    nc = NATS()
    try:
        await nats_options.connect(
            nc,
            opts,
            within=CONNECT_TIMEOUT,
            name=name,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            error_cb=on_error,
        )
    except NatsRefused:
        raise
    except (TimeoutError, OSError, NatsError) as exc:
        raise StartupError(f"cannot reach NATS: {redact(str(exc) or repr(exc))}") from None
    return nc, denied


async def unless_denied(work: Coroutine[Any, Any, T], denied: asyncio.Future[str]) -> T:
    """The result of `work`; NatsRefused (and `work` cancelled) when NATS denies a
    permission first."""
    task: asyncio.Future[Any] = asyncio.ensure_future(work)
    await asyncio.wait([task, denied], return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        result: T = task.result()
        return result
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
    raise NatsRefused(denied.result())
