"""Helpers for tests that run `jetgate up` as a real process and read its output."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BANNER_END = "jetgate dlq list --group billing"
WAIT = 30.0  # s, longest wait for any one step


def jetgate() -> str:
    """The `jetgate` console script of this interpreter's environment."""
    return str(Path(sys.executable).parent / "jetgate")


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, whose parent has not reaped it, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


async def read_banner(out: asyncio.StreamReader) -> str:
    """`jetgate up`'s start-up banner, up to its last line."""
    lines: list[str] = []
    async with asyncio.timeout(WAIT):
        while not lines or BANNER_END not in lines[-1]:
            line = await out.readline()
            if not line:
                pytest.fail("jetgate up ended before its banner:\n" + "".join(lines))
            lines.append(line.decode())
    return "".join(lines)


async def read_rest(out: asyncio.StreamReader) -> str:
    """Everything after the banner; start it at once, so that logs never fill the pipe."""
    return (await out.read()).decode()


async def start_up(
    workdir: Path, env: Mapping[str, str] | None = None, args: Sequence[str] = ()
) -> asyncio.subprocess.Process:
    """`jetgate up` with the demo config on free loopback ports, data in `workdir`, warnings
    as errors, no `JETGATE_*`/`OTEL_*` from this environment but `env`; output piped.
    `args` come last (a repeated flag overrides the one above)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("JETGATE_", "OTEL_"))}
    clean["PYTHONWARNINGS"] = "error"  # in the gateway and the workers it starts
    proc = await asyncio.create_subprocess_exec(
        *(jetgate(), "up", "--config", str(REPO / "jetgate.toml"), "--nats-port", "0"),
        *("--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"),
        *("--data-dir", str(workdir / "data")),
        *args,
        cwd=workdir,
        env={**clean, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    return proc
