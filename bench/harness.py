"""Running a block: one nats-server (fresh file storage) with the processes its scenarios
need, a Context for them, everything stopped by pid afterwards (also on Ctrl-C).

A block is one durability setting of nats-server: "default" (acknowledged before fsync) or
"fsync-always" (`sync_interval: always`); the gateway declares it (`durability` lazy or
fsync: group commit under fsync-always). `run_block` starts nats-server, the gateway (a
`jetgate serve` process, or in this event loop with `--gateway inprocess`) and the echo
server when asked, waits until they serve, and runs an async body with the Context;
`measure_block` is the body that measures scenarios one after another. A block without a
gateway declares the configured streams itself (what the gateway does when it starts).

"procs-gateway" (the `*-procs-2` scenarios, issue 11): `jetgate serve --processes 2`, ready
once its banner is printed (every gateway process serves); its pid's CPU includes its
children's (`bench.measure.proc_cpu`). The `*-procs-*` rows publish over SPREAD_CHANNELS
connections of their own (`Context.spread`): SO_REUSEPORT spreads connections, not calls.

"cluster-N" (`--cluster 3`, issue 11): an extra block on a JetStream cluster of N
embedded nats-servers on loopback (`gateway.cluster.NatsCluster`, default durability),
the streams replicated on every node (`--stream-set NAME.replicas=N`, as `jetgate up
--cluster N` does), with only CLUSTER_SCENARIOS: publish-unary and publish-batch-100 next to
their R1 rows, raw-pipelined (raw nats-py into the R3 stream) as publish-batch-100's
baseline. Opt-in: three more servers and their elections cost the smoke test time. The
nats CPU column is the first node's only (the stream leader may be another node).

"traced-gateway" (the `*-traced` scenarios): Jaeger (`bench.jaeger`) and a second `jetgate
serve` with tracing on (`servers.traced_env`), measured by `bench.tracing`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sys
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc
import nats

from bench import jaeger, secure, tracing
from bench.events import Events, order_payload
from bench.jaeger import Jaeger, run_jaeger
from bench.measure import Context, Row, Window
from bench.scenarios import SCENARIOS, SPREAD_CHANNELS
from bench.servers import (
    CONFIG_PATH,
    PUBLISH_TIMEOUT,
    START_LIMIT,
    Process,
    log_tail,
    start_echo,
    start_gateway,
    stop_process,
    traced_env,
    wait_serving,
)
from bench.tracing import TracedGateway
from gateway.cluster import NatsCluster, replicated
from gateway.config import Durability, GatewayConfig, load_config
from gateway.embedded import NatsServer
from gateway.server import Gateway
from gateway.streams import reconcile_streams
from jetgate import nats_options
from jetgate.v1 import gateway_pb2_grpc

T = TypeVar("T")
# A channel of its own connection (equal channel arguments share one by default).
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
TRACED_GATEWAY = "traced-gateway"
SECURE_GATEWAY = "secure-gateway"
PROCS_GATEWAY = "procs-gateway"  # `jetgate serve --processes 2`
PROCS = 2
# The gateway's durability setting in each block: it declares what its nats-server does,
# so under fsync-always the gateway group-commits (gateway.group_commit).
DURABILITY: dict[str, Durability] = {"default": "lazy", "fsync-always": "fsync"}
CLUSTER_SCENARIOS = ("publish-unary", "raw-pipelined", "publish-batch-100")
CLUSTER_BLOCK = "cluster-"  # + the node count
JAEGER_MAX_TRACES = 2000  # memory storage: only recent traces are queried (spans are counted)


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
    cluster: int = 0  # nodes of the extra "cluster-N" block (0: none)


@dataclass
class BlockContext(Context):
    """The scenarios' Context plus the traced gateway (None: not started, see `untraced`)."""

    traced: TracedGateway | None = None
    untraced: str = ""  # why there is no traced gateway


def needs(names: Iterable[str]) -> frozenset[str]:
    """The processes (besides nats-server) the scenarios `names` need."""
    return frozenset().union(*(SCENARIOS[n].needs for n in names))


def untraced_reason(opts: Options) -> str:
    """Why traced-gateway scenarios cannot run ("" when they can)."""
    if opts.mode != "process":
        return "needs the gateway as a process (--gateway process)"
    if jaeger.find() is None:
        return f"jaeger not found at {jaeger.DEFAULT_PATH} (`make tools` builds it)"
    return ""


def run_block(
    opts: Options,
    block: str,
    workdir: Path,
    wanted: frozenset[str],
    body: Callable[[BlockContext], Awaitable[T]],
) -> T:
    """Start nats-server (+ `wanted` processes), run `body(ctx)` in a new event loop, stop all
    (the gateways before Jaeger, which receives their last spans, and nats-server last).

    Processes are started from this (the main) thread: their parent-death signal follows it.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    nodes = cluster_size(block)
    nats_server: NatsServer | NatsCluster = (
        NatsCluster(workdir / "nats", size=nodes)
        if nodes
        else NatsServer(workdir / "nats", sync_always=block == "fsync-always")
    )
    processes: list[Process] = []
    with contextlib.ExitStack() as stack:
        stack.callback(nats_server.stop)
        nats_server.start()
        untraced = untraced_reason(opts) if TRACED_GATEWAY in wanted else ""
        collector = None
        if TRACED_GATEWAY in wanted and not untraced:
            collector = stack.enter_context(
                run_jaeger(
                    workdir / "jaeger",
                    jaeger.DEFAULT_PATH,
                    max_traces=JAEGER_MAX_TRACES,
                    metrics=True,
                    detach=True,
                )
            )
        stack.callback(_stop_all, processes)
        gateway = None
        if "gateway" in wanted and opts.mode == "process":
            durable: dict[str, str] = {"JETGATE_DURABILITY": durability(block)}
            gateway = start_gateway(
                nats_server.url, workdir, opts.profile, env=durable, extra=replica_flags(nodes)
            )
            processes.append(gateway)
        tracing = None
        if collector is not None:
            env = {
                **traced_env(collector.otlp_grpc_endpoint),
                "JETGATE_DURABILITY": durability(block),
            }
            traced = start_gateway(nats_server.url, workdir, name="gateway-traced", env=env)
            processes.append(traced)
            tracing = (traced, collector)
        echo = start_echo(workdir) if "echo" in wanted else None
        if echo is not None:
            processes.append(echo)
        secured = None
        if SECURE_GATEWAY in wanted and opts.mode == "process":
            setup = secure.make(workdir / "secure")
            process = start_gateway(
                nats_server.url,
                workdir,
                name="gateway-secure",
                extra=setup.args(),
                env={"JETGATE_DURABILITY": durability(block)},
            )
            processes.append(process)
            secured = (process, setup)
        procs = None
        if PROCS_GATEWAY in wanted and opts.mode == "process":
            procs = start_gateway(
                nats_server.url,
                workdir,
                name="gateway-procs",
                extra=["--processes", str(PROCS)],
                env={"JETGATE_DURABILITY": durability(block)},
            )
            processes.append(procs)
        servers = _Servers(
            gateway, echo, tracing, untraced, durability(block), secured, procs, nodes
        )
        return asyncio.run(_run(opts, nats_server, workdir, wanted, servers, body))
    raise AssertionError("unreachable")  # mypy: an ExitStack may swallow exceptions


def cluster_size(block: str) -> int:
    """The node count of a "cluster-N" block (0: one nats-server)."""
    return int(block.removeprefix(CLUSTER_BLOCK)) if block.startswith(CLUSTER_BLOCK) else 0


def durability(block: str) -> Durability:
    """The gateway's durability setting in `block` (a cluster block: nats-server's default)."""
    return DURABILITY.get(block, "lazy")


def replica_flags(nodes: int) -> list[str]:
    """`jetgate serve` flags replicating the configured single-copy streams on `nodes`."""
    if not nodes:
        return []
    streams = load_config(CONFIG_PATH, env={}).streams
    return [
        f
        for s in streams
        if s.replicas == 1
        for f in ("--stream-set", f"{s.name}.replicas={nodes}")
    ]


def _replicated(config: GatewayConfig, nodes: int) -> GatewayConfig:
    return replicated(config, nodes) if nodes else config


def _stop_all(processes: list[Process]) -> None:
    for process in reversed(processes):
        code = stop_process(process.proc)
        if code not in (0, None):
            print(f"warning: {process.name} exited with {code}", file=sys.stderr)


@dataclass(frozen=True)
class _Servers:
    gateway: Process | None
    echo: Process | None
    tracing: tuple[Process, Jaeger] | None  # the traced gateway and its Jaeger
    untraced: str  # why there is no traced gateway
    durability: Durability  # the gateway's setting (DURABILITY)
    secure: tuple[Process, secure.SecureSetup] | None = None  # the TLS + token gateway
    procs: Process | None = None  # `jetgate serve --processes PROCS`
    nodes: int = 0  # the cluster's node count (0: one nats-server)


async def _run(
    opts: Options,
    nats_server: NatsServer | NatsCluster,
    workdir: Path,
    wanted: frozenset[str],
    servers: _Servers,
    body: Callable[[BlockContext], Awaitable[T]],
) -> T:
    gateway, echo = servers.gateway, servers.echo
    nc = await nats.connect(
        **nats_options.connect_kwargs(nats_options.options({"nats_url": nats_server.url})),
        name="jetgate-bench",
    )
    inprocess: Gateway | None = None
    channels: list[grpc.aio.Channel] = []
    try:
        ctx = BlockContext(
            events=Events(order_payload()),
            nc=nc,
            nats_url=nats_server.url,
            nats_pid=nats_server.pid,
            workdir=workdir,
            natscli=opts.natscli,
            untraced=servers.untraced,
        )
        address = gateway.address if gateway else None
        if "gateway" in wanted and gateway is None:  # in this event loop
            config = load_config(CONFIG_PATH, env={})
            config = dataclasses.replace(
                _replicated(config, servers.nodes),
                nats_url=nats_server.url,
                listen="127.0.0.1:0",
                publish_timeout=PUBLISH_TIMEOUT,
                durability=servers.durability,
            )
            inprocess = Gateway(config)
            await inprocess.start()
            address = inprocess.address
        if address is not None:
            channels.append(channel := grpc.aio.insecure_channel(address))
            await wait_serving(channel, gateway)
            ctx.gateway = gateway_pb2_grpc.EventGatewayStub(channel)
            ctx.gateway_channel = channel
            ctx.gateway_pid = gateway.pid if gateway else None
            ctx.spread["gateway"] = _spread(address, channels)
        if echo is not None:
            channels.append(channel := grpc.aio.insecure_channel(echo.address))
            await wait_serving(channel, echo)
            ctx.echo = gateway_pb2_grpc.EventGatewayStub(channel)
            ctx.echo_pid = echo.pid
        if servers.tracing is not None:
            traced, collector = servers.tracing
            channels.append(channel := grpc.aio.insecure_channel(traced.address))
            await wait_serving(channel, traced)
            stub = gateway_pb2_grpc.EventGatewayStub(channel)
            ctx.traced = TracedGateway(stub=stub, process=traced, jaeger=collector)
        if servers.secure is not None:
            process, setup = servers.secure
            channels.append(channel := setup.channel(process.address))
            await wait_serving(channel, process)  # health needs no token
            ctx.secure = gateway_pb2_grpc.EventGatewayStub(channel)
            ctx.secure_pid = process.pid
            ctx.secure_metadata = setup.metadata
        if servers.procs is not None:
            await _wait_banner(servers.procs)  # printed once every gateway process serves
            ctx.spread[PROCS_GATEWAY] = _spread(servers.procs.address, channels)
            ctx.procs_pid = servers.procs.pid
        if address is None and servers.tracing is None:
            # No gateway declared the streams (e.g. `--scenario raw-async` alone): declare
            # them as it would, the raw scenarios publish into the gateway's stream.
            config = _replicated(load_config(CONFIG_PATH, env={}), servers.nodes)
            await reconcile_streams(nc.jetstream(), config.streams, {})
        return await body(ctx)
    finally:
        for channel in channels:
            await channel.close()
        if inprocess is not None:
            await inprocess.stop(grace=2.0)
        await nc.close()


def _spread(address: str, channels: list[grpc.aio.Channel]) -> list[object]:
    """SPREAD_CHANNELS stubs on connections of their own (appended to `channels`)."""
    stubs: list[object] = []
    for _ in range(SPREAD_CHANNELS):
        channel = grpc.aio.insecure_channel(address, options=OWN_CONNECTION)
        channels.append(channel)
        stubs.append(gateway_pb2_grpc.EventGatewayStub(channel))
    return stubs


async def _wait_banner(process: Process) -> None:
    """Until `jetgate serve --processes N` printed its banner (RuntimeError when it exits)."""
    async with asyncio.timeout(START_LIMIT):
        while "Gateway processes:" not in process.log.read_text(errors="replace"):
            if process.proc.poll() is not None:
                raise RuntimeError(f"{process.name} exited:\n{log_tail(process.log)}")
            await asyncio.sleep(0.1)


def measure_block(
    opts: Options, block: str, names: list[str]
) -> Callable[[BlockContext], Awaitable[list[Row]]]:
    """The body that measures `names` in order and labels their rows with `block`."""

    async def body(ctx: BlockContext) -> list[Row]:
        rows = []
        for name in names:
            scenario = SCENARIOS[name]
            window = opts.window
            print(
                f"  [{block}] {name}: {window.warmup:g}s warm-up + {window.seconds:g}s ...",
                flush=True,
            )
            missing = (PROCS_GATEWAY in scenario.needs and ctx.procs_pid is None) or (
                SECURE_GATEWAY in scenario.needs and ctx.secure is None
            )
            if missing:
                row = Row(skipped="needs the gateway as a process (--gateway process)")
            elif scenario.traced is None:
                row = await scenario.measure(ctx, window)
            elif ctx.traced is None:
                row = Row(skipped=ctx.untraced or "no traced gateway")
            else:
                row = await tracing.measure(scenario, scenario.traced, ctx, ctx.traced, window)
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
    if opts.cluster:
        block = f"{CLUSTER_BLOCK}{opts.cluster}"
        names = [n for n in opts.scenarios if n in CLUSTER_SCENARIOS]
        if names:
            body = measure_block(opts, block, names)
            rows += run_block(opts, block, workdir / block, needs(names), body)
    return rows
