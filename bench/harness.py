"""Running a block: one nats-server (fresh file storage) with the processes its scenarios
need, a Context for them, everything stopped by pid afterwards (also on Ctrl-C).

A block is one durability setting of nats-server: "default" (acknowledged before fsync) or
"fsync-always" (`sync_interval: always`). `run_block` starts nats-server, the gateway (a
`jetgate serve` process, or in this event loop with `--gateway inprocess`) and the echo
server when asked, waits until they serve, and runs an async body with the Context;
`measure_block` is the body that measures scenarios one after another.

"traced-gateway" (the `*-traced` scenarios): Jaeger (`bench.jaeger`, memory storage, its
own metrics on) and a second `jetgate serve` with tracing on (`servers.traced_env`).
`measure_block` runs such a scenario against that gateway, then waits for its spans to
reach Jaeger (the export queue's last partial batch leaves within the 5 s schedule delay)
and checks them: Jaeger lists the jetgate-gateway service, and a recent trace of the
scenario's method has its server span and PRODUCER spans (else the row fails the sanity
check). Spans received vs expected, the spans the gateway dropped ("Queue full" in its
log) and Jaeger's CPU go into the row's `extra`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import nats

from bench import jaeger
from bench.events import Events, order_payload
from bench.jaeger import Jaeger, run_jaeger
from bench.measure import Context, Row, Window, proc_cpu
from bench.scenarios import SCENARIOS, Scenario, Traced
from bench.servers import (
    CONFIG_PATH,
    Process,
    start_echo,
    start_gateway,
    stop_process,
    traced_env,
    wait_serving,
)
from gateway.config import load_config
from gateway.embedded import NatsServer
from gateway.server import Gateway
from jetgate.v1 import gateway_pb2_grpc

T = TypeVar("T")
TRACED_GATEWAY = "traced-gateway"
JAEGER_MAX_TRACES = 2000  # memory storage: only recent traces are queried (spans are counted)
SPANS_QUIET = 6.0  # s without new spans: the rest were dropped (export every 5 s, default)
SPANS_LIMIT = 60.0  # s at most waiting for a scenario's spans
QUEUE_FULL = "Queue full"  # BatchSpanProcessor's warning, once per dropped span
GATEWAY_SERVICE = "jetgate-gateway"


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


@dataclass(frozen=True)
class TracedGateway:
    """The second gateway process (tracing on) and the Jaeger it exports to."""

    stub: Any  # EventGatewayStub on a grpc.aio channel
    process: Process
    jaeger: Jaeger


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
    nats_server = NatsServer(workdir / "nats", sync_always=block == "fsync-always")
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
            gateway = start_gateway(nats_server.url, workdir, opts.profile)
            processes.append(gateway)
        tracing = None
        if collector is not None:
            env = traced_env(collector.otlp_grpc_endpoint)
            traced = start_gateway(nats_server.url, workdir, name="gateway-traced", env=env)
            processes.append(traced)
            tracing = (traced, collector)
        echo = start_echo(workdir) if "echo" in wanted else None
        if echo is not None:
            processes.append(echo)
        servers = _Servers(gateway, echo, tracing, untraced)
        return asyncio.run(_run(opts, nats_server, workdir, wanted, servers, body))
    raise AssertionError("unreachable")  # mypy: an ExitStack may swallow exceptions


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


async def _run(
    opts: Options,
    nats_server: NatsServer,
    workdir: Path,
    wanted: frozenset[str],
    servers: _Servers,
    body: Callable[[BlockContext], Awaitable[T]],
) -> T:
    gateway, echo = servers.gateway, servers.echo
    nc = await nats.connect(nats_server.url, name="jetgate-bench")
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
        if servers.tracing is not None:
            traced, collector = servers.tracing
            channels.append(channel := grpc.aio.insecure_channel(traced.address))
            await wait_serving(channel, traced)
            stub = gateway_pb2_grpc.EventGatewayStub(channel)
            ctx.traced = TracedGateway(stub=stub, process=traced, jaeger=collector)
        return await body(ctx)
    finally:
        for channel in channels:
            await channel.close()
        if inprocess is not None:
            await inprocess.stop(grace=2.0)
        await nc.close()


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
            if scenario.traced is None:
                row = await scenario.measure(ctx, window)
            elif ctx.traced is None:
                row = Row(skipped=ctx.untraced or "no traced gateway")
            else:
                row = await measure_traced(scenario, scenario.traced, ctx, ctx.traced, window)
            rows.append(
                dataclasses.replace(
                    row, scenario=name, description=scenario.description, block=block
                )
            )
        return rows

    return body


async def measure_traced(
    scenario: Scenario, traced: Traced, ctx: Context, gateway: TracedGateway, window: Window
) -> Row:
    """`scenario` against the traced gateway; then its spans in Jaeger (see module doc)."""
    collector = gateway.jaeger
    received, refused_before = await asyncio.to_thread(collector.received_spans)
    dropped = _queue_full(gateway.process.log)
    jaeger_cpu = proc_cpu(collector.pid)
    on_traced = dataclasses.replace(ctx, gateway=gateway.stub, gateway_pid=gateway.process.pid)
    row = await scenario.measure(on_traced, window)
    events = row.ok_total + row.failed_total
    expected = round(events * traced.spans_per_event * traced.sampled)
    started = time.perf_counter()
    accepted, refused = await _spans_settled(collector, received + expected)
    waited = time.perf_counter() - started
    accepted, refused = accepted - received, refused - refused_before
    jaeger_cpu = proc_cpu(collector.pid) - jaeger_cpu
    dropped = _queue_full(gateway.process.log) - dropped
    if accepted:
        problem = await asyncio.to_thread(_check_traces, collector, traced)
    elif expected <= traced.events_per_call:  # not even one sampled call to expect
        problem = ""
    else:
        problem = "no span reached Jaeger"
    jaeger_us = 1e6 * jaeger_cpu / events if events else 0.0
    row.extra.update(
        spans_expected=expected,
        spans_received=accepted,
        spans_refused=refused,
        spans_dropped_queue_full=dropped,
        spans_wait_s=round(waited, 2),
        jaeger_cpu_us_per_event=jaeger_us,
        jaeger_check=problem or "ok",
    )
    if problem:
        row.consistent = False
        last = " | ".join(jaeger.tail(gateway.process.log, 2).splitlines())[-300:]
        row.errors[f"jaeger: {problem}; gateway log ends: {last}"] = 1
    print(
        f"    spans: {accepted:,} received by Jaeger of {expected:,} expected "
        f"({traced.spans_per_event:g}/event), refused {refused}, dropped by the gateway "
        f"(queue full) {dropped:,}; Jaeger CPU {jaeger_us:.1f} µs/event (whole run); "
        f"Jaeger check: {problem or 'ok'}",
        flush=True,
    )
    return row


async def _spans_settled(collector: Jaeger, expected: int) -> tuple[int, int]:
    """Spans received (accepted, refused) once `expected` were accepted, or none came for
    SPANS_QUIET s (the rest were dropped), or after SPANS_LIMIT s."""
    deadline = time.perf_counter() + SPANS_LIMIT
    last, changed = -1, time.perf_counter()
    while True:
        accepted, refused = await asyncio.to_thread(collector.received_spans)
        now = time.perf_counter()
        if accepted + refused != last:
            last, changed = accepted + refused, now
        if accepted >= expected or now - changed > SPANS_QUIET or now > deadline:
            return accepted, refused
        await asyncio.sleep(0.2)


def _check_traces(collector: Jaeger, traced: Traced) -> str:
    """ "" when Jaeger lists the gateway's service and a recent trace of `traced.method` has
    its server span with `events_per_call` PRODUCER children; else what is missing."""
    services = collector.services()
    if GATEWAY_SERVICE not in services:
        return f"service {GATEWAY_SERVICE} not in {services}"
    found = (
        collector.api("/api/traces", service=GATEWAY_SERVICE, operation=traced.method, limit=5).get(
            "data"
        )
        or []
    )
    for trace in found:
        kinds: dict[str, list[dict[str, Any]]] = {}
        for span in trace["spans"]:
            tags = {tag["key"]: tag["value"] for tag in span.get("tags", [])}
            kinds.setdefault(str(tags.get("span.kind")), []).append(span)
        servers = [s for s in kinds.get("server", []) if s["operationName"] == traced.method]
        if len(servers) == 1:
            parent = {"refType": "CHILD_OF", "traceID": trace["traceID"]}
            parent["spanID"] = servers[0]["spanID"]
            children = [s for s in kinds.get("producer", []) if parent in s.get("references", [])]
            if len(children) == traced.events_per_call:
                return ""
    return (
        f"no trace of {traced.method} with its server span and "
        f"{traced.events_per_call} PRODUCER child span(s) among the {len(found)} found"
    )


def _queue_full(log: Path) -> int:
    """BatchSpanProcessor's "Queue full" warnings (one per dropped span) in `log` so far."""
    try:
        with log.open("rb") as lines:
            return sum(QUEUE_FULL.encode() in line for line in lines)
    except FileNotFoundError:
        return 0


def run_table(opts: Options, workdir: Path) -> list[Row]:
    """Every block with its scenarios; scenarios that fsync cannot affect run in the first."""
    rows: list[Row] = []
    for i, block in enumerate(opts.blocks):
        names = [n for n in opts.scenarios if i == 0 or SCENARIOS[n].nats_bound]
        body = measure_block(opts, block, names)
        rows += run_block(opts, block, workdir / block, needs(names), body)
    return rows
