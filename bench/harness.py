"""Running a block: one nats-server (fresh file storage) with the processes its scenarios
need, a Context for them, everything stopped by pid afterwards (also on Ctrl-C).

A block is one durability setting of nats-server: "default" (acknowledged before fsync) or
"fsync-always" (`sync_interval: always`). `run_block` starts nats-server, the gateway (a
`jetgate serve` process, or in this event loop with `--gateway inprocess`) and the echo
server when asked, waits until they serve, and runs an async body with the Context;
`measure_block` is the body that measures scenarios one after another.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc
import nats

from bench.events import Events, order_payload
from bench.measure import Context, Row, Window
from bench.scenarios import SCENARIOS
from bench.servers import (
    CONFIG_PATH,
    Process,
    start_echo,
    start_gateway,
    stop_process,
    wait_serving,
)
from gateway.config import load_config
from gateway.embedded import NatsServer
from gateway.server import Gateway
from jetgate.v1 import gateway_pb2_grpc

T = TypeVar("T")


@dataclass(frozen=True)
class Options:
    """What the command line asked for (see `bench.cli`)."""

    window: Window
    scenarios: list[str]
    blocks: list[str]  # "default", "fsync-always"
    mode: str  # "process" or "inprocess"
    profile: Path | None
    natscli: Path | None
    results: Path
    memory: float | None


def needs(names: Iterable[str]) -> frozenset[str]:
    """The processes (besides nats-server) the scenarios `names` need."""
    return frozenset().union(*(SCENARIOS[n].needs for n in names))


def run_block(
    opts: Options,
    block: str,
    workdir: Path,
    wanted: frozenset[str],
    body: Callable[[Context], Awaitable[T]],
) -> T:
    """Start nats-server (+ `wanted` processes), run `body(ctx)` in a new event loop, stop all.

    Processes are started from this (the main) thread: their parent-death signal follows it.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    nats_server = NatsServer(workdir / "nats", sync_always=block == "fsync-always")
    processes: list[Process] = []
    try:
        nats_server.start()
        gateway = None
        if "gateway" in wanted and opts.mode == "process":
            gateway = start_gateway(nats_server.url, workdir, opts.profile)
            processes.append(gateway)
        echo = start_echo(workdir) if "echo" in wanted else None
        if echo is not None:
            processes.append(echo)
        return asyncio.run(_run(opts, nats_server, workdir, wanted, gateway, echo, body))
    finally:
        for process in reversed(processes):
            code = stop_process(process.proc)
            if code not in (0, None):
                print(f"warning: {process.name} exited with {code}", file=sys.stderr)
        nats_server.stop()


async def _run(
    opts: Options,
    nats_server: NatsServer,
    workdir: Path,
    wanted: frozenset[str],
    gateway: Process | None,
    echo: Process | None,
    body: Callable[[Context], Awaitable[T]],
) -> T:
    nc = await nats.connect(nats_server.url, name="jetgate-bench")
    inprocess: Gateway | None = None
    channels: list[grpc.aio.Channel] = []
    try:
        ctx = Context(
            events=Events(order_payload()),
            nc=nc,
            nats_url=nats_server.url,
            nats_pid=nats_server.pid,
            workdir=workdir,
            natscli=opts.natscli,
        )
        address = gateway.address if gateway else None
        if "gateway" in wanted and gateway is None:  # in this event loop
            config = load_config(CONFIG_PATH, env={})
            config = dataclasses.replace(config, nats_url=nats_server.url, listen="127.0.0.1:0")
            inprocess = Gateway(config)
            await inprocess.start()
            address = inprocess.address
        if address is not None:
            channels.append(channel := grpc.aio.insecure_channel(address))
            await wait_serving(channel, gateway)
            ctx.gateway = gateway_pb2_grpc.EventGatewayStub(channel)
            ctx.gateway_pid = gateway.pid if gateway else None
        if echo is not None:
            channels.append(channel := grpc.aio.insecure_channel(echo.address))
            await wait_serving(channel, echo)
            ctx.echo = gateway_pb2_grpc.EventGatewayStub(channel)
            ctx.echo_pid = echo.pid
        return await body(ctx)
    finally:
        for channel in channels:
            await channel.close()
        if inprocess is not None:
            await inprocess.stop(grace=2.0)
        await nc.close()


def measure_block(
    opts: Options, block: str, names: list[str]
) -> Callable[[Context], Awaitable[list[Row]]]:
    """The body that measures `names` in order and labels their rows with `block`."""

    async def body(ctx: Context) -> list[Row]:
        rows = []
        for name in names:
            scenario = SCENARIOS[name]
            window = opts.window
            print(
                f"  [{block}] {name}: {window.warmup:g}s warm-up + {window.seconds:g}s ...",
                flush=True,
            )
            row = await scenario.measure(ctx, window)
            rows.append(
                dataclasses.replace(
                    row, scenario=name, description=scenario.description, block=block
                )
            )
        return rows

    return body


def run_table(opts: Options, workdir: Path) -> list[Row]:
    """Every block with its scenarios; scenarios that fsync cannot affect run in the first."""
    rows: list[Row] = []
    for i, block in enumerate(opts.blocks):
        names = [n for n in opts.scenarios if i == 0 or SCENARIOS[n].nats_bound]
        body = measure_block(opts, block, names)
        rows += run_block(opts, block, workdir / block, needs(names), body)
    return rows
