"""The Go and Node clients of the interop tests, run as real processes that print JSON lines.

The Go client (tests/interop/goclient) is built by `make goclient` (part of `make tools`)
into .tools/bin, or where the `GOCLIENT` environment variable says (`make goclient
TOOLS_BIN=...`); the Node client (tests/interop/node/client.js) runs from the packages
`make node-deps` installed from the committed lock. A client that is missing fails the
test: a broken setup, never a skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.interop.conftest import peer, run_peer

REPO = Path(__file__).resolve().parents[2]
NODE_CLIENT = REPO / "tests" / "interop" / "node"
PLACED = "jetgate.examples.orders.v1.OrderPlaced"
Line = dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class Client:
    """How to run one language's client: `argv("publish", count=3)`."""

    language: str
    prefix: tuple[str, ...]  # before the command
    suffix: tuple[str, ...] = ()  # right after it
    dash: str = "-"

    def argv(self, command: str, **flags: object) -> list[str]:
        """The command line of `command` with `flags` (underscores become dashes)."""
        argv = [*self.prefix, command, *self.suffix]
        for name, value in flags.items():
            argv += [f"{self.dash}{name.replace('_', '-')}", str(value)]
        return argv


def go_client(address: str) -> Client:
    """The Go client against the gateway at `address`."""
    program = os.environ.get("GOCLIENT") or str(peer("goclient"))
    return Client(language="go", prefix=(program,), suffix=("-addr", address))


def node_client(address: str) -> Client:
    """The Node client against the gateway at `address`."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node not found on PATH", pytrace=False)
    if not (NODE_CLIENT / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.fail(f"{NODE_CLIENT}/node_modules missing: run `make node-deps`", pytrace=False)
    script = str(NODE_CLIENT / "client.js")
    return Client(language="node", prefix=(node, script, str(REPO / "proto"), address), dash="--")


async def run_json(argv: list[str], home: Path) -> list[Line]:
    """Run a client to its end; its JSON lines (a non-zero exit fails the test)."""
    done = await run_peer(argv, home=home)
    assert done.returncode == 0, f"{argv[:3]} exited {done.returncode}: {done.stderr}"
    return [json.loads(line) for line in done.stdout.splitlines()]


class Running:
    """A client process running in the background, its JSON lines collected as they come."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[Line] = []
        self.stderr = b""
        self._readers = (
            asyncio.create_task(self._read_lines()),
            asyncio.create_task(self._read_stderr()),
        )

    async def _read_lines(self) -> None:
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            self.lines.append(json.loads(raw))

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        self.stderr = await self.process.stderr.read()

    def of_kind(self, kind: str) -> list[Line]:
        return [line for line in self.lines if line.get("kind") == kind]

    def kill(self) -> None:
        """kill -9: no goodbye to the gateway, its TCP connection just drops."""
        self.process.send_signal(signal.SIGKILL)

    async def wait(self) -> int:
        """Its exit status, once it exited and everything it printed is read."""
        returncode = await self.process.wait()
        await asyncio.gather(*self._readers)
        return returncode


@contextlib.asynccontextmanager
async def running(argv: list[str], home: Path) -> AsyncIterator[Running]:
    """`argv` running for the block (HOME=`home`, an existing folder); stopped (SIGTERM,
    then SIGKILL) and reaped after."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRPC")}
    env["HOME"] = str(home)
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    client = Running(process)
    try:
        yield client
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
        try:
            await asyncio.wait_for(client.wait(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await client.wait()
