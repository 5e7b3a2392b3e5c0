"""Interop tests run real third-party peers (built by `make tools` into .tools/bin)
against a real gateway and nats-server."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import gateway, gateway_config, stub  # noqa: F401

TOOLS = Path(__file__).resolve().parents[2] / ".tools" / "bin"
PEER_TIMEOUT = 30.0


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
