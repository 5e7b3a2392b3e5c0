"""The scenarios: publish loops (runners) and the registry SCENARIOS the harness runs.

Baselines (no gateway): `raw-async` and `raw-pipelined` (nats-py JetStream publishing of
the gateway's messages), `raw-atomic` (the same messages in JetStream atomic batches of
1000, 4 in flight, through `gateway.publisher`: what group commit can reach under
fsync-always), `grpc-echo` (a grpc.aio server answering Publish without NATS,
`bench.echo`) and `natscli-async` (the Go client, `nats bench js pub async`,
`bench.natscli`). Gateway scenarios: `publish-unary`, `publish-batch-100/500`,
`publish-stream`; `publish-client`, `publish-unary-1`, `publish-client-1` (`bench.client`);
`pipeline-unary` and `pipeline` (the demo's two groups, `bench.pipeline`).
A scenario's ratio is its events/s over its baseline's, next to a target.

The cost of tracing: `publish-unary-traced` and `publish-batch-100-traced` put the same load
on a second gateway process with tracing on (`servers.traced_env`: always sampled, OTLP/gRPC
to a Jaeger the harness starts, `bench.jaeger`); their baselines are the untraced scenarios
of the same run. The client sends no trace context: every call is a root trace, always
sampled, the worst case for the gateway. Afterwards the harness checks through Jaeger's API
that the spans arrived (sanity), and records spans received vs expected, spans the gateway
dropped (its export queue full) and Jaeger's CPU in the row's `extra`. Measured in the first
block only. Skipped (with a note) when the jaeger binary is missing or the gateway runs
in-process.

Consuming (`bench.consume`): `e2e-latency` (Publish -> handler start at 1,000 events/s),
`consume-plain` (baseline: nats-py fetch-and-ack) and `consume` (one consumers.Worker);
`subscribe` (`bench.subscribe`: one gRPC Subscribe client through a gateway process of its
own, against `consume`).

Adding a scenario:
1. Write a runner `async def run_x(ctx: Context, tally: Tally, stop: asyncio.Event)` that
   publishes (or consumes) until `stop` is set, reports every event to `tally` (`tally.ok`,
   `tally.error()`, `tally.rpc(started)` or `tally.latency(started)` for latencies) and
   returns once nothing is in flight; `measure_run` does warm-up, window, CPU and the
   stream check. For anything that is not such a loop (an external program), write a
   `Measurer` `async (ctx, window) -> Row` instead, like `bench.natscli.measure`.
2. Register `Scenario(name, description, timed(run_x, ...), needs=..., baseline=...,
   target=...)` in SCENARIOS (order = table order; baselines first). `needs` names the
   processes the harness must start for it ("gateway", "echo", "traced-gateway"); the
   Context carries their stubs and pids (a "traced-gateway" scenario gets a Context whose
   `gateway` and `gateway_pid` are the traced gateway's, and sets `traced`). Extra
   servers: start them in `bench.servers` / `bench.harness`.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import itertools
import json
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
from nats.aio.msg import Msg

from bench import client, consume, natscli, pipeline, read, subscribe
from bench.events import STREAM
from bench.measure import (
    DRAIN_TIMEOUT,
    MAX_ERRORS,
    RPC_TIMEOUT,
    Context,
    Measurer,
    Row,
    Runner,
    Server,
    Tally,
    Window,
    measure_run,
)
from gateway.publisher import OutboundMessage, Publisher, PublishFailure
from jetgate import wire
from jetgate.v1 import gateway_pb2

UNARY_CONCURRENCY = 64
BATCH_IN_FLIGHT = 8
RAW_ASYNC_PENDING = 4000
RAW_WINDOW = 1000
RAW_ATOMIC_SIZE = 1000
RAW_ATOMIC_IN_FLIGHT = 4
SPREAD_CHANNELS = 16  # connections of the `-procs-*` rows (spread over the processes)
PER_RPC = "per RPC"
PER_MESSAGE = "per message"


def rpc_error(exc: grpc.aio.AioRpcError) -> str:
    return f"{exc.code().name}: {exc.details()}"


def run_unary(
    server: Server, concurrency: int = UNARY_CONCURRENCY, *, spread: bool = False
) -> Runner:
    """`Publish`, `concurrency` calls in flight, against the gateway or the echo server;
    `spread`: over the server's SPREAD_CHANNELS connections (`Context.spread`)."""

    async def run(ctx: Context, tally: Tally, stop: asyncio.Event) -> None:
        if spread:
            stubs = ctx.spread[server]
        else:
            stubs = [
                {"gateway": ctx.gateway, "echo": ctx.echo, "secure-gateway": ctx.secure}[server]
            ]
        metadata = ctx.secure_metadata if server == "secure-gateway" else None

        async def worker(stub: Any) -> None:
            while not stop.is_set() and tally.failed < MAX_ERRORS:
                request = ctx.events.request("unary")
                started = time.perf_counter()
                try:
                    response = await stub.Publish(request, timeout=RPC_TIMEOUT, metadata=metadata)
                except grpc.aio.AioRpcError as exc:
                    tally.error(rpc_error(exc))
                    continue
                tally.ok += 1
                tally.duplicates += response.duplicate
                tally.rpc(started)

        await asyncio.gather(*(worker(stubs[i % len(stubs)]) for i in range(concurrency)))

    return run


def trace_context(sampled: float) -> tuple[tuple[str, str], ...]:
    """gRPC metadata of a client that traces every call and samples `sampled` of them: a
    W3C `traceparent` whose sampled flag is set with that probability."""
    flags = "01" if random.random() < sampled else "00"
    trace_id, span_id = random.getrandbits(128) or 1, random.getrandbits(64) or 1
    return (("traceparent", f"00-{trace_id:032x}-{span_id:016x}-{flags}"),)


def run_batch(
    size: int,
    in_flight: int = BATCH_IN_FLIGHT,
    sampled: float | None = None,
    server: Server = "gateway",
    *,
    spread: bool = False,
) -> Runner:
    """`PublishBatch` of `size` events, `in_flight` calls at a time; with `sampled`, each
    call carries a client's trace context (`trace_context`); against the secure gateway,
    its bearer token; `spread`: over the server's SPREAD_CHANNELS connections."""

    async def run(ctx: Context, tally: Tally, stop: asyncio.Event) -> None:
        secure = server == "secure-gateway"
        stubs = ctx.spread[server] if spread else [ctx.secure if secure else ctx.gateway]

        async def worker(stub: Any) -> None:
            while not stop.is_set() and tally.failed < MAX_ERRORS:
                request = ctx.events.batch(f"b{size}", size)
                metadata = trace_context(sampled) if sampled is not None else None
                if secure:
                    metadata = ctx.secure_metadata
                started = time.perf_counter()
                try:
                    response = await stub.PublishBatch(
                        request, timeout=RPC_TIMEOUT, metadata=metadata
                    )
                except grpc.aio.AioRpcError as exc:
                    tally.error(rpc_error(exc), size)
                    continue
                tally.results(response.results)
                tally.rpc(started)

        await asyncio.gather(*(worker(stubs[i % len(stubs)]) for i in range(in_flight)))

    return run


def run_stream(size: int = 100, in_flight: int = BATCH_IN_FLIGHT) -> Runner:
    """One PublishStream call; at most `in_flight` request messages await their response."""

    async def run(ctx: Context, tally: Tally, stop: asyncio.Event) -> None:
        slots = asyncio.Semaphore(in_flight)
        sent: collections.deque[float] = collections.deque()

        async def requests() -> AsyncIterator[gateway_pb2.PublishBatchRequest]:
            while True:
                await slots.acquire()
                if stop.is_set() or tally.failed >= MAX_ERRORS:
                    return
                request = ctx.events.batch("s", size)
                sent.append(time.perf_counter())
                yield request

        call = ctx.gateway.PublishStream(requests(), timeout=None)
        try:
            async for response in call:
                started = sent.popleft()
                tally.results(response.results)
                tally.rpc(started)
                slots.release()
        except grpc.aio.AioRpcError as exc:
            tally.error(f"stream: {rpc_error(exc)}", len(sent) * size)

    return run


async def run_raw_async(ctx: Context, tally: Tally, stop: asyncio.Event) -> None:
    """nats-py `js.publish_async`, 4000 pending: JetStream without the gateway."""
    js = ctx.nc.jetstream(publish_async_max_pending=RAW_ASYNC_PENDING)

    def settled(started: float, future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            tally.error("cancelled")
        elif (exc := future.exception()) is not None:
            tally.error(repr(exc))
        else:
            tally.ok += 1
            tally.duplicates += bool(future.result().duplicate)
            tally.latency(started)

    while not stop.is_set() and tally.failed < MAX_ERRORS:
        subject, headers = ctx.events.raw("ra")
        started = time.perf_counter()
        future = await js.publish_async(subject, ctx.events.payload, headers=headers)
        future.add_done_callback(functools.partial(settled, started))
    try:
        await asyncio.wait_for(js.publish_async_completed(), DRAIN_TIMEOUT)
    except TimeoutError:
        tally.error("no ack within the drain timeout", js.publish_async_pending())


async def run_raw_pipelined(ctx: Context, tally: Tally, stop: asyncio.Event) -> None:
    """nc.publish with a reply subject per message under one wildcard inbox subscription."""
    nc = ctx.nc
    prefix = nc.new_inbox()
    slots = asyncio.Semaphore(RAW_WINDOW)
    waiting: dict[str, float] = {}  # reply subject -> perf_counter() at send
    drained = asyncio.Event()

    async def on_reply(msg: Msg) -> None:
        started = waiting.pop(msg.subject, None)
        if started is None:
            return
        slots.release()
        if msg.headers and msg.headers.get(wire.STATUS) == wire.STATUS_NO_RESPONDERS:
            tally.error("503 no responders")
        else:
            body = json.loads(msg.data)
            if "error" in body:
                tally.error(str(body["error"]))
            else:
                tally.ok += 1
                tally.duplicates += bool(body.get("duplicate"))
                tally.latency(started)
        if stop.is_set() and not waiting:
            drained.set()

    sub = await nc.subscribe(f"{prefix}.*", cb=on_reply)
    try:
        for n in itertools.count(1):
            if stop.is_set() or tally.failed >= MAX_ERRORS:
                break
            await slots.acquire()
            subject, headers = ctx.events.raw("rp")
            token = f"{prefix}.{n}"
            waiting[token] = time.perf_counter()
            await nc.publish(subject, ctx.events.payload, reply=token, headers=headers)
        if waiting:
            # A reply may have emptied `waiting` after `stop` (setting `drained`) before the
            # last send: forget that, or the last acks would go uncounted.
            drained.clear()
            await nc.flush()
            try:
                await asyncio.wait_for(drained.wait(), DRAIN_TIMEOUT)
            except TimeoutError:
                tally.error("no ack within the drain timeout", len(waiting))
    finally:
        await sub.unsubscribe()


async def run_raw_atomic(ctx: Context, tally: Tally, stop: asyncio.Event) -> None:
    """Atomic batches of RAW_ATOMIC_SIZE, RAW_ATOMIC_IN_FLIGHT at a time (one commit each)."""
    publisher = Publisher(ctx.nc)
    await publisher.start()

    async def worker() -> None:
        while not stop.is_set() and tally.failed < MAX_ERRORS:
            messages = []
            for _ in range(RAW_ATOMIC_SIZE):
                subject, headers = ctx.events.raw("rb")
                messages.append(
                    OutboundMessage(subject=subject, payload=ctx.events.payload, headers=headers)
                )
            started = time.perf_counter()
            stored = await publisher.publish_atomic(messages, within=RPC_TIMEOUT)
            if isinstance(stored, PublishFailure):
                tally.error(f"{stored.kind}: {stored.description}", RAW_ATOMIC_SIZE)
                continue
            tally.ok += len(stored)
            tally.rpc(started)

    try:
        await asyncio.gather(*(worker() for _ in range(RAW_ATOMIC_IN_FLIGHT)))
    finally:
        await publisher.close()


def timed(
    run: Runner, *, server: Server | None, stream: str | None = STREAM, latency: str = PER_RPC
) -> Measurer:
    """The standard measurement (`measure_run`) of a runner."""

    async def measure(ctx: Context, window: Window) -> Row:
        return await measure_run(run, ctx, window, server=server, stream=stream, latency=latency)

    return measure


@dataclass(frozen=True)
class Traced:
    """What Jaeger must hold after a scenario against the traced gateway: traces of `method`
    (the gRPC server span), each with `events_per_call` PRODUCER spans as children."""

    method: str  # the server span's name, e.g. /jetgate.v1.EventGateway/Publish
    events_per_call: int
    sampled: float = 1.0  # the share of calls the client samples (the gateway follows it)

    @property
    def spans_per_event(self) -> float:
        return 1 + 1 / self.events_per_call  # a server span per call + a producer per event


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    measure: Measurer
    # Besides nats-server: gateway, echo, traced-gateway, secure-gateway.
    needs: frozenset[str] = frozenset()
    baseline: str | None = None  # ratio = events/s / this scenario's events/s
    target: float | None = None  # the ratio it should reach
    nats_bound: bool = True  # False: fsync cannot matter, measured in the first block only
    traced: Traced | None = None  # runs against the traced gateway (needs "traced-gateway")
    # The least events/s under fsync-always over the same scenario's in the default block
    # (issue 12: durable acknowledgement, made fast by group commit).
    durable_target: float | None = None


GATEWAY = frozenset({"gateway"})
TRACED_GATEWAY = frozenset({"traced-gateway"})
TRACED = "traced: always sampled, OTLP/gRPC to Jaeger"
SECURE_GATEWAY = frozenset({"secure-gateway"})
SECURE = "TLS + bearer API token + policy (bench.secure)"
METHOD = "/jetgate.v1.EventGateway/"


def publish_batch(size: int) -> Scenario:
    return Scenario(
        f"publish-batch-{size}",
        f"PublishBatch {size}/call, {BATCH_IN_FLIGHT} in flight",
        timed(run_batch(size), server="gateway"),
        needs=GATEWAY,
        baseline="raw-pipelined",
        target=0.9,
        durable_target=0.6 if size == 100 else None,
    )


PROCS_GATEWAY = frozenset({"procs-gateway"})


def processes_scenarios() -> list[Scenario]:
    """publish-unary and publish-batch-100 over SPREAD_CHANNELS connections to 1 and 2
    gateway processes; the `-procs-2` ratio is the scaling (the server CPU column sums the
    supervisor and its gateway processes)."""
    rows = []
    cases: list[tuple[int, Server]] = [(1, "gateway"), (2, "procs-gateway")]
    for procs, server in cases:
        needs = GATEWAY if procs == 1 else PROCS_GATEWAY
        spread = f"{SPREAD_CHANNELS} connections, --processes {procs}"
        rows += [
            Scenario(
                f"publish-unary-procs-{procs}",
                f"Publish, {UNARY_CONCURRENCY} concurrent calls, {spread}",
                timed(run_unary(server, spread=True), server=server),
                needs=needs,
                baseline="publish-unary-procs-1" if procs > 1 else None,
                nats_bound=False,
            ),
            Scenario(
                f"publish-batch-100-procs-{procs}",
                f"PublishBatch 100/call, {2 * BATCH_IN_FLIGHT} in flight, {spread}",
                timed(
                    run_batch(100, 2 * BATCH_IN_FLIGHT, server=server, spread=True),
                    server=server,
                ),
                needs=needs,
                baseline="publish-batch-100-procs-1" if procs > 1 else None,
                nats_bound=False,
            ),
        ]
    return rows


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario(
            "raw-async",
            f"nats-py js.publish_async, {RAW_ASYNC_PENDING} pending",
            timed(run_raw_async, server=None, latency=PER_MESSAGE),
        ),
        Scenario(
            "raw-pipelined",
            f"nats-py nc.publish + reply inbox, window {RAW_WINDOW}",
            timed(run_raw_pipelined, server=None, latency=PER_MESSAGE),
        ),
        Scenario(
            "raw-atomic",
            f"atomic batches of {RAW_ATOMIC_SIZE}, {RAW_ATOMIC_IN_FLIGHT} in flight "
            "(gateway.publisher)",
            timed(run_raw_atomic, server=None, latency=PER_RPC),
        ),
        Scenario(
            "grpc-echo",
            f"grpc.aio Publish answered without NATS, {UNARY_CONCURRENCY} concurrent",
            timed(run_unary("echo"), server="echo", stream=None),
            needs=frozenset({"echo"}),
            nats_bound=False,
        ),
        Scenario("natscli-async", natscli.DESCRIPTION, natscli.measure),
        Scenario(
            "publish-unary",
            f"Publish, {UNARY_CONCURRENCY} concurrent calls",
            timed(run_unary("gateway"), server="gateway"),
            needs=GATEWAY,
            baseline="grpc-echo",
            target=0.75,
            durable_target=0.9,
        ),
        Scenario(
            "publish-client",
            f"jetgate.client publish(), {UNARY_CONCURRENCY} coroutines, one event each at a time",
            timed(client.run_client(UNARY_CONCURRENCY), server="gateway", latency=client.LATENCY),
            needs=GATEWAY,
            baseline="publish-unary",
            target=5.0,
        ),
        Scenario(
            "publish-unary-1",
            "Publish, 1 call at a time (latency at low load)",
            timed(run_unary("gateway", concurrency=1), server="gateway"),
            needs=GATEWAY,
            nats_bound=False,
        ),
        # The latency columns are the figure (a lone publish() next to a lone Publish).
        Scenario(
            "publish-client-1",
            "jetgate.client publish(), 1 at a time (latency at low load)",
            timed(client.run_client(1), server="gateway", latency=client.LATENCY),
            needs=GATEWAY,
            baseline="publish-unary-1",
            nats_bound=False,
        ),
        # No target: nothing says what tracing may cost; the ratio is the figure.
        Scenario(
            "publish-unary-traced",
            f"Publish, {UNARY_CONCURRENCY} concurrent calls, {TRACED}",
            timed(run_unary("gateway"), server="gateway"),
            needs=TRACED_GATEWAY,
            baseline="publish-unary",
            nats_bound=False,
            traced=Traced(METHOD + "Publish", 1),
        ),
        publish_batch(100),
        Scenario(
            "publish-batch-100-traced",
            f"PublishBatch 100/call, {BATCH_IN_FLIGHT} in flight, {TRACED}",
            timed(run_batch(100), server="gateway"),
            needs=TRACED_GATEWAY,
            baseline="publish-batch-100",
            nats_bound=False,
            traced=Traced(METHOD + "PublishBatch", 100),
        ),
        Scenario(
            "publish-batch-100-traced-1pct",
            f"PublishBatch 100/call, {BATCH_IN_FLIGHT} in flight, tracing on, the client "
            "samples 1 % of its calls (traceparent; the gateway follows its parent)",
            timed(run_batch(100, sampled=0.01), server="gateway"),
            needs=TRACED_GATEWAY,
            baseline="publish-batch-100",
            nats_bound=False,
            traced=Traced(METHOD + "PublishBatch", 100, sampled=0.01),
        ),
        # The cost of security: the same load on a gateway process serving TLS, each call
        # authenticated by an API token and each event checked against the policy.
        Scenario(
            "publish-unary-tls-token",
            f"Publish, {UNARY_CONCURRENCY} concurrent calls, {SECURE}",
            timed(run_unary("secure-gateway"), server="secure-gateway"),
            needs=SECURE_GATEWAY,
            baseline="publish-unary",
            nats_bound=False,
        ),
        Scenario(
            "publish-batch-100-tls-token",
            f"PublishBatch 100/call, {BATCH_IN_FLIGHT} in flight, {SECURE}",
            timed(run_batch(100, server="secure-gateway"), server="secure-gateway"),
            needs=SECURE_GATEWAY,
            baseline="publish-batch-100",
            target=0.85,
            nats_bound=False,
        ),
        # Every core (issue 11): the same client, SPREAD_CHANNELS connections, against
        # `jetgate serve --processes 1` (the gateway above) and `--processes 2`.
        *processes_scenarios(),
        publish_batch(500),
        Scenario(
            "publish-stream",
            f"PublishStream 100/msg, {BATCH_IN_FLIGHT} in flight",
            timed(run_stream(), server="gateway"),
            needs=GATEWAY,
            baseline="raw-pipelined",
            target=0.9,
            durable_target=0.6,
        ),
        Scenario(
            "pipeline-unary",
            f"orders/s through billing + shipping, follow-ups by Publish ({pipeline.CONCURRENCY}"
            " handlers each)",
            pipeline.measure(via_client=False),
            needs=GATEWAY,
            nats_bound=False,
        ),
        Scenario(
            "pipeline",
            "orders/s through billing + shipping, follow-ups by jetgate.client",
            pipeline.measure(via_client=True),
            needs=GATEWAY,
            baseline="pipeline-unary",
            target=4.0,
            nats_bound=False,
        ),
        Scenario(
            "e2e-latency",
            f"Publish at {consume.E2E_RATE:,.0f}/s -> handler start (p50<=2, p99<=10 ms)",
            timed(consume.run_e2e, server="gateway", latency="publish -> handler"),
            needs=GATEWAY,
        ),
        Scenario("consume-plain", "nats-py fetch(100) + ack loop", consume.measure_plain),
        Scenario(
            "consume",
            f"consumers.Worker, concurrency {consume.WORKER_CONCURRENCY}, no-op handler",
            consume.measure_worker,
            baseline="consume-plain",
            target=0.9,
        ),
        Scenario(
            "subscribe",
            f"one grpc.aio Subscribe client, max_in_flight {subscribe.SUBSCRIBE_CREDITS}, "
            "no-op, acking",
            subscribe.measure,
            baseline="consume",
            target=0.8,
        ),
        # Reading (bench.read): nats-py's ordered consumer as the baseline of Read.
        Scenario(
            "read-key-plain",
            f"nats-py ordered consumer per key ({read.READ_PER_KEY} events), "
            f"{read.READ_CONCURRENCY} keys at a time",
            read.measure_key_plain,
            nats_bound=False,
        ),
        Scenario(
            "read-key",
            f"Read(key) histories of {read.READ_PER_KEY} events, {read.READ_CONCURRENCY} "
            "calls at a time",
            read.measure_key,
            needs=GATEWAY,
            baseline="read-key-plain",
            target=0.8,
            nats_bound=False,
        ),
        Scenario(
            "read-replay-plain",
            "nats-py ordered consumer over the whole stream",
            read.measure_replay_plain,
            nats_bound=False,
        ),
        Scenario(
            "read-replay",
            "one Read(subjects) of the whole stream",
            read.measure_replay,
            needs=GATEWAY,
            baseline="read-replay-plain",
            target=0.8,
            nats_bound=False,
        ),
    ]
}


def with_baselines(names: list[str]) -> list[str]:
    """`names` plus the baselines they are compared to (and theirs), in registry order."""
    wanted: set[str] = set()
    todo = list(names)
    while todo:
        if (name := todo.pop()) not in wanted:
            wanted.add(name)
            todo += [b] if (b := SCENARIOS[name].baseline) is not None else []
    return [name for name in SCENARIOS if name in wanted]
