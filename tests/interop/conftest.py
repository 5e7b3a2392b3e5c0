"""Interop tests run real third-party peers (built by `make tools` into .tools/bin)
against a real gateway and nats-server."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import os
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from gateway.config import GatewayConfig
from gateway.groups import GroupConfig
from gateway.server import Gateway
from tests.integration.conftest import gateway, gateway_config, serving, stub  # noqa: F401

TOOLS = Path(__file__).resolve().parents[2] / ".tools" / "bin"
PEER_TIMEOUT = 30.0
NatsJson = Callable[..., Awaitable[dict[str, Any]]]

GROUP = "interop"
# The group open to Subscribe in the Go and Node client tests: every OrderPlaced, a
# one-second backoff.
DECLARED = GroupConfig(
    name=GROUP,
    stream="ORDERS",
    filter_subjects=("orders.OrderPlaced.>",),
    max_deliver=3,
    backoff=(1.0,),
    ack_wait=30.0,
)


def peer(name: str) -> Path:
    """The peer program `name`; missing means a broken setup, so the test fails (no skip)."""
    path = TOOLS / name
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"{name} not found at {path}; run `make tools` to build it", pytrace=False)
    return path


async def run_peer(argv: list[str], *, home: Path) -> subprocess.CompletedProcess[str]:
    """Run a peer off the event loop with a clean environment (no saved contexts/creds)."""
    (home / ".config").mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "XDG_", "GRPC"))}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"))
    try:
        return await asyncio.to_thread(
            subprocess.run,
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=env,
            timeout=PEER_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(argv)} did not finish within {PEER_TIMEOUT:g}s")


@pytest.fixture
def nats_json(nats_url: str, tmp_path: Path) -> NatsJson:
    """Run `nats <args> --json` against the per-test server and return the parsed output."""
    _require_loopback(nats_url)
    nats_cli = peer("nats")

    async def run(*args: str) -> dict[str, Any]:
        argv = [str(nats_cli), *args, "--json", "--no-context", "--server", nats_url]
        done = await run_peer(argv, home=tmp_path / "home")
        if done.returncode != 0:
            pytest.fail(
                f"{' '.join(argv)} exited {done.returncode}\n"
                f"stdout: {done.stdout}\nstderr: {done.stderr}"
            )
        try:
            parsed = json.loads(done.stdout)
        except json.JSONDecodeError as err:
            pytest.fail(f"{' '.join(argv)} printed no JSON ({err}): {done.stdout!r}")
        assert isinstance(parsed, dict), parsed
        return parsed

    return run


@pytest.fixture
async def group_gateway(gateway_config: GatewayConfig) -> AsyncIterator[Gateway]:  # noqa: F811
    """The demo gateway with the `interop` group (DECLARED) declared."""
    config = dataclasses.replace(gateway_config, groups=(DECLARED,))
    async with serving(config) as server:
        yield server


def _require_loopback(url: str) -> None:
    host = urlsplit(url).hostname or ""
    loopback = host == "localhost" or (_is_ip(host) and ipaddress.ip_address(host).is_loopback)
    assert loopback, f"refusing to point the nats CLI at non-loopback {url!r}"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def parse_header_block(block: bytes) -> dict[str, str]:
    """Parse a raw NATS header block ("NATS/1.0\\r\\nK: V\\r\\n...\\r\\n\\r\\n") into a dict."""
    text = block.decode("utf-8")
    assert text.endswith("\r\n\r\n"), f"unterminated header block: {text!r}"
    status, *lines = text[: -len("\r\n\r\n")].split("\r\n")
    assert status.strip() == "NATS/1.0", f"unexpected status line: {status!r}"
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        assert sep, f"malformed header line: {line!r}"
        assert name, f"empty header name: {line!r}"
        assert name not in headers, f"header {name!r} repeated in {text!r}"
        headers[name] = value.strip()
    return headers
